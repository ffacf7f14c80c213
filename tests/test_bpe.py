"""BPE tokens (the patch-codebook variant): the vocabulary, exact NLL per image, constrained sampling."""
import numpy as np
import pytest
import torch

from mnisttext import cli, codec, metrics, sample
from mnisttext import tokenizer as tk
from mnisttext.model import GPT, GPTConfig
from conftest import CORPUS


@pytest.fixture(scope="module")
def lines():
    return (CORPUS / "train.txt").read_text().splitlines()[:2000]


@pytest.fixture(scope="module")
def bpe(lines):
    return tk.train_bpe(lines, 160)


def test_bpe_extends_the_character_ids_and_spells_lines_exactly(bpe, lines, tmp_path):
    vocab = bpe.get_vocab()
    assert len(vocab) == 160
    assert all(vocab[c] == i for i, c in enumerate(tk.VOCAB))           # same ids as char
    g = tk.Grammar.of(bpe)
    assert not g.is_character and g.sym_len.max() > 4                    # blank runs merged
    ids = tk.encode_lines(bpe, lines)
    for line, row in zip(lines, ids):
        assert g.decode(row) == line
        assert row[0] == int(line[0]) and row[-1] == tk.END_ID           # never merged across
        assert g.sym_len[row].sum() == 150 and all(g.sym_len[i] > 0 for i in row[1:-1])
    assert np.mean([len(r) for r in ids]) < 60                          # far shorter than 152
    bpe.save(str(tmp_path / "t.json"))
    assert tk.encode_lines(tk.load(tmp_path / "t.json"), lines[:50]) == ids[:50]


def test_padded_nll_is_the_sum_over_each_line_own_tokens(bpe, lines):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=160, n_layer=1, n_head=2, n_embd=32)).eval()
    batch = torch.from_numpy(tk.encode_corpus(bpe, lines[:12])).long()
    assert (batch == tk.PAD_ID).any()
    padded = metrics.nll_per_image(model, batch, dtype="fp32")
    for r, row in enumerate(tk.encode_lines(bpe, lines[:12])):
        one = metrics.nll_per_image(model, torch.tensor([row]), dtype="fp32")[0]
        assert padded[r] == pytest.approx(one, rel=1e-5)


def test_padding_table_allows_every_real_token_and_only_zero_padding(bpe, lines):
    """Every token of a real line is allowed where it stands (the constraint never forbids an
    image), and a token allowed at a position leaves the padding at zero there."""
    g = tk.Grammar.of(bpe)
    table = g.padding_table(1)
    assert table.shape == (151, 160) and g.forced_padding(1) == (0, 0)
    for row in tk.encode_lines(bpe, lines[:300]):
        pos = 0
        for i in row[1:-1]:
            assert table[pos, i]
            pos += g.sym_len[i]
    mask = codec.padding_bits(1)
    rng = np.random.default_rng(0)
    for pos, i in zip(rng.integers(0, 151, 3000), rng.integers(0, 160, 3000)):
        s = g.strings[i]
        if g.sym_len[i] and table[pos, i]:
            assert pos + len(s) <= 150
            assert all((ord(c) - 58) & mask[pos + j] == 0 for j, c in enumerate(s))


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.0, None), (0.8, 5)])
def test_bpe_sampling_is_well_formed_and_cache_equals_no_cache(bpe, temperature, top_k):
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=160, n_layer=2, n_head=2, n_embd=32)).eval()
    g = tk.Grammar.of(bpe)
    runs = []
    for use_cache in (True, False):
        st = sample.SampleSettings(temperature=temperature, top_k=top_k, use_cache=use_cache)
        toks = sample.generate(model, [7], 16, sample.make_generator(5), st, grammar=g)
        runs.append(toks)
    assert torch.equal(runs[0], runs[1])
    out = sample.tokens_to_lines(runs[0], g)
    assert all(len(l) == 152 and l[0] == "7" for l in out)
    _, _, _, errors = codec.parse_lines(out)
    assert not errors
    bits = codec.decode_batch(out)[1]
    bits[:, 1:-1, 1:-1] = 0
    assert not bits.any()                                  # the padding stays at zero
    # a prefix of given symbols is kept, the rest completed to exactly 150
    prefix = tk.encode_lines(bpe, ["3" + ":" * 40])[0]
    done = sample.tokens_to_lines(sample.generate(model, prefix, 4, sample.make_generator(0),
                                                  grammar=g), g)
    assert all(l.startswith("3" + ":" * 40) and len(l) == 152 for l in done)


def test_train_generate_eval_with_bpe(tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for split, n in (("train", 400), ("test", 40)):
        src = (CORPUS / f"{split}.txt").read_text().splitlines()[:n]
        (corpus / f"{split}.txt").write_text("\n".join(src) + "\n")
    run = tmp_path / "run"
    assert cli.main(["train", "--corpus", str(corpus), "--out", str(run), "--preset", "tiny",
                     "--tokenizer", "bpe", "--bpe-vocab", "120", "--max-steps", "6",
                     "--batch-size", "16", "--eval-every", "0", "--threads", "1"]) == 0
    assert tk.load(run / "best" / "tokenizer.json").get_vocab_size() == 120
    capsys.readouterr()
    assert cli.main(["generate", "--checkpoint", str(run / "best"), "--digits", "2",
                     "--candidates", "6", "--keep", "2", "--img-dir", str(tmp_path / "img")]) == 0
    out = [l for l in capsys.readouterr().out.splitlines() if l.startswith("2")]
    assert len(out) == 2 and all(len(l) == 152 for l in out)
