"""What the commands share: flag types that check their values, errors, output paths.

    p.add_argument("--candidates", type=int_range(1, 1024), default=64)
    raise UsageError("--keep must be ...")          # one line on stderr, exit status 2
    out = writable_file(args.out, "--out", "lines")  # checked before any work is done

Flag values are checked when parsed (argparse prints `error: argument --x: ...` and exits 2),
so a bad value never reaches the model. Output paths are checked before the work starts, and
never overwrite what the user made: a corpus folder, a shipped checkpoint, or an existing file
that is not of the kind the command writes (a file of lines, a picture) is refused.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from pathlib import Path

from .. import codec, data, paths
from ..codec import CodecError
from ..data import DataError
from ..progress import error as rich_error

EXIT_BAD_INPUT = 2
EXIT_BUG = 1
OUTPUTS = Path("outputs")       # default home of generated files, relative to the current folder
MAX_INT = 2 ** 63 - 1
MAX_SEED = 10 ** 15             # digit d samples from seed*100 + d: still a 64-bit seed
TEMPERATURE = (1e-3, 100.0)     # outside, float32 logits / T overflow (NaN) or flatten to noise
MIN_TOP_P = 1e-6                # below, top_p rounds to 0 in float32 and masks every token
IMAGE_SUFFIXES = (".png", ".gif", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_MAGIC = (b"\x89PNG", b"GIF8", b"\xff\xd8\xff", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


# The modules that hold the rest of the user-error types import torch; `decode` and `export` run
# without it (a third of the memory), and an exception of a module never imported cannot occur.
TORCH_ERRORS = (("mnisttext.checkpoint", "CheckpointError"), ("mnisttext.model", "ConfigError"),
                ("mnisttext.runtime", "DeviceError"), ("mnisttext.sample", "SamplingError"))


class UsageError(Exception):
    """Bad flags or input: printed as one line, exit status 2."""


def user_errors() -> tuple:
    """The exception types that mean 'the input is bad', not 'the program is broken'."""
    loaded = tuple(getattr(sys.modules[m], n) for m, n in TORCH_ERRORS if m in sys.modules)
    return (UsageError, CodecError, DataError, OSError, ValueError, MemoryError) + loaded


def describe(e: BaseException) -> str:
    """One line for a user error: an OSError names its file, a MemoryError says so."""
    if isinstance(e, MemoryError):
        return "out of memory (ask for less: fewer candidates, lines or a smaller --scale)"
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    return str(e) or type(e).__name__


def error(msg: str) -> None:
    rich_error(" ".join(str(msg).split()))          # one line, whatever the message held


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Real defaults shown (none for switches and for defaults the help already words), the
    epilog's examples kept as written."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if "default" in h or d is None or d is False or d is argparse.SUPPRESS or not action.option_strings:
            return h
        return f"{h} (default: {d})"


def command(sub, name: str, help: str, examples: list[str], description: str | None = None):
    """A subparser with the shared formatter and an 'examples:' epilog."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return sub.add_parser(name, help=help, description=description or help, epilog=epilog,
                          formatter_class=Formatter)


# ---------------------------------------------------------------------------------------------
# flag types: each raises ArgumentTypeError, which argparse prints as one line, exit 2

def int_range(lo: int, hi: int | None = None):
    """An integer in lo..hi (hi None: up to 2**63 - 1, what a C long holds)."""
    top = MAX_INT if hi is None else hi

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo or v > top:
            raise argparse.ArgumentTypeError(f"{v} is out of range ({lo}..{hi if hi is not None else ''})")
        return v
    parse.__name__ = "integer"
    return parse


def float_range(lo: float, hi: float | None = None, lo_open: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
            bound = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"{v} is out of range {bound}")
        return v
    parse.__name__ = "number"
    return parse


def temperature(text: str) -> float:
    """0 (greedy) or a number in [0.001, 100]."""
    v = float_range(0.0)(text)
    if v and not TEMPERATURE[0] <= v <= TEMPERATURE[1]:
        raise argparse.ArgumentTypeError(f"{v:g}: use 0 (greedy) or a value in "
                                         f"[{TEMPERATURE[0]:g}, {TEMPERATURE[1]:g}]")
    return v


def positive_temperature(text: str) -> float:
    """A number in [0.001, 100] (the reranker's: 0 would divide by zero)."""
    v = float_range(0.0)(text)
    if not TEMPERATURE[0] <= v <= TEMPERATURE[1]:
        raise argparse.ArgumentTypeError(f"{v:g} is out of range [{TEMPERATURE[0]:g}, {TEMPERATURE[1]:g}]")
    return v


def top_p(text: str) -> float:
    v = float_range(0.0, 1.0, lo_open=True)(text)
    if v < MIN_TOP_P:
        raise argparse.ArgumentTypeError(f"{v:g} is out of range [{MIN_TOP_P:g}, 1]")
    return v


seed = int_range(0, MAX_SEED)
seed.__name__ = "seed"


def path_arg(text: str) -> str:
    """A path: not empty, no NUL byte (the OS would refuse it later, less clearly)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: a path cannot hold a NUL character")
    return text


def device_arg(text: str) -> str:
    from ..runtime import DeviceError, resolve_device     # torch: only commands with --device
    try:
        resolve_device(text)
    except DeviceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parse_digits(spec: str) -> list[int]:
    """'3', '0-9', '1,4,7', '0-3,7' -> [digits], in order, without repeats."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not re.fullmatch(r"\d+(-\d+)?", part, re.ASCII) or \
                any(len(x) > 1 and x.startswith("0") for x in part.split("-")):
            # '09' or '+3' is likely a typo of '0-9' or '3': refuse rather than guess
            raise argparse.ArgumentTypeError(f"{part!r} is not a digit or a range like 0-9")
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                rng = list(range(a, b + 1))
                if not rng:
                    raise ValueError
            else:
                rng = [int(part)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a digit or a range like 0-9") from None
        for d in rng:
            if not 0 <= d <= 9:
                raise argparse.ArgumentTypeError(f"{d} is not a digit 0-9")
            if d not in out:
                out.append(d)
    return out


def stdout_is_pipe() -> bool:
    return not sys.stdout.isatty()


def deliver_lines(lines: list[str]) -> None:
    """Lines to stdout: the result of a run whose output file could not be written."""
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# output paths: checked (and their folders made) before the work, never a user's data

def holds_corpus(folder: Path) -> bool:
    return (Path(folder) / data.SUMS_FILE).is_file()


def writable_dir(path, flag: str) -> Path:
    """Create the folder `path` (for flag `flag`), or raise a UsageError that says why not.

    Refused: a shipped checkpoint folder, a corpus folder, a file, a folder that cannot be
    written (a file is created and removed there to find out: root ignores permission bits,
    not read-only or full file systems)."""
    path = Path(path)
    if paths.is_shipped(path):
        raise UsageError(f"{flag} {path}: that is a shipped checkpoint folder; choose another")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a folder")
    if holds_corpus(path):
        raise UsageError(f"{flag} {path}: that folder holds a corpus ({data.SUMS_FILE}); "
                         f"choose another, the corpus is not an output folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".mnisttext-probe"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return path


def names_a_folder(text) -> bool:
    """Whether a path as typed ends in a separator (Path() drops it, and with it the intent)."""
    return str(text).endswith(("/", os.sep))


def writable_file(path, flag: str, kind: str = "lines") -> Path:
    """The file `path` can be written, its folder is made, and if it exists it holds what this
    command writes (kind "lines": lines of the format; "image": a picture), so replacing it
    loses nothing the user made. Special files (/dev/null, /dev/stdout) are fine."""
    if names_a_folder(path) and not Path(path).is_dir():
        raise UsageError(f"{flag} {path}: ends in '/', a folder name; expected a file name")
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, expected a file name")
    if kind == "image" and path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"{flag} {path}: expected a picture file name ending in "
                         f"{', '.join(IMAGE_SUFFIXES[:3])}, ...")
    if path.exists() and not path.is_file():      # /dev/null, /dev/stdout, a pipe: as they are
        return path
    writable_dir(path.parent if str(path.parent) else Path("."), flag)
    if path.is_file() and not _holds_kind(path, kind):
        what = "lines of the format" if kind == "lines" else "a picture"
        raise UsageError(f"{flag} {path}: exists and does not hold {what}; not overwriting it "
                         f"(choose another name, or delete it first)")
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write it ({e.strerror or e})") from None
    if not existed:
        path.unlink()
    return path


def picture_replaceable(path: Path, flag: str) -> None:
    """Raise a UsageError if writing the picture `path` (a name an output folder's command
    chose) would replace something that is not a picture: a user's file of that name."""
    if path.is_symlink() or path.is_dir() or (path.is_file() and not _holds_kind(path, "image")):
        what = ("a link (writing would go through it)" if path.is_symlink() else
                "a folder" if path.is_dir() else "a file that is not a picture")
        raise UsageError(f"{flag} {path.parent}: {path.name} there is {what}; not overwriting it "
                         f"(choose another folder, or move it)")


def _holds_kind(path: Path, kind: str) -> bool:
    """Whether the existing file `path` is empty or starts like what `kind` outputs are."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            more = bool(f.read(1))
    except OSError:
        return False
    if not head:
        return True
    if kind == "image":
        return head.startswith(IMAGE_MAGIC)
    lines = head.split(b"\n")
    lines = lines[:-1] if more or not lines[-1] else lines      # a cut or empty last piece
    return bool(lines) and all(_is_format_line(l.rstrip(b"\r")) for l in lines)


def _is_format_line(raw: bytes) -> bool:
    try:
        text = raw.decode("ascii")
        codec.check_line(text, codec.bpp_of_length(len(text)))
    except (UnicodeDecodeError, CodecError):
        return False
    return True


def write_atomic(path: Path, payload: bytes) -> None:
    """Write a regular file beside and rename it into place (a full disk leaves the old file,
    not half of a new one); a special file (/dev/stdout) is written as it is."""
    path = Path(path)
    if path.exists() and not path.is_file():
        path.write_bytes(payload)
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------------------------
# models: loaded with every check before the work starts

def check_finite(module, source) -> None:
    """A UsageError naming the first weight that holds NaN or inf (a diverged or corrupt
    checkpoint): said when it is loaded, not as broken samples minutes later."""
    import torch              # only the model commands come here; decode and export run without
    for name, t in module.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UsageError(f"{source}: weight {name} holds NaN or infinite values (a diverged "
                             f"or corrupt checkpoint)")


def load_model(checkpoint=None, classifier=None, device="auto", dtype="auto"):
    """api.Model, with its character model's and reranker's weights checked finite."""
    from ..api import Model   # torch: only the model commands come here
    model = Model(checkpoint, classifier, device, dtype)
    check_finite(model.net, model.checkpoint_dir / "model.safetensors")
    check_finite(model.reranker, Path(classifier or paths.shipped("classifier")) / "model.safetensors")
    return model
