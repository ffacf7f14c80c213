"""Fuzzing the CLI: hypothesis draws commands, flags, values and files (good, malformed, missing,
unwritable, hostile) and every run must end in exit 0, or in one error line and exit 2: never a
traceback, never a change to the user's files, never a half-written corpus.

Runs in-process on the world of test_reliability.py (a tiny random-weight GPT, broken
checkpoints, IDX trees, line files); derandomized, without an example database, so a run is the
same everywhere. `eval`'s numbers are stubbed (its real run is in test_evaluate.py): the fuzz is
about its flags and files, which are all checked before the stub is reached.
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_reliability import (LINE, check_outcome, corpus_is_whole, in_world, kept, make_world,
                              run, state)

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

def pool(good, bad):
    """A value drawn from `good` three times in four, else from `bad`: most runs get past the
    first check, so the later ones (files, models, outputs) are reached too."""
    g, b = st.sampled_from(good), st.sampled_from(bad)
    return st.one_of(g, g, g, b)


# values a careless user or an adversary types
TEXT = st.text(max_size=12)
BAD_INTS = ["0", "-1", "1025", "9" * 25, "x", "", " ", "nan", "2.5", "1e3", "0x10"]
SMALL = pool(["1", "2", "3", "٣"], BAD_INTS)
FLOATS = pool(["0", "0.5", "1", "2", "1e-3"],
              ["-1", "nan", "inf", "-inf", "1e308", "1e-300", "1e-7", "", "x", "1,5"])
FILES = pool(["{W}/lines.txt", "{W}/mixed.txt", "{W}/bom.txt", "{W}/replaceable.txt", LINE],
             ["{W}/empty.txt", "{W}/garbage.bin", "{W}/unicode.txt", "{W}/long.txt", "{W}/dir",
              "{W}/nowhere.txt", "{W}/afile/x", "/proc/x", "/dev/null", "", LINE[:-1], "5" * 300])
GOOD_DIRS = ["{W}/out/{n}", "{W}/out/{n}/deeper"]
BAD_DIRS = ["{W}/afile", "{W}/afile/x", "/sys/x", "/proc/x", "{W}/corpus", "{W}/photos",
            "{W}/shipped/checkpoints/gpt", "{W}/shipped/checkpoints", "", ".", "/", "\x00"]
GOOD_FILES = ["{W}/out/{n}.txt", "{W}/out/{n}.png", "{W}/out/{n}.gif", "{W}/replaceable.txt",
              "/dev/null"]
BAD_FILES = ["{W}/out/{n}", "{W}/dir", "{W}/notes.txt", "{W}/corpus/train.txt", "/dev/full",
             "/sys/x.png", "{W}/afile/x.png", "{W}/shipped/checkpoints/gpt/x.png", ""]
CHECKPOINTS = pool(["{W}/ck"], ["{W}/nan", "{W}/nowhere", "{W}/afile", "{W}/cfg_list", "{W}/cfg_str",
                                "{W}/cfg_huge", "{W}/cfg_block", "{W}/cfg_vocab", "{W}/st_zero",
                                "{W}/st_pickle", "{W}/tok_permuted", "{W}/tok_foreign", "{W}/tok_missing",
                                "{W}/shipped/checkpoints/classifier", ""])
CLASSIFIERS = pool(["{W}/shipped/checkpoints/classifier"], ["{W}/ck", "{W}/nowhere", "{W}/st_zero", ""])
DEVICES = pool(["cpu", "auto", "CPU"], ["cuda", "cuda:7", "tpu", "meta", ""])
ROOTS = pool(["{W}/idx"], ["{W}/idx_magic", "{W}/idx_cut", "{W}/idx_labels", "{W}/idx_empty",
                           "{W}/nowhere", "{W}/afile", "/proc/x"])


def flags(table: dict, required: dict | None = None, most: int = 3):
    """A strategy of argv lists: the required flags (value drawn), then 0..most of the others
    (a value None marks a switch)."""
    required = required or {}

    @st.composite
    def draw(d):
        argv = []
        for flag, values in required.items():
            argv += [flag, d(values)]
        for flag in d(st.lists(st.sampled_from(sorted(table)), max_size=most, unique=True)):
            argv += [flag] if table[flag] is None else [flag, d(table[flag])]
        return argv
    return draw()


MODEL_FLAGS = {"--temperature": FLOATS, "--top-k": SMALL, "--top-p": FLOATS, "--seed": SMALL,
               "--device": DEVICES, "--dtype": pool(["auto", "fp32", "int8"], ["bf16", "fp16", ""])}
DECODE = flags({"--out": pool(GOOD_DIRS + GOOD_FILES, BAD_DIRS + BAD_FILES), "--grid": None,
                "--cols": SMALL, "--scale": SMALL, "--limit": SMALL,
                "--bpp": pool(["1"], ["2", "7"] + BAD_INTS), "--check": None})
EXPORT = flags({"--force": None, "--bpp": pool(["1", "2"], BAD_INTS),
                "--binarize": pool(["threshold", "dynamic"], ["x"]), "--binarize-seed": SMALL,
                "--dataset": pool(["mnist"], ["kmnist", "cifar"])},
               {"--data-root": ROOTS,     # {W}/corpus is the user's: --force would replace it as asked
                "--out": pool(GOOD_DIRS + ["{W}/old_corpus"], [d for d in BAD_DIRS if d != "{W}/corpus"])})
GENERATE = flags({"--digits": pool(["3", "0-2", "1,4", "٣"], ["9-0", "10", "x", "", "1,,2"]),
                  "--candidates": SMALL, "--keep": SMALL, "--classifier": CLASSIFIERS,
                  "--classifier-temperature": FLOATS, "--out": pool(GOOD_FILES, BAD_FILES),
                  "--print": None, "--show-all": None, "--gif": None, "--cols": SMALL,
                  "--scale": SMALL, **MODEL_FLAGS},
                 {"--checkpoint": CHECKPOINTS, "--img-dir": pool(GOOD_DIRS, BAD_DIRS)})
COMPLETE = flags({"--indices": pool(["0", "0,1", "19"], ["300", "-1", "x", "", ","]),
                  "--rows": pool(["0", "10", "29"], ["30"] + BAD_INTS), "--symbols": SMALL,
                  "--samples": SMALL, "--lines": pool([LINE], [LINE[:-1], "", "x"]),
                  "--corpus": pool(["{W}/corpus"], ["{W}/nowhere", "{W}/afile", "{W}/dir"]),
                  "--out": pool(GOOD_FILES, BAD_FILES), **MODEL_FLAGS},
                 {"--checkpoint": CHECKPOINTS, "--indices": st.just("0"), "--samples": st.just("1"),
                  "--out": pool(["{W}/out/{n}.png"], BAD_FILES)})
EVAL_FLAGS = {"--names": pool(["a"], ["a,b", ""]), "--classifier": CLASSIFIERS,
              "--eval-classifier": CLASSIFIERS, "--test-images": SMALL, "--gen-class-images": SMALL,
              "--samples-per-class": pool(["2", "3"], ["1"] + BAD_INTS), "--seed": SMALL,
              "--device": DEVICES, "--json": None}
EVAL_CORPUS = pool(["{W}/corpus", "{W}/old_corpus"], ["{W}/nowhere", "{W}/dir", ""])
EVAL = st.one_of(flags(EVAL_FLAGS, {"--checkpoint": CHECKPOINTS, "--corpus": EVAL_CORPUS}),
                 flags({**EVAL_FLAGS, "--names": pool(["a,b"], ["a,a", "a", ","])},
                       {"--compare": CHECKPOINTS, "--corpus": EVAL_CORPUS}).map(
                     lambda argv: argv[:2] + ["{W}/ck"] + argv[2:]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("fuzzworld"))


@pytest.fixture(scope="module")
def fast_eval():
    """Evaluation.run loads and checks the checkpoint as the real one does, then stops."""
    from mnisttext import checkpoint
    from mnisttext.evaluate import Evaluation
    real = Evaluation.run
    Evaluation.run = lambda self, ck: {"checkpoint": str(ck),
                                       "params": checkpoint.load_model(ck)[0].num_params()}
    yield
    Evaluation.run = real


COUNTER = {"n": 0}


def fuzz_one(world, argv) -> None:
    """Run one drawn command and check the contract and the user's files."""
    COUNTER["n"] += 1
    argv = [a.replace("{W}", str(world)).replace("{n}", str(COUNTER["n"])) for a in argv]
    before = state(world)
    with in_world(world):
        rc, _, err = run(argv)
    check_outcome(rc, err)
    assert kept(before, state(world)), f"a protected file changed: {argv}"
    assert corpus_is_whole(world / "old_corpus"), argv


@FUZZ
@given(inputs=st.lists(FILES | TEXT, min_size=1, max_size=3), rest=DECODE)
def test_fuzz_decode(world, inputs, rest):
    inputs = [i for i in inputs if i != "-"] or ["{W}/lines.txt"]      # stdin is pytest's
    fuzz_one(world, ["decode", *inputs, *rest])


@FUZZ
@given(rest=EXPORT)
def test_fuzz_export(world, rest):
    fuzz_one(world, ["export", *rest])


@pytest.mark.slow
@settings(FUZZ, max_examples=120)
@given(rest=GENERATE)
def test_fuzz_generate(world, rest):
    fuzz_one(world, ["generate", *rest])


@pytest.mark.slow
@settings(FUZZ, max_examples=80)
@given(rest=COMPLETE)
def test_fuzz_complete(world, rest):
    fuzz_one(world, ["complete", *rest])


@pytest.mark.slow
@settings(FUZZ, max_examples=80)
@given(rest=EVAL)
def test_fuzz_eval(world, fast_eval, rest):
    fuzz_one(world, ["eval", *rest])
