"""Workers or torch's threads for a batch of several digits: what the decode plan measures, and
what the whole job takes with each.

    python benchmarks/decode_workers.py                     # 8 plan measurements, 4 A/B rounds
    python benchmarks/decode_workers.py --plans 0 --rounds 6 --checkpoint runs/x/best

1. --plans times: the decode plan measured afresh (tuning.decode_plan, as at first use),
   printing its choice for large batches and its single-step times at 640 rows per config;
2. --rounds times, alternating: ten digits at 64 candidates each (sampling only, no rerank)
   with 2 workers x 1 thread, then with 1 worker x 2 threads, the rest of the plan unchanged.
Needs two cores; run it with nothing else running.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from mnisttext import checkpoint, sample, tuning
from mnisttext.packing import build_sampler

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"2 workers x 1 thread": (2, 1), "1 worker x 2 threads": (1, 2)}


def plans(model, n: int) -> None:
    for i in range(n):
        p = tuning.decode_plan(model, build_sampler, refresh=True)   # also rewrites the cached plan
        e = p[p["choice"]]
        steps = {k: round(v["640"] * 1000, 1) for k, v in e["step_s"].items() if "640" in v}
        print(f"plan {i}: {p['choice']}, {e['workers']} worker(s) x {e['threads']} thread(s); "
              f"640-row step, ms: {steps}")


def rounds(model, n: int) -> None:
    sampler = tuning.prepare_for_sampling(model)
    base = dict(sampler.decode_plan)
    settings = sample.SampleSettings(temperature=0.8)
    times = {name: [] for name in CONFIGS}
    for i in range(n):
        for name, (w, t) in CONFIGS.items():
            sampler.decode_plan = {**base, "workers": w, "threads": t}
            t0 = time.perf_counter()
            sample.sample_digits(sampler, list(range(10)), 64, settings, seed=i)
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.2f} s ({', '.join(f'{x:.2f}' for x in ts)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "gpt"), help="character model dir")
    ap.add_argument("--plans", type=int, default=8, help="plan measurements")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds of ten digits")
    a = ap.parse_args()
    model, _, _ = checkpoint.load_model(a.checkpoint)
    model.eval()
    plans(model, a.plans)
    rounds(model, a.rounds)


if __name__ == "__main__":
    main()
