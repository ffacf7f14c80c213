"""`mnisttext eval`: the numbers of the model card for one checkpoint, or several side by side.

    mnisttext eval                                         # the shipped checkpoint
    mnisttext eval --checkpoint runs/x/best --test-images 2000 --samples-per-class 20
    mnisttext eval --compare checkpoints/gpt runs/x/best --names shipped,mine --json
"""
from __future__ import annotations

import json
import sys

from .. import checkpoint, codec
from ..evaluate import Evaluation
from ..paths import shipped
from ..progress import bar, console, table
from ..runtime import resolve_device
from .common import (UsageError, check_finite, command, device_arg, error, int_range, path_arg,
                     seed, user_errors)

PERCENT = "%"
ROWS = [   # (label, key, unit)
    ("test NLL (nats/image)", "test_nll_nats", ""),
    ("test bits/pixel (784 px)", "test_bits_per_pixel", ""),
    ("test images", "test_nll_images", ""),
    ("generative classification", "generative_accuracy", PERCENT),
    ("raw T=1.0 conditional accuracy", "raw_t1_conditional_accuracy", PERCENT),
    ("raw T=0.8 conditional accuracy", "raw_t08_conditional_accuracy", PERCENT),
    ("reranked 8/64 conditional accuracy", "reranked_conditional_accuracy", PERCENT),
    ("raw T=1.0 Fréchet", "raw_t1_frechet", ""),
    ("raw T=0.8 Fréchet", "raw_t08_frechet", ""),
    ("reranked Fréchet", "reranked_frechet", ""),
    ("Fréchet floor (train vs test)", "frechet_floor_train_vs_test", ""),
    ("raw T=1.0 diversity (vs test)", "raw_t1_diversity", ""),
    ("reranked diversity (vs test)", "reranked_diversity", ""),
    ("raw T=1.0 copies of train", "raw_t1_copy_rate", PERCENT),
    ("reranked copies of train", "reranked_copy_rate", PERCENT),
    ("raw T=1.0 NN Hamming median", "raw_t1_nn_hamming_median", ""),
    ("params", "params", ""),
    ("vocabulary", "vocab_size", ""),
    ("tokens per image (test)", "tokens_per_image", ""),
    ("generate 64 + rerank, s/digit", "rerank_seconds_per_digit", ""),
]


def register(sub) -> None:
    v = command(sub, "eval", "test NLL, generative classification, sample quality", [
        "mnisttext eval",
        "mnisttext eval --checkpoint runs/x/best --test-images 2000 --samples-per-class 20",
        "mnisttext eval --compare checkpoints/gpt runs/x/best --names shipped,mine"])
    v.add_argument("--checkpoint", type=path_arg, default=None,
                   help="character model folder (default: the shipped one)")
    v.add_argument("--compare", nargs="+", type=path_arg, help="evaluate several checkpoints side by side")
    v.add_argument("--names", default=None, help="comma-separated column names for --compare")
    v.add_argument("--corpus", type=path_arg, default="corpus", help="folder with train.txt and test.txt")
    v.add_argument("--corpora", default=None,
                   help="comma-separated corpus per --compare checkpoint (e.g. a 4-bit one)")
    v.add_argument("--classifier", type=path_arg, default=None,
                   help="the reranker (default: the shipped one)")
    v.add_argument("--eval-classifier", type=path_arg, default=None,
                   help="the independent classifier that grades samples (default: the shipped one)")
    v.add_argument("--test-images", type=int_range(1), default=None,
                   help="test lines for the NLL (default: the whole test split)")
    v.add_argument("--gen-class-images", type=int_range(1), default=1000,
                   help="test lines for generative classification (10 passes each)")
    v.add_argument("--samples-per-class", type=int_range(2), default=100, help="raw samples per digit")
    v.add_argument("--seed", type=seed, default=0, help="sampling seed")
    v.add_argument("--device", type=device_arg, default="auto", help="cpu, cuda, cuda:N or auto")
    v.add_argument("--dtype", choices=["auto", "bf16", "fp32", "int8"], default="auto",
                   help="model dtype (int8: the sampler's linear layers; NLL then takes auto)")
    v.add_argument("--json", action="store_true", help="one JSON object on stdout instead of a table")
    v.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    checkpoints, names, corpora = _plan(args)
    with bar() as prog:
        tasks = {}

        def progress(stage, done, total):
            if stage not in tasks:
                tasks[stage] = prog.add_task(stage, total=total)
            prog.update(tasks[stage], completed=done, total=total)

        evs = {c: Evaluation(c, args.classifier, args.eval_classifier, resolve_device(args.device),
                             args.dtype, args.test_images, args.gen_class_images,
                             args.samples_per_class, seed=args.seed, progress=progress)
               for c in dict.fromkeys(corpora)}       # everything loaded before the long work
        for ck, corpus in zip(checkpoints, corpora):     # and every checkpoint checked
            _precheck(ck, corpus, evs[corpus])
        results, failed = [], 0
        for ck, name, corpus in zip(checkpoints, names, corpora):
            tasks.clear()
            console.print(f"evaluating {name} on {corpus}")
            try:
                results.append(evs[corpus].run(ck))
            except user_errors() as e:     # one bad checkpoint must not throw the others' numbers away
                error(f"{ck}: {e}")
                results.append({})
                failed += 1
    _print(args, names, results)
    return 2 if failed else 0


def _plan(args) -> tuple[list[str], list[str], list[str]]:
    """(checkpoints, column names, corpora), checked against each other."""
    if args.compare and args.checkpoint:
        raise UsageError("--checkpoint and --compare: give one (--compare takes every checkpoint)")
    checkpoints = args.compare or [args.checkpoint or str(shipped("gpt"))]
    names = args.names.split(",") if args.names else _default_names(checkpoints)
    if len(names) != len(checkpoints):
        raise UsageError(f"--names has {len(names)} entries for {len(checkpoints)} checkpoints")
    corpora = args.corpora.split(",") if args.corpora else [args.corpus] * len(checkpoints)
    if len(corpora) != len(checkpoints):
        raise UsageError(f"--corpora has {len(corpora)} entries for {len(checkpoints)} checkpoints")
    if not all(c.strip() for c in corpora):
        raise UsageError(f"--corpora {args.corpora}: an empty entry; name a corpus folder for each")
    if len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise UsageError(f"--names {args.names}: every column needs a name of its own")
    return checkpoints, names, corpora


def _default_names(checkpoints) -> list[str]:
    """The checkpoints' paths, a repeated one numbered (its columns would collide in --json)."""
    names = []
    for c in checkpoints:
        n, k = str(c), 2
        while n in names:
            n, k = f"{c} ({k})", k + 1
        names.append(n)
    return names


def _precheck(ck, corpus, ev) -> None:
    """Load the checkpoint once before any work: its config, tokenizer, finite weights, and its
    line length against the corpus, so a bad one is said in a second, not after the others."""
    model, config, _ = checkpoint.load_model(ck, "cpu")
    check_finite(model, checkpoint.resolve(ck) / "model.safetensors")
    want = codec.line_length(codec.bpp_of_length(config.block_size))
    have = len(ev.test_lines[0])
    if want != have:
        raise UsageError(f"{ck}: reads lines of {want} characters, {corpus}/test.txt has lines "
                         f"of {have}; pass the matching --corpus (or --corpora)")


def _fmt(v, unit):
    if v == "" or v is None:
        return ""
    return f"{100 * v:.1f}%" if unit == PERCENT else v


def _print(args, names, results) -> None:
    if args.json:
        obj = results[0] if len(results) == 1 else dict(zip(names, results))
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
        return
    rows = [[label] + [_fmt(r.get(key, ""), unit) for r in results] for label, key, unit in ROWS]
    keys = sorted({k for r in results for k in r.get("seconds", {})})
    rows += [[f"seconds: {k}"] + [r.get("seconds", {}).get(k, "") for r in results] for k in keys]
    table("mnisttext eval", ["metric"] + names, rows)
