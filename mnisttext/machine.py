"""Measured facts about this machine, cached: is a bf16 matmul faster than fp32 here?

    from mnisttext.machine import cpu_dtype_choice
    cpu_dtype_choice()          # 'bf16' or 'fp32', timed once, then read from the cache file

Whether bf16 pays differs between CPUs that all report AVX-512 bf16 (it has been seen both 3x
faster and 2x slower than fp32), so it is timed, not assumed. The cache lives in
$MNISTTEXT_CACHE or ~/.cache/mnisttext/machine.json, keyed by the CPU model, torch version
and thread count; MNISTTEXT_DTYPE=bf16|fp32 overrides the measurement.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


def cache_path() -> Path:
    root = os.environ.get("MNISTTEXT_CACHE") or Path.home() / ".cache" / "mnisttext"
    return Path(root) / "machine.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _key() -> str:
    return f"{cpu_model()}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def matmul_flops(dtype: torch.dtype, n: int = 512, reps: int = 8) -> float:
    """Best FLOP/s of an (n x n) @ (n x n) matmul in this dtype, over a few timed repeats."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def measure_cpu_dtype() -> dict:
    """Time both dtypes now (~0.1 s); bf16 wins only with a clear (10%) margin."""
    with torch.inference_mode():
        fp32, bf16 = matmul_flops(torch.float32), matmul_flops(torch.bfloat16)
    return {"fp32_flops": fp32, "bf16_flops": bf16, "choice": "bf16" if bf16 > 1.1 * fp32 else "fp32"}


def _read_cache() -> dict:
    try:
        obj = json.loads(cache_path().read_text())
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(obj: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass      # a read-only home only costs a re-measurement next time


_memo: dict = {}


def cpu_dtype_choice() -> str:
    """'bf16' or 'fp32' for this CPU (see the module docstring)."""
    forced = os.environ.get("MNISTTEXT_DTYPE", "").lower()
    if forced in ("bf16", "fp32"):
        return forced
    key = _key()
    if key not in _memo:
        cache = _read_cache()
        entry = cache.get(key)
        if not isinstance(entry, dict) or entry.get("choice") not in ("bf16", "fp32"):
            entry = measure_cpu_dtype()
            cache[key] = entry
            _write_cache(cache)
        _memo[key] = entry["choice"]
    return _memo[key]
