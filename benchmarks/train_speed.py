"""Training throughput and model FLOPs utilisation (MFU) of the seed architecture.

    python benchmarks/train_speed.py                     # CPU, the dtype the trainer picks here
    python benchmarks/train_speed.py --procs 2           # DDP: one process per core (gloo)
    python benchmarks/train_speed.py --device cuda --batch-size 256

The dtype is the trainer's: --dtype auto asks runtime.use_bf16 (bf16 only where a training
step's matmuls measured faster in bf16 on this machine, machine.cpu_dtype_choice). MFU =
6 * params * tokens/s / (matmul peak), the peak measured by this script, in this run, in BOTH
dtypes (square matmuls), before and after the timed steps, and the highest taken: the machine's
best peak, so a run in the slower dtype cannot look efficient (divided by its own slow peak it
would). The run's own dtype's peak is reported beside it. With --procs N every process measures
its peaks at the same moment, with its own threads, and the peaks are summed: the machine's peak
as the run uses it.
Random tokens: speed does not depend on the data. The step is the trainer's (train.train_step:
micro-batches, fused AdamW, gradient clipping, as in the default recipe; `--recipe seed` itself
uses Adam without clipping), with the preset's dropout and the trainer's malloc settings.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from common import cpu_name, machine, matmul_peak, print_table, record, sync
from mnisttext.model import PRESETS, GPTConfig, GPT
from mnisttext.runtime import use_bf16 as runtime_use_bf16
from mnisttext.train import RECIPES, keep_freed_memory, make_optimizer, train_step


def measure(a, rank=0, world=1) -> dict:
    """Time a.steps training steps of this rank's share of the batch; then the matmul peak."""
    if a.device == "cpu" and a.malloc == "keep":
        keep_freed_memory()      # as the trainer does
    torch.manual_seed(0)
    cfg = GPTConfig(**PRESETS[a.preset])
    if a.dropout is not None:
        cfg.dropout = a.dropout
    if a.gelu is not None:
        cfg.gelu = a.gelu
    model = GPT(cfg).to(a.device).train()
    use_bf16 = runtime_use_bf16(a.device, a.dtype)
    fwd = torch.compile(model) if a.compile else model          # wrapped as the trainer does
    if world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(fwd)
    recipe = dict(RECIPES["default"], dtype="bf16" if use_bf16 else "fp32", grad_accum=a.grad_accum)
    opt = make_optimizer(model, recipe)
    x = torch.randint(0, cfg.vocab_size, (a.batch_size // world, cfg.block_size), device=a.device)

    def step():
        train_step(fwd, model, opt, x[:, :-1], x[:, 1:], recipe, torch.device(a.device))

    def barrier():
        if world > 1:
            dist.barrier()

    def peaks():        # both dtypes: fp32 and bf16
        return torch.tensor([matmul_peak(torch.float32, a.device), matmul_peak(torch.bfloat16, a.device)],
                            dtype=torch.float64)

    for _ in range(a.warmup):
        step()
    sync(a.device)
    barrier()
    before = peaks()
    barrier()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync(a.device)
    barrier()
    dt = (time.perf_counter() - t) / a.steps
    # the peaks are measured before and after the timed steps and the higher ones kept: a slow
    # moment of the machine during one measurement cannot inflate the MFU
    peak = torch.maximum(before, peaks())
    if world > 1:
        dist.all_reduce(peak)     # every rank measured at once: the peak of the whole machine
    return {"dt": dt, "peak_fp32": float(peak[0]), "peak_bf16": float(peak[1]),
            "params": model.num_params(), "use_bf16": use_bf16,
            "tokens_per_step": a.batch_size * (cfg.block_size - 1), "threads": torch.get_num_threads()}


def _worker(rank, world, a, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(a.threads_per_proc)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = measure(a, rank, world)
        if rank == 0:
            queue.put(res)
    finally:
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="seed", choices=sorted(PRESETS), help="model size")
    ap.add_argument("--batch-size", type=int, default=32, help="lines per step, all processes together")
    ap.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warmup)")
    ap.add_argument("--procs", type=int, default=1,
                    help="DDP processes (gloo, CPU); each gets the cores divided evenly")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="autocast")
    ap.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step on each process")
    ap.add_argument("--gelu", choices=["none", "tanh"], help="override the preset's GELU")
    ap.add_argument("--malloc", choices=["keep", "default"], default="keep",
                    help="keep: the trainer's malloc settings (keep_freed_memory); default: glibc's")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (as train --compile)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compiling happens here)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = cores / procs)")
    a = ap.parse_args()
    if a.batch_size % a.procs:
        ap.error(f"--batch-size {a.batch_size} is not divisible by --procs {a.procs}")
    if a.procs > 1:
        import socket
        import torch.multiprocessing as mp
        if a.device != "cpu":
            ap.error("--procs is for CPU runs (use torchrun on GPUs)")
        a.threads_per_proc = a.threads or max(1, torch.get_num_threads() // a.procs)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.SimpleQueue()
        mp.spawn(_worker, args=(a.procs, a, port, queue), nprocs=a.procs, join=True)
        m = queue.get()
    else:
        if a.threads:
            torch.set_num_threads(a.threads)
        m = measure(a)
    tok_s = m["tokens_per_step"] / m["dt"]
    n = m["params"]
    dtype = "bf16" if m["use_bf16"] else "fp32"
    peak = max(m["peak_fp32"], m["peak_bf16"])           # the machine's best: MFU's divisor
    best = "bf16" if m["peak_bf16"] >= m["peak_fp32"] else "fp32"
    mfu = 6 * n * tok_s / peak
    res = {"preset": a.preset, "batch_size": a.batch_size, "procs": a.procs, "dtype": dtype,
           "compile": a.compile, "malloc": a.malloc if a.device == "cpu" else None,
           "grad_accum": a.grad_accum,
           "dropout": a.dropout if a.dropout is not None else PRESETS[a.preset].get("dropout"),
           "gelu": a.gelu or GPTConfig(**PRESETS[a.preset]).gelu,
           "params": n, "tokens_per_s": tok_s, "seconds_per_step": m["dt"],
           "model_tflops": 6 * n * tok_s / 1e12, "peak_tflops": peak / 1e12, "peak_dtype": best,
           "peak_fp32_tflops": m["peak_fp32"] / 1e12, "peak_bf16_tflops": m["peak_bf16"] / 1e12,
           "mfu": mfu, "mfu_vs_own_dtype_peak": 6 * n * tok_s / m[f"peak_{dtype}"],
           "machine": dict(machine(a.device), threads=m["threads"] * a.procs)}
    print_table(f"train speed ({a.preset}, {dtype}, {a.device}, {a.procs} process(es)) on {cpu_name()}",
                [("params", n), ("batch", a.batch_size), ("processes", a.procs),
                 ("micro-batches per process", a.grad_accum),
                 ("threads per process", m["threads"]), ("tokens/s", tok_s),
                 ("s/step", m["dt"]), ("model TFLOP/s (6N)", res["model_tflops"]),
                 ("matmul peak TFLOP/s fp32 / bf16", f"{m['peak_fp32'] / 1e12:.3f} / {m['peak_bf16'] / 1e12:.3f}"),
                 (f"MFU (of the best peak, {best})", mfu),
                 (f"  of the {dtype} peak alone (not a measure of efficiency)", res["mfu_vs_own_dtype_peak"])])
    record("train_speed", res)


if __name__ == "__main__":
    main()
