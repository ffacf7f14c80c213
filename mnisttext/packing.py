"""Decode-time weights: the model as the sampler runs it.

    from mnisttext.packing import build_sampler
    fast = build_sampler(model, "bf16")          # a bf16 copy, linear layers prepacked on a CPU

Which dtype to sample in is measured per machine (tuning.prepare_for_sampling). Casting the weights once beats autocast, which would recast every weight at
every decode step. On a CPU in bf16 the linear layers' weights are also reordered once into
oneDNN's blocked layout (PackedLinear): F.linear reorders the weight on every call, a good part
of a call with the few-hundred-row inputs of a decode step.
"""
from __future__ import annotations

import copy
import functools

import torch
import torch.nn as nn
from torch.nn import functional as F

from .int8 import quantize_blocks
from .model import GPT


class PackedLinear(nn.Module):
    """Inference-only nn.Linear (bf16, CPU) with its weight prepacked for oneDNN, optionally with
    the MLP's GELU ("exact" or "tanh") fused into the same call. Never trained or saved: the
    packed weight is an opaque oneDNN tensor (no state_dict entry, no deepcopy)."""

    def __init__(self, linear: nn.Linear, gelu: str | None = None, rows: int = 64, relu: bool = False):
        super().__init__()
        self.out_features = linear.out_features
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows),
                             persistent=False)
        self.bias = None if linear.bias is None else linear.bias.detach()
        # oneDNN names the exact GELU "none"
        self.attr, self.algo = ("gelu", "none" if gelu == "exact" else gelu) if gelu else ("none", "")
        if relu:
            self.attr, self.algo = "relu", ""

    def forward(self, x):
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), self.weight, self.bias,
                                               self.attr, [], self.algo)
        return y.view(*shape[:-1], self.out_features)


@functools.cache
def _packing_works() -> bool:
    """A self-check on a small layer, once per process: private ops may change between releases."""
    with torch.random.fork_rng(devices=[]):
        try:
            lin = nn.Linear(16, 8).to(torch.bfloat16)
            x = torch.randn(3, 2, 16, dtype=torch.bfloat16)
            for gelu in (None, "exact", "tanh"):
                want = lin(x)
                if gelu:
                    want = F.gelu(want, approximate="none" if gelu == "exact" else gelu)
                torch.testing.assert_close(PackedLinear(lin, gelu, 3)(x), want, atol=0.05, rtol=0.02)
            torch.testing.assert_close(PackedLinear(lin, None, 3, relu=True)(x), F.relu(lin(x)),
                                       atol=0.05, rtol=0.02)
        except Exception:
            return False
    return True


class Square(nn.Module):
    """x * x: what is left of ReLU² once c_fc applies the ReLU."""

    def forward(self, x):
        return x.square()


def pack_for_cpu_decode(model: nn.Module, rows: int = 64) -> bool:
    """Swap a bf16 CPU GPT's linear layers for PackedLinear (in place); False where this build of
    PyTorch lacks the oneDNN ops, or they disagree with F.linear (the model is then untouched)."""
    if not isinstance(model, GPT) or not torch.backends.mkldnn.is_available():
        return False
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.bfloat16 or not _packing_works():
        return False
    relu2 = getattr(model.config, "act", "gelu") == "relu2"
    gelu = None if relu2 else model.config.gelu
    with torch.no_grad():
        for block in model.transformer.h:
            att, mlp = block.attn, block.mlp
            att.c_attn, att.c_proj = PackedLinear(att.c_attn, rows=rows), PackedLinear(att.c_proj, rows=rows)
            mlp.c_fc = PackedLinear(mlp.c_fc, gelu=gelu, rows=rows, relu=relu2)
            if gelu:                 # fused into c_fc
                mlp.gelu = nn.Identity()
            if relu2:                # the ReLU fused into c_fc, its square left to MLP.forward
                mlp.relu2, mlp.gelu = False, Square()
            mlp.c_proj = PackedLinear(mlp.c_proj, rows=rows)
        model.lm_head = PackedLinear(model.lm_head, rows=rows)   # wte keeps the plain (tied) weight
    return True


def build_sampler(model: nn.Module, dtype: str) -> nn.Module:
    """The sampler of one dtype, in eval mode: 'fp32' is the model itself; 'bf16' a bf16 copy,
    its linear layers prepacked on a CPU; 'int8' that copy with its blocks' linear layers as
    8-bit integer products (int8.Int8Linear, rounded from the model's own weights)."""
    if dtype == "fp32":
        return model.eval()
    fast = copy.deepcopy(model).to(torch.bfloat16).eval()
    if next(model.parameters()).device.type == "cpu":
        pack_for_cpu_decode(fast)
        if dtype == "int8":
            quantize_blocks(fast, model)
    return fast
