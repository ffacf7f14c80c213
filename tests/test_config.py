"""The training config: recipe < flags < a resumed run's record; --init-from fixes the model;
old args.json files; the train command's flags made from the dataclasses, checked when parsed."""
import argparse
import json

import pytest

from conftest import run_cli
from mnisttext import config
from mnisttext.cli import train_cmds
from mnisttext.config import RECIPES, TrainConfig, resolve
from mnisttext.model import PRESETS, ConfigError, GPTConfig


def parse(*argv):
    p = argparse.ArgumentParser()
    train_cmds.add_train_args(p)
    return train_cmds.flags_of(p.parse_args([str(a) for a in argv]))


# ---------------------------------------------------------------------------------------------
# precedence

def test_defaults_are_the_default_recipe():
    cfg, notices = resolve("default", {})
    assert notices == [] and cfg == TrainConfig()
    assert all(getattr(cfg, k) == v for k, v in RECIPES["default"].items())


def test_explicit_flags_override_the_recipe():
    cfg, _ = resolve("flagship", {"lr": 1e-3, "out": "runs/x", "model": {"n_layer": 3}})
    assert (cfg.lr, cfg.out, cfg.model) == (1e-3, "runs/x", {"n_layer": 3})
    assert (cfg.preset, cfg.epochs, cfg.warmup_steps) == ("flagship", 10.0, 200)   # the recipe's
    assert config.model_config(cfg).n_layer == 3 and config.model_config(cfg).n_head == 4


def test_seed_is_the_original_recipe_under_its_old_name():
    a, _ = resolve("seed", {})
    b, _ = resolve("original", {})
    assert a == b and a.recipe == "original" and (a.lr, a.batch_size, a.preset) == (1e-4, 128, "seed")
    assert parse("--recipe", "seed")[0] == "seed"
    assert resolve(*parse("--recipe", "seed"))[0] == a


def test_a_resumed_run_keeps_its_model_data_and_schedule_and_says_which_flags_lost():
    saved, _ = resolve("flagship", {"lr": 1e-3, "clock": "cpu", "model": {"n_layer": 3},
                                    "eval_images": 500})
    saved.machine = {"started": "then"}
    cfg, notices = resolve("default", {"recipe": "original", "lr": 2e-3, "batch_size": 32,
                                       "model": {"n_layer": 5},
                                       "eval_every": 5.0, "out": "elsewhere", "device": "cpu"},
                           saved.to_dict())
    assert (cfg.recipe, cfg.lr, cfg.clock, cfg.model, cfg.eval_images, cfg.warmup_steps) == \
        ("flagship", 1e-3, "cpu", {"n_layer": 3}, 500, 200)
    assert (cfg.eval_every, cfg.out, cfg.device) == (5.0, "elsewhere", "cpu")   # flags win here
    assert cfg.machine == {"started": "then"}
    # one line per explicit flag that was overridden; batch_size asked what the run has: silent
    assert notices == ["resume: keeping recipe='flagship' from the run (asked 'original')",
                       "resume: keeping lr=0.001 from the run (asked 0.002)",
                       "resume: keeping n_layer=3 from the run (asked 5)"]


def test_init_from_fixes_the_model_and_the_tokenizer():
    init = GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=300).to_dict()
    cfg, notices = resolve("default", {"model": {"n_layer": 5}, "tokenizer": "char",
                                       "preset": "tiny", "lr": 1e-3}, init_model=init,
                           init_source="--init-from ck")
    assert cfg.model["n_layer"] == 2 and cfg.model["n_embd"] == 32 and "vocab_size" not in cfg.model
    assert (cfg.tokenizer, cfg.bpe_vocab, cfg.lr) == ("bpe", 300, 1e-3)
    assert notices == ["--init-from ck: keeping tokenizer='bpe' from the checkpoint (asked 'char')",
                       "--init-from ck: keeping n_layer=2 from the checkpoint (asked 5)",
                       "--init-from ck: --preset tiny ignored: the model is the checkpoint's"]


def test_a_resumed_run_goes_on_with_its_own_settings_unless_given_again():
    saved, _ = resolve("flagship", {"eval_every": 600.0, "threads": 1, "final_eval_images": 1000,
                                    "save_every": 30.0, "stop_after": 5})
    cfg, notices = resolve("default", {"resume": True}, saved.to_dict())
    assert (cfg.eval_every, cfg.threads, cfg.final_eval_images, cfg.save_every) == (600.0, 1, 1000, 30.0)
    assert (cfg.stop_after, cfg.resume) == (0, True) and notices == []   # this invocation's
    cfg, _ = resolve("default", {"resume": True, "eval_every": 60.0}, saved.to_dict())
    assert (cfg.eval_every, cfg.threads) == (60.0, 1)


def test_a_resumed_run_ignores_init_from():
    saved, _ = resolve("default", {"model": {"n_layer": 3}, "init_from": "a/best"})
    cfg, _ = resolve("default", {"init_from": "b/best"}, saved.to_dict(),
                     init_model=GPTConfig(n_layer=7).to_dict())
    assert cfg.model == {"n_layer": 3} and cfg.init_from == "a/best"


def test_bad_values_are_config_errors_naming_the_field():
    with pytest.raises(ConfigError, match="^lr: "):
        resolve("default", {"lr": -1.0})
    with pytest.raises(ConfigError, match="^recipe: "):
        resolve("bogus", {})
    with pytest.raises(ConfigError, match="^bogus: not a training config field"):
        resolve("default", {"bogus": 1})
    with pytest.raises(ConfigError, match="n_head"):        # the model is checked up front
        resolve("default", {"model": {"n_head": 3}})
    with pytest.raises(ConfigError, match="^model.wings: not a GPTConfig field"):
        resolve("default", {"model": {"wings": 2}})


# ---------------------------------------------------------------------------------------------
# saved configs

def test_config_round_trips_through_json():
    cfg, _ = resolve("original", {"minutes": 2.5, "model": {"bit_embed": True}})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_old_flat_args_json_still_loads():
    old = dict(RECIPES["default"], recipe="seed", corpus="corpus", out="runs/x", resume=True,
               init_from=None, preset="seed", arch=None, n_layer=2, n_head=None, n_embd=32,
               dropout=None, bit_embed=None, gelu="tanh", tokenizer="char", bpe_vocab=512,
               binarize="threshold", data_root="data", dataset="mnist", max_steps=None,
               minutes=None, min_lr_frac=0.05, grad_accum=1, eval_every=60.0, eval_images=2000,
               log_every=10, save_every=120.0, seed=1337, device="auto", dtype="auto", threads=0,
               compile=False, stop_after=0, command="train", clock="cpu (time.process_time)",
               machine={"started": "then"})
    cfg = TrainConfig.from_dict(old)
    assert cfg.recipe == "original" and cfg.model == {"n_layer": 2, "n_embd": 32, "gelu": "tanh"}
    assert cfg.clock == "cpu" and cfg.final_eval_images == 2000 and cfg.machine == {"started": "then"}


@pytest.mark.parametrize("field, value", [("lr", "fast"), ("batch_size", 3.5), ("resume", "yes"),
                                          ("epochs", float("nan")), ("model", [1]),
                                          ("clock", "sundial"), ("batch_size", True)])
def test_a_saved_config_with_a_wrong_type_names_the_field(field, value):
    d = TrainConfig().to_dict()
    d[field] = value
    with pytest.raises(ConfigError, match=f"^{field}: "):
        TrainConfig.from_dict(d)


# ---------------------------------------------------------------------------------------------
# the flags

def test_only_the_flags_given_are_flags():
    recipe, flags = parse("--recipe", "flagship", "--lr", "1e-3", "--n-layer", "3",
                          "--no-bias", "--rope", "1d", "--clock", "cpu", "--resume")
    assert recipe == "flagship"
    assert flags == {"recipe": "flagship", "lr": 1e-3, "clock": "cpu", "resume": True,
                     "model": {"n_layer": 3, "bias": False, "rope": "1d"}}
    assert parse() == ("default", {})


def test_every_gpt_config_field_has_a_flag():
    p = argparse.ArgumentParser()
    train_cmds.add_train_args(p)
    opts = {o for a in p._actions for o in a.option_strings}
    for f in config.model_field_names():
        assert "--" + f.replace("_", "-") in opts, f
    assert "--vocab-size" not in opts and "--block-size" not in opts     # they follow the data
    for f in ("out", "resume", "force", "minutes", "clock", "final_eval_images", "init_from"):
        assert "--" + f.replace("_", "-") in opts, f


def test_help_shows_real_defaults_hides_stop_after_and_ends_with_examples(capsys):
    assert run_cli(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and "--stop-after" not in out
    assert "--lr LR" in out and "(default: 0.003, per recipe)" in out
    assert "(default: 4, per recipe)" in out                    # --n-layer: the small preset's
    assert "--preset {" + ",".join(PRESETS) + "}" in out        # only the recipe alias is unlisted
    assert "evaluations and checkpoints count against it" in " ".join(out.split())
    assert out.rstrip().splitlines()[-4].strip() == "examples:"
    assert parse("--stop-after", "3")[1] == {"stop_after": 3}   # hidden, still there


@pytest.mark.parametrize("argv", [["--lr", "nan"], ["--lr", "0"], ["--lr", "-1"], ["--lr", "inf"],
                                  ["--batch-size", "0"], ["--minutes", "0"], ["--minutes", "-2"],
                                  ["--epochs", "0"], ["--max-steps", "0"], ["--n-layer", "0"],
                                  ["--clock", "sundial"], ["--save-every", "-1"],
                                  ["--final-eval-images", "-1"], ["--device", "tpu"],
                                  ["--resume", "--force"]])
def test_bad_flags_stop_at_parse_time_in_one_line(tmp_path, argv, capsys):
    assert run_cli(["train", "--out", tmp_path / "x", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()
