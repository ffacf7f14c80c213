"""Measured facts about this machine, cached: which dtype trains and decodes faster here, with how
many threads (or workers), and how many rows a decode batch should hold.

    from mnisttext import machine
    machine.cpu_dtype_choice()          # 'bf16' or 'fp32' for training (autocast), timed once
    machine.decode_plan(model)          # {'choice', 'bf16': {'workers', 'threads', 'rows', ...}, ...}

Whether bf16 pays differs between CPUs that all report AVX-512 bf16 (it has been seen both 3x
faster and 2x slower than fp32), and the answer for a decode step (small matmuls, a KV cache to
read) need not be the answer for a training step, so both are timed on the real shapes, not
assumed. Results are cached in $MNISTTEXT_CACHE or ~/.cache/mnisttext/machine.json, keyed by the
CPU model, the torch version, the core count (and, for decoding, the model's shape); delete the
file, or pass refresh=True, to measure again. MNISTTEXT_DTYPE=bf16|fp32 overrides every
measured dtype choice.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from . import env

MARGIN = 1.1            # bf16 must beat fp32 by this factor to be chosen (timings are noisy)
DECODE_ROWS = (64, 640)  # decode batches timed: one digit's candidates, and all ten digits'
MAX_ROWS = 1024          # the most rows a decode batch may hold
KV_BUDGET = 2 << 30      # ... and the most bytes its KV cache may take (less on a small machine)


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


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _key(kind: str, extra: str = "") -> str:
    return f"{kind}|{cpu_model()}|torch {torch.__version__}|cores {cores()}" + (f"|{extra}" if extra else "")


def _read_cache() -> dict:
    try:
        obj = json.loads(cache_path().read_text())
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def _write_cache(key: str, entry: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        obj = _read_cache()          # re-read: another process may have added entries
        obj[key] = entry
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass      # a read-only home only costs a re-measurement next time


def _forced(choices=("bf16", "fp32")) -> str | None:
    """MNISTTEXT_DTYPE where it names one of `choices` (training's, or the sampler's)."""
    forced = env.forced_dtype()
    return forced if forced in choices else None


def _best_time(fn, reps: int = 2) -> float:
    fn()                                       # warm up (first-call allocations, kernel choice)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# --- matmuls and training -------------------------------------------------------------------

def matmul_flops(dtype: torch.dtype, n: int = 512, reps: int = 8) -> float:
    """Best FLOP/s of an (n x n) @ (n x n) matmul in this dtype, over a few timed repeats."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    with torch.inference_mode():
        return 2 * n ** 3 / _best_time(lambda: a @ b, reps)


def train_step_flops(bf16: bool, rows: int = 2048, width: int = 256) -> float:
    """FLOP/s of a training step's matmuls at the trainer's shapes: forward and backward of the
    MLP of a 256-wide block (256 -> 1024 -> 256) over `rows` tokens, fp32 weights, under bf16
    autocast or not, as train.py runs them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(approximate="tanh"),
                                  torch.nn.Linear(4 * width, width))
        x = torch.randn(rows, width)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = mlp(x)
        y.float().square().mean().backward()
        mlp.zero_grad(set_to_none=True)

    return 3 * 2 * rows * 2 * width * 4 * width / _best_time(step)


def measure_cpu_dtype() -> dict:
    """Time a training step's matmuls in both dtypes now (~0.2 s); bf16 wins only by MARGIN."""
    # a training step needs autograd, even when the first caller is inside inference_mode
    with torch.inference_mode(False), torch.enable_grad():
        fp32, bf16 = train_step_flops(False), train_step_flops(True)
    return {"fp32_flops": fp32, "bf16_flops": bf16,
            "choice": "bf16" if bf16 > MARGIN * fp32 else "fp32"}


_memo: dict = {}


def cpu_dtype_choice(purpose: str = "train") -> str:
    """'bf16' or 'fp32' for training (and teacher-forced evaluation) on this CPU: measured once
    (measure_cpu_dtype), then read from the cache. Decoding has its own plan (decode_plan)."""
    forced = _forced()
    if forced:
        return forced
    if purpose != "train":
        raise ValueError(f"purpose {purpose!r}: decoding is planned per model (decode_plan)")
    key = _key("train", f"threads {torch.get_num_threads()}")
    if key not in _memo:
        entry = _read_cache().get(key)
        if not isinstance(entry, dict) or entry.get("choice") not in ("bf16", "fp32"):
            entry = measure_cpu_dtype()
            _write_cache(key, entry)
        _memo[key] = entry
    return _memo[key]["choice"]
