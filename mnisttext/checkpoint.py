"""Checkpoints: a directory of safetensors + JSON, written atomically, read without pickle.

    from mnisttext import checkpoint
    model, config, tok = checkpoint.load_model("checkpoints/gpt")
    checkpoint.write_dir("runs/x/last", {"model.safetensors": tensors}, {"config.json": cfg})
    with checkpoint.RunLock("runs/x"): ...          # one trainer per run directory

A model directory holds model.safetensors, config.json and tokenizer.json (and, for a training
run's `last`/`best`, state.safetensors + state.json: optimizer moments, RNG, step). A directory is
replaced as a whole: it is written under a hidden name beside its final place, then swapped in
by renames, so a kill at any moment leaves the old or the new one as `<dir>` or `<dir>.old`
(resolve() reads whichever is there). Directories being written or deleted only ever have hidden
names (`.<dir>.tmp<pid>`, `.<dir>.trash<pid>`); clean_leftovers() removes those of dead processes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import tokenizer as tk
from .model import GPTConfig, build_model
from .paths import fsync_dir, hidden, pid_alive

try:
    import fcntl
except ImportError:        # Windows: the lock falls back to checking the owner's pid
    fcntl = None

LEFTOVER = re.compile(r"^\.(.+)\.(tmp|trash)(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not ours; the message names the file."""


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (in use, holds another run, ...)."""


def resolve(path) -> Path:
    """The directory to read: `path`, or `path.old` left by a kill in the middle of a swap."""
    path = Path(path)
    if (path / "config.json").exists():
        return path
    old = path.with_name(path.name + ".old")
    if (old / "config.json").exists():
        return old
    if path.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint directory (with config.json), got a file")
    raise CheckpointError(f"{path}: no checkpoint here (no config.json)")


def exists(path) -> bool:
    """Whether resolve(path) finds a checkpoint."""
    path = Path(path)
    return (path / "config.json").exists() or \
        (path.with_name(path.name + ".old") / "config.json").exists()


# what a checkpoint folder may hold (write_dir replaces nothing else), and what a file browser
# leaves in any folder it shows (not a user's work)
CHECKPOINT_FILES = frozenset({"config.json", "model.safetensors", "tokenizer.json", "metadata.json",
                              "metrics.json", "state.json", "state.safetensors"})
BROWSER_JUNK = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def check_replaceable(path) -> None:
    """Raise CheckpointError unless write_dir may put a checkpoint at `path`: nothing there, an
    empty folder, or a checkpoint folder holding only a checkpoint's files (not a link). The
    same for `path`.old, which the swap deletes."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".old")):
        if p.is_symlink():      # the swap would replace the link, not the folder it names
            raise CheckpointError(f"{p}: is a symbolic link; give the folder itself")
        if p.exists() and not p.is_dir():
            raise CheckpointError(f"{p}: exists and is not a folder; not replacing it")
        if p.is_dir() and not (p / "config.json").exists() and any(p.iterdir()):
            raise CheckpointError(f"{p}: exists and is not a checkpoint folder; not replacing it")
        foreign = sorted(e.name for e in p.iterdir() if not _own_file(e)) if p.is_dir() else []
        if foreign:             # a user's files beside the checkpoint: the swap would delete them
            raise CheckpointError(f"{p}: also holds files that are not a checkpoint's "
                                  f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''});"
                                  f" not replacing it")


def _own_file(entry: Path) -> bool:
    """A checkpoint's own file (a regular file of its names), or a file browser's litter."""
    if entry.name in BROWSER_JUNK:
        return not entry.is_dir() or entry.is_symlink()
    return entry.name in CHECKPOINT_FILES and entry.is_file() and not entry.is_symlink()


def write_dir(path, tensors: dict[str, dict[str, torch.Tensor]], jsons: dict[str, object],
              files: dict[str, str] | None = None) -> Path:
    """Write a checkpoint directory atomically.

    tensors: {file name: {tensor name: tensor}} saved as safetensors; jsons: {file name: object};
    files: {file name: text}. Refuses to replace anything but a checkpoint (check_replaceable)."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = hidden(path, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, tdict in tensors.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tdict.items()}, str(tmp / name))
    for name, obj in jsons.items():
        (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    swap_in(tmp, path)
    return path


def swap_in(new: Path, path: Path) -> None:
    """Move the complete directory `new` to `path`, keeping `path` or `path.old` complete at
    every moment (each step below is one rename; deletions happen under a hidden name)."""
    old = path.with_name(path.name + ".old")
    trash = hidden(path, "trash")
    shutil.rmtree(trash, ignore_errors=True)
    if path.exists() and old.exists():      # left by a cut-short swap; `path` is the newer one
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    fsync_dir(path.parent)
    if old.exists():
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)


def remove_dir(path) -> None:
    """Delete a directory, renaming it to a hidden name first (a kill mid-way leaves no
    half-deleted directory under its real name)."""
    path = Path(path)
    trash = hidden(path, "trash")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)




def clean_leftovers(directory) -> list[Path]:
    """Remove the hidden half-written or half-deleted directories (`.last.tmp1234`) that killed
    saves left in `directory`: those of dead processes, and this process's own."""
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        m = LEFTOVER.match(p.name)
        if m and p.is_dir() and (int(m.group(3)) == os.getpid() or not pid_alive(int(m.group(3)))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


class RunLock:
    """An exclusive lock on a run directory: `DIR/.lock`, flock()ed while held, holding the
    owner's pid. A lock left by a killed process is free again (the kernel drops a dead
    process's flock); its stale pid is reported by `took_over`."""

    def __init__(self, directory):
        self.path = Path(directory) / ".lock"
        self.fd = None
        self.took_over = None          # the pid in a stale lock file we took over

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        owner = os.read(fd, 64).decode(errors="replace").strip()
        held = False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                held = True
        else:
            held = owner.isdigit() and pid_alive(int(owner))
        if held:
            os.close(fd)
            raise RunDirError(f"{self.path.parent} is in use by another trainer (pid {owner or '?'}); "
                              f"wait for it to finish, or stop it")
        self.took_over = int(owner) if owner.isdigit() and int(owner) != os.getpid() else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)       # the file stays (unlinking a flock()ed file races)
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def read_json(path) -> dict:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return obj


def read_tensors(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file "
                              f"(truncated or foreign?): {e}") from None


def load_state_dict(module: torch.nn.Module, tensors: dict, path) -> None:
    """module.load_state_dict, with shape or name mismatches worded as a CheckpointError."""
    own = module.state_dict()
    missing = [k for k in own if k not in tensors]
    extra = [k for k in tensors if k not in own]
    if missing or extra:
        raise CheckpointError(f"{path}: weights do not match the config "
                              f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in tensors.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, "
                                  f"the config wants {tuple(own[k].shape)}")
    module.load_state_dict(tensors, strict=True)


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without tied duplicates (safetensors refuses shared storage)."""
    out, seen = {}, {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), v.shape)
        if key in seen:
            continue
        seen[key] = k
        out[k] = v
    return out


def tie_restore(model: torch.nn.Module, tensors: dict) -> dict:
    """Fill in the tied duplicates that model_tensors dropped."""
    sd = model.state_dict()
    full = dict(tensors)
    ptrs = {}
    for k, v in sd.items():
        ptrs.setdefault((v.data_ptr(), v.shape), []).append(k)
    for names in ptrs.values():
        have = [n for n in names if n in full]
        for n in names:
            if n not in full and have:
                full[n] = full[have[0]]
    return full


def load_weights(model: torch.nn.Module, d: Path) -> None:
    """Load d/model.safetensors into model (tied duplicates restored), never unpickling."""
    tensors = read_tensors(d / "model.safetensors")
    load_state_dict(model, tie_restore(model, tensors), d / "model.safetensors")


def load_config(d: Path) -> GPTConfig:
    """d/config.json as a GPTConfig; a CheckpointError naming the file and field if it is not."""
    try:
        return GPTConfig.from_dict(read_json(d / "config.json"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{d / 'config.json'}: not a model config ({e})") from None


def load_tokenizer(d: Path, config: GPTConfig):
    """d/tokenizer.json, checked against the model's vocabulary."""
    if not (d / "tokenizer.json").exists():
        raise CheckpointError(f"{d / 'tokenizer.json'}: missing")
    try:
        tok = tk.load(d / "tokenizer.json")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if tok.get_vocab_size() != config.vocab_size:
        raise CheckpointError(f"{d / 'tokenizer.json'}: {tok.get_vocab_size()} tokens, but the "
                              f"model in config.json has vocab_size {config.vocab_size}")
    return tok


def load_model(path, device="cpu"):
    """checkpoint dir -> (model in eval mode, GPTConfig, tokenizer). The config and the
    tokenizer are checked before the model is allocated."""
    d = resolve(path)
    config = load_config(d)
    tok = load_tokenizer(d, config)
    model = build_model(config)
    load_weights(model, d)
    return model.to(device).eval(), config, tok
