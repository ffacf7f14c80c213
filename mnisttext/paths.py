"""Where the shipped files are, wherever the package is installed.

    from mnisttext import paths
    paths.shipped("gpt")              # the character model directory
    paths.shipped("classifier")       # the reranker; "eval_classifier": the grading classifier

In a wheel the checkpoints sit inside the package (mnisttext/checkpoints/); in a source checkout
(or an editable install) they are the repository's top-level checkpoints/ folder.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHIPPED = ("gpt", "classifier", "eval_classifier")


def checkpoints_dir() -> Path:
    for d in (PACKAGE / "checkpoints", PACKAGE.parent / "checkpoints"):
        if (d / "gpt" / "config.json").is_file():
            return d
    return PACKAGE / "checkpoints"


def shipped(name: str = "gpt") -> Path:
    if name not in SHIPPED:
        raise ValueError(f"no shipped checkpoint {name!r}; choose one of {', '.join(SHIPPED)}")
    return checkpoints_dir() / name


def is_shipped(path) -> bool:
    """Whether `path` is (inside) one of the shipped checkpoint folders: never a write target."""
    try:
        p = Path(path).resolve()
    except OSError:
        return False
    root = checkpoints_dir().resolve()
    return p == root or root in p.parents


def examples_file() -> Path:
    """A few hundred test lines shipped with the package (for `complete` and the web page)."""
    return PACKAGE / "examples.txt"


def fsync_dir(d: Path) -> None:
    """Make the renames in folder d reach the disk (not possible on every platform)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def hidden(path: Path, kind: str, pid: int | None = None) -> Path:
    """The hidden sibling `.NAME.KINDPID` that an atomic write of `path` works in."""
    return path.with_name(f".{path.name}.{kind}{os.getpid() if pid is None else pid}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (leftovers of a dead one may be cleaned)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True          # someone else's process
    return True
