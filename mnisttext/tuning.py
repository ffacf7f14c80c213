"""The decode plan: how this machine decodes this model fastest, measured once and cached.

    from mnisttext.tuning import prepare_for_sampling
    fast = prepare_for_sampling(model, "auto")    # the dtype a measured decode step prefers here
    fast.decode_plan          # {'dtype', 'workers', 'threads', 'small', 'kv', 'rows', ...}

On a CPU "auto" times decode steps of this model once per machine in fp32, bf16 and int8
(int8.py; cached by machine.py), which also sets the decode threads, the keys' and values'
storage and the rows per decode batch that the sampler uses (sample.sample_digits).
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn as nn

from .kvcache import KVCache, native_attend
from . import machine
from .machine import (DECODE_ROWS, KV_BUDGET, MARGIN, MAX_ROWS, _best_time, _forced, _key,
                      _read_cache, _write_cache, cores, cpu_model)
from .model import GPT
from .packing import build_sampler
from .int8 import int8_available, int_mm_works
from .runtime import DTYPES, bf16_capable, use_bf16
from .sample import MIN_ROWS, Workers, _slices


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
    c = model.new_cache(1)
    return isinstance(c, KVCache) and c._native_ok(next(model.parameters()).new_empty(0))


def rows_independent(model, rows: int = 256, pos: int = 8, int8: bool = False) -> bool:
    """Whether a decode step gives a row the same logits, bit for bit, in a batch of `rows`
    as in a batch of MIN_ROWS: what lets the sampler decode several digits together and
    keep the seed contract (a digit's lines do not depend on what is decoded beside it)."""
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


SAMPLER_DTYPES = ("fp32", "bf16", "int8")
# plans measured before int8 sampling, 640-row steps or the workers margins are measured again
PLAN_VERSION = "|int8 640|margins"
WORKERS_MARGIN = 1.10    # torch's own threads must beat workers by this factor to be chosen
# ... and by this one for a batch of several digits: the plan is kept for good, and the whole
# job with threads measured 19% slower at one time and 3-5% faster at another (docs/performance.md)
LARGE_MARGIN = 1.25
CONFIRM_REPS = 6         # repeats of the timings that torch's threads won, before they are chosen


def decode_configs() -> list[tuple[int, int]]:
    """(workers, torch threads) to time: one thread; and with several cores, all of them as
    torch's threads in one batch, or as workers of one thread each (sample.Workers)."""
    n = min(cores(), torch.get_num_threads())
    return [(1, 1)] + ([(1, n), (n, 1)] if n > 1 else [])


def _pick(configs, times: dict, rows: int, margin: float = WORKERS_MARGIN):
    """The fastest config at `rows` rows; torch's threads (OpenMP, a barrier after every op)
    only where they beat the best workers config by `margin`: on a quiet machine they can
    win, but a busy core stalls every one of their ops, where it only slows one worker."""
    t = lambda c: times[f"{c[0]}x{c[1]}"][str(rows)]
    best = min(configs, key=t)
    workers = [c for c in configs if c[0] > 1]
    if best[1] > 1 and workers and t(best) * margin > t(min(workers, key=t)):
        best = min(workers, key=t)
    return best


def _confirm(model, configs, step_s: dict, rows: int, margin: float = WORKERS_MARGIN):
    """_pick's config for `rows` rows; where torch's threads won, the several-core configs are
    timed again with CONFIRM_REPS repeats (step_s updated) and the race run again: one stalled
    step on a shared machine can swing a best of two, and the plan is kept for good."""
    w, t = _pick(configs, step_s, rows, margin)
    if t > 1:
        for cw, ct in (c for c in configs if c != (1, 1)):
            torch.set_num_threads(ct)
            step_s[f"{cw}x{ct}"][str(rows)] = time_decode_step(model, rows, workers=cw, reps=CONFIRM_REPS)
        w, t = _pick(configs, step_s, rows, margin)
    return w, t


def measure_decode(model, candidates: dict, configs=None) -> dict:
    """Time decode steps of each candidate sampler ({'fp32': model, 'bf16': model}) at
    DECODE_ROWS rows in each (workers, threads) config; the plan, per dtype: the config for small
    batches (DECODE_ROWS[0] rows, one digit's candidates) and for large ones (_pick), the keys'
    and values' storage ('int8' where the large config decodes 5% faster with it than with the
    model's dtype, else 'model'), the rows per batch (many where they decode measurably faster
    per row, up to MAX_ROWS and a memory budget), whether rows are batch-independent; and the
    faster dtype (bf16 by MARGIN)."""
    configs = configs or decode_configs()
    small, large = DECODE_ROWS[0], DECODE_ROWS[-1]
    old = torch.get_num_threads()
    plan = {"cpu": cpu_model(), "timed_rows": list(DECODE_ROWS)}
    try:
        for name, m in candidates.items():
            entry = {"step_s": {}}
            for w, t in configs:
                torch.set_num_threads(t)
                entry["step_s"][f"{w}x{t}"] = {str(r): time_decode_step(m, r, workers=w) for r in DECODE_ROWS}
            cs = _confirm(m, configs, entry["step_s"], small)
            w, t = _confirm(m, configs, entry["step_s"], large, LARGE_MARGIN)
            times = dict(entry["step_s"][f"{w}x{t}"])
            times[str(small)] = entry["step_s"][f"{cs[0]}x{cs[1]}"][str(small)]
            kv = "model"
            if _int8_kv_possible(m):         # int8 keys and values: a quarter (fp32) or half the bytes
                torch.set_num_threads(t)
                t8 = time_decode_step(m, large, workers=w, int8=True)
                entry["step_s"][f"{w}x{t} int8 kv"] = {str(large): t8}
                if t8 * 1.05 < times[str(large)]:
                    kv, times[str(large)] = "int8", t8
            per_row = {r: times[str(r)] / r for r in DECODE_ROWS}
            budget = min(KV_BUDGET, _ram() // 8)
            kv_row = max(1, kv_bytes_per_row(m, next(m.parameters()).dtype))
            cap = max(small, min(MAX_ROWS, budget // kv_row))
            rows = cap if per_row[large] < 0.95 * per_row[small] else small
            torch.set_num_threads(t)
            entry.update(workers=w, threads=t, small=[cs[0], cs[1]], kv=kv, rows=int(rows),
                         row_s=per_row[large], row_invariant=rows_independent(m, large, int8=kv == "int8"))
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


def plan_key(model) -> str:
    """The machine cache's key of this model's decode plan: the machine, the model's shapes, the
    plan's version, and whether the native kernels run (without them the costs differ)."""
    native = "" if native_attend() is not None else "|no native kernels"
    return _key("decode", model_signature(model) + PLAN_VERSION + native)


def decode_plan(model, build=None, refresh: bool = False) -> dict:
    """The decode plan for this model on this CPU (see measure_decode), measured at first use
    (about a second for the shipped model) and then read from the cache. build(dtype) makes the
    sampler of a dtype ('fp32', 'bf16'); packing.prepare_for_sampling passes its own."""
    key = plan_key(model)
    if not refresh and key in machine._memo:
        return machine._memo[key]
    entry = None if refresh else _read_cache().get(key)
    if not isinstance(entry, dict) or entry.get("choice") not in SAMPLER_DTYPES:
        build = build or build_sampler
        names = ["fp32"] + (["bf16"] if bf16_capable("cpu") else [])
        names += ["int8"] if "bf16" in names and int8_available() else []
        entry = measure_decode(model, {d: build(model, d) for d in names})
        _write_cache(key, entry)
    machine._memo[key] = entry
    return entry


def _by(forced) -> str:
    return " (from MNISTTEXT_DTYPE)" if forced == "int8" else ""


def prepare_for_sampling(model: nn.Module, dtype: str = "auto") -> nn.Module:
    """The model to sample with, in eval mode, carrying its `decode_plan` (the dtype, the decode
    workers and threads, the keys' and values' storage, the rows per decode batch, whether rows
    are batch-independent), which sample.sample_digits follows. dtype 'auto' takes the plan's dtype on a CPU (a measured
    decode step, machine.decode_plan) and bf16 on a GPU that has it; 'bf16'/'fp32' force one,
    and 'int8' (a GPT on a CPU) the int8 linear layers (int8.py). MNISTTEXT_DTYPE overrides."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    device = next(model.parameters()).device
    forced = _forced(SAMPLER_DTYPES)          # MNISTTEXT_DTYPE: over the plan and the flag
    if device.type == "cpu" and isinstance(model, GPT):
        plan = decode_plan(model, build_sampler)
        choice = forced or (plan["choice"] if dtype == "auto" else dtype)
        if choice == "int8" and not int_mm_works():
            raise ValueError(f"dtype 'int8'{_by(forced)}: this build of torch has no exact CPU int8 "
                             "matmul (torch._int_mm); use bf16 or fp32")
        entry = plan.get(choice, {})
        sampler = build_sampler(model, choice)
        sampler.decode_plan = {"dtype": choice, "workers": entry.get("workers", 1),
                               "threads": entry.get("threads"), "small": entry.get("small"),
                               "small_rows": DECODE_ROWS[0], "kv": entry.get("kv", "model"),
                               "rows": entry.get("rows", MAX_ROWS),
                               "row_invariant": entry.get("row_invariant", False)}
        return sampler
    if "int8" in (dtype, forced):
        raise ValueError(f"dtype 'int8'{_by(forced)} samples a GPT on a CPU only, not a "
                         f"{type(model).__name__} on {device.type}: use bf16 or fp32")
    choice = forced or ("bf16" if use_bf16(device, dtype) else "fp32")
    sampler = build_sampler(model, choice)
    invariant = rows_independent(sampler) if isinstance(model, GPT) else False
    sampler.decode_plan = {"dtype": choice, "workers": 1, "threads": None, "small": None,
                           "small_rows": 0, "kv": "model", "rows": MAX_ROWS,
                           "row_invariant": invariant}
    return sampler
