"""The model: cache = no cache, attention kernels, dropout, configs old and new."""
import json

import pytest
import torch
from conftest import ROOT

from mnisttext.model import PRESETS, ConfigError, GPTConfig, build_model, causal_attention
from mnisttext.runtime import Dropout


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


def test_gelu_field_old_configs_load_as_tanh_and_bad_values_are_refused():
    d = GPTConfig(**PRESETS["tiny"]).to_dict()
    assert d["gelu"] == "exact"                              # new models: the exact GELU
    old = {k: v for k, v in d.items() if k != "gelu"}        # a config.json from before the field
    assert GPTConfig.from_dict(old).gelu == "tanh"
    assert build_model(GPTConfig.from_dict(old)).transformer.h[0].mlp.gelu.approximate == "tanh"
    with pytest.raises(ValueError, match="gelu"):
        GPTConfig.from_dict(dict(d, gelu="relu"))
    assert GPTConfig.from_dict(dict(d, gelu="none")).gelu == "exact"   # the field's old name
    shipped = GPTConfig.from_dict(json.loads((ROOT / "checkpoints/gpt/config.json").read_text()))
    assert shipped.gelu == "tanh"                            # the weights were trained with it


@pytest.mark.parametrize("change, field", [
    (dict(n_head=3), "n_head"), (dict(n_embd="256"), "n_embd"), (dict(n_layer=0), "n_layer"),
    (dict(dropout=1.5), "dropout"), (dict(n_embd=1 << 20, n_layer=1000), "parameters"),
    (dict(vocab_size=10), "vocab_size"), (dict(bias="yes"), "bias"), (dict(arch="lstm"), "arch")])
def test_bad_configs_name_the_field_before_allocating(change, field):
    d = dict(GPTConfig(**PRESETS["tiny"]).to_dict(), **change)
    with pytest.raises(ConfigError, match=field):
        GPTConfig.from_dict(d)
