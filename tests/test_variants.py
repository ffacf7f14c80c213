"""Options beyond the default format: other IDX datasets, gray levels end to end."""
import struct

import numpy as np
import pytest

from mnisttext import cli, codec, data


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
    assert cli.main(["export", "--dataset", "cifar", "--data-root", str(tmp_path)]) == 2
    assert "unknown dataset" in capsys.readouterr().err


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
