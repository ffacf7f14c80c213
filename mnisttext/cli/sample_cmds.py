"""`mnisttext generate` (sample + rerank, the main job) and `mnisttext complete`.

    mnisttext generate --digits 0-9                # pictures in outputs/, one summary line
    mnisttext generate --digits 3 --out threes.txt # and the kept lines in a file
    mnisttext complete --rows 15                   # finish the shipped example digits

Both run on the Python API (api.Model), so the CLI and `import mnisttext` share one code path.
Every output path is checked before the model is loaded, and if writing one fails after the
sampling, the lines are not lost: they go to stdout.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import codec, data, render
from ..api import Model, examples
from ..progress import console
from .common import (OUTPUTS, UsageError, command, deliver_lines, describe, device_arg,
                     int_range, load_model, parse_digits, path_arg, picture_replaceable,
                     positive_temperature, seed, stdout_is_pipe, temperature, top_p, writable_dir,
                     writable_file, write_atomic)


PICTURE_PIXELS = 12_000_000   # in one grid or figure: torchvision builds it in float RGB (~36 B/px)
GIF_MAX = 128                 # kept images per digit in a --gif (every frame is a full grid)
FIGURE_SCALE = 3              # render.save_completion_figure's


def add_model_args(p) -> None:
    p.add_argument("--checkpoint", type=path_arg, default=None,
                   help="character model folder (default: the shipped one)")
    p.add_argument("--temperature", type=temperature, default=0.8,
                   help="sampling temperature, 0.001..100 (0 = greedy: every sample alike)")
    p.add_argument("--top-k", type=int_range(0, 1_000_000), default=None,
                   help="keep the k most likely symbols")
    p.add_argument("--top-p", type=top_p, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=seed, default=0, help="random seed (digit d samples from seed*100+d)")
    p.add_argument("--device", type=device_arg, default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32", "int8"], default="auto",
                   help="sampling precision; auto: the fastest measured on this machine (bf16 or "
                        "int8 only where faster); int8: 8-bit linear layers, CPU only")


def register(sub) -> None:
    g = command(sub, "generate", "sample candidates per digit and keep the best by a CNN", [
        "mnisttext generate --digits 0-9",
        "mnisttext generate --digits 3 --candidates 128 --keep 16 --gif",
        "mnisttext generate --digits 1,4,7 --out outputs/lines.txt --checkpoint runs/x/best"])
    g.add_argument("--digits", type=parse_digits, default="0-9", help="digits: 3, 0-9, 1,4,7")
    g.add_argument("--candidates", type=int_range(1, Model.max_candidates), default=64,
                   help="candidates sampled per digit")
    g.add_argument("--keep", type=int_range(1, Model.max_candidates), default=8,
                   help="best distinct candidates kept (at most --candidates)")
    g.add_argument("--classifier", type=path_arg, default=None,
                   help="reranker folder (default: the shipped one)")
    g.add_argument("--classifier-temperature", type=positive_temperature, default=0.8,
                   help="the reranker's logits are divided by this (0.001..100)")
    add_model_args(g)
    g.add_argument("--out", type=path_arg, default=None,
                   help="write the kept lines to this file (a new one, or one of lines)")
    g.add_argument("--print", action="store_true",
                   help="print the kept lines on stdout (the default when stdout is a pipe)")
    g.add_argument("--img-dir", type=path_arg, default=str(OUTPUTS), help="where <digit>.png (and .gif) go")
    g.add_argument("--show-all", action="store_true", help="grid of all candidates, kept ones framed")
    g.add_argument("--gif", action="store_true", help="also write <digit>.gif filling in")
    g.add_argument("--cols", type=int_range(1, 1000), default=8, help="grid columns")
    g.add_argument("--scale", type=int_range(1, 32), default=3, help="pixel upscaling in the grids")
    g.set_defaults(func=cmd_generate)

    c = command(sub, "complete", "complete partly given digits (the top rows kept, the rest sampled)", [
        "mnisttext complete --rows 15",
        "mnisttext complete --indices 0,5,9 --rows 10 --samples 8",
        "mnisttext complete --lines \"$(head -1 corpus/test.txt)\" --out outputs/mine.png"])
    c.add_argument("--indices", default="0,1,2,3", help="example (or --corpus test) line indices")
    c.add_argument("--lines", nargs="+", help="complete these lines instead")
    c.add_argument("--corpus", type=path_arg, default=None,
                   help="take the lines from CORPUS/test.txt (default: the examples shipped in the package)")
    c.add_argument("--rows", type=int_range(0, codec.SIDE - 1), default=15, help="pixel rows (of 30) given")
    c.add_argument("--symbols", type=int_range(0, codec.n_symbols(codec.MAX_BPP)), default=None,
                   help="symbols given (overrides --rows)")
    c.add_argument("--samples", type=int_range(1, 64), default=6, help="completions per input")
    add_model_args(c)
    c.add_argument("--out", type=path_arg, default=str(OUTPUTS / "completion.png"), help="figure path")
    c.set_defaults(func=cmd_complete)


def cmd_generate(args) -> int:
    if args.keep > args.candidates:
        raise UsageError(f"--keep {args.keep}: at most --candidates ({args.candidates})")
    _check_picture_sizes(args)
    img_dir = writable_dir(args.img_dir, "--img-dir")       # checked before minutes of sampling
    for name in _picture_names(args):
        picture_replaceable(img_dir / name, "--img-dir")
    out = writable_file(args.out, "--out", "lines") if args.out else None
    if args.temperature == 0:
        console.print("note: --temperature 0 is greedy decoding: every candidate of a digit is "
                      "the same most likely line, so one is kept")
    model = load_model(args.checkpoint, args.classifier, args.device, args.dtype)
    t0 = time.perf_counter()
    gens = model.generate_many(args.digits, args.candidates, args.keep, args.temperature,
                               args.top_k, args.top_p, args.seed, args.classifier_temperature)
    dt = time.perf_counter() - t0
    kept = [l for g in gens for l in g.best]
    try:
        if out:                                       # the lines first: they matter most
            write_atomic(out, ("\n".join(kept) + "\n").encode("ascii"))
        for g in gens:
            _save_pictures(args, g, img_dir, model.bpp)
        if len(gens) > 1 and not args.show_all:     # every kept line, a row per digit
            render.save_grid(codec.decode_batch(kept, model.bpp)[1], img_dir / "grid.png",
                             model.bpp, cols=args.keep, scale=args.scale)
    except OSError as e:      # the samples are not lost: they go to stdout
        deliver_lines(kept)
        raise UsageError(f"could not write the outputs ({describe(e)}); the kept lines went "
                         f"to stdout") from None
    if args.print or stdout_is_pipe():
        deliver_lines(kept)
    _generate_summary(args, gens, dt, img_dir, out)
    return 0


def _check_picture_sizes(args) -> None:
    """Refuse, before any work, pictures too big to build in bounded memory."""
    per = (codec.SIDE * args.scale + 2) ** 2
    combined = args.keep * len(args.digits) if len(args.digits) > 1 and not args.show_all else 0
    n = max(args.candidates if args.show_all else args.keep, combined)
    if n * per > PICTURE_PIXELS:
        raise UsageError(f"--scale {args.scale}: a grid of {n} images would have "
                         f"{n * per / 1e6:.0f}M pixels (at most {PICTURE_PIXELS // 10**6}M); "
                         f"lower --scale, --keep or --candidates")
    if args.gif and args.keep > GIF_MAX:
        raise UsageError(f"--gif: at most {GIF_MAX} kept images per digit, not --keep {args.keep}")


def _picture_names(args) -> list[str]:
    """The files generate writes into --img-dir (_save_pictures, and the grid)."""
    names = [f"{d}.png" for d in args.digits] + [f"{d}.gif" for d in args.digits if args.gif]
    return names + (["grid.png"] if len(args.digits) > 1 and not args.show_all else [])


def _save_pictures(args, g, img_dir: Path, bpp: int) -> None:
    if args.show_all:
        marks = np.zeros(len(g.lines), dtype=bool)
        marks[g.kept] = True
        render.save_grid(codec.decode_batch(g.lines, bpp)[1], img_dir / f"{g.digit}.png", bpp,
                         cols=args.cols, scale=args.scale, marks=marks)
    else:
        render.save_grid(codec.decode_batch(g.best, bpp)[1], img_dir / f"{g.digit}.png", bpp,
                         cols=args.cols, scale=args.scale)
    if args.gif:
        render.save_generation_gif(g.best, img_dir / f"{g.digit}.gif", bpp, cols=args.cols)


def _generate_summary(args, gens, dt, img_dir, out) -> None:
    for g in gens:
        s = g.scores[g.kept]
        console.print(f"digit {g.digit}: kept {len(g.kept)} of {len(g.lines)}, "
                      f"p(digit) {s.min():.3f}..{s.max():.3f}")
    where = f"{img_dir}/" + ("grid.png" if len(gens) > 1 and not args.show_all else f"{gens[0].digit}.png")
    console.print(f"{len(gens)} digit(s) x {args.candidates} candidates in {dt:.2f} s "
                  f"({dt / len(gens):.2f} s per digit) -> {where}" + (f", lines in {out}" if out else ""))
    if not out and not args.print:
        console.print("next: add --out lines.txt to keep the lines, or `mnisttext decode` them")


def _indices(text: str) -> list[int]:
    try:
        idx = [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        raise UsageError(f"--indices {text!r}: expected integers like 0,1,2") from None
    if not idx:
        raise UsageError(f"--indices {text!r}: no index given (e.g. --indices 0,1,2)")
    return idx


def _complete_sources(args) -> list[str]:
    if args.lines:
        return args.lines
    idx = _indices(args.indices)
    if args.corpus:          # read only as far as the last index asked for
        pool = data.read_lines(Path(args.corpus) / "test.txt", limit=max(max(idx) + 1, 0))
        where = f"{Path(args.corpus) / 'test.txt'} has {len(pool)} lines (0..{len(pool) - 1})"
    else:
        pool = examples()
        where = f"the shipped examples are 0..{len(pool) - 1}"
    bad = [i for i in idx if not 0 <= i < len(pool)]
    if bad:
        raise UsageError(f"--indices: {bad[0]} is out of range; {where}")
    return [pool[i] for i in idx]


def cmd_complete(args) -> int:
    out = writable_file(args.out, "--out", "image")
    sources = _complete_sources(args)
    tiles = len(sources) * (args.samples + 2)
    if tiles * (codec.SIDE * FIGURE_SCALE + 2) ** 2 > PICTURE_PIXELS:
        raise UsageError(f"{len(sources)} inputs x (--samples {args.samples} + 2) = {tiles} "
                         f"pictures in one figure is too many; give fewer inputs or samples")
    model = load_model(args.checkpoint, None, args.device, args.dtype)
    for k, line in enumerate(sources):
        try:
            codec.check_line(line, model.bpp)
        except codec.CodecError as e:
            raise UsageError(f"line {k + 1} of the input: {e}") from None
    n_sym = codec.n_symbols(model.bpp)
    keep = args.symbols if args.symbols is not None else args.rows * codec.SIDE * model.bpp // codec.SYMBOL_BITS
    if not keep < n_sym:
        raise UsageError(f"--symbols {keep}: at most {n_sym - 1}")
    completions = model.complete_many(sources, samples=args.samples, temperature=args.temperature,
                                      top_k=args.top_k, top_p=args.top_p, seed=args.seed, symbols=keep)
    rows, all_lines = [], []
    for line, lines in zip(sources, completions):
        all_lines += lines
        given = codec.decode_partial(line[1:1 + keep], model.bpp)
        rows.append((given, codec.decode_batch(lines, model.bpp)[1], codec.decode(line, model.bpp)[1]))
    try:
        render.save_completion_figure(rows, out, keep * codec.SYMBOL_BITS // model.bpp, model.bpp)
    except (OSError, ValueError) as e:      # the completions are not lost: they go to stdout
        deliver_lines(all_lines)
        raise UsageError(f"--out {out}: could not write the figure ({describe(e)}); the "
                         f"completed lines went to stdout") from None
    if stdout_is_pipe():
        deliver_lines(all_lines)
    console.print(f"{len(rows)} inputs x {args.samples} completions, {keep} of "
                  f"{n_sym} symbols given -> {out}")
    return 0
