"""Shared by the benchmark scripts: the measured matmul peak, machine facts, the JSONL history."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HISTORY = Path(__file__).parent / "history.jsonl"
sys.path.insert(0, str(ROOT))


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype=torch.bfloat16, device="cpu", sizes=(1024, 2048), reps=5) -> float:
    """Best FLOP/s of square matmuls at this dtype on this device, measured now. torch.int8 times
    torch._int_mm (int32 sums; 2 ops a multiply-add, on a CPU), 0 where this torch has none."""
    best = 0.0
    big = (4096, 8192) if torch.device(device).type == "cuda" else ()
    mm = torch._int_mm if dtype == torch.int8 else torch.matmul
    for n in tuple(sizes) + big:
        if dtype == torch.int8:
            a, b = (torch.randint(-127, 128, (n, n), dtype=dtype, device=device) for _ in range(2))
        else:
            a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
        try:
            for _ in range(2):
                mm(a, b)
        except (RuntimeError, AttributeError):
            return 0.0
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            mm(a, b)
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t))
    return best


def cpu_name() -> str:
    """The CPU's model name, with its family/model numbers where /proc/cpuinfo has them (a
    virtual machine may report only "AMD EPYC")."""
    from mnisttext.machine import cpu_model
    name = cpu_model()
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        if "cpu family" in info and "model" in info:
            name += f" (family {info['cpu family']}, model {info['model']})"
    except OSError:
        pass
    return name


def machine(device="cpu") -> dict:
    from mnisttext.machine import cores
    d = {"platform": platform.platform(), "cpu": cpu_name(), "cpus": cores(),
         "threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device)}
    if torch.device(device).type == "cuda":
        d["gpu"] = torch.cuda.get_device_name()
    return d


def repo_relative(value):
    """A path inside the repository as written from its root (history.jsonl is shared across
    machines and clones); anything else unchanged."""
    if isinstance(value, str) and os.path.isabs(value):
        try:
            return str(Path(value).resolve().relative_to(ROOT))
        except ValueError:
            return value
    return value


def record(bench: str, result: dict) -> None:
    result = {k: repo_relative(v) for k, v in result.items()}
    rec = {"bench": bench, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}
    with open(HISTORY, "a") as f:
        f.write(json.dumps(rec) + "\n")


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    print(title)
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        if isinstance(v, float):
            v = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        print(f"  {k:<{w}}  {v}")
