"""Character-level tokenizer, built with HF `tokenizers` and saved as tokenizer.json.

    python -c "from mnisttext.tokenizer import build; build().save('tokenizer.json')"

Vocabulary (ids are fixed, the model and the sampler rely on them):
  0-9    the class digits '0'..'9'
  10-73  the 64 symbols ':'..'y' (symbol value v has id 10 + v)
  74     ')' the end mark
  75     <pad>, for batches of unequal length (learned-token variants); never in a corpus line
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from . import codec

DIGIT_IDS = list(range(10))
SYMBOL_OFFSET = 10
END_ID = SYMBOL_OFFSET + codec.ALPHABET_SIZE   # 74
PAD_ID = END_ID + 1                            # 75
PAD = "<pad>"
VOCAB = list(codec.DIGITS) + list(codec.SYMBOLS) + [codec.END, PAD]
VOCAB_SIZE = len(VOCAB)


def build() -> Tokenizer:
    """The character tokenizer: every character is one token, decode concatenates."""
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(VOCAB)}, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([PAD])
    return tok


def load(path) -> Tokenizer:
    path = Path(path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise ValueError(f"{path}: not a tokenizer.json ({e})") from None


def is_character_tokenizer(tok: Tokenizer) -> bool:
    return tok.get_vocab() == {c: i for i, c in enumerate(VOCAB)}


def encode_lines(tok: Tokenizer, lines: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(lines, add_special_tokens=False)]


def encode_corpus(tok: Tokenizer, lines: list[str]) -> np.ndarray:
    """Equal-length lines -> (N, L) uint8 ids, via the tokenizer (Rust, batched)."""
    ids = encode_lines(tok, lines)
    return np.asarray(ids, dtype=np.uint8)


def decode_ids(tok: Tokenizer, ids) -> str:
    return tok.decode(list(map(int, ids)), skip_special_tokens=True)

