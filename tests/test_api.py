"""The Python API: load, generate, complete, classify, decode, encode; the same lines as the CLI."""
import subprocess
import sys

import numpy as np
import pytest

import mnisttext
from mnisttext import codec
from conftest import REFERENCE_LINES, run_cli


@pytest.fixture(scope="module")
def model():
    return mnisttext.load(dtype="fp32")


def test_import_is_light_and_decode_needs_no_torch():
    code = ("import sys, mnisttext; l, lv = mnisttext.decode(sys.argv[1]); "
            "assert mnisttext.encode(lv, l) == sys.argv[1]; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(mnisttext.__version__)")
    out = subprocess.run([sys.executable, "-c", code, REFERENCE_LINES[0]], capture_output=True,
                         text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == mnisttext.__version__


def test_encode_accepts_28x28_gray_30x30_binary_and_pil():
    from PIL import Image
    label, levels = mnisttext.decode(REFERENCE_LINES[1])
    assert label == 0 and levels.shape == (30, 30) and set(np.unique(levels)) <= {0, 1}
    assert mnisttext.encode(levels, label) == REFERENCE_LINES[1]
    gray = levels[1:29, 1:29].astype(np.uint8) * 200              # 200 >= 128: on
    assert mnisttext.encode(gray, 0) == REFERENCE_LINES[1]
    assert mnisttext.encode(Image.fromarray(gray), 0) == REFERENCE_LINES[1]
    with pytest.raises(codec.CodecError, match="shape"):
        mnisttext.encode(np.zeros((29, 29)), 1)
    with pytest.raises(codec.CodecError, match="label"):
        mnisttext.encode(levels, 10)


def test_generate_is_seeded_scored_and_equals_the_cli(model, tmp_path, capsys):
    g = model.generate(3, candidates=8, keep=3, seed=5)
    assert len(g.lines) == 8 and len(g.best) == 3 and len(set(g.best)) == 3
    assert all(codec.decode(l)[0] == 3 for l in g.lines)
    assert list(np.argsort(-g.scores, kind="stable")[:1]) == g.kept[:1]      # best first
    assert g.images()[0].size == (30, 30)
    assert model.generate(3, candidates=8, keep=3, seed=5).lines == g.lines
    assert model.generate(3, candidates=8, keep=3, seed=6).lines != g.lines
    rc = run_cli(["generate", "--digits", "3", "--candidates", "8", "--keep", "3", "--seed", "5",
                  "--dtype", "fp32", "--img-dir", tmp_path, "--print"])
    assert rc == 0 and capsys.readouterr().out.splitlines() == g.best


def test_generate_streams_rows(model):
    seen = []
    model.generate(1, candidates=2, keep=1, seed=0, on_step=lambda n, bodies: seen.append((n, bodies)))
    assert [n for n, _ in seen] == list(range(5, 151, 5))
    assert all(len(b) == n for n, bodies in seen for b in bodies)


def test_complete_keeps_the_given_rows(model):
    line = mnisttext.examples()[0]
    lines = model.complete(line, rows=12, samples=3, seed=1)
    assert len(lines) == 3 and all(l[:61] == line[:61] for l in lines)
    _, levels = mnisttext.decode(line)
    assert model.complete(levels, rows=12, samples=3, seed=1, label=int(line[0])) == lines
    with pytest.raises(ValueError, match="rows: expected 0..29, got 30"):
        model.complete(line, rows=30)
    with pytest.raises(ValueError, match="symbols: expected 0..149, got 150"):
        model.complete(line, symbols=150)
    with pytest.raises(ValueError, match="samples: expected 1..1024, got 0"):
        model.complete(line, samples=0)


def test_classify_agrees_with_the_label_on_test_lines(model):
    for line in mnisttext.examples()[:5]:
        p = model.classify(line)
        assert p["model"].shape == p["cnn"].shape == (10,)
        assert abs(p["model"].sum() - 1) < 1e-6 and abs(p["cnn"].sum() - 1) < 1e-5
        assert p["model"].argmax() == p["cnn"].argmax() == int(line[0])


@pytest.mark.parametrize("call, field", [
    (lambda m: m.generate(10), "digit"), (lambda m: m.generate(1, candidates=0), "candidates"),
    (lambda m: m.generate(1, candidates=4, keep=5), "keep"),
    (lambda m: m.generate(1, temperature=float("nan")), "temperature"),
    (lambda m: m.generate(1, candidates=2, keep=1, classifier_temperature=0), "classifier temperature"),
    (lambda m: m.classify("3abc"), "length")])
def test_bad_arguments_name_the_field(model, call, field):
    with pytest.raises(ValueError, match=field):
        call(model)


def test_load_refuses_an_empty_or_non_path_folder():
    with pytest.raises(ValueError, match="checkpoint_dir: an empty path"):
        mnisttext.load("")
    with pytest.raises(TypeError, match="classifier: expected a folder path, got 5"):
        mnisttext.load(classifier=5)
