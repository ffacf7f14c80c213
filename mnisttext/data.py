"""MNIST IDX files -> the text corpus, and the corpus -> token tensors for training.

    mnisttext export --data-root ../shared/data --out my_corpus     # {train,test}.txt + SHA256SUMS
    from mnisttext import data
    lines = data.read_split("corpus", "test")                       # every line checked

The IDX files are read and checked here (torchvision's MNIST/raw layout; torchvision only
downloads them), so a broken file is named with what is wrong with it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np

from . import codec
from . import tokenizer as tk

SPLITS = ("train", "test")
SUMS_FILE = "SHA256SUMS"


class DataError(RuntimeError):
    """Data that is missing or unreadable; the message says which file and what to do."""


DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def raw_dir(root, dataset: str = "mnist") -> Path:
    if dataset not in DATASETS:
        raise DataError(f"--dataset {dataset!r}: unknown; choose one of {', '.join(DATASETS)}")
    return Path(root) / DATASETS[dataset] / "raw"


def read_idx(path, ndim: int) -> np.ndarray:
    """An IDX file (uint8 data) -> its array, checked: magic number, shape, length.

    torchvision reads the same files; reading them here first names the file and says what is
    wrong with it (a wrong magic number, a truncated file) instead of 'not found'."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: truncated ({len(raw)} bytes, not even a header)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + ndim:
        raise DataError(f"{path}: not an IDX file of {ndim}-d uint8 data "
                        f"(magic number {magic:#010x}, expected {0x0800 + ndim:#010x})")
    shape = tuple(int.from_bytes(raw[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    need = head + int(np.prod(shape))
    if len(raw) != need:
        raise DataError(f"{path}: {len(raw)} bytes, its header {shape} says {need} "
                        f"({'truncated' if len(raw) < need else 'trailing bytes'})")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


def load_images(root, train: bool, dataset: str = "mnist", download: bool = False):
    """-> (images (N, 28, 28) uint8, labels (N,) int64), in the dataset's own order, from
    ROOT/<Dataset>/raw/ (torchvision's layout; --download fetches them with torchvision)."""
    raw = raw_dir(root, dataset)
    img_name, lab_name = IDX_FILES[train]
    if download and not (raw / img_name).exists():
        import torchvision.datasets as tvd     # only for the download; reading is ours
        try:
            getattr(tvd, DATASETS[dataset])(str(root), train=train, download=True)
        except (RuntimeError, OSError) as e:
            raise DataError(f"--download {dataset}: failed ({e})") from None
    if not (raw / img_name).exists():
        raise DataError(f"{raw / img_name}: missing. Put the IDX files ({', '.join(IDX_FILES[True] + IDX_FILES[False])}) "
                        f"in {raw}/ (torchvision's MNIST/raw layout), or pass --download where there is internet")
    images = read_idx(raw / img_name, 3)
    labels = read_idx(raw / lab_name, 1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{raw / img_name}: images are {images.shape[1:]}, expected 28x28")
    if len(labels) != len(images):
        raise DataError(f"{raw / lab_name}: {len(labels)} labels for {len(images)} images")
    if labels.size and labels.max() > 9:
        raise DataError(f"{raw / lab_name}: a label {int(labels.max())} is not a digit 0-9")
    return images.copy(), labels.astype(np.int64)


def stochastic_binarize(images: np.ndarray, seed) -> np.ndarray:
    """Each pixel on with probability x/255 (the literature's dynamically binarized MNIST),
    drawn from a generator seeded with `seed` (an int or a list of ints) -> 0/255 uint8."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(images.shape, dtype=np.float32) * 255 < images, 255, 0).astype(np.uint8)


CORPUS_FILES = ("train.txt", "test.txt", SUMS_FILE)


def export(root, out_dir, dataset: str = "mnist", bpp: int = 1, download: bool = False,
           progress=None, binarize: str = "threshold", binarize_seed: int = 0,
           force: bool = False) -> dict:
    """Write out_dir/{train,test}.txt and out_dir/SHA256SUMS as a whole. Returns {name: sha256}.

    Both splits are encoded before anything is written, then the three files are written to a
    folder beside out_dir and swapped in by renames: a failure at any point leaves the old corpus
    and its sums as they were. An existing corpus is replaced only with force=True.
    binarize "dynamic" draws each pixel as Bernoulli(x/255) with a fixed seed per split (bpp 1).
    `progress(split, done, total)` is called as chunks are encoded."""
    if binarize not in ("threshold", "dynamic"):
        raise DataError(f"unknown binarization {binarize!r} (threshold or dynamic)")
    if binarize == "dynamic" and bpp != 1:
        raise DataError("dynamic binarization draws 1-bit pixels; it takes --bpp 1")
    out_dir = Path(out_dir)
    _check_export_target(out_dir, force)
    blobs = {f"{split}.txt": _encode_split(root, split, dataset, bpp, download, progress,
                                           binarize, binarize_seed) for split in SPLITS}
    sums = {name: hashlib.sha256(b).hexdigest() for name, b in blobs.items()}
    blobs[SUMS_FILE] = "".join(f"{h}  {n}\n" for n, h in sums.items()).encode()
    _swap_in(out_dir, blobs)
    return sums


def _check_export_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir}: exists and is not a folder")
    present = [n for n in CORPUS_FILES if (out_dir / n).exists()]
    if present and not force:
        raise DataError(f"--out {out_dir}: already holds a corpus ({', '.join(present)}); "
                        f"pass --force to replace it, or choose another --out")
    others = [p.name for p in out_dir.iterdir() if p.name not in CORPUS_FILES] if out_dir.is_dir() else []
    if present and others:
        raise DataError(f"--out {out_dir}: holds other files too ({', '.join(sorted(others)[:3])}); "
                        f"export into a folder of its own")


def _encode_split(root, split, dataset, bpp, download, progress, binarize, binarize_seed) -> bytes:
    images, labels = load_images(root, split == "train", dataset, download)
    if binarize == "dynamic":
        images = stochastic_binarize(images, [binarize_seed, SPLITS.index(split)])
    parts, chunk = [], 10_000
    for s in range(0, len(images), chunk):
        parts.append(codec.encode_bytes(images[s:s + chunk], labels[s:s + chunk], bpp))
        if progress:
            progress(split, min(s + chunk, len(images)), len(images))
    return b"".join(parts)


def _swap_in(out_dir: Path, blobs: dict[str, bytes]) -> None:
    """Write blobs into a fresh folder beside out_dir, then rename it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, b in blobs.items():
            with open(tmp / name, "wb") as f:
                f.write(b)
                f.flush()
                os.fsync(f.fileno())
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        if old.exists() and not out_dir.exists():
            os.replace(old, out_dir)       # put the old corpus back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_sums(corpus_dir) -> dict:
    p = Path(corpus_dir) / SUMS_FILE
    return {n: h for h, n in (l.split() for l in p.read_text().splitlines() if l.strip())}


def read_lines(path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such corpus file (make one with `mnisttext export "
                        f"--data-root DIR`, where DIR/MNIST/raw/ holds the MNIST IDX files)")
    try:
        return path.read_text(encoding="ascii", errors="strict").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not an ASCII text corpus (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None


def dynamic_epoch_lines(images: np.ndarray, labels: np.ndarray, seed: int, epoch: int) -> list[str]:
    """The training lines of one epoch under dynamic binarization: a fresh draw per epoch,
    the same draw for the same (seed, epoch), so a resumed run sees what it would have seen."""
    bits = stochastic_binarize(images, [seed, 1000 + epoch])
    return codec.encode_bytes(bits, labels, 1).decode("ascii").splitlines()


def load_split(corpus_dir, split: str, tok, limit: int | None = None) -> np.ndarray:
    """corpus_dir/<split>.txt -> (N, L) token ids via the tokenizer (see tokenizer.encode_corpus)."""
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
