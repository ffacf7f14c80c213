"""GPT-2 style decoder over the character tokens, with an explicit KV cache.

    from mnisttext.model import GPT, GPTConfig, PRESETS
    model = GPT(GPTConfig(**PRESETS["seed"]))
    logits, loss = model(idx, targets)                     # training
    cache = model.new_cache(batch_size=64)                 # generation: see sample.py
    logits, _ = model(idx[:, :1], kv_cache=cache)          # prefill, then one token at a time

A GRU (the original pixel-RNN's architecture) sits behind the same interface: its "cache" is its
hidden state. `build_model(config)` picks the class from `config.arch`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F


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
    # The MLP's GELU: "none" is the exact (erf) one, "tanh" GPT-2's approximation. In bf16 on a
    # CPU core the exact one's forward + backward took 12-13 ms against tanh's 28-29 ms for a
    # (32*151, 1024) tensor. Configs saved before this field existed used "tanh".
    gelu: str = "none"

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        if d.get("gelu", "tanh") not in ("none", "tanh"):
            raise ValueError(f"gelu must be 'none' or 'tanh', not {d['gelu']!r}")
        return cls(**{"gelu": "tanh", **d})

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # the original project's model
    "seed": dict(n_layer=8, n_head=8, n_embd=256, dropout=0.1),
    # the default recipe's model for short CPU runs: a smaller net sees more images per minute
    "small": dict(n_layer=4, n_head=4, n_embd=256, dropout=0.0),
    # the shipped model: deeper than small, 64-wide heads (the CPU's attention kernels are faster
    # at 64 than at 32); ~4.8M params is near compute-optimal for a couple of CPU hours
    "flagship": dict(n_layer=6, n_head=4, n_embd=256, dropout=0.0),
    "gru": dict(arch="gru", n_layer=2, n_embd=512, dropout=0.0),
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, dropout=0.0),   # tests
}


class KVCache:
    """Keys and values of every layer for the positions seen so far.

    k, v: (n_layer, B, nh, capacity, hs), filled up to `pos`, in the dtype the layers compute in
    (e.g. bf16 under autocast). The capacity starts at `min_capacity` positions and doubles as
    needed (up to block_size): a decode step writes one slice and attends over the whole
    contiguous buffer with the unwritten tail masked. Reading the cache is most of a decode
    step's memory traffic, so short lines (BPE tokens: ~30 per line) read a 32- or 64-long
    buffer instead of a 152-long one; doubling keeps the copies on growth few."""

    min_capacity = 16

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=None):
        hs = config.n_embd // config.n_head
        self.shape = (config.n_layer, batch_size, config.n_head, config.block_size, hs)
        self.device, self.dtype = device, dtype
        self.k = self.v = None
        self.pos = 0
        self._mask = self._mask_key = None

    @property
    def batch_size(self) -> int:
        return self.shape[1]

    @property
    def capacity(self) -> int:
        return 0 if self.k is None else self.k.shape[3]

    def _grow(self, need: int, like: torch.Tensor):
        cap = max(self.min_capacity, self.capacity)
        while cap < need:
            cap *= 2
        cap = min(self.shape[3], cap)
        shape = self.shape[:3] + (cap,) + self.shape[4:]
        dtype = self.dtype or like.dtype
        k = torch.empty(shape, device=like.device, dtype=dtype)
        v = torch.empty(shape, device=like.device, dtype=dtype)
        p = self.pos
        if self.k is not None:
            k[:, :, :, :p] = self.k[:, :, :, :p]
            v[:, :, :, :p] = self.v[:, :, :, :p]
        # the unwritten tail is masked, but it must hold finite numbers: -inf + NaN is NaN
        k[:, :, :, p:] = 0
        v[:, :, :, p:] = 0
        self.k, self.v = k, v

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, nh, T, hs) at pos..pos+T; return all keys and values so far."""
        p, T = self.pos, k.shape[2]
        if p + T > self.capacity:
            self._grow(p + T, k)
        self.k[layer, :, :, p:p + T] = k
        self.v[layer, :, :, p:p + T] = v
        return self.k[layer, :, :, :p + T], self.v[layer, :, :, :p + T]   # (B, nh, p+T, hs)

    def tail_mask(self, dtype) -> torch.Tensor:
        """(capacity,) 0 for the positions written up to and including pos, -inf after: the
        additive mask of a one-token decode step, made once per step and shared by the layers."""
        key = (self.pos, self.capacity, dtype)
        if self._mask_key != key:
            self._mask = torch.zeros(self.capacity, dtype=dtype, device=self.k.device)
            self._mask[self.pos + 1:] = float("-inf")
            self._mask_key = key
        return self._mask

    def expand(self, n: int) -> "KVCache":
        """A cache of batch n from one of batch 1 (the prefilled class prefix)."""
        assert self.batch_size == 1, "expand a cache of batch 1"
        new = object.__new__(KVCache)
        new.__dict__.update(self.__dict__)
        new.shape = (self.shape[0], n) + self.shape[2:]
        if self.k is not None:
            new.k = self.k.expand(-1, n, -1, -1, -1).contiguous()
            new.v = self.v.expand(-1, n, -1, -1, -1).contiguous()
        return new


class _CpuDropout(torch.autograd.Function):
    """x * m, m = 0 or 1/(1-p) in x's dtype; the backward is g * m with the same m."""

    @staticmethod
    def forward(ctx, x, p):
        n = x.numel()
        # 64-bit draws cost ~2x a 32-bit one here and give four 16-bit quarters
        bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        cut = round(p * 65536)                       # P(int16 < cut - 32768) = cut / 65536
        m = bits.view(torch.int16)[:n].view(x.shape) >= cut - 32768
        m = m.to(x.dtype).mul_(65536 / (65536 - cut))
        ctx.save_for_backward(m)
        return x * m

    @staticmethod
    def backward(ctx, g):
        m, = ctx.saved_tensors
        return g * m, None


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on CPU: one 64-bit random draw makes the mask of four
    elements (int16 quarters against a threshold), where torch's bernoulli_ draws one per element,
    and the mask is kept in the activations' dtype with the 1/(1-p) scale folded in. Forward and
    backward of a (32, 151, 256) bf16 tensor took 6.1-6.9 ms on a Zen 5 core, F.dropout's
    9.4-11.1 ms. p is rounded to a multiple of 1/65536 and survivors are scaled by 1/(1 - that
    p) (rounded to the dtype, as F.dropout's scale is). Elsewhere (GPU) it is nn.Dropout."""

    def forward(self, x):
        if not self.training or self.p == 0 or self.p >= 1 or x.device.type != "cpu":
            return super().forward(x)
        return _CpuDropout.apply(x, self.p)


def symbol_bit_table(vocab_size: int) -> torch.Tensor:
    """(V, 6) float: the MSB-first pixel bits of each symbol token (ids 10..73), zeros elsewhere."""
    t = torch.zeros(vocab_size, 6)
    v = torch.arange(64)
    t[10:74] = ((v[:, None] >> torch.arange(5, -1, -1)) & 1).float()
    return t


def causal_attention(q, k, v, chunks: int = 2):
    """softmax(q k^T / sqrt(hs) + causal mask) v, spelled out: (B, nh, T, hs) -> (B, nh, T, hs).

    On CPU the fused flash kernel is slow for these short sequences: with its backward pass it
    took 2x the time of this matmul-softmax-matmul on a 2-core laptop (1.47x more training
    tokens/s for the whole model). The queries go in `chunks` row blocks, each against only the
    keys it may see: with 2 blocks the products and the softmax cover 3/4 of the T x T square
    instead of all of it. The result is a (B, nh, T, hs) view of a (B, T, nh, hs) tensor, so the
    caller's merge of the heads is free."""
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
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x)                                     # (B, T, 3C)
        if T > 1 and x.device.type == "cpu":
            # one copy into head-major order, so that the attention products read whole heads
            # without copies of their own (a strided batch would make each matmul copy its input)
            qkv = qkv.view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).contiguous()   # (3, B, nh, T, hs)
            q, k, v = qkv.unbind(0)                              # (B, nh, T, hs)
        else:
            q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(C, dim=2))  # (B, nh, T, hs)
        p = 0
        if cache is not None:
            p = cache.pos
            k, v = cache.write(layer, k, v)                      # (B, nh, p+T, hs)
        drop = 0.0   # no dropout on attention weights: it forces the slow math kernel on CPU
        if p == 0 and T > 1 and x.device.type == "cpu":
            y = causal_attention(q, k, v)                        # (B, nh, T, hs)
        elif p == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=T > 1)
        elif T == 1:
            # One query per sequence: attend over the cache's whole buffer with the unwritten
            # tail masked. Contiguous (B*nh, cap, hs) views need no copies; on CPU a sliced
            # (strided) matmul would copy the keys first, and the flash kernel is slower still.
            kf, vf = cache.k[layer], cache.v[layer]               # (B, nh, cap, hs)
            cap = kf.shape[2]
            att = torch.baddbmm(cache.tail_mask(q.dtype), q.reshape(B * nh, 1, hs),
                                kf.view(B * nh, cap, hs).transpose(1, 2),
                                alpha=1.0 / math.sqrt(hs))          # (B*nh, 1, cap)
            y = torch.bmm(att.softmax(-1), vf.view(B * nh, cap, hs)).view(B, nh, 1, hs)
        else:   # a chunk after a prefix: query i sees keys up to p + i
            mask = torch.ones(T, p + T, dtype=torch.bool, device=x.device).tril(diagonal=p)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(B, T, C)          # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu)
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
            # A symbol is 6 pixels; telling the model which ones are set lets it use the pixel
            # structure from the first step instead of learning it from 64 unrelated ids.
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

    def new_cache(self, batch_size: int, device=None, dtype=None) -> KVCache:
        return KVCache(self.config, batch_size, device, dtype)

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None):
        """idx (B, T) token ids -> logits (B, T, V); loss = mean CE over targets if given.

        With kv_cache, idx holds the next T tokens after the cache's `pos` ones; the cache is
        advanced by T."""
        B, T = idx.shape
        p0 = kv_cache.pos if kv_cache is not None else 0
        assert p0 + T <= self.config.block_size, f"sequence {p0 + T} > block {self.config.block_size}"
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


class PackedLinear(nn.Module):
    """Inference-only nn.Linear (bf16, CPU) with its weight reordered once into oneDNN's blocked
    layout, optionally with the MLP's GELU ("none" = exact or "tanh") fused into the same call.

    F.linear reorders the weight on every call: with the 64-row inputs of a decode step that
    reorder is a good part of the call. Built by `pack_for_cpu_decode`, never trained or saved:
    the packed weight is an opaque oneDNN tensor (no state_dict entry, no deepcopy, bf16 in)."""

    def __init__(self, linear: nn.Linear, gelu: str | None = None, rows: int = 64):
        super().__init__()
        self.out_features = linear.out_features
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows),
                             persistent=False)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.attr, self.algo = ("gelu", gelu) if gelu else ("none", "")

    def forward(self, x):
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), self.weight, self.bias,
                                               self.attr, [], self.algo)
        return y.view(*shape[:-1], self.out_features)


def pack_for_cpu_decode(model: nn.Module, rows: int = 64) -> bool:
    """Swap a bf16 CPU GPT's linear layers for PackedLinear (in place); False where this build of
    PyTorch lacks the oneDNN ops, or they disagree with F.linear (the model is then untouched)."""
    if not isinstance(model, GPT) or not torch.backends.mkldnn.is_available():
        return False
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.bfloat16:
        return False
    # a self-check on a small layer (private ops may change between releases), off the global RNG
    with torch.random.fork_rng(devices=[]):
        try:
            lin = nn.Linear(16, 8).to(torch.bfloat16)
            x = torch.randn(3, 2, 16, dtype=torch.bfloat16)
            for gelu in (None, "none", "tanh"):
                want = lin(x)
                want = F.gelu(want, approximate=gelu) if gelu else want
                torch.testing.assert_close(PackedLinear(lin, gelu, 3)(x), want, atol=0.05, rtol=0.02)
        except Exception:
            return False
    with torch.no_grad():
        for block in model.transformer.h:
            att, mlp = block.attn, block.mlp
            att.c_attn, att.c_proj = PackedLinear(att.c_attn, rows=rows), PackedLinear(att.c_proj, rows=rows)
            mlp.c_fc = PackedLinear(mlp.c_fc, gelu=mlp.gelu.approximate, rows=rows)
            mlp.gelu = nn.Identity()
            mlp.c_proj = PackedLinear(mlp.c_proj, rows=rows)
        model.lm_head = PackedLinear(model.lm_head, rows=rows)   # wte keeps the plain (tied) weight
    return True


class GRUCache:
    """The GRU's 'cache': its hidden state after the tokens seen so far."""

    def __init__(self, h: torch.Tensor | None, pos: int = 0):
        self.h, self.pos = h, pos

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]

    def expand(self, n: int) -> "GRUCache":
        return GRUCache(self.h.expand(-1, n, -1).contiguous(), self.pos)


class GRU(nn.Module):
    """Stacked GRU language model with the GPT's interface (the pixel-RNN baseline)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.rnn = nn.GRU(config.n_embd, config.n_embd, num_layers=config.n_layer,
                          dropout=config.dropout if config.n_layer > 1 else 0.0, batch_first=True)
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def num_params(self, non_embedding: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, device=None, dtype=None) -> GRUCache:
        return GRUCache(None)

    def forward(self, idx, targets=None, kv_cache: GRUCache | None = None):
        B, T = idx.shape
        h0 = kv_cache.h if kv_cache is not None else None
        x, h = self.rnn(self.wte(idx), h0)                       # (B, T, C), (L, B, C)
        if kv_cache is not None:
            kv_cache.h, kv_cache.pos = h, kv_cache.pos + T
        logits = self.lm_head(self.ln_f(x))                      # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss


def build_model(config: GPTConfig) -> nn.Module:
    if config.arch == "gpt":
        return GPT(config)
    if config.arch == "gru":
        return GRU(config)
    raise ValueError(f"unknown arch {config.arch!r} (gpt or gru)")
