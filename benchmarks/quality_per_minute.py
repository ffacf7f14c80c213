"""Quality per minute: the original recipe vs the default recipe, at the same training wall-clock.

    python benchmarks/quality_per_minute.py                  # ~12 minutes on a 2-core CPU

Runs `--recipe seed` to its end (1 epoch of 10k images), then the default recipe with
`--minutes` set to the seed run's training seconds, both on this machine in this one process.
Evaluation pauses the training clock. Prints a table, writes runs/qpm/curves.png, and appends
the result to benchmarks/history.jsonl.
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


def run(recipe: str, out: Path, extra: list[str]) -> dict:
    p = train.add_args(argparse.ArgumentParser())
    args = p.parse_args(["--recipe", recipe, "--out", str(out), "--eval-every", "45",
                         "--eval-images", "1000", "--log-every", "20"] + extra)
    return train.train(train.resolve_args(args))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/qpm", help="where the two runs go")
    ap.add_argument("--seed-minutes", type=float, default=None,
                    help="skip the seed run's natural length and use this budget for both")
    a = ap.parse_args()
    out = Path(a.out)
    for d in ("seed", "default"):
        (out / d / "metrics.jsonl").unlink(missing_ok=True)
    extra = ["--minutes", str(a.seed_minutes)] if a.seed_minutes else []
    seed = run("seed", out / "seed", extra)
    minutes = seed["train_seconds"] / 60
    default = run("default", out / "default", ["--minutes", f"{minutes:.4f}"])
    plot_training([out / "seed" / "metrics.jsonl", out / "default" / "metrics.jsonl"],
                  out / "curves.png", labels=["--recipe seed", "default recipe"])
    gain = 1 - default["test_nll_nats"] / seed["test_nll_nats"]
    print(f"{'recipe':<10}{'train min':>10}{'steps':>8}{'test NLL nats':>15}{'bits/px':>9}")
    for name, r in (("seed", seed), ("default", default)):
        print(f"{name:<10}{r['train_seconds'] / 60:>10.2f}{r['step']:>8}"
              f"{r['test_nll_nats']:>15.2f}{r['test_bits_per_pixel']:>9.4f}")
    print(f"default is {100 * gain:.1f}% lower than seed (target: >= 50%)")
    rec = {"bench": "quality_per_minute", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "machine": platform.processor() or platform.machine(), "seed": seed,
           "default": default, "reduction": gain}
    with open(Path(__file__).parent / "history.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
