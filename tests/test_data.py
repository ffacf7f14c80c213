"""Export (byte-identical corpus), the tokenizer, and the decode/export command lines."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnisttext import cli, codec, data
from mnisttext.cli import data_cmds
from mnisttext import tokenizer as tk
from conftest import CORPUS, REFERENCE_LINES, ROOT, SHARED_DATA, needs_mnist


def test_committed_corpus_matches_its_sums():
    sums = data.read_sums(CORPUS)
    assert set(sums) == {"train.txt", "test.txt"}
    for name, h in sums.items():
        assert hashlib.sha256((CORPUS / name).read_bytes()).hexdigest() == h


@needs_mnist()
def test_export_reproduces_the_committed_corpus(tmp_path):
    rc = cli.main(["export", "--data-root", str(SHARED_DATA), "--out", str(tmp_path)])
    assert rc == 0
    assert data.read_sums(tmp_path) == data.read_sums(CORPUS)
    lines = (tmp_path / "train.txt").read_text().splitlines()
    assert len(lines) == 60_000 and lines[0] == REFERENCE_LINES[0]
    assert len((tmp_path / "test.txt").read_text().splitlines()) == 10_000


def test_export_without_data_says_where_to_put_it(tmp_path, capsys):
    rc = cli.main(["export", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "MNIST/raw" in err


def test_tokenizer_identity_on_every_corpus_line():
    tok = tk.build()
    assert tk.is_character_tokenizer(tok) and tok.get_vocab_size() == 76
    for split in ("train", "test"):
        lines = (CORPUS / f"{split}.txt").read_text().splitlines()
        ids = tk.encode_lines(tok, lines)
        assert all(len(i) == 152 for i in ids)
        assert tok.decode_batch(ids) == lines


def test_tokenizer_ids_and_file_round_trip(tmp_path):
    tok = tk.build()
    ids = tok.encode(REFERENCE_LINES[0]).ids
    assert ids[0] == 5 and ids[-1] == tk.END_ID
    assert all(tk.SYMBOL_OFFSET <= i < tk.END_ID for i in ids[1:-1])
    body = np.array(ids[1:-1]) - tk.SYMBOL_OFFSET
    want = np.frombuffer(REFERENCE_LINES[0][1:-1].encode(), np.uint8) - codec.ALPHABET_START
    np.testing.assert_array_equal(body, want)
    tok.save(str(tmp_path / "tokenizer.json"))
    again = tk.load(tmp_path / "tokenizer.json")
    assert again.encode(REFERENCE_LINES[1]).ids == tok.encode(REFERENCE_LINES[1]).ids
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="bad.json"):
        tk.load(tmp_path / "bad.json")


def test_load_split_names_the_bad_line(tmp_path):
    good = REFERENCE_LINES[0]
    (tmp_path / "train.txt").write_text(f"{good}\n{good[:-1]}z\n")
    with pytest.raises(data.DataError, match="train.txt:2: position 151"):
        data.load_split(tmp_path, "train", tk.build())


def test_decode_cli_writes_good_lines_and_reports_bad(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join([REFERENCE_LINES[0], "garbage", REFERENCE_LINES[1], "",
                              REFERENCE_LINES[2][:-1] + "z"]) + "\n")
    rc = cli.main(["decode", str(src), "--out", str(tmp_path / "png")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "in.txt:2:" in err and "in.txt:4: empty" in err and "in.txt:5: position 151" in err
    pngs = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert pngs == ["00000_5.png", "00002_0.png"]


def test_decode_cli_grid_from_arguments(tmp_path):
    out = tmp_path / "grid.png"
    rc = cli.main(["decode", *REFERENCE_LINES, "--grid", "--out", str(out), "--cols", "3",
                   "--scale", "4"])
    assert rc == 0
    from PIL import Image
    w, h = Image.open(out).size
    assert (w, h) == (3 * 120 + 4 * 2, 120 + 2 * 2)


def test_decode_cli_stdin_many_malformed_lines(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3000):
        chars = list(REFERENCE_LINES[i % 3])
        if i % 2:
            chars[rng.integers(0, 152)] = chr(rng.integers(11, 0x3000))
        lines.append("".join(chars))
    proc = subprocess.run([sys.executable, "cli.py", "decode", "-", "--grid", "--out",
                           str(tmp_path / "g.png")], input="\n".join(lines).encode(),
                          capture_output=True, cwd=ROOT)
    bad = sum(1 for l in lines if not _ok(l))
    err = proc.stderr.decode()
    assert proc.returncode == (2 if bad else 0)
    assert err.count("<stdin>:") == min(bad, data_cmds.SHOWN_ERRORS)      # the first ones named
    assert f"{bad} of 3000 lines were malformed" in err                     # all of them counted
    assert (tmp_path / "g.png").exists()


def _ok(line):
    try:
        codec.check_line(line)
        return True
    except codec.CodecError:
        return False


def _idx_file(path, arr, magic=None):
    arr = np.asarray(arr, np.uint8)
    head = (magic if magic is not None else 0x800 + arr.ndim).to_bytes(4, "big")
    path.write_bytes(head + b"".join(s.to_bytes(4, "big") for s in arr.shape) + arr.tobytes())


def test_read_idx_names_the_file_and_what_is_wrong(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    _idx_file(p, np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256)
    a = data.read_idx(p, 3)
    assert a.shape == (2, 28, 28) and int(a[1, 27, 27]) == (2 * 784 - 1) % 256
    for content, words in [(b"", "not even a header"), (b"\x00\x00\x08\x03" + b"\x00" * 8, "not even a header"),
                           (p.read_bytes()[:-1], "truncated"), (p.read_bytes() + b"!", "trailing bytes")]:
        (tmp_path / "bad").write_bytes(content)
        with pytest.raises(data.DataError, match=f"bad: .*{words}"):
            data.read_idx(tmp_path / "bad", 3)
    _idx_file(tmp_path / "bad", np.zeros((1, 28, 28)), magic=0x0801)
    with pytest.raises(data.DataError, match="magic number 0x00000801, expected 0x00000803"):
        data.read_idx(tmp_path / "bad", 3)
    (tmp_path / "huge").write_bytes(b"\x00\x00\x08\x03" + (2**31).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
    with pytest.raises(data.DataError, match="truncated"):      # the size is checked, nothing read
        data.read_idx(tmp_path / "huge", 3)
    with pytest.raises(data.DataError, match="is a folder"):
        data.read_idx(tmp_path, 3)


def test_dynamic_export_draws_as_one_array_does(tmp_path):
    """Export writes a split in chunks; the Bernoulli draw must not depend on the chunking."""
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = {True: rng.integers(0, 256, (25, 28, 28)), False: rng.integers(0, 256, (7, 28, 28))}
    for train, (img, lab) in data.IDX_FILES.items():
        _idx_file(raw / img, images[train])
        _idx_file(raw / lab, np.arange(len(images[train])) % 10)
    old = data.CHUNK
    try:
        data.CHUNK = 4
        data.export(tmp_path / "root", tmp_path / "c", binarize="dynamic", binarize_seed=3)
    finally:
        data.CHUNK = old
    want = codec.encode_bytes(data.stochastic_binarize(images[True].astype(np.uint8), [3, 0]),
                              np.arange(25) % 10, 1)
    assert (tmp_path / "c" / "train.txt").read_bytes() == want


def test_raw_lines_bounds_every_line(tmp_path):
    import io
    f = io.BytesIO(data.BOM + b"ab\r\n" + b"x" * 10_000 + b"\nlast")
    assert list(data.raw_lines(f, max_line=100)) == [(1, b"ab", False), (2, b"x" * 100, True),
                                                     (3, b"last", False)]

    class Endless(io.RawIOBase):          # /dev/zero: no newline, ever
        def readable(self):
            return True

        def readinto(self, b):
            b[:] = b"\0" * len(b)
            return len(b)

    lines = data.raw_lines(io.BufferedReader(Endless()), max_line=100)
    assert [next(lines)[2] for _ in range(3)] == [True] * 3       # it still yields


def test_read_lines_streams_and_names_the_line(tmp_path):
    p = tmp_path / "test.txt"
    p.write_bytes(b"a\nb\n\xff\n")
    assert data.read_lines(p, limit=2) == ["a", "b"]       # the bad third line is never read
    with pytest.raises(data.DataError, match="test.txt:3: not ASCII"):
        data.read_lines(p)
    p.write_bytes(b"a" * 10_000)
    with pytest.raises(data.DataError, match="test.txt:1: a line over"):
        data.read_lines(p)


def test_tokenizer_check_refuses_other_vocabularies(tmp_path):
    import json
    from tokenizers import Tokenizer, models
    tk.check(tk.build())
    tk.check(tk.train_bpe((CORPUS / "test.txt").read_text().splitlines()[:300], 100))
    foreign = Tokenizer(models.WordLevel({f"w{i}": i for i in range(75)} | {"<pad>": 75}, unk_token="<pad>"))
    with pytest.raises(ValueError, match="token 0 is 'w0'"):
        tk.check(foreign, "x/tokenizer.json")
    t = json.loads(tk.build().to_str())
    t["model"]["vocab"]["7"], t["model"]["vocab"]["8"] = 8, 7            # two ids swapped
    (tmp_path / "tokenizer.json").write_text(json.dumps(t))
    with pytest.raises(ValueError, match="tokenizer.json: token 7 is '8'"):
        tk.load(tmp_path / "tokenizer.json")


# ---------------------------------------------------------------------------------------------
# --shift-aug: shifted lines


@settings(max_examples=60, deadline=None)
@given(st.integers(-3, 3), st.integers(-3, 3), st.integers(0, 2**32 - 1))
def test_a_shift_moves_every_pixel_and_back_again_inside_the_frame(dy, dx, seed):
    img = np.random.default_rng(seed).integers(0, 2, (2, 28, 28)).astype(np.uint8)
    out = data.shift_images(img, dy, dx)
    for y, x in [(y, x) for y in range(28) for x in range(28)]:
        src = (y - dy, x - dx)
        want = img[:, src[0], src[1]] if 0 <= src[0] < 28 and 0 <= src[1] < 28 else 0
        assert (out[:, y, x] == want).all()
    back = data.shift_images(out, -dy, -dx)                 # what stayed inside comes back
    inner = np.s_[:, max(-dy, 0):28 + min(-dy, 0), max(-dx, 0):28 + min(-dx, 0)]
    assert (back[inner] == img[inner]).all()


def test_shifted_epoch_lines_move_the_drawn_share_by_their_ids_and_repeat_per_seed():
    lines = data.read_split(CORPUS, "test", limit=400)
    assert len(data.shifts(2)) == 24 and len(data.shifts(1)) == 8 and (0, 0) not in data.shifts(2)
    out, ids = data.shifted_epoch_lines(lines, 0.5, 2, seed=1, epoch=3)
    again, ids2 = data.shifted_epoch_lines(lines, 0.5, 2, seed=1, epoch=3)
    other, ids3 = data.shifted_epoch_lines(lines, 0.5, 2, seed=1, epoch=4)
    assert out == again and (ids == ids2).all() and not (ids == ids3).all()
    assert 150 < (ids > 0).sum() < 250 and ids.max() <= 24 and set(np.unique(ids)) > {0, 1, 24}
    labels, levels = codec.decode_batch(lines)
    got_labels, got = codec.decode_batch(out)              # well-formed lines, labels kept
    assert (got_labels == labels).all()
    for i in range(len(lines)):
        want = levels[i]
        if ids[i]:
            dy, dx = data.shifts(2)[ids[i] - 1]
            want = levels[i].copy()
            want[1:-1, 1:-1] = data.shift_images(levels[i][None, 1:-1, 1:-1], dy, dx)[0]
        assert (got[i] == want).all(), i
    assert (got[:, 0] == 0).all() and (got[:, :, -1] == 0).all()       # the frame stays empty
    none, ids0 = data.shifted_epoch_lines(lines, 0.0, 2, seed=1, epoch=3)
    assert none == lines and not ids0.any()
    _, all_ids = data.shifted_epoch_lines(lines, 1.0, 1, seed=1, epoch=3)
    assert all_ids.min() == 1 and all_ids.max() == 8
