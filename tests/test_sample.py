"""The sampler: cached = uncached, same seed -> same lines, constrained decoding, top-k/top-p,
the seed contract across digits, and the packed bf16 decode model."""
import copy

import pytest
import torch

from mnisttext import codec, sample
from mnisttext import tokenizer as tk
from mnisttext.model import PRESETS, GPTConfig, build_model
from mnisttext.packing import PackedLinear, pack_for_cpu_decode, prepare_for_sampling


def tiny(arch="gpt", seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(**PRESETS["tiny"]) if arch == "gpt" else GPTConfig(arch="gru", n_layer=2, n_embd=32, dropout=0.0)
    return build_model(cfg).eval()


def test_packed_decode_model_matches_the_plain_bf16_model():
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
    assert lines == ["5" + "y" * 150 + ")"] * 3                   # greedy: the favourite, then ')'
