"""Training on a tiny slice: loss falls, exact resume, the run-directory rules (resume, --force,
the lock), saves killed at every step, best/ never worse, non-finite loss, the time budget and
its clock; end-to-end (kill -9, 2-process DDP) under the `slow` mark."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import CORPUS, ROOT, Killed, kill_at, run_cli
from mnisttext import checkpoint, config, train

TINY = ["--preset", "tiny", "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "2",
        "--eval-every", "0", "--log-every", "1", "--threads", "1", "--seed", "3"]


@pytest.fixture(autouse=True)
def no_plots(request, monkeypatch):
    """Drawing loss.png costs more than a tiny run; one test checks it is drawn."""
    if request.node.name != "test_loss_decreases_and_run_dir_is_complete":
        monkeypatch.setattr(train.render, "plot_training", lambda paths, out: None)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for split, n in (("train", 320), ("test", 48)):
        lines = (CORPUS / f"{split}.txt").read_text().splitlines()[:n]
        (d / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return d


def metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def fit(run, corpus, *extra):
    rc = run_cli(["train", "--corpus", corpus, "--out", run, *TINY, *extra])
    assert rc == 0
    return metrics(run)


def weights(d):
    return checkpoint.read_tensors(checkpoint.resolve(d) / "model.safetensors")


def same_weights(a, b):
    ta, tb = weights(a), weights(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def last_step(run):
    return json.loads((checkpoint.resolve(run / "last") / "state.json").read_text())["state"]["step"]


# ---------------------------------------------------------------------------------------------
# training and resume

def test_loss_decreases_and_run_dir_is_complete(tmp_path, small_corpus, capsys):
    run = tmp_path / "run"
    m = fit(run, small_corpus, "--max-steps", "25")
    losses = [r["loss"] for r in m if "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    final = m[-1]
    assert final["final"] and final["test_nll_nats"] > 0 and final["eval_images"] == 48
    for f in ("args.json", "loss.png", "last/model.safetensors", "last/state.safetensors",
              "last/config.json", "last/tokenizer.json", "best/model.safetensors", "best/metrics.json"):
        assert (run / f).exists(), f
    model, cfg, tok = checkpoint.load_model(run / "best")
    assert cfg.n_layer == 2 and tok.get_vocab_size() == 76
    saved = config.TrainConfig.from_dict(json.loads((run / "args.json").read_text()))
    assert saved.model["n_layer"] == 2 and saved.clock == "wall"
    err = capsys.readouterr().err
    assert "final test NLL" in err and f"mnisttext generate --checkpoint {run}/best" in err
    assert "{" not in err.splitlines()[-1]                  # no JSON dump at the end


@pytest.mark.parametrize("opt", [[], ["--optimizer", "muon"]], ids=["adamw", "muon"])
def test_resume_continues_exactly(tmp_path, small_corpus, opt):
    a = fit(tmp_path / "a", small_corpus, "--max-steps", "10", *opt)
    fit(tmp_path / "b", small_corpus, "--max-steps", "10", "--stop-after", "4", *opt)
    started = json.loads((tmp_path / "b" / "args.json").read_text())["machine"]["started"]
    b = fit(tmp_path / "b", small_corpus, "--max-steps", "10", "--resume")
    machine = json.loads((tmp_path / "b" / "args.json").read_text())["machine"]
    assert machine["started"] == started and [r["step"] for r in machine["resumed"]] == [4]
    la = {r["step"]: r["loss"] for r in a if "loss" in r}
    lb = {r["step"]: r["loss"] for r in b if "loss" in r}
    assert set(range(5, 11)) <= set(lb)
    for s in range(5, 11):
        assert la[s] == lb[s], f"step {s}: {la[s]} != {lb[s]}"
    assert same_weights(tmp_path / "a" / "last", tmp_path / "b" / "last")


def test_resume_rebuilds_the_run_from_last_not_from_flags(tmp_path, small_corpus, capsys):
    import shutil
    fit(tmp_path / "a", small_corpus, "--max-steps", "6")
    full = fit(tmp_path / "b", small_corpus, "--max-steps", "4", "--init-from", tmp_path / "a" / "last")
    fit(tmp_path / "c", small_corpus, "--max-steps", "4", "--init-from", tmp_path / "a" / "last",
        "--stop-after", "2")
    shutil.rmtree(tmp_path / "a")            # the first stage is gone (e.g. overwritten by ship)
    capsys.readouterr()
    c = fit(tmp_path / "c", small_corpus, "--max-steps", "4", "--init-from", tmp_path / "a" / "last",
            "--resume", "--n-layer", "5", "--lr", "1e-3")   # and the flags ask for another run
    err = capsys.readouterr().err
    assert "keeping n_layer=2" in err and "keeping lr=0.003" in err
    assert json.loads((tmp_path / "c" / "last" / "config.json").read_text())["n_layer"] == 2
    assert json.loads((tmp_path / "c" / "args.json").read_text())["model"]["n_layer"] == 2
    lf = {r["step"]: r["loss"] for r in full if "loss" in r}
    lc = {r["step"]: r["loss"] for r in c if "loss" in r}
    assert [lc[s] for s in (3, 4)] == [lf[s] for s in (3, 4)]


def test_init_from_starts_from_the_weights_with_a_fresh_schedule(tmp_path, small_corpus):
    fit(tmp_path / "a", small_corpus, "--max-steps", "30")
    first = weights(tmp_path / "a" / "last")
    b = fit(tmp_path / "b", small_corpus, "--max-steps", "3", "--init-from",
            tmp_path / "a" / "last", "--n-layer", "5")       # the model flags yield
    cfg = json.loads((tmp_path / "b" / "last" / "config.json").read_text())
    assert cfg["n_layer"] == 2 and [r["step"] for r in b if "loss" in r] == [1, 2, 3]
    fresh = metrics(tmp_path / "a")
    # the first step's loss is the trained model's, far below a fresh model's first loss
    assert b[0]["loss"] < 0.8 * fresh[0]["loss"]
    second = weights(tmp_path / "b" / "last")
    assert any(not torch.equal(first[k], second[k]) for k in first)    # and it trains on
    assert run_cli(["ship", tmp_path / "b" / "last", "--out", tmp_path / "ship"]) == 0
    meta = json.loads((tmp_path / "ship" / "metadata.json").read_text())
    assert meta["args"]["init_from"] == str(tmp_path / "a" / "last")
    assert meta["init_from"]["args"]["max_steps"] == 30        # the first stage's record


def test_micro_batches_give_the_whole_batch_gradient():
    from mnisttext.model import PRESETS, GPTConfig, build_model
    from mnisttext.train import RECIPES, make_optimizer, train_step
    torch.manual_seed(0)
    x = torch.randint(0, 76, (6, 40))
    targets = x[:, 1:].clone()
    targets[0, 20:] = -1                                       # padding: micro-batches of unequal weight
    after = []
    for parts in (1, 2, 3):
        torch.manual_seed(0)
        model = build_model(GPTConfig(**PRESETS["tiny"]))
        cfg = dict(RECIPES["default"], dtype="fp32", grad_accum=parts, grad_clip=0.0)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        loss = train_step(model, model, opt, x[:, :-1], targets, cfg, torch.device("cpu"))
        after.append((loss, [p.detach().clone() for p in model.parameters()]))
    for loss, params in after[1:]:
        torch.testing.assert_close(loss, after[0][0])
        for a, b in zip(params, after[0][1]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert make_optimizer(model, RECIPES["default"]).defaults.get("fused")   # the fused kernel on CPU


def test_lr_schedule_warms_up_then_follows_the_cosine_to_its_floor():
    cfg, _ = config.resolve("default", {"lr": 1.0, "warmup_steps": 4, "min_lr_frac": 0.1})
    assert [train.lr_at(cfg, s, 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert train.lr_at(cfg, 4, 0.0) == 1.0
    assert math.isclose(train.lr_at(cfg, 50, 0.5), 0.55)
    assert math.isclose(train.lr_at(cfg, 99, 1.0), 0.1) and math.isclose(train.lr_at(cfg, 99, 7.0), 0.1)
    const, _ = config.resolve("original", {"lr": 1e-4})
    assert {train.lr_at(const, s, p) for s, p in ((0, 0), (500, 0.5), (900, 1.0))} == {1e-4}


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    a = train.epoch_order(3, 0, 100)
    assert sorted(a.tolist()) == list(range(100))
    assert torch.equal(a, train.epoch_order(3, 0, 100))
    assert not torch.equal(a, train.epoch_order(3, 1, 100))
    assert not torch.equal(a, train.epoch_order(4, 0, 100))


# ---------------------------------------------------------------------------------------------
# the run directory: plan, --resume, --force, the lock

def test_plan_decides_resume_init_and_tokenizer_without_training(tmp_path, small_corpus):
    out = tmp_path / "r"
    plan = train.plan_run("default", {"out": str(out), "tokenizer": "bpe"})
    assert plan.last is None and plan.init is None and plan.tokenizer == "bpe" and not plan.replace
    with pytest.raises(checkpoint.RunDirError, match="no last/ checkpoint"):
        train.plan_run("default", {"out": str(out), "resume": True})
    fit(out, small_corpus, "--max-steps", "2", "--lr", "2e-3")
    with pytest.raises(checkpoint.RunDirError, match="already holds a run.*--resume.*--force"):
        train.plan_run("default", {"out": str(out)})
    with pytest.raises(checkpoint.RunDirError, match="choose one"):
        train.plan_run("default", {"out": str(out), "resume": True, "force": True})
    plan = train.plan_run("default", {"out": str(out), "resume": True, "lr": 1.0})
    assert plan.last == out / "last" and plan.tokenizer == out / "last"
    assert plan.cfg.lr == 2e-3 and plan.cfg.model["n_layer"] == 2
    assert plan.notices == ["resume: keeping lr=0.002 from the run (asked 1.0)"]
    plan = train.plan_run("default", {"out": str(tmp_path / "s"), "init_from": str(out / "best"),
                                      "tokenizer": "bpe", "model": {"n_embd": 64}})
    assert plan.init == out / "best" and plan.tokenizer == out / "best"
    assert plan.cfg.model["n_embd"] == 32 and plan.cfg.tokenizer == "char" and len(plan.notices) == 2
    assert train.plan_run("default", {"out": str(out), "force": True}).replace


def test_an_existing_run_needs_resume_or_force(tmp_path, small_corpus, capsys):
    run = tmp_path / "r"
    fit(run, small_corpus, "--max-steps", "3")
    before = weights(run / "best")
    capsys.readouterr()
    assert run_cli(["train", "--corpus", small_corpus, "--out", run, *TINY, "--max-steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "--force" in err
    assert all(torch.equal(before[k], v) for k, v in weights(run / "best").items())
    assert run_cli(["train", "--corpus", small_corpus, "--out", tmp_path / "new", *TINY, "--resume"]) == 2
    assert "no last/ checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "new" / "best").exists()
    m = fit(run, small_corpus, "--max-steps", "2", "--force")    # replaced: a new run's records
    assert [r["step"] for r in m if "loss" in r] == [1, 2]
    assert last_step(run) == 2 and "resumed" not in json.loads((run / "args.json").read_text())["machine"]


def test_force_and_resume_refuse_a_users_file_in_the_saves_before_any_work(
        tmp_path, small_corpus, capsys, monkeypatch):
    run = tmp_path / "r"
    fit(run, small_corpus, "--max-steps", "2")
    before = weights(run / "best")
    (run / "best" / "NOTES.md").write_text("a user's notes")
    capsys.readouterr()
    for flag in ("--force", "--resume"):
        assert run_cli(["train", "--corpus", small_corpus, "--out", run, *TINY, "--max-steps", "4",
                        flag]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{flag}: " in err and "(NOTES.md)" in err
    assert (run / "best" / "NOTES.md").read_text() == "a user's notes" and last_step(run) == 2
    (run / "best" / "NOTES.md").unlink()
    (run / "best" / ".DS_Store").write_bytes(b"\0")        # a file browser's litter is no work
    monkeypatch.setenv("MNISTTEXT_DTYPE", "bf61")          # a typo: refused before --force deletes
    assert run_cli(["train", "--corpus", small_corpus, "--out", run, *TINY, "--max-steps", "4",
                    "--force"]) == 2
    assert "MNISTTEXT_DTYPE='bf61'" in capsys.readouterr().err
    assert all(torch.equal(before[k], v) for k, v in weights(run / "best").items())
    monkeypatch.delenv("MNISTTEXT_DTYPE")
    fit(run, small_corpus, "--max-steps", "2", "--force")
    assert last_step(run) == 2 and not (run / "best" / ".DS_Store").exists()


def test_a_second_trainer_on_the_same_run_is_refused(tmp_path, small_corpus, capsys):
    run = tmp_path / "r"
    with checkpoint.RunLock(run):
        assert run_cli(["train", "--corpus", small_corpus, "--out", run, *TINY, "--max-steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "in use by another trainer" in err and str(os.getpid()) in err
    assert not (run / "args.json").exists()
    fit(run, small_corpus, "--max-steps", "2")                   # released: free again


def test_a_stale_lock_of_a_killed_trainer_is_taken_over(tmp_path, small_corpus, capsys):
    run = tmp_path / "r"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid}\n")
    (run / f".last.tmp{dead.pid}").mkdir()                      # and a half-written save of it
    fit(run, small_corpus, "--max-steps", "2")
    assert f"took over the lock of pid {dead.pid}" in capsys.readouterr().err
    assert not (run / f".last.tmp{dead.pid}").exists()


# ---------------------------------------------------------------------------------------------
# saves killed part-way, best/, non-finite loss



SAVE_EVERY_STEP = ["--max-steps", "6", "--save-every", "0"]


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory, small_corpus):
    """(a 6-step run, the same run stopped after step 3), saving at every step."""
    d = tmp_path_factory.mktemp("six")
    fit(d / "ref", small_corpus, *SAVE_EVERY_STEP)
    fit(d / "half", small_corpus, *SAVE_EVERY_STEP, "--stop-after", "3")
    return d / "ref", d / "half"


@pytest.mark.parametrize("k", range(1, 14))
def test_a_save_killed_at_any_step_loses_at_most_one_interval(tmp_path, small_corpus, six_steps,
                                                              monkeypatch, k):
    # the resumed run writes args.json (1 rename), then saves at steps 4, 5, 6 (6 renames and
    # deletes each): a kill at the k-th of them, then resume, must end where the unbroken run did
    import shutil
    ref, half = six_steps
    run = tmp_path / "r"
    shutil.copytree(half, run)
    with monkeypatch.context() as m:
        kill_at(m, k)
        with pytest.raises(Killed):
            run_cli(["train", "--corpus", small_corpus, "--out", run, *TINY, *SAVE_EVERY_STEP,
                     "--resume"])
    assert last_step(run) >= (3 if k <= 7 else 4)      # the save before the killed one
    fit(run, small_corpus, *SAVE_EVERY_STEP, "--resume")
    assert last_step(run) == 6 and same_weights(run / "last", ref / "last")
    assert not [p for p in run.iterdir() if p.name.startswith(".last.")]   # leftovers cleaned


def test_best_is_never_replaced_by_a_worse_model(tmp_path, small_corpus):
    run = tmp_path / "r"
    every_step = ["--eval-every", "1e-9", "--eval-images", "16", "--max-steps", "8"]
    fit(run, small_corpus, *every_step, "--stop-after", "4")
    rec = json.loads((run / "best" / "metrics.json").read_text())
    evals = [r["test_nll_subset"] for r in metrics(run) if "test_nll_subset" in r]
    assert rec["select_nll"] == min(evals)
    # a save cut short after best/ and before last/: best/ holds a better model than last/ knows
    rec["select_nll"] = rec["select_nll"] / 10
    meta = checkpoint.resolve(run / "best") / "metrics.json"
    meta.write_text(json.dumps(rec))
    before = weights(run / "best")
    fit(run, small_corpus, *every_step, "--resume")
    after = weights(run / "best")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_non_finite_loss_stops_with_the_step_and_keeps_last(tmp_path, small_corpus, monkeypatch, capsys):
    run = tmp_path / "r"
    fit(run, small_corpus, "--max-steps", "8", "--stop-after", "3")
    kept = weights(run / "last")
    real = train.train_step
    monkeypatch.setattr(train, "train_step", lambda *a: real(*a) * math.nan)
    capsys.readouterr()
    assert run_cli(["train", "--corpus", small_corpus, "--out", run, *TINY, "--max-steps", "8",
                    "--resume", "--save-every", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "loss is nan at step 4" in err and "holds step 3" in err
    assert last_step(run) == 3 and all(torch.equal(kept[k], v) for k, v in weights(run / "last").items())


# ---------------------------------------------------------------------------------------------
# time: the budget counts evaluations, and --clock cpu counts CPU time

def test_the_budget_counts_evaluations_and_follows_the_clock(tmp_path, small_corpus, monkeypatch):
    assert train.CLOCKS["cpu"] is time.process_time and train.CLOCKS["wall"] is time.perf_counter
    ticks = {"t": 0.0}

    def fake_cpu_clock():        # every reading advances a second: 'CPU time' the test controls
        ticks["t"] += 1.0
        return ticks["t"]
    monkeypatch.setitem(train.CLOCKS, "cpu", fake_cpu_clock)
    run = tmp_path / "r"
    result = train.train(train.plan_run("default", {
        "corpus": str(small_corpus), "out": str(run), "preset": "tiny", "batch_size": 16,
        "threads": 1, "epochs": 100.0, "minutes": 1.0, "clock": "cpu", "eval_every": 5.0,
        "eval_images": 16}), train.NullReporter(quiet=True))
    assert 50 <= result["elapsed_seconds"] <= 62             # the budget, evaluations included
    assert result["train_seconds"] < result["elapsed_seconds"]
    assert result["step"] < 100 * 320 // 16                  # stopped by time, not by steps
    assert any("test_nll_subset" in r for r in metrics(run))


# ---------------------------------------------------------------------------------------------
# end to end, in other processes

@pytest.mark.slow
def test_kill_9_then_resume(tmp_path, small_corpus):
    run = tmp_path / "k"
    cmd = [sys.executable, "cli.py", "train", "--corpus", str(small_corpus), "--out", str(run),
           *TINY, "--max-steps", "400", "--save-every", "0.2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last" / "config.json").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = last_step(run)
    assert 0 < step < 400
    assert run_cli(["train", "--corpus", small_corpus, "--out", run, *TINY, "--max-steps", "400",
                    "--save-every", "0.2", "--resume", "--stop-after", "5"]) == 0
    assert last_step(run) == step + 5


def test_corrupt_and_foreign_checkpoints_give_clear_errors(tmp_path, small_corpus, capsys):
    run = tmp_path / "c"
    fit(run, small_corpus, "--max-steps", "2")
    weights_file = run / "best" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])           # truncated
    with pytest.raises(checkpoint.CheckpointError, match="model.safetensors"):
        checkpoint.load_model(run / "best")
    weights_file.write_bytes(b"\x80\x02}q\x00.")                    # a pickle, never unpickled
    with pytest.raises(checkpoint.CheckpointError, match="safetensors"):
        checkpoint.load_model(run / "best")
    (run / "best" / "config.json").write_text('{"n_layer": "x", "bogus": 1}')
    with pytest.raises(checkpoint.CheckpointError, match="config.json"):
        checkpoint.load_model(run / "best")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load_model(tmp_path / "nothing")
    state = run / "last" / "state.json"
    good = state.read_text()
    state.write_text(good.replace('"step": 2', '"step": "two"'))
    capsys.readouterr()
    assert run_cli(["train", "--corpus", small_corpus, "--out", run, *TINY, "--max-steps", "4",
                    "--resume"]) == 2
    assert "state.json: state.step: expected int" in capsys.readouterr().err
    state.write_text(good.replace('"step": 2', '"step": -5'))
    assert run_cli(["train", "--corpus", small_corpus, "--out", run, *TINY, "--max-steps", "4",
                    "--resume"]) == 2
    assert "state.json: state.step: expected >= 0, got -5" in capsys.readouterr().err
    state.write_text(good)
    (run / "last" / "state.safetensors").write_bytes(b"garbage")
    assert run_cli(["train", "--corpus", small_corpus, "--out", run, *TINY, "--max-steps", "4",
                    "--resume"]) == 2
    assert "state.safetensors" in capsys.readouterr().err


DDP_RUNS = {"char": [], "bpe": ["--tokenizer", "bpe", "--bpe-vocab", "120"],  # rank 0's merges
            # embeddings no line uses still take part in every step (DDP wants all weights)
            "aug_embed": ["--aug-embed", "3"],
            "shift_aug": ["--shift-aug", "0.5", "--shift-max", "1", "--max-steps", "24"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DDP_RUNS))
def test_two_process_ddp(tmp_path, small_corpus, name):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    port = str(29517 + list(DDP_RUNS).index(name))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", port, "cli.py", "train", "--corpus", str(small_corpus),
           "--out", str(run), *TINY, "--max-steps", "20", "--device", "cpu", *DDP_RUNS[name]]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-2000:]
    assert "terminate called" not in err and "Traceback" not in err, err[-2000:]
    m = metrics(run)
    final = m[-1]
    assert final["world"] == 2 and final["ddp_weights_identical"] is True
    losses = [r["loss"] for r in m if "loss" in r]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert err.count("final test NLL") == 1                    # rank 0 speaks for the job


@pytest.mark.slow
def test_ddp_stops_in_order_on_a_user_error(tmp_path, small_corpus):
    run = tmp_path / "ddp"
    run.mkdir()
    (run / "args.json").write_text("{}")                       # holds a run: every rank refuses
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29519", "cli.py", "train", "--corpus", str(small_corpus),
           "--out", str(run), *TINY, "--max-steps", "4", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "already holds a run" in err and "terminate called" not in err


def test_keep_freed_memory_stops_the_page_faults_of_big_blocks():
    # in a fresh process: this one may have called it already (train() does)
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt")
    code = """if 1:
        import resource, torch
        from mnisttext.train import keep_freed_memory
        def faults():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(5):   # 40 MiB blocks: glibc maps blocks over 32 MiB afresh every time
                xs = [torch.ones(40 << 20, dtype=torch.uint8) for _ in range(2)]
                del xs
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        faults()
        before = faults()
        assert keep_freed_memory()
        faults()
        print(before, faults())"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    pages = 10 * (40 << 20) // 4096
    assert before > pages // 2 and after < pages // 10, (before, after)


# ---------------------------------------------------------------------------------------------
# --shift-aug

def test_shift_aug_trains_with_its_embeddings_and_resumes_exactly_across_epochs(tmp_path, small_corpus):
    aug = ["--shift-aug", "0.5", "--shift-max", "1", "--max-steps", "26"]   # 20 steps an epoch
    a = fit(tmp_path / "a", small_corpus, *aug)
    fit(tmp_path / "b", small_corpus, *aug, "--stop-after", "23")
    b = fit(tmp_path / "b", small_corpus, *aug, "--resume")
    la = {r["step"]: r["loss"] for r in a if "loss" in r}
    lb = {r["step"]: r["loss"] for r in b if "loss" in r}
    assert all(la[s] == lb[s] for s in range(24, 27))
    assert same_weights(tmp_path / "a" / "last", tmp_path / "b" / "last")
    w = weights(tmp_path / "a" / "last")
    assert w["aug_embeds.weight"].shape[0] == 8 and w["aug_embeds.weight"].abs().sum() > 0
    model, cfg, _ = checkpoint.load_model(tmp_path / "a" / "best")
    assert cfg.aug_embed == 8
    args = json.loads((tmp_path / "a" / "args.json").read_text())
    assert args["shift_aug"] == 0.5 and args["model"]["aug_embed"] == 8


def test_the_trainer_takes_the_shifted_lines_with_their_ids(small_corpus):
    from mnisttext import data
    from mnisttext import tokenizer as tk
    cfg, _ = config.resolve("default", {"shift_aug": 0.5, "shift_max": 1, "seed": 3})
    lines, tok = data.read_split(small_corpus, "train"), tk.build()
    tokens, aug = train.epoch_tokens(cfg, tok, lines, None, None, 2)
    want, ids = data.shifted_epoch_lines(lines, 0.5, 1, 3, 2)
    assert ids.any() and (aug.numpy() == ids).all()
    assert [tk.decode_ids(tok, r) for r in tokens] == want != lines


@pytest.mark.parametrize("extra, says", [
    (["--binarize", "dynamic"], "shift_aug: shifts the corpus's lines"),
    (["--arch", "gru"], "shift_aug: the gru"),
    (["--aug-embed", "3"], "draws from 8 shifts, and the model has 3 augmentation embeddings "
                           "(aug_embed)\n"),
    (["--aug-embed", "24"], "the model has 24 augmentation embeddings (aug_embed): it was made "
                            "for --shift-max 2"),
])
def test_shift_aug_refusals_name_the_flag(tmp_path, small_corpus, capsys, extra, says):
    rc = run_cli(["train", "--corpus", small_corpus, "--out", tmp_path / "r", *TINY,
                  "--shift-aug", "0.5", "--shift-max", "1", "--max-steps", "2", *extra])
    err = capsys.readouterr().err
    assert rc != 0 and says in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_shift_aug_from_a_model_without_augmentation_embeddings_is_refused(tmp_path, small_corpus, capsys):
    fit(tmp_path / "a", small_corpus, "--max-steps", "2")
    rc = run_cli(["train", "--corpus", small_corpus, "--out", tmp_path / "b", *TINY, "--max-steps",
                  "2", "--init-from", tmp_path / "a" / "last", "--shift-aug", "0.3"])
    err = capsys.readouterr().err
    assert rc != 0 and "has 0 augmentation embeddings (aug_embed): it was made for no --shift-aug" in err


def test_shift_aug_on_lines_of_more_bits_per_pixel_is_refused_before_force_deletes(
        tmp_path, small_corpus, capsys):
    from mnisttext import codec
    for split in ("train", "test"):
        labels, levels = codec.decode_batch((small_corpus / f"{split}.txt").read_text().splitlines())
        lines = codec.encode_batch(levels[:, 1:-1, 1:-1] * 255, labels, 2)
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    run = tmp_path / "r"
    fit(run, small_corpus, "--max-steps", "2")
    before, args = weights(run / "best"), (run / "args.json").read_text()
    capsys.readouterr()
    rc = run_cli(["train", "--corpus", tmp_path, "--out", run, *TINY, "--max-steps", "2",
                  "--shift-aug", "0.5", "--force"])
    err = capsys.readouterr().err
    assert rc != 0 and "--shift-aug moves pixels of 1-bit lines (152 characters)" in err
    assert "Traceback" not in err and "replacing" not in err
    # the refusal came before --force deleted anything: the old run is whole
    assert (run / "args.json").read_text() == args and last_step(run) == 2
    assert all(torch.equal(before[k], v) for k, v in weights(run / "best").items())
