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

ALIGN = 16          # capacities are padded to a multiple of this: the kernel reads 16 positions at once


class KVCache:
    """Keys and values of every layer, filled up to `pos`, in the dtype the layers compute in.

    Two layouts, picked at the first write:
    - chunked (where the native kernel runs): k, v (n_layer, n_chunks, B, n_kv, ALIGN, hs),
      positions in chunks of ALIGN; a decode step reads chunk after chunk, each one contiguous
      over all rows and heads, so the read streams through memory (twice as fast as reading
      each row's keys from its own stretch of a (B, n_kv, positions, hs) buffer).
    - plain (the torch fallback): k, v (n_layer, B, n_kv, capacity, hs).
    Either way the whole block (rounded up to ALIGN positions) is allocated, uninitialized, at
    the first write: pages the lines never reach are never touched, and a decode step reads only
    the positions written. The torch fallback reads the whole buffer with the unwritten tail
    masked, so it zeroes the tail first (-inf + NaN is NaN)."""

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

    @property
    def batch_size(self) -> int:
        return self.shape[1]

    @property
    def capacity(self) -> int:
        return 0 if self.v is None else _round_up(self.shape[3], ALIGN)

    def _alloc(self, batch_size: int, like: torch.Tensor, chunked: bool):
        L, _, nkv, block, hs = self.shape
        cap = _round_up(block, ALIGN)
        shape = (L, cap // ALIGN, batch_size, nkv, ALIGN, hs) if chunked else (L, batch_size, nkv, cap, hs)
        dtype = self.dtype or like.dtype
        return (torch.empty(shape, device=like.device, dtype=dtype),
                torch.empty(shape, device=like.device, dtype=dtype))

    def _native_ok(self, t: torch.Tensor) -> bool:
        return (t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16)
                and (self.dtype is None or self.dtype == t.dtype) and self.shape[4] % ALIGN == 0
                and native_attend() is not None)

    def layer_view(self, layer: int, t: torch.Tensor, end: int) -> torch.Tensor:
        """Positions :end of layer `layer` of k or v as (B, n_kv, end, hs): a view of the plain
        layout, a copy of the chunked one."""
        if not self.chunked:
            return t[layer, :, :, :end]
        x = t[layer, :-(-end // ALIGN)]                              # (c, B, nkv, ALIGN, hs)
        B, nkv, hs = x.shape[1], x.shape[2], x.shape[4]
        return x.permute(1, 2, 0, 3, 4).reshape(B, nkv, -1, hs)[:, :, :end]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, nkv, T, hs) at pos..pos+T; return all keys and values so far
        (B, nkv, pos+T, hs): the inputs themselves when the cache was empty, else views (plain
        layout) or copies (chunked).

        One exception saves the chunked layout a copy of the whole cache per layer and step: once
        attend_one has been called on this cache, its caller decodes with attend_one, and a
        one-token write returns only the new k, v (the model ignores the return there)."""
        p, T = self.pos, k.shape[2]
        if p + T > self.shape[3]:
            raise ValueError(f"{p + T} positions > block size {self.shape[3]}")
        if self.v is None:
            self.chunked = self._native_ok(k)
            self.k, self.v = self._alloc(self.batch_size, k, self.chunked)
            self._tail_zero = False
        for mine, new in ((self.k, k), (self.v, v)):
            if not self.chunked:
                mine[layer, :, :, p:p + T] = new
                continue
            for c in range(p // ALIGN, -(-(p + T) // ALIGN)):         # the chunks it touches
                a, b = max(p, c * ALIGN), min(p + T, (c + 1) * ALIGN)
                mine[layer, c, :, :, a - c * ALIGN:b - c * ALIGN] = new[:, :, a - p:b - p]
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

    def attend_one(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """Attention of one new query per row and head over everything cached (its own key
        included, written first): q (B, nh, 1, hs) -> (B, nh, 1, hs). With fewer key/value
        heads than query heads (n_kv divides nh), query head h reads key/value head
        h // (nh / n_kv)."""
        B, nh, _, hs = q.shape
        nkv, n = self.shape[2], self.pos + 1
        self._attends = True
        if self.chunked:
            if q.stride(-1) == 1 and q.dtype == self.v.dtype:
                out = torch.empty(B, nh, 1, hs, dtype=q.dtype)
                rc = native_attend()(int(q.dtype == torch.bfloat16), q.data_ptr(), q.stride(0),
                                     q.stride(1), self.k[layer].data_ptr(), self.v[layer].data_ptr(),
                                     out.data_ptr(), B, nh, nkv, hs, n, 1.0 / math.sqrt(hs),
                                     torch.get_num_threads())
                if rc == 0:
                    return out
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

    def _like(self, batch_size: int) -> "KVCache":
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.shape = (self.shape[0], batch_size) + self.shape[2:]
        new._mask = new._mask_key = None
        return new

    def expand(self, n: int) -> "KVCache":
        """A cache of batch n from one of batch 1 (the prefilled class prefix)."""
        if self.batch_size != 1:
            raise ValueError("expand a cache of batch 1")
        return KVCache.cat([self], n)

    @staticmethod
    def cat(caches: list["KVCache"], repeat: int | list[int] = 1) -> "KVCache":
        """One cache whose rows are the rows of `caches` in order, each row of caches[i]
        repeat[i] times (all at the same position; only the written positions are copied).
        Per-row state that a subclass keeps in a dict of (B, ...) tensors (the canon layers'
        `conv`) goes along."""
        reps = [repeat] * len(caches) if isinstance(repeat, int) else list(repeat)
        first = caches[0]
        if len(reps) != len(caches) or any(
                c.pos != first.pos or c.shape[2:] != first.shape[2:] or type(c) is not type(first)
                or c.chunked != first.chunked for c in caches):
            raise ValueError("cat caches of one type, shape, layout and position")
        new = first._like(sum(c.batch_size * r for c, r in zip(caches, reps)))
        if first.v is not None:
            new.k, new.v = new._alloc(new.batch_size, first.v, first.chunked)
            new._tail_zero = False
            p, row = first.pos, 0
            bdim = 2 if first.chunked else 1
            for c, r in zip(caches, reps):
                rows = c.batch_size * r
                for mine, theirs in ((new.k, c.k), (new.v, c.v)):
                    # the written positions: whole chunks (chunked) or :p (plain)
                    src = theirs[:, :-(-p // ALIGN)] if first.chunked else theirs[:, :, :, :p]
                    dst = mine[:, :-(-p // ALIGN)] if first.chunked else mine[:, :, :, :p]
                    if r > 1:
                        src = src.repeat_interleave(r, bdim)
                    dst.narrow(bdim, row, rows).copy_(src)
                row += rows
        for name, value in first.__dict__.items():
            if isinstance(value, dict) and all(isinstance(t, torch.Tensor) for t in value.values()):
                setattr(new, name, {key: torch.cat([getattr(c, name)[key].repeat_interleave(r, 0)
                                                    for c, r in zip(caches, reps)]) for key in value})
        return new


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


# ---------------------------------------------------------------------------------------------
# The native decode attention. One call does every row and head of one layer, split by rows over
# `threads` POSIX threads. Each thread walks the chunks of ALIGN positions in order (so its reads
# stream through memory), and for each row and head: 16 scores q . k_t at once (16 dot products,
# their lanes summed by one transpose-add), an online softmax in fp32 (a running max and sum, a
# polynomial exp so the loops vectorize), and the values weighted by the probabilities added to
# an fp32 accumulator. bf16 is read as bf16 and computed in fp32; the output is rounded once.
# A row's result depends only on that row: no batch-size effects.

NATIVE_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <pthread.h>

#define L 16
typedef float vf __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));

static inline vf load16(const void *base, long off, int bf16) {
    if (bf16) {
        vh h; memcpy(&h, (const uint16_t *)base + off, sizeof h);
        vu u = __builtin_convertvector(h, vu) << 16;
        return (vf)u;
    }
    vf f; memcpy(&f, (const float *)base + off, sizeof f);
    return f;
}
static inline float bf2f(uint16_t x) { union { uint32_t u; float f; } b; b.u = (uint32_t)x << 16; return b.f; }
static inline uint16_t f2bf(float f) {          /* round to nearest even, as torch does */
    union { uint32_t u; float f; } b; b.f = f;
    uint32_t u = b.u;
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
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
static inline float hmax(vf v) { float m = v[0]; for (int l = 1; l < L; l++) m = v[l] > m ? v[l] : m; return m; }
static inline float hsum(vf v) { float s = 0; for (int l = 0; l < L; l++) s += v[l]; return s; }
/* r[t] = the sum of the lanes of a[t], for 16 vectors at once (a fixed order of additions) */
static inline vf reduce16(const vf *a) {
    vf b[8], d[4], e[2];
    for (int i = 0; i < 8; i++)
        b[i] = __builtin_shufflevector(a[2*i], a[2*i+1], 0,1,2,3,4,5,6,7, 16,17,18,19,20,21,22,23)
             + __builtin_shufflevector(a[2*i], a[2*i+1], 8,9,10,11,12,13,14,15, 24,25,26,27,28,29,30,31);
    for (int i = 0; i < 4; i++)
        d[i] = __builtin_shufflevector(b[2*i], b[2*i+1], 0,1,2,3, 16,17,18,19, 8,9,10,11, 24,25,26,27)
             + __builtin_shufflevector(b[2*i], b[2*i+1], 4,5,6,7, 20,21,22,23, 12,13,14,15, 28,29,30,31);
    for (int i = 0; i < 2; i++)
        e[i] = __builtin_shufflevector(d[2*i], d[2*i+1], 0,1, 16,17, 4,5, 20,21, 8,9, 24,25, 12,13, 28,29)
             + __builtin_shufflevector(d[2*i], d[2*i+1], 2,3, 18,19, 6,7, 22,23, 10,11, 26,27, 14,15, 30,31);
    vf f = __builtin_shufflevector(e[0], e[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30)
         + __builtin_shufflevector(e[0], e[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    return __builtin_shufflevector(f, f, 0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15);
}

typedef struct {
    const void *q; long qs_b, qs_h; const void *k, *v; void *out;
    long r0, r1, B, nh, nkv, hs, n; float scale; int bf16, failed;
} job_t;

/* k, v: (n_chunks, B, nkv, 16, hs); q: row b, head h at q[b * qs_b + h * qs_h]; out: (B, nh, hs) */
static inline __attribute__((always_inline)) void kern(job_t *j, const int bf16) {
    const long nh = j->nh, nkv = j->nkv, hs = j->hs, n = j->n, rep = nh / nkv, B = j->B;
    const long rows = j->r1 - j->r0, nc = (n + L - 1) / L, nvec = hs / L;
    float *qf = malloc(sizeof(float) * rows * nh * hs);
    float *acc = malloc(sizeof(float) * rows * nh * hs);
    float *ms = malloc(sizeof(float) * rows * nh * 2);        /* running max, running sum */
    if (!qf || !acc || !ms) { free(qf); free(acc); free(ms); j->failed = 1; return; }
    for (long b = 0; b < rows; b++)
        for (long h = 0; h < nh; h++) {
            const long bh = b * nh + h;
            for (long d = 0; d < hs; d++) {
                const long o = (j->r0 + b) * j->qs_b + h * j->qs_h + d;
                qf[bh * hs + d] = (bf16 ? bf2f(((const uint16_t *)j->q)[o]) : ((const float *)j->q)[o]) * j->scale;
                acc[bh * hs + d] = 0.0f;
            }
            ms[bh * 2] = -1e30f;
            ms[bh * 2 + 1] = 0.0f;
        }
    vf lane, zero, neg;
    for (int l = 0; l < L; l++) { lane[l] = (float)l; zero[l] = 0.0f; neg[l] = -1e30f; }
    for (long c = 0; c < nc; c++) {
        const long valid = n - c * L < L ? n - c * L : L;
        const vf validv = zero + (float)valid;
        for (long b = 0; b < rows; b++)
        for (long g = 0; g < nkv; g++) {
            const long base = ((c * B + j->r0 + b) * nkv + g) * L * hs;
            for (long r = 0; r < rep; r++) {
                const long bh = b * nh + g * rep + r;
                const float *q = qf + bh * hs;
                vf a[L];
                for (int t = 0; t < L; t++) {
                    vf x = {0};
                    for (long i = 0; i < nvec; i++) {
                        vf qv; memcpy(&qv, q + i * L, sizeof qv);
                        x += qv * load16(j->k, base + t * hs + i * L, bf16);
                    }
                    a[t] = x;
                }
                vf s = reduce16(a);
                s = vsel(lane < validv, s, neg);              /* positions not yet written */
                const float m = ms[bh * 2];
                float mn = hmax(s);
                mn = mn > m ? mn : m;
                const float alpha = vexp(zero + (m - mn))[0];
                vf p = vexp(s - mn);
                p = vsel(lane < validv, p, zero);
                ms[bh * 2] = mn;
                ms[bh * 2 + 1] = ms[bh * 2 + 1] * alpha + hsum(p);
                float *ac = acc + bh * hs;
                for (long i = 0; i < nvec; i++) {
                    vf x; memcpy(&x, ac + i * L, sizeof x);
                    x *= alpha;
                    for (long t = 0; t < valid; t++) x += p[t] * load16(j->v, base + t * hs + i * L, bf16);
                    memcpy(ac + i * L, &x, sizeof x);
                }
            }
        }
    }
    for (long b = 0; b < rows; b++)
        for (long h = 0; h < nh; h++) {
            const long bh = b * nh + h, o = ((j->r0 + b) * nh + h) * hs;
            const float inv = 1.0f / ms[bh * 2 + 1];
            for (long d = 0; d < hs; d++) {
                const float x = acc[bh * hs + d] * inv;
                if (bf16) ((uint16_t *)j->out)[o + d] = f2bf(x);
                else ((float *)j->out)[o + d] = x;
            }
        }
    free(qf); free(acc); free(ms);
}

static void *thread_main(void *a) {
    job_t *j = a;
    if (j->bf16) kern(j, 1); else kern(j, 0);
    return 0;
}

int mnisttext_attend(int bf16, const void *q, long qs_b, long qs_h, const void *k, const void *v,
                     void *out, long B, long nh, long nkv, long hs, long n, float scale, int threads) {
    if (hs % L || nkv < 1 || nh % nkv || n < 1 || B < 1) return -1;
    if (threads > 64) threads = 64;
    if (threads > B) threads = (int)B;
    if (threads < 1) threads = 1;
    job_t jobs[64]; pthread_t tid[64]; int ok[64] = {0};
    for (int i = 0; i < threads; i++) {
        job_t jb = {q, qs_b, qs_h, k, v, out, B * i / threads, B * (i + 1) / threads,
                    B, nh, nkv, hs, n, scale, bf16, 0};
        jobs[i] = jb;
    }
    for (int i = 1; i < threads; i++) ok[i] = pthread_create(&tid[i], 0, thread_main, &jobs[i]) == 0;
    thread_main(&jobs[0]);
    int failed = jobs[0].failed;
    for (int i = 1; i < threads; i++) {
        if (ok[i]) pthread_join(tid[i], 0);
        else thread_main(&jobs[i]);
        failed |= jobs[i].failed;
    }
    return failed ? -2 : 0;
}
"""

NATIVE_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-pthread", "-fno-math-errno"]

_native_lock = threading.Lock()
_native_fn = None
_native_tried = False


def native_dir() -> Path:
    from .machine import cache_path
    return cache_path().parent


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build_native(directory: Path | None = None) -> Path | None:
    """Compile NATIVE_SOURCE into directory (the machine cache) once; the library's path, or
    None where there is no C compiler or it fails. The file name hashes the source, the flags,
    the compiler and the CPU, so a changed kernel or another machine builds its own."""
    from .machine import cpu_model
    cc = _compiler()
    if cc is None:
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    key = hashlib.sha256("\0".join([NATIVE_SOURCE, " ".join(NATIVE_FLAGS), version, cpu_model(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    directory = Path(directory or native_dir())
    lib = directory / f"attend-{key}.so"
    if lib.exists():
        return lib
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "attend.c"
            src.write_text(NATIVE_SOURCE)
            out = Path(tmp) / "attend.so"
            r = subprocess.run([cc, *NATIVE_FLAGS, "-o", str(out), str(src)], capture_output=True,
                               text=True, timeout=120)
            if r.returncode != 0:
                return None
            part = directory / f".{lib.name}.{os.getpid()}"
            shutil.copyfile(out, part)
            os.replace(part, lib)          # atomic: a concurrent build writes the same bytes
    except (OSError, subprocess.SubprocessError):
        return None
    return lib


def _load(lib: Path):
    fn = ctypes.CDLL(str(lib)).mnisttext_attend
    fn.restype = ctypes.c_int
    fn.argtypes = ([ctypes.c_int, ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                    ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_long] * 5
                   + [ctypes.c_float, ctypes.c_int])
    return fn


def _self_check(fn) -> bool:
    """The kernel against torch on small random caches: both dtypes, GQA, partial chunks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            for B, nh, nkv, hs, n in ((3, 4, 4, 64, 37), (2, 4, 2, 16, 48), (5, 2, 1, 32, 1)):
                nc = -(-n // ALIGN)
                k, v = (torch.randn(B, nkv, nc * ALIGN, hs).to(dtype) for _ in range(2))
                k[:, :, n:], v[:, :, n:] = float("nan"), float("inf")   # unwritten: never read
                chunk = lambda t: t.view(B, nkv, nc, ALIGN, hs).permute(2, 0, 1, 3, 4).contiguous()
                kc, vc = chunk(k), chunk(v)
                q = torch.randn(B, 1, nh * hs).to(dtype).view(B, 1, nh, hs).transpose(1, 2)
                out = torch.empty(B, nh, 1, hs, dtype=dtype)
                rc = fn(int(dtype == torch.bfloat16), q.data_ptr(), q.stride(0), q.stride(1),
                        kc.data_ptr(), vc.data_ptr(), out.data_ptr(), B, nh, nkv, hs, n,
                        1.0 / math.sqrt(hs), 2)
                kk, vv = (t[:, :, :n].float().repeat_interleave(nh // nkv, 1) for t in (k, v))
                want = torch.softmax(q.float() @ kk.transpose(-1, -2) / math.sqrt(hs), -1) @ vv
                if rc != 0 or not torch.allclose(out.float(), want, atol=tol, rtol=tol):
                    return False
    return True


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
                try:
                    lib = build_native()
                    fn = _load(lib) if lib is not None else None
                    if fn is not None and not _self_check(fn):
                        fn = None
                except OSError:
                    fn = None
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
