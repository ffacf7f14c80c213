"""The model and the sampler: cache = no cache, seeds, constrained decoding, top-k/top-p."""
import json

import pytest
import torch
from conftest import ROOT

from mnisttext import codec, sample
from mnisttext import tokenizer as tk
from mnisttext.model import (PRESETS, Dropout, GPTConfig, PackedLinear, build_model,
                             causal_attention, pack_for_cpu_decode)


def tiny(arch="gpt", seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(**PRESETS["tiny"]) if arch == "gpt" else GPTConfig(arch="gru", n_layer=2, n_embd=32, dropout=0.0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("arch", ["gpt", "gru"])
def test_cached_logits_equal_uncached(arch):
    model = tiny(arch)
    idx = torch.randint(0, 76, (3, 152))                     # a whole line: the cache grows to it
    full, _ = model(idx)
    cache = model.new_cache(3)
    first, _ = model(idx[:, :7], kv_cache=cache)          # a chunk
    steps = [first]
    caps = set()
    for t in range(7, 152):                                  # then one token at a time
        steps.append(model(idx[:, t:t + 1], kv_cache=cache)[0])
        caps.add(getattr(cache, "capacity", None))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    if arch == "gpt":       # doubling from 16, capped at the block size
        assert caps == {16, 32, 64, 128, 152}


def test_chunk_after_prefix_uses_the_right_mask():
    model = tiny()
    idx = torch.randint(0, 76, (2, 30))
    full, _ = model(idx)
    cache = model.new_cache(2)
    a, _ = model(idx[:, :10], kv_cache=cache)
    b, _ = model(idx[:, 10:30], kv_cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


def test_expanded_cache_equals_batched_prefill():
    model = tiny()
    prefix = torch.tensor([[4, 20, 30]])
    cache = model.new_cache(1)
    model(prefix, kv_cache=cache)
    big = cache.expand(5)
    nxt = torch.randint(10, 74, (5, 1))
    got, _ = model(nxt, kv_cache=big)
    want, _ = model(torch.cat([prefix.expand(5, -1), nxt], 1))
    torch.testing.assert_close(got[:, -1], want[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunks", [1, 2, 3, 17])
def test_cpu_attention_equals_fused_kernel(chunks):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, requires_grad=True) for _ in range(3))   # odd T: uneven blocks
    got = causal_attention(q, k, v, chunks)
    assert got.shape == (2, 3, 17, 8)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, (q, k, v), g)
    for a, b in zip(grads, torch.autograd.grad(want, (q, k, v), g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_packed_decode_model_matches_the_plain_bf16_model():
    import copy
    model = tiny()
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
    out = sample.generate(sample.for_sampling(model, "bf16"), [7], 4, sample.make_generator(0))
    assert all(codec.decode(line)[0] == 7 for line in sample.tokens_to_lines(out))


def test_cpu_dropout_rate_scale_gradient_and_seed():
    d = Dropout(0.1).train()
    x = torch.ones(401, 1001, requires_grad=True)             # 4k + 1 elements: a partial last draw
    torch.manual_seed(0)
    y = d(x)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - 0.1) < 0.003
    flat = dropped.flatten()[:400400].view(-1, 4)             # the four quarters of each draw
    for i, j in [(0, 1), (1, 2), (2, 3), (0, 3)]:             # are independent: both dropped ~ p^2
        assert abs((flat[:, i] & flat[:, j]).float().mean().item() - 0.01) < 0.002
    assert abs(y.mean().item() - 1.0) < 0.005                 # survivors scaled by 1/(1-p)
    torch.testing.assert_close(y[~dropped], torch.full_like(y[~dropped], 1 / (1 - 6554 / 65536)))
    y.sum().backward()
    assert torch.equal(x.grad == 0, dropped)
    torch.manual_seed(0)
    assert torch.equal(d(x), y)                               # the global seed decides the mask
    assert torch.equal(d.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    assert not Dropout(1.0).train()(x).any()
    xb = torch.ones(300, 1001, dtype=torch.bfloat16)
    yb = d.train()(xb)
    assert yb.dtype == torch.bfloat16 and abs((yb == 0).float().mean().item() - 0.1) < 0.003


def test_loss_is_mean_cross_entropy():
    model = tiny()
    idx = torch.randint(0, 76, (2, 20))
    logits, loss = model(idx[:, :-1], idx[:, 1:])
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 76), idx[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, want)


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


def test_gelu_field_old_configs_load_as_tanh_and_bad_values_are_refused():
    d = GPTConfig(**PRESETS["tiny"]).to_dict()
    assert d["gelu"] == "none"                               # new models: the exact GELU
    old = {k: v for k, v in d.items() if k != "gelu"}        # a config.json from before the field
    assert GPTConfig.from_dict(old).gelu == "tanh"
    assert build_model(GPTConfig.from_dict(old)).transformer.h[0].mlp.gelu.approximate == "tanh"
    with pytest.raises(ValueError, match="gelu"):
        GPTConfig.from_dict(dict(d, gelu="relu"))
    shipped = GPTConfig.from_dict(json.loads((ROOT / "checkpoints/gpt/config.json").read_text()))
    assert shipped.gelu == "tanh"                            # the weights were trained with it
