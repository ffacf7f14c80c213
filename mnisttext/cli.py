"""The command line: export, decode, train, and the rest. `python cli.py --help`.

    python cli.py export --data-root ../shared/data
    python cli.py decode corpus/test.txt --limit 16 --grid --out sample_img/test.png
    python cli.py train --recipe seed --out runs/seed
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad flags or input: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# export

def cmd_export(args) -> int:
    from . import data
    from .progress import bar, console
    t0 = time.perf_counter()
    with bar() as prog:
        tasks = {}

        def report(split, done, total):
            if split not in tasks:
                tasks[split] = prog.add_task(f"export {split}", total=total)
            prog.update(tasks[split], completed=done)

        sums = data.export(args.data_root, args.out, dataset=args.dataset, bpp=args.bpp,
                           download=args.download, progress=report)
    dt = time.perf_counter() - t0
    for name, h in sums.items():
        console.print(f"{Path(args.out) / name}  sha256 {h}")
    console.print(f"exported in {dt:.2f} s")
    return 0


# ---------------------------------------------------------------------------------------------
# decode

def split_lines(text: str) -> list[str]:
    """Split on '\n' only (str.splitlines also splits on \x1c, \u2028, ...)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [l[:-1] if l.endswith("\r") else l for l in lines]


def read_input_lines(sources: list[str]) -> list[tuple[str, int, str]]:
    """Sources (files, '-' for stdin, or literal lines) -> [(origin, line number, text)]."""
    out = []
    if not sources:
        sources = ["-"]
    for src in sources:
        if src == "-":
            text = sys.stdin.buffer.read().decode("utf-8", errors="replace")
            out += [("<stdin>", i + 1, l) for i, l in enumerate(split_lines(text))]
        elif Path(src).is_file():
            text = Path(src).read_bytes().decode("utf-8", errors="replace")
            out += [(src, i + 1, l) for i, l in enumerate(split_lines(text))]
        else:
            out.append(("<arg>", len(out) + 1, src))
    return out


def cmd_decode(args) -> int:
    from . import codec, render
    from .progress import console, error
    items = read_input_lines(args.inputs)
    if args.limit:
        items = items[:args.limit]
    lines = [t for _, _, t in items]
    labels, levels, good, errors = codec.parse_lines(lines, args.bpp)
    for i, msg in errors:
        origin, lineno, _ = items[i]
        error(f"{origin}:{lineno}: {msg}")
    out = Path(args.out)
    if len(good):
        if args.grid:
            path = out if out.suffix == ".png" else out / "grid.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            render.save_grid(levels, path, args.bpp, cols=args.cols, scale=args.scale)
            console.print(f"wrote {path} ({len(good)} images)")
        else:
            out.mkdir(parents=True, exist_ok=True)
            paths = [out / f"{n:05d}_{d}.png" for n, d in zip(good, labels)]
            render.save_images(levels, paths, args.bpp, scale=args.scale)
            console.print(f"wrote {len(paths)} PNGs to {out}/")
    if errors:
        error(f"{len(errors)} of {len(lines)} lines were malformed and skipped")
        return EXIT_BAD_INPUT
    if not lines:
        error("no input lines")
        return EXIT_BAD_INPUT
    return 0


# ---------------------------------------------------------------------------------------------
# train

def cmd_train(args) -> int:
    from . import train
    from .progress import TrainReporter, console
    cfg = train.resolve_args(args)
    result = train.train(cfg, TrainReporter())
    console.print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from . import train
    p = argparse.ArgumentParser(prog="mnisttext", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="MNIST IDX files -> corpus/{train,test}.txt",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--data-root", default="data",
                   help="torchvision root: the IDX files are in DATA_ROOT/MNIST/raw/")
    e.add_argument("--download", action="store_true", help="download MNIST with torchvision")
    e.add_argument("--out", default="corpus", help="output directory")
    e.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or kmnist")
    e.add_argument("--bpp", type=int, default=1, help="bits per pixel (1 = binary)")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("decode", help="lines -> PNG images",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("inputs", nargs="*", help="files, '-' for stdin, or lines; none = stdin")
    d.add_argument("--out", default="decoded", help="directory (or .png file with --grid)")
    d.add_argument("--grid", action="store_true", help="write one grid image")
    d.add_argument("--cols", type=int, default=8, help="grid columns")
    d.add_argument("--scale", type=int, default=2, help="pixel upscaling factor")
    d.add_argument("--limit", type=int, default=0, help="decode only the first N lines")
    d.add_argument("--bpp", type=int, default=1, help="bits per pixel of the lines")
    d.set_defaults(func=cmd_decode)

    t = sub.add_parser("train", help="train the character model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_args(t)
    t.set_defaults(func=cmd_train)
    return p


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .codec import CodecError
    from .data import DataError
    from .progress import error
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, CodecError, DataError, CheckpointError, ValueError, FileNotFoundError) as e:
        error(str(e))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
