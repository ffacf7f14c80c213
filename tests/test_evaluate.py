"""Metrics on cases with known answers, and the generate / eval command lines end to end."""
import json
import math

import numpy as np
import pytest
import torch

from mnisttext import cli, codec, metrics
from mnisttext.model import GPTConfig
from conftest import CORPUS, ROOT, run_cli


class Uniform(torch.nn.Module):
    """A 'model' whose logits are all equal: NLL = 151 * ln(vocab) exactly."""

    def __init__(self, vocab=76):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab)

    def forward(self, idx, targets=None, kv_cache=None):
        return torch.zeros(*idx.shape, self.config.vocab_size), None


def test_uniform_model_nll_is_analytic():
    tokens = torch.randint(10, 74, (5, 152))
    nll = metrics.nll_per_image(Uniform(), tokens, dtype="fp32")
    np.testing.assert_allclose(nll, 151 * math.log(76), rtol=1e-6)
    assert metrics.nats_to_bits_per_pixel(784 * math.log(2)) == pytest.approx(1.0)


def test_generative_classification_picks_the_likeliest_class():
    logp = np.array([[-5.0, -1.0, -9.0], [-1.0, -2.0, -3.0]])
    assert metrics.generative_accuracy(logp, np.array([1, 0])) == 1.0
    assert metrics.generative_accuracy(logp, np.array([0, 0])) == 0.5


def test_frechet_distance_known_cases():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 8))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.full(8, 0.5)
    assert metrics.frechet_distance(a, a + shift) == pytest.approx(8 * 0.25, rel=1e-6)
    # a vs 2a: covariances S and 4S, so tr S + 4 tr S - 2 tr(2S) + |mean a|^2 = tr S + |mean|^2
    want = np.trace(np.cov(a, rowvar=False)) + (a.mean(0) ** 2).sum()
    assert metrics.frechet_distance(a, 2 * a) == pytest.approx(want, rel=1e-6)


def test_hamming_diversity_and_copies():
    rng = np.random.default_rng(1)
    lv = (rng.random((6, 30, 30)) < 0.3).astype(np.uint8)
    d = metrics.hamming_matrix(lv, lv)
    want = (lv.reshape(6, 1, -1) != lv.reshape(1, 6, -1)).sum(-1)
    np.testing.assert_array_equal(d, want)
    same = np.repeat(lv[:1], 4, 0)
    assert metrics.mean_pairwise_hamming(same) == 0.0
    labels = np.zeros(6, int)
    ref = np.zeros_like(lv)
    ref[::2] = 1                                               # three all-on, three all-off images
    assert metrics.mean_pairwise_hamming(ref) == 18 * 900 / 30  # 18 of 30 ordered pairs differ
    assert metrics.diversity(lv, labels, ref, labels) == pytest.approx(
        metrics.mean_pairwise_hamming(lv) / metrics.mean_pairwise_hamming(ref))
    lines = codec.encode_levels(lv, labels)
    c = metrics.copies(lines[:3], lv[:3], set(lines[1:]), lv[1:])
    assert c["copy_rate"] == pytest.approx(2 / 3) and c["nn_hamming_min"] == 0


def test_generate_rejects_bad_arguments(capsys):
    for argv, words in [(["--digits", "12"], "not a digit"), (["--digits", "x"], "--digits"),
                        (["--temperature", "-1"], "--temperature"), (["--top-p", "0"], "--top-p"),
                        (["--top-p", "1.5"], "--top-p"), (["--keep", "65"], "--keep"),
                        (["--checkpoint", "/nonexistent"], "no checkpoint")]:
        rc = run_cli(["generate", *argv])
        err = capsys.readouterr().err
        assert rc == 2 and words in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny trained model and a tiny corpus for the end-to-end commands."""
    d = tmp_path_factory.mktemp("e2e")
    corpus = d / "corpus"
    corpus.mkdir()
    for split, n in (("train", 300), ("test", 60)):
        lines = (CORPUS / f"{split}.txt").read_text().splitlines()[:n]
        (corpus / f"{split}.txt").write_text("\n".join(lines) + "\n")
    assert cli.main(["train", "--corpus", str(corpus), "--out", str(d / "run"), "--preset", "tiny",
                     "--max-steps", "15", "--batch-size", "16", "--eval-every", "0",
                     "--threads", "1"]) == 0
    return d, corpus


@pytest.mark.skipif(not (ROOT / "checkpoints" / "classifier").exists(), reason="no shipped classifier")
def test_generate_end_to_end(tiny_run, tmp_path, capsys):
    d, _ = tiny_run
    rc = cli.main(["generate", "--checkpoint", str(d / "run" / "best"), "--digits", "1,7",
                   "--candidates", "6", "--keep", "3", "--img-dir", str(tmp_path), "--gif",
                   "--show-all", "--seed", "5"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 6
    assert [l[0] for l in out] == ["1"] * 3 + ["7"] * 3
    codec.decode_batch(out)
    for f in ("1.png", "7.png", "1.gif", "7.gif"):
        assert (tmp_path / f).exists()
    cli.main(["generate", "--checkpoint", str(d / "run" / "best"), "--digits", "7",
              "--candidates", "6", "--keep", "3", "--img-dir", str(tmp_path), "--seed", "5"])
    assert capsys.readouterr().out.splitlines() == out[3:]     # per-digit seeds: same lines


def test_complete_end_to_end(tiny_run, tmp_path, capsys):
    d, corpus = tiny_run
    rc = cli.main(["complete", "--checkpoint", str(d / "run" / "best"), "--corpus", str(corpus),
                   "--indices", "0,3", "--rows", "10", "--samples", "2", "--out",
                   str(tmp_path / "c.png")])
    out = capsys.readouterr().out.splitlines()
    test = (corpus / "test.txt").read_text().splitlines()
    assert rc == 0 and (tmp_path / "c.png").exists() and len(out) == 4
    assert out[0][:51] == test[0][:51] and out[2][:51] == test[3][:51]


@pytest.mark.skipif(not (ROOT / "checkpoints" / "eval_classifier").exists(),
                    reason="no shipped classifiers")
def test_eval_json_end_to_end(tiny_run, capsys):
    d, corpus = tiny_run
    rc = cli.main(["eval", "--checkpoint", str(d / "run" / "best"), "--corpus", str(corpus),
                   "--samples-per-class", "3", "--gen-class-images", "20", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert res["test_nll_images"] == 60 and 0 < res["test_nll_nats"] < 151 * math.log(76)
    assert res["generative_accuracy"] in {k / 20 for k in range(21)} and res["generative_accuracy_images"] == 20
    assert res["raw_t1_samples"] == 30 and res["reranked_samples"] == 80
    assert res["frechet_floor_train_vs_test"] >= 0 and "test_nll" in res["seconds"]


def test_eval_scores_generative_classification_beyond_the_nll_lines(tiny_run, capsys):
    d, corpus = tiny_run
    rc = cli.main(["eval", "--checkpoint", str(d / "run" / "best"), "--corpus", str(corpus),
                   "--test-images", "5", "--gen-class-images", "12", "--samples-per-class", "2",
                   "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["test_nll_images"] == 5 and res["generative_accuracy_images"] == 12


def test_eval_compare_takes_a_corpus_per_checkpoint(tiny_run, tmp_path, capsys):
    d, corpus = tiny_run
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "test"):      # a different test split: the NLL must follow it
        lines = (corpus / f"{split}.txt").read_text().splitlines()
        (other / f"{split}.txt").write_text("\n".join(lines[:len(lines) // 2]) + "\n")
    best = str(d / "run" / "best")
    assert cli.main(["eval", "--compare", best, best, "--names", "a,b", "--corpora",
                     f"{corpus},{other}", "--samples-per-class", "2", "--gen-class-images",
                     "10", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["a"]["test_nll_images"] == 60 and res["b"]["test_nll_images"] == 30
    assert res["b"]["corpus"] == str(other) and res["a"]["tokens_per_image"] == 152
    assert run_cli(["eval", "--compare", best, best, "--corpora", str(corpus)]) == 2
    assert "--corpora has 1 entries for 2" in capsys.readouterr().err
