"""Tokenizers, built with HF `tokenizers` and saved as tokenizer.json: one token per character
(the default), or BPE tokens learned on the corpus (the patch-codebook variant).

    python -c "from mnisttext.tokenizer import build; build().save('tokenizer.json')"
    python cli.py train --tokenizer bpe --bpe-vocab 512      # learns the merges on corpus/train.txt

Vocabulary (ids are fixed, the model and the sampler rely on them):
  0-9    the class digits '0'..'9'
  10-73  the 64 symbols ':'..'y' (symbol value v has id 10 + v)
  74     ')' the end mark
  75     <pad>, for batches of unequal length (BPE lines); never in a corpus line
  76...  BPE only: runs of symbols learned from the corpus (e.g. a blank row '::::::')
A BPE line is its class digit, body tokens that spell exactly the image's symbols, then ')'.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
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


BODY_PATTERN = Regex(f"[{codec.SYMBOLS[0]}-{codec.SYMBOLS[-1]}]+")


def train_bpe(lines: list[str], vocab_size: int = 512) -> Tokenizer:
    """BPE over the image bodies: the character vocabulary (same ids) plus learned symbol runs.

    Merges never cross the class digit or ')': the pre-tokenizer isolates the body."""
    from tokenizers import trainers     # only BPE training needs the trainers
    if vocab_size <= VOCAB_SIZE:
        raise ValueError(f"BPE vocab size must exceed the {VOCAB_SIZE} character tokens, got {vocab_size}")
    learner = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - VOCAB_SIZE + codec.ALPHABET_SIZE,
                                  initial_alphabet=list(codec.SYMBOLS), show_progress=False,
                                  min_frequency=2)
    learner.train_from_iterator((l[1:1 + codec.n_symbols(codec.bpp_of_length(len(l)))]
                                 for l in lines), trainer)
    learned = json.loads(learner.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    vocab = {c: i for i, c in enumerate(VOCAB)}
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Split(BODY_PATTERN, behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([PAD])
    return tok


@dataclass
class Grammar:
    """What a well-formed line allows, per token id: the sampler and the loaders need it.

    sym_len[i] is how many image symbols token i spells (0 for digits, ')' and <pad>)."""
    sym_len: np.ndarray
    strings: list[str]

    @classmethod
    def of(cls, tok: Tokenizer) -> "Grammar":
        vocab = tok.get_vocab()
        strings = [""] * len(vocab)
        for piece, i in vocab.items():
            strings[i] = "" if piece == PAD else piece
        sym_len = np.array([len(s) if s and all(c in codec.SYMBOL_SET for c in s) else 0
                            for s in strings], dtype=np.int64)
        return cls(sym_len, strings)

    @classmethod
    @functools.cache
    def character(cls) -> "Grammar":
        return cls.of(build())

    @property
    def is_character(self) -> bool:
        return len(self.strings) == VOCAB_SIZE

    def padding_table(self, bpp: int = 1) -> np.ndarray:
        """(150*bpp + 1, V) bool: whether token i may come once `pos` symbols are spelled, as
        far as the padding goes: every symbol it spells from there leaves the padding pixels'
        bits at 0 and fits in the line. Tokens that spell no symbol: always True."""
        mask = codec.padding_bits(bpp)
        n = len(mask)
        table = np.ones((n + 1, len(self.strings)), dtype=bool)
        for i, s in enumerate(self.strings):
            if not self.sym_len[i]:
                continue
            values = np.frombuffer(s.encode("ascii"), dtype=np.uint8) - codec.ALPHABET_START
            last = n - len(values)                       # the last position it fits at
            if last < 0:
                table[:, i] = False
                continue
            ok = np.zeros(n + 1, dtype=bool)
            ok[:last + 1] = True
            for j, v in enumerate(values):
                ok[:last + 1] &= (mask[j:last + 1 + j] & v) == 0
            table[:, i] = ok
        return table

    def forced_padding(self, bpp: int = 1) -> tuple[int, int]:
        """(lead, tail): with one token per character, the symbols at the start and at the end
        of a line that are all padding (bpp 1: the first and last pixel rows, 5 symbols each;
        bpp 6: 31, a row and the next row's first pixel), which a sampler can write without
        asking the model; (0, 0) for BPE tokens."""
        body = self.sym_len[self.sym_len > 0]
        if not self.is_character or body.max(initial=0) != 1:
            return 0, 0
        full = codec.padding_bits(bpp) == codec.ALPHABET_SIZE - 1
        lead = int(np.argmin(full)) if not full.all() else len(full)
        tail = int(np.argmin(full[::-1])) if not full.all() else len(full)
        return lead, tail

    def decode(self, ids) -> str:
        return "".join(self.strings[int(i)] for i in ids)


def load(path) -> Tokenizer:
    """tokenizer.json -> a Tokenizer, checked (see check): a ValueError names the file."""
    path = Path(path)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise ValueError(f"{path}: not a tokenizer.json ({e})") from None
    return check(tok, str(path))


def from_json(text: str, source: str = "tokenizer.json") -> Tokenizer:
    """A tokenizer from tokenizer.json's text (e.g. sent by rank 0 of a DDP run), checked."""
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:
        raise ValueError(f"{source}: not a tokenizer.json ({e})") from None
    return check(tok, source)


PROBE = "5" + (codec.SYMBOLS * 3)[:codec.n_symbols(1)] + codec.END     # every symbol, in a line


def check(tok: Tokenizer, source: str = "tokenizer.json") -> Tokenizer:
    """The tokenizer is one of ours, or a ValueError saying how it is not: ids 0..75 are the
    character vocabulary above (the model and the sampler rely on them), every other token is a
    run of symbols, and a line encodes to its digit, tokens that spell its symbols, and ')'.
    A tokenizer that passes cannot make the sampler loop or index out of range."""
    vocab = tok.get_vocab()
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{source}: token ids are not 0..{len(vocab) - 1} without gaps")
    pieces = {i: p for p, i in vocab.items()}
    for i, want in enumerate(VOCAB):
        if pieces.get(i) != want:
            raise ValueError(f"{source}: token {i} is {pieces.get(i)!r}, the character "
                             f"vocabulary has {want!r} there: not a tokenizer of this format")
    bad = next((i for i in range(VOCAB_SIZE, len(vocab))
                if not pieces[i] or not set(pieces[i]) <= codec.SYMBOL_SET), None)
    if bad is not None:
        raise ValueError(f"{source}: token {bad} ({pieces[bad]!r}) is not a run of symbols")
    ids = tok.encode(PROBE, add_special_tokens=False).ids
    if not ids or ids[0] != 5 or ids[-1] != END_ID or "".join(pieces[i] for i in ids) != PROBE:
        raise ValueError(f"{source}: does not encode a line as its characters (its "
                         f"normalizer or pre-tokenizer is not this format's)")
    return tok


def is_character_tokenizer(tok: Tokenizer) -> bool:
    return tok.get_vocab() == {c: i for i, c in enumerate(VOCAB)}


def encode_lines(tok: Tokenizer, lines: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(lines, add_special_tokens=False)]


def encode_corpus(tok: Tokenizer, lines: list[str]) -> np.ndarray:
    """Lines -> (N, L) ids via the tokenizer (Rust, batched); BPE lines, whose token counts
    differ, are padded with <pad> to the longest."""
    ids = encode_lines(tok, lines)
    L = max(map(len, ids))
    dtype = np.uint8 if tok.get_vocab_size() <= 256 else np.int16
    out = np.full((len(ids), L), PAD_ID, dtype=dtype)
    for r, row in enumerate(ids):
        out[r, :len(row)] = row
    return out


def decode_ids(tok: Tokenizer, ids) -> str:
    return tok.decode(list(map(int, ids)), skip_special_tokens=True)

