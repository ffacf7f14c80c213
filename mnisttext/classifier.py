"""Digit classifiers over the binarized 30x30 images decoded from the corpus.

They see exactly what the text generator makes (codec.parse_lines levels, 0/1), so a generated
line is judged on the same footing as a real one. Two architectures, trained separately:

  "cnn"     the small reranker (conv-pool-conv-pool-conv-pool-fc, 94k params) that picks the
            best of several generated samples;
  "resnet"  a different net (residual, BatchNorm) with a different seed, the *evaluation*
            classifier: reranked samples are never graded by the model that picked them, and
            its penultimate features feed the Frechet distance.

    mnisttext train-classifier --out my_reranker                  # training: classifier_train.py

    from mnisttext import classifier
    model, config = classifier.load_classifier("checkpoints/classifier")
    p = classifier.probs(model, levels)          # levels (N, 30, 30) uint8 -> (N, 10)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from . import checkpoint, codec

ARCHS = ("cnn", "resnet")
MODEL_FILE = "model.safetensors"
MAX_WIDTH = 512         # a resnet of width 512 has ~80M weights: a config above is a mistake
MAX_FEAT_DIM = 4096


@dataclass
class ClassifierConfig:
    arch: str = "cnn"         # "cnn" (reranker) or "resnet" (evaluation); "wide" = "resnet"
    width: int = 24           # channels of the first stage; later stages use 2x and 4x
    feat_dim: int = 48        # penultimate features (the Frechet-distance space)
    dropout: float = 0.1

    def __post_init__(self):
        if self.arch == "wide":
            self.arch = "resnet"
        if self.arch not in ARCHS:
            raise ValueError(f"arch: unknown classifier arch {self.arch!r}; choose one of {ARCHS}")
        for name, top in (("width", MAX_WIDTH), ("feat_dim", MAX_FEAT_DIM)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
                raise ValueError(f"{name}: expected an integer in 1..{top}, got {v!r}")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ValueError(f"dropout: expected a number in [0, 1), got {d!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"not a classifier config: unknown keys {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# the shipped recipes: the reranker and the evaluation classifier
PRESETS = {
    "cnn": ClassifierConfig(arch="cnn", width=24, feat_dim=48, dropout=0.1),
    "resnet": ClassifierConfig(arch="resnet", width=32, feat_dim=128, dropout=0.1),
}


def preset(arch: str = "cnn") -> ClassifierConfig:
    """A fresh copy of the shipped recipe for arch ("cnn", "resnet" or "wide")."""
    return ClassifierConfig(**PRESETS[ClassifierConfig(arch=arch).arch].to_dict())


# ---------------------------------------------------------------------------------------------
# models

def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # no conv bias: BatchNorm's shift makes it redundant
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Classifier(nn.Module):
    """trunk (N,1,30,30) -> (N,C) -> features (N,feat_dim) -> logits (N,10)."""

    def __init__(self, trunk: nn.Module, channels: int, config: ClassifierConfig):
        super().__init__()
        self.trunk = trunk
        self.proj = nn.Linear(channels, config.feat_dim)
        self.drop = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.feat_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)                                       # (N, C)
        return F.relu(self.proj(h))                             # (N, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))             # (N, 10)


def small_cnn(config: ClassifierConfig) -> Classifier:
    """conv w @30 - pool - conv 2w @15 - pool - conv 4w @7 - pool - fc. Pooling early keeps it near
    8M multiply-adds per image, so the full corpus trains in minutes on one core; flattening the
    3x3 map (not averaging it) keeps where the strokes are, which a 3-conv net needs."""
    w = config.width
    trunk = nn.Sequential(
        conv_bn(1, w), nn.MaxPool2d(2),                         # (N, w, 15, 15)
        conv_bn(w, 2 * w), nn.MaxPool2d(2),                     # (N, 2w, 7, 7)
        conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),                 # (N, 4w, 3, 3)
        nn.Flatten())                                           # (N, 36w)
    return Classifier(trunk, 36 * w, config)


class Block(nn.Module):
    """Basic residual block: conv-BN-ReLU-conv-BN, plus the (projected) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout)))

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + self.short(x))


def resnet(config: ClassifierConfig) -> Classifier:
    """stem conv w @30 - pool - block w @15 - block 2w @8 - block 4w @4 - GAP - fc."""
    w = config.width
    trunk = nn.Sequential(
        conv_bn(1, w), nn.MaxPool2d(2),                         # (N, w, 15, 15)
        Block(w, w, 1),                                         # (N, w, 15, 15)
        Block(w, 2 * w, 2),                                     # (N, 2w, 8, 8)
        Block(2 * w, 4 * w, 2),                                 # (N, 4w, 4, 4)
        nn.AdaptiveAvgPool2d(1), nn.Flatten())                  # (N, 4w)
    return Classifier(trunk, 4 * w, config)


def build_classifier(config: ClassifierConfig) -> Classifier:
    return {"cnn": small_cnn, "resnet": resnet}[config.arch](config)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# inputs

def levels_to_input(levels) -> torch.Tensor:
    """(N, 30, 30) uint8 levels 0/1 (numpy or torch) -> (N, 1, 30, 30) float32 in [0, 1]."""
    t = levels if torch.is_tensor(levels) else torch.from_numpy(np.ascontiguousarray(levels))
    if t.ndim == 2:
        t = t[None]
    if t.shape[1:] != (codec.SIDE, codec.SIDE):
        raise ValueError(f"levels must be (N, {codec.SIDE}, {codec.SIDE}), got {tuple(t.shape)}")
    # the nets only ever saw 0/1; gray levels (bpp > 1) need a threshold the caller chooses
    if t.numel() and int(t.max()) > 1:
        raise ValueError("levels must be binary 0/1; threshold gray levels (bpp > 1) first")
    return t.to(torch.float32)[:, None]                         # (N, 1, 30, 30)


# ---------------------------------------------------------------------------------------------
# inference

def _batch(x, start, size, device):
    return x[start:start + size].to(device).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_logits(model: nn.Module, levels, batch_size: int = 1024) -> torch.Tensor:
    """(N, 30, 30) levels -> (N, 10) float32 logits on the CPU."""
    device = next(model.parameters()).device
    x = levels_to_input(levels)                                 # (N, 1, 30, 30)
    out = [model(_batch(x, s, batch_size, device)).float().cpu()
           for s in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 10)


@torch.inference_mode()
def features(model: nn.Module, levels, batch_size: int = 1024) -> np.ndarray:
    """(N, 30, 30) levels -> (N, feat_dim) float64 penultimate features (for Frechet distance)."""
    device = next(model.parameters()).device
    x = levels_to_input(levels)
    out = [model.features(_batch(x, s, batch_size, device)).double().cpu()
           for s in range(0, len(x), batch_size)]
    dim = model.proj.out_features
    return torch.cat(out).numpy() if out else np.zeros((0, dim))


def probs(model: nn.Module, levels, temperature: float = 0.8,
          batch_size: int = 1024) -> torch.Tensor:
    """(N, 30, 30) levels -> (N, 10) softmax(logits / temperature)."""
    return torch.softmax(predict_logits(model, levels, batch_size) / temperature, dim=-1)


def accuracy(model: nn.Module, levels, labels, batch_size: int = 1024) -> float:
    pred = predict_logits(model, levels, batch_size).argmax(-1)
    return float((pred == torch.as_tensor(labels)).float().mean())


# ---------------------------------------------------------------------------------------------
# saving, loading

def save_classifier(out_dir, model: nn.Module, config: ClassifierConfig, metrics: dict) -> Path:
    return checkpoint.write_dir(out_dir, {MODEL_FILE: model.state_dict()},
                                {"config.json": config.to_dict(), "metrics.json": metrics})


def load_classifier(path, device="cpu"):
    """checkpoint dir -> (model in eval mode, ClassifierConfig). Never unpickles."""
    d = checkpoint.resolve(path)
    try:
        config = ClassifierConfig.from_dict(checkpoint.read_json(d / "config.json"))
    except (TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{d / 'config.json'}: {e}") from None
    model = build_classifier(config)
    tensors = checkpoint.read_tensors(d / MODEL_FILE)
    checkpoint.load_state_dict(model, tensors, d / MODEL_FILE)
    model = model.to(device, memory_format=torch.channels_last)
    return model.eval(), config
