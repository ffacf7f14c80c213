"""Training on a tiny slice: loss falls, exact resume, kill -9, corrupt checkpoints, 2-process DDP."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mnisttext import checkpoint, cli
from conftest import CORPUS, ROOT

TINY = ["--preset", "tiny", "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "2",
        "--eval-every", "0", "--log-every", "1", "--threads", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for split, n in (("train", 320), ("test", 48)):
        lines = (CORPUS / f"{split}.txt").read_text().splitlines()[:n]
        (d / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return d


def metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def train(run, corpus, *extra):
    rc = cli.main(["train", "--corpus", str(corpus), "--out", str(run), *TINY, *extra])
    assert rc == 0
    return metrics(run)


def test_loss_decreases_and_run_dir_is_complete(tmp_path, small_corpus):
    run = tmp_path / "run"
    m = train(run, small_corpus, "--max-steps", "25")
    losses = [r["loss"] for r in m if "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    final = m[-1]
    assert final["final"] and final["test_nll_nats"] > 0 and final["eval_images"] == 48
    for f in ("args.json", "loss.png", "last/model.safetensors", "last/state.safetensors",
              "last/config.json", "last/tokenizer.json", "best/model.safetensors"):
        assert (run / f).exists(), f
    model, config, tok = checkpoint.load_model(run / "best")
    assert config.n_layer == 2 and tok.get_vocab_size() == 76


def test_resume_continues_exactly(tmp_path, small_corpus):
    a = train(tmp_path / "a", small_corpus, "--max-steps", "10")
    train(tmp_path / "b", small_corpus, "--max-steps", "10", "--stop-after", "4")
    started = json.loads((tmp_path / "b" / "args.json").read_text())["machine"]["started"]
    b = train(tmp_path / "b", small_corpus, "--max-steps", "10", "--resume")
    machine = json.loads((tmp_path / "b" / "args.json").read_text())["machine"]
    assert machine["started"] == started and [r["step"] for r in machine["resumed"]] == [4]
    la = {r["step"]: r["loss"] for r in a if "loss" in r}
    lb = {r["step"]: r["loss"] for r in b if "loss" in r}
    assert set(range(5, 11)) <= set(lb)
    for s in range(5, 11):
        assert la[s] == lb[s], f"step {s}: {la[s]} != {lb[s]}"
    ta = checkpoint.read_tensors(tmp_path / "a" / "last" / "model.safetensors")
    tb = checkpoint.read_tensors(tmp_path / "b" / "last" / "model.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_resume_rebuilds_the_run_from_last_not_from_flags(tmp_path, small_corpus):
    import shutil
    train(tmp_path / "a", small_corpus, "--max-steps", "6")
    full = train(tmp_path / "b", small_corpus, "--max-steps", "4", "--init-from", str(tmp_path / "a" / "last"))
    train(tmp_path / "c", small_corpus, "--max-steps", "4", "--init-from", str(tmp_path / "a" / "last"),
          "--stop-after", "2")
    shutil.rmtree(tmp_path / "a")            # the first stage is gone (e.g. overwritten by ship)
    c = train(tmp_path / "c", small_corpus, "--max-steps", "4", "--init-from", str(tmp_path / "a" / "last"),
              "--resume", "--n-layer", "5")  # and the model flags ask for another model
    assert json.loads((tmp_path / "c" / "last" / "config.json").read_text())["n_layer"] == 2
    assert json.loads((tmp_path / "c" / "args.json").read_text())["n_layer"] == 2
    lf = {r["step"]: r["loss"] for r in full if "loss" in r}
    lc = {r["step"]: r["loss"] for r in c if "loss" in r}
    assert [lc[s] for s in (3, 4)] == [lf[s] for s in (3, 4)]


def test_init_from_starts_from_the_weights_with_a_fresh_schedule(tmp_path, small_corpus):
    train(tmp_path / "a", small_corpus, "--max-steps", "30")
    first = checkpoint.read_tensors(tmp_path / "a" / "last" / "model.safetensors")
    b = train(tmp_path / "b", small_corpus, "--max-steps", "3", "--init-from",
              str(tmp_path / "a" / "last"), "--n-layer", "5")       # the model flags yield
    cfg = json.loads((tmp_path / "b" / "last" / "config.json").read_text())
    assert cfg["n_layer"] == 2 and [r["step"] for r in b if "loss" in r] == [1, 2, 3]
    fresh = metrics(tmp_path / "a")
    # the first step's loss is the trained model's, far below a fresh model's first loss
    assert b[0]["loss"] < 0.8 * fresh[0]["loss"]
    second = checkpoint.read_tensors(tmp_path / "b" / "last" / "model.safetensors")
    assert any(not torch.equal(first[k], second[k]) for k in first)    # and it trains on
    assert cli.main(["ship", str(tmp_path / "b" / "last"), "--out", str(tmp_path / "ship")]) == 0
    meta = json.loads((tmp_path / "ship" / "metadata.json").read_text())
    assert meta["args"]["init_from"] == str(tmp_path / "a" / "last")
    assert meta["init_from"]["args"]["max_steps"] == 30        # the first stage's record


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
    state = json.loads((checkpoint.resolve(run / "last") / "state.json").read_text())["state"]
    assert 0 < state["step"] < 400
    rc = cli.main(["train", "--corpus", str(small_corpus), "--out", str(run), *TINY,
                   "--max-steps", "400", "--save-every", "0.2", "--resume", "--stop-after", "5"])
    assert rc == 0
    after = json.loads((checkpoint.resolve(run / "last") / "state.json").read_text())["state"]
    assert after["step"] == state["step"] + 5


def test_corrupt_and_foreign_checkpoints_give_clear_errors(tmp_path, small_corpus, capsys):
    run = tmp_path / "c"
    train(run, small_corpus, "--max-steps", "2")
    weights = run / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])           # truncated
    with pytest.raises(checkpoint.CheckpointError, match="model.safetensors"):
        checkpoint.load_model(run / "best")
    weights.write_bytes(b"\x80\x02}q\x00.")                    # a pickle, never unpickled
    with pytest.raises(checkpoint.CheckpointError, match="safetensors"):
        checkpoint.load_model(run / "best")
    (run / "best" / "config.json").write_text('{"n_layer": "x", "bogus": 1}')
    with pytest.raises(checkpoint.CheckpointError, match="config.json"):
        checkpoint.load_model(run / "best")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load_model(tmp_path / "nothing")
    (run / "last" / "state.safetensors").write_bytes(b"garbage")
    rc = cli.main(["train", "--corpus", str(small_corpus), "--out", str(run), *TINY,
                   "--max-steps", "4", "--resume"])
    assert rc == 2 and "state.safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("tokens", ["char", "bpe"])
def test_two_process_ddp(tmp_path, small_corpus, tokens):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    port = "29517" if tokens == "char" else "29518"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", port, "cli.py", "train", "--corpus", str(small_corpus),
           "--out", str(run), *TINY, "--max-steps", "20", "--device", "cpu",
           "--tokenizer", tokens, "--bpe-vocab", "120"]   # BPE: rank 0's merges, sent to rank 1
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    m = metrics(run)
    final = m[-1]
    assert final["world"] == 2 and final["ddp_weights_identical"] is True
    losses = [r["loss"] for r in m if "loss" in r]
    assert sum(losses[-5:]) < sum(losses[:5])


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
