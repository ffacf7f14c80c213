"""The Python API: the toolkit in a few lines, on the same code the CLI runs.

    import mnisttext
    model = mnisttext.load()                          # the shipped checkpoint, or load("runs/x/best")
    g = model.generate(3, candidates=64, keep=8)      # g.best: lines; g.scores; g.images()
    lines = model.complete(mnisttext.examples()[0], rows=15, samples=6)
    p = model.classify(line)                          # {"model": (10,), "cnn": (10,)} probabilities
    label, levels = mnisttext.decode(line) ; line = mnisttext.encode(levels, 7)

A Model holds the character model (cast and packed for fast sampling where that pays here),
its tokenizer and the reranking CNN. It is not thread-safe: hold `model.lock` around calls
when several threads share one (the web server does).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, codec, metrics, paths, render, runtime, sample
from . import tokenizer as tk
from .classifier import load_classifier, probs
from .tuning import prepare_for_sampling
from .text import decode, encode, to_levels

__all__ = ["Model", "Generation", "load", "decode", "encode", "examples"]


@dataclass
class Generation:
    """The candidates of one digit, scored by the reranker."""
    digit: int
    lines: list[str]          # every candidate, in sampling order
    scores: np.ndarray        # the reranker's p(digit | image) of each candidate
    kept: list[int]           # indices into lines: the best distinct images, best first

    @property
    def best(self) -> list[str]:
        return [self.lines[i] for i in self.kept]

    def images(self, kept_only: bool = True, scale: int = 1) -> list:
        """PIL images (mode 'L', 30*scale square) of the kept lines (or of every candidate)."""
        lines = self.best if kept_only else self.lines
        return [render.to_pil(codec.decode(l)[1], scale) for l in lines]


class Model:
    """A loaded character model + reranker. See the module docstring."""

    max_candidates = 1024     # per digit: more would only exhaust memory

    def __init__(self, checkpoint_dir=None, classifier_dir=None, device="auto", dtype="auto"):
        self.device = runtime.resolve_device(device)
        self.checkpoint_dir = _folder(checkpoint_dir, "checkpoint_dir") or paths.shipped("gpt")
        self.net, self.config, self.tokenizer = checkpoint.load_model(self.checkpoint_dir, self.device)
        self.sampler = prepare_for_sampling(self.net, dtype)
        self.dtype = dtype
        self.grammar = tk.Grammar.of(self.tokenizer)
        self.bpp = codec.bpp_of_length(self.config.block_size)
        self.reranker, _ = load_classifier(_folder(classifier_dir, "classifier_dir")
                                           or paths.shipped("classifier"), self.device)
        self.lock = threading.Lock()

    def settings(self, temperature=0.8, top_k=None, top_p=None) -> sample.SampleSettings:
        check_top(top_k, top_p)
        return sample.SampleSettings(check_temperature(temperature), top_k, top_p, True, self.bpp)

    def generate_many(self, digits, candidates=64, keep=8, temperature=0.8, top_k=None,
                      top_p=None, seed=0, classifier_temperature=0.8, on_step=None) -> list[Generation]:
        """generate() for several digits in one decode; the same lines as one digit at a time.
        on_step(digit, symbols_done, bodies) as in generate()."""
        digits = [check_digit(d) for d in digits]
        self._check_counts(candidates, keep)
        step = None
        if on_step:
            step = lambda d, t, toks: self._report(toks, t, 0, lambda n, b: on_step(d, n, b))
        by_digit = sample.sample_digits(self.sampler, digits, candidates,
                                        self.settings(temperature, top_k, top_p), seed,
                                        self.device, self.grammar, step)
        out = []
        for d in digits:
            r = sample.rerank(d, by_digit[d], self.reranker, keep, classifier_temperature, self.bpp)
            out.append(Generation(d, by_digit[d], r.scores, [int(i) for i in r.kept]))
        return out

    def generate(self, digit: int, candidates=64, keep=8, temperature=0.8, top_k=None,
                 top_p=None, seed=0, classifier_temperature=0.8, on_step=None) -> Generation:
        """`candidates` samples of `digit`, the best `keep` distinct ones by the reranker.

        on_step(symbols_done, bodies) is called after every pixel row with the symbols sampled
        so far of every candidate. The seed contract: the same seed gives the same lines for
        this digit whatever other digits are generated with it."""
        step = (lambda d, n, b: on_step(n, b)) if on_step else None
        return self.generate_many([digit], candidates, keep, temperature, top_k, top_p, seed,
                                  classifier_temperature, step)[0]

    def complete(self, line_or_levels, rows: int = 15, samples: int = 6, temperature=0.8,
                 top_k=None, top_p=None, seed=0, label: int = 0, symbols: int | None = None,
                 on_step=None) -> list[str]:
        """Keep the first `rows` pixel rows (or `symbols` symbols) of a line or a 30x30 image and
        sample the rest, `samples` times -> full lines. on_step as in generate()."""
        step = (lambda j, n, b: on_step(n, b)) if on_step else None
        return self.complete_many([self._as_line(line_or_levels, label)], rows, samples,
                                  temperature, top_k, top_p, seed, symbols, step)[0]

    def complete_many(self, lines: list[str], rows: int = 15, samples: int = 6, temperature=0.8,
                      top_k=None, top_p=None, seed=0, symbols: int | None = None,
                      on_step=None) -> list[list[str]]:
        """complete() of several lines; line j samples from generator seed*100 + j.
        on_step(j, symbols_done, bodies)."""
        for line in lines:
            codec.check_line(line, self.bpp)
        n_sym = codec.n_symbols(self.bpp)
        keep = symbols if symbols is not None else rows * codec.SIDE * self.bpp // codec.SYMBOL_BITS
        if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep < n_sym:
            if symbols is None:
                raise ValueError(f"rows: expected 0..{codec.SIDE - 1}, got {rows!r}")
            raise ValueError(f"symbols: expected 0..{n_sym - 1}, got {symbols!r}")
        self._check_counts(samples, 1, "samples")
        prefixes = tk.encode_lines(self.tokenizer, [line[:1 + keep] for line in lines])
        step = None
        if on_step:
            step = lambda j, t, toks: self._report(toks, t, len(prefixes[j]) - 1 - keep,
                                                   lambda n, b: on_step(j, n, b))
        return sample.complete_prefixes(self.sampler, prefixes, samples,
                                        self.settings(temperature, top_k, top_p), seed,
                                        self.device, self.grammar, step)

    def classify(self, line_or_levels, label: int = 0) -> dict:
        """Class probabilities of an image: the character model's by Bayes' rule over the ten
        class prefixes (uniform prior), and the reranking CNN's."""
        line = self._as_line(line_or_levels, label)
        tokens = torch.tensor(tk.encode_lines(self.tokenizer, [line]))
        logp = metrics.class_logprobs(self.net, tokens, device=self.device, dtype=self.dtype)
        levels = codec.binarize(codec.decode(line, self.bpp)[1], self.bpp)
        cnn = probs(self.reranker, levels[None], 1.0)[0].numpy()
        return {"model": metrics.class_posterior(logp)[0], "cnn": cnn,
                "model_logp": logp[0]}

    def _as_line(self, line_or_levels, label: int) -> str:
        if isinstance(line_or_levels, str):
            codec.check_line(line_or_levels, self.bpp)
            return line_or_levels
        return encode(to_levels(line_or_levels), check_digit(label))

    def _check_counts(self, n, keep, what="candidates"):
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.max_candidates:
            raise ValueError(f"{what}: expected 1..{self.max_candidates}, got {n!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n:
            raise ValueError(f"keep: expected 1..{n} (the candidates), got {keep!r}")

    def _report(self, toks, t, offset, fn):
        """Call fn(symbols_done, bodies) once per pixel row from the sampler's per-token hook."""
        if self.grammar.is_character:
            done = t + offset                      # token t is symbol t (the digit is token 0)
            per_row = codec.SIDE * self.bpp // codec.SYMBOL_BITS
            if done % per_row == 0 or done == codec.n_symbols(self.bpp):
                fn(done, sample.tokens_to_lines(toks[:, 1:t + 1], self.grammar))
        else:
            bodies = [self.grammar.decode(r) for r in toks[:, 1:t + 1].tolist()]
            fn(max(len(b) for b in bodies), bodies)


def check_digit(d) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d <= 9:
        raise ValueError(f"digit: expected an integer 0..9, got {d!r}")
    return int(d)


def check_temperature(t) -> float:
    """0 (greedy) or 0.001..100: beyond those the softmax underflows or overflows."""
    ok = not isinstance(t, bool) and isinstance(t, (int, float)) and np.isfinite(t)
    if not ok or not (t == 0 or 0.001 <= t <= 100):
        raise ValueError(f"temperature: expected 0 (greedy) or a number in 0.001..100, got {t!r}")
    return float(t)


def check_top(top_k, top_p) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k: expected an integer >= 0, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 1e-6 <= top_p <= 1):
        raise ValueError(f"top_p: expected a number in 1e-6..1, got {top_p!r}")


def _folder(path, name: str) -> Path | None:
    """A checkpoint folder argument: None (the shipped one) or a non-empty path."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a folder path, got {path!r}")
    if not str(path).strip():
        raise ValueError(f"{name}: an empty path (None means the shipped one)")
    return Path(path)


def load(checkpoint_dir=None, classifier=None, device="auto", dtype="auto") -> Model:
    """The shipped model (or the checkpoint directory given) with the shipped reranker."""
    return Model(_folder(checkpoint_dir, "checkpoint_dir"), _folder(classifier, "classifier"),
                 device, dtype)


def examples() -> list[str]:
    """Test-split lines shipped with the package (the corpus is not in the wheel)."""
    return paths.examples_file().read_text(encoding="ascii").splitlines()
