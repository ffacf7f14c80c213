"""Pictures: decoded lines -> PNG files and grids, training curves, generation GIFs.

    from mnisttext import render
    render.save_grid(levels, "grid.png", cols=8, scale=3)      # levels: (N, 30, 30)
    render.to_pil(levels[0], scale=4)                            # one PIL image
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from . import codec


def levels_to_tensor(levels: np.ndarray, bpp: int = 1) -> torch.Tensor:
    """(N, 30, 30) levels -> (N, 1, 30, 30) float in [0, 1] for torchvision."""
    top = (1 << bpp) - 1
    return torch.from_numpy(np.asarray(levels, dtype=np.float32) / top)[:, None]


def upscale(t: torch.Tensor, scale: int) -> torch.Tensor:
    return t.repeat_interleave(scale, -1).repeat_interleave(scale, -2) if scale > 1 else t


def save_images(levels: np.ndarray, paths, bpp: int = 1, scale: int = 1) -> None:
    """One grayscale PNG per image."""
    for lv, p in zip(levels, paths):
        to_pil(lv, scale, bpp).save(p)


def to_pil(levels: np.ndarray, scale: int = 1, bpp: int = 1):
    """(30, 30) levels -> a PIL grayscale image, each pixel scale x scale."""
    top = (1 << bpp) - 1
    a = (np.asarray(levels, dtype=np.uint16) * 255 // top).astype(np.uint8)
    if scale > 1:
        a = a.repeat(scale, 0).repeat(scale, 1)
    return Image.fromarray(a, mode="L")


def save_grid(levels: np.ndarray, path, bpp: int = 1, cols: int = 8, scale: int = 2,
              marks: np.ndarray | None = None) -> None:
    """One grid image. `marks` (N,) bool: draw those cells with a green frame (kept candidates)."""
    t = upscale(levels_to_tensor(levels, bpp), scale).repeat(1, 3, 1, 1)
    if marks is not None:
        t = torch.nn.functional.pad(t, (2, 2, 2, 2), value=0.0)
        frame = torch.zeros_like(t, dtype=torch.bool)
        frame[..., :2, :] = frame[..., -2:, :] = frame[..., :, :2] = frame[..., :, -2:] = True
        green = torch.tensor([0.1, 0.8, 0.2])[:, None, None].expand_as(t[0])
        for i in np.flatnonzero(marks):
            t[i] = torch.where(frame[i], green, t[i])
    save_image(make_grid(t, nrow=cols, padding=2, pad_value=0.5), str(path))


def read_metrics(path) -> list[dict]:
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def plot_training(metrics_paths, out_png, labels=None, minutes: bool = True,
                  offsets=None) -> None:
    """Loss and test NLL against training minutes, one line per run; offsets (minutes, or steps
    without `minutes`) shift a run along x, e.g. a second stage to where the first one ended."""
    import matplotlib                 # ~0.5 s to import: only plots pay for it
    matplotlib.use("Agg")             # no display needed
    import matplotlib.pyplot as plt   # after use("Agg")
    import matplotlib.ticker          # plain tick labels
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for i, p in enumerate(metrics_paths):
        recs = read_metrics(p)
        name = labels[i] if labels else Path(p).parent.name
        tr = [r for r in recs if "nats_per_image" in r]
        ev = [r for r in recs if "test_nll_subset" in r or r.get("final")]
        off = offsets[i] if offsets else 0
        x = lambda r: off + (r["train_seconds"] / 60 if minutes else r["step"])
        ax[0].plot([x(r) for r in tr], [r["nats_per_image"] for r in tr], label=name, alpha=0.8)
        ax[1].plot([x(r) for r in ev], [r.get("test_nll_nats", r.get("test_nll_subset")) for r in ev],
                   marker="o", label=name)
    for a, t in zip(ax, ["training loss (nats / image)", "test NLL (nats / image)"]):
        a.set_xlabel("training minutes" if minutes else "step")
        a.set_title(t)
        a.grid(alpha=0.3)
        a.legend()
        a.set_yscale("log")
        # plain numbers on the log axis (not 6x10^1)
        a.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        a.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


TINT = (0.55, 0.75, 1.0)     # not-yet-generated pixels, as in the original MNIST-GPT


def partial_frame(bodies: list[str], n_done: int, bpp: int = 1, cols: int = 8,
                  scale: int = 4) -> np.ndarray:
    """Grid of partially generated images as (H, W, 3) uint8: the first n_done symbols drawn,
    the rest of the pixels tinted."""
    levels = np.stack([codec.decode_partial(b[:n_done], bpp) for b in bodies])
    img = levels_to_tensor(levels, bpp).repeat(1, 3, 1, 1)            # (N, 3, 30, 30)
    done_px = n_done * codec.SYMBOL_BITS // bpp                        # pixels fully known
    mask = torch.zeros(codec.PIXELS, dtype=torch.bool)
    mask[done_px:] = True
    mask = mask.view(1, 1, codec.SIDE, codec.SIDE).expand_as(img)
    tint = torch.tensor(TINT)[None, :, None, None].expand_as(img)
    img = torch.where(mask, tint, img)
    grid = make_grid(upscale(img, scale), nrow=cols, padding=2, pad_value=1.0)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_generation_gif(lines: list[str], path, bpp: int = 1, cols: int = 8, scale: int = 4,
                        every: int = 5, ms: int = 60) -> None:
    """GIF of lines filling in symbol by symbol (one frame per `every` symbols = one pixel row
    at 1 bit per pixel), holding the finished grid at the end."""
    bodies = [l[1:-1] for l in lines]
    n = codec.n_symbols(bpp)
    steps = list(range(0, n, every)) + [n]
    frames = [Image.fromarray(partial_frame(bodies, k, bpp, cols, scale)) for k in steps]
    durations = [ms] * (len(frames) - 1) + [1500]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)


def save_completion_figure(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path,
                           n_known_px: int, bpp: int = 1, scale: int = 3) -> None:
    """Image GPT's figure: each row is input (unknown part tinted) | completions | original."""
    tiles = []
    for given, completions, original in rows:
        inp = levels_to_tensor(given[None], bpp).repeat(1, 3, 1, 1)
        mask = torch.zeros(900, dtype=torch.bool)
        mask[n_known_px:] = True
        mask = mask.view(1, 1, 30, 30).expand_as(inp)
        inp = torch.where(mask, torch.tensor(TINT)[None, :, None, None].expand_as(inp), inp)
        tiles += [inp, levels_to_tensor(completions, bpp).repeat(1, 3, 1, 1),
                  levels_to_tensor(original[None], bpp).repeat(1, 3, 1, 1)]
    ncols = len(rows[0][1]) + 2
    grid = make_grid(upscale(torch.cat(tiles), scale), nrow=ncols, padding=2, pad_value=0.5)
    save_image(grid, str(path))
