"""The new recipe's training curves beside the previous flagship's, in one plot.

    python benchmarks/flagship_curve.py runs/flagship_v2                  # stage 1
    python benchmarks/flagship_curve.py runs/flagship_v2 runs/flagship_v2b  # both stages
    python benchmarks/flagship_curve.py runs/flagship_v2 runs/flagship_v2b \
        --series "Muon=runs/flagship_muon,runs/flagship_muon_b"            # another recipe beside

Reads each run's metrics.jsonl (the periodic NLL on the first 1,000 test lines against the
training clock; a second stage is drawn after the first one's last minute) and the previous
flagship's curve as recovered from its figure (benchmarks/results/old_flagship_curve.json, made by
digitize_curve.py). Writes the points it plots to benchmarks/results/flagship_curve.json (the
runs are not committed, the points are) and the plot to docs/img/flagship_vs_old.png. Prints,
for each NLL the previous flagship reached, the first minute each new run reached it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD = ROOT / "benchmarks" / "results" / "old_flagship_curve.json"
OUT_JSON = ROOT / "benchmarks" / "results" / "flagship_curve.json"
OUT_PNG = ROOT / "docs" / "img" / "flagship_vs_old.png"


def stage_points(run: Path, offset_min: float) -> tuple[list, dict]:
    """[(minutes, nats)] of the periodic evals, and the run's last record with a final NLL."""
    points, final = [], {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "test_nll_subset" in rec:
            points.append([round(offset_min + rec["train_seconds"] / 60, 2), round(rec["test_nll_subset"], 3)])
        if "test_nll_nats" in rec:
            final = rec
            if rec.get("eval_images") == 1000:        # the final eval on the same 1,000 lines
                points.append([round(offset_min + rec["train_seconds"] / 60, 2), round(rec["test_nll_nats"], 3)])
    return points, final


def first_reaching(points: list, nats: float):
    return next((m for m, v in points if v <= nats), None)


def series_points(label: str, runs: list) -> dict:
    """One recipe's stages, each drawn after the previous one's last minute."""
    stages, offset = [], 0.0
    for run in runs:
        pts, final = stage_points(Path(run), offset)
        stages.append({"run": str(run), "points": pts, "final": final})
        offset = pts[-1][0] if pts else offset
    return {"label": label, "stages": stages}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories in stage order (the new recipe)")
    ap.add_argument("--label", default="new recipe", help="the positional runs' name in the legend")
    ap.add_argument("--series", action="append", default=[], metavar="LABEL=RUN[,RUN]",
                    help="another recipe's runs, in stage order, drawn beside")
    a = ap.parse_args()
    old = json.loads(OLD.read_text())
    series = [series_points(a.label, a.runs)]
    for spec in a.series:
        label, _, runs = spec.partition("=")
        if not runs:
            ap.error(f"--series {spec!r}: expected LABEL=RUN[,RUN]")
        missing = [r for r in runs.split(",") if not (Path(r) / "metrics.jsonl").exists()]
        if missing:
            ap.error(f"--series {spec!r}: no metrics.jsonl in {', '.join(missing)}")
        series.append(series_points(label, runs.split(",")))
    OUT_JSON.write_text(json.dumps({"series": series, "old": {k: old[k] for k in ("stage1", "stage2")}},
                                   indent=1) + "\n")
    for sr in series:
        pts = [p for s in sr["stages"] for p in s["points"]]
        for minutes, nats in old["stage1"][-1:] + old["stage2"][-2:]:
            print(f"previous flagship: {nats:.2f} nats at {minutes:.0f} min; {sr['label']} first at or "
                  f"below it: {first_reaching(pts, nats)} min")
    plot(old, series)
    print(f"wrote {OUT_PNG.relative_to(ROOT)} and {OUT_JSON.relative_to(ROOT)}")


def plot(old: dict, series: list) -> None:
    import matplotlib            # plotting only here
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (after the backend is set)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in (("stage1", "previous flagship, stage 1"), ("stage2", "previous flagship, stage 2")):
        xs, ys = zip(*old[key])
        ax.plot(xs, ys, "o-", ms=3, color="0.55" if key == "stage1" else "0.3", label=label)
    colors = (("tab:blue", "tab:orange"), ("tab:green", "tab:red"), ("tab:purple", "tab:brown"))
    for k, sr in enumerate(series):
        for i, s in enumerate(sr["stages"]):
            if s["points"]:
                xs, ys = zip(*s["points"])
                ax.plot(xs, ys, "o-", ms=3, color=colors[k % 3][i % 2],
                        label=f"{sr['label']}, stage {i + 1}")
    ax.axhline(53.13, color="0.3", ls=":", lw=1)
    ax.axvline(113.5, color="0.3", ls=":", lw=1)
    ax.text(114.5, ax.get_ylim()[1] * 0.98, "half of 227 min", va="top", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("training minutes, one CPU core (periodic evaluations excluded)")
    ax.set_ylabel("test NLL, nats/image (first 1,000 test lines)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    OUT_PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT_PNG, dpi=110)


if __name__ == "__main__":
    main()
