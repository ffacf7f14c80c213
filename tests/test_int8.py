"""Int8 sampling (int8.py): the rounding's bound, the C kernel equal to the torch ops bit for bit,
rows independent of their batch, the int8 sampler close to the fp32 model and keeping the seed
contract, and how the plan and the flags choose it."""
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import torch_threads as threads
from mnisttext import int8, machine, sample, tuning
from mnisttext.model import GPTConfig, build_model
from mnisttext.packing import build_sampler
from mnisttext.tuning import prepare_for_sampling

needs_int_mm = pytest.mark.skipif(not int8.int_mm_works(), reason="this torch has no CPU int8 matmul")
needs_kernel = pytest.mark.skipif(int8.native() is None, reason="no C compiler or MNISTTEXT_NATIVE=0")



NEW_RECIPE = dict(act="relu2", rope="1d", qk_norm=True, n_kv_head=1, zero_init_proj=False)


@pytest.fixture(autouse=True)
def machine_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MNISTTEXT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNISTTEXT_DTYPE", raising=False)
    monkeypatch.setattr(machine, "_memo", {})


def tiny(**kw):
    torch.manual_seed(0)
    return build_model(GPTConfig(n_layer=2, n_head=4, n_embd=64, dropout=0.0, **kw)).eval()


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 70), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 99))
def test_rounding_is_within_half_a_step(rows, cols, scale, seed):
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * scale
    x[0] = 0
    q, s = int8.quantize_rows(x)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and s[0] == 1 and not q[0].any()
    assert ((q.float() * s[:, None] - x).abs() <= s[:, None] * 0.5001).all()


@needs_int_mm
def test_a_row_with_nan_or_inf_stays_non_finite_and_tiny_rows_are_zeros():
    """The sampler's check for NaN logits must still see a NaN that reaches an int8 layer."""
    lin = int8.Int8Linear(nn.Linear(32, 16))
    x = torch.randn(4, 32).to(torch.bfloat16)
    x[1, 3], x[2, 5], x[3] = float("nan"), float("inf"), 1e-35
    y = lin(x)
    assert y[0].isfinite().all() and y[1].isnan().all() and not y[2].isfinite().any()
    assert torch.equal(y[3], lin(torch.zeros(1, 32, dtype=torch.bfloat16))[0])


def torch_ops(monkeypatch):
    monkeypatch.setattr(int8, "native", lambda: None)


@needs_int_mm
@needs_kernel
@pytest.mark.parametrize("bias", [True, False])
def test_the_kernel_equals_the_torch_ops(monkeypatch, bias):
    torch.manual_seed(1)
    lin, mlp = nn.Linear(48, 40, bias=bias), tiny(act="relu2", bias=bias).transformer.h[0].mlp
    layers = [int8.Int8Linear(lin), int8.Int8MLP(mlp)]
    x = torch.randn(3, 7, 48).to(torch.bfloat16)
    x2 = torch.randn(100, 64).to(torch.bfloat16)          # enough rows for the kernel's threads
    with threads(2):
        native = [layers[0](x), layers[1](x2)]
    with threads(1):
        one_thread = layers[1](x2)
    torch_ops(monkeypatch)
    assert torch.equal(layers[0](x), native[0]) and torch.equal(layers[1](x2), native[1])
    assert torch.equal(one_thread, native[1])


@needs_int_mm
def test_int8_layers_are_close_to_fp32():
    torch.manual_seed(2)
    lin, mlp = nn.Linear(64, 96), tiny(act="relu2").transformer.h[0].mlp
    x = torch.randn(50, 64)
    for got, want in ((int8.Int8Linear(lin)(x.bfloat16()), lin(x)), (int8.Int8MLP(mlp)(x.bfloat16()), mlp(x))):
        assert got.dtype == torch.bfloat16 and got.shape == want.shape
        assert (got.float() - want).norm() < 0.03 * want.norm()


@needs_int_mm
@given(rows=st.integers(1, 130), pick=st.integers(0, 129))
@settings(max_examples=25, deadline=None)
def test_a_row_does_not_depend_on_its_batch(rows, pick):
    """Over 64 rows the kernel splits rows over threads; LayerNorm fused or not."""
    pick %= rows
    block = tiny(act="relu2").transformer.h[0]
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    for mlp in (int8.Int8MLP(block.mlp), int8.Int8MLP(block.mlp, block.ln_2)):
        with threads(2):
            assert torch.equal(mlp(x)[pick], mlp(x[pick:pick + 1])[0])


@needs_int_mm
@pytest.mark.parametrize("kw", [NEW_RECIPE, {}])
def test_the_int8_sampler_is_close_to_the_model(kw):
    model = tiny(**kw)
    fast = build_sampler(model, "int8")
    assert sum(isinstance(m, (int8.Int8Linear, int8.Int8MLP)) for m in fast.modules()) == 2 * (3 if kw else 4)
    idx = torch.randint(10, 74, (4, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = model(idx)[0], fast(idx)[0].float()
    assert (got - want).norm() < 0.05 * want.norm()
    assert next(model.parameters()).dtype == torch.float32          # the model itself untouched


def with_plan(model, workers):
    model.decode_plan = {"dtype": "int8", "workers": workers, "threads": None, "rows": 1024,
                         "row_invariant": True, "kv": "model"}
    return model


@needs_int_mm
def test_int8_sampling_keeps_the_seed_contract():
    """Digits decoded together (over two workers) get the lines each gets alone; rows are
    batch-independent as the plan checks it."""
    fast = with_plan(build_sampler(tiny(**NEW_RECIPE), "int8"), 2)
    assert tuning.rows_independent(fast, rows=40)
    s = sample.SampleSettings(temperature=1.0)
    with threads(2):                        # the workers are capped by torch's threads
        together = sample.sample_digits(fast, list(range(10)), 6, s, seed=5)
    for d in (0, 7):
        assert sample.sample_digits(with_plan(fast, 1), [d], 6, s, seed=5)[d] == together[d]


@needs_int_mm
def test_the_plan_offers_int8_and_the_flags_force_it(monkeypatch):
    model = tiny(**NEW_RECIPE)
    monkeypatch.setattr(tuning, "int8_available", lambda: True)
    monkeypatch.setattr(tuning, "bf16_capable", lambda device: True)
    names = []
    monkeypatch.setattr(tuning, "measure_decode",
                        lambda m, cands, configs=None: names.extend(cands) or {"choice": "int8", "int8": {}})
    assert prepare_for_sampling(model, "auto").decode_plan["dtype"] == "int8"
    assert names == ["fp32", "bf16", "int8"]
    assert prepare_for_sampling(model, "bf16").decode_plan["dtype"] == "bf16"
    monkeypatch.setenv("MNISTTEXT_DTYPE", "fp32")
    assert prepare_for_sampling(model, "int8").decode_plan["dtype"] == "fp32"
    monkeypatch.setenv("MNISTTEXT_DTYPE", "int8")
    assert prepare_for_sampling(model, "auto").decode_plan["dtype"] == "int8"


def test_int8_is_refused_where_it_cannot_run(monkeypatch):
    gru = build_model(GPTConfig(arch="gru", n_layer=1, n_embd=32, dropout=0.0))
    with pytest.raises(ValueError, match="int8.*CPU only"):
        prepare_for_sampling(gru, "int8")
    monkeypatch.setattr(tuning, "int_mm_works", lambda: False)
    monkeypatch.setattr(tuning, "decode_plan", lambda *a, **k: {"choice": "fp32"})
    with pytest.raises(ValueError, match="no exact CPU int8 matmul"):
        prepare_for_sampling(tiny(), "int8")


@needs_int_mm
@needs_kernel
def test_the_fused_layer_norm_is_close_to_torchs(monkeypatch):
    """LayerNorm fused into the rounding: its sums run in another order than torch's, so a value
    may land one step away; the layer's output stays within a few of those steps."""
    block = tiny(act="relu2").transformer.h[0]
    with torch.no_grad():
        block.ln_2.weight.uniform_(0.5, 1.5), block.ln_2.bias.uniform_(-0.5, 0.5)
    mlp = int8.Int8MLP(block.mlp, block.ln_2)
    x = (torch.randn(80, 64) * 3 + 1).to(torch.bfloat16)
    native = mlp(x).float()
    torch_ops(monkeypatch)
    ref = mlp(x).float()
    assert (native - ref).norm() < 0.01 * ref.norm()
    want = block.mlp(block.ln_2(x.float()))
    assert (native - want).norm() < 0.05 * want.norm()


@needs_int_mm
def test_the_cli_and_the_api_sample_alike_in_int8(tmp_path, capsys):
    import mnisttext
    from conftest import run_cli
    model = mnisttext.load(dtype="int8")
    assert model.sampler.decode_plan["dtype"] == "int8"
    assert any(isinstance(m, int8.Int8MLP) for m in model.sampler.modules())
    g = model.generate(4, candidates=8, keep=3, seed=2)
    assert all(l[0] == "4" and len(l) == 152 for l in g.lines)
    rc = run_cli(["generate", "--digits", "4", "--candidates", "8", "--keep", "3", "--seed", "2",
                  "--dtype", "int8", "--img-dir", tmp_path, "--print"])
    assert rc == 0 and capsys.readouterr().out.splitlines() == g.best


def test_the_refusal_names_the_environment_variable_that_forced_it(monkeypatch):
    gru = build_model(GPTConfig(arch="gru", n_layer=1, n_embd=32, dropout=0.0))
    monkeypatch.setenv("MNISTTEXT_DTYPE", "int8")
    with pytest.raises(ValueError, match="MNISTTEXT_DTYPE"):
        prepare_for_sampling(gru, "auto")
