"""Options beyond the default format: other IDX datasets, gray levels end to end."""
import struct

import numpy as np
import pytest

from mnisttext import cli, codec, data
from conftest import run_cli


def write_idx(raw, prefix, images, labels):
    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / f"{prefix}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(images), 28, 28) + images.tobytes())
    with open(raw / f"{prefix}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """A synthetic FashionMNIST in torchvision's layout (the real files are not reachable here)."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    raw = root / "FashionMNIST" / "raw"
    for prefix, n in (("train", 40), ("t10k", 12)):
        imgs = (rng.random((n, 28, 28)) * 256).astype(np.uint8)
        write_idx(raw, prefix, imgs, rng.integers(0, 10, n))
    return root


def test_other_idx_dataset_exports(fashion_root, tmp_path):
    rc = cli.main(["export", "--dataset", "fashion-mnist", "--data-root", str(fashion_root),
                   "--out", str(tmp_path)])
    assert rc == 0
    lines = (tmp_path / "train.txt").read_text().splitlines()
    assert len(lines) == 40 and len((tmp_path / "test.txt").read_text().splitlines()) == 12
    images, labels = data.load_images(fashion_root, True, "fashion-mnist")
    assert lines == codec.encode_batch(images, labels)


def test_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    assert run_cli(["export", "--dataset", "cifar", "--data-root", str(tmp_path)]) == 2
    assert "--dataset" in capsys.readouterr().err


def test_gray_levels_export_decode_train_generate(fashion_root, tmp_path, capsys):
    corpus = tmp_path / "corpus4"
    assert cli.main(["export", "--dataset", "fashion-mnist", "--data-root", str(fashion_root),
                     "--out", str(corpus), "--bpp", "4"]) == 0
    lines = (corpus / "train.txt").read_text().splitlines()
    assert {len(l) for l in lines} == {602}
    images, _ = data.load_images(fashion_root, True, "fashion-mnist")
    np.testing.assert_array_equal(codec.decode_batch(lines, 4)[1], codec.quantize(images, 4))
    assert cli.main(["decode", str(corpus / "test.txt"), "--bpp", "4", "--grid", "--out",
                     str(tmp_path / "g.png")]) == 0
    from PIL import Image
    assert len(set(np.asarray(Image.open(tmp_path / "g.png").convert("L")).ravel())) > 3
    run = tmp_path / "run"
    assert cli.main(["train", "--corpus", str(corpus), "--out", str(run), "--preset", "tiny",
                     "--max-steps", "3", "--batch-size", "8", "--eval-every", "0",
                     "--threads", "1"]) == 0
    capsys.readouterr()
    rc = cli.main(["complete", "--checkpoint", str(run / "best"), "--corpus", str(corpus),
                   "--indices", "0", "--rows", "20", "--samples", "2", "--out",
                   str(tmp_path / "c.png")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 2 and all(len(l) == 602 for l in out)
    codec.decode_batch(out, 4)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """A synthetic MNIST in torchvision's layout, with mid-gray strokes (dynamic binarization)."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 48), ("t10k", 16)):
        imgs = np.zeros((n, 28, 28), np.uint8)
        imgs[:, 6:22, 10:18] = rng.integers(60, 200, (n, 16, 8))
        write_idx(root / "MNIST" / "raw", prefix, imgs, rng.integers(0, 10, n))
    return root


def test_stochastic_binarization_is_bernoulli_and_seeded():
    x = np.full((200, 28, 28), 64, np.uint8)
    x[:, :, :14] = 192
    a = data.stochastic_binarize(x, [0, 1])
    assert set(np.unique(a)) == {0, 255}
    assert np.array_equal(a, data.stochastic_binarize(x, [0, 1]))
    assert not np.array_equal(a, data.stochastic_binarize(x, [1, 1]))
    on = a == 255
    assert abs(on[:, :, :14].mean() - 192 / 255) < 0.01 and abs(on[:, :, 14:].mean() - 64 / 255) < 0.01
    assert not data.stochastic_binarize(np.zeros((3, 28, 28), np.uint8), 0).any()
    assert data.stochastic_binarize(np.full((3, 28, 28), 255, np.uint8), 0).all()


def test_dynamic_export_fixed_seed_and_training_redraws_each_epoch(mnist_root, tmp_path):
    outs = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert cli.main(["export", "--data-root", str(mnist_root), "--out", str(tmp_path / name),
                         "--binarize", "dynamic", "--binarize-seed", seed]) == 0
        outs[name] = (tmp_path / name / "test.txt").read_text()
    assert outs["a"] == outs["b"] != outs["c"]                  # fixed-seed stochastic test set
    thr = tmp_path / "thr"
    assert cli.main(["export", "--data-root", str(mnist_root), "--out", str(thr)]) == 0
    assert outs["a"] != (thr / "test.txt").read_text()
    codec.decode_batch(outs["a"].splitlines())                  # well-formed 1-bit lines

    images, labels = data.load_images(mnist_root, True)
    e0 = data.dynamic_epoch_lines(images, labels, 3, 0)
    assert e0 == data.dynamic_epoch_lines(images, labels, 3, 0)
    assert e0 != data.dynamic_epoch_lines(images, labels, 3, 1)
    assert [l[0] for l in e0] == [str(int(c)) for c in labels]

    run = tmp_path / "run"
    args = ["train", "--corpus", str(tmp_path / "a"), "--out", str(run), "--preset", "tiny",
            "--binarize", "dynamic", "--data-root", str(mnist_root), "--batch-size", "16",
            "--epochs", "3", "--eval-every", "0", "--threads", "1", "--log-every", "1"]
    assert cli.main(args) == 0
    import json
    m = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert m[-1]["final"] and m[-1]["step"] == 9 and m[-1]["eval_images"] == 16
    # resumed mid-run, the later epochs' draws are the same as uninterrupted
    run2 = tmp_path / "run2"
    args2 = [a if a != str(run) else str(run2) for a in args]
    assert cli.main(args2 + ["--stop-after", "4"]) == 0
    assert cli.main(args2 + ["--resume"]) == 0
    m2 = [json.loads(l) for l in (run2 / "metrics.jsonl").read_text().splitlines()]
    la = {r["step"]: r["loss"] for r in m if "loss" in r}
    lb = {r["step"]: r["loss"] for r in m2 if "loss" in r}
    assert all(la[s] == lb[s] for s in range(5, 10))


def test_dynamic_binarization_needs_1_bit(mnist_root, tmp_path, capsys):
    assert cli.main(["export", "--data-root", str(mnist_root), "--out", str(tmp_path),
                     "--binarize", "dynamic", "--bpp", "4"]) == 2
    assert "bpp 1" in capsys.readouterr().err
