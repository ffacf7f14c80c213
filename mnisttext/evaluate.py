"""The evaluation of one character-model checkpoint: every number in the model card.

    mnisttext eval                                    # the shipped checkpoint, a table
    mnisttext eval --checkpoint runs/x/best --test-images 2000 --json

    from mnisttext.evaluate import Evaluation
    res = Evaluation("corpus", device="cpu").run("runs/x/best")     # a flat dict

Stages: exact test NLL, generative classification (Bayes over the ten class prefixes), raw
samples at T=1.0 and 0.8 and reranked ones, each graded by the independent evaluation
classifier (accuracy, Frechet distance, diversity, copies of the training set). Everything it
needs is loaded before the first stage, and every stage reports progress.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, codec, data, metrics, paths, sample
from . import tokenizer as tk
from .classifier import features, load_classifier, predict_logits
from .tuning import prepare_for_sampling


def _null_progress(stage: str, done: int, total: int) -> None:
    pass


class Evaluation:
    """Shared references (corpus statistics, classifiers) for evaluating one or more checkpoints.

    progress(stage, done, total) is called as each stage advances."""

    def __init__(self, corpus_dir="corpus", classifier_dir=None, eval_classifier_dir=None,
                 device="cpu", dtype="auto", test_images=None, gen_class_images=1000,
                 samples_per_class=100, rerank_candidates=64, rerank_keep=8,
                 temperatures=(1.0, 0.8), seed=0, progress=None):
        self.corpus = Path(corpus_dir)
        self.device, self.dtype, self.seed = torch.device(device), dtype, seed
        self.test_images, self.gen_class_images = test_images, gen_class_images
        self.samples_per_class, self.temperatures = samples_per_class, temperatures
        self.rerank_candidates, self.rerank_keep = rerank_candidates, rerank_keep
        self.progress = progress or _null_progress
        self.grader, _ = load_classifier(eval_classifier_dir or paths.shipped("eval_classifier"), device)
        self.reranker, _ = load_classifier(classifier_dir or paths.shipped("classifier"), device)
        self.test_lines = data.read_split(self.corpus, "test")
        self.train_lines = data.read_split(self.corpus, "train")
        self._refs = None

    def references(self) -> dict:
        """Decoded test and train images, their features and the Frechet floor (once)."""
        if self._refs is None:
            bpp = codec.bpp_of_length(len(self.test_lines[0]))
            tl, tv = codec.decode_batch(self.test_lines, bpp)
            rl, rv = codec.decode_batch(self.train_lines, bpp)
            r = dict(test=(tl, codec.binarize(tv, bpp)), train=(rl, codec.binarize(rv, bpp)),
                     train_set=set(self.train_lines))
            r["test_feat"] = features(self.grader, r["test"][1])
            r["train_feat"] = features(self.grader, r["train"][1][:10_000])
            r["floor"] = metrics.frechet_distance(r["train_feat"], r["test_feat"])
            self._refs = r
        return self._refs

    def run(self, model_dir) -> dict:
        """Every number for one checkpoint, as a flat dict (seconds per stage under 'seconds')."""
        model, config, tok = checkpoint.load_model(model_dir, self.device)
        bpp = codec.bpp_of_length(config.block_size)
        if len(self.test_lines[0]) != codec.line_length(bpp):
            raise data.DataError(f"{self.corpus / 'test.txt'}: lines of {len(self.test_lines[0])} "
                                 f"characters, the model {model_dir} reads {codec.line_length(bpp)}")
        res = {"checkpoint": str(model_dir), "corpus": str(self.corpus), "arch": config.arch,
               "params": model.num_params(), "bpp": bpp, "vocab_size": config.vocab_size,
               "seconds": {}}
        # the two scores read their own number of test lines, each from the first one
        n = None if self.test_images is None else max(self.test_images, self.gen_class_images)
        tokens = torch.from_numpy(tk.encode_corpus(tok, self.test_lines[:n]))
        self._timed(res, "test_nll", lambda: self._nll(res, model, tokens[:self.test_images]))
        self._timed(res, "generative_classification", lambda: self._gen_class(res, model, tokens))
        self._timed(res, "references", self.references)
        sampler = prepare_for_sampling(model, self.dtype)
        grammar = tk.Grammar.of(tok)
        for temp in self.temperatures:
            name = f"raw_t{temp:g}".replace(".", "")
            self._timed(res, f"sample_{name}", lambda: self._raw(res, name, sampler, grammar, temp, bpp))
        self._timed(res, "sample_reranked", lambda: self._reranked(res, sampler, grammar, bpp))
        res["rerank_seconds_per_digit"] = res["seconds"]["sample_reranked"] / 10
        return res

    @staticmethod
    def _timed(res, name, fn):
        t0 = time.perf_counter()
        fn()
        res["seconds"][name] = round(time.perf_counter() - t0, 3)

    def _nll(self, res, model, tokens):
        nll = metrics.nll_per_image(model, tokens, device=self.device, dtype=self.dtype,
                                    progress=lambda d, n: self.progress("test NLL", d, n))
        res.update(test_nll_nats=float(nll.mean()), test_nll_images=len(nll),
                   tokens_per_image=float((tokens != tk.PAD_ID).sum() / len(tokens)),
                   test_bits_per_pixel=metrics.nats_to_bits_per_pixel(float(nll.mean())))

    def _gen_class(self, res, model, tokens):
        sub = tokens[:self.gen_class_images]
        lp = metrics.class_logprobs(model, sub, device=self.device, dtype=self.dtype,
                                    progress=lambda d, n: self.progress("generative classification", d, n))
        res.update(generative_accuracy=metrics.generative_accuracy(lp, sub[:, 0].numpy()),
                   generative_accuracy_images=len(sub))

    def _sample(self, stage, sampler, grammar, n, temperature, bpp) -> dict[int, list[str]]:
        settings = sample.SampleSettings(temperature=temperature, bpp=bpp)
        digits = list(range(10))

        def step(d, t, toks):          # progress through digit 0's positions (all decode together)
            if d == digits[0]:
                self.progress(stage, t, toks.shape[1] - 1)

        lines = sample.sample_digits(sampler, digits, n, settings, self.seed, self.device, grammar, step)
        self.progress(stage, 1, 1)
        return lines

    def _raw(self, res, name, sampler, grammar, temp, bpp):
        by_digit = self._sample(f"samples T={temp:g}", sampler, grammar, self.samples_per_class, temp, bpp)
        lines = [l for d in range(10) for l in by_digit[d]]
        self._sample_stats(res, name, lines, [d for d in range(10) for _ in by_digit[d]], bpp)

    def _reranked(self, res, sampler, grammar, bpp):
        by_digit = self._sample("reranked samples", sampler, grammar, self.rerank_candidates, 0.8, bpp)
        lines, digits = [], []
        for d, cand in by_digit.items():
            r = sample.rerank(d, cand, self.reranker, self.rerank_keep, 0.8, bpp)
            lines += [cand[i] for i in r.kept]
            digits += [d] * len(r.kept)
        self._sample_stats(res, "reranked", lines, digits, bpp)

    def _sample_stats(self, res, prefix, lines, digits, bpp):
        ref = self.references()
        labels, levels = codec.decode_batch(lines, bpp)
        levels = codec.binarize(levels, bpp)
        pred = predict_logits(self.grader, levels).argmax(-1).cpu().numpy()
        res[f"{prefix}_conditional_accuracy"] = float((pred == np.asarray(digits)).mean())
        res[f"{prefix}_frechet"] = metrics.frechet_distance(features(self.grader, levels), ref["test_feat"])
        res[f"{prefix}_diversity"] = metrics.diversity(levels, labels, ref["test"][1], ref["test"][0])
        for k, v in metrics.copies(lines, levels, ref["train_set"], ref["train"][1]).items():
            res[f"{prefix}_{k}"] = v
        res[f"{prefix}_samples"] = len(lines)
        res["frechet_floor_train_vs_test"] = ref["floor"]
