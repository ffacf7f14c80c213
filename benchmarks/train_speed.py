"""Training throughput and model FLOPs utilisation (MFU) of the seed architecture.

    python benchmarks/train_speed.py                     # CPU, bf16 autocast where available
    python benchmarks/train_speed.py --device cuda --batch-size 256

MFU = 6 * params * tokens/s / (matmul peak), the peak measured by this script, in this run, at
the same dtype (square matmuls). Random tokens: speed does not depend on the data.
"""
from __future__ import annotations

import argparse
import time

import torch

from common import machine, matmul_peak, print_table, record, sync
from mnisttext.evaluate import autocast, bf16_supported
from mnisttext.model import PRESETS, GPTConfig, GPT


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="seed", choices=sorted(PRESETS), help="model size")
    ap.add_argument("--batch-size", type=int, default=32, help="lines per step")
    ap.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warmup)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="autocast")
    ap.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = GPTConfig(**PRESETS[a.preset])
    if a.dropout is not None:
        cfg.dropout = a.dropout
    model = GPT(cfg).to(a.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    use_bf16 = a.dtype == "bf16" or (a.dtype == "auto" and bf16_supported(a.device))
    x = torch.randint(0, cfg.vocab_size, (a.batch_size, cfg.block_size), device=a.device)

    def step():
        with autocast(a.device, "bf16" if use_bf16 else "fp32"):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    sync(a.device)
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync(a.device)
    dt = (time.perf_counter() - t) / a.steps
    tok_s = a.batch_size * (cfg.block_size - 1) / dt
    peak = matmul_peak(torch.bfloat16 if use_bf16 else torch.float32, a.device)
    n = model.num_params()
    mfu = 6 * n * tok_s / peak
    res = {"preset": a.preset, "batch_size": a.batch_size, "dtype": "bf16" if use_bf16 else "fp32",
           "params": n, "tokens_per_s": tok_s, "seconds_per_step": dt,
           "model_tflops": 6 * n * tok_s / 1e12, "peak_tflops": peak / 1e12, "mfu": mfu,
           "machine": machine(a.device)}
    print_table(f"train speed ({a.preset}, {res['dtype']}, {a.device})",
                [("params", n), ("batch", a.batch_size), ("tokens/s", tok_s),
                 ("s/step", dt), ("model TFLOP/s (6N)", res["model_tflops"]),
                 ("measured matmul peak TFLOP/s", res["peak_tflops"]), ("MFU", mfu)])
    record("train_speed", res)


if __name__ == "__main__":
    main()
