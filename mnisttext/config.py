"""The training configuration: one typed dataclass, the recipes, and the precedence between them.

    from mnisttext.config import TrainConfig, resolve
    cfg, notices = resolve("default", {"lr": 1e-3, "out": "runs/x", "model": {"n_layer": 2}})
    cfg.to_dict()                                  # what args.json and last/state.json hold
    TrainConfig.from_dict(json.loads(Path("runs/x/args.json").read_text()))

Every field carries its help text, group and valid range as dataclass metadata; the `train`
command makes its flags from them (and the model flags from GPTConfig's own fields), and
`validate` checks a config read from disk against the same ranges.
"""
from __future__ import annotations

import inspect
import math
import re
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields

from . import data
from . import model as models
from .model import PRESETS, ConfigError, GPTConfig

RECIPES = {
    # short runs on a laptop CPU: a smaller model, a high learning rate, small batches (many
    # updates per minute beat fewer, larger ones at a fixed budget)
    "default": dict(preset="small", train_limit=None, epochs=1.0, optimizer="adamw", lr=3e-3,
                    schedule="cosine", warmup_steps=100, batch_size=32, weight_decay=0.1,
                    grad_clip=1.0),
    # the original project: 10k images, one epoch, Adam 1e-4 constant, batch 128, its 8x256 model
    "original": dict(preset="seed", train_limit=10_000, epochs=1.0, optimizer="adam", lr=1e-4,
                     schedule="constant", warmup_steps=0, batch_size=128, weight_decay=0.0,
                     grad_clip=0.0),
    # the shipped model: a wider net for as long as the budget allows (use --minutes on a CPU)
    "flagship": dict(preset="flagship", train_limit=None, epochs=10.0, optimizer="adamw",
                     lr=2e-3, schedule="cosine", warmup_steps=200, batch_size=32,
                     weight_decay=0.1, grad_clip=1.0),
}
RECIPE_ALIASES = {"seed": "original"}        # the original recipe's old name
MAX_SHIFT = 4                                 # --shift-max's bound, in pixels
# GPTConfig fields that follow from the data, not from flags
DERIVED_MODEL_FIELDS = ("vocab_size", "block_size")
MODEL_HELP = {"n_layer": "layers", "n_head": "attention heads", "n_embd": "model width",
              "dropout": "dropout probability", "bias": "biases in the linear layers and norms",
              "arch": "model family: gpt or the gru baseline"}


def _f(default, help: str, group: str, *, lo=None, above=None, hi=None, choices=None,
       hidden: bool = False, per_recipe: bool = False, flag: bool = True):
    """A field with its flag's help, its help group and its valid values."""
    meta = dict(help=help, group=group, lo=lo, above=above, hi=hi, choices=choices,
                hidden=hidden, per_recipe=per_recipe, flag=flag)
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on. The defaults are the default recipe's."""
    # the run
    recipe: str = _f("default", "preset of the fields marked 'per recipe'; explicit flags "
                     "override it", "run", choices=tuple(RECIPES) + tuple(RECIPE_ALIASES))
    corpus: str = _f("corpus", "directory with train.txt and test.txt", "run")
    out: str = _f("runs/default", "run directory", "run")
    resume: bool = _f(False, "continue the run in --out from its last/ checkpoint", "run")
    force: bool = _f(False, "replace the run already in --out (its checkpoints are deleted)", "run")
    init_from: str | None = _f(None, "start from this checkpoint's weights, model and tokenizer "
                               "(a fresh optimizer and schedule: fine-tuning, a second stage)", "run")
    # the model (GPTConfig field flags go into `model`)
    preset: str = _f("small", "model size preset", "model", choices=tuple(PRESETS), per_recipe=True)
    model: dict = _f({}, "GPTConfig fields over the preset", "model", flag=False)
    tokenizer: str = _f("char", "one token per character, or BPE tokens learned on the "
                        "training lines", "model", choices=("char", "bpe"))
    bpe_vocab: int = _f(512, "BPE vocabulary size (with --tokenizer bpe)", "model", lo=77)
    # the data
    binarize: str = _f("threshold", "dynamic: redraw the training pixels as Bernoulli(x/255) "
                       "every epoch from the MNIST files in --data-root", "data",
                       choices=("threshold", "dynamic"))
    data_root: str = _f("data", "torchvision dataset root (--binarize dynamic)", "data")
    dataset: str = _f("mnist", "MNIST variant (--binarize dynamic)", "data",
                      choices=("mnist", "fashion-mnist", "kmnist"))
    train_limit: int | None = _f(None, "use only the first N training lines (default: all)",
                                 "data", lo=1, per_recipe=True)
    shift_aug: float = _f(0.0, "share of the training lines shifted each epoch by up to "
                          "--shift-max pixels, the model told which shift (distribution "
                          "augmentation; 0 = off)", "data", lo=0, hi=1)
    shift_max: int = _f(2, "the largest shift of --shift-aug, in pixels, in each direction",
                        "data", lo=1, hi=MAX_SHIFT)
    # the schedule
    epochs: float = _f(1.0, "passes over the training lines", "schedule", above=0, per_recipe=True)
    max_steps: int | None = _f(None, "stop after this many optimizer steps (default: --epochs "
                               "decides)", "schedule", lo=1)
    minutes: float | None = _f(None, "time budget; evaluations and checkpoints count against "
                               "it, and the LR schedule follows time, not steps (default: none)",
                               "schedule", above=0)
    clock: str = _f("wall", "what --minutes and train_seconds count: wall-clock time, or this "
                    "process's CPU time (a run sharing its cores is not charged for waiting)",
                    "schedule", choices=("wall", "cpu"))
    optimizer: str = _f("adamw", "optimizer (muon: Muon for the blocks' weight matrices, AdamW for "
                        "the rest)", "schedule", choices=("adam", "adamw", "muon"), per_recipe=True)
    muon_lr: float = _f(0.02, "peak learning rate of the Muon matrices (with --optimizer muon; "
                        "the schedule scales it with --lr's)", "schedule", above=0, hi=10)
    lr: float = _f(3e-3, "peak learning rate", "schedule", above=0, hi=10, per_recipe=True)
    min_lr_frac: float = _f(0.05, "final LR / peak LR (cosine)", "schedule", lo=0, hi=1)
    schedule: str = _f("cosine", "LR schedule after warmup", "schedule",
                       choices=("constant", "cosine"), per_recipe=True)
    warmup_steps: int = _f(100, "linear warmup steps", "schedule", lo=0, per_recipe=True)
    batch_size: int = _f(32, "global batch size (lines)", "schedule", lo=1, hi=1_000_000,
                         per_recipe=True)
    grad_accum: int = _f(1, "micro-batches per step on each process (the same gradient in less "
                         "memory; under DDP one all-reduce per step)", "schedule", lo=1)
    weight_decay: float = _f(0.1, "AdamW weight decay (matrices only)", "schedule", lo=0, hi=10,
                             per_recipe=True)
    grad_clip: float = _f(1.0, "clip the gradient norm (0 = off)", "schedule", lo=0, per_recipe=True)
    seed: int = _f(1337, "seed for init, data order, dropout", "schedule", lo=0, hi=2**31 - 1)
    # evaluation and checkpoints
    eval_every: float = _f(60.0, "evaluate every N training seconds (0 = only at the end)",
                           "evaluation", lo=0)
    eval_images: int = _f(2000, "test lines of the periodic NLL, which picks best/", "evaluation",
                          lo=1)
    final_eval_images: int = _f(2000, "test lines of the final NLL (0 = the whole test split)",
                                "evaluation", lo=0)
    log_every: int = _f(10, "log every N steps", "evaluation", lo=1)
    save_every: float = _f(120.0, "write last/ every N training seconds (and at every eval)",
                           "evaluation", lo=0)
    # the machine
    device: str = _f("auto", "cpu, cuda, cuda:1, or auto", "machine")
    dtype: str = _f("auto", "autocast dtype; auto = bf16 where it is faster here", "machine",
                    choices=("auto", "bf16", "fp32"))
    threads: int = _f(0, "torch CPU threads (0 = torch's default)", "machine", lo=0, hi=4096)
    compile: bool = _f(False, "torch.compile the model", "machine")
    stop_after: int = _f(0, "end this invocation after N steps with a checkpoint, as if killed "
                         "(for resume tests)", "machine", lo=0, hidden=True)
    machine: dict = _f({}, "where and when the run started, and each resume", "machine", flag=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From args.json or state.json, including the flat files of older runs (model fields at
        the top level, "seed" as a recipe name). Raises ConfigError naming the bad field."""
        if not isinstance(d, dict):
            raise ConfigError("expected a JSON object")
        d = dict(d)
        model = d.pop("model", None) or {}
        if not isinstance(model, dict):
            raise ConfigError(f"model: expected an object of GPTConfig fields, got {model!r}")
        model = dict(model)
        for name in model_field_names():          # older runs: flat, None = not given
            v = d.pop(name, None)
            if v is not None:
                model.setdefault(name, v)
        for old in ("command", "func", "debug"):  # argparse leftovers of older runs
            d.pop(old, None)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a training config field")
        if d.get("recipe") in RECIPE_ALIASES:
            d["recipe"] = RECIPE_ALIASES[d["recipe"]]
        if str(d.get("clock", "")).startswith("cpu "):    # "cpu (time.process_time)": the
            d["clock"] = "cpu"                            # ablation script's patched trainer
        cfg = cls(**d, model=model)
        cfg.validate()
        return cfg

    def validate(self) -> "TrainConfig":
        """Check every field's type and range; ConfigError names the first bad one."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            check_value(f.name, getattr(self, f.name), hints[f.name], f.metadata)
        if not isinstance(self.machine, dict):
            raise ConfigError(f"machine: expected an object, got {self.machine!r}")
        bad = [k for k in self.model if k not in model_field_names()]
        if bad:
            raise ConfigError(f"model.{bad[0]}: not a GPTConfig field")
        return self


def check_value(name: str, v, hint, meta) -> None:
    """One field's value against its type hint and metadata (lo, above, hi, choices)."""
    args = typing.get_args(hint)
    if v is None and type(None) in args:
        return
    kind = next((a for a in args if a is not type(None)), hint)
    ok = {bool: isinstance(v, bool), int: isinstance(v, int) and not isinstance(v, bool),
          float: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: isinstance(v, str), dict: isinstance(v, dict)}.get(kind, True)
    if not ok:
        raise ConfigError(f"{name}: expected {getattr(kind, '__name__', kind)}, got {v!r}")
    if kind is float and not math.isfinite(v):
        raise ConfigError(f"{name}: expected a finite number, got {v!r}")
    if meta.get("choices") and v not in meta["choices"]:
        raise ConfigError(f"{name}: expected one of {', '.join(meta['choices'])}, got {v!r}")
    lo, above, hi = meta.get("lo"), meta.get("above"), meta.get("hi")
    if (lo is not None and v < lo) or (above is not None and v <= above) \
            or (hi is not None and v > hi):
        low = f"[{lo}" if lo is not None else f"({above}" if above is not None else "(-inf"
        raise ConfigError(f"{name}: {v!r} is out of range {low}, {hi if hi is not None else 'inf'}]")


# ---------------------------------------------------------------------------------------------
# the model fields

def model_field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(GPTConfig) if f.name not in DERIVED_MODEL_FIELDS)


def model_fields() -> list[dict]:
    """GPTConfig's settable fields: name, type, the default recipe's value, help, choices.

    The help is the field's trailing comment in model.py (or MODEL_HELP), so a field added there
    gets a documented flag without touching the trainer."""
    hints = typing.get_type_hints(GPTConfig)
    comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", inspect.getsource(GPTConfig), re.M))
    base = {**GPTConfig().to_dict(), **PRESETS[RECIPES["default"]["preset"]]}
    preset_keys = {k for p in PRESETS.values() for k in p}
    out = []
    for name in model_field_names():
        choices = ("gpt", "gru") if name == "arch" else \
            getattr(models, f"{name.upper()}S", None)     # model.py's GELUS, ROPES, ACTS
        out.append(dict(name=name, type=hints[name], default=base[name],
                        help=MODEL_HELP.get(name) or comments.get(name) or f"GPTConfig.{name}",
                        choices=tuple(choices) if isinstance(choices, (tuple, list)) else None,
                        per_recipe=name in preset_keys))
    return out


def model_config(cfg: TrainConfig, vocab_size: int = 76, block_size: int | None = None) -> GPTConfig:
    """The GPTConfig of cfg: its preset, then its model fields; with --shift-aug, one
    augmentation embedding per shift unless the model fields say how many."""
    base = {**PRESETS[cfg.preset], **cfg.model}
    if cfg.shift_aug and "aug_embed" not in cfg.model:
        base["aug_embed"] = len(data.shifts(cfg.shift_max))
    if block_size is not None:
        base["block_size"] = block_size
    if cfg.shift_aug:
        check_shift_aug(cfg, base)
    return GPTConfig(**{**base, "vocab_size": vocab_size})


def check_shift_aug(cfg: TrainConfig, model: dict) -> None:
    """--shift-aug against the data and the model's fields, before the model is built."""
    if cfg.binarize != "threshold":
        raise ConfigError("shift_aug: shifts the corpus's lines; --binarize dynamic draws its "
                          "own: use one or the other")
    if model.get("arch", "gpt") != "gpt":
        raise ConfigError("shift_aug: the gru has no augmentation embeddings; use --arch gpt")
    need, have = len(data.shifts(cfg.shift_max)), model.get("aug_embed", 0)
    if have != need:      # one embedding per shift, in data.shifts' order: a count is a --shift-max
        trained = next((f"--shift-max {s}" for s in range(1, MAX_SHIFT + 1)
                        if len(data.shifts(s)) == have),
                       "no --shift-aug" if not have else None)
        raise ConfigError(f"shift_aug: --shift-max {cfg.shift_max} draws from {need} shifts, and "
                          f"the model has {have!r} augmentation embeddings (aug_embed)"
                          + (f": it was made for {trained}" if trained else ""))


def model_dict(config: GPTConfig) -> dict:
    """A GPTConfig as `model` fields: every settable field, so a run records its whole model."""
    return {k: v for k, v in config.to_dict().items() if k not in DERIVED_MODEL_FIELDS}


# ---------------------------------------------------------------------------------------------
# precedence

# what a resumed run keeps from its own record whatever the flags say: the model, the data, the
# schedule (data order and LR are functions of them), and the images that pick best/
KEPT_ON_RESUME = ("recipe", "preset", "model", "tokenizer", "bpe_vocab", "binarize", "dataset",
                  "train_limit", "shift_aug", "shift_max", "epochs", "max_steps", "minutes",
                  "clock", "optimizer", "lr", "min_lr_frac", "schedule", "warmup_steps",
                  "weight_decay", "grad_clip", "seed", "eval_images", "init_from")
FIXED_BY_INIT = ("preset", "tokenizer", "bpe_vocab")     # and every model field
# what a resumed run does not take from its record when the flag is left out: this invocation's
NOT_CARRIED = ("resume", "force", "stop_after")


def resolve(recipe: str, flags: dict, resumed_run: dict | None = None, *,
            init_model: dict | None = None,
            init_source: str = "--init-from") -> tuple[TrainConfig, list[str]]:
    """The run's config and one notice per flag that did not get its way.

    Precedence, lowest first:
      1. TrainConfig's defaults;
      2. RECIPES[recipe], or RECIPES[flags["recipe"]] if given ("seed" means "original");
      3. `flags`: the flags given explicitly ({field: value}; GPTConfig fields in flags["model"]);
      4. `resumed_run` (the saved config of the run being continued): its KEPT_ON_RESUME fields
         (model, data, schedule, eval_images) win over 1-3, so a resumed run trains on as it
         started; each explicit flag that asked otherwise gets a notice. Its other fields
         (evaluation cadence, threads, ...) replace 1-2, so `--resume` alone goes on as the run
         was started; flags given now (3) still win there;
      5. `init_model` (the --init-from checkpoint's GPTConfig dict, fresh runs only): the model
         and the tokenizer are the checkpoint's; each model or tokenizer flag that asked
         otherwise gets a notice.
    `machine` (where the run started) comes from the resumed run. The result is validated.
    """
    recipe = flags.get("recipe", recipe)                  # the same, when given as a flag
    recipe = RECIPE_ALIASES.get(recipe, recipe)
    if recipe not in RECIPES:
        raise ConfigError(f"recipe: expected one of {', '.join(RECIPES)}, got {recipe!r}")
    flags = dict(flags)
    unknown = sorted(set(flags) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a training config field")
    flag_model = dict(flags.pop("model", None) or {})
    if "recipe" in flags:
        flags["recipe"] = recipe
    values = {**TrainConfig().to_dict(), **RECIPES[recipe], "recipe": recipe, **flags}
    values["model"] = flag_model
    notices: list[str] = []
    if resumed_run is not None:
        saved = TrainConfig.from_dict(resumed_run).to_dict()
        notices += _overridden(flags, flag_model, saved, KEPT_ON_RESUME, saved["model"],
                               "resume: keeping {k}={v!r} from the run (asked {a!r})")
        values.update({k: saved[k] for k in KEPT_ON_RESUME})
        # the rest as the run was started (its evaluations, threads, cadence), unless given now
        values.update({k: v for k, v in saved.items()
                       if k not in flags and k not in KEPT_ON_RESUME and k not in NOT_CARRIED})
        values["machine"] = saved["machine"]
    elif init_model is not None:
        model = {k: v for k, v in init_model.items() if k not in DERIVED_MODEL_FIELDS}
        vocab = init_model.get("vocab_size", 76)
        fixed = {"model": model, "preset": values["preset"],
                 "tokenizer": "bpe" if vocab > 76 else "char",
                 "bpe_vocab": vocab if vocab > 76 else values["bpe_vocab"]}
        notices += _overridden({k: v for k, v in flags.items() if k != "preset"}, flag_model,
                               fixed, FIXED_BY_INIT, model,
                               f"{init_source}: keeping {{k}}={{v!r}} from the checkpoint "
                               f"(asked {{a!r}})")
        if "preset" in flags:
            notices.append(f"{init_source}: --preset {flags['preset']} ignored: the model is "
                           f"the checkpoint's")
        values.update(fixed)
    cfg = TrainConfig(**values).validate()
    model_config(cfg)                         # a bad model field fails here, before any work
    return cfg, notices


def _overridden(flags: dict, flag_model: dict, winner: dict, keys, winner_model: dict,
                text: str) -> list[str]:
    """Notices for explicit flags (and model flags) whose values `winner` replaces."""
    out = [text.format(k=k, v=winner[k], a=flags[k]) for k in keys
           if k in flags and k != "model" and flags[k] != winner[k]]
    out += [text.format(k=k, v=winner_model.get(k), a=v) for k, v in flag_model.items()
            if winner_model.get(k, v) != v]
    return out


def flag_default(name: str):
    """The default a flag stands for when not given (the default recipe's value)."""
    f = {f.name: f for f in fields(TrainConfig)}[name]
    return f.default if f.default is not MISSING else f.default_factory()
