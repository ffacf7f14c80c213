"""Export speed: MNIST IDX files -> corpus text, end to end, as `cli.py export` does it.

    python benchmarks/export_speed.py --data-root ../shared/data
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from common import machine, print_table, record
from mnisttext import data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="data", help="torchvision root with MNIST/raw/")
    ap.add_argument("--repeats", type=int, default=3, help="timed exports")
    a = ap.parse_args()
    times = []
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            data.export(a.data_root, d)
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    res = {"seconds_median": med, "seconds": times, "lines_per_s": 70_000 / med,
           "machine": machine()}
    print_table("export speed (70,000 lines)", [("median s", med), ("lines/s", 70_000 / med)])
    record("export_speed", res)


if __name__ == "__main__":
    main()
