"""Train the character model on corpus/.

    mnisttext train --out runs/default                          # the default recipe
    mnisttext train --recipe original --out runs/original        # the original project's recipe
    mnisttext train --out runs/default --resume                  # continue after a kill
    torchrun --nproc_per_node 2 -m mnisttext train --out runs/ddp   # DistributedDataParallel

    from mnisttext import train
    result = train.train(train.plan_run("default", {"out": "runs/x", "minutes": 5.0}))

A run directory holds args.json, metrics.jsonl, tokenizer.json, loss.png, and the checkpoints
last/ and best/ (best = lowest test NLL on the periodic evaluation's images). plan_run() decides
from the flags and the directory how the run starts (new, resumed, from --init-from); train()
then prepares the run (lock, data, model), fits, and finishes (final evaluation, best/, plot).
The data order is a function of (seed, epoch) and the learning rate of the step (or, under
--minutes, of the time spent), so --resume continues exactly.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import time
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from . import checkpoint, codec, data, metrics, paths, render, runtime
from . import config as configs
from . import tokenizer as tk
from .checkpoint import CheckpointError, RunDirError
from .config import RECIPES, TrainConfig  # noqa: F401  (RECIPES: the benchmarks read it here)
from .model import ConfigError, GPTConfig, build_model
from .muon import MuonAdamW, split_params
from .runtime import keep_freed_memory  # noqa: F401  (the speed benchmark and a test use it here)

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
# the files of a run that --force replaces
RUN_FILES = ("args.json", "metrics.jsonl", "tokenizer.json", "loss.png", "last", "last.old",
             "best", "best.old")
EVAL_COST = 1 / 3      # before the first evaluation is timed: forward-only vs a training step


class TrainError(ValueError):
    """Training cannot go on (a non-finite loss); the message names the step."""


# ---------------------------------------------------------------------------------------------
# the pieces of a step

def lr_at(cfg, step: int, progress: float) -> float:
    """progress in [0, 1]: share of the step or time budget spent."""
    peak = cfg.lr
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    lo = peak * cfg.min_lr_frac
    return lo + 0.5 * (peak - lo) * (1 + math.cos(math.pi * min(1.0, progress)))


def _get(cfg, name: str, default=None):
    """A field of a TrainConfig or of a plain dict (the speed benchmark passes dicts)."""
    return cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)


def make_optimizer(model, cfg):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": _get(cfg, "weight_decay")},
              {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel (CPU and CUDA) does the whole update in one pass over each tensor: several
    # times faster than the foreach one on a CPU core
    fused = dict(fused=True) if next(model.parameters()).device.type in ("cpu", "cuda") else {}
    if _get(cfg, "optimizer") == "adam":
        return torch.optim.Adam(model.parameters(), lr=_get(cfg, "lr"), **fused)
    if _get(cfg, "optimizer") == "muon":
        lr = _get(cfg, "lr")
        return MuonAdamW(split_params(model, _get(cfg, "weight_decay"), _get(cfg, "muon_lr", 0.02) / lr), lr=lr)
    return torch.optim.AdamW(groups, lr=_get(cfg, "lr"), betas=(0.9, 0.95), **fused)


def train_step(fwd_model, model, opt, inputs, targets, cfg, device, aug=None) -> torch.Tensor:
    """One optimizer step on this rank's lines, run as cfg.grad_accum micro-batches.

    The gradient is the whole batch's: each micro-batch's mean loss is weighted by its share of
    the targets. Under DDP the gradients are all-reduced once, after the last micro-batch.
    Micro-batches hold fewer activations at once (they save memory, not time). aug: the
    lines' augmentation ids (--shift-aug) or None.
    Returns the batch's mean loss (detached)."""
    parts = min(_get(cfg, "grad_accum") or 1, len(inputs))
    n_targets = (targets != -1).sum()
    ddp = isinstance(fwd_model, torch.nn.parallel.DistributedDataParallel)
    total = torch.zeros((), device=inputs.device)
    augs = aug.tensor_split(parts) if aug is not None else [None] * parts
    for i, (x, y, a) in enumerate(zip(inputs.tensor_split(parts), targets.tensor_split(parts), augs)):
        with fwd_model.no_sync() if ddp and i < parts - 1 else contextlib.nullcontext():
            with runtime.autocast(device, _get(cfg, "dtype", "auto")):
                _, loss = fwd_model(x, y) if a is None else fwd_model(x, y, aug=a)
            share = (y != -1).sum() / n_targets
            (loss * share).backward()
        total += loss.detach() * share
    if _get(cfg, "grad_clip"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), _get(cfg, "grad_clip"))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


# ---------------------------------------------------------------------------------------------
# trainer state and run checkpoints

@dataclass
class State:
    step: int = 0
    train_seconds: float = 0.0        # in training steps, on the run's clock
    elapsed: float = 0.0              # everything on that clock: steps, evaluations, saves, setup
    best_nll: float = float("inf")    # of best/, on the periodic evaluation's images
    last_eval_at: float = 0.0
    tokens: int = 0
    eval_seconds_per_image: float = 0.0
    history: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, d, path) -> "State":
        """From state.json's "state"; a CheckpointError names the file and the bad field."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{path}: state: expected an object")
        d = {"elapsed": d.get("train_seconds", 0.0), **d}     # runs older than `elapsed`
        hints = typing.get_type_hints(cls)
        kept = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            v, kind = d[f.name], hints[f.name]
            ok = isinstance(v, (int, float)) if kind is float else isinstance(v, kind)
            if isinstance(v, bool) or not ok or (kind is float and math.isnan(v)):
                raise CheckpointError(f"{path}: state.{f.name}: expected {kind.__name__}, got {v!r}")
            if kind in (int, float) and v < 0:     # steps, tokens, seconds, NLL: never negative
                raise CheckpointError(f"{path}: state.{f.name}: expected >= 0, got {v!r}")
            kept[f.name] = float(v) if kind is float else v
        return cls(**kept)


def optimizer_tensors(opt) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for g in opt.param_groups:   # the kernel is this run's choice, not the saved run's
        for k in ("fused", "foreach"):
            g[k] = opt.defaults.get(k)


def save_run_checkpoint(path, model, config, tok, opt=None, state: State | None = None,
                        cfg: TrainConfig | None = None, metrics_json: dict | None = None) -> None:
    """A model directory; with opt and state, also the trainer state that resume needs."""
    tensors = {"model.safetensors": checkpoint.model_tensors(model)}
    jsons: dict = {"config.json": config.to_dict()}
    if metrics_json is not None:
        jsons["metrics.json"] = metrics_json
    if opt is not None and state is not None:
        otens, ometa = optimizer_tensors(opt)
        otens["rng.torch"] = torch.get_rng_state()
        tensors["state.safetensors"] = otens
        jsons["state.json"] = {"state": state.__dict__, "optimizer": ometa,
                               "config": cfg.to_dict() if cfg else None}
    checkpoint.write_dir(path, tensors, jsons, {"tokenizer.json": tok.to_str(pretty=True)})


def load_run_state(d: Path, opt) -> State:
    """d/state.json + d/state.safetensors into opt and torch's RNG; returns the trainer state."""
    meta = checkpoint.read_json(d / "state.json")
    state = State.from_dict(meta.get("state"), d / "state.json")
    stens = checkpoint.read_tensors(d / "state.safetensors")
    try:
        restore_optimizer(opt, stens, meta["optimizer"])
        torch.set_rng_state(stens["rng.torch"])
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{d}: trainer state does not fit this run ({e})") from None
    return state


def saved_config(last: Path, out: Path) -> dict:
    """The config a run was started with: from last/state.json, or the run's args.json."""
    meta = checkpoint.read_json(last / "state.json")
    for source, d in ((last / "state.json", meta.get("config") or meta.get("args")),
                      (out / "args.json", None)):
        if d is None and source.name == "args.json" and source.exists():
            d = checkpoint.read_json(source)
        if d is not None:
            try:
                return TrainConfig.from_dict(d).to_dict()
            except ConfigError as e:
                raise CheckpointError(f"{source}: {e}") from None
    raise CheckpointError(f"{last / 'state.json'}: no training config to resume with")


def best_on_disk(out: Path, fallback: float) -> float:
    """The selection NLL of best/ as recorded inside it (a save cut short between best/ and
    last/ must not let a worse model replace it); inf when there is no best/."""
    if not checkpoint.exists(out / "best"):
        return float("inf")
    d = checkpoint.resolve(out / "best")
    try:
        rec = checkpoint.read_json(d / "metrics.json")
    except CheckpointError:
        return fallback
    v = rec.get("select_nll", fallback)     # runs before select_nll: the trainer state's
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else fallback


# ---------------------------------------------------------------------------------------------
# the plan: how a run starts

@dataclass
class Plan:
    cfg: TrainConfig
    notices: list = field(default_factory=list)     # one line per flag that did not get its way
    last: Path | None = None        # resume from this checkpoint (OUT/last, or OUT/last.old)
    init: Path | None = None        # start from these weights (--init-from; fresh runs only)
    tokenizer: object = "char"      # "char", "bpe" (learn it), or a checkpoint dir to load it from
    replace: bool = False           # --force over a run: its files are deleted first


def holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_FILES)


def check_saves_replaceable(out: Path, flag: str) -> None:
    """The run's saves (last/, best/) hold only a checkpoint's files: --force deletes them and
    training replaces them, so a user's file there is refused before any work."""
    for name in ("last", "best"):
        try:
            checkpoint.check_replaceable(out / name)
        except checkpoint.CheckpointError as e:
            raise RunDirError(f"{flag}: {e}") from None


def plan_run(recipe: str = "default", flags: dict | None = None) -> Plan:
    """Decide how a run starts, from the flags and what --out holds; reads files, writes none.

    - --out holds a run: --resume continues it from last/ (or last.old/), --force replaces it;
      neither is an error, and so is --resume with no last/ to continue.
    - A resumed run is rebuilt from its own record: the model and tokenizer of last/, the
      schedule of last/state.json (config.resolve says which fields win), even when its
      --init-from checkpoint is gone.
    - --init-from (fresh runs): the checkpoint's weights, model and tokenizer.
    - Otherwise the tokenizer is made: characters, or BPE learned on the training lines."""
    flags = dict(flags or {})
    out = Path(flags.get("out", configs.flag_default("out")))
    resume, force = flags.get("resume", False), flags.get("force", False)
    if resume and force:
        raise RunDirError("--resume continues the run, --force replaces it: choose one")
    if paths.is_shipped(out):
        raise RunDirError(f"--out {out}: that is a shipped checkpoint folder; choose another")
    if resume or force:
        check_saves_replaceable(out, "--resume" if resume else "--force")
    if resume:
        if not checkpoint.exists(out / "last"):
            raise RunDirError(f"--resume: {out} has no last/ checkpoint to continue; leave out "
                              f"--resume to start a new run there")
        last = checkpoint.resolve(out / "last")
        saved = saved_config(last, out)
        saved["model"] = configs.model_dict(checkpoint.load_config(last))   # the weights' own
        cfg, notices = configs.resolve(recipe, flags, saved)
        return Plan(cfg, notices, last=last, tokenizer=last)
    if holds_run(out) and not force:
        raise RunDirError(f"{out} already holds a run: add --resume to continue it, or --force "
                          f"to replace it")
    init = init_model = None
    if flags.get("init_from"):
        init = checkpoint.resolve(flags["init_from"])
        init_model = checkpoint.load_config(init).to_dict()
        if force and out.resolve() in init.resolve().parents:
            raise RunDirError(f"--init-from {init} is inside the run that --force would delete")
    cfg, notices = configs.resolve(recipe, flags, init_model=init_model,
                                   init_source=f"--init-from {flags.get('init_from')}")
    return Plan(cfg, notices, init=init, tokenizer=init or cfg.tokenizer,
                replace=force and holds_run(out))


# ---------------------------------------------------------------------------------------------
# processes: DDP set-up and teardown

@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1 or dist.is_initialized()


@contextlib.contextmanager
def distributed(device_name: str):
    """This process's place in a torchrun job (or a job of one).

    The process group is always torn down: after a clean run every rank meets at a barrier
    (no rank exits while another still sends), then destroys the group; after an error the
    group is destroyed at once (the other ranks may never reach a barrier)."""
    device = runtime.resolve_device(device_name)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        yield Dist(0, 1, device)
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    clean = False
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        yield Dist(dist.get_rank(), dist.get_world_size(), device)
        clean = True
    finally:
        try:
            if clean:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def broadcast_text(dd: Dist, text: str | None) -> str | None:
    """Rank 0's text (or None) on every rank, sent as bytes (nccl sends device tensors)."""
    if not dd.ddp:
        return text
    raw = (text or "").encode() if dd.master else b""
    head = torch.tensor([len(raw), text is not None], device=dd.device)
    dist.broadcast(head, src=0)
    n = int(head[0])
    buf = torch.tensor(list(raw), dtype=torch.uint8, device=dd.device) if dd.master \
        else torch.empty(n, dtype=torch.uint8, device=dd.device)
    if n:
        dist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).decode() if int(head[1]) else None


def on_master(dd: Dist, fn: Callable):
    """fn() on rank 0; if it fails, every rank raises (the others its message in one line), so
    all stop in order instead of waiting for rank 0 in the next collective."""
    err = None
    if dd.master:
        try:
            value = fn()
        except Exception as e:
            err = e
    msg = broadcast_text(dd, None if err is None else str(err))
    if err is not None:
        raise err
    if msg is not None:
        raise RunDirError(msg)
    return value if dd.master else None


# ---------------------------------------------------------------------------------------------
# the run

class NullReporter:
    """What train() tells the outside world; the CLI passes a rich one (progress.py)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def start(self, total_steps, budget_seconds, state): pass
    def step(self, state, loss, nats_per_image, lr, tok_per_s): pass
    def eval(self, state, nll, images): pass
    def evaluating(self, label, total): return None      # -> progress(done, total) or None
    def stop(self): pass

    def message(self, text):
        if not self.quiet:
            print(text, flush=True)


@dataclass
class Run:
    """What fit() and finish() work on; built by prepare_run()."""
    cfg: TrainConfig
    dd: Dist
    clock: Callable
    started: float                  # clock() when this invocation began
    base_elapsed: float             # state.elapsed at that moment
    tok: object
    config: GPTConfig
    model: torch.nn.Module
    fwd_model: torch.nn.Module      # the model as called: compiled and/or DDP-wrapped
    opt: torch.optim.Optimizer
    state: State
    train_tokens: torch.Tensor
    test_tokens: torch.Tensor
    images: object = None           # --binarize dynamic: the MNIST images, redrawn every epoch
    labels: object = None
    train_lines: list | None = None # --shift-aug: the corpus's lines, shifted anew every epoch
    aug: torch.Tensor | None = None # --shift-aug: each training line's augmentation id
    encoded_epoch: int = 0
    saved_step: int | None = None   # the step last/ holds
    lock: checkpoint.RunLock | None = None

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_tokens) // self.cfg.batch_size

    @property
    def total_steps(self) -> int:
        return self.cfg.max_steps or max(1, round(self.cfg.epochs * self.steps_per_epoch))

    @property
    def budget(self) -> float:
        return (self.cfg.minutes or 0) * 60.0

    def eval_sizes(self) -> tuple[int, int]:
        """(final evaluation images, periodic evaluation images), within the test split."""
        n = len(self.test_tokens)
        return min(self.cfg.final_eval_images or n, n), min(self.cfg.eval_images, n)

    def reserve(self) -> float:
        """Budget seconds kept for the final evaluation: its images at the measured rate."""
        st = self.state
        per_image = st.eval_seconds_per_image or \
            EVAL_COST * st.train_seconds / max(1, st.step * self.cfg.batch_size)
        return per_image * max(self.eval_sizes())

    def progress(self) -> float:
        p = self.state.step / self.total_steps
        if self.budget:
            p = max(p, self.state.elapsed / max(self.budget - self.reserve(), 1e-9))
        return p

    def done(self) -> bool:
        st = self.state
        return st.step >= self.total_steps or \
            bool(self.budget and st.elapsed + self.reserve() >= self.budget)

    def now(self) -> float:
        """This invocation's seconds on the run's clock."""
        return self.clock() - self.started

    def log(self, rec: dict) -> None:
        if self.dd.master:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def evaluate(self, tokens, prefix: int, progress=None) -> tuple[float, float]:
        """Mean NLL per image over `tokens` and over its first `prefix` lines, all ranks together;
        times the evaluation for the budget's reserve."""
        self.model.eval()
        t0 = self.clock()
        idx = torch.arange(self.dd.rank, len(tokens), self.dd.world)
        nll = torch.from_numpy(metrics.nll_per_image(self.model, tokens[idx], device=self.dd.device,
                                                     dtype=self.cfg.dtype, progress=progress))
        first = idx < prefix
        sums = torch.tensor([nll.sum(), len(nll), nll[first].sum(), first.sum(), self.clock() - t0],
                            dtype=torch.float64, device=self.dd.device)
        if self.dd.ddp:
            dist.all_reduce(sums)
        self.model.train()
        s = sums.cpu().tolist()
        self.state.eval_seconds_per_image = s[4] / self.dd.world / max(s[1], 1)
        return s[0] / max(s[1], 1), s[2] / max(s[3], 1)

    def save(self, select_nll: float | None = None, record: dict | None = None) -> None:
        """last/, and first best/ if select_nll beats the best recorded in best/ itself."""
        if not self.dd.master:
            return
        st = self.state
        if select_nll is not None and select_nll < st.best_nll:
            rec = dict(record or {}, select_nll=select_nll, step=st.step,
                       train_seconds=st.train_seconds)
            rec.setdefault("select_images", self.eval_sizes()[1])
            save_run_checkpoint(self.out / "best", self.model, self.config, self.tok,
                                metrics_json=rec)
            st.best_nll = select_nll
        save_run_checkpoint(self.out / "last", self.model, self.config, self.tok, self.opt, st,
                            self.cfg)
        self.saved_step = st.step

    def close(self) -> None:
        self.fwd_model = None           # the DDP wrapper (and its hooks) goes before its group
        gc.collect()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def take_run_dir(plan: Plan, reporter) -> checkpoint.RunLock:
    """Rank 0: lock --out and remove what killed saves left (the old run stays: replace_run)."""
    out = Path(plan.cfg.out)
    lock = checkpoint.RunLock(out).acquire()
    try:
        if lock.took_over:
            reporter.message(f"{out}: took over the lock of pid {lock.took_over}, which is gone")
        checkpoint.clean_leftovers(out)
    except BaseException:
        lock.release()
        raise
    return lock


def replace_run(plan: Plan, reporter) -> None:
    """Rank 0, with --force: delete the old run's files, once its replacement's data, tokenizer
    and model are ready (a refusal found on the way leaves the old run whole)."""
    if not plan.replace:
        return
    out = Path(plan.cfg.out)
    reporter.message(f"--force: replacing the run in {out}")
    for name in RUN_FILES:
        p = out / name
        if p.is_dir():
            checkpoint.remove_dir(p)
        elif p.exists():
            p.unlink()


def load_lines(cfg: TrainConfig):
    """(train lines, test lines, images, labels); images and labels only with --binarize dynamic."""
    test_lines = data.read_split(cfg.corpus, "test")
    images = labels = None
    if cfg.binarize == "dynamic":
        images, labels = data.load_images(cfg.data_root, True, cfg.dataset)
        images, labels = images[:cfg.train_limit], labels[:cfg.train_limit]
        train_lines = data.dynamic_epoch_lines(images, labels, cfg.seed, 0)
    else:
        train_lines = data.read_split(cfg.corpus, "train", cfg.train_limit)
    if cfg.shift_aug and len(train_lines[0]) != codec.line_length(1):
        raise data.DataError(f"{cfg.corpus}: --shift-aug moves pixels of 1-bit lines "
                             f"({codec.line_length(1)} characters); these have "
                             f"{len(train_lines[0])}")
    if len(train_lines[0]) != len(test_lines[0]):
        raise data.DataError(f"{cfg.corpus}: train lines have {len(train_lines[0])} characters, "
                             f"test lines {len(test_lines[0])}")
    return train_lines, test_lines, images, labels


def make_tokenizer(plan: Plan, train_lines, dd: Dist):
    """The run's tokenizer: a checkpoint's (resume, --init-from), or characters, or BPE merges
    learned by rank 0 and sent to the others (every rank must use the same merges)."""
    if isinstance(plan.tokenizer, Path):
        return checkpoint.load_tokenizer(plan.tokenizer, checkpoint.load_config(plan.tokenizer))
    if plan.tokenizer == "bpe":
        text = tk.train_bpe(train_lines, plan.cfg.bpe_vocab).to_str() if dd.master else None
        return tk.from_json(broadcast_text(dd, text), "rank 0's tokenizer")
    return tk.build()


def build_trainer(plan: Plan, tok, line_length: int, dd: Dist):
    """(GPTConfig, model, optimizer, state): fresh, from --init-from's weights, or resumed."""
    cfg = plan.cfg
    source = plan.last or plan.init
    if source is not None:       # the checkpoint's own model, whatever the model flags say
        config = checkpoint.load_config(source)
        model = build_model(config)
        checkpoint.load_weights(model, source)
        torch.manual_seed(cfg.seed)
    else:
        # room for the longest possible line: BPE lines are shorter, but one may spell every symbol
        config = configs.model_config(cfg, tok.get_vocab_size(), None)
        config.block_size = max(config.block_size, line_length)
        torch.manual_seed(cfg.seed)
        model = build_model(config)
    cfg.model = configs.model_dict(config)        # args.json records the model it trains
    model = model.to(dd.device).train()
    opt = make_optimizer(model, cfg)
    state = State()
    if plan.last is not None:
        state = load_run_state(plan.last, opt)
        state.best_nll = best_on_disk(Path(cfg.out), state.best_nll)
    return config, model, opt, state


def record_machine(cfg: TrainConfig, dd: Dist, state: State, resumed: bool) -> None:
    """cfg.machine: where and when the run started; each resume is added."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if resumed and cfg.machine:
        cfg.machine = dict(cfg.machine)
        cfg.machine["resumed"] = cfg.machine.get("resumed", []) + [{"at": now, "step": state.step}]
    elif not cfg.machine:
        cfg.machine = {"platform": platform.platform(), "cpu": platform.processor(),
                       "cpus": os.cpu_count(), "torch": torch.__version__,
                       "device": str(dd.device), "world": dd.world, "started": now}


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_run(plan: Plan, dd: Dist, reporter, clock: Callable, started: float) -> Run:
    """Everything before the first step: the run directory, data, tokenizer, model, state."""
    cfg = plan.cfg
    lock = on_master(dd, lambda: take_run_dir(plan, reporter))
    try:
        runtime.set_threads(cfg.threads)
        if dd.device.type == "cpu":
            runtime.keep_freed_memory()
        if dd.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        train_lines, test_lines, images, labels = load_lines(cfg)
        tok = make_tokenizer(plan, train_lines, dd)
        test_tokens = torch.from_numpy(tk.encode_corpus(tok, test_lines))
        config, model, opt, state = build_trainer(plan, tok, len(train_lines[0]), dd)
        n, B = len(train_lines), cfg.batch_size
        if B % dd.world:
            raise ConfigError(f"batch_size: {B} is not divisible by {dd.world} processes")
        if n < B:
            raise ConfigError(f"batch_size: {B} is larger than the {n} training lines")
        epoch = state.step // (n // B)                   # a resumed run's: encoded once
        train_tokens, aug = epoch_tokens(cfg, tok, train_lines, images, labels, epoch)
        record_machine(cfg, dd, state, plan.last is not None)
        on_master(dd, lambda: replace_run(plan, reporter))
        if dd.master:
            write_text_atomic(Path(cfg.out) / "args.json",
                              json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
            tok.save(str(Path(cfg.out) / "tokenizer.json"))
        fwd_model = torch.compile(model) if cfg.compile else model
        if dd.ddp:
            fwd_model = torch.nn.parallel.DistributedDataParallel(
                fwd_model, device_ids=[dd.device.index] if dd.device.type == "cuda" else None)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Run(cfg, dd, clock, started, state.elapsed, tok, config, model, fwd_model, opt, state,
               train_tokens, test_tokens, images, labels,
               train_lines=train_lines if cfg.shift_aug else None, aug=aug, encoded_epoch=epoch,
               saved_step=state.step if plan.last else None, lock=lock)


# ---------------------------------------------------------------------------------------------
# fit and finish

def epoch_tokens(cfg: TrainConfig, tok, train_lines, images, labels, epoch: int):
    """(tokens (N, L), augmentation ids (N,) or None) of one epoch's training lines: the
    corpus's, or redrawn (--binarize dynamic), or some of them shifted (--shift-aug)."""
    aug = None
    if images is not None and epoch:           # (load_lines drew epoch 0's)
        train_lines = data.dynamic_epoch_lines(images, labels, cfg.seed, epoch)
    elif cfg.shift_aug:
        train_lines, ids = data.shifted_epoch_lines(train_lines, cfg.shift_aug, cfg.shift_max,
                                                    cfg.seed, epoch)
        aug = torch.from_numpy(ids)
    return torch.from_numpy(tk.encode_corpus(tok, train_lines)), aug


def next_batch(run: Run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """This rank's share of the step's lines: (tokens, real-token mask, augmentation ids)."""
    cfg, B = run.cfg, run.cfg.batch_size
    epoch, k = divmod(run.state.step, run.steps_per_epoch)
    if (run.images is not None or cfg.shift_aug) and epoch != run.encoded_epoch:
        run.train_tokens, run.aug = epoch_tokens(cfg, run.tok, run.train_lines, run.images,
                                                 run.labels, epoch)
        run.encoded_epoch = epoch
    idx = epoch_order(cfg.seed, epoch, len(run.train_tokens))[k * B:(k + 1) * B]
    mine = idx[run.dd.rank::run.dd.world]
    batch = run.train_tokens[mine].to(run.dd.device, torch.long, non_blocking=True)
    if run.aug is not None:
        aug = run.aug[mine].to(run.dd.device, torch.long)
    elif run.config.aug_embed:      # id 0 for all: DDP wants every weight in the graph
        aug = torch.zeros(len(mine), dtype=torch.long, device=run.dd.device)
    else:
        aug = None
    real = batch != tk.PAD_ID
    if not real.all():      # BPE lines: trim to this batch's longest, ignore the padding
        batch = batch[:, :int(real.sum(1).max())]
        real = real[:, :batch.shape[1]]
    return batch, real, aug


def one_step(run: Run) -> tuple[float, float, int]:
    """One optimizer step; returns (loss, lr, tokens). Under DDP the loss and the clock are
    averaged over the ranks, so every rank takes the same decisions (stop, evaluate)."""
    st, dd = run.state, run.dd
    t0 = run.clock()
    batch, real, aug = next_batch(run)
    targets = batch[:, 1:].masked_fill(~real[:, 1:], -1)
    lr = lr_at(run.cfg, st.step, run.progress())
    for g in run.opt.param_groups:
        g["lr"] = lr
    loss = train_step(run.fwd_model, run.model, run.opt, batch[:, :-1], targets, run.cfg,
                      dd.device, aug)
    if dd.device.type == "cuda":
        torch.cuda.synchronize()
    shared = torch.tensor([loss.item(), run.clock() - t0, run.now()], dtype=torch.float64,
                          device=dd.device)
    if dd.ddp:
        dist.all_reduce(shared)
        shared /= dd.world
    loss_v, dt, since = shared.cpu().tolist()
    st.step += 1
    st.train_seconds += dt
    st.elapsed = run.base_elapsed + since
    ntok = int(real[:, 1:].sum()) * dd.world
    st.tokens += ntok
    return loss_v, lr, ntok


def periodic_eval(run: Run, reporter) -> None:
    st = run.state
    st.last_eval_at = st.train_seconds
    n_select = run.eval_sizes()[1]
    nll, _ = run.evaluate(run.test_tokens[:n_select], n_select)
    st.history.append([st.step, st.train_seconds, nll])
    run.log({"step": st.step, "train_seconds": st.train_seconds, "test_nll_subset": nll,
             "eval_images": n_select})
    run.save(nll, {"test_nll_nats": nll, "eval_images": n_select})
    reporter.eval(st, nll, n_select)


def fit(run: Run, reporter) -> bool:
    """The training loop, until the steps or the time budget run out (the final evaluation's
    time is kept aside). True when --stop-after ended it early, with last/ saved."""
    cfg, st = run.cfg, run.state
    reporter.start(run.total_steps, run.budget, st)
    reporter.message(f"{run.config.arch} {run.config.n_layer}x{run.config.n_embd}, "
                     f"{run.model.num_params() / 1e6:.2f}M params, {len(run.train_tokens)} train "
                     f"lines, device {run.dd.device}, world {run.dd.world}, "
                     + (f"{cfg.minutes:g} min on the {cfg.clock} clock (evaluations included)"
                        if run.budget else f"{run.total_steps} steps"))
    last_save, steps_here = st.train_seconds, 0
    t_log, tokens_log = time.perf_counter(), 0
    while not run.done():
        if cfg.stop_after and steps_here >= cfg.stop_after:
            run.save()
            reporter.message(f"stopped after {steps_here} steps (--stop-after)")
            return True
        steps_here += 1
        loss, lr, ntok = one_step(run)
        tokens_log += ntok
        if st.step % cfg.log_every == 0 or st.step == 1:
            tps = tokens_log / max(time.perf_counter() - t_log, 1e-9)
            t_log, tokens_log = time.perf_counter(), 0
            nats = loss * ntok / cfg.batch_size
            reporter.step(st, loss, nats, lr, tps)
            run.log({"step": st.step, "epoch": st.step / run.steps_per_epoch, "loss": loss,
                     "nats_per_image": nats, "lr": lr, "tok_per_s": tps,
                     "train_seconds": st.train_seconds})
        if not math.isfinite(loss):
            kept = f"{run.out / 'last'} holds step {run.saved_step}" if run.saved_step is not None \
                else "no checkpoint was written"
            raise TrainError(f"loss is {loss} at step {st.step}: training stopped; {kept} "
                             f"(a lower --lr or --grad-clip may help)")
        if cfg.eval_every and st.train_seconds - st.last_eval_at >= cfg.eval_every \
                and not run.done():
            periodic_eval(run, reporter)
            last_save = st.train_seconds
        elif st.train_seconds - last_save >= cfg.save_every:
            run.save()
            last_save = st.train_seconds
    if run.budget and steps_here < 10 and st.step < run.total_steps:
        reporter.message(f"--minutes {cfg.minutes:g} left time for {steps_here} steps after the "
                         f"set-up and the final evaluation (about {run.reserve():.0f} s): give more "
                         f"minutes, or fewer --final-eval-images")
    return False


def weights_identical(run: Run) -> bool:
    """Whether every rank holds the same weights (sums of the weights and of their squares)."""
    flat = torch.cat([p.detach().double().reshape(-1) for p in run.model.parameters()])
    sums = torch.stack([flat.sum(), (flat * flat).sum()]).to(run.dd.device)
    gathered = [torch.zeros_like(sums) for _ in range(run.dd.world)]
    dist.all_gather(gathered, sums)
    return all(torch.equal(gathered[0], g) for g in gathered)


def finish(run: Run, reporter) -> dict:
    """The final evaluation (bounded: --final-eval-images), best/ if better, last/, the plot."""
    st = run.state
    identical = weights_identical(run) if run.dd.ddp else None
    n_final, n_select = run.eval_sizes()
    n = max(n_final, n_select)     # one pass: the smaller set is the larger one's prefix
    shard = len(range(run.dd.rank, n, run.dd.world))
    whole, first = run.evaluate(run.test_tokens[:n], min(n_final, n_select),
                                reporter.evaluating(f"final evaluation, {n} images", shard))
    final, select = (whole, first) if n_final >= n_select else (first, whole)
    st.history.append([st.step, st.train_seconds, final])
    st.elapsed = run.base_elapsed + run.now()
    result = {"step": st.step, "train_seconds": st.train_seconds, "elapsed_seconds": st.elapsed,
              "tokens": st.tokens, "test_nll_nats": final,
              "test_bits_per_pixel": metrics.nats_to_bits_per_pixel(final),
              "eval_images": n_final}
    if identical is not None:
        result.update(world=run.dd.world, ddp_weights_identical=identical)
    run.log(dict(result, final=True))
    run.save(select, {"test_nll_nats": final, "eval_images": n_final, "select_images": n_select})
    if run.dd.master:
        try:
            render.plot_training([run.out / "metrics.jsonl"], run.out / "loss.png")
        except Exception as e:   # a missing plot must never cost a trained model
            reporter.message(f"loss plot skipped: {e}")
        if checkpoint.exists(run.out / "best"):
            best = checkpoint.resolve(run.out / "best")
            result["best"] = checkpoint.read_json(best / "metrics.json")
    result["out"] = str(run.out)
    return result


def train(plan: Plan | TrainConfig, reporter=None) -> dict:
    """Prepare the run, fit, finish; returns the final metrics (or {"stopped": True, ...} after
    --stop-after). A TrainConfig is planned as if its fields were given as flags."""
    if isinstance(plan, TrainConfig):
        plan = plan_run(plan.recipe, {k: v for k, v in plan.to_dict().items() if k != "recipe"})
    clock = CLOCKS[plan.cfg.clock]
    started = clock()
    reporter = reporter or NullReporter()
    with distributed(plan.cfg.device) as dd:
        if not dd.master:
            reporter = NullReporter(quiet=True)
        for line in plan.notices:
            reporter.message(line)
        run = prepare_run(plan, dd, reporter, clock, started)
        try:
            if plan.last is not None:
                reporter.message(f"resumed {plan.last} at step {run.state.step}")
            if fit(run, reporter):
                return {"step": run.state.step, "stopped": True, "out": str(run.out)}
            return finish(run, reporter)
        finally:
            reporter.stop()
            run.close()


def ship(src, out) -> Path:
    """Copy a run's checkpoint (weights, config, tokenizer) to `out` with the run's record:
    its args, metrics and trainer state, and for a second stage its first stage's record."""
    src = checkpoint.resolve(src)
    model, config, tok = checkpoint.load_model(src)
    run_dir = src.parent
    meta: dict = {"source": str(src)}
    if (run_dir / "args.json").exists():
        meta["args"] = checkpoint.read_json(run_dir / "args.json")
    if (src / "metrics.json").exists():
        meta["metrics"] = checkpoint.read_json(src / "metrics.json")
    if checkpoint.exists(run_dir / "last"):
        last = checkpoint.resolve(run_dir / "last")
        if (last / "state.json").exists():
            st = State.from_dict(checkpoint.read_json(last / "state.json").get("state"),
                                 last / "state.json")
            meta["run_state"] = {k: getattr(st, k) for k in ("step", "train_seconds", "tokens",
                                                             "best_nll")}
    init = (meta.get("args") or {}).get("init_from")
    if init is not None and not isinstance(init, str):
        raise checkpoint.CheckpointError(f"{run_dir / 'args.json'}: init_from: expected a path "
                                         f"or null, got {init!r}")
    if init and checkpoint.exists(init):   # a second stage: keep the first stage's record
        init_dir = checkpoint.resolve(init)
        if (init_dir / "metadata.json").exists():
            meta["init_from"] = checkpoint.read_json(init_dir / "metadata.json")
        elif (init_dir.parent / "args.json").exists():
            meta["init_from"] = {"source": str(init_dir),
                                 "args": checkpoint.read_json(init_dir.parent / "args.json")}
    return checkpoint.write_dir(out, {"model.safetensors": checkpoint.model_tensors(model)},
                                {"config.json": config.to_dict(), "metadata.json": meta},
                                {"tokenizer.json": tok.to_str(pretty=True)})
