"""The sampler: cached = uncached, same seed -> same lines, constrained decoding, top-k/top-p,
the seed contract across digits, batched = unbatched (identical), the native decode attention
against torch, and the packed bf16 decode model."""
import copy

import pytest
import torch

from conftest import torch_threads
from mnisttext import codec, kvcache, machine, sample, tuning
from mnisttext import tokenizer as tk
from mnisttext.model import PRESETS, GPTConfig, build_model
from mnisttext.packing import PackedLinear, pack_for_cpu_decode
from mnisttext.tuning import prepare_for_sampling


@pytest.fixture(autouse=True)
def machine_cache(tmp_path, monkeypatch):
    """Measurements go to a temporary cache, never the user's home."""
    monkeypatch.setenv("MNISTTEXT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNISTTEXT_DTYPE", raising=False)
    monkeypatch.setattr(machine, "_memo", {})


def tiny(arch="gpt", seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(**PRESETS["tiny"]) if arch == "gpt" else GPTConfig(arch="gru", n_layer=2, n_embd=32, dropout=0.0)
    return build_model(cfg).eval()


NEW_RECIPE = dict(rope="1d", qk_norm=True, act="relu2", zero_init_proj=False, n_kv_head=1)


@pytest.mark.parametrize("options", [{}, NEW_RECIPE], ids=["gpt", "rope-qknorm-relu2-gqa"])
def test_packed_decode_model_matches_the_plain_bf16_model(options):
    torch.manual_seed(0)
    model = build_model(GPTConfig(**dict(PRESETS["tiny"], **options))).eval()
    plain = copy.deepcopy(model).to(torch.bfloat16)
    fast = copy.deepcopy(model).to(torch.bfloat16)
    if not pack_for_cpu_decode(fast):
        pytest.skip("this PyTorch build has no oneDNN bf16 linear ops")
    assert isinstance(fast.lm_head, PackedLinear) and isinstance(fast.transformer.h[0].mlp.c_fc, PackedLinear)
    assert not pack_for_cpu_decode(tiny())                   # fp32 models are left alone
    idx = torch.randint(0, 76, (4, 30))
    with torch.inference_mode():
        want = plain(idx)[0].float()
        torch.testing.assert_close(fast(idx)[0].float(), want, atol=0.05, rtol=0.05)
        cache = fast.new_cache(4)                            # and through the KV cache
        steps = [fast(idx[:, :1], kv_cache=cache)[0]]
        steps += [fast(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(1, 30)]
        torch.testing.assert_close(torch.cat(steps, 1).float(), want, atol=0.05, rtol=0.05)
    out = sample.generate(prepare_for_sampling(model, "bf16"), [7], 4, sample.make_generator(0))
    assert all(codec.decode(line)[0] == 7 for line in sample.tokens_to_lines(out))


@pytest.mark.parametrize("arch", ["gpt", "gru"])
def test_cached_generation_equals_uncached(arch):
    model = tiny(arch)
    s_c = sample.SampleSettings(temperature=1.0, use_cache=True)
    s_n = sample.SampleSettings(temperature=1.0, use_cache=False)
    a = sample.generate(model, [3], 4, sample.make_generator(7), s_c)
    b = sample.generate(model, [3], 4, sample.make_generator(7), s_n)
    assert torch.equal(a, b)


def test_same_seed_same_output_and_well_formed():
    model = tiny()
    s = sample.SampleSettings(temperature=1.5)
    a = sample.generate(model, [9], 6, sample.make_generator(1), s)
    b = sample.generate(model, [9], 6, sample.make_generator(1), s)
    c = sample.generate(model, [9], 6, sample.make_generator(2), s)
    assert torch.equal(a, b) and not torch.equal(a, c)
    lines = sample.tokens_to_lines(a)
    assert lines == [tk.decode_ids(tk.build(), r) for r in a]   # fast path = tokenizer
    labels, _ = codec.decode_batch(lines)                          # raises if malformed
    assert list(labels) == [9] * 6


def test_prefix_is_kept():
    model = tiny()
    prefix = [2] + [tk.SYMBOL_OFFSET + 5] * 20
    out = sample.generate(model, prefix, 3, sample.make_generator(0), sample.SampleSettings())
    assert (out[:, :21] == torch.tensor(prefix)).all()


@pytest.mark.parametrize("bad", [[2, 10_000], [2, -1], [2, 3], [], [10]])
def test_a_prefix_of_unknown_or_non_body_ids_is_refused_in_one_line(bad):
    with pytest.raises(ValueError, match="prefix must be a class digit"):
        sample.generate(tiny(), bad, 2, sample.make_generator(0), sample.SampleSettings())


def test_sample_next_token_greedy_topk_topp():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0]]).expand(2000, -1)
    assert (sample.sample_next_token(logits, g, temperature=0) == 2).all()
    k2 = sample.sample_next_token(logits, g, 1.0, top_k=2)
    assert set(k2.tolist()) == {2, 3}
    p = torch.softmax(logits[0], -1)                        # 0.032 0.087 0.644 0.237
    top = sample.sample_next_token(logits, g, 1.0, top_p=0.5)
    assert set(top.tolist()) == {2}
    top = sample.sample_next_token(logits, g, 1.0, top_p=0.7)
    assert set(top.tolist()) == {2, 3} and p[2] < 0.7
    full = sample.sample_next_token(logits, g, 1.0)
    freq = torch.bincount(full, minlength=4).float() / len(full)
    torch.testing.assert_close(freq, p, atol=0.04, rtol=0)
    # masked (-inf) tokens between, before and after allowed ones are never drawn
    inf = float("-inf")
    masked = torch.tensor([[inf, 0.0, inf, inf, 1.0, inf]]).expand(20000, -1)
    got = torch.bincount(sample.sample_next_token(masked, g, 1.0), minlength=6).float() / 20000
    assert got[[0, 2, 3, 5]].sum() == 0 and abs(got[4] - 1 / (1 + 1 / 2.718281828)) < 0.02
    last = torch.tensor([[inf, inf, inf, 0.0]])
    assert sample.sample_next_token(last, g, 1.0).item() == 3
    with pytest.raises(ValueError):
        sample.sample_next_token(logits, g, -1.0)
    with pytest.raises(ValueError):
        sample.sample_next_token(logits, g, 1.0, top_p=0.0)


def test_seed_contract_one_digit_equals_all_digits():
    model = tiny()
    s = sample.SampleSettings(temperature=1.0)
    alone = sample.sample_digits(model, [3], 5, s, seed=4)
    together = sample.sample_digits(model, list(range(10)), 5, s, seed=4)
    assert alone[3] == together[3] and together[3] != together[4]
    assert all(codec.decode(l)[0] == d for d, ls in together.items() for l in ls)


def test_nan_weights_give_a_sampling_error_not_an_index_error():
    model = tiny()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(sample.SamplingError, match="NaN"):
        sample.generate(model, [1], 2, sample.make_generator(0))


class FixedModel(torch.nn.Module):
    """A mock model (as nanochat tests its engine): next-token logits that favour one symbol."""
    config = GPTConfig(**PRESETS["tiny"])

    def __init__(self, favourite):
        super().__init__()
        self.favourite = favourite
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def new_cache(self, batch_size):
        return None

    def forward(self, idx, targets=None, kv_cache=None):
        logits = torch.full((*idx.shape, 76), -5.0)
        logits[..., self.favourite] = 5.0
        return logits, None


def test_generate_with_a_mock_model_follows_its_logits_and_the_grammar():
    fav = tk.SYMBOL_OFFSET + 63                                  # 'y': six pixels on
    out = sample.generate(FixedModel(fav), [5], 3, sample.make_generator(0),
                          sample.SampleSettings(temperature=0.0, use_cache=False))
    lines = sample.tokens_to_lines(out)
    # greedy: the favourite, then ')'; where 'y' would set a padding pixel (the first and last
    # pixel rows, each row's first and last pixel), the first symbol allowed there: ':'
    assert lines == ["5" + ":" * 5 + ":yyy:" * 28 + ":" * 5 + ")"] * 3


def count_calls(model) -> list:
    """The token count of each of the model's forward calls, from now on."""
    calls, forward = [], model.forward
    model.forward = lambda idx, *a, **k: calls.append(idx.shape[1]) or forward(idx, *a, **k)
    return calls


@pytest.mark.parametrize("use_cache", [True, False])
def test_sampled_lines_keep_the_padding_at_zero_and_skip_its_steps(use_cache):
    """The first and last pixel rows (5 symbols each) are written without decode steps: one
    prefill of the digit and the first row, then one step per free symbol."""
    model = tiny()
    calls = count_calls(model)
    out = sample.generate(model, [4], 8, sample.make_generator(3),
                          sample.SampleSettings(temperature=2.0, use_cache=use_cache))
    _, bits = codec.decode_batch(sample.tokens_to_lines(out))
    border = bits.copy()
    border[:, 1:-1, 1:-1] = 0
    assert not border.any() and bits[:, 1:-1, 1:-1].any()
    assert len(calls) == 1 + 150 - 5 - 5 - 1          # prefill + steps to the last free symbol
    assert calls[0] == 6 and (not use_cache or set(calls[1:]) == {1})


def test_a_prefix_past_the_first_row_is_not_extended():
    model = tiny()
    calls = count_calls(model)
    prefix = [7] + [tk.SYMBOL_OFFSET] * 7
    out = sample.generate(model, prefix, 2, sample.make_generator(0), sample.SampleSettings())
    assert calls[0] == 8 and len(calls) == 1 + 150 - 7 - 5 - 1
    assert out.shape == (2, 152) and (out[:, :8] == torch.tensor(prefix)).all()
    assert (out[:, 146:151] == tk.SYMBOL_OFFSET).all() and (out[:, 151] == tk.END_ID).all()


def planned(model, workers=1, rows=1024, together=True, kv="model"):
    """The model with a decode plan, as tuning.prepare_for_sampling attaches one."""
    model.decode_plan = {"dtype": "fp32", "workers": workers, "threads": None, "rows": rows,
                         "row_invariant": together, "kv": kv}
    return model


@pytest.mark.parametrize("n", [1, 2, 5, 24])
@pytest.mark.parametrize("workers, kv", [(1, "model"), (2, "model"), (2, "int8")])
def test_batched_digits_equal_each_digit_alone(n, workers, kv):
    """All digits in one decode (split over workers, padded to MIN_ROWS, keys and values as the
    plan stores them) give each digit exactly the lines it gets alone, and on_step sees each
    digit's own rows at every position."""
    model = planned(tiny(), workers, kv=kv)
    s = sample.SampleSettings(temperature=1.0)
    seen = {}
    together = sample.sample_digits(model, list(range(10)), n, s, seed=3,
                                    on_step=lambda d, t, toks: seen.setdefault(d, []).append((t, toks.shape)))
    for d in (0, 4, 9):
        assert sample.sample_digits(planned(tiny(), 1, kv=kv), [d], n, s, seed=3)[d] == together[d]
    # the first pixel row comes with the prefill, the last one at once after position 145
    steps = [(t, (n, 152)) for t in [5, *range(6, 146), 150]]
    assert all(v == steps for v in seen.values())
    assert all(codec.decode(l)[0] == d for d, ls in together.items() for l in ls)


@pytest.mark.parametrize("use_cache", [True, False])
def test_batches_of_any_size_give_the_same_lines(use_cache):
    """Batches sized by the plan (here 16 rows: 2 digits a batch) or one group a batch (where rows
    would not be batch-independent) change nothing."""
    s = sample.SampleSettings(temperature=0.9, use_cache=use_cache)
    ref = sample.sample_digits(planned(tiny()), [1, 5, 7], 8, s, seed=1)
    assert sample.sample_digits(planned(tiny(), rows=16), [1, 5, 7], 8, s, seed=1) == ref
    assert sample.sample_digits(planned(tiny(), together=False), [1, 5, 7], 8, s, seed=1) == ref


def test_completions_batch_by_prefix_length_and_keep_their_seeds():
    model = planned(tiny(), 2)
    s = sample.SampleSettings(temperature=1.0)
    sym = tk.SYMBOL_OFFSET
    prefixes = [[2] + [sym + 1] * 30, [5] + [sym + 7] * 12, [8] + [sym + 2] * 30]
    together = sample.complete_prefixes(model, prefixes, 6, s, seed=2)
    for j, prefix in enumerate(prefixes):
        alone = sample.generate(model, prefix, 6, sample.make_generator(sample.digit_seed(2, j)), s)
        assert sample.tokens_to_lines(alone) == together[j]
        assert all(l.startswith(tk.decode_ids(tk.build(), prefix)) for l in together[j])


def test_groups_that_end_early_stop_drawing_random_numbers():
    """With tokens that spell several symbols (as BPE's do) groups end at different steps; a
    group whose lines are all spelled out draws nothing more from its generator and rides
    along on ')' and <pad>: beside other groups it gets the tokens it gets alone."""
    base = tk.Grammar.character()
    sym_len = base.sym_len.copy()
    sym_len[tk.SYMBOL_OFFSET] = 25          # ':' spells 25 blank symbols here: lines end early
    grammar = tk.Grammar(sym_len, list(base.strings))
    model = tiny()
    s = sample.SampleSettings(temperature=1.5)
    groups = [sample.Group([d], 6, sample.make_generator(d)) for d in range(4)]
    together = sample.generate_groups(model, groups, s, grammar=grammar)
    lengths = {t.shape[1] for t in together}
    assert len(lengths) > 1                 # the groups did end at different steps
    for d, got in enumerate(together):
        alone = sample.generate(model, [d], 6, sample.make_generator(d), s, grammar=grammar)
        assert torch.equal(got, alone)
        spelled = torch.as_tensor(sym_len)[got[:, 1:]].sum(1)
        assert (spelled == 150).all()


def gqa(seed=0):
    """Grouped-query attention: 2 query heads share 1 key/value head."""
    torch.manual_seed(seed)
    return build_model(GPTConfig(**dict(PRESETS["tiny"], n_kv_head=1))).eval()      # 2 query heads, 1 kv


def gqa4(seed=0):
    """Four query heads share one key/value head (the kernel takes them together)."""
    torch.manual_seed(seed)
    return build_model(GPTConfig(**dict(PRESETS["tiny"], n_head=4, n_embd=64, n_kv_head=1, rope="1d",
                                        qk_norm=True))).eval()


def new_recipe(seed=0):
    """QK-norm and rope (which the kernel applies in a decode step: kvcache.Prep), relu2, GQA."""
    torch.manual_seed(seed)
    return build_model(GPTConfig(**dict(PRESETS["tiny"], **NEW_RECIPE))).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("make", [tiny, gqa, gqa4, new_recipe])
def test_native_attention_equals_torch(dtype, make):
    """Decoding through the native kernel (chunked cache, keys and values stored by the kernel)
    gives the torch fallback's logits (plain cache) up to rounding."""
    if kvcache.native_attend() is None:
        pytest.skip("no C compiler: the native kernel is not built here")
    model = make().to(dtype)
    idx = torch.randint(0, 76, (3, 60))
    runs = []
    for native in (True, False):
        kvcache.set_native(native)
        try:
            with torch.inference_mode():
                cache = model.new_cache(3)
                steps = [model(idx[:, :9], kv_cache=cache)[0]]
                steps += [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(9, 60)]
            assert cache.chunked == native
            runs.append(torch.cat(steps, 1).float())
        finally:
            kvcache.set_native(True)
    tol = 1e-5 if dtype == torch.float32 else 0.05
    torch.testing.assert_close(runs[0], runs[1], atol=tol, rtol=tol)


def test_joined_caches_decode_each_row_as_alone():
    """KVCache.cat (rows of several prefilled caches, repeated) then one step: each row's logits
    are bit for bit those of its own cache expanded alone (with >= MIN_ROWS rows)."""
    model = tiny()
    with torch.inference_mode():
        caches, alone = [], []
        for prefix in ([1, 20, 30], [6, 21, 31]):
            c = model.new_cache(1)
            model(torch.tensor([prefix]), kv_cache=c)
            caches.append(c)
        nxt = torch.randint(10, 74, (2 * sample.MIN_ROWS, 1))
        big = type(caches[0]).cat(caches, [sample.MIN_ROWS, sample.MIN_ROWS])
        got = model(nxt, kv_cache=big)[0]
        for i, c in enumerate(caches):
            rows = slice(i * sample.MIN_ROWS, (i + 1) * sample.MIN_ROWS)
            alone.append(model(nxt[rows], kv_cache=c.expand(sample.MIN_ROWS))[0])
    assert torch.equal(got, torch.cat(alone))


def test_a_cache_read_back_equals_what_was_written():
    """Either layout, k and v come back as written, after a prefill and single steps."""
    torch.manual_seed(0)
    for native in (True, False):
        kvcache.set_native(native)
        try:
            c = kvcache.KVCache(2, 3, 2, 40, 16)
            k, v = torch.randn(3, 2, 33, 16), torch.randn(3, 2, 33, 16)
            c.write(1, k[:, :, :7], v[:, :, :7])
            c.pos = 7
            for t in range(7, 33):
                c.write(1, k[:, :, t:t + 1], v[:, :, t:t + 1])
                c.pos += 1
            assert torch.equal(c.layer_view(1, c.k, 33), k) and torch.equal(c.layer_view(1, c.v, 33), v)
        finally:
            kvcache.set_native(True)


def test_a_decode_step_past_the_block_size_is_refused():
    """The check comes before the kernel's deferred store (which would write past the buffer)."""
    c = kvcache.KVCache(2, 1, 1, 16, 16)
    x = torch.randn(1, 1, 15, 16)
    with torch.inference_mode():
        c.write(0, x, x)
        c.write(1, x, x)
        c.pos = 15
        step = torch.randn(1, 1, 1, 16)
        for layer in (0, 1):
            c.write(layer, step, step)
            c.attend_one(layer, torch.randn(1, 1, 1, 16))
        c.pos = 16
        with pytest.raises(ValueError, match="block size"):
            c.write(0, step, step)


def test_rows_are_batch_independent_on_this_machine():
    """What sample_digits relies on to batch digits (tuning.rows_independent checks it on the
    real model at first use): a row's logits do not depend on the rows beside it."""
    assert tuning.rows_independent(tiny(), 64)
    assert tuning.rows_independent(prepare_for_sampling(tiny(), "bf16"), 64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_keys_and_values_stay_close(dtype):
    """A cache joined with int8=True (what the plan's kv 'int8' does) decodes to logits close to
    the model's own dtype's (the per-position scales keep the error at int8's resolution)."""
    if kvcache.native_attend() is None:
        pytest.skip("no C compiler: int8 caches need the native kernel")
    model = tiny().to(dtype)
    idx = torch.randint(10, 74, (20, 50))
    runs = []
    with torch.inference_mode():
        for int8 in (False, True):
            c = model.new_cache(1)
            steps = [model(idx[:1, :5], kv_cache=c)[0].expand(20, -1, -1)]
            c = type(c).cat([c], 20, int8=int8)
            assert c.int8 == int8
            steps += [model(idx[:, t:t + 1], kv_cache=c)[0] for t in range(5, 50)]
            runs.append(torch.cat(steps, 1).float())
            assert torch.equal(c.layer_view(1, c.k, 5)[0], c.layer_view(1, c.k, 5)[7])
    torch.testing.assert_close(runs[1], runs[0], atol=0.05, rtol=0.05)


def test_small_batches_take_the_plans_small_config(monkeypatch):
    """One digit's batch (up to small_rows rows) runs with the plan's small-batch config, larger
    ones with its large-batch config; the lines are the same either way."""
    model = planned(tiny(), workers=2)
    model.decode_plan.update(small=[1, 1], small_rows=8)
    seen = []
    real = sample.generate_groups
    monkeypatch.setattr(sample, "generate_groups",
                        lambda m, gs, *a: seen.append((len(gs), a[3])) or real(m, gs, *a))
    s = sample.SampleSettings(temperature=1.0)
    with torch_threads(2):             # workers are capped by the threads (taskset, a 1-core box)
        one = sample.sample_digits(model, [3], 8, s, seed=1)
        two = sample.sample_digits(model, [3, 4], 8, s, seed=1)
    assert seen == [(1, 1), (1, 1), (1, 1)]           # 8 rows: small; 16: two workers, a digit each
    assert one[3] == two[3]
