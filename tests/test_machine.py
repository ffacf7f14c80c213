"""The machine plan: measured dtype choices (training, decoding), the decode plan's choices from
its timings, the cache file (never in the user's home here), overrides, and the native kernel's
build. No timing assertions: the timings are faked where a choice is tested."""
import json

import pytest
import torch

from mnisttext import env, kvcache, machine, runtime, sample, tuning
from mnisttext.model import PRESETS, GPTConfig, build_model
from mnisttext.packing import build_sampler
from mnisttext.tuning import prepare_for_sampling


@pytest.fixture(autouse=True)
def machine_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MNISTTEXT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNISTTEXT_DTYPE", raising=False)
    monkeypatch.setattr(machine, "_memo", {})
    return tmp_path / "cache" / "machine.json"


def tiny():
    torch.manual_seed(0)
    return build_model(GPTConfig(**PRESETS["tiny"])).eval()


def test_the_cache_lives_where_mnisttext_cache_says(machine_cache):
    assert machine.cache_path() == machine_cache
    assert machine.cpu_dtype_choice() in ("bf16", "fp32")
    entry = json.loads(machine_cache.read_text())
    (key, value), = entry.items()
    assert key.startswith("train|") and machine.cpu_model() in key
    assert value["choice"] in ("bf16", "fp32") and value["fp32_flops"] > 0


def test_the_training_choice_is_measured_once_then_read(monkeypatch, machine_cache):
    calls = []
    monkeypatch.setattr(machine, "measure_cpu_dtype",
                        lambda: calls.append(1) or {"fp32_flops": 1.0, "bf16_flops": 3.0, "choice": "bf16"})
    assert machine.cpu_dtype_choice() == "bf16"
    monkeypatch.setattr(machine, "_memo", {})            # a new process: the file answers
    assert machine.cpu_dtype_choice() == "bf16" and calls == [1]


def test_bf16_must_win_by_the_margin(monkeypatch):
    for fp32, bf16, want in ((100.0, 105.0, "fp32"), (100.0, 50.0, "fp32"), (100.0, 300.0, "bf16")):
        monkeypatch.setattr(machine, "train_step_flops", lambda b, fp32=fp32, bf16=bf16: bf16 if b else fp32)
        assert machine.measure_cpu_dtype()["choice"] == want


def test_forced_dtypes(monkeypatch):
    assert runtime.use_bf16("cpu", "bf16") and not runtime.use_bf16("cpu", "fp32")
    monkeypatch.setenv("MNISTTEXT_DTYPE", "fp32")
    assert machine.cpu_dtype_choice() == "fp32" and not runtime.use_bf16("cpu", "auto")
    with runtime.autocast("cpu", "auto"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError):
        runtime.use_bf16("cpu", "fp16")
    monkeypatch.setenv("MNISTTEXT_DTYPE", "fp61")       # a typo is refused, not taken as auto
    with pytest.raises(ValueError, match="MNISTTEXT_DTYPE='fp61': expected fp32, bf16, int8 or auto"):
        machine.cpu_dtype_choice()
    monkeypatch.setenv("MNISTTEXT_DTYPE", "Auto")
    assert env.forced_dtype() is None


def fake_steps(monkeypatch, times, int8=1.0):
    """time_decode_step answers from times[(dtype, workers, threads)] = (s at 64 rows, s at 256),
    times `int8` with int8 keys and values."""
    def step(model, rows, pos=None, workers=1, reps=2, int8=False, factor=int8):
        dtype = "bf16" if next(model.parameters()).dtype == torch.bfloat16 else "fp32"
        t64, t256 = times[(dtype, workers, torch.get_num_threads())]
        return (t64 if rows == 64 else t256) * (factor if int8 else 1.0)
    monkeypatch.setattr(tuning, "time_decode_step", step)
    monkeypatch.setattr(tuning, "DECODE_ROWS", (64, 256))


def test_the_decode_plan_follows_the_timings(monkeypatch):
    model = tiny()
    configs = [(1, 1), (1, 2), (2, 1)]
    fake_steps(monkeypatch, {("fp32", 1, 1): (1.0, 2.0), ("fp32", 1, 2): (0.6, 1.5),
                             ("fp32", 2, 1): (0.7, 1.1),
                             ("bf16", 1, 1): (0.5, 1.0), ("bf16", 1, 2): (0.4, 0.9),
                             ("bf16", 2, 1): (0.45, 0.6)})
    cands = {d: build_sampler(model, d) for d in ("fp32", "bf16")}
    plan = tuning.measure_decode(model, cands, configs)
    assert plan["choice"] == "bf16"                      # 0.6/256 beats 1.1/256 by the margin
    assert (plan["bf16"]["workers"], plan["bf16"]["threads"]) == (2, 1)
    assert (plan["fp32"]["workers"], plan["fp32"]["threads"]) == (2, 1)
    assert plan["bf16"]["rows"] > 256 and plan["bf16"]["row_invariant"] is True
    assert plan["bf16"]["kv"] == "model"                 # int8 keys and values were no faster
    # no gain per row from more rows: batches of one digit's candidates
    fake_steps(monkeypatch, {(d, w, t): (0.1, 0.4) for d in ("fp32", "bf16") for w, t in configs})
    plan = tuning.measure_decode(model, cands, configs)
    assert plan["choice"] == "fp32" and plan["fp32"]["rows"] == 64
    # int8 keys and values twice as fast: chosen, and it decides the dtype
    fake_steps(monkeypatch, {("fp32", 1, 1): (1.0, 2.0), ("bf16", 1, 1): (0.5, 1.5)}, int8=0.5)
    plan = tuning.measure_decode(model, cands, [(1, 1)])
    if kvcache.native_attend() is not None:
        assert plan["fp32"]["kv"] == plan["bf16"]["kv"] == "int8" and plan["choice"] == "bf16"


def test_small_batches_get_torch_threads_only_by_the_margin(monkeypatch):
    """One digit's batch and a large one may take different configs; torch's own threads only
    where they beat workers by tuning.WORKERS_MARGIN (a busy core stalls each of their ops)."""
    if not hasattr(tuning, "WORKERS_MARGIN"):
        pytest.skip("this tuning.py plans one config for every batch size")
    model = tiny()
    configs = [(1, 1), (1, 2), (2, 1)]
    cands = {"fp32": build_sampler(model, "fp32")}
    fake_steps(monkeypatch, {("fp32", 1, 1): (1.0, 2.0), ("fp32", 1, 2): (0.5, 1.5),
                             ("fp32", 2, 1): (0.7, 1.1)})
    plan = tuning.measure_decode(model, cands, configs)
    assert plan["fp32"]["small"] == [1, 2] and (plan["fp32"]["workers"], plan["fp32"]["threads"]) == (2, 1)
    fake_steps(monkeypatch, {("fp32", 1, 1): (1.0, 2.0), ("fp32", 1, 2): (0.65, 1.02),
                             ("fp32", 2, 1): (0.7, 1.1)})
    plan = tuning.measure_decode(model, cands, configs)       # 7% and 8% faster: not enough
    assert plan["fp32"]["small"] == [2, 1] and (plan["fp32"]["workers"], plan["fp32"]["threads"]) == (2, 1)


def test_torch_threads_are_timed_again_before_they_are_chosen(monkeypatch):
    """A best of two steps can go to torch's threads by one stalled workers step; the plan is
    kept for good, so the several-core configs are timed again with more repeats first."""
    model = tiny()
    configs = [(1, 1), (1, 2), (2, 1)]
    cands = {"fp32": build_sampler(model, "fp32")}
    first = {(1, 1): (1.0, 2.0), (1, 2): (0.5, 0.8), (2, 1): (0.7, 1.1)}   # threads 27% faster
    again = {(1, 1): (1.0, 2.0), (1, 2): (0.5, 1.2), (2, 1): (0.7, 1.0)}   # workers faster
    reps_seen = []

    def step(model, rows, pos=None, workers=1, reps=2, int8=False):
        reps_seen.append(reps)
        t64, t256 = (again if reps > 2 else first)[(workers, torch.get_num_threads())]
        return t64 if rows == 64 else t256
    monkeypatch.setattr(tuning, "time_decode_step", step)
    monkeypatch.setattr(tuning, "DECODE_ROWS", (64, 256))
    plan = tuning.measure_decode(model, cands, configs)["fp32"]
    assert (plan["workers"], plan["threads"]) == (2, 1) and plan["step_s"]["1x2"]["256"] == 1.2
    assert plan["small"] == [1, 2] and tuning.CONFIRM_REPS in reps_seen   # confirmed at 64 rows
    first = again = {(1, 1): (1.0, 2.0), (1, 2): (0.5, 0.7), (2, 1): (0.7, 1.1)}
    assert tuning.measure_decode(model, cands, configs)["fp32"]["threads"] == 2   # confirmed
    # 20% faster steps are not enough for a batch of several digits (tuning.LARGE_MARGIN), and
    # are for one digit's
    first = again = {(1, 1): (1.0, 2.0), (1, 2): (0.5, 0.9), (2, 1): (0.6, 1.08)}
    plan = tuning.measure_decode(model, cands, configs)["fp32"]
    assert (plan["workers"], plan["threads"]) == (2, 1) and plan["small"] == [1, 2]


def test_prepare_for_sampling_measures_once_and_attaches_the_plan(monkeypatch, machine_cache):
    model = tiny()
    calls = []
    real = tuning.measure_decode
    monkeypatch.setattr(tuning, "measure_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = prepare_for_sampling(model, "auto")
    assert {"dtype", "workers", "threads", "kv", "rows", "row_invariant"} <= set(fast.decode_plan)
    key = tuning.plan_key(model)
    assert json.loads(machine_cache.read_text())[key]["choice"] == fast.decode_plan["dtype"]
    assert prepare_for_sampling(model, "fp32").decode_plan["dtype"] == "fp32"
    assert prepare_for_sampling(model, "bf16").decode_plan["dtype"] == "bf16"
    assert calls == [1]
    monkeypatch.setenv("MNISTTEXT_DTYPE", "fp32")
    assert prepare_for_sampling(model, "auto").decode_plan["dtype"] == "fp32"


def test_decoding_with_the_plan_restores_the_callers_threads():
    model = tiny()
    model.decode_plan = {"workers": 2, "threads": 1, "rows": 1024, "row_invariant": True}
    old = torch.get_num_threads()
    sample.sample_digits(model, [1, 2], 8, sample.SampleSettings())
    assert torch.get_num_threads() == old


def test_the_native_kernel_builds_into_the_cache_dir(tmp_path):
    if kvcache._compiler() is None:
        pytest.skip("no C compiler here")
    lib = kvcache.build_native(tmp_path)
    assert lib is not None and lib.parent == tmp_path and lib.suffix == ".so"
    assert kvcache.build_native(tmp_path) == lib              # built once, then found
    fn = kvcache._load(lib)
    assert kvcache._self_check(fn)


def test_without_the_native_kernel_the_cache_is_plain(monkeypatch):
    kvcache.set_native(False)
    try:
        c = kvcache.KVCache(1, 2, 2, 20, 16)
        c.write(0, torch.randn(2, 2, 3, 16), torch.randn(2, 2, 3, 16))
        assert not c.chunked and c.k.shape == (1, 2, 2, 32, 16)
    finally:
        kvcache.set_native(True)


def test_the_first_measurement_works_inside_inference_mode(machine_cache):
    # e.g. the web page's first request is a classify, already under inference_mode
    with torch.inference_mode():
        assert machine.cpu_dtype_choice() in ("bf16", "fp32")
