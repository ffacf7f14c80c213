"""Lines <-> images for people: `mnisttext.decode` and `mnisttext.encode`. No torch.

    import mnisttext
    label, levels = mnisttext.decode(line)        # levels: (30, 30) uint8 0/1
    line = mnisttext.encode(image, label=5)       # a 28x28 grayscale or 30x30 0/1 image

codec.py is the format itself (vectorized, batch-first); this is the friendly single-image face.
"""
from __future__ import annotations

import numpy as np

from . import codec


def decode(line: str, bpp: int = 1):
    """One line -> (label, (30, 30) uint8 levels); codec.CodecError says what is wrong."""
    return codec.decode(line, bpp)


def to_levels(image) -> np.ndarray:
    """A 30x30 0/1 array, a 28x28 grayscale array (0..255) or a PIL image -> 30x30 uint8 0/1."""
    if hasattr(image, "convert") and hasattr(image, "size"):       # a PIL image
        image = np.asarray(image.convert("L"))
    a = np.asarray(image)
    if a.dtype.kind not in "biuf":
        raise codec.CodecError(f"image: expected numbers, got an array of {a.dtype}")
    if a.shape == (28, 28):
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 255):
            raise codec.CodecError("image: a 28x28 grayscale image must hold values 0..255")
        return codec.quantize(a.astype(np.uint8))[0]
    if a.shape != (codec.SIDE, codec.SIDE):
        raise codec.CodecError(f"image: expected 28x28 grayscale or 30x30 binary, got shape {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise codec.CodecError("image: a 30x30 image must hold 0/1 pixels")
    return a.astype(np.uint8)


def encode(image, label: int) -> str:
    """An image (see to_levels) and its class digit -> one 152-character line."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label <= 9:
        raise codec.CodecError(f"label: expected a digit 0..9, got {label!r}")
    return codec.encode_levels(to_levels(image)[None], [int(label)])[0]
