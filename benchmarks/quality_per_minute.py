"""Quality per minute: the original recipe vs the default recipe, at the same time budget.

    python benchmarks/quality_per_minute.py                  # the original run, then the default
    python benchmarks/quality_per_minute.py --minutes 5      # both with a 5-minute budget
    python benchmarks/quality_per_minute.py --clock cpu      # count CPU time (a shared machine)

Runs `--recipe original` to its end (1 epoch of 10k images), then the default recipe with
`--minutes` set to the original run's whole time (set-up, training and evaluations: the trainer's
budget counts all of them), both in this one process, both scored on the whole test split at the
end. Prints a table, writes OUT/curves.png, and appends the result to benchmarks/history.jsonl.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnisttext import train  # noqa: E402
from mnisttext.render import plot_training  # noqa: E402


def run(recipe: str, out: Path, clock: str, minutes: float | None) -> dict:
    flags = dict(out=str(out), force=True, eval_every=45.0, eval_images=1000, log_every=20,
                 final_eval_images=0, clock=clock)
    if minutes:
        flags["minutes"] = minutes
    return train.train(train.plan_run(recipe, flags))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/qpm", help="where the two runs go (replaced)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="skip the original run's natural length and give both this budget")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="the trainer's clock")
    a = ap.parse_args()
    out = Path(a.out)
    original = run("original", out / "original", a.clock, a.minutes)
    minutes = a.minutes or original["elapsed_seconds"] / 60
    default = run("default", out / "default", a.clock, minutes)
    plot_training([out / "original" / "metrics.jsonl", out / "default" / "metrics.jsonl"],
                  out / "curves.png", labels=["--recipe original", "default recipe"])
    gain = 1 - default["test_nll_nats"] / original["test_nll_nats"]
    print(f"{'recipe':<10}{'min':>7}{'train min':>10}{'steps':>8}{'test NLL nats':>15}{'bits/px':>9}")
    for name, r in (("original", original), ("default", default)):
        print(f"{name:<10}{r['elapsed_seconds'] / 60:>7.2f}{r['train_seconds'] / 60:>10.2f}"
              f"{r['step']:>8}{r['test_nll_nats']:>15.2f}{r['test_bits_per_pixel']:>9.4f}")
    print(f"default is {100 * gain:.1f}% lower than original (target: >= 50%)")
    rec = {"bench": "quality_per_minute", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "machine": platform.processor() or platform.machine(), "clock": a.clock,
           "original": original, "default": default, "reduction": gain}
    with open(Path(__file__).parent / "history.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
