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

from .kvcache import KVCache, Prep
from .runtime import Dropout

GELUS = ("exact", "tanh")
ACTS = ("gelu", "relu2")          # the MLP's nonlinearity: GELU (see `gelu`) or ReLU squared
ROPES = ("none", "1d", "2d")      # rotary position embeddings on queries and keys
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
    # Options measured in docs/ablations.md. Each default is the model as it was before the
    # field existed, so config.json files saved without it keep their meaning.
    wpe: bool = True           # learned absolute position embeddings
    rope: str = "none"         # rotary q/k: "1d" by token index, "2d" by (pixel row, column)
    qk_norm: bool = False      # RMSNorm (with a learned gain) on each head's queries and keys
    act: str = "gelu"          # the MLP's nonlinearity: "gelu" or "relu2" (ReLU squared)
    conv_kernel: int = 0       # >0: canon layers, causal depthwise convs (+ residual) of this width
    conv_at: str = "ac"        # where: before the attention ("a"), before the MLP ("c"), or both
    zero_init_proj: bool = False   # output projections (attention, MLP) start at zero
    n_kv_head: int = 0         # key/value heads (grouped-query attention); 0 = n_head
    value_embed: bool = False  # a per-layer embedding of the token added to the values (zero at start)
    unet: bool = False         # the first half's block outputs added to the second half's inputs
                               # in mirror order, each with a learned weight (zero at start)
    aug_embed: int = 0         # embeddings of data augmentations, zero at start (--shift-aug sets it)

    def __post_init__(self):
        ints = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {v!r}")
        for name in ("bias", "bit_embed", "wpe", "qk_norm", "zero_init_proj", "value_embed", "unet"):
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
        if self.rope not in ROPES:
            raise ConfigError(f"rope: expected one of {', '.join(ROPES)}, got {self.rope!r}")
        if self.act not in ACTS:
            raise ConfigError(f"act: expected one of {', '.join(ACTS)}, got {self.act!r}")
        for name in ("conv_kernel", "n_kv_head", "aug_embed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name}: expected an integer >= 0, got {v!r}")
        if self.conv_at not in ("a", "c", "ac"):
            raise ConfigError(f"conv_at: expected 'a', 'c' or 'ac', got {self.conv_at!r}")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ConfigError(f"n_kv_head: {self.n_kv_head} does not divide n_head {self.n_head}")
        if self.rope != "none" and (self.n_embd // self.n_head) % 4:
            raise ConfigError(f"rope: the head size {self.n_embd // self.n_head} must be a "
                              f"multiple of 4")
        if self.arch == "gru" and (self.rope != "none" or self.qk_norm or self.act != "gelu"
                                   or self.conv_kernel or self.n_kv_head or not self.wpe
                                   or self.zero_init_proj or self.value_embed or self.unet
                                   or self.aug_embed):
            raise ConfigError("arch: the gru has none of the GPT options (rope, qk_norm, act, "
                              "conv_kernel, n_kv_head, wpe, zero_init_proj, value_embed, unet, "
                              "aug_embed)")
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
        kv = self.kv_heads * (C // self.n_head)
        ve = self.n_layer * self.vocab_size * kv if self.value_embed else 0
        return (self.n_layer * (10 * C * C + 2 * C * kv) + ve
                + (self.vocab_size + self.block_size + self.aug_embed) * C)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """From config.json. Configs saved before `gelu` existed used tanh; "none" is the old
        name of "exact". Fields added later (wpe ... aug_embed) default to the model as it was."""
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


def rope_angles(config: GPTConfig) -> torch.Tensor:
    """(block_size, hs/2) float64: the angle by which each position turns each (x_f, x_f+hs/2)
    pair of its queries and keys.

    "1d": position i turns pair f by i * 10000^(-2f/hs) (RoFormer), so q.k depends on i - j.
    "2d": the first half of the pairs turn by the symbol's pixel row, the second half by its
    column: symbol s = i - 1 covers row s // 5, column s % 5 of the 30x30 image (one bit per
    pixel, character tokens); the class digit is row -1, the closing ')' row 30."""
    hs = config.n_embd // config.n_head
    i = torch.arange(config.block_size, dtype=torch.float64)
    if config.rope == "1d":
        return torch.outer(i, 10000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs))
    theta = 100.0 ** (-torch.arange(hs // 4, dtype=torch.float64) / (hs // 4))   # (hs/4,)
    row, col = torch.div(i - 1, 5, rounding_mode="floor"), (i - 1).remainder(5)
    return torch.cat([torch.outer(row, theta), torch.outer(col, theta)], 1)


def apply_rope(x, cos, sin):
    """Turn the (x_f, x_f+hs/2) pairs of x (..., T, hs) by the angles whose cos, sin are (T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalConv(nn.Module):
    """A "canon layer": x + a causal depthwise convolution of x along the sequence,
    y_t = x_t + sum_j w_j * x_{t-j} (j = 0..k-1, one weight per channel). Each token sees the
    k-1 before it without attention; with k >= 6 that includes the symbol above (5 back).
    The weights start at zero, so the layer starts as the identity.

    With a cache (CanonKVCache), the last k-1 inputs are kept under `key` for the next call."""

    def __init__(self, n_embd: int, kernel: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(kernel, n_embd))    # (k, C); w_j = weight[j]

    def forward(self, x, cache=None, key=None):
        B, T, C = x.shape
        k = self.weight.shape[0]
        prev = cache.conv.get(key) if cache is not None and cache.pos > 0 else None
        if prev is None:                                           # the line starts here
            prev = x.new_zeros(B, k - 1, C)
        xp = torch.cat([prev, x], 1)                               # (B, k-1+T, C)
        if cache is not None:
            cache.conv[key] = xp[:, xp.shape[1] - (k - 1):]        # (B, k-1, C)
        w = self.weight.to(x.dtype)
        y = x
        for j in range(k):                                         # k shifted multiply-adds
            y = torch.addcmul(y, xp[:, k - 1 - j:k - 1 - j + T], w[j])   # (B, T, C)
        return y


class CanonKVCache(KVCache):
    """The KV cache plus each canon layer's last k-1 inputs: conv[(layer, i)] is (B, k-1, C)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conv = {}

    def expand(self, n: int) -> "CanonKVCache":
        new = super().expand(n)
        new.conv = {key: t.expand(n, -1, -1).contiguous() for key, t in self.conv.items()}
        return new


class RMSNorm(nn.Module):
    """x / rms(x) * gain over the last dimension, in x's dtype (nn.RMSNorm's fp32 gain would
    keep bf16 inputs off the fused kernel)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hs = config.n_embd // config.n_head
        self.n_head, self.n_kv_head, self.n_embd = config.n_head, config.kv_heads, config.n_embd
        # queries for every head, keys and values for each of the n_kv_head groups
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * self.n_kv_head) * hs, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        self.q_norm = RMSNorm(hs) if config.qk_norm else None
        self.k_norm = RMSNorm(hs) if config.qk_norm else None

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, rope=None, ve=None):
        """x (B, T, C); rope: (cos, sin), each (T, hs/2), for these T positions, or None;
        ve: (B, T, n_kv_head * hs) added to the values, or None."""
        B, T, C = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, C // self.n_head
        qkv = self.c_attn(x)                                     # (B, T, (nh + 2 nkv) hs)
        if T > 1 and x.device.type == "cpu" and nkv == nh:
            # one copy into head-major order, so the attention products read whole heads
            qkv = qkv.view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).contiguous()   # (3, B, nh, T, hs)
            q, k, v = qkv.unbind(0)                              # (B, nh, T, hs)
        else:
            q, k, v = qkv.split([nh * hs, nkv * hs, nkv * hs], dim=2)
            q = q.view(B, T, nh, hs).transpose(1, 2)             # (B, nh, T, hs)
            k, v = (t.view(B, T, nkv, hs).transpose(1, 2) for t in (k, v))   # (B, nkv, T, hs)
        if ve is not None:
            v = v + ve.to(v.dtype).view(B, T, nkv, hs).transpose(1, 2)   # (B, nkv, T, hs)
        prep = self._prep(cache, T, rope)
        if prep is None and self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if prep is None and rope is not None:    # the cache keeps the turned keys: a key's angle is its position's
            cos, sin = (t.to(q.dtype) for t in rope)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        p = 0
        if cache is not None:
            p = cache.pos
            k, v = cache.write(layer, k, v, prep)                # (B, nkv, p+T, hs)
        # no dropout on the attention weights: it would force the slow math kernel on CPU
        if p > 0 and T == 1:    # (with nkv < nh, query head h reads key/value head h // (nh / nkv))
            y = cache.attend_one(layer, q, prep)                 # (B, nh, 1, hs)
        else:
            if nkv != nh:     # each group of nh / nkv query heads reads one key/value head
                k, v = (t.repeat_interleave(nh // nkv, dim=1) for t in (k, v))   # (B, nh, p+T, hs)
            if p == 0 and T > 1 and x.device.type == "cpu":
                y = causal_attention(q, k, v)                    # (B, nh, T, hs)
            elif p == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            else:   # a chunk after a prefix: query i sees keys up to p + i
                mask = torch.ones(T, p + T, dtype=torch.bool, device=x.device).tril(diagonal=p)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)          # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


    def _prep(self, cache, T: int, rope) -> Prep | None:
        """A one-token decode step over a chunked (native) cache leaves QK-norm and rope to the
        cache's kernel (kvcache.Prep): one pass in fp32 instead of a dozen small ops a layer."""
        if (cache is None or T != 1 or cache.pos == 0 or not cache.chunked
                or (self.q_norm is None and rope is None)):
            return None
        qn, kn = self.q_norm, self.k_norm
        return Prep(qn and qn.weight, kn and kn.weight, qn.eps if qn else 0.0,
                    rope and rope[0][0], rope and rope[1][0])


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="none" if config.gelu == "exact" else "tanh")
        self.relu2 = config.act == "relu2"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)                                         # (B, T, 4C)
        h = F.relu(h).square() if self.relu2 else self.gelu(h)
        return self.dropout(self.c_proj(h))                      # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)
        k = config.conv_kernel        # canon layers on the attention's and/or the MLP's inputs
        self.canon_a = CausalConv(config.n_embd, k) if k and "a" in config.conv_at else None
        self.canon_c = CausalConv(config.n_embd, k) if k and "c" in config.conv_at else None

    def forward(self, x, cache=None, layer=0, rope=None, ve=None):
        h = self.ln_1(x)
        if self.canon_a is not None:
            h = self.canon_a(h, cache, (layer, 0))
        x = x + self.attn(h, cache, layer, rope, ve)
        h = self.ln_2(x)
        if self.canon_c is not None:
            h = self.canon_c(h, cache, (layer, 1))
        return x + self.mlp(h)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # (the order of the modules is the order of initialisation and of the optimizer's state)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **(dict(wpe=nn.Embedding(config.block_size, config.n_embd)) if config.wpe else {}),
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
        if config.rope != "none":
            ang = rope_angles(config)                           # (block_size, hs/2)
            self.register_buffer("rope_cos", ang.cos().float(), persistent=False)
            self.register_buffer("rope_sin", ang.sin().float(), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():                # GPT-2's scaled residual init
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:                       # each block starts as the identity
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        # made last, as zeros: the other weights are those of the model without them (same seed)
        if config.value_embed:
            kv = config.kv_heads * (config.n_embd // config.n_head)
            self.value_embeds = nn.ModuleList([nn.Embedding(config.vocab_size, kv) for _ in range(config.n_layer)])
            for e in self.value_embeds:
                nn.init.zeros_(e.weight)
        if config.unet:
            self.skip_weights = nn.Parameter(torch.zeros(config.n_layer // 2))
        if config.aug_embed:
            self.aug_embeds = nn.Embedding(config.aug_embed, config.n_embd)
            nn.init.zeros_(self.aug_embeds.weight)

    def augmentation(self, aug: torch.Tensor) -> torch.Tensor:
        """(B,) ids -> (B, C): zeros for id 0, the (id - 1)-th embedding otherwise."""
        n = self.config.aug_embed
        # checked where it costs nothing: on a CPU, outside torch.compile (the trainer's ids come
        # from data.shifted_epoch_lines, in range by construction)
        if aug.device.type == "cpu" and not torch.compiler.is_compiling() \
                and bool(((aug < 0) | (aug > n)).any()):
            raise ValueError(f"augmentation ids must be in 0..{n} (aug_embed), got "
                             f"{aug.min().item()}..{aug.max().item()}")
        if not n:
            return torch.zeros(len(aug), self.config.n_embd, device=aug.device)
        e = self.aug_embeds((aug - 1).clamp(min=0))                    # (B, C)
        return e * (aug > 0).unsqueeze(1).to(e.dtype)

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
        if non_embedding and self.config.wpe:
            n -= self.transformer.wpe.weight.numel()
        return n

    def new_cache(self, batch_size: int) -> KVCache:
        c = self.config
        cls = CanonKVCache if c.conv_kernel else KVCache
        return cls(c.n_layer, batch_size, c.kv_heads, c.block_size, c.n_embd // c.n_head)

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None, aug=None):
        """idx (B, T) token ids -> logits (B, T, V); loss = mean CE over targets (-1 = ignore).

        With kv_cache, idx holds the next T tokens after the cache's `pos` ones; the cache is
        advanced by T. aug (B,) augmentation ids (training with --shift-aug): 0 = the line as
        it is, k > 0 adds the k-th augmentation embedding at every position."""
        B, T = idx.shape
        p0 = kv_cache.pos if kv_cache is not None else 0
        if p0 + T > self.config.block_size:
            raise ValueError(f"sequence of {p0 + T} tokens > block size {self.config.block_size}")
        x = self.transformer.wte(idx)                            # (B, T, C)
        if self.config.wpe:
            x = x + self.transformer.wpe(torch.arange(p0, p0 + T, device=idx.device))
        if self.config.bit_embed:
            x = x + self.bit_proj(self.symbol_bits[idx])                # (B, T, C)
        if aug is not None:
            x = x + self.augmentation(aug)[:, None, :]                  # (B, 1, C)
        rope = None
        if self.config.rope != "none":
            dt = self.transformer.wte.weight.dtype          # cast once here, not in every layer
            rope = (self.rope_cos[p0:p0 + T].to(dt), self.rope_sin[p0:p0 + T].to(dt))  # (T, hs/2) each
        x = self.transformer.drop(x)
        n, half, skips = self.config.n_layer, self.config.n_layer // 2 if self.config.unet else 0, []
        for i, block in enumerate(self.transformer.h):
            if i >= n - half:                                     # the mirror layer's output
                x = x + self.skip_weights[n - 1 - i] * skips.pop()
            ve = self.value_embeds[i](idx) if self.config.value_embed else None   # (B, T, kv)
            x = block(x, kv_cache, i, rope, ve)
            if i < half:
                skips.append(x)
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
