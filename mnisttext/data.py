"""MNIST (via torchvision) -> the text corpus, and the corpus -> token tensors for training.

    python cli.py export --data-root ../shared/data          # writes corpus/{train,test}.txt
    python -c "from mnisttext import data; print(data.read_lines('corpus/test.txt')[0])"
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from . import codec

SPLITS = ("train", "test")
SUMS_FILE = "SHA256SUMS"


class DataError(RuntimeError):
    """Data that is missing or unreadable; the message says which file and what to do."""


def _dataset_class(name: str):
    import torchvision.datasets as tvd
    table = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "kmnist": tvd.KMNIST}
    if name not in table:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(table)}")
    return table[name]


def load_images(root, train: bool, dataset: str = "mnist", download: bool = False):
    """-> (images (N, 28, 28) uint8, labels (N,) int64), in the dataset's own order."""
    cls = _dataset_class(dataset)
    try:
        ds = cls(str(root), train=train, download=download)
    except RuntimeError as e:
        raw = Path(root) / cls.__name__ / "raw"
        files = ", ".join(Path(url).name.removesuffix(".gz") for url, _ in cls.resources)
        raise DataError(f"{dataset} not found under {root} ({e}). Put the IDX files ({files}) in "
                        f"{raw}/, or pass --download where there is internet.") from None
    return ds.data.numpy(), ds.targets.numpy().astype(np.int64)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def stochastic_binarize(images: np.ndarray, seed) -> np.ndarray:
    """Each pixel on with probability x/255 (the literature's dynamically binarized MNIST),
    drawn from a generator seeded with `seed` (an int or a list of ints) -> 0/255 uint8."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(images.shape, dtype=np.float32) * 255 < images, 255, 0).astype(np.uint8)


def export(root, out_dir, dataset: str = "mnist", bpp: int = 1, download: bool = False,
           progress=None, binarize: str = "threshold", binarize_seed: int = 0) -> dict:
    """Write out_dir/{train,test}.txt and out_dir/SHA256SUMS. Returns {file name: sha256}.

    binarize "dynamic" draws each pixel as Bernoulli(x/255) with a fixed seed per split (bpp 1)
    instead of thresholding. `progress(split, done, total)` is called as chunks are encoded."""
    if binarize not in ("threshold", "dynamic"):
        raise DataError(f"unknown binarization {binarize!r} (threshold or dynamic)")
    if binarize == "dynamic" and bpp != 1:
        raise DataError("dynamic binarization draws 1-bit pixels; it takes --bpp 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sums = {}
    for split in SPLITS:
        images, labels = load_images(root, split == "train", dataset, download)
        if binarize == "dynamic":
            images = stochastic_binarize(images, [binarize_seed, SPLITS.index(split)])
        parts, chunk = [], 10_000
        for s in range(0, len(images), chunk):
            parts.append(codec.encode_bytes(images[s:s + chunk], labels[s:s + chunk], bpp))
            if progress:
                progress(split, min(s + chunk, len(images)), len(images))
        name = f"{split}.txt"
        atomic_write_bytes(out_dir / name, b"".join(parts))
        sums[name] = sha256(out_dir / name)
    atomic_write_bytes(out_dir / SUMS_FILE,
                       "".join(f"{h}  {n}\n" for n, h in sums.items()).encode())
    return sums


def read_sums(corpus_dir) -> dict:
    p = Path(corpus_dir) / SUMS_FILE
    return {n: h for h, n in (l.split() for l in p.read_text().splitlines() if l.strip())}


def read_lines(path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such corpus file (run `python cli.py export` first)")
    return path.read_text(encoding="ascii", errors="strict").splitlines()


def dynamic_epoch_lines(images: np.ndarray, labels: np.ndarray, seed: int, epoch: int) -> list[str]:
    """The training lines of one epoch under dynamic binarization: a fresh draw per epoch,
    the same draw for the same (seed, epoch), so a resumed run sees what it would have seen."""
    bits = stochastic_binarize(images, [seed, 1000 + epoch])
    return codec.encode_bytes(bits, labels, 1).decode("ascii").splitlines()


def load_split(corpus_dir, split: str, tok, limit: int | None = None) -> np.ndarray:
    """corpus_dir/<split>.txt -> (N, L) token ids via the tokenizer (see tokenizer.encode_corpus)."""
    from . import tokenizer as tk
    return tk.encode_corpus(tok, read_split(corpus_dir, split, limit))


def read_split(corpus_dir, split: str, limit: int | None = None) -> list[str]:
    """corpus_dir/<split>.txt -> its lines, every one checked (one bpp, well-formed)."""
    path = Path(corpus_dir) / f"{split}.txt"
    lines = read_lines(path)[:limit]
    if not lines:
        raise DataError(f"{path}: empty")
    n = len(lines[0])
    bad = next((i for i, l in enumerate(lines) if len(l) != n), None)
    if bad is not None:
        raise DataError(f"{path}:{bad + 1}: line length {len(lines[bad])}, expected {n}")
    bpp = codec.bpp_of_length(n)
    _, _, _, errors = codec.parse_lines(lines, bpp)
    if errors:
        i, msg = errors[0]
        raise DataError(f"{path}:{i + 1}: {msg}")
    return lines
