"""Generate-and-rerank latency: 64 candidates of one digit with the seed architecture, reranked.

    python benchmarks/sample_speed.py                   # CPU
    python benchmarks/sample_speed.py --device cuda

Reports the median over --repeats runs with the KV cache, the same without it (--no-cache
recomputes the whole prefix at every step), their ratio, and the FLOP floor: 2 * params *
generated tokens over the matmul peak measured in this run. Random weights of the seed
architecture (speed does not depend on them); the shipped reranker when present.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common import machine, matmul_peak, print_table, record, sync
from mnisttext import codec, sample
from mnisttext.evaluate import bf16_supported
from mnisttext.model import PRESETS, GPTConfig, GPT


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="seed", choices=sorted(PRESETS), help="model size")
    ap.add_argument("--checkpoint", default=None, help="time a trained model dir instead")
    ap.add_argument("--classifier", default="checkpoints/classifier", help="reranker dir")
    ap.add_argument("--candidates", type=int, default=64, help="candidates per digit")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs with the cache")
    ap.add_argument("--no-cache-repeats", type=int, default=2, help="timed runs without it")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="autocast")
    a = ap.parse_args()
    torch.manual_seed(0)
    grammar = None               # the checkpoint's own tokens (BPE lines are shorter)
    if a.checkpoint:
        from mnisttext.checkpoint import load_model
        from mnisttext.tokenizer import Grammar
        model, cfg, tok = load_model(a.checkpoint, a.device)
        grammar = Grammar.of(tok)
    else:
        cfg = GPTConfig(**PRESETS[a.preset])
        model = GPT(cfg).to(a.device).eval()
    clf = None
    if Path(a.classifier).exists():
        from mnisttext.classifier import load_classifier
        clf, _ = load_classifier(a.classifier, a.device)
    dtype = "bf16" if a.dtype == "bf16" or (a.dtype == "auto" and bf16_supported(a.device)) else "fp32"
    n = model.num_params()
    vocab = model.config.vocab_size
    model = sample.for_sampling(model, dtype)          # weights cast once (and prepacked), no autocast

    steps = []

    def once(use_cache, seed):
        sync(a.device)
        t = time.perf_counter()
        gen = sample.make_generator(seed, a.device)
        st = sample.SampleSettings(temperature=0.8, use_cache=use_cache)
        toks = sample.generate(model, [3], a.candidates, gen, st, a.device, "fp32", grammar=grammar)
        steps.append(toks.shape[1] - 2)      # decode steps run (BPE: the longest candidate)
        lines = sample.tokens_to_lines(toks, grammar)
        if clf is not None:
            sample.rerank(3, lines, clf, 8, 0.8)
        else:
            codec.decode_batch(lines)
        sync(a.device)
        return time.perf_counter() - t

    once(True, 999)                                   # warm up
    cached = [once(True, s) for s in range(a.repeats)]
    uncached = [once(False, s) for s in range(a.no_cache_repeats)]
    med, med_nc = statistics.median(cached), statistics.median(uncached)
    peak = matmul_peak(torch.bfloat16 if dtype == "bf16" else torch.float32, a.device)
    tokens = a.candidates * statistics.median(steps)
    floor = 2 * n * tokens / peak
    res = {"preset": a.checkpoint or a.preset, "params": n, "vocab_size": vocab, "candidates": a.candidates,
           "gelu": cfg.gelu,
           "decode_steps": statistics.median(steps),
           "dtype": dtype, "reranked": clf is not None, "median_s": med, "runs_s": cached,
           "no_cache_median_s": med_nc, "speedup_vs_no_cache": med_nc / med,
           "flop_floor_s": floor, "ratio_to_floor": med / floor, "peak_tflops": peak / 1e12,
           "machine": machine(a.device)}
    print_table(f"generate-and-rerank, {a.candidates} candidates ({res['preset']}, {dtype}, {a.device})",
                [("vocabulary (76 = characters)", vocab), ("decode steps (median)", statistics.median(steps)),
                 ("median s (KV cache)", med), ("median s (--no-cache)", med_nc),
                 ("speed-up from the cache", med_nc / med), ("FLOP floor s", floor),
                 ("ratio to floor", med / floor), ("matmul peak TFLOP/s", peak / 1e12)])
    record("sample_speed", res)


if __name__ == "__main__":
    main()
