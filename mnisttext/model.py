"""GPT-2 style decoder over the character tokens of the text format.

    from mnisttext.model import GPT, GPTConfig, PRESETS
    model = GPT(GPTConfig(**PRESETS["flagship"]))
    logits, loss = model(idx, targets)                     # training: idx (B, T) token ids
    cache = model.new_cache(batch_size=1)                  # generation: see sample.py
    logits, _ = model(prefix, kv_cache=cache)              # prefill, then one token at a time

`build_model(config)` picks the class from `config.arch` ("gpt", or the "gru" baseline in
gru.py). The KV cache lives in kvcache.py, decode-time weight packing in packing.py, and the
CPU dropout in runtime.py.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from .kvcache import KVCache
from .runtime import Dropout

GELUS = ("exact", "tanh")
MAX_PARAMS = 2_000_000_000       # refuse configs whose weights alone would not fit in memory


class ConfigError(ValueError):
    """A model config that cannot be built; the message names the field."""


@dataclass
class GPTConfig:
    arch: str = "gpt"          # "gpt" or "gru"
    vocab_size: int = 76
    block_size: int = 152      # class digit + 150 symbols + ')'
    n_layer: int = 8
    n_head: int = 8
    n_embd: int = 256
    dropout: float = 0.1
    bias: bool = True
    bit_embed: bool = False    # add a learned embedding of each symbol's 6 pixel bits
    gelu: str = "exact"        # the MLP's GELU: "exact" (erf) or "tanh" (GPT-2's approximation)

    def __post_init__(self):
        ints = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {v!r}")
        for name in ("bias", "bit_embed"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        if self.arch not in ("gpt", "gru"):
            raise ConfigError(f"arch: expected 'gpt' or 'gru', got {self.arch!r}")
        if self.gelu not in GELUS:
            raise ConfigError(f"gelu: expected 'exact' or 'tanh', got {self.gelu!r}")
        if self.arch == "gpt" and self.n_embd % self.n_head:
            raise ConfigError(f"n_head: {self.n_head} does not divide n_embd {self.n_embd}")
        if self.vocab_size < 76:
            raise ConfigError(f"vocab_size: {self.vocab_size} is smaller than the 76 character tokens")
        if self.block_size < 3:
            raise ConfigError(f"block_size: {self.block_size} is too short for a line")
        if self.approx_params() > MAX_PARAMS:
            raise ConfigError(f"the model would have ~{self.approx_params():,} parameters "
                              f"(more than {MAX_PARAMS:,}): check n_layer and n_embd")

    def approx_params(self) -> int:
        C = self.n_embd
        if self.arch == "gru":
            return self.n_layer * 6 * C * C + 2 * self.vocab_size * C
        return self.n_layer * 12 * C * C + (self.vocab_size + self.block_size) * C

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """From config.json. Configs saved before `gelu` existed used tanh; "none" is the old
        name of "exact"."""
        if not isinstance(d, dict):
            raise ConfigError("expected a JSON object")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}")
        d = {"gelu": "tanh", **d}
        if d["gelu"] == "none":
            d["gelu"] = "exact"
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # the original project's model
    "seed": dict(n_layer=8, n_head=8, n_embd=256, dropout=0.1),
    # the default recipe's model for short CPU runs: a smaller net sees more images per minute
    "small": dict(n_layer=4, n_head=4, n_embd=256, dropout=0.0),
    # the shipped model: deeper than small, 64-wide heads (the CPU attention kernels prefer them)
    "flagship": dict(n_layer=6, n_head=4, n_embd=256, dropout=0.0),
    "gru": dict(arch="gru", n_layer=2, n_embd=512, dropout=0.0),
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, dropout=0.0),   # tests
}


def symbol_bit_table(vocab_size: int) -> torch.Tensor:
    """(V, 6) float: the MSB-first pixel bits of each symbol token (ids 10..73), zeros elsewhere."""
    t = torch.zeros(vocab_size, 6)
    v = torch.arange(64)
    t[10:74] = ((v[:, None] >> torch.arange(5, -1, -1)) & 1).float()
    return t


def causal_attention(q, k, v, chunks: int = 2):
    """softmax(q k^T / sqrt(hs) + causal mask) v, spelled out: (B, nh, T, hs) -> (B, nh, T, hs).

    On CPU the fused flash kernel (with its backward) is slower than this for short sequences
    (docs/performance.md). The queries go in `chunks` row blocks, each against only the keys it
    may see: with 2 blocks the products and the softmax cover 3/4 of the T x T square. The
    result is a (B, nh, T, hs) view of a (B, T, nh, hs) tensor, so merging the heads is free."""
    T, hs = q.shape[-2], q.shape[-1]
    q = q * (1.0 / math.sqrt(hs))     # scale q (T x hs) rather than the scores (T x T)
    ys = []
    for a, b in ((T * i // chunks, T * (i + 1) // chunks) for i in range(chunks)):
        att = q[:, :, a:b] @ k[:, :, :b].transpose(-2, -1)                  # (B, nh, b-a, b)
        # query a+i sees keys 0..a+i; an additive mask has a free backward
        future = torch.full((b - a, b), float("-inf"), dtype=att.dtype, device=q.device).triu(a + 1)
        ys.append(((att + future).softmax(-1) @ v[:, :, :b]).transpose(1, 2))   # (B, b-a, nh, hs)
    return torch.cat(ys, 1).transpose(1, 2)                                  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        self.n_head, self.n_embd = config.n_head, config.n_embd

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x)                                     # (B, T, 3C)
        if T > 1 and x.device.type == "cpu":
            # one copy into head-major order, so the attention products read whole heads
            qkv = qkv.view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).contiguous()   # (3, B, nh, T, hs)
            q, k, v = qkv.unbind(0)                              # (B, nh, T, hs)
        else:
            q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(C, dim=2))  # (B, nh, T, hs)
        p = 0
        if cache is not None:
            p = cache.pos
            k, v = cache.write(layer, k, v)                      # (B, nh, p+T, hs)
        # no dropout on the attention weights: it would force the slow math kernel on CPU
        if p == 0 and T > 1 and x.device.type == "cpu":
            y = causal_attention(q, k, v)                        # (B, nh, T, hs)
        elif p == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        elif T == 1:
            y = cache.attend_one(layer, q)                       # (B, nh, 1, hs)
        else:   # a chunk after a prefix: query i sees keys up to p + i
            mask = torch.ones(T, p + T, dtype=torch.bool, device=x.device).tril(diagonal=p)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)          # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="none" if config.gelu == "exact" else "tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight      # weight tying, as GPT-2
        if config.bit_embed:
            # a symbol is 6 pixels: telling the model which are set gives it the pixel structure
            # from the first step instead of learning it from 64 unrelated ids
            self.register_buffer("symbol_bits", symbol_bit_table(config.vocab_size), persistent=False)
            self.bit_proj = nn.Linear(6, config.n_embd, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():                # GPT-2's scaled residual init
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def new_cache(self, batch_size: int) -> KVCache:
        c = self.config
        return KVCache(c.n_layer, batch_size, c.n_head, c.block_size, c.n_embd // c.n_head)

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None):
        """idx (B, T) token ids -> logits (B, T, V); loss = mean CE over targets (-1 = ignore).

        With kv_cache, idx holds the next T tokens after the cache's `pos` ones; the cache is
        advanced by T."""
        B, T = idx.shape
        p0 = kv_cache.pos if kv_cache is not None else 0
        if p0 + T > self.config.block_size:
            raise ValueError(f"sequence of {p0 + T} tokens > block size {self.config.block_size}")
        pos = torch.arange(p0, p0 + T, device=idx.device)        # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)   # (B, T, C)
        if self.config.bit_embed:
            x = x + self.bit_proj(self.symbol_bits[idx])                # (B, T, C)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_cache, i)
        if kv_cache is not None:
            kv_cache.pos += T
        logits = self.lm_head(self.transformer.ln_f(x))          # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss


def build_model(config: GPTConfig) -> nn.Module:
    if config.arch == "gru":
        from .gru import GRU      # the baseline; most runs never need it
        return GRU(config)
    return GPT(config)
