"""The text format: exact strings, round trips, gray levels, and malformed input."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mnisttext import codec
from conftest import CORPUS, REFERENCE_LINES, ROOT


def test_first_training_line_is_the_reference():
    with open(CORPUS / "train.txt") as f:
        assert f.readline().rstrip("\n") == REFERENCE_LINES[0]


@pytest.mark.parametrize("line", REFERENCE_LINES)
def test_reference_lines_round_trip(line):
    label, bits = codec.decode(line)
    assert label == int(line[0])
    assert bits.shape == (30, 30) and set(np.unique(bits)) <= {0, 1}
    assert codec.encode_levels(bits[None], [label]) == [line]


def test_format_details():
    img = np.zeros((28, 28), np.uint8)
    img[0, 0] = 128        # >= 128 -> 1: padded position (1, 1) = bit 31 of the stream
    img[0, 1] = 127        # <  128 -> 0
    line = codec.encode(img, 7)
    assert len(line) == 152 and line[0] == "7" and line[-1] == ")"
    # bits 30..35 are symbol 5: pixel (1,0)=0, (1,1)=1, (1,2)=0 ... -> 0b010000 = 16
    assert line[1 + 5] == chr(58 + 16)
    assert set(line[1:6]) == {":"}
    _, bits = codec.decode(line)
    assert bits[1, 1] == 1 and bits[1, 2] == 0 and bits[0].sum() == 0


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, (3, 28, 28)), st.lists(st.integers(0, 9), min_size=3, max_size=3),
       st.integers(1, 6))
def test_images_round_trip(images, labels, bpp):
    lines = codec.encode_batch(images, labels, bpp)
    assert all(len(l) == codec.line_length(bpp) for l in lines)
    got_labels, levels = codec.decode_batch(lines, bpp)
    assert list(got_labels) == labels
    np.testing.assert_array_equal(levels, codec.quantize(images, bpp))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.data())
def test_levels_round_trip(bpp, data):
    levels = data.draw(arrays(np.uint8, (2, 30, 30), elements=st.integers(0, (1 << bpp) - 1)))
    lines = codec.encode_levels(levels, [3, 9], bpp)
    np.testing.assert_array_equal(codec.decode_batch(lines, bpp)[1], levels)


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, (2, 28, 28)), st.integers(1, 6))
def test_padding_bits_are_zero_in_every_image_and_cover_the_padding(images, bpp):
    mask = codec.padding_bits(bpp)
    assert mask.shape == (codec.n_symbols(bpp),)
    assert not (codec.levels_to_symbols(codec.quantize(images, bpp), bpp) & mask).any()
    top = np.full((1, 30, 30), (1 << bpp) - 1, dtype=np.uint8)
    top[:, 1:-1, 1:-1] = 0                     # only the padding at its highest level
    np.testing.assert_array_equal(codec.levels_to_symbols(top, bpp)[0], mask)


def test_padding_bits_by_hand():
    mask = codec.padding_bits(1)
    assert list(mask[:5]) == [63] * 5 and list(mask[-5:]) == [63] * 5    # first and last rows
    assert list(mask[5:10]) == [32, 0, 0, 0, 1]            # a row: its first and last pixel
    two = codec.padding_bits(2)                            # 2 bits a pixel: 10 symbols a row
    assert list(two[:10]) == [63] * 10 and list(two[-10:]) == [63] * 10
    assert list(two[10:20]) == [48] + [0] * 8 + [3]         # the first pixel's 2 bits, the last's


def test_quantize_matches_round():
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 256)[:, :, :28].repeat(28, 1)
    full = np.arange(256, dtype=np.uint8)
    for bpp in range(1, 7):
        top = (1 << bpp) - 1
        want = np.floor(full.astype(np.float64) / 255 * top + 0.5).astype(np.uint8)
        imgs = np.zeros((10, 28, 28), np.uint8)
        imgs.reshape(10, -1)[:, :26].flat[:256] = full
        got = codec.quantize(imgs, bpp)[:, 1:29, 1:29].reshape(10, -1)[:, :26].flat[:256]
        np.testing.assert_array_equal(got, want)
    assert codec.quantize(x, 1).max() == 0     # 0..27 are all below 128


@pytest.mark.parametrize("line, words", [
    ("", "empty"),
    ("x" + ":" * 150 + ")", "position 0"),
    ("5" + ":" * 149 + ")", "wrong length"),
    ("5" + ":" * 151, "position 151"),
    ("5" + ":" * 10 + "z" + ":" * 139 + ")", "position 11"),
    ("5" + ":" * 10 + "é" + ":" * 139 + ")", "non-ASCII"),
    ("5" + ":" * 150 + ")\n", "wrong length"),
])
def test_bad_lines_say_what_and_where(line, words):
    with pytest.raises(codec.CodecError, match=words):
        codec.decode(line)
    _, _, good, errors = codec.parse_lines([REFERENCE_LINES[0], line, REFERENCE_LINES[1]])
    assert list(good) == [0, 2] and errors[0][0] == 1 and words in errors[0][1]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_random_text_only_codec_errors(text):
    try:
        codec.decode(text)
    except codec.CodecError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2), st.lists(st.tuples(st.integers(0, 151), st.characters()), max_size=4),
       st.integers(0, 3))
def test_fuzz_mutated_lines(which, edits, cut):
    chars = list(REFERENCE_LINES[which])
    for pos, ch in edits:
        chars[pos] = ch
    line = "".join(chars)[:len(chars) - cut]
    _, _, good, errors = codec.parse_lines([line])
    try:
        codec.decode(line)
        assert list(good) == [0] and not errors
    except codec.CodecError as e:
        assert list(good) == [] and errors[0][1] == str(e)


def test_bad_bpp_and_non_string():
    with pytest.raises(codec.CodecError):
        codec.n_symbols(7)
    with pytest.raises(codec.CodecError, match="str"):
        codec.decode(b"5")


def test_partial_decode_pads_with_zeros():
    body = REFERENCE_LINES[0][1:-1]
    full = codec.decode(REFERENCE_LINES[0])[1]
    part = codec.decode_partial(body[:75])
    np.testing.assert_array_equal(part[:15], full[:15])
    assert part[15:].sum() == 0


def test_codec_imports_no_torch():
    code = "import sys, mnisttext.codec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_bpp_of_length_refuses_lengths_of_no_line():
    assert [codec.bpp_of_length(codec.line_length(b)) for b in range(1, 7)] == list(range(1, 7))
    for n in (0, 100, 151, 2000):
        with pytest.raises(codec.CodecError, match=f"length {n}: no line"):
            codec.bpp_of_length(n)


@pytest.mark.parametrize("image,words", [
    (np.full((30, 30), 0.5), "0/1 pixels"), (np.full((30, 30), 2), "0/1 pixels"),
    (np.full((28, 28), np.nan), "0..255"), (np.full((28, 28), 300), "0..255"),
    (np.full((28, 28), -1), "0..255"), (np.full((28, 28), "a"), "expected numbers"),
    (np.zeros((29, 29)), "shape")])
def test_text_encode_refuses_what_it_would_silently_wrap(image, words):
    from mnisttext import text
    with pytest.raises(codec.CodecError, match=words):
        text.encode(image, 3)
