"""`mnisttext train` (the character model), `train-classifier` (a CNN) and `ship` (a run's
checkpoint -> a checkpoint folder with the run's record).

    mnisttext train --minutes 5 --out runs/first
    mnisttext train-classifier --arch cnn --out runs/reranker
    mnisttext ship runs/first/best --out my_checkpoints/gpt

The train flags are made from TrainConfig's fields (config.py) and GPTConfig's (model.py): a field
added there is a flag here, with its help and default.
"""
from __future__ import annotations

import argparse
import os
import typing
from dataclasses import fields
from pathlib import Path

from .. import checkpoint, classifier, classifier_train, config, paths, train
from ..progress import TrainReporter, bar, console
from .common import (UsageError, command, device_arg, float_range, int_range, path_arg,
                     writable_dir)

GROUPS = {"run": "the run", "model": "the model (defaults per --preset, which is per recipe)",
          "data": "the data", "schedule": "the schedule", "evaluation": "evaluation and checkpoints",
          "machine": "the machine"}
MODEL_DEST = "model."          # argparse dest prefix of the GPTConfig field flags


def register(sub) -> None:
    t = command(sub, "train", "train the character model", [
        "mnisttext train --minutes 5 --out runs/first",
        "mnisttext train --out runs/first --resume",
        "torchrun --nproc_per_node 2 -m mnisttext train --recipe flagship --minutes 60 --out runs/ddp"],
        description="Train the character model. Defaults marked 'per recipe' are the default "
                    "recipe's; --recipe original and --recipe flagship set their own, and flags "
                    "given explicitly override the recipe. A resumed run keeps its own model, "
                    "data and schedule. Recipes, resume and DDP: docs/training.md.")
    add_train_args(t)
    t.set_defaults(func=cmd_train)

    k = command(sub, "train-classifier", "train the CNN reranker or the evaluation classifier", [
        "mnisttext train-classifier --arch cnn --out runs/reranker",
        "mnisttext train-classifier --arch resnet --epochs 5 --seed 1 --out runs/grader",
        "mnisttext generate --classifier runs/reranker --digits 0-9"])
    add_classifier_args(k)
    k.set_defaults(func=cmd_train_classifier)

    s = command(sub, "ship", "copy a run's checkpoint, with the run's record, into a checkpoint folder", [
        "mnisttext ship runs/first/best --out my_checkpoints/gpt",
        "mnisttext generate --checkpoint my_checkpoints/gpt --digits 0-9",
        "mnisttext ship runs/flagship2/best --out checkpoints/gpt --force   # replace the shipped one"])
    s.add_argument("run_checkpoint", help="a run's checkpoint, e.g. runs/flagship/best")
    s.add_argument("--out", required=True, type=path_arg, help="destination folder")
    s.add_argument("--force", action="store_true",
                   help="replace a checkpoint already there (also a shipped one, or the source)")
    s.set_defaults(func=cmd_ship)


# ---------------------------------------------------------------------------------------------
# train

def flag_type(name: str, kind, meta: dict):
    """The argparse type of a field: its range is checked when the flags are parsed."""
    lo, above, hi = meta.get("lo"), meta.get("above"), meta.get("hi")
    if kind is int:
        return int_range(lo if lo is not None else -2**63, hi)
    if kind is float:
        if above is not None:
            return float_range(above, hi, lo_open=True)
        return float_range(lo if lo is not None else -float("inf"), hi)
    if name == "device":
        return device_arg
    return str


def help_text(help: str, default, per_recipe: bool, switch: bool) -> str:
    """The help with its real default (none for switches; 'per recipe' where recipes differ)."""
    if not switch and "default" not in help:
        shown = "none" if default is None else f"{default:g}" if isinstance(default, float) else default
        help = f"{help} (default: {shown}{', per recipe' if per_recipe else ''})"
    return help.replace("%", "%%")


def add_train_args(p) -> None:
    """One flag per TrainConfig field, then one per GPTConfig field. Every default is SUPPRESS,
    so the parsed namespace holds exactly the flags given (config.resolve needs to know)."""
    groups = {g: p.add_argument_group(title) for g, title in GROUPS.items()}
    hints = typing.get_type_hints(config.TrainConfig)
    for f in fields(config.TrainConfig):
        m = f.metadata
        if not m["flag"]:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = config.flag_default(f.name)
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        text = help_text(m["help"], default, m["per_recipe"], kind is bool)
        kw = dict(default=argparse.SUPPRESS, help=argparse.SUPPRESS if m["hidden"] else text)
        if kind is bool:
            groups[m["group"]].add_argument(flag, action="store_true", **kw)
        elif m["choices"]:
            shown = [c for c in m["choices"]    # a recipe's old name works, unlisted
                     if f.name != "recipe" or c not in config.RECIPE_ALIASES]
            groups[m["group"]].add_argument(flag, choices=m["choices"],
                                            metavar="{" + ",".join(shown) + "}", **kw)
        else:
            groups[m["group"]].add_argument(flag, type=flag_type(f.name, kind, m),
                                            metavar=f.name.upper(), **kw)
    for mf in config.model_fields():
        flag = "--" + mf["name"].replace("_", "-")
        kw = dict(dest=MODEL_DEST + mf["name"], default=argparse.SUPPRESS,
                  help=help_text(mf["help"], mf["default"], mf["per_recipe"], False))
        if mf["type"] is bool:
            groups["model"].add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif mf["choices"]:
            groups["model"].add_argument(flag, choices=mf["choices"], **kw)
        else:
            # sizes (default > 0) are positive, switches-by-number (default 0) may be 0; floats
            # are only checked finite here, GPTConfig checks their range
            lo = (1 if mf["default"] > 0 else 0) if mf["type"] is int else None
            groups["model"].add_argument(flag, type=flag_type(mf["name"], mf["type"], {"lo": lo}),
                                         metavar=mf["name"].upper(), **kw)


def flags_of(args) -> tuple[str, dict]:
    """(recipe, the flags given) from a parsed namespace; model flags go into flags["model"]."""
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "debug")}
    model = {k[len(MODEL_DEST):]: given.pop(k) for k in list(given) if k.startswith(MODEL_DEST)}
    recipe = given.get("recipe", "default")      # kept in the flags too: a resumed run says
    if model:                                     # when it keeps its own recipe
        given["model"] = model
    return recipe, given


def minutes_text(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def cmd_train(args) -> int:
    recipe, flags = flags_of(args)
    plan = train.plan_run(recipe, flags)
    # the run folder named in one line if it cannot be one (a file, a corpus, read-only, /sys)
    writable_dir(Path(flags.get("out") or config.TrainConfig.out), "--out")
    reporter = TrainReporter()
    result = train.train(plan, reporter)
    if os.environ.get("RANK", "0") != "0":      # under torchrun, rank 0 speaks for the job
        return 0
    out = result["out"]
    if result.get("stopped"):
        console.print(f"stopped at step {result['step']}; continue with: "
                      f"mnisttext train --out {out} --resume", soft_wrap=True)
        return 0
    best = result.get("best") or {}
    best_text = (f"best/ {best['test_nll_nats']:.2f} on {best['eval_images']} images at step "
                 f"{best['step']}" if best else "no best/")
    console.print(f"final test NLL {result['test_nll_nats']:.2f} nats/image on "
                  f"{result['eval_images']} images ({result['test_bits_per_pixel']:.4f} bits/pixel); "
                  f"{best_text}; {result['step']} steps, {minutes_text(result['elapsed_seconds'])} "
                  f"({plan.cfg.clock} clock); run in {out}/", soft_wrap=True)
    console.print(f"next: mnisttext generate --checkpoint {out}/best --digits 0-9", soft_wrap=True)
    return 0


# ---------------------------------------------------------------------------------------------
# train-classifier, ship

def add_classifier_args(k) -> None:
    k.add_argument("--corpus", default="corpus", help="directory with train.txt and test.txt")
    k.add_argument("--out", default=None,
                   help="output folder (default: runs/classifier-ARCH; never a shipped one)")
    k.add_argument("--force", action="store_true", help="replace a classifier already in --out")
    k.add_argument("--arch", choices=sorted(classifier_train.EPOCHS), default="cnn",
                   help="cnn = the reranker, resnet = the evaluation classifier")
    k.add_argument("--width", type=int_range(1, classifier.MAX_WIDTH),
                   help="channels (default: the arch's preset)")
    k.add_argument("--feat-dim", type=int_range(1, classifier.MAX_FEAT_DIM),
                   help="penultimate features (default: the arch's preset)")
    k.add_argument("--dropout", type=float_range(0, 1, lo_open=False),
                   help="dropout (default: the arch's preset)")
    k.add_argument("--epochs", type=int_range(1, 10_000),
                   help=f"passes over the training lines (default: "
                        f"{', '.join(f'{e} for {a}' for a, e in classifier_train.EPOCHS.items())})")
    k.add_argument("--batch-size", type=int_range(1, 1_000_000), default=128, help="images per step")
    k.add_argument("--lr", type=float_range(0, 10, lo_open=True), default=3e-3,
                   help="peak learning rate (one-cycle)")
    k.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0,
                   help="init, order and augmentation seed")
    k.add_argument("--threads", type=int_range(0, 4096), default=0,
                   help="torch CPU threads (0 = torch's default)")


def cmd_train_classifier(args) -> int:
    out = Path(args.out or f"runs/classifier-{args.arch}")
    if paths.is_shipped(out):
        raise UsageError(f"--out {out}: that is a shipped checkpoint folder; choose another")
    if (out / "config.json").exists() and not args.force:
        raise UsageError(f"--out {out} already holds a classifier: add --force to replace it, "
                         f"or choose another folder")
    if out.is_dir() and not (out / "config.json").exists() and any(out.iterdir()):
        raise UsageError(f"--out {out}: a folder with other files; choose a new or empty one")
    if (out / "config.json").exists():      # --force: only a classifier, and nothing beside it
        try:
            classifier.ClassifierConfig.from_dict(checkpoint.read_json(out / "config.json"))
        except (checkpoint.CheckpointError, TypeError, ValueError) as e:
            raise UsageError(f"--out {out}: holds a checkpoint that is not a classifier ({e}); "
                             f"choose another folder") from None
    replaceable(out)
    writable_dir(out.parent if str(out.parent) else Path("."), "--out")
    over = {k: v for k, v in (("width", args.width), ("feat_dim", args.feat_dim),
                              ("dropout", args.dropout)) if v is not None}
    cfg = classifier.ClassifierConfig(**{**classifier.preset(args.arch).to_dict(), **over})
    epochs = args.epochs or classifier_train.EPOCHS[cfg.arch]
    with bar() as prog:
        task = prog.add_task(f"train {args.arch}", total=None)

        def report(epoch, step, total, loss):
            prog.update(task, total=total, completed=step,
                        description=f"epoch {epoch + 1}/{epochs} loss {loss:.3f}")

        m = classifier_train.train_classifier(args.corpus, out, cfg, epochs, args.batch_size,
                                              args.lr, args.seed, args.threads, report)
    console.print(f"{out}: test accuracy {m['test_accuracy']:.4f}, {m['params']:,} params, "
                  f"{m['train_seconds']} s", soft_wrap=True)
    console.print(f"next: mnisttext generate --classifier {out} --digits 0-9", soft_wrap=True)
    return 0


def replaceable(out: Path) -> None:
    """checkpoint.check_replaceable, its refusal naming --out."""
    try:
        checkpoint.check_replaceable(out)
    except checkpoint.CheckpointError as e:
        raise UsageError(f"--out {e}") from None


def check_ship_target(src: Path, out: Path, force: bool) -> None:
    """Refuse to overwrite what a user would not want overwritten, unless --force."""
    s, o = src.resolve(), out.resolve()
    if o in s.parents:
        raise UsageError(f"--out {out}: holds the checkpoint being shipped ({src}); choose another")
    if not force:
        if o == s or s in o.parents:
            raise UsageError(f"--out {out}: is the checkpoint being shipped; add --force to "
                             f"rewrite it")
        if paths.is_shipped(o):
            raise UsageError(f"--out {out}: is a shipped checkpoint folder; add --force to "
                             f"replace it")
        if o.exists() and (not o.is_dir() or any(o.iterdir())):
            raise UsageError(f"--out {out}: already exists; add --force to replace it")
    replaceable(out)


def cmd_ship(args) -> int:
    src = checkpoint.resolve(args.run_checkpoint)
    out = Path(args.out)
    check_ship_target(src, out, args.force)
    writable_dir(out.parent if str(out.parent) else Path("."), "--out")
    train.ship(src, out)
    console.print(f"shipped {src} -> {out}", soft_wrap=True)
    console.print(f"next: mnisttext generate --checkpoint {out} --digits 0-9", soft_wrap=True)
    return 0
