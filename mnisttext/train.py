"""Train the character model on corpus/.

    python cli.py train --out runs/default                      # the default recipe
    python cli.py train --recipe seed --out runs/seed            # the original project's recipe
    python cli.py train --out runs/default --resume              # continue after a kill
    torchrun --nproc_per_node 2 cli.py train --out runs/ddp      # DistributedDataParallel

A run directory holds args.json, metrics.jsonl, loss.png, and the checkpoints last/ and best/
(best = lowest test NLL). The data order is a function of (seed, epoch) and the learning rate a
function of the step (or, with --minutes, of training seconds), so --resume continues exactly.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint, data, metrics, runtime
from . import tokenizer as tk
from .model import PRESETS, GPTConfig, build_model

RECIPES = {
    # the original project: 10k images, one epoch, Adam 1e-4 constant, batch 128, its 8x256 model
    "seed": dict(preset="seed", train_limit=10_000, epochs=1.0, optimizer="adam", lr=1e-4,
                 schedule="constant", warmup_steps=0, batch_size=128, weight_decay=0.0,
                 grad_clip=0.0),
    # short runs on a laptop CPU: a smaller model, a high learning rate, small batches (many
    # updates per minute: at a fixed 4-minute budget batch 32 reached 79 nats, batch 64 113)
    "default": dict(preset="small", train_limit=None, epochs=1.0, optimizer="adamw", lr=3e-3,
                    schedule="cosine", warmup_steps=100, batch_size=32, weight_decay=0.1,
                    grad_clip=1.0),
    # the shipped model: a wider net for as long as the budget allows (use --minutes on a CPU)
    "flagship": dict(preset="flagship", train_limit=None, epochs=10.0, optimizer="adamw",
                     lr=2e-3, schedule="cosine", warmup_steps=200, batch_size=32,
                     weight_decay=0.1, grad_clip=1.0),
}
MODEL_FLAGS = ("arch", "n_layer", "n_head", "n_embd", "dropout", "bit_embed", "gelu")


def positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def add_args(p):
    p.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                   help="preset of everything below; explicit flags override it")
    p.add_argument("--corpus", default="corpus", help="directory with train.txt and test.txt")
    p.add_argument("--out", default="runs/default", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument("--init-from", help="start from this checkpoint's weights, model config and "
                                       "tokenizer (a fresh optimizer and schedule: fine-tuning, "
                                       "or a second training stage)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model size preset")
    p.add_argument("--arch", choices=["gpt", "gru"], help="model family")
    p.add_argument("--n-layer", type=int, help="layers")
    p.add_argument("--n-head", type=int, help="attention heads")
    p.add_argument("--n-embd", type=int, help="model width")
    p.add_argument("--dropout", type=float, help="dropout probability")
    p.add_argument("--bit-embed", action=argparse.BooleanOptionalAction, default=None,
                   help="add an embedding of each symbol's 6 pixel bits to its token embedding")
    p.add_argument("--gelu", choices=["exact", "tanh"],
                   help="the MLP's GELU: exact (erf) or tanh (GPT-2's approximation)")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char",
                   help="one token per character, or BPE tokens learned on the training lines")
    p.add_argument("--bpe-vocab", type=int, default=512, help="BPE vocabulary size (with --tokenizer bpe)")
    p.add_argument("--binarize", choices=["threshold", "dynamic"], default="threshold",
                   help="dynamic: redraw the training pixels as Bernoulli(x/255) every epoch from the "
                        "MNIST files in --data-root (test on `export --binarize dynamic` lines)")
    p.add_argument("--data-root", default="data", help="torchvision dataset root (--binarize dynamic)")
    p.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or kmnist (--binarize dynamic)")
    p.add_argument("--train-limit", type=int, help="use only the first N training lines")
    p.add_argument("--epochs", type=float, help="passes over the training lines")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--minutes", type=float,
                   help="training wall-clock budget; the LR schedule follows time, not steps")
    p.add_argument("--optimizer", choices=["adam", "adamw"], help="optimizer")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--min-lr-frac", type=float, default=0.05, help="final LR / peak LR (cosine)")
    p.add_argument("--schedule", choices=["constant", "cosine"], help="LR schedule after warmup")
    p.add_argument("--warmup-steps", type=int, help="linear warmup steps")
    p.add_argument("--batch-size", type=int, help="global batch size (lines)")
    p.add_argument("--grad-accum", type=positive_int, default=1,
                   help="micro-batches per step on each process (the same gradient in less "
                        "memory; under DDP one all-reduce per step)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (matrices only)")
    p.add_argument("--grad-clip", type=float, help="clip grad norm (0 = off)")
    p.add_argument("--eval-every", type=float, default=60.0,
                   help="evaluate every N training seconds (0 = only at the end)")
    p.add_argument("--eval-images", type=int, default=2000,
                   help="test lines used for the periodic NLL (the final one uses all)")
    p.add_argument("--log-every", type=int, default=10, help="log every N steps")
    p.add_argument("--save-every", type=float, default=120.0,
                   help="write last/ every N training seconds (and at every eval)")
    p.add_argument("--seed", type=int, default=1337, help="seed for init, data order, dropout")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="autocast dtype; auto = bf16 where the hardware has it")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--stop-after", type=int, default=0,
                   help="end this invocation after N steps with a checkpoint, as if killed "
                        "(for resume tests)")
    return p


def resolve_args(args) -> dict:
    """Recipe defaults filled in under explicit flags -> plain dict (saved as args.json)."""
    cfg = dict(RECIPES[args.recipe])
    for k, v in vars(args).items():
        if callable(v) or k == "command":
            continue
        if v is not None or k not in cfg:
            cfg[k] = v
    return cfg


def model_config(cfg: dict, vocab_size: int) -> GPTConfig:
    base = dict(PRESETS[cfg["preset"]])
    for k in MODEL_FLAGS:
        if cfg.get(k) is not None:
            base[k] = cfg[k]
    return GPTConfig(vocab_size=vocab_size, **base)


def lr_at(cfg: dict, step: int, progress: float) -> float:
    """progress in [0, 1]: share of the step or time budget spent."""
    peak = cfg["lr"]
    if step < cfg["warmup_steps"]:
        return peak * (step + 1) / cfg["warmup_steps"]
    if cfg["schedule"] == "constant":
        return peak
    lo = peak * cfg["min_lr_frac"]
    return lo + 0.5 * (peak - lo) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model, cfg):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel (CPU and CUDA) does the whole update in one pass over each tensor: ~5x
    # faster than the foreach one on a CPU core, ~1% of a seed-model training step
    fused = dict(fused=True) if next(model.parameters()).device.type in ("cpu", "cuda") else {}
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg["lr"], **fused)
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.95), **fused)


def train_step(fwd_model, model, opt, inputs, targets, cfg: dict, device) -> torch.Tensor:
    """One optimizer step on this rank's lines, run as cfg["grad_accum"] micro-batches.

    The gradient is the whole batch's: each micro-batch's mean loss is weighted by its share of
    the targets. Under DDP the gradients are all-reduced once, after the last micro-batch.
    Micro-batches hold fewer activations at once (on the 2-core CPU here they were no faster).
    Returns the batch's mean loss (detached)."""
    parts = min(cfg.get("grad_accum") or 1, len(inputs))
    n_targets = (targets != -1).sum()
    ddp = isinstance(fwd_model, torch.nn.parallel.DistributedDataParallel)
    total = torch.zeros((), device=inputs.device)
    for i, (x, y) in enumerate(zip(inputs.tensor_split(parts), targets.tensor_split(parts))):
        with fwd_model.no_sync() if ddp and i < parts - 1 else contextlib.nullcontext():
            with runtime.autocast(device, cfg["dtype"]):
                _, loss = fwd_model(x, y)
            share = (y != -1).sum() / n_targets
            (loss * share).backward()
        total += loss.detach() * share
    if cfg["grad_clip"]:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


@dataclass
class State:
    step: int = 0
    train_seconds: float = 0.0
    best_nll: float = float("inf")
    last_eval_at: float = 0.0
    tokens: int = 0
    history: list = field(default_factory=list)


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
                        cfg: dict | None = None) -> None:
    tensors = {"model.safetensors": checkpoint.model_tensors(model)}
    jsons: dict = {"config.json": config.to_dict()}
    if opt is not None and state is not None:
        otens, ometa = optimizer_tensors(opt)
        otens["rng.torch"] = torch.get_rng_state()
        tensors["state.safetensors"] = otens
        jsons["state.json"] = {"state": state.__dict__, "optimizer": ometa, "args": cfg}
    checkpoint.write_dir(path, tensors, jsons, {"tokenizer.json": tok.to_str(pretty=True)})


def load_run_state(path, model, opt):
    d = checkpoint.resolve(path)
    checkpoint.load_weights(model, d)
    meta = checkpoint.read_json(d / "state.json")
    stens = checkpoint.read_tensors(d / "state.safetensors")
    try:
        restore_optimizer(opt, stens, meta["optimizer"])
        torch.set_rng_state(stens["rng.torch"])
        return State(**meta["state"]), meta.get("args")
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise checkpoint.CheckpointError(f"{d}: trainer state does not fit this run ({e})") from None


class NullReporter:
    """What train() tells the outside world; the CLI passes a rich one (progress.py)."""

    def start(self, total_steps, total_seconds, cfg): pass
    def step(self, state, loss, nats_per_image, lr, tok_per_s): pass
    def eval(self, state, nll): pass
    def message(self, text): print(text, flush=True)
    def stop(self): pass


def train(cfg: dict, reporter=None) -> dict:
    """Run training as configured by resolve_args(); returns the final metrics."""
    reporter = reporter or NullReporter()
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = runtime.resolve_device(cfg["device"])
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
    master = rank == 0
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if device.type == "cpu":
        runtime.keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(cfg["out"])

    test_lines = data.read_split(cfg["corpus"], "test")
    dynamic = cfg.get("binarize") == "dynamic"
    if dynamic:
        images, labels = data.load_images(cfg["data_root"], True, cfg.get("dataset", "mnist"))
        images, labels = images[:cfg["train_limit"]], labels[:cfg["train_limit"]]
        train_lines = data.dynamic_epoch_lines(images, labels, cfg["seed"], 0)
    else:
        train_lines = data.read_split(cfg["corpus"], "train", cfg["train_limit"])
    if len(train_lines[0]) != len(test_lines[0]):
        raise data.DataError(f"{cfg['corpus']}: train lines have {len(train_lines[0])} characters, "
                             f"test lines {len(test_lines[0])}")
    # A resumed run is rebuilt from its own last/ (architecture, tokens, weights, trainer
    # state), whatever the model flags say and even if its --init-from checkpoint is gone.
    last = None
    if cfg["resume"] and ((out / "last").exists() or (out / "last.old").exists()):
        last = checkpoint.resolve(out / "last")
    init_model = None
    if cfg.get("init_from") and last is None:   # a second stage: the checkpoint's weights,
        init_model, init_config, init_tok = checkpoint.load_model(cfg["init_from"])  # model, tokens
    if cfg["resume"] and (out / "tokenizer.json").exists():
        tok = tk.load(out / "tokenizer.json")        # a learned vocabulary must stay the same
    elif last is not None:
        tok = tk.load(last / "tokenizer.json")
    elif init_model is not None:
        tok = init_tok
    elif cfg.get("tokenizer") == "bpe":
        tok = tk.train_bpe(train_lines, cfg["bpe_vocab"]) if master else None
        if ddp:   # every rank must use rank 0's merges: send its tokenizer.json as bytes
            raw = torch.frombuffer(bytearray(tok.to_str().encode()), dtype=torch.uint8) \
                if master else torch.empty(0, dtype=torch.uint8)
            size = torch.tensor([raw.numel()], device=device)      # nccl sends device tensors
            dist.broadcast(size, src=0)
            raw = raw.to(device) if master else torch.empty(int(size), dtype=torch.uint8, device=device)
            dist.broadcast(raw, src=0)
            tok = tk.from_json(raw.cpu().numpy().tobytes().decode(), "rank 0's tokenizer")
    else:
        tok = tk.build()
    encoded_epoch = 0
    train_tokens = torch.from_numpy(tk.encode_corpus(tok, train_lines))
    test_tokens = torch.from_numpy(tk.encode_corpus(tok, test_lines))
    if last is not None:
        try:
            config = GPTConfig.from_dict(checkpoint.read_json(last / "config.json"))
        except (TypeError, ValueError) as e:
            raise checkpoint.CheckpointError(f"{last / 'config.json'}: {e}") from None
        asked = model_config(cfg, tok.get_vocab_size())
        given = [k for k in MODEL_FLAGS if cfg.get(k) is not None]     # flags the user set
        if cfg.get("init_from") is None and any(getattr(asked, k) != getattr(config, k) for k in given):
            reporter.message(f"resume: the model is {last / 'config.json'}'s; model flags are ignored")
        for k in MODEL_FLAGS:            # args.json records the model the run really trains
            cfg[k] = getattr(config, k)
    else:
        # with --init-from the architecture is the checkpoint's; model flags cannot change it
        config = init_config if init_model is not None else model_config(cfg, tok.get_vocab_size())
        # room for the longest possible line: BPE lines are shorter, but one may spell every symbol
        config.block_size = max(config.block_size, len(train_lines[0]))
    del train_lines, test_lines

    torch.manual_seed(cfg["seed"])
    model = (init_model.train() if init_model is not None else build_model(config)).to(device)
    opt = make_optimizer(model, cfg)
    state = State()
    if last is not None:
        state, saved = load_run_state(last, model, opt)
        if saved:   # the schedule must be the one the run started with
            for k in ("lr", "batch_size", "epochs", "max_steps", "minutes", "schedule",
                      "warmup_steps", "seed", "train_limit"):
                if cfg.get(k) != saved.get(k):
                    reporter.message(f"resume: keeping {k}={saved.get(k)!r} from the run "
                                     f"(asked {cfg.get(k)!r})")
                    cfg[k] = saved.get(k)
            if "machine" in saved:   # when and where it started; each resume is added
                cfg["machine"] = dict(saved["machine"])
                cfg["machine"]["resumed"] = saved["machine"].get("resumed", []) + [
                    {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": state.step}]
        reporter.message(f"resumed {out / 'last'} at step {state.step}")
    elif cfg["resume"]:
        reporter.message(f"no checkpoint in {out}/last: starting fresh")
    if master:
        import platform
        cfg.setdefault("machine", {"platform": platform.platform(), "cpu": platform.processor(),
                                   "cpus": os.cpu_count(), "torch": torch.__version__,
                                   "device": str(device), "world": world,
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tok.save(str(out / "tokenizer.json"))

    fwd_model = model
    if cfg["compile"]:
        fwd_model = torch.compile(model)
    if ddp:
        fwd_model = torch.nn.parallel.DistributedDataParallel(
            fwd_model, device_ids=[device.index] if device.type == "cuda" else None)

    n = len(train_tokens)
    B = cfg["batch_size"]
    if B % world:
        raise ValueError(f"batch size {B} is not divisible by {world} processes")
    steps_per_epoch = n // B
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {B} is larger than the {n} training lines")
    total_steps = cfg["max_steps"] or max(1, int(round(cfg["epochs"] * steps_per_epoch)))
    budget = (cfg["minutes"] or 0) * 60.0
    eval_subset = test_tokens[:cfg["eval_images"]]
    metrics_path = out / "metrics.jsonl"

    def log(rec):
        if master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def evaluate_now(tokens):
        model.eval()
        shard = tokens[rank::world]
        nll = metrics.nll_per_image(model, shard, device=device, dtype=cfg["dtype"])
        total = torch.tensor([nll.sum(), len(nll)], dtype=torch.float64)
        if ddp:
            dist.all_reduce(total)
        model.train()
        return float(total[0] / total[1])

    def save(with_best=False, nll=None, images=None):
        if not master:
            return
        save_run_checkpoint(out / "last", model, config, tok, opt, state, cfg)
        if with_best:
            save_run_checkpoint(out / "best", model, config, tok)
            (out / "best" / "metrics.json").write_text(json.dumps(
                {"test_nll_nats": nll, "eval_images": images, "step": state.step,
                 "train_seconds": state.train_seconds}))

    def progress():
        p = state.step / total_steps
        return max(p, state.train_seconds / budget) if budget else p

    def done():
        return state.step >= total_steps or (budget and state.train_seconds >= budget)

    if master:
        reporter.start(total_steps, budget, cfg)
        reporter.message(f"{config.arch} {config.n_layer}x{config.n_embd}, "
                         f"{model.num_params() / 1e6:.2f}M params, {n} train lines, "
                         f"{total_steps} steps, device {device}, world {world}")
    model.train()
    last_save = state.train_seconds
    t_log, tokens_log = time.perf_counter(), 0
    steps_this_run = 0
    while not done():
        if cfg.get("stop_after") and steps_this_run >= cfg["stop_after"]:
            save()
            reporter.message(f"stopped after {steps_this_run} steps (--stop-after)")
            if ddp:
                dist.destroy_process_group()
            return {"step": state.step, "stopped": True}
        steps_this_run += 1
        epoch, k = divmod(state.step, steps_per_epoch)
        if dynamic and epoch != encoded_epoch:   # data preparation: off the training clock
            lines = data.dynamic_epoch_lines(images, labels, cfg["seed"], epoch)
            train_tokens = torch.from_numpy(tk.encode_corpus(tok, lines))
            encoded_epoch = epoch
        t0 = time.perf_counter()
        idx = epoch_order(cfg["seed"], epoch, n)[k * B:(k + 1) * B][rank::world]
        batch = train_tokens[idx].to(device, torch.long, non_blocking=True)
        real = batch != tk.PAD_ID
        if not real.all():      # BPE lines: trim to this batch's longest, ignore the padding
            batch = batch[:, :int(real.sum(1).max())]
            real = real[:, :batch.shape[1]]
        targets = batch[:, 1:].masked_fill(~real[:, 1:], -1)
        lr = lr_at(cfg, state.step, progress())
        for g in opt.param_groups:
            g["lr"] = lr
        loss = train_step(fwd_model, model, opt, batch[:, :-1], targets, cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        state.step += 1
        dt = time.perf_counter() - t0
        state.train_seconds += dt
        ntok = int(real[:, 1:].sum()) * world
        state.tokens += ntok
        tokens_log += ntok
        if master and (state.step % cfg["log_every"] == 0 or state.step == 1):
            l = loss.item()
            tps = tokens_log / (time.perf_counter() - t_log)
            t_log, tokens_log = time.perf_counter(), 0
            nats = l * float(real[:, 1:].sum()) / len(batch)
            reporter.step(state, l, nats, lr, tps)
            log({"step": state.step, "epoch": state.step / steps_per_epoch, "loss": l,
                 "nats_per_image": nats, "lr": lr, "tok_per_s": tps,
                 "train_seconds": state.train_seconds})
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {state.step}")
        due_eval = cfg["eval_every"] and state.train_seconds - state.last_eval_at >= cfg["eval_every"]
        if due_eval and not done():
            state.last_eval_at = state.train_seconds
            nll = evaluate_now(eval_subset)
            better = nll < state.best_nll
            state.best_nll = min(nll, state.best_nll)
            state.history.append([state.step, state.train_seconds, nll])
            log({"step": state.step, "train_seconds": state.train_seconds,
                 "test_nll_subset": nll, "eval_images": len(eval_subset)})
            if master:
                reporter.eval(state, nll)
            save(with_best=better, nll=nll, images=len(eval_subset))
            last_save = state.train_seconds
        elif state.train_seconds - last_save >= cfg["save_every"]:
            save()
            last_save = state.train_seconds

    if ddp:   # every rank must hold the same weights; say so in the metrics
        flat = torch.cat([p.detach().float().reshape(-1).cpu() for p in model.parameters()])
        sums = torch.tensor([flat.sum().item(), (flat * flat).sum().item()], dtype=torch.float64)
        gathered = [torch.zeros_like(sums) for _ in range(world)]
        dist.all_gather(gathered, sums)
        identical = all(torch.equal(gathered[0], g) for g in gathered)
    nll_full = evaluate_now(test_tokens)
    state.history.append([state.step, state.train_seconds, nll_full])
    result = {"step": state.step, "train_seconds": state.train_seconds, "tokens": state.tokens,
              "test_nll_nats": nll_full,
              "test_bits_per_pixel": metrics.nats_to_bits_per_pixel(nll_full),
              "eval_images": len(test_tokens)}
    if ddp:
        result.update(world=world, ddp_weights_identical=identical)
    log(dict(result, final=True))
    # `best` is chosen on the periodic eval's subset; compare the final weights on the same one
    nll_sub = evaluate_now(eval_subset) if len(eval_subset) < len(test_tokens) else nll_full
    better = nll_sub <= state.best_nll
    state.best_nll = min(state.best_nll, nll_sub)
    save(with_best=better, nll=nll_full, images=len(test_tokens))
    if master:
        reporter.eval(state, nll_full)
        reporter.stop()
        try:
            from .render import plot_training
            plot_training([metrics_path], out / "loss.png")
        except Exception as e:   # a missing plot must never cost a trained model
            reporter.message(f"loss plot skipped: {e}")
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return result
