"""The KV cache of the GPT: keys and values of every layer for the positions seen so far.

    cache = model.new_cache(batch_size=1)
    logits, _ = model(prefix, kv_cache=cache)        # prefill: the cache advances by len(prefix)
    cache = cache.expand(64)                         # the same prefix for 64 candidates
    big = KVCache.cat([cache_a, cache_b])            # rows of several caches, one batch
    logits, _ = model(next_tokens[:, None], kv_cache=big)   # one decode step

The model writes each layer's new keys/values with `write` and, for a one-token decode step,
lets the cache do the attention (`attend_one`), so the layout of the stored keys is the cache's
business alone.

A decode step's attention is one (1 x hs) . (hs x t) product per row and head, thousands of tiny
products that read the whole cache once. torch's batched matmuls spend ~2 us on each, several
times the time it takes to read its keys (docs/performance.md), so on a CPU the cache does it
with a small C kernel (NATIVE_SOURCE), compiled with the system's C compiler at first use and
kept in the machine cache directory. Without a compiler (or with MNISTTEXT_NATIVE=0) it falls
back to torch's batched matmuls, with the same results up to rounding.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from .machine import cache_path, cpu_model

ALIGN = 16          # capacities are padded to a multiple of this: the kernel reads 16 positions at once
MAX_NATIVE_HS = 256 # the kernel's largest head size (MAXHS in NATIVE_SOURCE)


class KVCache:
    """Keys and values of every layer, filled up to `pos`, in the dtype the layers compute in.

    Two layouts, picked at the first write:
    - chunked (where the native kernel runs): positions in chunks of ALIGN,
        k (n_layer, n_chunks, B, n_kv, hs/2, ALIGN, 2)   dimensions in pairs, a pair's values
                                                          of the ALIGN positions side by side;
        v (n_layer, n_chunks, B, n_kv, ALIGN/2, hs, 2)   positions in pairs, a dimension's two
                                                          values side by side
      (what the bf16 dot-product instruction takes: the scores of 16 positions and the
      weighted sum of values come out as vectors, with no reduction across lanes);
      a decode step reads chunk after chunk, each contiguous over all rows and heads, so its
      reads stream through memory (twice as fast as reading each row's keys from its own
      stretch of a (B, n_kv, positions, hs) buffer, docs/performance.md).
    - plain (the torch fallback): k, v (n_layer, B, n_kv, capacity, hs).
    Either way the whole block (rounded up to ALIGN positions) is allocated, uninitialized, at
    the first write: pages the lines never reach are never touched, and a decode step reads only
    the positions written. Unwritten slots never reach a result: the kernel masks them, except
    the pair partner of the last value written, which write() zeroes (0 * NaN is NaN); the
    torch fallback reads the whole plain buffer with the tail masked, so it zeroes the tail."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, block_size: int, head_size: int,
                 dtype=None):
        self.shape = (n_layer, batch_size, n_head, block_size, head_size)
        self.dtype = dtype
        self.k = self.v = None
        self.chunked = False
        self.pos = 0
        self._mask = None
        self._mask_key = None
        self._tail_zero = False          # plain layout: positions >= pos hold zeros
        self._attends = False            # attend_one has been called: see write
        self._pending = {}               # layer -> (pos, k, v) the next attend_one stores (chunked)
        self.int8 = False                # chunked int8 keys and values, a scale per position
        self.ks = self.vs = None         # their scales (n_layer, n_chunks, B, n_kv, ALIGN), fp32
        self.compute_dtype = None        # the layers' dtype (what layer_view returns)

    @property
    def batch_size(self) -> int:
        return self.shape[1]

    @property
    def capacity(self) -> int:
        return 0 if self.v is None else _round_up(self.shape[3], ALIGN)

    def _alloc(self, batch_size: int, like: torch.Tensor, chunked: bool, int8: bool = False):
        """Set k, v (and the int8 scales) to uninitialized buffers of this layout."""
        L, _, nkv, block, hs = self.shape
        cap = _round_up(block, ALIGN)
        self.compute_dtype = self.dtype or like.dtype
        dtype = torch.int8 if int8 else self.compute_dtype
        self.chunked, self.int8, self._tail_zero = chunked, int8, False
        self.ks = self.vs = None
        if not chunked:
            shape = (L, batch_size, nkv, cap, hs)
            self.k = torch.empty(shape, device=like.device, dtype=dtype)
            self.v = torch.empty(shape, device=like.device, dtype=dtype)
            return
        c = cap // ALIGN
        self.k = torch.empty((L, c, batch_size, nkv, hs // 2, ALIGN, 2), device=like.device, dtype=dtype)
        self.v = torch.empty((L, c, batch_size, nkv, ALIGN // 2, hs, 2), device=like.device, dtype=dtype)
        if int8:
            self.ks = torch.empty((L, c, batch_size, nkv, ALIGN), device=like.device)
            self.vs = torch.empty((L, c, batch_size, nkv, ALIGN), device=like.device)

    def _native_ok(self, t: torch.Tensor) -> bool:
        return (t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16)
                and (self.dtype is None or self.dtype == t.dtype) and self.shape[4] % ALIGN == 0
                and self.shape[4] <= MAX_NATIVE_HS and native_attend() is not None)

    def _flush(self):
        """Store the new keys and values that the kernel was to store (see write), each at the
        position it came for."""
        pending, self._pending = self._pending, {}
        attends, pos = self._attends, self.pos
        self._attends = False
        try:
            for layer, (p, k, v, prep) in pending.items():
                self.pos = p
                self.write(layer, k, v, prep)
        finally:
            self._attends, self.pos = attends, pos

    def layer_view(self, layer: int, t: torch.Tensor, end: int) -> torch.Tensor:
        """Positions :end of layer `layer` of k or v as (B, n_kv, end, hs): a view of the plain
        layout, a copy of the chunked one."""
        self._flush()
        if not self.chunked:
            return t[layer, :, :, :end]
        c = -(-end // ALIGN)
        x = unchunk(t[layer, :c], keys=t is self.k)[:, :, :end]
        if self.int8:                                    # values times their positions' scales
            scale = (self.ks if t is self.k else self.vs)[layer, :c]       # (c, B, nkv, ALIGN)
            scale = scale.permute(1, 2, 0, 3).reshape(x.shape[0], x.shape[1], -1)[:, :, :end]
            x = (x.float() * scale[..., None]).to(self.compute_dtype)
        return x

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, prep: "Prep | None" = None):
        """Store k, v (B, nkv, T, hs) at pos..pos+T; return all keys and values so far
        (B, nkv, pos+T, hs): the inputs themselves when the cache was empty, else views (plain
        layout) or copies (chunked).

        One exception saves the chunked layout a copy of the whole cache per layer and step: once
        attend_one has been called on this cache, its caller decodes with attend_one, and a
        one-token write returns only the new k, v (the model ignores the return there); the
        kernel stores them itself, as it attends (any other use of the cache stores them first).

        prep: the keys are stored as prep.key(k) (QK-norm, rope), which the kernel applies to
        the keys it stores (see Prep)."""
        p, T = self.pos, k.shape[2]
        if p + T > self.shape[3]:            # before the pending branch: the kernel would write past it
            raise ValueError(f"{p + T} positions > block size {self.shape[3]}")
        self._flush()
        if (T == 1 and p > 0 and self.chunked and self._attends and k.stride(-1) == 1
                and v.stride(-1) == 1 and k.dtype == v.dtype == self.compute_dtype):
            self._pending[layer] = (p, k, v, prep)
            return k, v
        if prep is not None:
            k = prep.key(k)
        if self.v is None:
            self._alloc(self.batch_size, k, self._native_ok(k))
        if not self.chunked:
            self.k[layer, :, :, p:p + T] = k
            self.v[layer, :, :, p:p + T] = v
        else:
            if self.int8:
                (k, ks), (v, vs) = quantize(k), quantize(v)
            for c in range(p // ALIGN, -(-(p + T) // ALIGN)):         # the chunks it touches
                a, b = max(p, c * ALIGN), min(p + T, (c + 1) * ALIGN)
                kk = k[:, :, a - p:b - p]                                   # (B, nkv, t, hs)
                self.k[layer, c, :, :, :, a - c * ALIGN:b - c * ALIGN] = (
                    kk.unflatten(-1, (kk.shape[-1] // 2, 2)).transpose(2, 3))   # (B, nkv, hs/2, t, 2)
                if self.int8:
                    self.ks[layer, c, :, :, a - c * ALIGN:b - c * ALIGN] = ks[:, :, a - p:b - p]
                    self.vs[layer, c, :, :, a - c * ALIGN:b - c * ALIGN] = vs[:, :, a - p:b - p]
                for parity in (0, 1):                # even positions, then odd ones
                    first = a + ((parity - a) % 2)
                    if first < b:
                        j0 = (first - c * ALIGN) // 2
                        j1 = (b - 1 - parity - c * ALIGN) // 2 + 1
                        self.v[layer, c, :, :, j0:j1, :, parity] = v[:, :, first - p:b - p:2]
            e = p + T
            if e % 2 and e < self.capacity:          # the partner of the last value: finite
                self.v[layer, e // ALIGN, :, :, (e % ALIGN) // 2, :, 1] = 0
        if p == 0 or (T == 1 and self.chunked and self._attends):
            return k, v
        return self.layer_view(layer, self.k, p + T), self.layer_view(layer, self.v, p + T)

    def tail_mask(self, dtype) -> torch.Tensor:
        """(capacity,) 0 for the positions written up to and including pos, -inf after: the
        additive mask of a one-token decode step, made once per step and shared by the layers."""
        key = (self.pos, self.capacity, dtype)
        if self._mask_key != key:
            self._mask = torch.zeros(self.capacity, dtype=dtype, device=self.v.device)
            self._mask[self.pos + 1:] = float("-inf")
            self._mask_key = key
        return self._mask

    def attend_one(self, layer: int, q: torch.Tensor, prep: "Prep | None" = None) -> torch.Tensor:
        """Attention of one new query per row and head over everything cached (its own key
        included, written first): q (B, nh, 1, hs) -> (B, nh, 1, hs). With fewer key/value
        heads than query heads (n_kv divides nh), query head h reads key/value head
        h // (nh / n_kv). prep: q is attended as prep.query(q) (the kernel applies it)."""
        B, nh, _, hs = q.shape
        nkv, n = self.shape[2], self.pos + 1
        self._attends = True
        if self.chunked:
            new = self._pending.pop(layer, None)
            # not this step's, or written with another prep: stored first, with its own prep
            if new is not None and (new[0] != self.pos or new[3] is not prep):
                self._pending[layer] = new
                self._flush()
                new = None
            fn = native_attend()
            if fn is not None and q.stride(-1) == 1 and q.dtype == self.compute_dtype:
                out = torch.empty(B, nh, 1, hs, dtype=q.dtype)
                kn, vn = new[1:3] if new is not None else (None, None)
                pr = prep.pointers() if prep is not None else (None, None, 0.0, None, None)
                kind = 2 if self.int8 else int(q.dtype == torch.bfloat16)
                rc = fn(kind, int(q.dtype == torch.bfloat16), q.data_ptr(), q.stride(0),
                        q.stride(1), _ptr(kn), _ptr(vn), *_bh_strides(kn), *_bh_strides(vn),
                        *self._layer_ptrs(layer), out.data_ptr(), B, nh, nkv, hs, n,
                        1.0 / math.sqrt(hs), torch.get_num_threads(), *pr)
                if rc == 0:
                    return out
            if new is not None:
                self._pending[layer] = new
                self._flush()
        if prep is not None:
            q = prep.query(q)
        if self.chunked:
            kf, vf = self.layer_view(layer, self.k, n), self.layer_view(layer, self.v, n)
            y = torch.softmax(q.reshape(B, nkv, -1, hs) @ kf.transpose(-1, -2) / math.sqrt(hs), -1) @ vf
            return y.reshape(B, nh, 1, hs).to(q.dtype)
        if not self._tail_zero:
            self.k[:, :, :, n:] = 0
            self.v[:, :, :, n:] = 0
            self._tail_zero = True
        # the whole contiguous buffer with the unwritten tail masked: (B*nkv, ., .) views need
        # no copies, where a sliced (strided) matmul would copy the keys
        cap, rep = self.capacity, nh // nkv
        kf, vf = self.k[layer], self.v[layer]                       # (B, nkv, cap, hs)
        att = torch.baddbmm(self.tail_mask(q.dtype), q.reshape(B * nkv, rep, hs),
                            kf.view(B * nkv, cap, hs).transpose(1, 2),
                            alpha=1.0 / math.sqrt(hs))                # (B*nkv, rep, cap)
        return torch.bmm(att.softmax(-1), vf.view(B * nkv, cap, hs)).view(B, nh, 1, hs)

    def _layer_ptrs(self, layer: int) -> tuple:
        """The kernel's pointers to layer `layer` of k, v and their int8 scales (None: none),
        worked out once per buffer instead of four tensor views a call."""
        src = getattr(self, "_ptrs_of", None)            # the buffers they were worked out for
        if src is None or src[0] is not self.k or src[1] is not self.v:
            at = lambda t, i: None if t is None else t.data_ptr() + i * t.stride(0) * t.element_size()
            self._ptrs = [tuple(at(t, i) for t in (self.k, self.v, self.ks, self.vs))
                          for i in range(self.shape[0])]
            self._ptrs_of = (self.k, self.v)
        return self._ptrs[layer]

    def _like(self, batch_size: int) -> "KVCache":
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.shape = (self.shape[0], batch_size) + self.shape[2:]
        new._mask = new._mask_key = None
        new._pending = {}
        return new

    def expand(self, n: int) -> "KVCache":
        """A cache of batch n from one of batch 1 (the prefilled class prefix)."""
        if self.batch_size != 1:
            raise ValueError("expand a cache of batch 1")
        return KVCache.cat([self], n)

    @staticmethod
    def cat(caches: list["KVCache"], repeat: int | list[int] = 1, int8: bool | None = None) -> "KVCache":
        """One cache whose rows are the rows of `caches` in order, each row of caches[i]
        repeat[i] times (all at the same position; only the written positions are copied).
        int8=True stores the keys and values of the new cache as int8, a scale per position and
        head (chunked layout only: where the native kernel runs); None keeps the layout. Per-row
        state that a subclass keeps in a dict of (B, ...) tensors (the canon layers' `conv`)
        goes along."""
        reps = [repeat] * len(caches) if isinstance(repeat, int) else list(repeat)
        for c in caches:
            c._flush()
        first = caches[0]
        if len(reps) != len(caches) or any(
                c.pos != first.pos or c.shape[2:] != first.shape[2:] or type(c) is not type(first)
                or c.chunked != first.chunked or c.int8 != first.int8 for c in caches):
            raise ValueError("cat caches of one type, shape, layout and position")
        new = first._like(sum(c.batch_size * r for c, r in zip(caches, reps)))
        if first.v is not None:
            p, row = first.pos, 0
            to8 = first.int8 if int8 is None else bool(int8 and first.chunked)
            like = first.v if first.compute_dtype is None else first.v.new_empty(0, dtype=first.compute_dtype)
            new._alloc(new.batch_size, like, first.chunked, to8)
            for c, r in zip(caches, reps):
                rows = c.batch_size * r
                if to8 == first.int8:                 # the same layout: copy what is written
                    pairs = [(new.k, c.k), (new.v, c.v)] + ([(new.ks, c.ks), (new.vs, c.vs)] if to8 else [])
                    bdim = 2 if first.chunked else 1
                    for mine, theirs in pairs:
                        src = theirs[:, :-(-p // ALIGN)] if first.chunked else theirs[:, :, :, :p]
                        dst = mine[:, :-(-p // ALIGN)] if first.chunked else mine[:, :, :, :p]
                        if r > 1:
                            src = src.repeat_interleave(r, bdim)
                        dst.narrow(bdim, row, rows).copy_(src)
                else:                                 # converted: rows written position by position
                    part = c._like(rows)
                    part._alloc(rows, like, first.chunked, to8)
                    part._pending, part._attends = {}, False
                    for layer in range(first.shape[0]):
                        kv = [c.layer_view(layer, t, p).repeat_interleave(r, 0) for t in (c.k, c.v)]
                        part.pos = 0
                        part.write(layer, *kv)
                    part.pos = p
                    for mine, theirs in [(new.k, part.k), (new.v, part.v)] + (
                            [(new.ks, part.ks), (new.vs, part.vs)] if to8 else []):
                        mine[:, :-(-p // ALIGN)].narrow(2, row, rows).copy_(theirs[:, :-(-p // ALIGN)])
                row += rows
        for name, value in first.__dict__.items():
            if isinstance(value, dict) and all(isinstance(t, torch.Tensor) for t in value.values()):
                setattr(new, name, {key: torch.cat([getattr(c, name)[key].repeat_interleave(r, 0)
                                                    for c, r in zip(caches, reps)]) for key in value})
        return new


class Prep:
    """What the model does to a decode step's queries and new keys before attention (QK-norm:
    RMSNorm with a gain; rope: the turn of (x_i, x_i+hs/2) by the position's angles), handed to
    the cache so that the native kernel does it in fp32 as it reads them, instead of a dozen small
    torch ops a layer. Where the kernel does not run, query() and key() do the same in torch.

    q_gain, k_gain: (hs,) or None; cos, sin: (hs/2,) for this step's position, or None."""

    def __init__(self, q_gain, k_gain, eps: float, cos, sin):
        f = lambda t: None if t is None else t.detach().float().contiguous()
        self.q_gain, self.k_gain, self.eps, self.cos, self.sin = f(q_gain), f(k_gain), float(eps), f(cos), f(sin)

    def _apply(self, x: torch.Tensor, gain) -> torch.Tensor:
        y = x.float()
        if gain is not None:
            y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + self.eps) * gain
        if self.cos is not None:
            y1, y2 = y.chunk(2, dim=-1)
            y = torch.cat([y1 * self.cos - y2 * self.sin, y1 * self.sin + y2 * self.cos], dim=-1)
        return y.to(x.dtype)

    def query(self, q: torch.Tensor) -> torch.Tensor:
        return self._apply(q, self.q_gain)

    def key(self, k: torch.Tensor) -> torch.Tensor:
        return self._apply(k, self.k_gain)

    def pointers(self) -> tuple:
        """The kernel's arguments: q gain, k gain, eps, cos, sin (NULL where absent)."""
        return (_ptr(self.q_gain), _ptr(self.k_gain), self.eps, _ptr(self.cos), _ptr(self.sin))


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., hs) -> int8 values and fp32 scales (...): x ~ s * round(x / s) with s = max|x| / 127
    (1 where x is all zeros), ties to even: what the native kernel does for a new key."""
    x = x.float()
    m = x.abs().amax(-1)
    s = torch.where(m > 0, m / 127, torch.ones_like(m))
    return (x / s[..., None]).round().clamp_(-127, 127).to(torch.int8), s


def _ptr(t):
    return None if t is None else t.data_ptr()


def _bh_strides(t) -> tuple[int, int]:
    """Element strides of (B, n_kv, 1, hs) between rows and heads (0, 0 for None)."""
    return (0, 0) if t is None else (t.stride(0), t.stride(1))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def chunk_keys(k: torch.Tensor) -> torch.Tensor:
    """(B, n_kv, positions, hs) -> the chunked layout (positions/ALIGN, B, n_kv, hs/2, ALIGN, 2)."""
    B, nkv, T, hs = k.shape
    return k.view(B, nkv, T // ALIGN, ALIGN, hs // 2, 2).permute(2, 0, 1, 4, 3, 5).contiguous()


def chunk_values(v: torch.Tensor) -> torch.Tensor:
    """(B, n_kv, positions, hs) -> the chunked layout (positions/ALIGN, B, n_kv, ALIGN/2, hs, 2)."""
    B, nkv, T, hs = v.shape
    return v.view(B, nkv, T // ALIGN, ALIGN // 2, 2, hs).permute(2, 0, 1, 3, 5, 4).contiguous()


def unchunk(x: torch.Tensor, keys: bool) -> torch.Tensor:
    """The keys' or the values' chunked layout (of one layer) -> (B, n_kv, positions, hs), a copy."""
    if keys:                                           # (c, B, nkv, hs/2, ALIGN, 2)
        x = x.transpose(3, 4).flatten(4, 5)            # (c, B, nkv, ALIGN, hs)
    else:                                              # (c, B, nkv, ALIGN/2, hs, 2)
        x = x.transpose(-1, -2).flatten(3, 4)          # (c, B, nkv, ALIGN, hs)
    c, B, nkv, a, hs = x.shape
    return x.permute(1, 2, 0, 3, 4).reshape(B, nkv, c * a, hs)


# ---------------------------------------------------------------------------------------------
# The native decode attention. One call does every row and head of one layer, its rows split over
# torch's OpenMP threads (the same pool as torch's ops; POSIX threads where the compiler has no
# OpenMP). Each thread walks the chunks of ALIGN positions in order, so its reads stream through
# memory; for each row and head: 16 scores q . k_t at once (the keys stored in dimension pairs,
# so the scores come out as one vector), an online softmax in fp32 (running max and sum, a polynomial exp so the
# loops vectorize), and the values weighted by the probabilities added to an fp32 accumulator.
# With AVX512-BF16 (-march=native) bf16 caches use the bf16 dot product instruction for both
# products (the probabilities rounded to bf16, as torch's bf16 path rounds them); otherwise bf16
# is widened to fp32. The output is rounded once. A row's result depends only on that row.

# fp32 -> bf16 in C, shared with the int8 kernels (int8.py)
C_F2BF = r"""
static inline uint16_t f2bf(float f) {          /* round to nearest even, as torch does */
    union { uint32_t u; float f; } b; b.f = f;
    uint32_t u = b.u;
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
"""

NATIVE_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define BF16DOT 1
#endif

#define L 16
#define MAXHS 256
enum { F32 = 0, BF16 = 1, I8 = 2 };
typedef float vf __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
typedef int8_t vb __attribute__((vector_size(16)));
typedef int32_t word __attribute__((may_alias));      /* two bf16 values read as one */

/* 16 values from base[off..off+16) as fp32: stored as fp32, bf16 or int8 */
static inline vf load16(const void *base, long off, int kind) {
    if (kind == BF16) {
        vh h; memcpy(&h, (const uint16_t *)base + off, sizeof h);
        vu u = __builtin_convertvector(h, vu) << 16;
        return (vf)u;
    }
    if (kind == I8) {
#if defined(__AVX512F__)
        __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)base + off))));
        vf r; memcpy(&r, &x, sizeof r); return r;
#else
        vb b; memcpy(&b, (const int8_t *)base + off, sizeof b);
        return __builtin_convertvector(__builtin_convertvector(b, vi), vf);
#endif
    }
    vf f; memcpy(&f, (const float *)base + off, sizeof f);
    return f;
}
static inline float bf2f(uint16_t x) { union { uint32_t u; float f; } b; b.u = (uint32_t)x << 16; return b.f; }
""" + C_F2BF + r"""/* n (a multiple of 16) fp32 values -> bf16, rounded to nearest even (the instruction, where
   there is one, treats denormals as zero) */
static inline void to_bf16(uint16_t *dst, const float *src, long n) {
#ifdef BF16DOT
    for (long d = 0; d < n; d += L) {
        const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + d));
        memcpy(dst + d, &h, sizeof h);
    }
#else
    for (long d = 0; d < n; d++) dst[d] = f2bf(src[d]);
#endif
}
static inline float ld(const void *p, long i, int bf16) { return bf16 ? bf2f(((const uint16_t *)p)[i]) : ((const float *)p)[i]; }
static inline vf vsel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vf vexp(vf x) {                   /* e^x for x <= 0, relative error < 2e-7 */
    vf lo = x - x - 87.0f;
    x = vsel(x < lo, lo, x);
    vf kf = x * 1.44269504088896341f;
    kf = (kf - 0.5f + 12582912.0f) - 12582912.0f;
    vf r = x - kf * 0.693359375f + kf * 2.12194440e-4f;
    vf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi e = (__builtin_convertvector(kf, vi) + 127) << 23;
    return p * (vf)e;
}
#if defined(__AVX512F__)      /* tree reductions: a scalar loop is a 15-step dependency chain */
static inline float hmax(vf v) { __m512 x; memcpy(&x, &v, sizeof x); return _mm512_reduce_max_ps(x); }
static inline float hsum(vf v) { __m512 x; memcpy(&x, &v, sizeof x); return _mm512_reduce_add_ps(x); }
#else
static inline float hmax(vf v) { float m = v[0]; for (int l = 1; l < L; l++) m = v[l] > m ? v[l] : m; return m; }
static inline float hsum(vf v) { float s = 0; for (int l = 0; l < L; l++) s += v[l]; return s; }
#endif
typedef struct {
    const void *q; long qs_b, qs_h; const void *kn, *vn; long ks_b, ks_h, vs_b, vs_h;
    void *k, *v; float *kscale, *vscale; void *out;
    long r0, r1, B, nh, nkv, hs, n; float scale; int kind, qbf16, failed;
    const float *qg, *kg, *rc, *rs; float eps;     /* prep: see prep() */
} job_t;

/* What the model does to a query or a new key before attention, where it leaves it to the
   kernel (fp32, in place, x: hs values): RMSNorm with gain g (NULL: none), then the rotary turn
   of the pairs (x_i, x_{i+hs/2}) by the angles whose cos, sin are rc, rs (NULL: none). */
static void prep(float *x, long hs, const float *g, float eps, const float *rc, const float *rs) {
    if (g) {                                    /* hs % 16 == 0: sums in 16 lanes, then a tree */
        vf acc = {0};
        for (long d = 0; d < hs; d += L) { vf v; memcpy(&v, x + d, sizeof v); acc += v * v; }
        const float r = 1.0f / sqrtf(hsum(acc) / (float)hs + eps);
        for (long d = 0; d < hs; d += L) {
            vf v, gv; memcpy(&v, x + d, sizeof v); memcpy(&gv, g + d, sizeof gv);
            v = v * r * gv; memcpy(x + d, &v, sizeof v);
        }
    }
    if (rc) {
        const long h2 = hs / 2;
        for (long i = 0; i < h2; i++) {
            const float a = x[i], b = x[i + h2];
            x[i] = a * rc[i] - b * rs[i];
            x[i + h2] = a * rs[i] + b * rc[i];
        }
    }
}

/* int8: x ~ s * round(x / s), s = max|x| / 127 (1 where x is all zeros), ties to even (hs % 16 == 0) */
/* dimension d goes to dst[(d / 2) * sp + (d % 2) * se] */
static float quantize(int8_t *dst, long sp, long se, const void *src, long hs, int bf16) {
    vf m = {0};
    for (long d = 0; d < hs; d += L) {
        vf x = load16(src, d, bf16);
        x = vsel(x < 0.0f, -x, x);
        m = vsel(x > m, x, m);
    }
    const float mx = hmax(m), s = mx > 0.0f ? mx / 127.0f : 1.0f;
    for (long d = 0; d < hs; d += L) {
        vf x = load16(src, d, bf16) / s;
        x = (x + 12582912.0f) - 12582912.0f;          /* round half to even (|x| <= 127) */
        vi r = __builtin_convertvector(x, vi);
        for (int l = 0; l < L; l++) dst[((d + l) >> 1) * sp + ((d + l) & 1) * se] = (int8_t)r[l];
    }
    return s;
}

/* Store the new key and value (position n - 1) of rows r0..r1, and zero the value's pair partner
   when it opens a pair (the pair products read both halves). */
static void store_new(const job_t *j) {
    const long t = j->n - 1, c = t / L, slot = t % L, hs = j->hs;
    const long es = j->kind == I8 ? 1 : (j->kind == BF16 ? 2 : 4), is = j->qbf16 ? 2 : 4;
    for (long b = j->r0; b < j->r1; b++)
        for (long g = 0; g < j->nkv; g++) {
            const long blk = (c * j->B + b) * j->nkv + g;
            const char *kraw = (const char *)j->kn + (b * j->ks_b + g * j->ks_h) * is;
            const char *vs = (const char *)j->vn + (b * j->vs_b + g * j->vs_h) * is;
            float kf[MAXHS];                         /* the key, prepared, in fp32 */
            for (long d = 0; d < hs; d += L) {
                const vf x = load16(kraw, d, j->qbf16 ? BF16 : F32);
                memcpy(kf + d, &x, sizeof x);
            }
            prep(kf, hs, j->kg, j->eps, j->rc, j->rs);
            char *kd = (char *)j->k + (blk * L * hs + slot * 2) * es;    /* dimension d: see kern */
            char *vd = (char *)j->v + (blk * L * hs + (slot / 2) * 2 * hs + slot % 2) * es;
            if (j->kind == I8) {
                j->kscale[blk * L + slot] = quantize((int8_t *)kd, 2 * L, 1, kf, hs, 0);
                j->vscale[blk * L + slot] = quantize((int8_t *)vd, 4, 2, vs, hs, j->qbf16);
                if (slot % 2 == 0) for (long d = 0; d < hs; d++) vd[2 * d + 1] = 0;
                continue;
            }
            if (es == 2) {                           /* bf16: a dimension pair is one word */
                uint16_t kh[MAXHS];
                to_bf16(kh, kf, hs);
                for (long d = 0; d < hs; d += 2) memcpy(kd + d * L * es, kh + d, 4);
            } else
                for (long d = 0; d < hs; d++) memcpy(kd + ((d >> 1) * 2 * L + (d & 1)) * es, &kf[d], 4);
#if defined(__AVX512BW__)
            if (es == 2) {                           /* value d at word d, its partner's half zero */
                for (long d = 0; d < hs; d += L) {
                    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(vs + d * 2)));
                    if (slot % 2 == 0) _mm512_storeu_si512(vd + 2 * d * 2, w);
                    else _mm512_mask_storeu_epi16(vd + 2 * d * 2 - 2, 0xAAAAAAAAu, _mm512_slli_epi32(w, 16));
                }
                continue;
            }
#endif
            for (long d = 0; d < hs; d++) {
                memcpy(vd + 2 * d * es, vs + d * es, es);
                if (slot % 2 == 0) memset(vd + (2 * d + 1) * es, 0, es);
            }
        }
}

/* The scores of one query (q: hs fp32 values) against one chunk of keys (hs/2, 16, 2): each
   dimension pair's 16 positions side by side, so the products of a pair of q's values with 16
   keys are one vector and the scores come out as a vector, with no reduction across lanes. */
static inline vf scores(const float *q, const void *k, long base, long hs, int kind) {
    vf lo[2] = {{0}, {0}}, hi[2] = {{0}, {0}};      /* positions 0-7 and 8-15, two chains each */
    for (long d = 0; d < hs / 2; d++) {
        vf qq;                                      /* (q[2d], q[2d+1]) repeated */
#if defined(__AVX512F__)
        double w; memcpy(&w, q + 2 * d, sizeof w);
        __m512 x = _mm512_castpd_ps(_mm512_set1_pd(w)); memcpy(&qq, &x, sizeof qq);
#else
        for (int l = 0; l < L; l++) qq[l] = q[2 * d + (l & 1)];
#endif
        lo[d & 1] += qq * load16(k, base + d * 2 * L, kind);
        hi[d & 1] += qq * load16(k, base + d * 2 * L + L, kind);
    }
    const vf x = lo[0] + lo[1], y = hi[0] + hi[1];  /* lane 2t + e: position t, dimension parity e */
    return __builtin_shufflevector(x, y, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
         + __builtin_shufflevector(x, y, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
#ifdef BF16DOT
/* The bf16 dot-product path for one chunk and hb (<= 4) query heads sharing a key/value head:
   the keys and values are loaded once for all of them, and their chains (products, max, exp,
   sum, then products again) interleave, where one head's chain alone leaves the core waiting.
   Scores: a pair of q's values times 16 keys is one instruction (keys in dimension pairs), four
   chains. qh, ac, m: the first head's query (bf16), accumulator (hs) and (running max, sum);
   the others follow hs, 2 * hs and 2 apart. Each head's operations are those of a head alone. */
static inline __attribute__((always_inline)) void dot_heads(
        const uint16_t *qh, float *ac, float *m, const uint16_t *kb, const uint16_t *vb,
        long valid, float scale, const int hb, const long nv) {
    const long hs = nv * L, pairs = (valid + 1) / 2;
    const __mmask16 ok = (__mmask16)((1u << valid) - 1u);          /* positions written */
    __m512 x[4][4], y[4][MAXHS / L];
    uint32_t pw[4][L / 2];                              /* probabilities in bf16, in pairs */
    for (int h = 0; h < hb; h++)
        for (int u = 0; u < 4; u++) x[h][u] = _mm512_setzero_ps();
    for (long d = 0; d < hs / 2; d += 4)
        for (int u = 0; u < 4; u++) {
            const __m512bh kv = (__m512bh)_mm512_loadu_si512(kb + (d + u) * 2 * L);
            for (int h = 0; h < hb; h++)
                x[h][u] = _mm512_dpbf16_ps(x[h][u], (__m512bh)_mm512_set1_epi32(((const word *)qh)[h * hs / 2 + d + u]), kv);
        }
    for (int h = 0; h < hb; h++) {
        __m512 t = _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(x[h][0], x[h][1]), _mm512_add_ps(x[h][2], x[h][3])),
                                 _mm512_set1_ps(scale));
        t = _mm512_mask_mov_ps(_mm512_set1_ps(-1e30f), ok, t);
        const float mo = m[2 * h], mn = fmaxf(_mm512_reduce_max_ps(t), mo);
        vf s, z = {0}; memcpy(&s, &t, sizeof s);
        const float alpha = vexp(z + (mo - mn))[0];
        vf p = vexp(s - mn);
        __m512 pf; memcpy(&pf, &p, sizeof pf);
        pf = _mm512_maskz_mov_ps(ok, pf);
        m[2 * h] = mn;
        m[2 * h + 1] = m[2 * h + 1] * alpha + _mm512_reduce_add_ps(pf);
        __m256bh pb = _mm512_cvtneps_pbh(pf);           /* word jp: (p[2jp], p[2jp+1]) */
        memcpy(pw[h], &pb, sizeof pb);
        const __m512 av = _mm512_set1_ps(alpha);
        for (long i = 0; i < nv; i++) y[h][i] = _mm512_mul_ps(_mm512_loadu_ps(ac + h * 2 * hs + i * L), av);
    }
    for (long jp = 0; jp < pairs; jp++)
        for (long i = 0; i < nv; i++) {
            const __m512bh vv = (__m512bh)_mm512_loadu_si512(vb + jp * 2 * hs + i * 2 * L);
            for (int h = 0; h < hb; h++)
                y[h][i] = _mm512_dpbf16_ps(y[h][i], (__m512bh)_mm512_set1_epi32((int)pw[h][jp]), vv);
        }
    for (int h = 0; h < hb; h++)
        for (long i = 0; i < nv; i++) _mm512_storeu_ps(ac + h * 2 * hs + i * L, y[h][i]);
}
#endif

/* k: (n_chunks, B, nkv, hs/2, 16, 2): dimensions in pairs, a pair's values of the 16 positions
   side by side; v: (n_chunks, B, nkv, 8, hs, 2): positions in pairs, each
   dimension's two values side by side (what the bf16 dot product instruction takes); int8 caches
   with a scale per position, kscale and vscale (n_chunks, B, nkv, 16); q: row b, head h at
   q[b * qs_b + h * qs_h]; out: (B, nh, hs). Chunk by chunk through memory, per (row, head) a
   running max, a running sum and an accumulator (hs, 2), the two positions of a pair apart until
   the end (one (hs) accumulator on the bf16 dot-product path, dot_heads). */
static inline __attribute__((always_inline)) void kern(job_t *j, const int kind, const long NV) {
    /* NV: hs / 16 as a constant (0: read from j), so the accumulators below stay in registers */
    const long nv = NV ? NV : j->hs / L, hs = nv * L;
    const long nh = j->nh, nkv = j->nkv, n = j->n, rep = nh / nkv, B = j->B;
    const long rows = j->r1 - j->r0, nc = (n + L - 1) / L;
#ifdef BF16DOT
    const int dot = kind == BF16;
#else
    const int dot = 0;
#endif
    float *qf = malloc(sizeof(float) * rows * nh * hs);
    uint16_t *qh = malloc(sizeof(uint16_t) * rows * nh * hs);     /* q in bf16, for the dot path */
    float *acc = malloc(sizeof(float) * rows * nh * hs * 2);
    float *ms = malloc(sizeof(float) * rows * nh * 2);
    if (!qf || !qh || !acc || !ms) { free(qf); free(qh); free(acc); free(ms); j->failed = 1; return; }
    for (long b = 0; b < rows; b++)
        for (long h = 0; h < nh; h++) {
            const long bh = b * nh + h;
            for (long d = 0; d < hs; d += L) {
                const vf v = load16(j->q, (j->r0 + b) * j->qs_b + h * j->qs_h + d, j->qbf16 ? BF16 : F32);
                memcpy(qf + bh * hs + d, &v, sizeof v);
            }
            prep(qf + bh * hs, hs, j->qg, j->eps, j->rc, j->rs);
            if (dot) to_bf16(qh + bh * hs, qf + bh * hs, hs);        /* exact without prep */
            for (long d = 0; d < 2 * hs; d++) acc[bh * 2 * hs + d] = 0.0f;
            ms[bh * 2] = -1e30f;
            ms[bh * 2 + 1] = 0.0f;
        }
    vf lane, zero, neg, one;
    for (int l = 0; l < L; l++) { lane[l] = (float)l; zero[l] = 0.0f; neg[l] = -1e30f; one[l] = 1.0f; }
    for (long c = 0; c < nc; c++) {
        const long valid = n - c * L < L ? n - c * L : L;
        const vf validv = zero + (float)valid;
        for (long b = 0; b < rows; b++)
        for (long g = 0; g < nkv; g++) {
            const long blk = (c * B + j->r0 + b) * nkv + g, base = blk * L * hs;
            vf ksc = one, vsc = one;
            if (kind == I8) { memcpy(&ksc, j->kscale + blk * L, sizeof ksc); memcpy(&vsc, j->vscale + blk * L, sizeof vsc); }
#ifdef BF16DOT
            if (dot) {                                        /* the group's heads, 4 at a time */
                const uint16_t *kb = (const uint16_t *)j->k + base, *vb = (const uint16_t *)j->v + base;
                for (long r = 0; r < rep; r += 4) {
                    const long bh = b * nh + g * rep + r, hb = rep - r < 4 ? rep - r : 4;
                    const uint16_t *q = qh + bh * hs;
                    float *ac = acc + bh * 2 * hs, *mb = ms + bh * 2;
                    if (hb == 4) dot_heads(q, ac, mb, kb, vb, valid, j->scale, 4, nv);
                    else if (hb == 3) dot_heads(q, ac, mb, kb, vb, valid, j->scale, 3, nv);
                    else if (hb == 2) dot_heads(q, ac, mb, kb, vb, valid, j->scale, 2, nv);
                    else dot_heads(q, ac, mb, kb, vb, valid, j->scale, 1, nv);
                }
                continue;
            }
#endif
            for (long r = 0; r < rep; r++) {
                const long bh = b * nh + g * rep + r;
                const float *q = qf + bh * hs;
                vf s = scores(q, j->k, base, hs, kind);       /* the 16 positions' scores */
                s = s * ksc * j->scale;                       /* unwritten lanes: masked next */
                s = vsel(lane < validv, s, neg);              /* positions not yet written */
                const float m = ms[bh * 2];
                float mn = hmax(s);
                mn = mn > m ? mn : m;
                const float alpha = vexp(zero + (m - mn))[0];
                vf p = vexp(s - mn);
                p = vsel(lane < validv, p, zero);
                ms[bh * 2] = mn;
                ms[bh * 2 + 1] = ms[bh * 2 + 1] * alpha + hsum(p);
                float *ac = acc + bh * 2 * hs;
                const long pairs = (valid + 1) / 2;
                const vf pv = vsel(lane < validv, p * vsc, zero);   /* unwritten scales: never used */
                vf pp[L / 2];                                   /* (p[2jp], p[2jp+1]) repeated */
                pp[0] = __builtin_shufflevector(pv, pv, 0,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1);
                pp[1] = __builtin_shufflevector(pv, pv, 2,3,2,3,2,3,2,3,2,3,2,3,2,3,2,3);
                pp[2] = __builtin_shufflevector(pv, pv, 4,5,4,5,4,5,4,5,4,5,4,5,4,5,4,5);
                pp[3] = __builtin_shufflevector(pv, pv, 6,7,6,7,6,7,6,7,6,7,6,7,6,7,6,7);
                pp[4] = __builtin_shufflevector(pv, pv, 8,9,8,9,8,9,8,9,8,9,8,9,8,9,8,9);
                pp[5] = __builtin_shufflevector(pv, pv, 10,11,10,11,10,11,10,11,10,11,10,11,10,11,10,11);
                pp[6] = __builtin_shufflevector(pv, pv, 12,13,12,13,12,13,12,13,12,13,12,13,12,13,12,13);
                pp[7] = __builtin_shufflevector(pv, pv, 14,15,14,15,14,15,14,15,14,15,14,15,14,15,14,15);
                for (long i0 = 0; i0 < 2 * nv; i0 += 8) {     /* (dimension, position) pairs */
                    const long w = 2 * nv - i0 < 8 ? 2 * nv - i0 : 8;
                    vf x[8];
                    for (long i = 0; i < w; i++) { memcpy(&x[i], ac + (i0 + i) * L, sizeof x[i]); x[i] *= alpha; }
                    for (long jp = 0; jp < pairs; jp++)
                        for (long i = 0; i < w; i++)
                            x[i] += pp[jp] * load16(j->v, base + jp * 2 * hs + (i0 + i) * L, kind);
                    for (long i = 0; i < w; i++) memcpy(ac + (i0 + i) * L, &x[i], sizeof x[i]);
                }
            }
        }
    }
    for (long b = 0; b < rows; b++)
        for (long h = 0; h < nh; h++) {
            const long bh = b * nh + h, o = ((j->r0 + b) * nh + h) * hs;
            const float inv = 1.0f / ms[bh * 2 + 1];
            const float *ac = acc + bh * 2 * hs;
            if (dot) {                                   /* bf16 out: one vector at a time */
                float x[MAXHS];
                for (long d = 0; d < hs; d += L) {
                    vf a; memcpy(&a, ac + d, sizeof a); a *= inv; memcpy(x + d, &a, sizeof a);
                }
                to_bf16((uint16_t *)j->out + o, x, hs);
                continue;
            }
            for (long d = 0; d < hs; d++) {
                const float x = (ac[2 * d] + ac[2 * d + 1]) * inv;   /* (dot: above) */
                if (j->qbf16) ((uint16_t *)j->out)[o + d] = f2bf(x);
                else ((float *)j->out)[o + d] = x;
            }
        }
    free(qf); free(qh); free(acc); free(ms);
}

static void *thread_main(void *a) {
    job_t *j = a;
    if (j->kn) store_new(j);
    const long nv = j->hs == 64 ? 4 : 0;          /* the usual head size, specialised */
    if (j->kind == BF16) { if (nv) kern(j, BF16, 4); else kern(j, BF16, 0); }
    else if (j->kind == I8) { if (nv) kern(j, I8, 4); else kern(j, I8, 0); }
    else { if (nv) kern(j, F32, 4); else kern(j, F32, 0); }
    return 0;
}

/* kind: the cache's storage (0 fp32, 1 bf16, 2 int8 with kscale, vscale); qbf16: q, the new key
   and value and out are bf16 (else fp32). q and the new key and value (kn NULL: none to store):
   element [b, h, d] at b * s_b + h * s_h + d. */
int mnisttext_attend(int kind, int qbf16, const void *q, long qs_b, long qs_h, const void *kn,
                     const void *vn, long ks_b, long ks_h, long vs_b, long vs_h, void *k, void *v,
                     float *kscale, float *vscale, void *out, long B, long nh, long nkv, long hs,
                     long n, float scale, int threads, const float *qg, const float *kg,
                     float eps, const float *rc, const float *rs) {
    if (hs % L || hs > MAXHS || nkv < 1 || nh % nkv || n < 1 || B < 1 || kind < 0 || kind > 2) return -1;
    if (kind == BF16 && !qbf16) return -1;
    if (kind == F32 && qbf16) return -1;           /* store_new would read 4 bytes per 2-byte value */
    if (kind == I8 && (!kscale || !vscale)) return -1;
    if (threads > 64) threads = 64;
    if (threads > B) threads = (int)B;
    if (threads < 1) threads = 1;
    job_t jobs[64];
    for (int i = 0; i < threads; i++) {
        job_t jb = {q, qs_b, qs_h, kn, vn, ks_b, ks_h, vs_b, vs_h, k, v, kscale, vscale, out,
                    B * i / threads, B * (i + 1) / threads, B, nh, nkv, hs, n, scale, kind, qbf16, 0,
                    qg, kg, rc, rs, eps};
        jobs[i] = jb;
    }
    int failed = 0;
#ifdef _OPENMP
    #pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int i = 0; i < threads; i++) thread_main(&jobs[i]);
#else
    pthread_t tid[64]; int ok[64] = {0};
    for (int i = 1; i < threads; i++) ok[i] = pthread_create(&tid[i], 0, thread_main, &jobs[i]) == 0;
    thread_main(&jobs[0]);
    for (int i = 1; i < threads; i++) {
        if (ok[i]) pthread_join(tid[i], 0);
        else thread_main(&jobs[i]);
    }
#endif
    for (int i = 0; i < threads; i++) failed |= jobs[i].failed;
    return failed ? -2 : 0;
}
"""

NATIVE_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno"]
THREAD_FLAGS = (["-fopenmp"], ["-pthread"])     # the first that compiles

_native_lock = threading.Lock()
_native_fn = None
_native_tried = False


def native_dir() -> Path:
    return cache_path().parent


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build_native(directory: Path | None = None, source: str = NATIVE_SOURCE, stem: str = "attend",
                 flags: list[str] | None = None) -> Path | None:
    """Compile a kernel's C source (NATIVE_SOURCE by default) into directory (the machine cache)
    once (~1 s); the library's path, or None where there is no C compiler or it fails. The file
    name hashes the source, the flags, the compiler's path and the CPU, so a changed kernel or
    another machine builds its own; older builds of the same stem are removed."""
    cc = _compiler()
    if cc is None:
        return None
    flags = NATIVE_FLAGS if flags is None else flags
    key = hashlib.sha256("\0".join([source, " ".join(flags), repr(THREAD_FLAGS), cc, cpu_model(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    directory = Path(directory or native_dir())
    lib = directory / f"{stem}-{key}.so"
    if lib.exists():
        return lib
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / f"{stem}.c"
            src.write_text(source)
            out = Path(tmp) / f"{stem}.so"
            for extra in THREAD_FLAGS:
                r = subprocess.run([cc, *flags, *extra, "-o", str(out), str(src)],
                                   capture_output=True, text=True, timeout=120)
                if r.returncode == 0:
                    break
            else:
                return None
            part = directory / f".{lib.name}.{os.getpid()}"
            shutil.copyfile(out, part)
            os.replace(part, lib)          # atomic: a concurrent build writes the same bytes
        for old in directory.glob(f"{stem}-*.so"):      # kernels of other sources or flags
            if old != lib:
                old.unlink(missing_ok=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return lib


def _load(lib: Path):
    fn = ctypes.CDLL(str(lib)).mnisttext_attend
    fn.restype = ctypes.c_int
    fn.argtypes = ([ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_long, ctypes.c_long,  # q
                    ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_long] * 4          # new k, v
                   + [ctypes.c_void_p] * 5 + [ctypes.c_long] * 5                     # k, v, scales, out
                   + [ctypes.c_float, ctypes.c_int]
                   + [ctypes.c_void_p] * 2 + [ctypes.c_float] + [ctypes.c_void_p] * 2)   # prep
    return fn


def _self_check(fn) -> bool:
    """The kernel against torch on small random caches: each storage (fp32, bf16, int8), GQA
    (2, 3 and 8 query heads a key/value head), partial chunks, the new key and value stored by
    the kernel, NaN in unwritten slots, and QK-norm and rope done by the kernel (Prep, hs 16, 64)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for dtype, kind, tol in ((torch.float32, 0, 1e-5), (torch.bfloat16, 1, 2e-2),
                                 (torch.bfloat16, 2, 5e-2), (torch.float32, 2, 5e-2)):
            for B, nh, nkv, hs, n in ((3, 4, 4, 64, 37), (2, 4, 2, 16, 48), (5, 2, 1, 32, 1),
                                     (2, 8, 1, 64, 40), (2, 6, 2, 16, 17)):    # 4 + 4, 3 heads a group
                nc = -(-n // ALIGN)
                k, v = (torch.randn(B, nkv, nc * ALIGN, hs).to(dtype) for _ in range(2))
                kn, vn = k[:, :, n - 1].clone(), v[:, :, n - 1].clone()   # stored by the kernel
                prep = Prep(torch.rand(hs) + 0.5, torch.rand(hs) + 0.5, 1e-6, torch.cos(torch.arange(hs // 2.0)),
                            torch.sin(torch.arange(hs // 2.0))) if hs in (16, 64) else None
                kn_in, kn = kn, (kn if prep is None else prep.key(kn))   # what is stored
                k[:, :, n - 1:], v[:, :, n - 1:] = float("nan"), float("inf")
                ks = vs = None
                if kind == 2:
                    (k8, ks), (v8, vs) = quantize(k), quantize(v)
                    kc, vc = chunk_keys(k8), chunk_values(v8)
                    ks, vs = (t.view(B, nkv, nc, ALIGN).permute(2, 0, 1, 3).contiguous() for t in (ks, vs))
                    want_k, want_v = (x.float() * sc[..., None] for x, sc in ((k8, quantize(k)[1]), (v8, quantize(v)[1])))
                    want_k[:, :, n - 1], want_v[:, :, n - 1] = (x.float() * sc[..., None] for x, sc in (quantize(kn), quantize(vn)))
                else:
                    kc, vc = chunk_keys(k), chunk_values(v)
                    want_k, want_v = k.float(), v.float()
                    want_k[:, :, n - 1], want_v[:, :, n - 1] = kn.float(), vn.float()
                q = torch.randn(B, 1, nh * hs).to(dtype).view(B, 1, nh, hs).transpose(1, 2)
                out = torch.empty(B, nh, 1, hs, dtype=dtype)
                rc = fn(kind, int(dtype == torch.bfloat16), q.data_ptr(), q.stride(0), q.stride(1),
                        kn_in.data_ptr(), vn.data_ptr(), kn.stride(0), kn.stride(1), vn.stride(0),
                        vn.stride(1), kc.data_ptr(), vc.data_ptr(), _ptr(ks), _ptr(vs),
                        out.data_ptr(), B, nh, nkv, hs, n, 1.0 / math.sqrt(hs), 2,
                        *(prep.pointers() if prep else (None, None, 0.0, None, None)))
                q = q if prep is None else prep.query(q)
                kk, vv = (t[:, :, :n].repeat_interleave(nh // nkv, 1) for t in (want_k, want_v))
                want = torch.softmax(q.float() @ kk.transpose(-1, -2) / math.sqrt(hs), -1) @ vv
                if rc != 0 or not torch.allclose(out.float(), want, atol=tol, rtol=tol):
                    return False
    return True


def load_native(load, check, **build):
    """A kernel built (build_native(**build)), loaded (load(path)) and checked (check(lib));
    None where any of the three fails."""
    try:
        path = build_native(**build)
        lib = load(path) if path is not None else None
        return lib if lib is not None and check(lib) else None
    except Exception:         # a kernel that does not build, load or pass its check is not used
        return None


def native_attend():
    """The native kernel (a ctypes function), built and checked once per process; None where
    it is unavailable or disabled (MNISTTEXT_NATIVE=0)."""
    global _native_fn, _native_tried
    if _native_tried:
        return _native_fn
    with _native_lock:
        if not _native_tried:
            fn = None
            if os.environ.get("MNISTTEXT_NATIVE", "1") != "0":
                fn = load_native(_load, _self_check)
            _native_fn, _native_tried = fn, True
    return _native_fn


def set_native(enabled: bool) -> None:
    """Use (True: build or load it now) or bypass (False) the native kernel in this process;
    tests and benchmarks compare the two paths with it."""
    global _native_fn, _native_tried
    with _native_lock:
        _native_fn, _native_tried = None, not enabled
    if enabled:
        native_attend()
