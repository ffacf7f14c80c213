"""Where and how the model runs: device, dtype, threads, and CPU-only tricks.

    from mnisttext import runtime
    device = runtime.resolve_device("auto")          # cuda if present, else cpu; clear errors
    with runtime.autocast(device, "auto"): ...       # bf16 only where it measured faster here
    runtime.keep_freed_memory()                      # glibc: no page faults per training step

Everything that depends on the machine rather than on the model lives here, so the model file
stays a plain GPT and the choices can be measured and tested in one place.
"""
from __future__ import annotations

import ctypes
import os
import sys

import torch
import torch.nn as nn

from .machine import cpu_dtype_choice

DTYPES = ("auto", "bf16", "fp32", "int8")   # int8: the sampler's linear layers (tuning.py)


class DeviceError(ValueError):
    """A device that does not exist here; the message names the flag value."""


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda (this rank's GPU under torchrun) when present, else cpu; 'cuda', 'cuda:1',
    'cpu' are checked against what this machine has."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {name!r}: not a device (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise DeviceError(f"device {name!r}: only cpu and cuda are supported")
    return device


def bf16_capable(device) -> bool:
    """Whether bf16 math exists here at all (not whether it is fast: see use_bf16)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cap = torch.backends.cpu.get_cpu_capability().upper()
        return "AVX512" in cap or "AMX" in cap
    return False


def use_bf16(device, dtype: str = "auto") -> bool:
    """The dtype decision for training and teacher-forced evaluation (autocast): 'bf16' / 'fp32'
    force it; 'auto' picks bf16 on a GPU that has it and, on a CPU, only where a training step's
    matmuls measured faster in bf16 (machine.cpu_dtype_choice, timed once and cached). The
    sampler decides for itself from a timed decode step (tuning.prepare_for_sampling); 'int8'
    concerns only the sampler, so teacher-forced passes take 'auto' there."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    device = torch.device(device)
    if dtype not in ("auto", "int8"):
        return dtype == "bf16"
    if not bf16_capable(device):
        return False
    if device.type == "cuda":
        return True
    return cpu_dtype_choice() == "bf16"


def autocast(device, dtype: str = "auto"):
    """torch.autocast to bf16 where use_bf16 says so, else a disabled one."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device, dtype))


def set_threads(n: int) -> None:
    """torch's CPU threads; 0 keeps torch's default (one per core)."""
    if n:
        torch.set_num_threads(n)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve big blocks from its heap and keep what is freed there.

    By default glibc maps blocks over its mmap threshold fresh from the kernel and unmaps them
    when freed; a CPU training step allocates and frees hundreds of activation blocks, so their
    pages fault in again every step (docs/performance.md has the counts). The cost: the process
    keeps its peak memory until it exits. False off Linux, or where the C library has no mallopt
    or refuses the setting (musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30) and mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


class _CpuDropout(torch.autograd.Function):
    """x * m, m = 0 or 1/(1-p) in x's dtype; the backward is g * m with the same m."""

    @staticmethod
    def forward(ctx, x, p):
        n = x.numel()
        # one 64-bit draw gives four 16-bit quarters: a quarter of the random numbers
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
    and the mask is kept in the activations' dtype with the 1/(1-p) scale folded in. p is rounded
    to a multiple of 1/65536. Elsewhere (GPU) it is nn.Dropout."""

    def forward(self, x):
        if not self.training or self.p == 0 or self.p >= 1 or x.device.type != "cpu":
            return super().forward(x)
        return _CpuDropout.apply(x, self.p)
