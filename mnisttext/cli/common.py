"""What the commands share: flag types that check their values, errors, output folders.

    p.add_argument("--candidates", type=int_range(1, 1024), default=64)
    raise UsageError("--keep must be ...")          # one line on stderr, exit status 2

Flag values are checked when parsed (argparse prints `error: argument --x: ...` and exits 2),
so a bad value never reaches the model.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
OUTPUTS = Path("outputs")       # default home of generated files, relative to the current folder


class UsageError(Exception):
    """Bad flags or input: printed as one line, exit status 2."""


def user_errors() -> tuple:
    """The exception types that mean 'the input is bad', not 'the program is broken'."""
    from ..checkpoint import CheckpointError
    from ..codec import CodecError
    from ..data import DataError
    from ..model import ConfigError
    from ..runtime import DeviceError
    from ..sample import SamplingError
    return (UsageError, CodecError, DataError, CheckpointError, ConfigError, DeviceError,
            SamplingError, OSError, ValueError, MemoryError)


def error(msg: str) -> None:
    from ..progress import error as rich_error
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


def int_range(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo or (hi is not None and v > hi):
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


def device_arg(text: str) -> str:
    from ..runtime import DeviceError, resolve_device
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


def writable_dir(path, flag: str) -> Path:
    """Create the folder `path` (for flag `flag`), or raise a UsageError that says why not."""
    from ..paths import is_shipped
    path = Path(path)
    if is_shipped(path):
        raise UsageError(f"{flag} {path}: that is a shipped checkpoint folder; choose another")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot create it ({e.strerror or e})") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")
    return path


def writable_file(path, flag: str) -> Path:
    """The folder of file `path` is created and writable, `path` is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, expected a file name")
    writable_dir(path.parent if str(path.parent) else Path("."), flag)
    return path
