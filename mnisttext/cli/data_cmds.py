"""`mnisttext export` (MNIST IDX files -> corpus) and `mnisttext decode` (lines -> PNG).

    mnisttext export --data-root ../shared/data --out my_corpus
    mnisttext decode lines.txt --grid --out outputs/lines.png
    mnisttext generate --digits 7 | mnisttext decode - --grid

decode streams its input in blocks and never holds more than a block of lines (or, with --grid,
the picture itself, which is capped), so memory stays flat whatever the input's size. Neither
command imports torch (the CLI loads only this module for them): numpy and PIL do the work.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from .. import codec, data
from ..progress import bar, console
from .common import (OUTPUTS, UsageError, command, error, int_range, names_a_folder, path_arg,
                     picture_replaceable, writable_dir, writable_file)

BLOCK = 1024             # lines decoded at a time
GRID_MAX = 10_000        # images in one --grid picture
GRID_PIXELS = 64_000_000  # and pixels in it (one byte each, while it is built and saved)
SHOWN_ERRORS = 20        # malformed lines reported one by one; the rest are counted
GIVE_UP = 1000           # a source whose first this many lines are all malformed is not lines
MAX_LIMIT = 10 ** 12


def register(sub) -> None:
    e = command(sub, "export", "MNIST IDX files -> a text corpus ({train,test}.txt + SHA256SUMS)", [
        "mnisttext export --data-root ../shared/data --out my_corpus",
        "mnisttext export --data-root data --dataset fashion-mnist --bpp 4 --out fashion4"])
    e.add_argument("--data-root", type=path_arg, default="data",
                   help="torchvision-style root: the IDX files are in DATA_ROOT/MNIST/raw/")
    e.add_argument("--download", action="store_true", help="download the dataset with torchvision")
    e.add_argument("--out", type=path_arg, default="corpus",
                   help="output folder: new, empty, or holding only a corpus (see --force)")
    e.add_argument("--force", action="store_true", help="replace a corpus already in --out")
    e.add_argument("--dataset", choices=sorted(data.DATASETS), default="mnist", help="which IDX set")
    e.add_argument("--bpp", type=int_range(1, codec.MAX_BPP), default=1, help="bits per pixel (1 = binary)")
    e.add_argument("--binarize", choices=["threshold", "dynamic"], default="threshold",
                   help="threshold: pixel >= 128 is on (the format); dynamic: on with "
                        "probability x/255, drawn once per split from --binarize-seed")
    e.add_argument("--binarize-seed", type=int_range(0), default=0, help="seed of the dynamic draw")
    e.set_defaults(func=cmd_export)

    d = command(sub, "decode", "text lines -> PNG images (one per line, or one grid)", [
        "mnisttext decode corpus/test.txt --limit 16 --grid",
        "mnisttext decode outputs/lines.txt --out outputs/pngs",
        "mnisttext decode my_corpus/train.txt --check",
        "mnisttext generate --digits 3 | mnisttext decode - --grid --out threes.png"])
    d.add_argument("inputs", nargs="*", help="files, '-' for stdin, or lines themselves; none = stdin")
    d.add_argument("--out", type=path_arg, default=None,
                   help=f"folder of PNGs, or the .png file with --grid (default: {OUTPUTS}/decoded, "
                        f"or {OUTPUTS}/decoded.png with --grid)")
    d.add_argument("--grid", action="store_true",
                   help=f"one grid picture (at most {GRID_MAX:,} images and {GRID_PIXELS // 10**6}M pixels)")
    d.add_argument("--cols", type=int_range(1, 1000), default=8, help="grid columns")
    d.add_argument("--scale", type=int_range(1, 32), default=2, help="pixel upscaling factor")
    d.add_argument("--limit", type=int_range(0, MAX_LIMIT), default=0,
                   help="decode only the first N lines (0 = all)")
    d.add_argument("--bpp", type=int_range(1, codec.MAX_BPP), default=1, help="bits per pixel of the lines")
    d.add_argument("--check", action="store_true",
                   help="only check the lines: name the malformed ones, write nothing")
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


# ---------------------------------------------------------------------------------------------
# decode: where the lines come from

def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):      # a name too long for the file system is not a file
        return False


def _looks_like_line(src: str) -> bool:
    """A literal line given as an argument (and not a mistyped path): it starts with the class
    digit, and ends with ')' or is long and holds neither '/' nor '.' (no line of the format
    does), so a broken line is reported with what is wrong where, a missing file as missing."""
    if len(src) < 3 or src[0] not in codec.DIGITS:
        return False
    return src.endswith(codec.END) or (len(src) >= 20 and "/" not in src and "." not in src)


def check_sources(sources: list[str]) -> list[tuple[str, str]]:
    """Every source is '-', a readable file (or pipe) or a line, before any output is made
    -> [(kind, text)], kind 'stdin', 'file' or 'line'."""
    out = []
    for src in sources or ["-"]:
        if src == "-":
            out.append(("stdin", src))
        elif not src.strip():
            raise UsageError(f"{src!r}: an empty argument; expected a file, '-' or a line")
        elif _exists(src):
            if Path(src).is_dir():
                raise UsageError(f"{src}: is a folder, expected a file of lines")
            try:
                open(src, "rb").close()
            except OSError as e:
                raise UsageError(f"{src}: cannot read it ({e.strerror or e})") from None
            out.append(("file", src))
        elif _looks_like_line(src):
            out.append(("line", src))
        else:
            raise UsageError(f"{src!r}: no such file (and not a line of the format)")
    return out


def input_lines(sources: list[tuple[str, str]]):
    """Yield (origin, line number, text or None for a line cut at data.MAX_LINE bytes), lazily."""
    for kind, src in sources:
        if kind == "stdin":
            yield from _file_lines(sys.stdin.buffer, "<stdin>")
        elif kind == "file":
            try:
                with open(src, "rb") as f:
                    yield from _file_lines(f, src)
            except OSError as e:
                raise UsageError(f"{src}: cannot read it ({e.strerror or e})") from None
        else:
            yield ("<arg>", 1, src)


def _file_lines(f, origin):
    for i, raw, cut in data.raw_lines(f):
        yield origin, i, None if cut else raw.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# decode: the work

@dataclass
class Tally:
    """What a decode has seen: lines, malformed ones (per source too), errors shown."""
    lines: int = 0
    bad: int = 0
    shown: int = 0
    per_source: dict = field(default_factory=dict)      # origin -> [good, bad]
    first_bad_length: int | None = None


def cmd_decode(args) -> int:
    sources = check_sources(args.inputs)
    out = None if args.check else _decode_target(args)
    items = input_lines(sources)
    if args.limit:
        items = islice(items, args.limit)
    tally, grid = Tally(), []
    cap = min(GRID_MAX, GRID_PIXELS // _tile_pixels(args.scale))
    while block := list(islice(items, BLOCK)):
        texts = ["" if t is None else t for _, _, t in block]
        labels, levels, good, errors = codec.parse_lines(texts, args.bpp)
        _report(block, errors, tally, args.bpp)
        if args.check:
            pass
        elif args.grid:
            grid.append(levels)
            if sum(len(g) for g in grid) > cap:
                raise UsageError(f"--grid: more than {cap:,} images at --scale {args.scale}; "
                                 f"pass --limit, a smaller --scale, or drop --grid")
        elif len(good):
            _save_pngs(levels, [out / f"{tally.lines + n:05d}_{d}.png" for n, d in zip(good, labels)],
                       args, out)
        tally.lines += len(block)
    return _decode_summary(args, out, tally, grid)


def _decode_target(args) -> Path:
    """--out, checked and its folder made: a .png file with --grid, else a folder."""
    if args.grid:
        out = Path(args.out) if args.out else OUTPUTS / "decoded.png"
        if out.is_dir() or names_a_folder(args.out or ""):     # a folder, maybe a new one
            out = out / "grid.png"
        if out.suffix.lower() != ".png":
            raise UsageError(f"--out {out}: --grid writes one PNG; name a .png file or a folder")
        return writable_file(out, "--out", "image")
    return writable_dir(Path(args.out) if args.out else OUTPUTS / "decoded", "--out")


def _report(block, errors, tally: Tally, bpp: int) -> None:
    """Name the first malformed lines, count all, and give up on a source of no lines at all."""
    bad_at = {i: msg for i, msg in errors}
    for i, (origin, lineno, text) in enumerate(block):
        counts = tally.per_source.setdefault(origin, [0, 0])
        if i not in bad_at:
            counts[0] += 1
            continue
        counts[1] += 1
        tally.bad += 1
        if tally.first_bad_length is None and text is not None:
            tally.first_bad_length = len(text)
        if tally.shown < SHOWN_ERRORS:
            msg = f"longer than {data.MAX_LINE} bytes" if text is None else bad_at[i]
            error(f"{origin}:{lineno}: {msg}")
            tally.shown += 1
        if counts == [0, GIVE_UP]:
            raise UsageError(f"{origin}: its first {GIVE_UP} lines are all malformed; "
                             f"{_bpp_hint(tally.first_bad_length, bpp)}")


def _bpp_hint(length, bpp: int) -> str:
    for b in range(1, codec.MAX_BPP + 1):
        if b != bpp and length == codec.line_length(b):
            return f"they are {length} characters long: lines of --bpp {b}?"
    return f"not a file of lines of the format (at --bpp {bpp})"


def _save_pngs(levels, paths, args, out: Path) -> None:
    for p in paths:                 # the whole block checked before any of it is written
        picture_replaceable(p, "--out")
    for lv, p in zip(levels, paths):
        try:
            Image.fromarray(_gray(lv, args.bpp).repeat(args.scale, 0).repeat(args.scale, 1)).save(p)
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write {p.name} ({e.strerror or e}); the "
                             f"images before it were written") from None


def _decode_summary(args, out, tally: Tally, grid) -> int:
    n_good = tally.lines - tally.bad
    if args.grid and n_good and not args.check:
        save_grid(np.concatenate(grid), out, args.bpp, args.cols, args.scale)
    if n_good:
        console.print(f"checked {n_good} good lines" if args.check else
                      f"decoded {n_good} lines -> {out}{'' if args.grid else '/'}")
    if tally.bad:
        more = tally.bad - tally.shown
        error(f"{tally.bad} of {tally.lines} lines were malformed and skipped"
              + (f" ({more} not shown above)" if more else "")
              + ("" if n_good else f"; {_bpp_hint(tally.first_bad_length, args.bpp)}"))
        return 2
    if not tally.lines:
        error("no input lines")
        return 2
    return 0


# ---------------------------------------------------------------------------------------------
# the grid picture, built in one byte per pixel (torchvision's float RGB grid takes 12)

def _tile_pixels(scale: int) -> int:
    return (codec.SIDE * scale + 2) ** 2


def grid_image(levels: np.ndarray, bpp: int = 1, cols: int = 8, scale: int = 2) -> np.ndarray:
    """(N, 30, 30) levels -> (H, W) uint8 gray, laid out as torchvision's make_grid does
    (2-pixel gray borders, `cols` per row)."""
    n, tile, pad = len(levels), codec.SIDE * scale, 2
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    out = np.full((rows * (tile + pad) + pad, cols * (tile + pad) + pad), 128, dtype=np.uint8)
    for i, lv in enumerate(levels):
        r, c = divmod(i, cols)
        y, x = pad + r * (tile + pad), pad + c * (tile + pad)
        out[y:y + tile, x:x + tile] = _gray(lv, bpp).repeat(scale, 0).repeat(scale, 1)
    return out


def _gray(levels: np.ndarray, bpp: int) -> np.ndarray:
    """Levels 0..2**bpp-1 -> gray 0..255 (rounded as torchvision's save_image does)."""
    top = (1 << bpp) - 1
    return ((levels.astype(np.uint32) * 510 + top) // (2 * top)).astype(np.uint8)


def save_grid(levels: np.ndarray, path: Path, bpp: int, cols: int, scale: int) -> None:
    """Write the grid PNG; a regular file is written beside and renamed into place, so a full
    disk leaves the old picture, not half of a new one."""
    img = Image.fromarray(grid_image(levels, bpp, cols, scale))
    special = path.exists() and not path.is_file()          # /dev/stdout and the like
    tmp = path if special else path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        img.save(tmp, format="PNG")
        if not special:
            os.replace(tmp, path)
    except OSError as e:
        raise UsageError(f"--out {path}: cannot write it ({e.strerror or e})") from None
    finally:
        if not special and tmp.exists():
            tmp.unlink()
