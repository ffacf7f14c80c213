"""Peak memory of `mnisttext decode` over a million-line file: it streams, so it stays flat.

    python benchmarks/decode_memory.py                       # 1,000,000 lines, every mode
    python benchmarks/decode_memory.py --lines 20000 --modes check,grid

Makes a file of N lines (the committed test split repeated, one line in a thousand broken, so
the error path is measured too), runs `python -m mnisttext decode` on it in a child process per
mode, which reports its own peak resident memory (VmHWM) as it exits. Modes: check (--check: every line
parsed and decoded, nothing written), stdin (the same, the file piped in), png (one PNG per
line into a temporary folder: slow, ~1 ms a line), grid (--grid over the first 10,000 lines,
the most one grid holds at the default scale). The baseline is the same command on one line.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
MODES = ("check", "stdin", "png", "grid")


def make_file(path: Path, n: int) -> int:
    """n lines from corpus/test.txt, repeated; every 1000th has its end mark broken."""
    lines = (ROOT / "corpus" / "test.txt").read_text().splitlines()
    bad = 0
    with open(path, "w") as f:
        for i in range(n):
            line = lines[i % len(lines)]
            if i % 1000 == 999:
                line, bad = line[:-1] + "z", bad + 1
            f.write(line + "\n")
    return bad


# The child reports its own peak (VmHWM of /proc/self/status) at exit: wait4's ru_maxrss would
# also count what the child inherited from this process across fork and exec.
PEAK = ("import atexit, runpy, sys\n"
        "out = sys.argv.pop(1)\n"
        "atexit.register(lambda: open(out, 'w').write(next(\n"
        "    l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]))\n"
        "runpy.run_module('mnisttext', run_name='__main__', alter_sys=True)\n")


def run(args: list[str], cwd: Path, stdin=None) -> dict:
    """Run `mnisttext decode ARGS` -> exit status, wall seconds, peak RSS (MiB), last line."""
    report = cwd / "peak.txt"
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PEAK, str(report), "decode", *args], cwd=cwd,
                       stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = p.stderr.decode(errors="replace").strip().splitlines()
    return {"rc": p.returncode, "seconds": round(time.perf_counter() - t, 1),
            "peak_mib": round(int(report.read_text()) / 1024, 1), "last": err[-1:]}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000, help="lines in the input file")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    ap.add_argument("--no-record", action="store_true", help="do not append to history.jsonl")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src = d / "lines.txt"
        bad = make_file(src, a.lines)
        one = d / "one.txt"
        one.write_text(src.open().readline())
        res = {"lines": a.lines, "malformed": bad, "mib": round(src.stat().st_size / 2**20, 1),
               "baseline": run([str(one), "--check"], d)}
        for m in modes:
            if m == "stdin":
                with open(src, "rb") as f:
                    res[m] = run(["-", "--check"], d, stdin=f)
            else:
                res[m] = run({"check": [str(src), "--check"],
                              "png": [str(src), "--out", str(d / "pngs")],
                              "grid": [str(src), "--grid", "--limit", "10000",
                                       "--out", str(d / "grid.png")]}[m], d)
            print(f"{m:8} {res[m]}", flush=True)
    res["machine"] = {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version()}
    print(f"decode memory, {a.lines:,} lines ({res['mib']} MiB, {bad} malformed), {res['machine']['cpu']}")
    for k in ["baseline"] + modes:
        print(f"  {k:8} peak {res[k]['peak_mib']:7.1f} MiB  {res[k]['seconds']:7.1f} s  exit {res[k]['rc']}")
    if not a.no_record:
        from common import record      # imports torch: only after the measurements
        record("decode_memory", res)


if __name__ == "__main__":
    main()
