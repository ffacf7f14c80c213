"""The main job's speed: `generate --digits 0-9` (64 candidates a digit, reranked) with the shipped
model, against the FLOP floor, against the matmul peak, and against the previous release.

    python benchmarks/sample_speed.py                   # everything, in one run (~1.5 min, CPU)
    python benchmarks/sample_speed.py --no-old          # without the old release
    python benchmarks/sample_speed.py --checkpoint runs/x/best --candidates 32 --no-cache-repeats 1
    python benchmarks/sample_speed.py --device cuda     # on a GPU (no old release, no CPU plan)

In one run, on this machine:
- the decode plan is measured afresh (tuning.decode_plan: dtype, workers and threads, the keys'
  and values' storage, rows per batch), as a first use would, and its cost reported;
- all ten digits in one decode, reranked (what `generate --digits 0-9` does after loading), timed
  --repeats times;
- each digit alone (64 candidates + rerank), whose lines must equal the batched run's: the seed
  contract holds and batching changes nothing;
- the old release (git commit --old-commit, its own CLI in a subprocess from a temporary
  `git archive`), its "N digits in X s" line, --old-repeats times, interleaved with the above;
- the FLOP floor, 2 x params x generated tokens over the best matmul peak of this run (fp32,
  bf16 or, on a CPU, int8: whichever is fastest here, square matmuls on all cores), the ratio to
  it, and the fraction of that peak the decode achieves.
Timings are wall clock; every printed figure names the CPU (and the GPU with --device cuda, where
the dtype is bf16 where the GPU has it and the peak is the GPU's). Results go to
benchmarks/history.jsonl.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, cpu_name, machine, matmul_peak, print_table, record, sync
from mnisttext import checkpoint, kvcache, sample
from mnisttext import tuning
from mnisttext import tokenizer as tk
from mnisttext.classifier import load_classifier
from mnisttext.codec import bpp_of_length
from mnisttext.tuning import prepare_for_sampling

OLD_COMMIT = "a91493b"        # the release before the batched decoder


def old_release(commit: str, tmp: Path) -> Path:
    """The old release's tree in tmp (git archive: no worktree bookkeeping in this repository)."""
    tree = tmp / "old"
    tree.mkdir()
    tar = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=tar, check=True)
    return tree


def run_old(tree: Path, tmp: Path, digits: str) -> dict:
    """One `python cli.py generate --digits ...` of the old release: its own timing line, and the
    process's wall time (Python start and model loading included)."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "cli.py", "generate", "--digits", digits, "--img-dir",
                        str(tmp / "old_img")], cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"old release failed:\n{r.stderr[-2000:]}")
    m = re.search(r"(\d+) digits? in ([\d.]+) s", r.stderr + r.stdout)
    if not m:
        raise RuntimeError(f"no timing line in the old release's output:\n{r.stderr[-2000:]}")
    return {"generate_s": float(m.group(2)), "process_s": wall}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "gpt"), help="character model dir")
    ap.add_argument("--classifier", default=str(ROOT / "checkpoints" / "classifier"), help="reranker dir")
    ap.add_argument("--candidates", type=int, default=64, help="candidates per digit")
    ap.add_argument("--keep", type=int, default=8, help="lines kept per digit by the reranker")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of all ten digits")
    ap.add_argument("--old-repeats", type=int, default=2, help="runs of the old release")
    ap.add_argument("--no-old", action="store_true", help="skip the old release")
    ap.add_argument("--old-commit", default=OLD_COMMIT, help="the release to compare with")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32", "int8"], default="auto",
                    help="sampler dtype")
    ap.add_argument("--keep-plan", action="store_true", help="use the cached decode plan, do not re-measure")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda implies --no-old)")
    ap.add_argument("--no-cache-repeats", type=int, default=0,
                    help="also time one digit this many times without the KV cache (recomputing the prefix)")
    return ap.parse_args()


class Job:
    """The shipped pieces loaded once, the decode plan measured (as a first use would), and
    what `generate --digits ...` does between loading and saving pictures, timed."""

    def __init__(self, a):
        self.a, self.dev = a, torch.device(a.device)
        self.gpu = self.dev.type == "cuda"
        t0 = time.perf_counter()
        self.native = False if self.gpu else kvcache.native_attend() is not None
        self.native_s = time.perf_counter() - t0
        self.model, self.cfg, tok = checkpoint.load_model(a.checkpoint, self.dev)
        self.grammar = tk.Grammar.of(tok)
        self.bpp = bpp_of_length(self.cfg.block_size)
        self.clf, _ = load_classifier(a.classifier, self.dev)
        t0 = time.perf_counter()
        self.plan_entry = {}
        if not a.keep_plan and not self.gpu:
            from mnisttext.packing import build_sampler
            self.plan_entry = tuning.decode_plan(self.model, build_sampler, refresh=True)
        self.sampler = prepare_for_sampling(self.model, a.dtype)
        self.plan_s = time.perf_counter() - t0
        self.settings = sample.SampleSettings(temperature=0.8, bpp=self.bpp)

    def __call__(self, ds, settings=None, rerank=True):
        sync(self.dev)
        t = time.perf_counter()
        lines = sample.sample_digits(self.sampler, ds, self.a.candidates, settings or self.settings,
                                     self.a.seed, self.dev, self.grammar)
        for d in ds if rerank else ():
            sample.rerank(d, lines[d], self.clf, self.a.keep, 0.8, self.bpp)
        sync(self.dev)
        return time.perf_counter() - t, lines


def timed_runs(a, job) -> tuple[list, dict, list, list]:
    """All ten digits --repeats times, each digit alone once, the old release --old-repeats
    times (interleaved), one digit without the cache --no-cache-repeats times."""
    digits = list(range(10))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree = None if a.no_old or job.gpu else old_release(a.old_commit, tmp)
        job([3])                                              # warm up (oneDNN kernels, pages)
        batched, single, old = [], {}, []
        lines_batched = None
        for rep in range(max(a.repeats, a.old_repeats if tree else 0)):
            if tree and rep < a.old_repeats:
                old.append(run_old(tree, tmp, "0-9"))
            if rep < a.repeats:
                dt, lines_batched = job(digits)
                batched.append(dt)
            if rep == 0:
                for d in digits:                               # each digit alone
                    dt, alone = job([d])
                    single[d] = (dt, alone[d] == lines_batched[d])
    no_cache_settings = sample.SampleSettings(0.8, use_cache=False, bpp=job.bpp)
    no_cache = [job([3], no_cache_settings, rerank=False)[0] for _ in range(a.no_cache_repeats)]
    return batched, single, old, no_cache


def results(a, job, batched, single, old, no_cache) -> dict:
    plan = job.sampler.decode_plan
    med = statistics.median(batched)
    # the machine's peak: square matmuls on all its cores (torch's threads) or the GPU, each
    # dtype (int8 on a CPU: the sampler's int8 linear layers); the floor takes the best of them
    peaks = {d: matmul_peak(dt, job.dev) for d, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    if not job.gpu:
        peaks["int8"] = matmul_peak(torch.int8, job.dev)
    peak_dtype = max(peaks, key=peaks.get)
    n = job.model.num_params()
    steps = job.cfg.block_size - 1                  # tokens generated after the class digit
    flops = 2 * n * a.candidates * 10 * steps
    floor = flops / peaks[peak_dtype]
    lead, tail = job.grammar.forced_padding(job.bpp)
    model_tokens = steps - 1 - lead - tail          # positions sampled from the model's logits
    old_med = statistics.median(o["generate_s"] for o in old) if old else None
    return {"checkpoint": a.checkpoint, "cpu": cpu_name(), "device": str(job.dev),
            "gpu": torch.cuda.get_device_name(job.dev) if job.gpu else None, "params": n,
            "candidates": a.candidates, "digits": 10, "native_attention": job.native,
            "native_build_s": job.native_s, "plan": plan, "plan_s": job.plan_s,
            # the plan's timed decode steps (s per step by config and rows): why it chose as it did
            "plan_step_s": job.plan_entry.get(plan["dtype"], {}).get("step_s"),
            "threads": plan.get("threads") or torch.get_num_threads(), "workers": plan.get("workers") or 1,
            "ten_digits_s": med, "ten_digits_runs_s": batched,
            "one_digit_median_s": statistics.median(dt for dt, _ in single.values()),
            "one_digit_s": {d: dt for d, (dt, _) in single.items()},
            "identical_batched_vs_alone": all(same for _, same in single.values()),
            "flops": flops, "peak_tflops": {k: v / 1e12 for k, v in peaks.items()},
            "peak_dtype": peak_dtype, "flop_floor_s": floor, "ratio_to_floor": med / floor,
            "fraction_of_peak": floor / med, "model_tokens_per_line": model_tokens,
            "fraction_of_peak_model_tokens": floor * model_tokens / steps / med,
            "old_commit": None if not old else a.old_commit, "old_runs": old,
            "old_ten_digits_s": old_med, "speedup_vs_old": old_med / med if old_med else None,
            "no_cache_one_digit_s": no_cache, "machine": machine(job.dev)}


def table(a, res) -> list[tuple[str, object]]:
    plan, med = res["plan"], res["ten_digits_s"]
    rows = [("CPU", f"{res['cpu']}, {res['machine']['cpus']} cores")]
    rows += [("GPU", res["gpu"])] if res["gpu"] else []
    rows += [
        ("decode plan", f"{plan['dtype']} ({plan.get('kv', 'model')} keys/values), {res['workers']} "
                        f"worker(s) x {res['threads']} thread(s), up to {plan['rows']} rows a batch, "
                        f"rows batch-independent: {plan['row_invariant']}"),
        ("plan measured in s (first use)", res["plan_s"]),
        ("native attention kernel", res["native_attention"]),
        (f"all 10 digits, s (median of {len(res['ten_digits_runs_s'])})", med),
        ("  runs", ", ".join(f"{x:.2f}" for x in res["ten_digits_runs_s"])),
        ("one digit alone, s (median of 10)", res["one_digit_median_s"]),
        ("batched lines == each digit alone", res["identical_batched_vs_alone"]),
        ("FLOP floor s (2 x params x 151 tokens a line / peak)", res["flop_floor_s"]),
        ("ratio to floor", res["ratio_to_floor"]),
        (f"matmul peak TFLOP/s ({' / '.join(res['peak_tflops'])}, "
         f"{a.device if res['gpu'] else f'{torch.get_num_threads()} threads'})",
         " / ".join(f"{v:.3f}" for v in res["peak_tflops"].values())),
        (f"fraction of the {res['peak_dtype']} peak achieved", res["fraction_of_peak"]),
        (f"  counting only the {res['model_tokens_per_line']} tokens a line the model runs",
         res["fraction_of_peak_model_tokens"])]
    if res["old_runs"]:
        rows += [(f"old release {a.old_commit}: 10 digits, s (its own line)", res["old_ten_digits_s"]),
                 ("  runs (its line / whole process)",
                  ", ".join(f"{o['generate_s']:.2f}/{o['process_s']:.2f}" for o in res["old_runs"])),
                 ("speed-up over the old release", res["speedup_vs_old"])]
    if res["no_cache_one_digit_s"]:
        rows.append(("one digit without the KV cache, s (median)", statistics.median(res["no_cache_one_digit_s"])))
    return rows


def main():
    a = parse_args()
    job = Job(a)
    res = results(a, job, *timed_runs(a, job))
    where = f"{res['gpu']} (host CPU {res['cpu']})" if res["gpu"] else res["cpu"]
    shipped = Path(a.checkpoint).resolve() == (ROOT / "checkpoints" / "gpt").resolve()
    print_table(f"generate --digits 0-9, {a.candidates} candidates + rerank, "
                f"{'shipped model' if shipped else a.checkpoint}, on {where}", table(a, res))
    record("sample_speed", res)
    if not res["identical_batched_vs_alone"]:
        print("ERROR: batched lines differ from each digit alone", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
