"""Checkpoints: a directory of safetensors + JSON, written atomically, read without pickle.

    from mnisttext import checkpoint
    model, config, tok = checkpoint.load_model("checkpoints/gpt")

A model directory holds model.safetensors, config.json and tokenizer.json (and, for a training
run's `last`/`best`, state.safetensors + state.json: optimizer moments, RNG, step). A directory is
replaced as a whole: it is written beside its final place, then swapped in by two renames, so a
kill at any moment leaves either the old or the new one (`<dir>.old` is picked up if the kill
fell between the renames).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not ours; the message names the file."""


def resolve(path) -> Path:
    """The directory to read: `path`, or `path.old` left by a kill between the two renames."""
    path = Path(path)
    if (path / "config.json").exists():
        return path
    old = path.with_name(path.name + ".old")
    if (old / "config.json").exists():
        return old
    if path.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint directory (with config.json), got a file")
    raise CheckpointError(f"{path}: no checkpoint here (no config.json)")


def write_dir(path, tensors: dict[str, dict[str, torch.Tensor]], jsons: dict[str, object],
              files: dict[str, str] | None = None) -> Path:
    """Write a checkpoint directory atomically.

    tensors: {file name: {tensor name: tensor}} saved as safetensors; jsons: {file name: object};
    files: {file name: text}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
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
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def read_json(path) -> dict:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
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


def load_model(path, device="cpu"):
    """checkpoint dir -> (model in eval mode, GPTConfig, tokenizer)."""
    from . import tokenizer as tk
    from .model import GPTConfig, build_model
    d = resolve(path)
    try:
        config = GPTConfig.from_dict(read_json(d / "config.json"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{d / 'config.json'}: not a model config ({e})") from None
    model = build_model(config)
    load_weights(model, d)
    try:
        tok = tk.load(d / "tokenizer.json")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return model.to(device).eval(), config, tok
