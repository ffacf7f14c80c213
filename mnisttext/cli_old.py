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
                           download=args.download, progress=report, binarize=args.binarize,
                           binarize_seed=args.binarize_seed)
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
# generate-and-rerank, completion

DEFAULT_MODEL = "checkpoints/gpt"
DEFAULT_CLASSIFIER = "checkpoints/classifier"


def parse_digits(spec: str) -> list[int]:
    """'3', '0-9', '1,4,7', '0-3,7' -> [digits], in order, without repeats."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                rng = list(range(a, b + 1))
                if not rng:
                    raise ValueError
            else:
                rng = [int(part)]
        except ValueError:
            raise UsageError(f"--digits {spec!r}: {part!r} is not a digit or a range like 0-9") from None
        for d in rng:
            if not 0 <= d <= 9:
                raise UsageError(f"--digits {spec!r}: {d} is not a digit 0-9")
            if d not in out:
                out.append(d)
    return out


def check_sampling_args(args) -> None:
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {args.top_k}")


def resolve_device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here")
    return name


def add_sampling_args(p, candidates_help="candidates per digit"):
    p.add_argument("--checkpoint", default=DEFAULT_MODEL, help="character model directory")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely symbols")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="random seed (per digit: seed*100+digit)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="autocast dtype for the model")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the whole prefix at every step (slow; for comparison)")


def cmd_generate(args) -> int:
    import numpy as np
    from . import checkpoint, codec, render, sample
    from . import tokenizer as tk
    from .classifier import load_classifier
    from .progress import console
    digits = parse_digits(args.digits)
    check_sampling_args(args)
    if args.candidates < 1:
        raise UsageError(f"--candidates must be >= 1, got {args.candidates}")
    if not 1 <= args.keep <= args.candidates:
        raise UsageError(f"--keep must be in 1..{args.candidates} (the candidates), got {args.keep}")
    device = resolve_device(args.device)
    model, config, tok = checkpoint.load_model(args.checkpoint, device)
    model = sample.for_sampling(model, args.dtype)
    grammar = tk.Grammar.of(tok)
    clf, _ = load_classifier(args.classifier, device)
    bpp = codec.bpp_of_length(config.block_size)
    settings = sample.SampleSettings(args.temperature, args.top_k, args.top_p, not args.no_cache, bpp)
    img_dir = Path(args.img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    kept_lines, t_total = [], 0.0
    for d in digits:
        t0 = time.perf_counter()
        gen = sample.make_generator(args.seed * 100 + d, device)
        tokens = sample.generate(model, [d], args.candidates, gen, settings, device, "fp32",
                                 grammar=grammar)
        lines = sample.tokens_to_lines(tokens, grammar)
        r = sample.rerank(d, lines, clf, args.keep, args.classifier_temperature, bpp)
        dt = time.perf_counter() - t0
        t_total += dt
        best = [lines[i] for i in r.kept]
        kept_lines += best
        if args.show_all:
            marks = np.zeros(len(lines), dtype=bool)
            marks[r.kept] = True
            render.save_grid(codec.decode_batch(lines, bpp)[1], img_dir / f"{d}.png", bpp,
                             cols=args.cols, scale=args.scale, marks=marks)
        else:
            render.save_grid(codec.decode_batch(best, bpp)[1], img_dir / f"{d}.png", bpp,
                             cols=args.cols, scale=args.scale)
        if args.gif:
            render.save_generation_gif(best, img_dir / f"{d}.gif", bpp, cols=args.cols)
        console.print(f"digit {d}: {args.candidates} candidates in {dt:.2f} s, kept {len(best)}, "
                      f"p(digit) {r.scores[r.kept].min():.3f}..{r.scores[r.kept].max():.3f} "
                      f"-> {img_dir / f'{d}.png'}")
    if len(digits) > 1 and not args.show_all:     # one picture of every kept line, a row per digit
        render.save_grid(codec.decode_batch(kept_lines, bpp)[1], img_dir / "grid.png", bpp,
                         cols=args.keep, scale=args.scale)
    text = "\n".join(kept_lines) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        console.print(f"wrote {len(kept_lines)} lines to {args.out}")
    else:
        sys.stdout.write(text)
    console.print(f"{len(digits)} digits in {t_total:.2f} s ({t_total / len(digits):.2f} s per digit)")
    return 0


def cmd_complete(args) -> int:
    from . import checkpoint, codec, data, render, sample
    from . import tokenizer as tk
    from .progress import console
    check_sampling_args(args)
    device = resolve_device(args.device)
    model, config, tok = checkpoint.load_model(args.checkpoint, device)
    model = sample.for_sampling(model, args.dtype)
    grammar = tk.Grammar.of(tok)
    bpp = codec.bpp_of_length(config.block_size)
    if args.lines:
        sources = args.lines
    else:
        test = data.read_lines(Path(args.corpus) / "test.txt")
        idx = [int(i) for i in args.indices.split(",") if i.strip()]
        bad = [i for i in idx if not 0 <= i < len(test)]
        if bad:
            raise UsageError(f"--indices: {bad[0]} is outside the test set (0..{len(test) - 1})")
        sources = [test[i] for i in idx]
    n_sym = codec.n_symbols(bpp)
    per_row = codec.SIDE * bpp // codec.SYMBOL_BITS
    keep = args.symbols if args.symbols is not None else args.rows * per_row
    if not 0 <= keep < n_sym:
        raise UsageError(f"keep {keep} symbols: must be in 0..{n_sym - 1}")
    settings = sample.SampleSettings(args.temperature, args.top_k, args.top_p, not args.no_cache, bpp)
    rows, out_lines = [], []
    for j, line in enumerate(sources):
        label, original = codec.decode(line, bpp)
        prefix = tk.encode_lines(tok, [line[:1 + keep]])[0]
        gen = sample.make_generator(args.seed * 100 + j, device)
        tokens = sample.generate(model, prefix, args.samples, gen, settings, device, "fp32",
                                 grammar=grammar)
        lines = sample.tokens_to_lines(tokens, grammar)
        out_lines += lines
        given = codec.decode_partial(line[1:1 + keep], bpp)
        rows.append((given, codec.decode_batch(lines, bpp)[1], original))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    render.save_completion_figure(rows, out, keep * codec.SYMBOL_BITS // bpp, bpp)
    sys.stdout.write("\n".join(out_lines) + "\n")
    console.print(f"wrote {out}: {len(rows)} inputs x {args.samples} completions, "
                  f"{keep} of {n_sym} symbols given")
    return 0

# ---------------------------------------------------------------------------------------------
# eval

EVAL_ROWS = [
    ("test NLL (nats/image)", "test_nll_nats"),
    ("test bits/pixel (784 px)", "test_bits_per_pixel"),
    ("generative classification acc", "generative_accuracy"),
    ("raw T=1.0 conditional acc", "raw_t1_conditional_accuracy"),
    ("raw T=0.8 conditional acc", "raw_t08_conditional_accuracy"),
    ("reranked 8/64 conditional acc", "reranked_conditional_accuracy"),
    ("raw T=1.0 Fréchet", "raw_t1_frechet"),
    ("raw T=0.8 Fréchet", "raw_t08_frechet"),
    ("reranked Fréchet", "reranked_frechet"),
    ("Fréchet floor (train vs test)", "frechet_floor_train_vs_test"),
    ("raw T=1.0 diversity (vs test)", "raw_t1_diversity"),
    ("raw T=0.8 diversity (vs test)", "raw_t08_diversity"),
    ("reranked diversity (vs test)", "reranked_diversity"),
    ("raw T=1.0 copies of train", "raw_t1_copy_rate"),
    ("raw T=1.0 NN Hamming median", "raw_t1_nn_hamming_median"),
    ("reranked copies of train", "reranked_copy_rate"),
    ("params", "params"),
    ("format bits per pixel", "bpp"),
    ("vocabulary", "vocab_size"),
    ("tokens per image (test)", "tokens_per_image"),
    ("generate 64 + rerank, s/digit", "rerank_seconds_per_digit"),
]


def cmd_eval(args) -> int:
    from . import evaluate
    from .progress import console, table
    checkpoints = args.compare or [args.checkpoint]
    names = args.names.split(",") if args.names else [str(c) for c in checkpoints]
    if len(names) != len(checkpoints):
        raise UsageError(f"--names has {len(names)} entries for {len(checkpoints)} checkpoints")
    corpora = args.corpora.split(",") if args.corpora else [args.corpus] * len(checkpoints)
    if len(corpora) != len(checkpoints):
        raise UsageError(f"--corpora has {len(corpora)} entries for {len(checkpoints)} checkpoints")
    device = resolve_device(args.device)
    shared: dict = {}
    results = []
    for ck, corpus in zip(checkpoints, corpora):
        console.print(f"evaluating {ck} on {corpus}")
        results.append(evaluate.evaluate_checkpoint(
            ck, corpus, args.classifier, args.eval_classifier, args.samples_per_class,
            gen_class_images=args.gen_class_images, seed=args.seed, device=device,
            dtype=args.dtype, log=lambda m: console.print("  " + m), reference_cache=shared))
    if args.json:
        obj = results[0] if len(results) == 1 else dict(zip(names, results))
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    else:
        rows = [[label] + [r.get(key, "") for r in results] for label, key in EVAL_ROWS]
        keys = sorted({k for r in results for k in r["seconds"]})
        rows += [[f"seconds: {k}"] + [r["seconds"].get(k, "") for r in results] for k in keys]
        table("mnisttext eval", ["metric"] + names, rows)
    return 0

# ---------------------------------------------------------------------------------------------
# classifier training, shipping a run

def cmd_train_classifier(args) -> int:
    from . import classifier
    from .progress import bar, console
    over = {k: v for k, v in (("width", args.width), ("feat_dim", args.feat_dim),
                              ("dropout", args.dropout)) if v is not None}
    config = classifier.ClassifierConfig(**{**classifier.preset(args.arch).to_dict(), **over})
    args.epochs = args.epochs or classifier.EPOCHS[config.arch]
    with bar() as prog:
        task = prog.add_task(f"train {args.arch}", total=None)

        def report(epoch, step, total, loss):
            prog.update(task, total=total, completed=step,
                        description=f"epoch {epoch + 1}/{args.epochs} loss {loss:.3f}")

        metrics = classifier.train_classifier(args.corpus, args.out, config, args.epochs,
                                              args.batch_size, args.lr, args.seed, args.threads,
                                              report)
    console.print(f"{args.out}: test accuracy {metrics['test_accuracy']:.4f}, "
                  f"{metrics['params']} params, {metrics['train_seconds']} s")
    return 0


def cmd_ship(args) -> int:
    """Copy a run's checkpoint (weights, config, tokenizer) into checkpoints/ with its metadata."""
    from . import checkpoint
    from .progress import console
    src = checkpoint.resolve(args.run_checkpoint)
    model, config, tok = checkpoint.load_model(src)
    run_dir = src.parent
    meta = {"source": str(src)}
    for name in ("args.json",):
        if (run_dir / name).exists():
            meta["args"] = checkpoint.read_json(run_dir / name)
    if (src / "metrics.json").exists():
        meta["metrics"] = checkpoint.read_json(src / "metrics.json")
    last = checkpoint.resolve(run_dir / "last") if (run_dir / "last").exists() else None
    if last is not None and (last / "state.json").exists():
        st = checkpoint.read_json(last / "state.json")["state"]
        meta["run_state"] = {k: st[k] for k in ("step", "train_seconds", "tokens", "best_nll")}
    init = (meta.get("args") or {}).get("init_from")
    if init:   # a second training stage: keep the first stage's record (read before any overwrite)
        init_dir = checkpoint.resolve(init)
        if (init_dir / "metadata.json").exists():
            meta["init_from"] = checkpoint.read_json(init_dir / "metadata.json")
        elif (init_dir.parent / "args.json").exists():
            meta["init_from"] = {"source": str(init_dir),
                                 "args": checkpoint.read_json(init_dir.parent / "args.json")}
    checkpoint.write_dir(args.out, {"model.safetensors": checkpoint.model_tensors(model)},
                         {"config.json": config.to_dict(), "metadata.json": meta},
                         {"tokenizer.json": tok.to_str(pretty=True)})
    console.print(f"shipped {src} -> {args.out}")
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
    e.add_argument("--binarize", choices=["threshold", "dynamic"], default="threshold",
                   help="threshold: pixel >= 128 is on (the format); dynamic: on with "
                        "probability x/255, drawn once per split from --binarize-seed")
    e.add_argument("--binarize-seed", type=int, default=0, help="seed of the dynamic draw")
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

    g = sub.add_parser("generate", help="sample candidates per digit, keep the best by a CNN",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--digits", default="0-9", help="digits: 3, 0-9, 1,4,7")
    g.add_argument("--candidates", type=int, default=64, help="candidates sampled per digit")
    g.add_argument("--keep", type=int, default=8, help="best distinct candidates kept")
    g.add_argument("--classifier", default=DEFAULT_CLASSIFIER, help="reranker directory")
    g.add_argument("--classifier-temperature", type=float, default=0.8,
                   help="the reranker's logits are divided by this")
    add_sampling_args(g)
    g.add_argument("--out", default=None, help="write the kept lines here (default: stdout)")
    g.add_argument("--img-dir", default="sample_img", help="where <digit>.png (and .gif) go")
    g.add_argument("--show-all", action="store_true",
                   help="grid of all candidates with the kept ones framed")
    g.add_argument("--gif", action="store_true", help="also write <digit>.gif filling in")
    g.add_argument("--cols", type=int, default=8, help="grid columns")
    g.add_argument("--scale", type=int, default=3, help="pixel upscaling in the grids")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("complete", help="complete partly given test digits (Image GPT style)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--indices", default="0,1,2,3", help="test-set line indices, comma separated")
    c.add_argument("--lines", nargs="*", help="complete these lines instead of test lines")
    c.add_argument("--corpus", default="corpus", help="directory with test.txt")
    c.add_argument("--rows", type=int, default=15, help="pixel rows (of 30) given")
    c.add_argument("--symbols", type=int, default=None, help="symbols given (overrides --rows)")
    c.add_argument("--samples", type=int, default=6, help="completions per input")
    add_sampling_args(c)
    c.add_argument("--out", default="sample_img/completion.png", help="figure path")
    c.set_defaults(func=cmd_complete)

    v = sub.add_parser("eval", help="test NLL, generative classification, sample quality",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    v.add_argument("--checkpoint", default=DEFAULT_MODEL, help="character model directory")
    v.add_argument("--compare", nargs="+", help="evaluate several checkpoints side by side")
    v.add_argument("--names", default=None, help="comma-separated column names for --compare")
    v.add_argument("--corpus", default="corpus", help="directory with train.txt and test.txt")
    v.add_argument("--corpora", default=None,
                   help="comma-separated corpus per --compare checkpoint (e.g. a 4-bit or a "
                        "dynamically binarized one); default --corpus for all")
    v.add_argument("--classifier", default=DEFAULT_CLASSIFIER, help="the reranker")
    v.add_argument("--eval-classifier", default="checkpoints/eval_classifier",
                   help="the independent classifier that grades samples")
    v.add_argument("--samples-per-class", type=int, default=100, help="raw samples per digit")
    v.add_argument("--gen-class-images", type=int, default=1000,
                   help="test lines for generative classification (10 passes each)")
    v.add_argument("--seed", type=int, default=0, help="sampling seed")
    v.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    v.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="autocast")
    v.add_argument("--json", action="store_true", help="one JSON object on stdout")
    v.set_defaults(func=cmd_eval)

    k = sub.add_parser("train-classifier", help="train the CNN reranker or the eval classifier",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    k.add_argument("--corpus", default="corpus", help="directory with train.txt and test.txt")
    k.add_argument("--out", default=DEFAULT_CLASSIFIER, help="output directory")
    k.add_argument("--arch", choices=["cnn", "resnet"], default="cnn",
                   help="cnn = the reranker, resnet = the evaluation classifier")
    k.add_argument("--width", type=int, help="channels (default: the arch's preset)")
    k.add_argument("--feat-dim", type=int, help="penultimate features (default: preset)")
    k.add_argument("--dropout", type=float, help="dropout (default: preset)")
    k.add_argument("--epochs", type=int, default=None,
                   help="passes over the training lines (default: 8 for cnn, 5 for resnet)")
    k.add_argument("--batch-size", type=int, default=128, help="images per step")
    k.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    k.add_argument("--seed", type=int, default=0, help="init, order and augmentation seed")
    k.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    k.set_defaults(func=cmd_train_classifier)

    s = sub.add_parser("ship", help="copy a run's checkpoint into checkpoints/ with metadata",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("run_checkpoint", help="e.g. runs/flagship/best")
    s.add_argument("--out", default=DEFAULT_MODEL, help="destination directory")
    s.set_defaults(func=cmd_ship)
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
