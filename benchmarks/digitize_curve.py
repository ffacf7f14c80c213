"""Recover the data points of the right panel (test NLL vs training minutes) of an old curve PNG.

    .venv/bin/python benchmarks/digitize_curve.py
    .venv/bin/python benchmarks/digitize_curve.py --png sample_img/flagship_curve.png \\
        --out benchmarks/results/old_flagship_curve.json --check /tmp/digitize_check.png

The figure was drawn by mnisttext.render.plot_training (figsize 11x4, dpi 100, marker "o" of
size 6 pt with a 1 pt edge, log y axis). Steps: find the axes boxes from the long dark spine
lines and take the rightmost; find the tick marks (short dark lines just outside the bottom and
left spines) and fit x = linear, y = log10 against the tick values read from the labels
(constants below); score every pixel by how much of a marker-sized disc around it is covered by
the series colour (lines are too thin to fill the disc, markers fill it); take local maxima of
that score as marker centres, refine them to 0.05 px (disc filled, ring around it empty), drop
those inside the legend box, round to whole pixels (Agg draws markers there), and convert to
(minutes, nats). Prints a summary, writes JSON, optionally a check plot.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
X_TICK_VALUES = [0, 50, 100, 150, 200]      # minutes, read from the x tick labels
Y_TICK_VALUES = [60, 70, 80]                # nats, read from the y tick labels (6x10^1 ...)
COLOURS = {"stage1": (31, 119, 180), "stage2": (255, 127, 14)}   # tab:blue, tab:orange
MARKER_RADIUS = (6 + 1) / 2 * 100 / 72      # px: (markersize + edge width) / 2 at dpi 100
MIN_COVER = 0.85                            # fraction of the disc a marker centre must fill
SD_PX, MAX_PX = 0.3, 1.0    # error of a recovered point in px (see precision())
SNAP = True             # Agg draws markers (and tick marks) at whole-pixel positions: round to them


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(float)


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in a 1-d boolean array."""
    d = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    return list(zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0] - 1))


def find_axes_box(dark: np.ndarray) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) spine pixel indices of the rightmost axes box."""
    h, w = dark.shape
    cols = runs(dark.sum(0) > 0.5 * h)          # vertical spines: left/right of each panel
    rows = runs(dark.sum(1) > 0.5 * w)          # horizontal spines: top/bottom (shared by panels)
    assert len(cols) >= 2 and len(rows) >= 2, (cols, rows)
    left, right = cols[-2][1], cols[-1][0]      # inner edge of the rightmost pair of spines
    top, bottom = rows[0][1], rows[-1][0]
    return int(left), int(right), int(top), int(bottom)


def tick_centres(dark: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of the tick marks: dark pixels touching the outside of the spines."""
    left, right, top, bottom = box
    below = dark[bottom + 1:bottom + 3, left:right + 1].all(0)     # 2 px long at least
    beside = dark[top:bottom + 1, left - 2:left].all(1)
    xs = np.array([(a + b) / 2 + left for a, b in runs(below)])
    ys = np.array([(a + b) / 2 + top for a, b in runs(beside)])
    # the spine's own corner pixels are not ticks
    xs = xs[(xs > left + 1) & (xs < right - 1)]
    ys = ys[(ys > top + 1) & (ys < bottom - 1)]
    return xs, ys


def fit_axis(px: np.ndarray, values, log: bool) -> tuple[float, float, float]:
    """Least-squares value(px) = a + b * px (on log10 values if log); returns a, b, rms px."""
    v = np.log10(values) if log else np.asarray(values, float)
    assert len(px) == len(v), f"found {len(px)} ticks at {px}, expected {len(v)}"
    b, a = np.polyfit(px, v, 1)
    rms = float(np.sqrt(np.mean(((v - a) / b - px) ** 2)))
    return float(a), float(b), rms


def colour_fraction(rgb: np.ndarray, colour) -> np.ndarray:
    """How much of each pixel is `colour` blended over white, 0..1 (0 where it is another hue)."""
    d = 255.0 - np.asarray(colour, float)
    p = 255.0 - rgb
    f = (p @ d) / (d @ d)
    resid = np.linalg.norm(p - f[..., None] * d, axis=-1)
    return np.where(resid < 0.25 * np.linalg.norm(d), np.clip(f, 0, 1), 0.0)


def disc_kernel(r: float, dx: float = 0.0, dy: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Antialiased disc of radius r centred at (dx, dy): integer offsets (n, 2) and weights."""
    k = int(np.ceil(r + 2))
    oy, ox = np.mgrid[-k:k + 1, -k:k + 1]
    wgt = np.clip(r + 0.5 - np.hypot(ox - dx, oy - dy), 0, 1)
    keep = wgt > 0
    return np.stack([oy[keep], ox[keep]], 1), wgt[keep]


def cover(f: np.ndarray, offs: np.ndarray, wgt: np.ndarray, ys, xs) -> np.ndarray:
    """Fraction of the disc (offs, wgt) centred at integer pixels (ys, xs) that f fills."""
    h, w = f.shape
    yy = np.clip(np.asarray(ys)[..., None] + offs[:, 0], 0, h - 1)
    xx = np.clip(np.asarray(xs)[..., None] + offs[:, 1], 0, w - 1)
    return (f[yy, xx] * wgt).sum(-1) / wgt.sum()


def find_markers(f: np.ndarray, box, exclude=None) -> list[tuple[float, float]]:
    """Sub-pixel (x, y) centres of the filled discs in f inside the axes box."""
    left, right, top, bottom = box
    f = f.copy()
    f[:top + 1], f[bottom:], f[:, :left + 1], f[:, right:] = 0, 0, 0, 0   # spines and outside
    offs, wgt = disc_kernel(MARKER_RADIUS)
    ys, xs = np.nonzero(f > 0.5)
    score = np.zeros_like(f)
    score[ys, xs] = cover(f, offs, wgt, ys, xs)
    pad = np.pad(score, 2)
    neigh = np.max([pad[2 + dy:pad.shape[0] - 2 + dy, 2 + dx:pad.shape[1] - 2 + dx]
                    for dy in range(-2, 3) for dx in range(-2, 3)], axis=0)
    peaks = np.argwhere((score >= MIN_COVER) & (score >= neigh))
    out = []
    for y, x in peaks:
        cx, cy = refine(f, int(x), int(y))
        if exclude and exclude[0] <= cx <= exclude[1] and exclude[2] <= cy <= exclude[3]:
            continue                            # a legend marker
        if all(np.hypot(cx - a, cy - b) > 1.5 for a, b in out):     # plateau duplicates
            out.append((cx, cy))
    if SNAP:
        off = max((max(abs(cx - round(cx)), abs(cy - round(cy))) for cx, cy in out), default=0)
        print(f"  marker centres are {off:.2f} px or less from whole pixels; snapped to them")
        out = [(float(round(cx)), float(round(cy))) for cx, cy in out]
    return sorted(out)


def refine(f: np.ndarray, x: int, y: int, step: float = 0.05) -> tuple[float, float]:
    """Sub-pixel centre near pixel (x, y): the offset where the disc is best covered by f while
    a 2 px ring around it is least covered (the ring keeps overlapping markers apart)."""
    k = int(np.ceil(MARKER_RADIUS + 4))
    oy, ox = np.mgrid[-k:k + 1, -k:k + 1]
    patch = f[np.clip(y + oy, 0, f.shape[0] - 1), np.clip(x + ox, 0, f.shape[1] - 1)].ravel()
    g = np.arange(-1.0, 1.0 + step / 2, step)
    dy, dx = [a.ravel() for a in np.meshgrid(g, g, indexing="ij")]
    dist = np.hypot(ox.ravel() - dx[:, None], oy.ravel() - dy[:, None])   # (offsets, pixels)
    disc = np.clip(MARKER_RADIUS + 0.5 - dist, 0, 1)
    ring = np.clip(MARKER_RADIUS + 2.5 - dist, 0, 1) - disc
    score = (disc @ patch) / disc.sum(1) - (ring @ patch) / ring.sum(1)
    i = int(np.argmax(score))
    return x + float(dx[i]), y + float(dy[i])


def find_legend(rgb: np.ndarray, box):
    """(x0, x1, y0, y1) of the legend frame: the light grey horizontal lines in the axes that
    are long but shorter than the axes (vertical grid lines cross it, so use the longest run)."""
    left, right, top, bottom = box
    sub = rgb[top + 1:bottom, left + 1:right]
    g = sub.mean(-1)
    grey = (np.ptp(sub, axis=-1) < 6) & (g > 150) & (g < 235)
    frame = []
    for r in range(sub.shape[0]):
        longest = max(runs(grey[r]), key=lambda ab: ab[1] - ab[0], default=(0, -1))
        if 0.3 * sub.shape[1] < longest[1] - longest[0] + 1 < 0.95 * sub.shape[1]:
            frame.append((r, *longest))
    if not frame:
        return None
    rows, x0s, x1s = zip(*frame)
    return (left + 1 + min(x0s), left + 1 + max(x1s), top + 1 + min(rows), top + 1 + max(rows))


def digitize(png: Path) -> dict:
    rgb = load_rgb(png)
    dark = rgb.mean(-1) < 128
    box = find_axes_box(dark)
    xt, yt = tick_centres(dark, box)
    ax_, bx, rx = fit_axis(xt, X_TICK_VALUES, log=False)
    ay, by, ry = fit_axis(np.sort(yt)[::-1], Y_TICK_VALUES, log=True)   # bottom tick = 60
    legend = find_legend(rgb, box)
    series = {}
    for name, colour in COLOURS.items():
        pts = find_markers(colour_fraction(rgb, colour), box, legend)
        series[name] = [[round(ax_ + bx * x, 1), round(10 ** (ay + by * y), 2)] for x, y in pts]
        series[name + "_px"] = [[round(x, 2), round(y, 2)] for x, y in pts]
    nats = [n for _, n in series["stage1"] + series["stage2"]]
    per_px = dict(minutes=abs(bx), nats_low=min(nats) * np.log(10) * abs(by),
                  nats_high=max(nats) * np.log(10) * abs(by))
    return dict(box=box, x_ticks_px=xt.tolist(), y_ticks_px=yt.tolist(),
                legend=legend and tuple(int(v) for v in legend),
                calib=dict(x=(ax_, bx, rx), y=(ay, by, ry)), series=series, per_px=per_px)


def precision(res: dict) -> dict:
    """Error estimate from the pixel scale: marker centres are whole pixels (+-0.5 px) and the
    calibration rests on 3-5 tick marks that are whole pixels too; re-rendering known points
    with the same plotting code and digitizing them gave errors of sd ~0.3 px, max ~0.9 px."""
    k = res["per_px"]
    nats = [n for _, n in res["series"]["stage1"] + res["series"]["stage2"]]
    lo, hi = min(nats), max(nats)
    return {
        "px_per_minute": round(1 / k["minutes"], 3),
        "px_per_decade": round(1 / abs(res["calib"]["y"][1]), 1),
        "minutes": {"typical": round(SD_PX * k["minutes"], 2),
                    "max": round(MAX_PX * k["minutes"], 2)},
        "nats": {f"typical_at_{lo:g}": round(SD_PX * k["nats_low"], 3),
                 f"typical_at_{hi:g}": round(SD_PX * k["nats_high"], 3),
                 f"max_at_{lo:g}": round(MAX_PX * k["nats_low"], 3),
                 f"max_at_{hi:g}": round(MAX_PX * k["nats_high"], 3)},
        "note": (f"typical = 1 sd = {SD_PX} px, max = {MAX_PX} px: markers and tick marks are "
                 "drawn at whole pixels (+-0.5 px each); the nats error is proportional to the "
                 "value"),
    }


def check_plot(png: Path, res: dict, out: Path) -> None:
    """Left: the original panel with the recovered centres; right: the data replotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    left, right, top, bottom = res["box"]
    rgb = load_rgb(png) / 255
    (ax_, bx, _), (ay, by, _) = res["calib"]["x"], res["calib"]["y"]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(14, 5))
    a0.imshow(rgb[top - 5:bottom + 6, left - 5:right + 6],
              extent=(left - 5.5, right + 5.5, bottom + 5.5, top - 5.5))
    for name, c in (("stage1", "k"), ("stage2", "m")):
        for mins, nats in res["series"][name]:
            # data -> px through the calibration: tests detection + rounding round trip
            a0.plot((mins - ax_) / bx, (np.log10(nats) - ay) / by, "+", color=c, ms=7)
        xs, ys = zip(*res["series"][name])
        a1.plot(xs, ys, "o-", ms=4, label=f"{name}: {len(xs)} points")
    a0.set_title("original panel (pixels) with recovered centres")
    a1.set_yscale("log")
    a1.set_xlim(ax_ + bx * left, ax_ + bx * right)
    a1.set_ylim(10 ** (ay + by * bottom), 10 ** (ay + by * top))
    a1.grid(alpha=0.3, which="both")
    a1.legend()
    a1.set_title("recovered points, same axis range")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--png", default="sample_img/flagship_curve.png")
    p.add_argument("--out", default="benchmarks/results/old_flagship_curve.json")
    p.add_argument("--check", default="", help="also write a check plot here")
    a = p.parse_args()
    png = ROOT / a.png
    res = digitize(png)
    sha = subprocess.run(["git", "hash-object", str(png)], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    s = res["series"]
    doc = {
        "source": {"png": a.png, "git_blob_sha": sha},
        "method": ("Digitized by benchmarks/digitize_curve.py: axes box from the spines, x "
                   "(linear) and y (log10) calibrated on the pixel positions of the tick marks "
                   "against the tick labels, marker centres = positions where a marker-sized disc "
                   "is best covered by the series colour and a ring around it is not (legend "
                   "excluded), then rounded to whole pixels, where matplotlib's Agg backend draws "
                   "markers."),
        "precision": precision(res),
        "stage1": s["stage1"],
        "stage2": s["stage2"],
    }
    out = ROOT / a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1)
    text = re.sub(r"\[\s+(-?[\d.]+),\s+(-?[\d.]+)\s+\]", r"[\1, \2]", text)   # a point a line
    out.write_text(text + "\n")
    print(f"box {res['box']}  x ticks {res['x_ticks_px']}  y ticks {res['y_ticks_px']}  "
          f"legend {res['legend']}")
    print(f"fit rms px: x {res['calib']['x'][2]:.3f}  y {res['calib']['y'][2]:.3f}")
    for name in COLOURS:
        pts = s[name]
        print(f"{name}: {len(pts)} points, first {pts[0]}, last {pts[-1]}")
        print("  ", pts)
    print(f"wrote {out}")
    if a.check:
        check_plot(png, res, Path(a.check))
        print(f"wrote {a.check}")


if __name__ == "__main__":
    main()
