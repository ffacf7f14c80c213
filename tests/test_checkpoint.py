"""Checkpoint directories: a swap killed at any rename or delete leaves a readable one, leftovers
are cleaned, the run lock, checks before allocation, and what ship / train-classifier refuse."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import Killed, kill_at, run_cli
from mnisttext import checkpoint, paths, train
from mnisttext import tokenizer as tk
from mnisttext.model import PRESETS, GPTConfig, build_model


def write(path, tag: int):
    checkpoint.write_dir(path, {"model.safetensors": {"w": torch.full((3,), float(tag))}},
                         {"config.json": {"tag": tag}})


def read(path) -> int:
    d = checkpoint.resolve(path)
    tag = checkpoint.read_json(d / "config.json")["tag"]
    assert torch.equal(checkpoint.read_tensors(d / "model.safetensors")["w"],
                       torch.full((3,), float(tag)))       # weights and config from one save
    return tag


def cut_short_swap(path, how):
    """The states a killed swap can leave: `last` only, `last.old` only, or both."""
    write(path, 1)
    old = path.with_name(path.name + ".old")
    if how == "old only":
        os.replace(path, old)
    if how == "both":
        write(old, 2)                      # the older one; `last` is read while it is whole


@pytest.mark.parametrize("how", ["last only", "old only", "both"])
def test_a_swap_killed_at_every_step_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch, how):
    k, completed = 0, False
    while not completed:
        k += 1
        d = tmp_path / f"k{k}"
        d.mkdir()
        path = d / "last"
        cut_short_swap(path, how)
        before = read(path)
        with monkeypatch.context() as m:
            kill_at(m, k)
            try:
                write(path, 3)
                completed = True
            except Killed:
                pass
        assert read(path) in (before, 3), k        # never nothing, never a mix
        write(path, 4)                             # the next save mends whatever was left
        assert read(path) == 4
        checkpoint.clean_leftovers(d)
        assert sorted(p.name for p in d.iterdir()) == ["last"], k
    assert k > 4                                   # the swap really has that many steps


def test_remove_dir_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    for k in (1, 2, 3):
        path = tmp_path / f"k{k}" / "best"
        write(path, 1)
        with monkeypatch.context() as m:
            kill_at(m, k)
            try:
                checkpoint.remove_dir(path)
            except Killed:
                pass
        assert not path.exists() or read(path) == 1


def test_clean_leftovers_removes_only_those_of_dead_processes(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f".last.tmp{dead.pid}", f".best.trash{dead.pid}", f".last.tmp{os.getpid()}",
                 ".last.tmp1", "last", ".lock.d"):
        (tmp_path / name).mkdir()
    removed = checkpoint.clean_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".last.tmp{dead.pid}",
                                                      f".best.trash{dead.pid}",
                                                      f".last.tmp{os.getpid()}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.tmp1", ".lock.d", "last"]


def test_write_dir_will_not_replace_a_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint folder"):
        write(tmp_path, 1)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# the run lock

def test_the_run_lock_is_exclusive_and_released(tmp_path):
    with checkpoint.RunLock(tmp_path) as held:
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(checkpoint.RunDirError, match=f"in use by another trainer \\(pid {os.getpid()}\\)"):
            checkpoint.RunLock(tmp_path).acquire()
        assert held.took_over is None
    with checkpoint.RunLock(tmp_path) as again:
        assert again.took_over is None


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"""if 1:
        import sys, time
        sys.path.insert(0, {str(paths.PACKAGE.parent)!r})
        from mnisttext import checkpoint
        checkpoint.RunLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(checkpoint.RunDirError, match=f"pid {holder.pid}"):
        checkpoint.RunLock(tmp_path).acquire()
    holder.kill()                                  # kill -9: the lock file keeps its pid
    holder.wait()
    assert (tmp_path / ".lock").read_text().strip() == str(holder.pid)
    lock = checkpoint.RunLock(tmp_path).acquire()
    assert lock.took_over == holder.pid
    lock.release()


# ---------------------------------------------------------------------------------------------
# loading: checked before the model is built

@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(**PRESETS["tiny"])
    path = tmp_path / "run" / "best"
    train.save_run_checkpoint(path, build_model(config), config, tk.build())
    return path


def test_a_tokenizer_that_does_not_fit_the_weights_fails_before_allocation(tiny_checkpoint, monkeypatch):
    bpe = tk.train_bpe((paths.PACKAGE.parent / "corpus" / "test.txt").read_text().splitlines()[:200], 100)
    bpe.save(str(tiny_checkpoint / "tokenizer.json"))

    def no_build(config):
        raise AssertionError("the model was built")
    monkeypatch.setattr(checkpoint, "build_model", no_build)
    with pytest.raises(checkpoint.CheckpointError, match="tokenizer.json: 100 tokens.*vocab_size 76"):
        checkpoint.load_model(tiny_checkpoint)
    (tiny_checkpoint / "tokenizer.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="tokenizer.json: missing"):
        checkpoint.load_model(tiny_checkpoint)


def test_the_shipped_checkpoints_still_load():
    model, config, tok = checkpoint.load_model(paths.shipped("gpt"))
    assert tok.get_vocab_size() == config.vocab_size == 76 and model.num_params() > 0


# ---------------------------------------------------------------------------------------------
# ship and train-classifier refuse to overwrite

def test_ship_refuses_its_source_a_shipped_folder_and_an_existing_checkpoint(tiny_checkpoint, tmp_path, capsys):
    shipped = paths.shipped("gpt")
    before = (shipped / "model.safetensors").stat().st_mtime_ns
    run = tiny_checkpoint.parent
    for out, force, why in ((shipped, False, "shipped checkpoint folder"),
                            (tiny_checkpoint, False, "is the checkpoint being shipped"),
                            (run, True, "holds the checkpoint being shipped")):
        argv = ["ship", tiny_checkpoint, "--out", out] + (["--force"] if force else [])
        assert run_cli(argv) == 2, out
        err = capsys.readouterr().err.strip()
        assert why in " ".join(err.split()) and len(err.splitlines()) == 1, err
    assert (shipped / "model.safetensors").stat().st_mtime_ns == before
    assert run_cli(["ship", tiny_checkpoint, "--out", tmp_path / "dest"]) == 0
    assert run_cli(["ship", tiny_checkpoint, "--out", tmp_path / "dest"]) == 2
    assert "--force" in capsys.readouterr().err
    assert run_cli(["ship", tiny_checkpoint, "--out", tmp_path / "dest", "--force"]) == 0
    assert json.loads((tmp_path / "dest" / "metadata.json").read_text())["source"] == str(tiny_checkpoint)
    assert run_cli(["ship", tiny_checkpoint, "--out", tiny_checkpoint, "--force"]) == 0
    checkpoint.load_model(tiny_checkpoint)


def test_train_classifier_never_overwrites_by_default(tmp_path, capsys, monkeypatch):
    import argparse
    from mnisttext.cli import train_cmds
    p = argparse.ArgumentParser()
    train_cmds.add_classifier_args(p)
    assert p.parse_args([]).out is None                    # runs/classifier-ARCH, not checkpoints/
    monkeypatch.chdir(tmp_path)
    assert run_cli(["train-classifier", "--out", paths.shipped("classifier")]) == 2
    assert "shipped" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    assert run_cli(["train-classifier", "--out", "mine"]) == 2
    assert "--force" in capsys.readouterr().err
    assert run_cli(["train-classifier", "--lr", "nan"]) == 2


def test_check_replaceable_takes_a_checkpoints_files_and_browser_litter_only(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / ".DS_Store").write_bytes(b"\0")
    checkpoint.check_replaceable(d)
    (d / "state.json").mkdir()               # a checkpoint's name, but a user's folder
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint's \\(state.json\\)"):
        checkpoint.check_replaceable(d)
