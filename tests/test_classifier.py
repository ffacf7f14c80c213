"""The digit classifiers: training learns, checkpoints round-trip, bad files are refused.
One thread, a few seconds in all (the shipped ones: test_shipped.py)."""
import shutil

import numpy as np
import pytest
import torch

from mnisttext import checkpoint, classifier, classifier_train, codec
from conftest import CORPUS, torch_threads

TINY = classifier.ClassifierConfig(arch="cnn", width=8, feat_dim=32, dropout=0.0)
FIT = dict(epochs=1, batch_size=16, lr=2e-2, seed=0, threads=1)     # 125 steps, ~2 s


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for split, n in (("train", 2000), ("test", 500)):
        lines = (CORPUS / f"{split}.txt").read_text().splitlines()[:n]
        (d / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return d


@pytest.fixture(scope="module")
def tiny(small_corpus, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    calls = []
    metrics = classifier_train.train_classifier(small_corpus, out, TINY, **FIT,
                                          progress=lambda *a: calls.append(a))
    return out, metrics, calls


def test_tiny_model_learns_in_one_epoch(tiny):
    out, metrics, calls = tiny
    assert metrics["test_accuracy"] > 0.5            # chance is 0.1
    assert metrics["epochs"] == 1 and metrics["seed"] == 0 and metrics["params"] > 0
    assert calls[-1][1] == calls[-1][2] == 125       # 2000 / 16 steps, reported to the end
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "metrics.json"}
    assert checkpoint.read_json(out / "metrics.json") == metrics


def test_training_is_deterministic(tiny, small_corpus, tmp_path):
    out, metrics, _ = tiny
    again = classifier_train.train_classifier(small_corpus, tmp_path / "again", TINY, **FIT)
    assert again["test_accuracy"] == metrics["test_accuracy"]
    a = checkpoint.read_tensors(out / "model.safetensors")
    b = checkpoint.read_tensors(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_round_trip_gives_identical_logits(arch, tmp_path, test_lines):
    config = classifier.ClassifierConfig(arch=arch, width=4, feat_dim=12)
    model = classifier.build_classifier(config)
    with torch.no_grad():                      # BN running stats must travel too
        for name, buf in model.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    model = model.eval().to(memory_format=torch.channels_last)    # as load_classifier has it
    _, levels = codec.decode_batch(test_lines[:64])
    before = classifier.predict_logits(model, levels, batch_size=16)
    classifier.save_classifier(tmp_path / "c", model, config, {"test_accuracy": 0.0})
    loaded, c2 = classifier.load_classifier(tmp_path / "c")
    assert c2 == config and not loaded.training
    after = classifier.predict_logits(loaded, levels, batch_size=16)
    assert after.shape == (64, 10) and after.dtype == torch.float32
    assert torch.equal(before, after)
    p = classifier.probs(loaded, levels, temperature=0.8)
    assert torch.allclose(p, torch.softmax(after / 0.8, -1), atol=1e-6)


def test_features_shape(tiny, test_lines):
    model, config = classifier.load_classifier(tiny[0])
    _, levels = codec.decode_batch(test_lines[:10])
    f = classifier.features(model, levels, batch_size=4)
    assert isinstance(f, np.ndarray) and f.shape == (10, config.feat_dim)
    assert classifier.features(model, levels[:0]).shape == (0, config.feat_dim)


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_both_archs_map_images_to_logits_and_features(arch):
    config = classifier.ClassifierConfig(arch=arch, width=4, feat_dim=12)
    model = classifier.build_classifier(config).eval()
    x = classifier.levels_to_input(np.zeros((3, 30, 30), np.uint8))
    assert x.shape == (3, 1, 30, 30) and x.dtype == torch.float32
    assert model(x).shape == (3, 10) and model.features(x).shape == (3, 12)


def test_truncated_weights_raise_checkpoint_error(tiny, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny[0], bad)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(checkpoint.CheckpointError, match="model.safetensors"):
        classifier.load_classifier(bad)


def test_foreign_config_is_refused(tiny, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny[0], bad)
    (bad / "config.json").write_text('{"arch": "cnn", "n_layer": 4}')
    with pytest.raises(checkpoint.CheckpointError, match="config.json"):
        classifier.load_classifier(bad)
    with pytest.raises(ValueError, match="unknown"):
        classifier.ClassifierConfig.from_dict({"arch": "cnn", "depth": 3})
    with pytest.raises(ValueError, match="arch"):
        classifier.ClassifierConfig(arch="vit")


def test_random_shift_moves_whole_images_with_zero_fill():
    x = torch.zeros(64, 1, 30, 30)
    x[:, 0, 15, 15] = 1
    x[:, 0, 0, 0] = 1                          # a corner pixel: shifted out, never wrapped
    y = classifier_train.random_shift(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    centre = y[:, 0, 13:18, 13:18].flatten(1)
    assert torch.equal(centre.sum(1), torch.ones(64))
    assert 10 < len({int(i) for i in centre.argmax(1)}) <= 25    # many different offsets
    assert y[:, 0, 28:, :].sum() == 0 and y[:, 0, :, 28:].sum() == 0
