"""`mnisttext export` (MNIST IDX files -> corpus) and `mnisttext decode` (lines -> PNG).

    mnisttext export --data-root ../shared/data --out my_corpus
    mnisttext decode lines.txt --grid --out outputs/lines.png
    mnisttext generate --digits 7 | mnisttext decode - --grid

decode streams its input in blocks, so memory stays flat whatever the file's size.
"""
from __future__ import annotations

import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

from .. import codec, data, render
from ..progress import bar, console
from .common import OUTPUTS, UsageError, command, error, int_range, writable_dir, writable_file

BLOCK = 4096             # lines decoded at a time
GRID_MAX = 10_000        # images in one --grid picture


def register(sub) -> None:
    e = command(sub, "export", "MNIST IDX files -> a text corpus ({train,test}.txt + SHA256SUMS)", [
        "mnisttext export --data-root ../shared/data --out my_corpus",
        "mnisttext export --data-root data --dataset fashion-mnist --bpp 4 --out fashion4"])
    e.add_argument("--data-root", default="data",
                   help="torchvision-style root: the IDX files are in DATA_ROOT/MNIST/raw/")
    e.add_argument("--download", action="store_true", help="download the dataset with torchvision")
    e.add_argument("--out", default="corpus", help="output folder")
    e.add_argument("--force", action="store_true", help="replace a corpus already in --out")
    e.add_argument("--dataset", choices=sorted(data.DATASETS), default="mnist", help="which IDX set")
    e.add_argument("--bpp", type=int_range(1, codec.MAX_BPP), default=1, help="bits per pixel (1 = binary)")
    e.add_argument("--binarize", choices=["threshold", "dynamic"], default="threshold",
                   help="threshold: pixel >= 128 is on (the format); dynamic: on with "
                        "probability x/255, drawn once per split from --binarize-seed")
    e.add_argument("--binarize-seed", type=int, default=0, help="seed of the dynamic draw")
    e.set_defaults(func=cmd_export)

    d = command(sub, "decode", "text lines -> PNG images (one per line, or one grid)", [
        "mnisttext decode corpus/test.txt --limit 16 --grid",
        "mnisttext decode outputs/lines.txt --out outputs/pngs",
        "mnisttext generate --digits 3 | mnisttext decode - --grid --out threes.png"])
    d.add_argument("inputs", nargs="*", help="files, '-' for stdin, or lines themselves; none = stdin")
    d.add_argument("--out", default=None,
                   help=f"folder of PNGs, or the .png file with --grid (default: {OUTPUTS}/decoded, "
                        f"or {OUTPUTS}/decoded.png with --grid)")
    d.add_argument("--grid", action="store_true", help=f"one grid picture (at most {GRID_MAX:,} images)")
    d.add_argument("--cols", type=int_range(1, 1000), default=8, help="grid columns")
    d.add_argument("--scale", type=int_range(1, 32), default=2, help="pixel upscaling factor")
    d.add_argument("--limit", type=int_range(0), default=0, help="decode only the first N lines (0 = all)")
    d.add_argument("--bpp", type=int_range(1, codec.MAX_BPP), default=1, help="bits per pixel of the lines")
    d.set_defaults(func=cmd_decode)


def cmd_export(args) -> int:
    t0 = time.perf_counter()
    with bar() as prog:
        tasks = {}

        def report(split, done, total):
            if split not in tasks:
                tasks[split] = prog.add_task(f"export {split}", total=total)
            prog.update(tasks[split], completed=done)

        sums = data.export(args.data_root, args.out, dataset=args.dataset, bpp=args.bpp,
                           download=args.download, progress=report, binarize=args.binarize,
                           binarize_seed=args.binarize_seed, force=args.force)
    for name, h in sums.items():
        console.print(f"{Path(args.out) / name}  sha256 {h}")
    console.print(f"exported {args.dataset} to {args.out}/ in {time.perf_counter() - t0:.1f} s; "
                  f"next: mnisttext train --corpus {args.out} --minutes 5 --out runs/first")
    return 0


def _is_line(src: str) -> bool:
    return len(src) > 2 and src[0] in codec.DIGITS and src.endswith(codec.END)


def check_sources(sources: list[str]) -> None:
    """Every source is '-', a readable file or a line, before any output is made."""
    for src in sources:
        if src != "-" and not Path(src).is_file() and not _is_line(src):
            raise UsageError(f"{src}: {'not a file' if Path(src).exists() else 'no such file'} "
                             f"(and not a line of the format)")


def input_lines(sources: list[str]):
    """Yield (origin, line number, text) from files, '-' (stdin) and literal lines, lazily."""
    for src in sources or ["-"]:
        if src == "-":
            yield from _file_lines(sys.stdin.buffer, "<stdin>")
        elif Path(src).is_file():
            try:
                with open(src, "rb") as f:
                    yield from _file_lines(f, src)
            except OSError as e:
                raise UsageError(f"{src}: cannot read it ({e.strerror or e})") from None
        else:
            yield ("<arg>", 1, src)


def _file_lines(f, origin):
    for i, raw in enumerate(f, 1):
        yield origin, i, raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="replace")


def cmd_decode(args) -> int:
    check_sources(args.inputs)
    default = OUTPUTS / ("decoded.png" if args.grid else "decoded")
    out = Path(args.out) if args.out else default
    out = writable_file(out if out.suffix == ".png" else out / "grid.png", "--out") if args.grid \
        else writable_dir(out, "--out")
    items = input_lines(args.inputs)
    if args.limit:
        items = islice(items, args.limit)
    n_lines, n_bad, grid = 0, 0, []
    while block := list(islice(items, BLOCK)):
        labels, levels, good, errors = codec.parse_lines([t for _, _, t in block], args.bpp)
        for i, msg in errors:
            origin, lineno, _ = block[i]
            error(f"{origin}:{lineno}: {msg}")
        if args.grid:
            grid.append(levels)
            if sum(len(g) for g in grid) > GRID_MAX:
                raise UsageError(f"--grid: more than {GRID_MAX:,} images; pass --limit or drop --grid")
        elif len(good):
            paths = [out / f"{n_lines + n:05d}_{d}.png" for n, d in zip(good, labels)]
            render.save_images(levels, paths, args.bpp, scale=args.scale)
        n_lines, n_bad = n_lines + len(block), n_bad + len(errors)
    return _decode_summary(args, out, n_lines, n_bad, grid)


def _decode_summary(args, out, n_lines, n_bad, grid) -> int:
    n_good = n_lines - n_bad
    if args.grid and n_good:
        render.save_grid(np.concatenate(grid), out, args.bpp, cols=args.cols, scale=args.scale)
    if n_good:
        console.print(f"decoded {n_good} lines -> {out}{'' if args.grid else '/'}")
    if n_bad:
        error(f"{n_bad} of {n_lines} lines were malformed and skipped")
        return 2
    if not n_lines:
        error("no input lines")
        return 2
    return 0
