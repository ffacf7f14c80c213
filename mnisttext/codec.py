"""The text format: MNIST digits <-> lines of 152 printable characters. Pure numpy.

    >>> from mnisttext import codec
    >>> line = codec.encode(image_28x28_uint8, label=5)       # '5:::…::)'
    >>> label, bits = codec.decode(line)                       # bits: (30, 30) uint8

Format (bits per pixel b = 1, the default):
  pad 28x28 to 30x30 with one pixel of zeros on every side; quantize each pixel to 2**b levels
  (b = 1: round(x/255), i.e. x >= 128 -> 1); read row-major; write every pixel's b bits MSB-first
  into one bit stream; cut the stream into 6-bit groups, MSB-first; write group value v as
  chr(58 + v), ':' .. 'y'. A line is the class digit, 150*b symbols, then ')'.

Everything is vectorized over a batch; the scalar functions are thin wrappers.
"""
from __future__ import annotations

import numpy as np

SIDE = 30                     # 28 + 1 px of zeros on every side
PAD = 1
PIXELS = SIDE * SIDE          # 900
SYMBOL_BITS = 6
ALPHABET_START = 58           # ord(':')
ALPHABET_SIZE = 1 << SYMBOL_BITS
SYMBOLS = "".join(chr(ALPHABET_START + v) for v in range(ALPHABET_SIZE))   # ':' .. 'y'
SYMBOL_SET = frozenset(SYMBOLS)
END = ")"
DIGITS = "0123456789"
MAX_BPP = 6

_WEIGHTS = (1 << np.arange(SYMBOL_BITS - 1, -1, -1)).astype(np.uint8)     # 32 16 8 4 2 1


class CodecError(ValueError):
    """A line that is not in the format. The message says what is wrong and where."""


def _check_bpp(bpp: int) -> int:
    if not isinstance(bpp, (int, np.integer)) or not 1 <= bpp <= MAX_BPP:
        raise CodecError(f"bits per pixel must be an integer in 1..{MAX_BPP}, got {bpp!r}")
    return int(bpp)


def n_symbols(bpp: int = 1) -> int:
    """Symbols per image: 900 pixels * bpp bits / 6 bits per symbol."""
    return PIXELS * _check_bpp(bpp) // SYMBOL_BITS


def line_length(bpp: int = 1) -> int:
    """Characters per line: class digit + symbols + ')'."""
    return n_symbols(bpp) + 2


def bpp_of_length(length: int) -> int:
    """Bits per pixel of lines (or model contexts) of this many characters/tokens; a CodecError
    where no bits per pixel fits (shorter than a 1-bit line, longer than a 6-bit one allows)."""
    bpp = (length - 2) // n_symbols(1)
    if not 1 <= bpp <= MAX_BPP:
        raise CodecError(f"length {length}: no line of 1..{MAX_BPP} bits per pixel has it "
                         f"(a line is {line_length(1)} characters at 1 bit per pixel, "
                         f"{line_length(MAX_BPP)} at {MAX_BPP})")
    return bpp


def padding_bits(bpp: int = 1) -> np.ndarray:
    """(150*bpp,) uint8: each symbol's bits that hold padding pixels, which are 0 in every line
    made from a 28x28 image. A symbol whose bits are all padding (63) is always ':'."""
    bpp = _check_bpp(bpp)
    levels = np.full((1, SIDE, SIDE), (1 << bpp) - 1, dtype=np.uint8)
    levels[:, PAD:SIDE - PAD, PAD:SIDE - PAD] = 0
    return levels_to_symbols(levels, bpp)[0]


def binarize(levels: np.ndarray, bpp: int = 1) -> np.ndarray:
    """Gray levels -> 0/1 at the middle level (what the classifiers read); bpp 1 is unchanged."""
    if bpp == 1:
        return levels
    return (np.asarray(levels) >= (1 << (bpp - 1))).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# images -> levels -> symbols -> text

def quantize(images: np.ndarray, bpp: int = 1) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 30, 30) uint8 levels in [0, 2**bpp - 1], zero-padded.

    Level = round(x / 255 * (2**bpp - 1)). Integer arithmetic, and for these level counts no x
    falls on a half, so the result is the same under any rounding convention.
    """
    bpp = _check_bpp(bpp)
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.shape[1:] != (28, 28):
        raise CodecError(f"images must be (N, 28, 28), got {images.shape}")
    top = (1 << bpp) - 1
    levels = (images.astype(np.uint32) * (2 * top) + 255) // 510
    out = np.zeros((images.shape[0], SIDE, SIDE), dtype=np.uint8)
    out[:, PAD:PAD + 28, PAD:PAD + 28] = levels
    return out


def levels_to_symbols(levels: np.ndarray, bpp: int = 1) -> np.ndarray:
    """(N, 30, 30) levels -> (N, 150*bpp) symbol values in [0, 63]."""
    bpp = _check_bpp(bpp)
    flat = np.asarray(levels, dtype=np.uint8).reshape(len(levels), PIXELS)
    shifts = np.arange(bpp - 1, -1, -1, dtype=np.uint8)                  # MSB first
    bits = (flat[:, :, None] >> shifts) & 1                               # (N, 900, bpp)
    groups = bits.reshape(len(flat), -1, SYMBOL_BITS)                     # (N, S, 6)
    return (groups * _WEIGHTS).sum(-1, dtype=np.uint8)


def symbols_to_levels(symbols: np.ndarray, bpp: int = 1) -> np.ndarray:
    """(N, 150*bpp) symbol values -> (N, 30, 30) levels. Inverse of levels_to_symbols."""
    bpp = _check_bpp(bpp)
    symbols = np.asarray(symbols, dtype=np.uint8)
    bits = (symbols[:, :, None] >> np.arange(SYMBOL_BITS - 1, -1, -1, dtype=np.uint8)) & 1
    bits = bits.reshape(len(symbols), PIXELS, bpp)
    weights = (1 << np.arange(bpp - 1, -1, -1)).astype(np.uint8)
    return (bits * weights).sum(-1, dtype=np.uint8).reshape(-1, SIDE, SIDE)


def encode_bytes(images: np.ndarray, labels, bpp: int = 1, newline: bool = True) -> bytes:
    """Encode a batch straight to ASCII bytes (one line per image). The fast path for export."""
    symbols = levels_to_symbols(quantize(images, bpp), bpp)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(symbols):
        raise CodecError(f"{len(symbols)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CodecError("labels must be digits 0..9")
    width = symbols.shape[1] + 2 + int(newline)
    buf = np.empty((len(symbols), width), dtype=np.uint8)
    buf[:, 0] = ord("0") + labels.astype(np.uint8)
    buf[:, 1:1 + symbols.shape[1]] = symbols + ALPHABET_START
    buf[:, 1 + symbols.shape[1]] = ord(END)
    if newline:
        buf[:, -1] = ord("\n")
    return buf.tobytes()


def encode_batch(images: np.ndarray, labels, bpp: int = 1) -> list[str]:
    """(N, 28, 28) uint8 images + N labels -> N lines."""
    return encode_bytes(images, labels, bpp).decode("ascii").splitlines()


def encode(image: np.ndarray, label: int, bpp: int = 1) -> str:
    """One 28x28 uint8 image + its label -> one line."""
    return encode_batch(np.asarray(image)[None], [label], bpp)[0]


def encode_levels(levels: np.ndarray, labels, bpp: int = 1) -> list[str]:
    """(N, 30, 30) levels (e.g. a generated or edited image) + labels -> lines."""
    symbols = levels_to_symbols(levels, bpp)
    return ["%d%s%s" % (int(d), (s + ALPHABET_START).tobytes().decode("ascii"), END)
            for d, s in zip(np.asarray(labels).reshape(-1), symbols)]


# ---------------------------------------------------------------------------------------------
# text -> symbols -> levels, with validation

def check_line(line, bpp: int = 1) -> None:
    """Raise CodecError naming the first problem (and its character position, 0-based)."""
    bpp = _check_bpp(bpp)
    if not isinstance(line, str):
        raise CodecError(f"expected a str line, got {type(line).__name__}")
    n = line_length(bpp)
    if not line:
        raise CodecError("empty line")
    for i, ch in enumerate(line):
        if ord(ch) > 127:
            raise CodecError(f"position {i}: non-ASCII character {ch!r}")
    if line[0] not in DIGITS:
        raise CodecError(f"position 0: expected the class digit 0-9, got {line[0]!r}")
    if len(line) != n:
        raise CodecError(f"wrong length: expected {n} characters, got {len(line)}")
    if line[-1] != END:
        raise CodecError(f"position {n - 1}: expected the end mark {END!r}, got {line[-1]!r}")
    for i in range(1, n - 1):
        if not ALPHABET_START <= ord(line[i]) < ALPHABET_START + ALPHABET_SIZE:
            raise CodecError(f"position {i}: character {line[i]!r} is outside the symbol "
                             f"alphabet {SYMBOLS[0]!r}..{SYMBOLS[-1]!r}")


def _line_array(lines: list[str], bpp: int) -> np.ndarray:
    n = line_length(bpp)
    return np.frombuffer("".join(lines).encode("ascii"), dtype=np.uint8).reshape(len(lines), n)


def parse_lines(lines, bpp: int = 1):
    """Decode many lines, keeping the good ones.

    Returns (labels (M,), levels (M, 30, 30), good_index (M,), errors [(index, message)]).
    Validation is vectorized; only bad lines go through the slow path that words the message.
    """
    bpp = _check_bpp(bpp)
    lines = list(lines)
    n = line_length(bpp)
    ok = np.array([isinstance(s, str) and len(s) == n and s.isascii() for s in lines], dtype=bool)
    idx = np.flatnonzero(ok)
    good = np.zeros(len(lines), dtype=bool)
    if len(idx):
        arr = _line_array([lines[i] for i in idx], bpp)
        body = arr[:, 1:-1]
        row_ok = ((arr[:, 0] >= ord("0")) & (arr[:, 0] <= ord("9")) & (arr[:, -1] == ord(END))
                  & ((body >= ALPHABET_START) & (body < ALPHABET_START + ALPHABET_SIZE)).all(1))
        good[idx[row_ok]] = True
        arr = arr[row_ok]
    else:
        arr = np.zeros((0, n), dtype=np.uint8)
    errors = []
    for i in np.flatnonzero(~good):
        try:
            check_line(lines[i], bpp)
            raise AssertionError("vectorized and scalar validation disagree")  # pragma: no cover
        except CodecError as e:
            errors.append((int(i), str(e)))
    labels = (arr[:, 0] - ord("0")).astype(np.int64)
    levels = symbols_to_levels(arr[:, 1:-1] - ALPHABET_START, bpp)
    return labels, levels, np.flatnonzero(good), errors


def decode_batch(lines, bpp: int = 1):
    """Lines -> (labels (N,), levels (N, 30, 30)). Raises CodecError on the first bad line."""
    labels, levels, _, errors = parse_lines(lines, bpp)
    if errors:
        i, msg = errors[0]
        raise CodecError(f"line {i + 1}: {msg}")
    return labels, levels


def decode(line: str, bpp: int = 1):
    """One line -> (label, (30, 30) uint8 levels)."""
    check_line(line, bpp)
    labels, levels = decode_batch([line], bpp)
    return int(labels[0]), levels[0]


def decode_partial(body: str, bpp: int = 1) -> np.ndarray:
    """Symbols generated so far (no class digit) -> (30, 30) levels, unknown symbols as zeros.

    Used to draw an image while it is being generated."""
    full = body + SYMBOLS[0] * (n_symbols(bpp) - len(body))
    symbols = np.frombuffer(full.encode("ascii"), dtype=np.uint8)[None] - ALPHABET_START
    return symbols_to_levels(symbols, bpp)[0]
