"""The CLI against careless and hostile input: every case ends in exit 0, or in one line that
names the flag, file or field and exit 2; never a traceback; nothing the user made is lost.

    pytest tests/test_reliability.py tests/test_fuzz.py       # docs/reliability.md has the counts

CASES is the catalog of hand-written cases (run in-process, each checked for its message and
for the protected files: a corpus, a user's file and folder, the shipped checkpoints); a sample
of it also runs as `python -m mnisttext` in subprocesses. make_world() builds the files the
cases and the fuzz test (test_fuzz.py) use: a tiny random-weight GPT and broken variants of it,
IDX trees, line files, a corpus. The shipped checkpoint folder is a copy (paths is patched), so
a refusal that regresses cannot harm the real one.
"""
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CORPUS, ROOT, torch_threads
from mnisttext import checkpoint, cli, data, paths
from mnisttext import tokenizer as tk
from mnisttext.model import GPTConfig, build_model

GOOD = (CORPUS / "test.txt").read_text().splitlines()[:60]
LINE = GOOD[0]


# ---------------------------------------------------------------------------------------------
# the world: the files the cases use

def tiny_checkpoint(path: Path, nan: bool = False) -> Path:
    """A random-weight GPT (1 layer, 1 head, 16 wide): samples in a fraction of a second."""
    cfg = GPTConfig(n_layer=1, n_head=1, n_embd=16, dropout=0.0)
    torch.manual_seed(0)
    net = build_model(cfg)
    if nan:
        with torch.no_grad():
            next(net.parameters()).fill_(float("nan"))
    checkpoint.write_dir(path, {"model.safetensors": checkpoint.model_tensors(net)},
                         {"config.json": cfg.to_dict()}, {"tokenizer.json": tk.build().to_str()})
    return path


def _edit_config(d: Path, **kw) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(kw)
    (d / "config.json").write_text(json.dumps(cfg))


def _foreign_tokenizer(d: Path) -> None:
    """76 tokens, as the config wants, but none of them this format's characters."""
    from tokenizers import Tokenizer, models
    vocab = {f"w{i}": i for i in range(75)} | {"<pad>": 75}
    Tokenizer(models.WordLevel(vocab, unk_token="<pad>")).save(str(d / "tokenizer.json"))


def _permuted_tokenizer(d: Path) -> None:
    t = json.loads((d / "tokenizer.json").read_text())
    keys, ids = list(t["model"]["vocab"]), list(t["model"]["vocab"].values())
    t["model"]["vocab"] = dict(zip(keys, ids[1:] + ids[:1]))
    (d / "tokenizer.json").write_text(json.dumps(t))


BROKEN = {     # checkpoint variants: name -> how the tiny one is broken
    "cfg_list": lambda d: (d / "config.json").write_text("[1, 2]"),
    "cfg_str": lambda d: _edit_config(d, n_layer="2"),
    "cfg_float": lambda d: _edit_config(d, n_embd=16.0),
    "cfg_huge": lambda d: _edit_config(d, n_embd=10 ** 9),
    "cfg_unknown": lambda d: _edit_config(d, flux=1),
    "cfg_block": lambda d: _edit_config(d, block_size=100),
    "cfg_vocab": lambda d: _edit_config(d, vocab_size=80),
    "cfg_json": lambda d: (d / "config.json").write_text("{nope"),
    "cfg_binary": lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00"),
    "cfg_deep": lambda d: (d / "config.json").write_text("[" * 100_000 + "]" * 100_000),
    "st_zero": lambda d: (d / "model.safetensors").write_bytes(b""),
    "st_pickle": lambda d: (d / "model.safetensors").write_bytes(b"\x80\x04\x95" + b"x" * 100),
    "st_cut": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:300]),
    "tok_missing": lambda d: (d / "tokenizer.json").unlink(),
    "tok_list": lambda d: (d / "tokenizer.json").write_text("[]"),
    "tok_permuted": _permuted_tokenizer,
    "tok_foreign": _foreign_tokenizer,
}


def _idx(path: Path, arr, magic=None) -> None:
    arr = np.asarray(arr, np.uint8)
    head = (magic if magic is not None else 0x800 + arr.ndim).to_bytes(4, "big")
    path.write_bytes(head + b"".join(s.to_bytes(4, "big") for s in arr.shape) + arr.tobytes())


def idx_tree(root: Path, n_train=5, n_test=3) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def make_world(root: Path) -> Path:
    """Every file the hostile cases name, under root (see the module docstring)."""
    W = Path(root)
    tiny_checkpoint(W / "ck")
    tiny_checkpoint(W / "nan", nan=True)
    for name, breaks in BROKEN.items():
        shutil.copytree(W / "ck", W / name)
        breaks(W / name)
    (W / "corpus").mkdir()
    (W / "corpus" / "test.txt").write_text("\n".join(GOOD[:20]) + "\n")
    (W / "corpus" / "train.txt").write_text("\n".join(GOOD[20:]) + "\n")
    (W / "corpus" / data.SUMS_FILE).write_text("(sums)\n")
    (W / "lines.txt").write_text("\n".join(GOOD[:10]) + "\n")
    (W / "replaceable.txt").write_text("\n".join(GOOD[10:12]) + "\n")      # lines: may be rewritten
    (W / "mixed.txt").write_text("\n".join([GOOD[0], "garbage", GOOD[1], "", GOOD[2][:-1] + "z"]) + "\n")
    (W / "bom.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(GOOD[:3]).encode() + b"\r\n")
    (W / "empty.txt").write_bytes(b"")
    (W / "garbage.bin").write_bytes(random.Random(0).randbytes(5000))
    (W / "unicode.txt").write_text("5" + "é" * 150 + ")\nü\n")
    (W / "long.txt").write_bytes(b"5" * 100_000 + b"\n" + LINE.encode() + b"\n")
    (W / "notes.txt").write_text("a user's notes: not lines, never overwritten\n")
    (W / "photos").mkdir()
    (W / "photos" / "cat.txt").write_text("meow")
    (W / "afile").write_text("x")
    (W / "dir").mkdir()
    idx_tree(W / "idx")
    for name, breaks in {"idx_magic": lambda r: _idx(r / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), 0x1234),
                         "idx_cut": lambda r: (r / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20),
                         "idx_labels": lambda r: _idx(r / "t10k-labels-idx1-ubyte", [1, 2, 200]),
                         "idx_empty": lambda r: _idx(r / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28)))}.items():
        shutil.copytree(W / "idx", W / name)
        breaks(W / name / "MNIST" / "raw")
    data.export(W / "idx", W / "old_corpus")
    shutil.copytree(paths.checkpoints_dir(), W / "shipped" / "checkpoints")
    (W / "cwd").mkdir()
    _user_files_beside_outputs(W)
    return W


def _user_files_beside_outputs(W: Path) -> None:
    """Names an output would take, held by a user's files; a checkpoint with notes; a link."""
    (W / "pics").mkdir()
    (W / "pics" / "3.png").write_text("a user's text named like generate's picture")
    (W / "pics" / f"00000_{LINE[0]}.png").write_text("a user's text named like decode's picture")
    shutil.copytree(W / "ck", W / "ck_notes")
    (W / "ck_notes" / "NOTES.md").write_text("a user's notes beside a checkpoint")
    shutil.copytree(W / "ck", W / "ck_target")
    (W / "ck_link").symlink_to(W / "ck_target")
    (W / "piclink").mkdir()
    (W / "piclink" / "3.png").symlink_to(W / "notes.txt")
    (W / "mine.old").mkdir()
    (W / "mine.old" / "thesis.tex").write_text("a user's folder named like a swap's leftover")
    shutil.copytree(W / "ck", W / "run_init" / "best")
    (W / "run_init" / "args.json").write_text('{"init_from": 5}')
    for name, width in (("clf_huge", 10 ** 6), ("clf_str", "4")):
        shutil.copytree(W / "shipped" / "checkpoints" / "classifier", W / name)
        _edit_config(W / name, width=width)


PROTECTED = ("corpus", "notes.txt", "photos", "shipped", "lines.txt", "ck", "afile", "pics",
             "ck_notes", "ck_target", "mine.old")


def state(W: Path) -> dict:
    """Hashes of every file under the protected paths (a missing one hashes as None); a later
    state must hold every one of them unchanged (see kept), new files beside them are fine."""
    out = {}
    for name in PROTECTED:
        p = W / name
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None
    return out


def kept(before: dict, after: dict) -> bool:
    return all(after.get(k) == v for k, v in before.items())


def corpus_is_whole(d: Path) -> bool:
    """The folder holds a corpus whose SHA256SUMS match its files."""
    sums = data.read_sums(d)
    return set(sums) == {"train.txt", "test.txt"} and all(
        hashlib.sha256((d / n).read_bytes()).hexdigest() == h for n, h in sums.items())


@contextlib.contextmanager
def in_world(W: Path):
    """cwd in W/cwd, the shipped checkpoints W/shipped/checkpoints, one torch thread."""
    old_cwd, old_dir = os.getcwd(), paths.checkpoints_dir
    os.chdir(W / "cwd")
    paths.checkpoints_dir = lambda: W / "shipped" / "checkpoints"
    try:
        with torch_threads(1):
            yield
    finally:
        os.chdir(old_cwd)
        paths.checkpoints_dir = old_dir


def run(argv) -> tuple:
    """cli.main in-process -> (exit status, stdout, stderr); an escaping exception is reported as
    status 'traceback' with the traceback as stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            rc, err = "traceback", io.StringIO(traceback.format_exc())
    return rc, out.getvalue(), err.getvalue()


def check_outcome(rc, err: str) -> None:
    """The contract: exit 0, or exit 2 with an error line last; never a traceback."""
    assert rc != "traceback" and "Traceback" not in err, err
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        last = [l for l in err.splitlines() if l.strip()][-1]
        assert "error:" in last, err


# ---------------------------------------------------------------------------------------------
# the catalog: (argv with {W} for the world, what the one error line must say; "" = exit 0)

CK = ["--checkpoint", "{W}/ck", "--device", "cpu", "--dtype", "fp32"]
GEN = ["generate", "--digits", "3", "--candidates", "2", "--keep", "1", *CK, "--img-dir", "{W}/gen"]
COMP = ["complete", "--indices", "0", "--samples", "1", *CK, "--out", "{W}/comp/c.png"]
EVAL = ["eval", "--corpus", "{W}/corpus", "--test-images", "2", "--device", "cpu"]
CASES = [
    # the command line itself
    ([], "required: COMMAND"), (["nosuch"], "invalid choice"), (["decode", "--nosuch"], "unrecognized"),
    # decode: inputs
    (["decode", "nosuch.txt"], "no such file"), (["decode", "{W}/dir"], "is a folder"),
    (["decode", "{W}/empty.txt"], "no input lines"), (["decode", "{W}/garbage.bin"], "not a file of lines"),
    (["decode", "{W}/unicode.txt"], "malformed"), (["decode", "{W}/mixed.txt", "--out", "{W}/d1"], "3 of 5 lines"),
    (["decode", "{W}/long.txt", "--out", "{W}/d2"], "1 of 2 lines"), (["decode", "{W}/bom.txt", "--out", "{W}/d3"], ""),
    (["decode", "/dev/zero", "--limit", "3", "--check"], "3 of 3 lines"), (["decode", ""], "empty argument"),
    (["decode", "\x00"], "no such file"), (["decode", LINE[:-1]], "1 of 1 lines"), (["decode", "5" * 2000], "1 of 1"),
    (["decode", "{W}/lines.txt", "--bpp", "2", "--check"], "--bpp 1?"), (["decode", "{W}/lines.txt", "--check"], ""),
    (["decode", "/proc/self/environ", "--check"], "malformed"),
    # decode: flags
    (["decode", "{W}/lines.txt", "--limit", "-1"], "--limit"), (["decode", "{W}/lines.txt", "--limit", "9" * 30], "--limit"),
    (["decode", "{W}/lines.txt", "--cols", "0"], "--cols"), (["decode", "{W}/lines.txt", "--scale", "0"], "--scale"),
    (["decode", "{W}/lines.txt", "--scale", "1e3"], "--scale"), (["decode", "{W}/lines.txt", "--bpp", "7"], "--bpp"),
    (["decode", "{W}/lines.txt", "--out", ""], "--out"), (["decode", "{W}/lines.txt", "--limit", "٣"], ""),
    # decode: outputs
    (["decode", "{W}/lines.txt", "--out", "{W}/afile"], "not a folder"),
    (["decode", "{W}/lines.txt", "--out", "{W}/afile/x"], "--out"), (["decode", "{W}/lines.txt", "--out", "/sys/x"], "--out /sys/x"),
    (["decode", "{W}/lines.txt", "--out", "/proc/x"], "--out /proc/x"), (["decode", "{W}/lines.txt", "--out", "{W}/corpus"], "holds a corpus"),
    (["decode", "{W}/lines.txt", "--out", "{W}/shipped/checkpoints/gpt"], "shipped"),
    (["decode", "{W}/lines.txt", "--grid", "--out", "{W}/notes.txt"], "name a .png"),
    (["decode", "{W}/lines.txt", "--grid", "--out", "{W}/g.bmp"], "name a .png"),
    (["decode", "{W}/lines.txt", "--grid", "--out", "/sys/x.png"], "--out /sys"),
    (["decode", "{W}/lines.txt", "--grid", "--out", "{W}/afile/x.png"], "not a folder"),
    (["decode", "{W}/lines.txt", "--grid", "--out", "{W}/dir"], ""), (["decode", "{W}/lines.txt", "--grid", "--out", "{W}/g.PNG"], ""),
    (["decode", "{W}/lines.txt", "--grid", "--scale", "32", "--out", "{W}/big.png"], ""),
    # export
    (["export", "--data-root", "{W}/nowhere", "--out", "{W}/e1"], "MNIST/raw"),
    (["export", "--data-root", "{W}/idx", "--out", "{W}/e2"], ""),
    (["export", "--data-root", "{W}/idx", "--out", "{W}/old_corpus"], "--force"),
    (["export", "--data-root", "{W}/idx", "--out", "{W}/photos", "--force"], "holds other files"),
    (["export", "--data-root", "{W}/idx", "--out", "{W}/afile"], "not a folder"),
    (["export", "--data-root", "{W}/idx", "--out", "{W}/afile/x"], "is a file"),
    (["export", "--data-root", "{W}/idx", "--out", "/sys/x"], "--out /sys/x"),
    (["export", "--data-root", "{W}/idx", "--out", "/proc/x"], "--out /proc/x"),
    (["export", "--data-root", "{W}/idx", "--out", "."], "current folder"), (["export", "--data-root", "{W}/idx", "--out", "/"], "current folder"),
    (["export", "--data-root", "{W}/idx", "--out", ""], "--out"),
    (["export", "--data-root", "{W}/idx", "--out", "{W}/shipped/checkpoints"], "shipped"),
    (["export", "--data-root", "{W}/idx", "--out", "{W}/shipped/checkpoints/gpt"], "shipped"),
    (["export", "--data-root", "{W}/idx_magic", "--out", "{W}/old_corpus", "--force"], "magic number"),
    (["export", "--data-root", "{W}/idx_cut", "--out", "{W}/e3"], "t10k-images-idx3-ubyte: 24 bytes"),
    (["export", "--data-root", "{W}/idx_labels", "--out", "{W}/e4"], "label 200"),
    (["export", "--data-root", "{W}/idx_empty", "--out", "{W}/e5"], "no images"),
    (["export", "--data-root", "{W}/idx", "--out", "{W}/e6", "--bpp", "0"], "--bpp"),
    (["export", "--data-root", "{W}/idx", "--out", "{W}/e7", "--binarize", "dynamic", "--bpp", "2"], "--bpp 1"),
    (["export", "--data-root", "{W}/idx", "--out", "{W}/e8", "--binarize-seed", "-5"], "--binarize-seed"),
    (["export", "--data-root", "{W}/idx", "--out", "{W}/e9", "--dataset", "cifar"], "--dataset"),
    # generate: flags
    ([*GEN, "--temperature", "nan"], "--temperature"), ([*GEN, "--temperature", "inf"], "--temperature"),
    ([*GEN, "--temperature", "-1"], "--temperature"), ([*GEN, "--temperature", "1e308"], "--temperature"),
    ([*GEN, "--temperature", "1e-300"], "--temperature"), ([*GEN, "--temperature", "0"], ""),
    ([*GEN, "--classifier-temperature", "0"], "--classifier-temperature"),
    ([*GEN, "--classifier-temperature", "-1"], "--classifier-temperature"),
    ([*GEN, "--classifier-temperature", "1e-300"], "--classifier-temperature"),
    ([*GEN, "--top-p", "0"], "--top-p"), ([*GEN, "--top-p", "1e-300"], "--top-p"), ([*GEN, "--top-p", "nan"], "--top-p"),
    ([*GEN, "--top-k", "-1"], "--top-k"), ([*GEN, "--top-k", "1"], ""), ([*GEN, "--top-k", "99999"], ""),
    ([*GEN, "--seed", "9" * 30], "--seed"), ([*GEN, "--seed", "x"], "--seed"),
    ([*GEN, "--digits", "10"], "--digits"), ([*GEN, "--digits", "9-0"], "--digits"), ([*GEN, "--digits", ""], "--digits"),
    ([*GEN, "--digits", "09"], "'09' is not a digit"), ([*GEN, "--digits", "+3"], "'+3' is not a digit"),
    ([*GEN, "--candidates", "0"], "--candidates"), ([*GEN, "--candidates", "2000"], "--candidates"),
    ([*GEN, "--keep", "5"], "--keep"), ([*GEN, "--cols", "0"], "--cols"), ([*GEN, "--scale", "0"], "--scale"),
    ([*GEN, "--device", "tpu"], "--device"), ([*GEN, "--device", "cuda"], "--device"), ([*GEN, "--device", "cuda:7"], "--device"), ([*GEN, "--device", "meta"], "--device"),
    ([*GEN, "--dtype", "fp16"], "--dtype"), ([*GEN, "--candidates", "1024", "--keep", "1024", "--scale", "32"], "--scale 32"),
    ([*GEN, "--candidates", "200", "--keep", "200", "--gif"], "--gif"),
    ([*GEN, "--show-all", "--gif", "--cols", "1"], ""), ([*GEN, "--digits", "0-9", "--print"], ""),
    # generate: outputs
    ([*GEN, "--out", "{W}/dir"], "is a folder"), ([*GEN, "--out", "{W}/afile/x.txt"], "not a folder"),
    ([*GEN, "--out", "/sys/x.txt"], "--out /sys"), ([*GEN, "--out", "/proc/x.txt"], "--out /proc"),
    ([*GEN, "--out", "/dev/full"], "went to stdout"), ([*GEN, "--out", "/dev/null"], ""),
    ([*GEN, "--out", "{W}/corpus/train.txt"], "holds a corpus"), ([*GEN, "--out", "{W}/notes.txt"], "not overwriting"),
    ([*GEN, "--out", "{W}/lines.txt.bak/x/y.txt"], ""), ([*GEN, "--out", "{W}/shipped/checkpoints/gpt/config.json"], "shipped"),
    ([*GEN, "--img-dir", "{W}/afile"], "--img-dir"), ([*GEN, "--img-dir", "/sys/x"], "--img-dir /sys/x"),
    ([*GEN, "--img-dir", "/proc/x"], "--img-dir /proc/x"), ([*GEN, "--img-dir", "{W}/corpus"], "holds a corpus"),
    ([*GEN, "--img-dir", "{W}/shipped/checkpoints/gpt"], "shipped"), ([*GEN, "--out", ""], "--out"),
    ([*GEN, "--img-dir", "{W}/pics"], "3.png there is a file that is not a picture"),
    ([*GEN, "--out", "{W}/newdir/"], "ends in '/'"),
    (["decode", "{W}/lines.txt", "--out", "{W}/pics"], f"00000_{LINE[0]}.png there is a file that is not a picture"),
    (["decode", "{W}/lines.txt", "--grid", "--out", "{W}/gdir/"], ""),          # gdir/grid.png
    ([*COMP, "--out", "{W}/comp/x.png/"], "ends in '/'"),
    # ship, train-classifier: what --force may replace
    (["ship", "{W}/ck", "--out", "{W}/ck_notes", "--force"], "not a checkpoint's (NOTES.md)"),
    (["ship", "{W}/ck", "--out", "{W}/ck_link", "--force"], "symbolic link"),
    (["ship", "{W}/ck", "--out", "{W}/mine"], "mine.old: exists and is not a checkpoint folder"),
    ([*GEN, "--img-dir", "{W}/piclink"], "3.png there is a link"),
    (["ship", "{W}/run_init/best", "--out", "{W}/s1"], "args.json: init_from: expected a path"),
    (["train-classifier", "--corpus", "{W}/corpus", "--out", "{W}/ck_target", "--force"],
     "not a classifier"),
    (["train-classifier", "--corpus", "{W}/corpus", "--width", "513"], "--width"),
    # generate: checkpoints and classifiers
    ([*GEN, "--checkpoint", "{W}/nan"], "NaN"), ([*GEN, "--checkpoint", "{W}/nowhere"], "no checkpoint"),
    ([*GEN, "--checkpoint", "{W}/afile"], "got a file"), ([*GEN, "--checkpoint", ""], "--checkpoint"),
    ([*GEN, "--checkpoint", "{W}/shipped/checkpoints/classifier"], "not a model config"),
    ([*GEN, "--classifier", "{W}/ck"], "not a classifier config"), ([*GEN, "--classifier", "{W}/nowhere"], "no checkpoint"),
    ([*GEN, "--checkpoint", "{W}/cfg_list"], "config.json: expected a JSON object"),
    ([*GEN, "--checkpoint", "{W}/cfg_str"], "n_layer"), ([*GEN, "--checkpoint", "{W}/cfg_float"], "n_embd"),
    ([*GEN, "--checkpoint", "{W}/cfg_huge"], "parameters"), ([*GEN, "--checkpoint", "{W}/cfg_unknown"], "flux"),
    ([*GEN, "--checkpoint", "{W}/cfg_block"], "model.safetensors"), ([*GEN, "--checkpoint", "{W}/cfg_vocab"], "vocab_size 80"),
    ([*GEN, "--checkpoint", "{W}/cfg_json"], "not valid JSON"), ([*GEN, "--checkpoint", "{W}/cfg_binary"], "not valid JSON"),
    ([*GEN, "--checkpoint", "{W}/cfg_deep"], "nested too deeply"),
    ([*GEN, "--classifier", "{W}/clf_huge"], "width: expected an integer in 1..512, got 1000000"),
    ([*GEN, "--classifier", "{W}/clf_str"], "width: expected an integer in 1..512, got '4'"),
    ([*GEN, "--checkpoint", "{W}/st_zero"], "model.safetensors"), ([*GEN, "--checkpoint", "{W}/st_pickle"], "model.safetensors"),
    ([*GEN, "--checkpoint", "{W}/st_cut"], "model.safetensors"), ([*GEN, "--checkpoint", "{W}/tok_missing"], "tokenizer.json"),
    ([*GEN, "--checkpoint", "{W}/tok_list"], "tokenizer.json"), ([*GEN, "--checkpoint", "{W}/tok_permuted"], "tokenizer.json: token 0"),
    ([*GEN, "--checkpoint", "{W}/tok_foreign"], "tokenizer.json: token 0"),
    # complete
    ([*COMP, "--indices", "999"], "--indices"), ([*COMP, "--indices", "-1"], "--indices"), ([*COMP, "--indices", "x"], "--indices"),
    ([*COMP, "--indices", ""], "--indices"), ([*COMP, "--indices", ","], "--indices"), ([*COMP, "--rows", "30"], "--rows"),
    ([*COMP, "--symbols", "150"], "--symbols"), ([*COMP, "--symbols", "149"], ""), ([*COMP, "--symbols", "0"], ""),
    ([*COMP, "--lines", "garbage"], "line 1 of the input"), ([*COMP, "--lines", ""], "line 1 of the input"),
    ([*COMP, "--lines"], "--lines"), ([*COMP, "--lines", "5" + "é" * 150 + ")"], "non-ASCII"),
    ([*COMP, "--corpus", "{W}/nowhere"], "test.txt"), ([*COMP, "--corpus", "{W}/afile"], "test.txt"),
    ([*COMP, "--corpus", "{W}/corpus", "--indices", "19"], ""), ([*COMP, "--corpus", "{W}/corpus", "--indices", "20"], "20 lines"),
    ([*COMP, "--out", "{W}/dir"], "is a folder"), ([*COMP, "--out", "{W}/comp/c"], "picture file name"),
    ([*COMP, "--out", "/sys/x.png"], "--out /sys"), ([*COMP, "--out", "/dev/full"], "picture file name"),
    ([*COMP, "--out", "{W}/notes.txt"], "picture file name"), ([*COMP, "--out", "{W}/comp/c.gif"], ""),
    ([*COMP, "--samples", "0"], "--samples"), ([*COMP, "--samples", "64", "--indices", "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23"], "too many"),
    ([*COMP, "--temperature", "nan"], "--temperature"), ([*COMP, "--checkpoint", "{W}/nan"], "NaN"),
    ([*COMP, "--checkpoint", "{W}/tok_permuted"], "tokenizer.json"),
    # eval (every failure before any work)
    ([*EVAL, "--checkpoint", "{W}/nan"], "NaN"), ([*EVAL, "--compare", "{W}/ck", "{W}/nan"], "NaN"),
    ([*EVAL, "--compare", "{W}/ck", "{W}/cfg_list"], "cfg_list/config.json"),
    ([*EVAL, "--checkpoint", "{W}/ck", "--compare", "{W}/ck"], "give one"),
    ([*EVAL, "--compare", "{W}/ck", "{W}/ck", "--names", "a,a"], "--names"),
    ([*EVAL, "--compare", "{W}/ck", "--names", "a,b"], "--names"),
    ([*EVAL, "--checkpoint", "{W}/ck", "--corpus", "{W}/nowhere"], "test.txt"),
    ([*EVAL, "--compare", "{W}/ck", "{W}/ck_target", "--corpora", "{W}/corpus,"], "an empty entry"),
    (["ship", "{W}/ck", "--out", ""], "--out"),
    ([*EVAL, "--checkpoint", "{W}/ck", "--classifier", "{W}/ck"], "classifier config"),
    ([*EVAL, "--checkpoint", "{W}/ck", "--eval-classifier", "{W}/st_zero"], "config"),
    ([*EVAL, "--checkpoint", "{W}/ck", "--test-images", "0"], "--test-images"),
    ([*EVAL, "--checkpoint", "{W}/ck", "--samples-per-class", "1"], "--samples-per-class"),
    ([*EVAL, "--checkpoint", "{W}/ck", "--device", "tpu"], "--device"),
    ([*EVAL, "--checkpoint", "{W}/tok_permuted"], "tokenizer.json"),
    ([*EVAL, "--checkpoint", "{W}/tok_foreign"], "tokenizer.json"), ([*EVAL, "--checkpoint", "{W}/cfg_block"], "model.safetensors"),
]


def case_id(argv, expect) -> str:
    text = " ".join(a.replace("{W}/", "") for a in argv)
    text = text.replace(" ".join(GEN[1:]).replace("{W}/", ""), "").replace(" ".join(COMP[1:]).replace("{W}/", ""), "")
    return (text[:70] or "(nothing)").encode("ascii", "backslashreplace").decode()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def fill(argv, W) -> list[str]:
    return [str(a).replace("{W}", str(W)) for a in argv]


@pytest.mark.parametrize("argv,expect", CASES, ids=[case_id(*c) for c in CASES])
def test_hostile_case(world, argv, expect):
    before = state(world)
    with in_world(world):
        rc, out, err = run(fill(argv, world))
    check_outcome(rc, err)
    if expect:
        last = [l for l in err.splitlines() if l.strip()][-1] if err.strip() else ""
        assert rc == 2 and expect in last, (rc, err)
    else:
        assert rc == 0, err
    assert kept(before, state(world)), "a protected file changed"
    assert corpus_is_whole(world / "old_corpus")


def mnisttext_command() -> list[str]:
    """The installed console script where there is one beside this Python, else python -m."""
    script = Path(sys.executable).parent / "mnisttext"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mnisttext"]


@pytest.mark.slow
def test_no_traceback_from_the_installed_command(tmp_path):
    """The catalog's decode and export cases (which run without torch: fast) and every tenth of
    the others, as the `mnisttext` command, in a world of their own (the in-process cases have
    made some outputs already); none writes near the shipped files."""
    world = make_world(tmp_path)
    light = [c for c in CASES if c[0][:1] in (["decode"], ["export"])]
    heavy = [c for c in CASES if c not in light][::10]
    for argv, expect in light + heavy:
        if "shipped" in " ".join(argv) or "\x00" in "".join(argv):    # argv cannot hold NUL
            continue
        p = subprocess.run([*mnisttext_command(), *fill(argv, world)], cwd=world / "cwd",
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert "Traceback" not in p.stderr, (argv, p.stderr)
        assert p.returncode == (2 if expect else 0), (argv, p.stderr)


# ---------------------------------------------------------------------------------------------
# no data lost: export is all or nothing, outputs that fail still deliver the lines

def test_failing_export_leaves_the_old_corpus_and_its_sums(world, tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    assert data.export(world / "idx", out) and corpus_is_whole(out)
    before = {n: (out / n).read_bytes() for n in data.CORPUS_FILES}
    with in_world(world):      # the test split's IDX file is broken: nothing may change
        rc, _, err = run(["export", "--data-root", world / "idx_magic", "--out", out, "--force"])
    assert rc == 2 and "t10k-images-idx3-ubyte" in err
    calls = {"n": 0}
    real = data.codec.encode_bytes

    def full_disk(*a, **kw):   # the disk fills while the test split is written
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(data.codec, "encode_bytes", full_disk)
    with in_world(world):
        rc, _, err = run(["export", "--data-root", world / "idx", "--out", out, "--force",
                          "--binarize", "dynamic"])
    assert rc == 2 and "No space left" in err and "nothing was changed" in err
    assert {n: (out / n).read_bytes() for n in data.CORPUS_FILES} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]       # no leftovers


def test_export_killed_between_its_renames_is_recovered(world, tmp_path):
    """kill -9 after the old corpus was moved aside and before the new one took its place: the
    next export puts the old one back (it is never lost, only hidden for that moment)."""
    out = tmp_path / "corpus"
    data.export(world / "idx", out)
    before = (out / "train.txt").read_bytes()
    code = ("import os, sys; from mnisttext import data; real = os.replace\n"
            "def replace(a, b):\n"
            "    real(a, b)\n"
            "    if '.old' in str(b): os._exit(9)\n"
            "os.replace = replace\n"
            "data.export(sys.argv[1], sys.argv[2], force=True, binarize='dynamic')\n")
    p = subprocess.run([sys.executable, "-c", code, str(world / "idx"), str(out)], cwd=ROOT)
    assert p.returncode == 9 and not out.exists()
    assert [n.name for n in tmp_path.iterdir() if n.name.startswith(".corpus.old")]
    with in_world(world):      # refused (it is a corpus), but the old one is back first
        rc, _, err = run(["export", "--data-root", world / "idx", "--out", out])
    assert rc == 2 and "--force" in err
    assert (out / "train.txt").read_bytes() == before and corpus_is_whole(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_generate_delivers_the_lines_when_its_output_fails(world):
    with in_world(world):
        rc, out, err = run(fill([*GEN, "--out", "/dev/full"], world))
    assert rc == 2 and "went to stdout" in err
    assert len(out.split()) == 1 and out.split()[0][0] == "3"


def test_complete_delivers_the_lines_when_its_figure_fails(world, monkeypatch):
    from mnisttext import render

    def full_disk(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(render, "save_completion_figure", full_disk)
    with in_world(world):
        rc, out, err = run(fill([*COMP, "--indices", "0,1", "--samples", "2"], world))
    assert rc == 2 and "No space left" in err and "went to stdout" in err
    assert len(out.split()) == 4


def test_generate_replaces_a_file_of_lines_but_not_other_files(world, tmp_path):
    lines, notes = tmp_path / "old.txt", tmp_path / "notes.md"
    lines.write_text(GOOD[5] + "\n")
    notes.write_text("# my notes\n")
    with in_world(world):
        assert run(fill([*GEN, "--out", lines], world))[0] == 0
        rc, _, err = run(fill([*GEN, "--out", notes], world))
    assert lines.read_text() != GOOD[5] + "\n" and lines.read_text()[0] == "3"
    assert rc == 2 and "not overwriting" in err and notes.read_text() == "# my notes\n"


# ---------------------------------------------------------------------------------------------
# bugs are one line too; --debug shows them; a closed pipe is not an error

def test_an_unexpected_exception_is_one_line_and_exit_1(world, monkeypatch):
    from mnisttext.cli import data_cmds

    def bug(args):
        raise IndexError("index 152 is out of bounds")

    monkeypatch.setattr(data_cmds, "cmd_decode", bug)
    monkeypatch.setattr(data_cmds, "register", _register_with(data_cmds.register, bug))
    with in_world(world):
        rc, _, err = run(["decode", LINE])
        assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert "internal error (IndexError" in err and "--debug" in err
        with pytest.raises(IndexError):
            cli.main(["--debug", "decode", LINE])


def _register_with(register, func):
    def reg(sub):
        register(sub)
        sub.choices["decode"].set_defaults(func=func)
    return reg


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(world):
    """`mnisttext generate ... | head -c 10`: exit 0 and nothing on stderr about the pipe."""
    cmd = [sys.executable, "-m", "mnisttext", *fill(GEN, world), "--digits", "0-9", "--print"]
    p = subprocess.Popen(cmd, cwd=world / "cwd", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait() == 0 and "Traceback" not in err and "Broken pipe" not in err, err


def test_decode_and_export_run_without_torch(world):
    code = ("import sys; from mnisttext import cli; rc = cli.main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "decode", str(world / "lines.txt"), "--check"],
                       capture_output=True, text=True, cwd=world / "cwd")
    assert p.returncode == 0, p.stderr


# ---------------------------------------------------------------------------------------------
# bounded memory: decode streams

# The child reports its own peak (VmHWM) at exit: wait4's ru_maxrss would count the RSS of this
# pytest process, which the child inherits across fork and exec.
PEAK = ("import atexit, runpy, sys\n"
        "out = sys.argv.pop(1)\n"
        "atexit.register(lambda: open(out, 'w').write(next(\n"
        "    l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]))\n"
        "runpy.run_module('mnisttext', run_name='__main__', alter_sys=True)\n")


def peak_mib(args, cwd) -> float:
    """Peak resident memory (MiB) of `mnisttext decode ARGS`, which must exit 0."""
    report = Path(cwd) / "peak.txt"
    p = subprocess.run([sys.executable, "-c", PEAK, str(report), "decode", *args], cwd=cwd,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    return int(report.read_text()) / 1024


@pytest.mark.slow
def test_decode_memory_does_not_grow_with_the_input(tmp_path):
    """2,000 and 20,000 lines, to PNGs and checked only: the peak differs by less than 16 MiB
    (benchmarks/decode_memory.py measures a million lines)."""
    lines = (CORPUS / "test.txt").read_text().splitlines()
    peaks = {}
    for n in (2000, 20_000):
        src = tmp_path / f"{n}.txt"
        src.write_text("\n".join(lines[i % len(lines)] for i in range(n)) + "\n")
        peaks[n] = (peak_mib([str(src), "--check"], tmp_path),
                    peak_mib([str(src), "--out", str(tmp_path / f"png{n}")], tmp_path))
    for mode in (0, 1):
        assert peaks[20_000][mode] - peaks[2000][mode] < 16, peaks
    assert max(peaks[20_000]) < 500, peaks
