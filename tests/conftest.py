"""Shared fixtures: the repository root, the committed corpus, and ../shared/data when present."""
import contextlib
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CORPUS = ROOT / "corpus"
PREVIOUS_FLAGSHIP = ROOT / "benchmarks" / "results" / "flagship_v1"    # shipped before the new recipe

REFERENCE_LINES = [
    "5:::::::::::::::::::::::::::::::::q:::yy::AyZ::AyZ::<rZ:::j::::r::::R::::H::::A::::=j::::r::::r:::=r:::Ir:::YZ::;x:::Ir:::yj::;y:::::::::::::::::::::::)",
    "0:::::::::::::::::::::::j:::=r:::Ar:::Iv:::Yx:::yp::;w`::;rA::=jA::A:A::H:A::H:A::V:A::V:@::V:H::R:R::R;j::V=j::Yy:::Yv:::Ir:::=Z::::::::::::::::::::::)",
    "4:::::::::::::::::::::::::::::::::=::::=:;::<:=::@:=::@:=::H:=::H:=::F:=::v:=:Yv:=yvR:;x:R::::R::::r::::r::::r::::r::::r::::r::::R::::R::::::::::::::::)",
]


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's threads set to n for the block (the suite may run with one), then restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="session", autouse=True)
def private_machine_cache(tmp_path_factory):
    """The suite's decode plans, dtype timings and compiled kernel go to a temporary folder
    (the tests' subprocesses inherit it), never to the user's ~/.cache/mnisttext."""
    old = os.environ.get("MNISTTEXT_CACHE")
    os.environ["MNISTTEXT_CACHE"] = str(tmp_path_factory.mktemp("mnisttext-cache"))
    yield
    if old is None:
        os.environ.pop("MNISTTEXT_CACHE", None)
    else:
        os.environ["MNISTTEXT_CACHE"] = old


def needs_mnist():
    """Skip (with the reason) where the MNIST IDX files are not beside the repository."""
    raw = SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte"
    return pytest.mark.skipif(not raw.exists(),
                              reason=f"MNIST IDX files not found at {raw.parent} (CI has them)")


@pytest.fixture(scope="session")
def test_lines():
    return (CORPUS / "test.txt").read_text().splitlines()


def run_cli(argv, capsys=None):
    """mnisttext.cli.main(argv) -> its exit status, with argparse's SystemExit turned into one."""
    from mnisttext import cli
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


class Killed(BaseException):
    """A kill at one rename or delete of a save (BaseException: nothing may catch it)."""


def kill_at(monkeypatch, k):
    """Make the k-th os.replace / shutil.rmtree inside checkpoint.py raise Killed; the count."""
    import os                                         # (fault injection only)
    from mnisttext import checkpoint                  # (the module whose calls are wrapped)
    calls = {"n": 0}

    def wrap(fn):
        def f(*a, **kw):
            calls["n"] += 1
            if calls["n"] == k:
                raise Killed(f"call {k}")
            return fn(*a, **kw)
        return f
    monkeypatch.setattr(checkpoint.os, "replace", wrap(os.replace))
    monkeypatch.setattr(checkpoint.shutil, "rmtree", wrap(checkpoint.shutil.rmtree))
    return calls
