"""The model: cache = no cache, attention kernels, dropout, configs old and new."""
import json

import pytest
import torch
from conftest import PREVIOUS_FLAGSHIP

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
    if arch == "gpt":       # room for the whole line (how it grows is kvcache.py's business)
        assert max(caps) >= 152


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
    previous = GPTConfig.from_dict(json.loads((PREVIOUS_FLAGSHIP / "config.json").read_text()))
    assert previous.gelu == "tanh"               # the previous flagship's weights were trained with it


@pytest.mark.parametrize("change, field", [
    (dict(n_head=3), "n_head"), (dict(n_embd="256"), "n_embd"), (dict(n_layer=0), "n_layer"),
    (dict(dropout=1.5), "dropout"), (dict(n_embd=1 << 20, n_layer=1000), "parameters"),
    (dict(vocab_size=10), "vocab_size"), (dict(bias="yes"), "bias"), (dict(arch="lstm"), "arch")])
def test_bad_configs_name_the_field_before_allocating(change, field):
    d = dict(GPTConfig(**PRESETS["tiny"]).to_dict(), **change)
    with pytest.raises(ConfigError, match=field):
        GPTConfig.from_dict(d)


# --- the options of docs/ablations.md: each off by default, each cached = uncached -----------

OPTIONS = {
    "rope1d": dict(rope="1d"), "rope2d": dict(rope="2d"), "no_wpe_rope": dict(wpe=False, rope="1d"),
    "qk_norm": dict(qk_norm=True), "relu2": dict(act="relu2"), "zero_init": dict(zero_init_proj=True),
    "canon6": dict(conv_kernel=6), "canon_a": dict(conv_kernel=6, conv_at="a"),
    "canon_c": dict(conv_kernel=3, conv_at="c"), "canon1": dict(conv_kernel=1),
    "gqa": dict(n_kv_head=1),
    "all": dict(rope="1d", qk_norm=True, act="relu2", conv_kernel=6, zero_init_proj=True, n_kv_head=1),
    "value_embed": dict(value_embed=True), "unet": dict(unet=True),
    "aug_embed": dict(aug_embed=3, rope="1d", n_kv_head=1),
    "new_recipe_ve_unet": dict(rope="1d", qk_norm=True, act="relu2", zero_init_proj=True, n_kv_head=1,
                               value_embed=True, unet=True),
}


def optioned(opts, seed=0, perturb=True):
    torch.manual_seed(seed)
    model = build_model(GPTConfig(**dict(PRESETS["tiny"], **opts))).eval()
    if perturb:      # zero-initialised weights (canon layers, projections) would hide mistakes
        with torch.no_grad():
            for n, p in model.named_parameters():
                if any(k in n for k in ("canon", "c_proj", "norm", "value_embeds", "skip", "aug_embeds")):
                    p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_options_cached_logits_equal_uncached(name):
    model = optioned(OPTIONS[name])
    idx = torch.randint(0, 76, (3, 152))
    full, _ = model(idx)
    cache = model.new_cache(3)
    steps = [model(idx[:, :7], kv_cache=cache)[0]]           # a chunk, then one at a time,
    for t in range(7, 60):
        steps.append(model(idx[:, t:t + 1], kv_cache=cache)[0])
    steps.append(model(idx[:, 60:152], kv_cache=cache)[0])   # then a chunk after a prefix
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_options_expanded_cache_equals_batched_prefill(name):
    model = optioned(OPTIONS[name])
    prefix = torch.tensor([[4, 20, 30, 41, 12, 13, 70, 22]])     # longer than a canon kernel
    cache = model.new_cache(1)
    model(prefix, kv_cache=cache)
    big = cache.expand(5)
    nxt = torch.randint(10, 74, (5, 2))
    model(nxt[:, :1], kv_cache=big)
    got, _ = model(nxt[:, 1:], kv_cache=big)
    want, _ = model(torch.cat([prefix.expand(5, -1), nxt], 1))
    torch.testing.assert_close(got[:, -1], want[:, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_options_train_and_causal(name):
    """A loss with gradients everywhere, and no position sees the future."""
    model = optioned(OPTIONS[name]).train()
    idx = torch.randint(0, 76, (2, 40))
    aug = dict(aug=torch.tensor([0, 2])) if model.config.aug_embed else {}
    _, loss = model(idx[:, :-1], idx[:, 1:], **aug)
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    a, _ = model.eval()(idx)
    idx2 = idx.clone()
    idx2[:, 25:] = (idx2[:, 25:] + 7) % 76
    b, _ = model(idx2)
    torch.testing.assert_close(a[:, :25], b[:, :25])


def test_new_fields_default_to_the_old_model():
    """A config.json without the new fields builds the model it always built: the same
    parameters, in the same order, with the same initial values for the same seed."""
    d = GPTConfig(**PRESETS["tiny"]).to_dict()
    new_keys = ("wpe", "rope", "qk_norm", "act", "conv_kernel", "conv_at", "zero_init_proj", "n_kv_head",
                "value_embed", "unet", "aug_embed")
    old = {k: v for k, v in d.items() if k not in new_keys}
    cfg = GPTConfig.from_dict(old)
    assert (cfg.wpe, cfg.rope, cfg.qk_norm, cfg.act, cfg.conv_kernel, cfg.zero_init_proj,
            cfg.n_kv_head) == (True, "none", False, "gelu", 0, False, 0)
    torch.manual_seed(0)
    names = [n for n, _ in build_model(cfg).named_parameters()]
    assert names[:2] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert not any("canon" in n or "norm" in n or "value_embeds" in n or "skip" in n for n in names)
    previous = GPTConfig.from_dict(json.loads((PREVIOUS_FLAGSHIP / "config.json").read_text()))
    assert previous.rope == "none" and previous.conv_kernel == 0 and previous.act == "gelu"


def test_canon_layers_start_as_the_identity_and_zero_init_zeroes_the_projections():
    torch.manual_seed(0)
    plain = build_model(GPTConfig(**PRESETS["tiny"])).eval()
    torch.manual_seed(0)
    canon = build_model(GPTConfig(**dict(PRESETS["tiny"], conv_kernel=6))).eval()
    idx = torch.randint(0, 76, (2, 30))
    torch.testing.assert_close(canon(idx)[0], plain(idx)[0])
    z = build_model(GPTConfig(**dict(PRESETS["tiny"], zero_init_proj=True)))
    assert all(not p.any() for n, p in z.named_parameters() if n.endswith("c_proj.weight"))


@pytest.mark.parametrize("opts", [dict(value_embed=True), dict(unet=True), dict(n_layer=3, unet=True),
                                  dict(aug_embed=24)])
def test_value_embeds_and_unet_skips_start_as_the_plain_model(opts):
    """Zero at start, made after every other weight: the same seed gives the plain model's
    weights and outputs."""
    torch.manual_seed(0)
    plain = build_model(GPTConfig(**dict(PRESETS["tiny"], **{k: v for k, v in opts.items() if k == "n_layer"}))).eval()
    torch.manual_seed(0)
    new = build_model(GPTConfig(**dict(PRESETS["tiny"], **opts))).eval()
    idx = torch.randint(0, 76, (2, 30))
    torch.testing.assert_close(new(idx)[0], plain(idx)[0])
    if new.config.aug_embed:
        torch.testing.assert_close(new(idx, aug=torch.tensor([3, 24]))[0], plain(idx)[0])
    extra = {n for n, _ in new.named_parameters()} - {n for n, _ in plain.named_parameters()}
    assert extra and all(n.startswith(("value_embeds", "skip_weights", "aug_embeds")) for n in extra)


def test_augmentation_ids_add_their_embedding_and_id_0_adds_nothing():
    model = optioned(dict(aug_embed=3))
    idx = torch.randint(0, 76, (3, 20))
    plain, _ = model(idx)
    got, _ = model(idx, aug=torch.tensor([0, 1, 3]))
    assert torch.equal(got[0], plain[0])                      # id 0: exactly the line as it is
    assert not torch.allclose(got[1], plain[1]) and not torch.allclose(got[1], got[2])
    emb = model.aug_embeds.weight
    with torch.no_grad():                                     # id k is the (k-1)-th embedding
        torch.testing.assert_close(model.augmentation(torch.tensor([3, 0]))[0], emb[2])
    for bad in ([4], [-1]):
        with pytest.raises(ValueError, match="augmentation ids must be in 0..3"):
            model(idx[:1], aug=torch.tensor(bad))


def test_rope2d_angles_follow_pixel_rows_and_columns():
    from mnisttext.model import rope_angles
    cfg = GPTConfig(**dict(PRESETS["tiny"], rope="2d"))      # head size 16: 4 row, 4 column pairs
    ang = rope_angles(cfg)
    assert ang.shape == (152, 8)
    # symbol s at position s + 1: the symbol 5 later is one pixel row down, same column
    for i in (1, 7, 33, 140):
        torch.testing.assert_close(ang[i + 5, :4] - ang[i, :4], ang[6, :4] - ang[1, :4])
        torch.testing.assert_close(ang[i + 5, 4:], ang[i, 4:])


def test_gqa_shares_key_value_heads():
    model = optioned(dict(n_kv_head=1))
    att = model.transformer.h[0].attn
    assert att.c_attn.out_features == (2 + 2 * 1) * 16       # 2 query heads, 1 key, 1 value head
    assert model.new_cache(3).shape[2] == 1                  # the cache holds 1 head


@pytest.mark.parametrize("change, field", [
    (dict(rope="3d"), "rope"), (dict(act="swish"), "act"), (dict(conv_kernel=-1), "conv_kernel"),
    (dict(conv_kernel=True), "conv_kernel"), (dict(conv_at="b"), "conv_at"),
    (dict(n_kv_head=3, n_head=4, n_embd=32), "n_kv_head"), (dict(qk_norm="yes"), "qk_norm"),
    (dict(wpe=1), "wpe"), (dict(rope="1d", n_head=4, n_embd=24), "rope"),
    (dict(arch="gru", conv_kernel=6), "arch"), (dict(aug_embed=-1), "aug_embed"),
    (dict(arch="gru", aug_embed=24), "arch")])
def test_bad_option_values_name_the_field(change, field):
    d = dict(GPTConfig(**PRESETS["tiny"]).to_dict(), **change)
    with pytest.raises(ConfigError, match=field):
        GPTConfig.from_dict(d)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_options_sample_path_equals_the_model(name):
    """The sampler's bf16 (prepacked on a CPU) copy gives the model's logits, decoding with the
    cache (packing.py fuses the GELU into c_fc only for act="gelu")."""
    from mnisttext.tuning import prepare_for_sampling
    from mnisttext.runtime import bf16_capable
    if not bf16_capable("cpu"):
        pytest.skip("no bf16 on this CPU: the sampler keeps the fp32 model")
    model = optioned(OPTIONS[name])
    fast = prepare_for_sampling(model, "bf16")
    idx = torch.randint(0, 76, (4, 40))
    want, _ = model(idx)
    cache = fast.new_cache(4)
    got = [fast(idx[:, :5], kv_cache=cache)[0]] + [fast(idx[:, t:t + 1], kv_cache=cache)[0]
                                                    for t in range(5, 40)]
    got = torch.cat(got, 1).float()
    assert (got - want).abs().max() < 0.1 * want.abs().max()
