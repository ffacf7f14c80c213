"""`mnisttext generate` (sample + rerank, the main job) and `mnisttext complete`.

    mnisttext generate --digits 0-9                # pictures in outputs/, one summary line
    mnisttext generate --digits 3 --out threes.txt # and the kept lines in a file
    mnisttext complete --rows 15                   # finish the shipped example digits

Both run on the Python API (api.Model), so the CLI and `import mnisttext` share one code path.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .. import codec, data, render
from ..api import Model, examples
from ..progress import console
from .common import (OUTPUTS, UsageError, command, device_arg, error, float_range, int_range,
                     parse_digits, stdout_is_pipe, writable_dir, writable_file)


def add_model_args(p) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="character model folder (default: the shipped one)")
    p.add_argument("--temperature", type=float_range(0.0), default=0.8,
                   help="sampling temperature (0 = greedy: every sample alike)")
    p.add_argument("--top-k", type=int_range(0), default=None, help="keep the k most likely symbols")
    p.add_argument("--top-p", type=float_range(0.0, 1.0, lo_open=True), default=None,
                   help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="random seed (digit d samples from seed*100+d)")
    p.add_argument("--device", type=device_arg, default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 only where it was measured faster on this machine")


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
    g.add_argument("--classifier", default=None, help="reranker folder (default: the shipped one)")
    g.add_argument("--classifier-temperature", type=float_range(0.0, lo_open=True), default=0.8,
                   help="the reranker's logits are divided by this (> 0)")
    add_model_args(g)
    g.add_argument("--out", default=None, help="write the kept lines to this file")
    g.add_argument("--print", action="store_true",
                   help="print the kept lines on stdout (the default when stdout is a pipe)")
    g.add_argument("--img-dir", default=str(OUTPUTS), help="where <digit>.png (and .gif) go")
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
    c.add_argument("--lines", nargs="*", help="complete these lines instead")
    c.add_argument("--corpus", default=None,
                   help="take the lines from CORPUS/test.txt (default: the examples shipped in the package)")
    c.add_argument("--rows", type=int_range(0, codec.SIDE - 1), default=15, help="pixel rows (of 30) given")
    c.add_argument("--symbols", type=int_range(0), default=None, help="symbols given (overrides --rows)")
    c.add_argument("--samples", type=int_range(1, 64), default=6, help="completions per input")
    add_model_args(c)
    c.add_argument("--out", default=str(OUTPUTS / "completion.png"), help="figure path")
    c.set_defaults(func=cmd_complete)


def cmd_generate(args) -> int:
    if args.keep > args.candidates:
        raise UsageError(f"--keep {args.keep}: at most --candidates ({args.candidates})")
    img_dir = writable_dir(args.img_dir, "--img-dir")       # checked before minutes of sampling
    out = writable_file(args.out, "--out") if args.out else None
    if args.temperature == 0:
        console.print("note: --temperature 0 is greedy decoding: every candidate is the same "
                      "most likely line")
    model = Model(args.checkpoint, args.classifier, args.device, args.dtype)
    t0 = time.perf_counter()
    gens = model.generate_many(args.digits, args.candidates, args.keep, args.temperature,
                               args.top_k, args.top_p, args.seed, args.classifier_temperature)
    dt = time.perf_counter() - t0
    kept = [l for g in gens for l in g.best]
    try:
        for g in gens:
            _save_pictures(args, g, img_dir, model.bpp)
        if len(gens) > 1 and not args.show_all:     # every kept line, a row per digit
            render.save_grid(codec.decode_batch(kept, model.bpp)[1], img_dir / "grid.png",
                             model.bpp, cols=args.keep, scale=args.scale)
        if out:
            out.write_text("\n".join(kept) + "\n")
    except OSError as e:      # the samples are not lost: they go to stdout
        sys.stdout.write("\n".join(kept) + "\n")
        raise UsageError(f"could not write the outputs ({e}); the kept lines went to stdout") from None
    if args.print or stdout_is_pipe():
        sys.stdout.write("\n".join(kept) + "\n")
    _generate_summary(args, gens, dt, img_dir, out)
    return 0


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


def _complete_sources(args) -> list[str]:
    if args.lines:
        return args.lines
    pool = data.read_lines(Path(args.corpus) / "test.txt") if args.corpus else examples()
    try:
        idx = [int(i) for i in args.indices.split(",") if i.strip()]
    except ValueError:
        raise UsageError(f"--indices {args.indices!r}: expected integers like 0,1,2") from None
    bad = [i for i in idx if not 0 <= i < len(pool)]
    if bad or not idx:
        raise UsageError(f"--indices: {bad[0] if bad else 'none given'} is outside 0..{len(pool) - 1}")
    return [pool[i] for i in idx]


def cmd_complete(args) -> int:
    out = writable_file(args.out, "--out")
    sources = _complete_sources(args)
    model = Model(args.checkpoint, None, args.device, args.dtype)
    for k, line in enumerate(sources):
        try:
            codec.check_line(line, model.bpp)
        except codec.CodecError as e:
            raise UsageError(f"line {k + 1} of the input: {e}") from None
    keep = args.symbols if args.symbols is not None else args.rows * codec.SIDE * model.bpp // codec.SYMBOL_BITS
    if not keep < codec.n_symbols(model.bpp):
        raise UsageError(f"--symbols {keep}: at most {codec.n_symbols(model.bpp) - 1}")
    completions = model.complete_many(sources, samples=args.samples, temperature=args.temperature,
                                      top_k=args.top_k, top_p=args.top_p, seed=args.seed, symbols=keep)
    rows, all_lines = [], []
    for line, lines in zip(sources, completions):
        all_lines += lines
        given = codec.decode_partial(line[1:1 + keep], model.bpp)
        rows.append((given, codec.decode_batch(lines, model.bpp)[1], codec.decode(line, model.bpp)[1]))
    render.save_completion_figure(rows, out, keep * codec.SYMBOL_BITS // model.bpp, model.bpp)
    if stdout_is_pipe():
        sys.stdout.write("\n".join(all_lines) + "\n")
    console.print(f"{len(rows)} inputs x {args.samples} completions, {keep} of "
                  f"{codec.n_symbols(model.bpp)} symbols given -> {out}")
    return 0
