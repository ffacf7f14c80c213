"""The files this repository ships: the corpus, the character model, the two classifiers and
the examples in the package. A change that alters what they mean fails here."""
import hashlib
import json

import pytest
import torch

from mnisttext import checkpoint, classifier, codec, data, metrics, paths, sample, tuning
from mnisttext import tokenizer as tk
from mnisttext.model import GPTConfig
from conftest import CORPUS, PREVIOUS_FLAGSHIP, ROOT

CLASSIFIERS = {"classifier": "cnn", "eval_classifier": "resnet"}


def test_the_package_finds_the_repository_checkpoints():
    assert paths.checkpoints_dir() == ROOT / "checkpoints"
    assert paths.is_shipped(ROOT / "checkpoints" / "gpt" / "x") and not paths.is_shipped(ROOT / "runs")


def test_corpus_matches_its_sums():
    sums = data.read_sums(CORPUS)
    assert set(sums) == {"train.txt", "test.txt"}
    for name, h in sums.items():
        assert hashlib.sha256((CORPUS / name).read_bytes()).hexdigest() == h


def test_character_model_config_and_likelihood():
    model, config, tok = checkpoint.load_model(ROOT / "checkpoints" / "gpt")
    assert (config.n_layer, config.n_head, config.n_embd, config.n_kv_head) == (6, 4, 256, 1)
    assert (config.rope, config.qk_norm, config.act, config.zero_init_proj) == ("1d", True, "relu2", True)
    assert tk.is_character_tokenizer(tok)
    lines = data.read_split(CORPUS, "test")[:50]
    nll = metrics.nll_per_image(model, torch.from_numpy(tk.encode_corpus(tok, lines)), dtype="fp32")
    assert nll.mean() == pytest.approx(49.195, abs=0.01)      # nats per image, first 50 test lines


def test_the_previous_flagship_still_loads_and_generates():
    """The model shipped before the new recipe (a config.json from before its fields): the
    same likelihood as when it was shipped, and samples of the asked digit."""
    cfg = GPTConfig.from_dict(json.loads((PREVIOUS_FLAGSHIP / "config.json").read_text()))
    assert (cfg.gelu, cfg.rope, cfg.act, cfg.n_kv_head, cfg.wpe) == ("tanh", "none", "gelu", 0, True)
    model, config, tok = checkpoint.load_model(PREVIOUS_FLAGSHIP)
    lines = data.read_split(CORPUS, "test")[:50]
    nll = metrics.nll_per_image(model, torch.from_numpy(tk.encode_corpus(tok, lines)), dtype="fp32")
    assert nll.mean() == pytest.approx(49.718, abs=0.01)      # nats per image, first 50 test lines
    sampler = tuning.prepare_for_sampling(model)
    got = sample.sample_digits(sampler, [3], 16, sample.SampleSettings(), seed=0)[3]
    grader, _ = classifier.load_classifier(ROOT / "checkpoints" / "eval_classifier")
    labels, levels = codec.decode_batch(got)
    assert set(labels) == {3}
    assert int((classifier.predict_logits(grader, levels).argmax(-1) == 3).sum()) >= 12


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifiers_are_accurate(name, test_lines):
    model, config = classifier.load_classifier(ROOT / "checkpoints" / name)
    assert config.arch == CLASSIFIERS[name]
    labels, levels = codec.decode_batch(test_lines[:2000])
    assert classifier.accuracy(model, levels, labels) >= 0.992


def test_examples_are_the_first_test_lines():
    assert paths.examples_file().read_text().splitlines() == \
        (CORPUS / "test.txt").read_text().splitlines()[:300]
