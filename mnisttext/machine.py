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

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

MARGIN = 1.1            # bf16 must beat fp32 by this factor to be chosen (timings are noisy)
DECODE_ROWS = (64, 256)  # decode batches timed: one digit's candidates, and several digits'
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
    except (OSError, ValueError):
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


def _forced() -> str | None:
    forced = os.environ.get("MNISTTEXT_DTYPE", "").lower()
    return forced if forced in ("bf16", "fp32") else None


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


# --- decoding --------------------------------------------------------------------------------

def model_signature(model) -> str:
    """What a decode step's cost depends on: the model's config (its shapes and options)."""
    cfg = getattr(model, "config", None)
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else {"class": type(model).__name__}
    d.pop("dropout", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def kv_bytes_per_row(model, dtype: torch.dtype) -> int:
    c = model.config
    return 2 * c.n_layer * c.block_size * c.kv_heads * (c.n_embd // c.n_head) * dtype.itemsize


def _filled_cache(model, rows: int, pos: int, kv: torch.Tensor | None = None, int8: bool = False):
    """A KV cache of `rows` rows holding `pos` positions of keys and values: the rows of kv
    (rows, n_kv, pos, hs) where given, else zeros (the cost of a step does not depend on them);
    int8: stored as the sampler stores them with the plan's kv 'int8'."""
    p = next(model.parameters())
    c = model.config
    if kv is None:
        kv = torch.zeros((rows, c.kv_heads, pos, c.n_embd // c.n_head), device=p.device, dtype=p.dtype)
    cache = model.new_cache(rows)
    with torch.inference_mode():
        for layer in range(c.n_layer):
            cache.write(layer, kv, kv)
        cache.pos = pos
        if int8:
            cache = type(cache).cat([cache], 1, int8=True)
    return cache


def time_decode_step(model, rows: int, pos: int | None = None, workers: int = 1, reps: int = 2,
                     int8: bool = False) -> float:
    """Seconds of one decode step of `rows` rows at position `pos` (mid-line by default), the
    rows split among `workers` threads as the sampler splits them (sample.Workers); the calling
    thread's torch threads as they are; int8: keys and values stored as int8."""
    from .sample import Workers, _slices
    pos = model.config.block_size // 2 if pos is None else pos
    slices = _slices(rows, workers)
    caches = [_filled_cache(model, s.stop - s.start, pos, int8=int8) for s in slices]
    tok = torch.randint(10, 74, (rows, 1), generator=torch.Generator().manual_seed(1))
    tok = tok.to(next(model.parameters()).device)

    def forward(i):
        caches[i].pos = pos
        caches[i]._attends = True          # as in a decode: the kernel stores the new k, v
        return model(tok[slices[i]], kv_cache=caches[i])[0]

    with torch.inference_mode(), Workers(len(slices)) as pool:
        return _best_time(lambda: pool.map(forward, range(len(slices))), reps)


def _int8_kv_possible(model) -> bool:
    from .kvcache import KVCache
    c = model.new_cache(1)
    return isinstance(c, KVCache) and c._native_ok(next(model.parameters()).new_empty(0))


def rows_independent(model, rows: int = 256, pos: int = 8, int8: bool = False) -> bool:
    """Whether a decode step gives a row the same logits, bit for bit, in a batch of `rows`
    as in a batch of sample.MIN_ROWS: what lets the sampler decode several digits together and
    keep the seed contract (a digit's lines do not depend on what is decoded beside it)."""
    from .sample import MIN_ROWS
    p = next(model.parameters())
    c = model.config
    g = torch.Generator().manual_seed(2)
    kv = torch.randn((rows, c.kv_heads, pos, c.n_embd // c.n_head), generator=g).to(p.device, p.dtype)
    tok = torch.randint(10, 74, (rows, 1), generator=g).to(p.device)
    big = _filled_cache(model, rows, pos, kv, int8)
    small = _filled_cache(model, MIN_ROWS, pos, kv[:MIN_ROWS], int8)
    with torch.inference_mode():
        a = model(tok, kv_cache=big)[0][:MIN_ROWS]
        b = model(tok[:MIN_ROWS], kv_cache=small)[0]
    return bool(torch.equal(a, b))


def decode_configs() -> list[tuple[int, int]]:
    """(workers, torch threads) to time: one thread; and with several cores, all of them as
    torch's threads in one batch, or as workers of one thread each (sample.Workers)."""
    n = min(cores(), torch.get_num_threads())
    return [(1, 1)] + ([(1, n), (n, 1)] if n > 1 else [])


def measure_decode(model, candidates: dict, configs=None) -> dict:
    """Time decode steps of each candidate sampler ({'fp32': model, 'bf16': model}) at
    DECODE_ROWS rows in each (workers, threads) config; the plan: per dtype the config with the
    least time over DECODE_ROWS (one digit's latency and a batch's throughput count alike), the
    keys' and values' storage ('int8' where it decodes 5% faster than the model's dtype, else
    'model'), the rows per batch (many where they decode measurably faster per row, up to
    MAX_ROWS and a memory budget), whether rows are batch-independent; and the faster dtype
    (bf16 by MARGIN)."""
    configs = configs or decode_configs()
    old = torch.get_num_threads()
    plan = {"cpu": cpu_model(), "timed_rows": list(DECODE_ROWS)}
    try:
        for name, m in candidates.items():
            entry = {"step_s": {}}
            for w, t in configs:
                torch.set_num_threads(t)
                entry["step_s"][f"{w}x{t}"] = {str(r): time_decode_step(m, r, workers=w) for r in DECODE_ROWS}
            w, t = min(configs, key=lambda c: sum(entry["step_s"][f"{c[0]}x{c[1]}"].values()))
            times = entry["step_s"][f"{w}x{t}"]
            torch.set_num_threads(t)
            kv = "model"
            if _int8_kv_possible(m):         # int8 keys and values: a quarter (fp32) or half the bytes
                times8 = {str(r): time_decode_step(m, r, workers=w, int8=True) for r in DECODE_ROWS}
                entry["step_s"][f"{w}x{t} int8 kv"] = times8
                if sum(times8.values()) * 1.05 < sum(times.values()):
                    kv, times = "int8", times8
            per_row = {r: times[str(r)] / r for r in DECODE_ROWS}
            budget = min(KV_BUDGET, _ram() // 8)
            kv_row = max(1, kv_bytes_per_row(m, next(m.parameters()).dtype))
            cap = max(DECODE_ROWS[0], min(MAX_ROWS, budget // kv_row))
            rows = cap if per_row[DECODE_ROWS[-1]] < 0.95 * per_row[DECODE_ROWS[0]] else DECODE_ROWS[0]
            torch.set_num_threads(t)
            entry.update(workers=w, threads=t, kv=kv, rows=int(rows), row_s=per_row[DECODE_ROWS[-1]],
                         row_invariant=rows_independent(m, DECODE_ROWS[-1], int8=kv == "int8"))
            plan[name] = entry
    finally:
        torch.set_num_threads(old)
    choice = "fp32" if "fp32" in plan else next(iter(candidates))
    for name in candidates:
        if name != choice and plan[name]["row_s"] * MARGIN < plan[choice]["row_s"]:
            choice = name
    plan["choice"] = choice
    return plan


def _ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def decode_plan(model, build=None, refresh: bool = False) -> dict:
    """The decode plan for this model on this CPU (see measure_decode), measured at first use
    (about a second for the shipped model) and then read from the cache. build(dtype) makes the
    sampler of a dtype ('fp32', 'bf16'); packing.prepare_for_sampling passes its own."""
    from .runtime import bf16_capable
    key = _key("decode", model_signature(model))
    if not refresh and key in _memo:
        return _memo[key]
    entry = None if refresh else _read_cache().get(key)
    if not isinstance(entry, dict) or entry.get("choice") not in ("bf16", "fp32"):
        if build is None:
            from .packing import build_sampler as build
        names = ["fp32"] + (["bf16"] if bf16_capable("cpu") else [])
        entry = measure_decode(model, {d: build(model, d) for d in names})
        _write_cache(key, entry)
    _memo[key] = entry
    return entry
