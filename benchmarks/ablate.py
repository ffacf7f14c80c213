"""Model ablations at a fixed CPU budget: the flagship recipe beside each candidate change.

    taskset -c 1 python benchmarks/ablate.py                 # the whole batch, in order (resumable)
    taskset -c 1 python benchmarks/ablate.py --only canon6   # one run
    python benchmarks/ablate.py --list                       # the runs and which are done
    python benchmarks/ablate.py --report                     # table + plot from the results so far

Every run trains the flagship recipe (6x256 GPT, 4 heads, AdamW 2e-3, batch 32, 200 warmup
steps, cosine to 5%) with one change, for the same budget (--minutes, default 20) of **process
CPU time** on one thread, with the same seed (1337: the same data order), and is evaluated on
the full test split (10,000 lines) at the end; every --eval-every CPU seconds on the first 1,000
test lines for the curve. Evaluation is off the clock.

Runs go in the order of RUNS (the most informative first). A run whose result file exists is
skipped; a run that was killed is continued (`--resume`, the trainer's own resume, which keeps
the data order and schedule). Each run writes:
  runs/ablate/NAME/                       the training run (checkpoints, metrics.jsonl)
  benchmarks/results/ablate/NAME.json     its result (small, committed)
and after each run the table in docs/ablations.md (between the markers) and
docs/img/ablations.png are rewritten from all results so far.

The trainer is a frozen copy: at the first start the committed package (git HEAD) is copied to
runs/ablate/code/ with the working tree's model.py (the options under test), so every run of a
batch trains with the same trainer, however the working tree changes meanwhile. --refresh-code
takes a new copy. The committed trainer (c4666dc) counts wall-clock; the copy runs it with
time.process_time as its clock (what `train --clock cpu` does in the new trainer).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ablate"
DOC = ROOT / "docs" / "ablations.md"
PLOT = ROOT / "docs" / "img" / "ablations.png"
NOISE = 0.5      # nats: a smaller difference from the baseline is not counted as a gain or a loss
NEW = "combo_no_canon_gqa1"     # the new recipe: the new_* runs change one part of it
REFRESHED = ("new_ve", "new_unet", "new_muon")     # against new_ref (the same trainer copy)
ADDED = ("new_rope2d",) + REFRESHED                # a replacement or an addition, not a part left out
# runs measured against a reference run of their own trainer copy, not against the baseline
AGAINST = {"muon_shift": "muon_ref", "muon_shift02": "muon_ref", "small_shift": "small_ref",
           "muon_bpe": "muon_ref"}
BEGIN, END = "<!-- ablate:table:begin -->", "<!-- ablate:table:end -->"

# name, what it tests, GPTConfig fields, extra trainer flags. Most informative first. The batch
# reads this list again before each run, so runs added or moved here while it runs are taken up.
COMBO = dict(conv_kernel=6, rope="1d", qk_norm=True, act="relu2", zero_init_proj=True)


def without(key):
    return {k: v for k, v in COMBO.items() if k != key}


RUNS = [
    ("baseline", "the flagship recipe as shipped (learned positions, GELU, 6x256, 4 heads)", {}, []),
    ("combo", "canon6 + rope1d + qk_norm + relu2 + zero_init together", COMBO, []),
    ("canon6", "canon layers: causal depthwise conv, kernel 6 (reaches the symbol above), "
               "before attention and MLP", dict(conv_kernel=6), []),
    # leave-one-out from the combination: what each part adds there
    ("combo_no_canon", "the combination without canon layers", without("conv_kernel"), []),
    ("combo_no_canon_gqa1", "the combination without canon layers, one key/value head for the 4 "
     "query heads (the cheapest decode)", dict(without("conv_kernel"), n_kv_head=1), []),
    # leave-one-out from the new recipe (the combination without canon layers, one kv head)
    ("new_no_qk", "the new recipe without qk_norm", dict(without("conv_kernel"), n_kv_head=1,
                                                          qk_norm=False), []),
    ("new_no_rope", "the new recipe without rope (learned positions only)",
     dict(without("conv_kernel"), n_kv_head=1, rope="none"), []),
    ("new_gelu", "the new recipe with GELU instead of relu2", dict(without("conv_kernel"),
                                                                  n_kv_head=1, act="gelu"), []),
    ("new_rope2d", "the new recipe with rope by (pixel row, column) instead of token index",
     dict(without("conv_kernel"), n_kv_head=1, rope="2d"), []),
    # need a trainer copy made after these options existed (--refresh-code), measured against
    # the new recipe's own run again with that copy (new_ref), for a like-for-like reference
    ("new_ref", "the new recipe again, trained by the refreshed trainer copy (the reference of "
     "new_ve, new_unet and new_muon)", dict(without("conv_kernel"), n_kv_head=1), []),
    ("new_ve", "the new recipe with value embeddings (a per-layer token embedding added to the values)",
     dict(without("conv_kernel"), n_kv_head=1, value_embed=True), []),
    ("new_unet", "the new recipe with U-net skips (first half's outputs into the second half's inputs)",
     dict(without("conv_kernel"), n_kv_head=1, unet=True), []),
    ("new_muon", "the new recipe trained with Muon for the blocks' matrices (lr 0.02), AdamW for the rest",
     dict(without("conv_kernel"), n_kv_head=1), ["--optimizer", "muon"]),
    # Muon's learning rate, against new_muon (the same trainer copy)
    ("muon_lr04", "new_muon with the Muon matrices' peak lr at 0.04 (twice new_muon's)",
     dict(without("conv_kernel"), n_kv_head=1), ["--optimizer", "muon", "--muon-lr", "0.04"]),
    ("muon_lr01", "new_muon with the Muon matrices' peak lr at 0.01 (half new_muon's)",
     dict(without("conv_kernel"), n_kv_head=1), ["--optimizer", "muon", "--muon-lr", "0.01"]),
    # shift augmentation (Distribution Augmentation): needs a trainer copy with --shift-aug,
    # measured against new_muon again with that copy (muon_ref)
    ("muon_ref", "new_muon again, trained by the trainer copy with --shift-aug (the reference of "
     "muon_shift)", dict(without("conv_kernel"), n_kv_head=1), ["--optimizer", "muon"]),
    ("muon_shift", "new_muon with shift augmentation: each epoch half the lines moved by up to 2 "
     "pixels, the model told which shift (24 embeddings)", dict(without("conv_kernel"), n_kv_head=1),
     ["--optimizer", "muon", "--shift-aug", "0.5"]),
    ("muon_shift02", "muon_shift with a fifth of the lines moved instead of half",
     dict(without("conv_kernel"), n_kv_head=1), ["--optimizer", "muon", "--shift-aug", "0.2"]),
    # the same on 5,000 training lines (each seen ~6 times in the budget): a model that overfits
    ("small_ref", "new_muon on the first 5,000 training lines only (about 6 epochs in the budget)",
     dict(without("conv_kernel"), n_kv_head=1), ["--optimizer", "muon", "--train-limit", "5000"]),
    ("small_shift", "small_ref with shift augmentation (half the lines moved, as muon_shift)",
     dict(without("conv_kernel"), n_kv_head=1),
     ["--optimizer", "muon", "--train-limit", "5000", "--shift-aug", "0.5"]),
    # BPE tokens (a line of ~27 tokens instead of 152: more lines per CPU-second), against muon_ref
    ("muon_bpe", "new_muon with BPE tokens (--tokenizer bpe, 512: runs of symbols become one token)",
     dict(without("conv_kernel"), n_kv_head=1), ["--optimizer", "muon", "--tokenizer", "bpe"]),
    ("combo_gelu", "the combination with GELU instead of relu2 (no packing.py change needed)",
     without("act"), []),
    ("rope1d", "rotary q/k by token index (learned absolute positions kept)", dict(rope="1d"), []),
    ("combo_no_qk", "the combination without qk_norm (its cost: ~10% of a step)", without("qk_norm"), []),
    ("baseline_seed2", "the baseline with seed 2 (other init and data order): the noise of one run",
     {}, ["--seed", "2"]),
    ("combo_no_rope", "the combination without rope", without("rope"), []),
    ("combo_no_zero", "the combination without zero_init", without("zero_init_proj"), []),
    ("relu2", "ReLU squared in the MLP instead of GELU", dict(act="relu2"), []),
    ("qk_norm", "RMSNorm with a learned gain on queries and keys", dict(qk_norm=True), []),
    ("zero_init", "attention and MLP output projections start at zero", dict(zero_init_proj=True), []),
    ("combo_lr3e-3", "the combination at peak LR 3e-3 (qk_norm should tolerate it)", COMBO,
     ["--lr", "3e-3"]),
    ("canon6_a", "canon layer before attention only (half the cost of canon6)",
     dict(conv_kernel=6, conv_at="a"), []),
    ("combo_gqa1", "the combination with one key/value head for the 4 query heads (cheaper decoding)",
     dict(COMBO, n_kv_head=1), []),
    ("rope2d", "rotary q/k by (pixel row, column) of the symbol", dict(rope="2d"), []),
    ("bit_embed", "embedding of each symbol's 6 pixel bits added (an existing option)",
     dict(bit_embed=True), []),
]


def time_decode(fast) -> list[float]:
    """CPU seconds of 64 lines of 150 tokens through the sampler `fast`, one token at a time
    with the KV cache, three times. Runs in the batch's child processes too (child_code)."""
    import time                                                # (self-contained: see child_code)
    import torch                                               # (self-contained: see child_code)
    times = []
    with torch.inference_mode():
        for rep in range(3):
            g = torch.Generator().manual_seed(rep)
            t0 = time.process_time()
            cache = fast.new_cache(1)
            fast(torch.tensor([[3]]), kv_cache=cache)
            cache = cache.expand(64)
            for _ in range(150):
                fast(torch.randint(10, 74, (64, 1), generator=g), kv_cache=cache)
            times.append(time.process_time() - t0)
    return times


# read once, at import: inspect reads the file again at each call, and RUNS may have been edited
# (lines added above) while the batch runs, which would hand the child the wrong lines
TIME_DECODE_SOURCE = inspect.getsource(time_decode)


def child_code() -> str:
    """What each run executes (in a fresh process, from the frozen copy): the trainer, then
    time_decode (its source) on the frozen package's sampler."""
    return TIME_DECODE_SOURCE + r'''
import argparse, json, sys, time, types
from pathlib import Path
from mnisttext import train, checkpoint, packing
import torch
spec = json.loads(sys.argv[1])
assert Path(train.__file__).resolve().parents[1] == Path(spec["code"]).resolve(), train.__file__
options = spec["options"]
if hasattr(train, "plan_run"):        # a trainer with --clock cpu and a flag for each model field
    from mnisttext.cli import build_parser, train_cmds
    out = Path(spec["out"])
    argv = [x for x in spec["argv"] if x != "--resume" or (out / "last").exists() or (out / "last.old").exists()]
    # its budget includes its evaluations: a final one of 1,000 lines, like the periodic ones
    args = build_parser().parse_args(["train"] + argv + ["--clock", "cpu", "--final-eval-images", "1000"])
    recipe, flags = train_cmds.flags_of(args)
    flags["model"] = {**flags.get("model", {}), **options}      # the options under test
    result = train.train(train.plan_run(recipe, flags))
    # the full test split off the budget, as the old trainer's final evaluation was
    from mnisttext import data, metrics
    m, _, tok = checkpoint.load_model(out / "last")
    lines = torch.as_tensor(data.load_split(args.corpus, "test", tok))
    result["test_nll_nats"] = float(metrics.nll_per_image(m, lines).mean())
    result["eval_images"] = len(lines)
    result["test_bits_per_pixel"] = metrics.nats_to_bits_per_pixel(result["test_nll_nats"])
else:
    # the budget in this process's CPU time: the trainer's only clock is time.perf_counter
    train.time = types.SimpleNamespace(perf_counter=time.process_time, strftime=time.strftime,
                                       time=time.time)
    train.MODEL_FLAGS = tuple(train.MODEL_FLAGS) + tuple(k for k in options if k not in train.MODEL_FLAGS)
    p = train.add_args(argparse.ArgumentParser())
    cfg = train.resolve_args(p.parse_args(spec["argv"]))
    cfg.update(options)
    cfg["clock"] = "cpu (time.process_time)"
    result = train.train(cfg)
model, config, tok = checkpoint.load_model(Path(spec["out"]) / "last")
result["params"] = model.num_params()
result["config"] = config.to_dict()
# decode cost: 64 candidates, one token at a time over a whole line, as the sampler runs it
prepare = getattr(packing, "prepare_for_sampling", None)      # where the old trainer had it
if prepare is None:
    from mnisttext.tuning import prepare_for_sampling as prepare
times = time_decode(prepare(model, "auto"))
result["decode_cpu_s_64x150"] = min(times)
result["decode_cpu_s_all"] = times
Path(spec["result"]).write_text(json.dumps(result))
'''


def snapshot(code: Path, refresh: bool) -> None:
    """git HEAD's package + the working tree's model.py, once per batch."""
    pkg = code / "mnisttext"
    if pkg.exists() and not refresh:
        return
    if code.exists():
        shutil.rmtree(code)
    code.mkdir(parents=True)
    head = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    tar = subprocess.check_output(["git", "archive", "HEAD", "mnisttext"], cwd=ROOT)
    subprocess.run(["tar", "-x", "-C", str(code)], input=tar, check=True)
    shutil.copy(ROOT / "mnisttext" / "model.py", pkg / "model.py")
    (code / "SOURCE").write_text(f"git {head} + working-tree mnisttext/model.py, "
                                 f"copied {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")


def run_one(name: str, desc: str, options: dict, extra: list[str], a) -> bool:
    out = Path(a.out) / name
    tmp = out / "result.tmp.json"
    argv = ["--recipe", "flagship", "--out", str(out), "--resume", "--minutes", str(a.minutes),
            "--threads", "1", "--seed", str(a.seed), "--eval-every", str(a.eval_every),
            "--eval-images", str(a.eval_images), "--log-every", "20", "--save-every", "60",
            "--corpus", a.corpus] + extra
    spec = dict(argv=argv, options=options, out=str(out), result=str(tmp),
                code=str(Path(a.out).resolve() / "code"))
    env = dict(os.environ, PYTHONPATH=str(Path(a.out).resolve() / "code"), OMP_NUM_THREADS="1")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {desc}", flush=True)
    if tmp.exists():      # the run finished, its record was not written (the batch was stopped)
        rc = 0
    else:
        rc = subprocess.run([sys.executable, "-P", "-c", child_code(), json.dumps(spec)], cwd=ROOT,
                            env=env).returncode
    if rc != 0 or not tmp.exists():
        print(f"[{time.strftime('%H:%M:%S')}] {name}: FAILED (exit status {rc})", flush=True)
        return False
    r = json.loads(tmp.read_text())
    curve = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "test_nll_subset" in rec:
            curve.append([rec["train_seconds"], rec["test_nll_subset"]])
    rec = {"name": name, "description": desc, "options": options, "extra_flags": extra,
           "recipe": "flagship", "budget_cpu_minutes": a.minutes,
           "seed": int(extra[extra.index("--seed") + 1]) if "--seed" in extra else a.seed,
           "clock": "process CPU time, 1 thread", "test_nll_nats": r["test_nll_nats"],
           "test_bits_per_pixel": r["test_bits_per_pixel"], "eval_images": r["eval_images"],
           "steps": r["step"], "tokens": r["tokens"], "train_cpu_seconds": r["train_seconds"],
           "params": r["params"], "config": r["config"],
           "decode_cpu_s_64x150": r["decode_cpu_s_64x150"], "decode_cpu_s_all": r["decode_cpu_s_all"],
           "curve_subset": {"eval_images": a.eval_images, "points": curve},
           "wall_seconds": round(time.time() - t0, 1),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "code": (Path(a.out) / "code" / "SOURCE").read_text().strip()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rec, indent=1) + "\n")
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {r['test_nll_nats']:.2f} nats/image, "
          f"{r['step']} steps", flush=True)
    return True


def load_results() -> dict:
    order = [n for n, *_ in RUNS]
    res = {p.stem: json.loads(p.read_text()) for p in RESULTS.glob("*.json")}
    return dict(sorted(res.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))


def report() -> None:
    res = load_results()
    if not res:
        print("no results yet")
        return
    base = res.get("baseline")
    key = "decode_cpu_s_64x150_current" if all("decode_cpu_s_64x150_current" in x for x in res.values()) \
        else "decode_cpu_s_64x150"
    rows = ["| run | change | verdict | test NLL, nats/image (all 10,000 lines) | vs baseline | "
            "steps | tokens per CPU-s | decode CPU time vs baseline |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        d = r["test_nll_nats"] - base["test_nll_nats"] if base and name != "baseline" else None
        combo = res.get("combo")
        if d is None:
            verdict = "reference"
        elif name == NEW:
            verdict = "**the new recipe**" + (f" ({r['test_nll_nats'] - combo['test_nll_nats']:+.2f} vs combo)"
                                              if combo else "")
        elif name == "new_ref" and NEW in res:
            verdict = f"{r['test_nll_nats'] - res[NEW]['test_nll_nats']:+.2f} vs the new recipe's first run"
        elif name.startswith("new_") and NEW in res:
            ref = "new_ref" if name in REFRESHED and "new_ref" in res else NEW
            dn = r["test_nll_nats"] - res[ref]["test_nll_nats"]
            good, bad = ("better: keep", "worse: drop") if name in ADDED else ("drop the part", "keep the part")
            verdict = f"{dn:+.2f} vs {'new_ref' if ref == 'new_ref' else 'new recipe'}: " + (
                good if dn <= -NOISE else bad if dn >= NOISE else "within noise")
        elif name == "muon_ref" and "new_muon" in res:
            verdict = f"{r['test_nll_nats'] - res['new_muon']['test_nll_nats']:+.2f} vs new_muon's run"
        elif name in AGAINST and AGAINST[name] in res:
            ref = AGAINST[name]
            dm = r["test_nll_nats"] - res[ref]["test_nll_nats"]
            verdict = f"{dm:+.2f} vs {ref}: " + ("better" if dm <= -NOISE else "worse"
                                                if dm >= NOISE else "within noise")
        elif name == "small_ref" and "muon_ref" in res:
            verdict = f"{r['test_nll_nats'] - res['muon_ref']['test_nll_nats']:+.2f} vs muon_ref (all lines)"
        elif name.startswith("muon_") and "new_muon" in res:
            dm = r["test_nll_nats"] - res["new_muon"]["test_nll_nats"]
            verdict = f"{dm:+.2f} vs new_muon: " + ("better" if dm <= -NOISE else "worse" if dm >= NOISE
                                                    else "within noise")
        elif name.startswith("baseline"):
            verdict = "noise estimate"
        elif name.startswith("combo_") and combo and set(r["options"]) < set(combo["options"]):
            # leave-one-out: the part left out is kept if the combination is worse without it
            dc = r["test_nll_nats"] - combo["test_nll_nats"]
            verdict = (f"{dc:+.2f} vs combo: " + ("keep the part" if dc >= NOISE else
                       "the part does not help" if dc > -NOISE else "drop the part"))
        elif len(r["options"]) > 1 or r["extra_flags"]:
            d_c = r["test_nll_nats"] - combo["test_nll_nats"] if combo and name != "combo" else None
            verdict = "combination" + ("" if d_c is None else f" ({d_c:+.2f} vs combo)")
        else:
            verdict = "kept" if d <= -NOISE else "dropped" + (" (within noise)" if d < NOISE else "")
        dec = f"{r[key] / base[key]:.2f}x" if base else ""
        rows.append(f"| {name} | {r['description']} | {verdict} | {r['test_nll_nats']:.2f} | "
                    f"{'' if d is None else f'{d:+.2f}'} | {r['steps']} | "
                    f"{r['tokens'] / r['train_cpu_seconds']:,.0f} | {dec} |")
    table = "\n".join(rows)
    print(table)
    if DOC.exists():
        text = DOC.read_text()
        if BEGIN in text and END in text:
            a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
            DOC.write_text(text[:a] + "\n" + table + "\n" + text[b:])
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, r in res.items():
            pts = r["curve_subset"]["points"]
            line, = ax.plot([s / 60 for s, _ in pts], [v for _, v in pts], marker=".",
                            lw=2.5 if name == "baseline" else 1.2, label=f"{name} ({r['test_nll_nats']:.1f})",
                            color="black" if name == "baseline" else None)
            ax.plot([r["train_cpu_seconds"] / 60], [r["test_nll_nats"]], marker="*", ms=10,
                    color=line.get_color())
        ax.set_xlabel("training CPU minutes (one thread)")
        ax.set_ylabel("test NLL, nats/image")
        ax.set_title("flagship recipe, one change each (curve: first 1,000 test lines; star: all 10,000)",
                     fontsize=9)
        lo = min(r["test_nll_nats"] for r in res.values())
        ax.set_ylim(lo - 3, lo + 40)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        PLOT.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(PLOT, dpi=110, bbox_inches="tight")
    except Exception as e:       # a missing plot must not stop the batch
        print(f"plot skipped: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="CPU-minute budget per run")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--eval-every", type=float, default=150.0, help="CPU seconds between curve points")
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "runs" / "ablate"))
    ap.add_argument("--corpus", default="corpus", help="train.txt and test.txt (smoke tests: a smaller one)")
    ap.add_argument("--results", help="result JSONs (default benchmarks/results/ablate; smoke tests: elsewhere)")
    ap.add_argument("--only", help="comma-separated run names")
    ap.add_argument("--list", action="store_true", help="list the runs and which are done")
    ap.add_argument("--report", action="store_true", help="only rewrite the table and plot")
    ap.add_argument("--refresh-code", action="store_true", help="copy the trainer again")
    ap.add_argument("--redecode", action="store_true",
                    help="measure every finished run's decode cost again with the current package")
    ap.add_argument("--after-pid", type=int, help="wait for this process (a run of a stopped batch) to end")
    a = ap.parse_args()
    if a.results:
        global RESULTS, DOC, PLOT
        RESULTS = Path(a.results)
        DOC, PLOT = RESULTS / "ablations.md", RESULTS / "ablations.png"
    done = set(load_results())
    if a.list:
        for name, desc, opts, extra in RUNS:
            print(f"{'done' if name in done else '    '}  {name:<10} {opts} {extra}  {desc}")
        return
    if a.report:
        report()
        return
    if a.redecode:
        redecode(Path(a.out))
        report()
        return
    names = a.only.split(",") if a.only else [n for n, *_ in RUNS]
    unknown = set(names) - {n for n, *_ in RUNS}
    if unknown:
        sys.exit(f"unknown runs: {sorted(unknown)}")
    while a.after_pid and Path(f"/proc/{a.after_pid}").exists():
        time.sleep(10)
    snapshot(Path(a.out) / "code", a.refresh_code)
    print(f"trainer: {(Path(a.out) / 'code' / 'SOURCE').read_text().strip()}", flush=True)
    tried = set()
    while True:
        runs = current_runs() if not a.only else RUNS
        todo = [r for r in runs if r[0] in (names if a.only else [n for n, *_ in runs])
                and r[0] not in load_results() and r[0] not in tried]
        if not todo:
            break
        name, desc, opts, extra = todo[0]
        tried.add(name)
        if not run_one(name, desc, opts, extra, a):
            print(f"{name}: retrying once (resume)", flush=True)
            run_one(name, desc, opts, extra, a)
        report()


def decode_cost(model) -> list[float]:
    """time_decode through the current package's bf16 sampler (what each run measured at its
    end, with its frozen copy)."""
    from mnisttext.tuning import prepare_for_sampling          # (the current package's sampler)
    return time_decode(prepare_for_sampling(model, "bf16"))


def redecode(out: Path) -> None:
    """decode_cpu_s_64x150_current for every result whose run's last/ is here."""
    import torch                                               # (only this subcommand needs it)
    from mnisttext import checkpoint                           # (the current package's loader)
    torch.set_num_threads(1)
    head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    for path in sorted(RESULTS.glob("*.json")):
        rec = json.loads(path.read_text())
        last = out / rec["name"] / "last"
        if not last.exists():
            print(f"{rec['name']}: no checkpoint at {last}, skipped")
            continue
        model = checkpoint.load_model(last)[0]
        times = decode_cost(model)
        rec.update(decode_cpu_s_64x150_current=min(times), decode_cpu_s_all_current=times,
                   decode_current_code=f"git {head}")
        path.write_text(json.dumps(rec, indent=1) + "\n")
        print(f"{rec['name']}: {min(times):.3f} s (frozen trainer's code: {rec['decode_cpu_s_64x150']:.3f} s)")


def current_runs() -> list:
    """RUNS as the file says now (edited while the batch runs), or as loaded if it no longer loads."""
    import runpy
    try:
        return runpy.run_path(__file__)["RUNS"]
    except Exception as e:
        print(f"{__file__} does not load ({e}); keeping the list I have", flush=True)
        return RUNS


if __name__ == "__main__":
    main()
