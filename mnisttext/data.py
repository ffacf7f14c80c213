"""MNIST IDX files -> the text corpus, and the corpus -> token tensors for training.

    mnisttext export --data-root ../shared/data --out my_corpus     # {train,test}.txt + SHA256SUMS
    from mnisttext import data
    lines = data.read_split("corpus", "test")                       # every line checked

The IDX files are read and checked here (torchvision's MNIST/raw layout; torchvision only
downloads them), so a broken file is named with what is wrong with it.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np

from . import codec, paths
from .paths import fsync_dir, hidden, pid_alive
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
    wrong with it (a wrong magic number, a truncated file) instead of 'not found'. The header and
    the file's size are checked before the data is touched, and the data is memory-mapped (read
    only), so a huge or hostile file costs no memory."""
    path = Path(path)
    head = 4 + 4 * ndim
    try:
        if path.is_dir():
            raise DataError(f"{path}: is a folder, expected an IDX file")
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(head)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(raw) < head:
        raise DataError(f"{path}: truncated ({len(raw)} bytes, not even a header)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + ndim:
        raise DataError(f"{path}: not an IDX file of {ndim}-d uint8 data "
                        f"(magic number {magic:#010x}, expected {0x0800 + ndim:#010x})")
    shape = tuple(int.from_bytes(raw[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    need = head + math.prod(shape)
    if size != need:
        raise DataError(f"{path}: {size} bytes, its header {shape} says {need} "
                        f"({'truncated' if size < need else 'trailing bytes'})")
    if not math.prod(shape):
        return np.zeros(shape, dtype=np.uint8)
    try:
        return np.memmap(path, dtype=np.uint8, mode="r", offset=head, shape=shape)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from None


def open_images(root, train: bool, dataset: str = "mnist", download: bool = False):
    """-> (images (N, 28, 28) uint8, memory-mapped, labels (N,) int64), checked, from
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
                        f"in {raw}/ (torchvision's MNIST/raw layout); `mnisttext export --data-root {root} "
                        f"--dataset {dataset} --download` fetches them where there is internet")
    images = read_idx(raw / img_name, 3)
    labels = read_idx(raw / lab_name, 1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{raw / img_name}: images are {images.shape[1:]}, expected 28x28")
    if not len(images):
        raise DataError(f"{raw / img_name}: holds no images")
    if len(labels) != len(images):
        raise DataError(f"{raw / lab_name}: {len(labels)} labels for {len(images)} images")
    if labels.max() > 9:
        raise DataError(f"{raw / lab_name}: a label {int(labels.max())} is not a digit 0-9")
    return images, np.asarray(labels, dtype=np.int64)


def load_images(root, train: bool, dataset: str = "mnist", download: bool = False):
    """open_images, read into memory: (images (N, 28, 28) uint8, labels (N,) int64)."""
    images, labels = open_images(root, train, dataset, download)
    return np.array(images), labels


def stochastic_binarize(images: np.ndarray, seed) -> np.ndarray:
    """Each pixel on with probability x/255 (the literature's dynamically binarized MNIST),
    drawn from a generator seeded with `seed` (an int or a list of ints) -> 0/255 uint8."""
    return _bernoulli(images, np.random.default_rng(seed))


def _bernoulli(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """stochastic_binarize's draw from `rng`; drawing a split in chunks from one generator gives
    the same pixels as one draw (each image takes an even count of 32-bit draws)."""
    return np.where(rng.random(images.shape, dtype=np.float32) * 255 < images, 255, 0).astype(np.uint8)


CORPUS_FILES = ("train.txt", "test.txt", SUMS_FILE)
CHUNK = 10_000             # images encoded and written at a time


def export(root, out_dir, dataset: str = "mnist", bpp: int = 1, download: bool = False,
           progress=None, binarize: str = "threshold", binarize_seed: int = 0,
           force: bool = False) -> dict:
    """Write out_dir/{train,test}.txt and out_dir/SHA256SUMS as a whole. Returns {name: sha256}.

    Every IDX file is checked before anything is written; the three files are then streamed into
    a hidden folder beside out_dir and swapped in by renames: a failure (or a kill) at any point
    leaves the old corpus and its sums as they were. out_dir must be new, empty, or hold only a
    corpus, which is replaced only with force=True: nothing else is ever deleted.
    binarize "dynamic" draws each pixel as Bernoulli(x/255) with a fixed seed per split (bpp 1).
    `progress(split, done, total)` is called as chunks are encoded. Memory stays at a chunk."""
    if binarize not in ("threshold", "dynamic"):
        raise DataError(f"unknown binarization {binarize!r} (threshold or dynamic)")
    if binarize == "dynamic" and bpp != 1:
        raise DataError("dynamic binarization draws 1-bit pixels; it takes --bpp 1")
    codec.n_symbols(bpp)                       # a CodecError for a bad bpp, before any work
    target = _check_export_target(out_dir, force)
    splits = {split: open_images(root, split == "train", dataset, download) for split in SPLITS}
    seeds = {split: [binarize_seed, SPLITS.index(split)] if binarize == "dynamic" else None
             for split in SPLITS}
    try:
        return _write_corpus(target, splits, seeds, bpp, progress)
    except OSError as e:
        raise DataError(f"--out {out_dir}: cannot write the corpus there "
                        f"({e.strerror or e}); nothing was changed") from None


def _check_export_target(out_dir, force: bool) -> Path:
    """The real folder to export into (symlinks resolved), or a DataError saying why not."""
    out_dir = Path(out_dir)
    if not str(out_dir).strip():
        raise DataError("--out: an empty path")
    if paths.is_shipped(out_dir):
        raise DataError(f"--out {out_dir}: that is a shipped checkpoint folder; choose another")
    target = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise DataError(f"--out {out_dir}: the current folder or one above it; export into a "
                        f"folder of its own (e.g. --out corpus2)")
    if target.exists() and not target.is_dir():
        raise DataError(f"--out {out_dir}: exists and is not a folder")
    above = next((p for p in target.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise DataError(f"--out {out_dir}: {above} is a file, not a folder")
    _recover(target)
    try:
        entries = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
    except OSError as e:
        raise DataError(f"--out {out_dir}: cannot read it ({e.strerror or e})") from None
    others = [n for n in entries if n not in CORPUS_FILES]
    if others:
        raise DataError(f"--out {out_dir}: holds other files ({', '.join(others[:3])}"
                        f"{', ...' if len(others) > 3 else ''}); export into a new or empty "
                        f"folder (an existing corpus is replaced only as a whole, with --force)")
    if entries and not force:
        raise DataError(f"--out {out_dir}: already holds a corpus ({', '.join(entries)}); "
                        f"pass --force to replace it, or choose another --out")
    return target




def _recover(out_dir: Path) -> None:
    """Undo what a killed export left beside out_dir: put back an old corpus it had moved aside
    (out_dir missing, `.NAME.old<pid>` present), and remove its half-written `.NAME.tmp<pid>`."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(tmp|old)(\d+)$")
    for p in sorted(parent.iterdir()):
        m = pattern.match(p.name)
        if not m or pid_alive(int(m.group(2))) or not p.is_dir():
            continue
        if m.group(1) == "old" and not out_dir.exists():
            os.replace(p, out_dir)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _write_corpus(out_dir: Path, splits: dict, seeds: dict, bpp: int, progress) -> dict:
    """Stream every split into a hidden folder beside out_dir, then swap it in."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = hidden(out_dir, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        sums = {f"{split}.txt": _write_split(tmp / f"{split}.txt", split, *splits[split],
                                             seeds[split], bpp, progress) for split in SPLITS}
        with open(tmp / SUMS_FILE, "wb") as f:
            f.write("".join(f"{h}  {n}\n" for n, h in sums.items()).encode())
            f.flush()
            os.fsync(f.fileno())
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sums


def _write_split(path: Path, split: str, images, labels, seed, bpp: int, progress) -> str:
    """Encode one split chunk by chunk into `path` -> its sha256."""
    h = hashlib.sha256()
    rng = np.random.default_rng(seed) if seed is not None else None
    with open(path, "wb") as f:
        for s in range(0, len(images), CHUNK):
            x = np.asarray(images[s:s + CHUNK])
            if rng is not None:
                x = _bernoulli(x, rng)
            b = codec.encode_bytes(x, labels[s:s + CHUNK], bpp)
            f.write(b)
            h.update(b)
            if progress:
                progress(split, min(s + CHUNK, len(images)), len(images))
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename the complete folder tmp to out_dir; an old out_dir is moved aside first (and put
    back if the second rename fails), then deleted."""
    old = hidden(out_dir, "old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if old.exists() and not out_dir.exists():
            os.replace(old, out_dir)       # put the old corpus back
        raise
    fsync_dir(out_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def read_sums(corpus_dir) -> dict:
    p = Path(corpus_dir) / SUMS_FILE
    return {n: h for h, n in (l.split() for l in p.read_text().splitlines() if l.strip())}


MAX_LINE = 4096          # bytes read per line at most: the longest line of the format is 902
BOM = b"\xef\xbb\xbf"


SKIP = 1 << 20           # bytes of a cut line skipped at most before reading on as a new line


def raw_lines(f, max_line: int = MAX_LINE):
    """Yield (line number, bytes without the line end, whether it was cut) from a binary file,
    holding at most max_line bytes at a time: a longer line is cut there and up to a MiB more
    of it skipped (then the rest counts as further lines), so a file without newlines, even
    /dev/zero, costs no memory and still yields. A UTF-8 byte order mark is dropped."""
    n = 0
    while raw := f.readline(max_line + 1):
        n += 1
        if n == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        if len(raw) > max_line and not raw.endswith(b"\n"):
            skipped = 0
            while skipped < SKIP and (rest := f.readline(1 << 16)) and not rest.endswith(b"\n"):
                skipped += len(rest)
            yield n, raw[:max_line], True
        else:
            yield n, raw.rstrip(b"\n").rstrip(b"\r"), False


def read_lines(path, limit: int | None = None) -> list[str]:
    """The first `limit` (default: all) lines of a text file of lines, read as a stream: a line
    that is not ASCII or is far longer than any line of the format is a DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such corpus file (make one with `mnisttext export "
                        f"--data-root DIR`, where DIR/MNIST/raw/ holds the MNIST IDX files)")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a text file of lines")
    out = []
    try:
        with open(path, "rb") as f:
            for i, raw, cut in raw_lines(f):
                if limit is not None and len(out) >= limit:
                    break
                if cut:
                    raise DataError(f"{path}:{i}: a line over {MAX_LINE} bytes; not a file of lines")
                try:
                    out.append(raw.decode("ascii"))
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{i}: not ASCII text (byte {e.start} of the line)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    return out


def dynamic_epoch_lines(images: np.ndarray, labels: np.ndarray, seed: int, epoch: int) -> list[str]:
    """The training lines of one epoch under dynamic binarization: a fresh draw per epoch,
    the same draw for the same (seed, epoch), so a resumed run sees what it would have seen."""
    bits = stochastic_binarize(images, [seed, 1000 + epoch])
    return codec.encode_bytes(bits, labels, 1).decode("ascii").splitlines()


def shifts(max_shift: int) -> list[tuple[int, int]]:
    """The shifts (dy, dx) of --shift-aug; augmentation id k > 0 is shifts(max_shift)[k - 1]."""
    r = range(-max_shift, max_shift + 1)
    return [(dy, dx) for dy in r for dx in r if (dy, dx) != (0, 0)]


def shift_images(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(N, H, W) images moved down by dy and right by dx; what enters is zeros, what leaves is lost."""
    out = np.zeros_like(images)
    H, W = images.shape[1:]
    out[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        images[:, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out


def shifted_epoch_lines(lines: list[str], share: float, max_shift: int, seed: int,
                        epoch: int) -> tuple[list[str], np.ndarray]:
    """(lines, augmentation ids) of one epoch under --shift-aug: each line's image moved by a
    shift drawn uniformly from shifts(max_shift) with probability `share` (id 0: unmoved). The
    same draw for the same (seed, epoch), so a resumed run sees what it would have seen."""
    labels, levels = codec.decode_batch(lines)
    images = levels[:, 1:-1, 1:-1] * np.uint8(255)          # (N, 28, 28): the 1-pixel frame off
    rng = np.random.default_rng([seed, 2000 + epoch])
    moved = rng.random(len(lines)) < share
    ids = np.where(moved, rng.integers(1, len(shifts(max_shift)) + 1, len(lines)), 0)
    for k, (dy, dx) in enumerate(shifts(max_shift), start=1):
        rows = np.flatnonzero(ids == k)
        images[rows] = shift_images(images[rows], dy, dx)
    return codec.encode_bytes(images, labels, 1).decode("ascii").splitlines(), ids


def load_split(corpus_dir, split: str, tok, limit: int | None = None) -> np.ndarray:
    """corpus_dir/<split>.txt -> (N, L) token ids via the tokenizer (see tokenizer.encode_corpus)."""
    return tk.encode_corpus(tok, read_split(corpus_dir, split, limit))


def read_split(corpus_dir, split: str, limit: int | None = None) -> list[str]:
    """corpus_dir/<split>.txt -> its lines, every one checked (one bpp, well-formed)."""
    path = Path(corpus_dir) / f"{split}.txt"
    lines = read_lines(path, limit)
    if not lines:
        raise DataError(f"{path}: empty")
    n = len(lines[0])
    bad = next((i for i, l in enumerate(lines) if len(l) != n), None)
    if bad is not None:
        raise DataError(f"{path}:{bad + 1}: line length {len(lines[bad])}, expected {n}")
    try:
        bpp = codec.bpp_of_length(n)
    except codec.CodecError as e:
        raise DataError(f"{path}:1: {e}") from None
    _, _, _, errors = codec.parse_lines(lines, bpp)
    if errors:
        i, msg = errors[0]
        raise DataError(f"{path}:{i + 1}: {msg}")
    return lines
