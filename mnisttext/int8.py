"""Int8 decode linears: the sampler's linear layers as 8-bit integer products.

    from mnisttext.int8 import Int8Linear, int8_available
    lin8 = Int8Linear(model.transformer.h[0].mlp.c_fc, act="relu2")   # from an fp32 nn.Linear
    y = lin8(x)                     # x (..., K) bf16 -> (..., N) bf16

Each weight row (output feature) is rounded to int8 with its own scale, and each input row
(one token of one candidate) with its own, so the product is torch._int_mm's exact int32 sum
times the two scales: a row's result never depends on the other rows of its batch, which the
sampler's seed contract needs. On CPUs with 8-bit dot products (AVX512-VNNI) the products run at
about twice the bf16 rate at a decode step's shapes (docs/performance.md), for about 0.01 nats
per image on the test split. The rounding of the inputs and the scaling of the outputs (with the
bias and ReLU² fused) are a small C kernel built like the attention's (kvcache.build_native);
without it, torch ops do the same arithmetic, slower. Whether a machine samples this way is the
decode plan's measured choice (tuning.py), or forced with `--dtype int8`.
"""
from __future__ import annotations

import ctypes
import functools
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kvcache

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>
/* rows split over `threads` OpenMP threads (torch's count) where there are enough of them */
#ifdef _OPENMP
#define ROWS_IN_PARALLEL _Pragma("omp parallel for num_threads(threads) schedule(static) if(threads > 1 && M >= 64)")
#else
#define ROWS_IN_PARALLEL
#endif

""" + kvcache.C_F2BF + r"""
/* the row scale of max |x| (as bits, non-negative floats order as integers): m / 127; 1 for a
   row of (near) zeros, which rounds to zeros; inf or NaN passed on, so the output is not finite
   either and the sampler's check sees it */
static inline float row_scale(uint32_t mu) {
    float m; memcpy(&m, &mu, 4);
    if (mu >= 0x7f800000u) return m;
    return m > 1e-30f ? m / 127.0f : 1.0f;
}

/* buf (K fp32) -> o: buf * (1 / s) rounded half to even, |.| <= 127; zeros where s is not finite */
static inline void round_row(const float *buf, long K, float sc, int8_t *o) {
    if (!(sc < INFINITY)) { memset(o, 0, K); return; }
    float inv = 1.0f / sc;
    for (long k = 0; k < K; k++) {
        float v = buf[k] * inv;
        v = (v + 12582912.0f) - 12582912.0f;
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        o[k] = (int8_t)(int32_t)v;
    }
}

/* x: M rows of K bf16 values (row stride ldx) -> q (M x K) and s (M): q = x * (1 / s) rounded
   half to even, s = max|x| / 127 (1 for a row of zeros). */
void mnt_quant_rows(const uint16_t *x, long M, long K, long ldx, int8_t *q, float *s, int threads) {
    ROWS_IN_PARALLEL
    for (long i = 0; i < M; i++) {
        float buf[K];
        const uint16_t *r = x + i * ldx;
        uint32_t mu = 0;
        for (long k = 0; k < K; k++) {
            uint32_t u = (uint32_t)r[k] << 16, a = u & 0x7fffffffu;
            memcpy(&buf[k], &u, 4);
            mu = a > mu ? a : mu;
        }
        s[i] = row_scale(mu);
        round_row(buf, K, s[i], q + i * K);
    }
}

/* x: M rows of K bf16 values (row stride ldx) -> LayerNorm in fp32 (gain g, bias b or NULL),
   then rounded as mnt_quant_rows rounds: the norm before a linear layer without a bf16 copy. */
typedef float vf __attribute__((vector_size(64)));
#if defined(__AVX512F__)
#include <immintrin.h>
static inline float vsum(vf v) { __m512 x; memcpy(&x, &v, sizeof x); return _mm512_reduce_add_ps(x); }
#else
static inline float vsum(vf v) { float t = 0.0f; for (int l = 0; l < 16; l++) t += v[l]; return t; }
#endif
/* sum of (buf[k] - c)^p, p = 1 or 2, over K values: four chains of 16 lanes, then a tree */
static inline float sum_pow(const float *buf, long K, float c, int p) {
    vf a[4] = {{0}, {0}, {0}, {0}};
    long k = 0;
    for (; k + 64 <= K; k += 64)
        for (int u = 0; u < 4; u++) {
            vf v; memcpy(&v, buf + k + 16 * u, 64);
            v -= c;
            a[u] += p == 2 ? v * v : v;
        }
    float t = vsum((a[0] + a[1]) + (a[2] + a[3]));
    for (; k < K; k++) t += p == 2 ? (buf[k] - c) * (buf[k] - c) : buf[k] - c;
    return t;
}
void mnt_ln_quant(const uint16_t *x, long M, long K, long ldx, const float *g, const float *b,
                  float eps, int8_t *q, float *s, int threads) {
    ROWS_IN_PARALLEL
    for (long i = 0; i < M; i++) {
        float buf[K];
        const uint16_t *r = x + i * ldx;
        long k;
        for (k = 0; k < K; k++) { uint32_t u = (uint32_t)r[k] << 16; memcpy(&buf[k], &u, 4); }
        const float mean = sum_pow(buf, K, 0.0f, 1) / (float)K;
        const float ss = sum_pow(buf, K, mean, 2);
        const float rstd = 1.0f / sqrtf(ss / (float)K + eps);
        uint32_t mu = 0;
        for (k = 0; k < K; k++) {
            float v = (buf[k] - mean) * rstd * g[k];
            if (b) v = v + b[k];
            buf[k] = v;
            uint32_t u; memcpy(&u, &v, 4);
            u &= 0x7fffffffu;
            mu = u > mu ? u : mu;
        }
        s[i] = row_scale(mu);
        round_row(buf, K, s[i], q + i * K);
    }
}

/* one row of y (N int32) -> v = y * a * ws[j] + b[j] in fp32 (b may be NULL); act 1: max(v, 0)^2
   (NaN stays NaN, as with torch's relu) */
static inline void scale_row(const int32_t *r, long N, float a, const float *ws, const float *b,
                             int act, float *v) {
    for (long j = 0; j < N; j++) v[j] = (float)r[j] * a * ws[j];
    if (b) for (long j = 0; j < N; j++) v[j] = v[j] + b[j];
    if (act == 1) for (long j = 0; j < N; j++) { float t = v[j] < 0.0f ? 0.0f : v[j]; v[j] = t * t; }
}

/* y (M x N int32) -> out (bf16, row stride ldo): scale_row rounded once to bf16. */
void mnt_dequant(const int32_t *y, long M, long N, const float *xs, const float *ws,
                 const float *b, int act, uint16_t *out, long ldo, int threads) {
    ROWS_IN_PARALLEL
    for (long i = 0; i < M; i++) {
        float v[N];
        scale_row(y + i * N, N, xs[i], ws, b, act, v);
        uint16_t *o = out + i * ldo;
        for (long j = 0; j < N; j++) o[j] = f2bf(v[j]);
    }
}

/* y (M x N int32) -> q (M x N int8), s (M): scale_row, then rounded as mnt_quant_rows rounds
   (the MLP's hidden layer goes from one int8 product to the next without a bf16 copy). */
void mnt_dequant_quant(const int32_t *y, long M, long N, const float *xs, const float *ws,
                       const float *b, int act, int8_t *q, float *s, int threads) {
    ROWS_IN_PARALLEL
    for (long i = 0; i < M; i++) {
        float v[N];
        scale_row(y + i * N, N, xs[i], ws, b, act, v);
        uint32_t mu = 0;
        for (long j = 0; j < N; j++) {
            uint32_t u; memcpy(&u, &v[j], 4);
            u &= 0x7fffffffu;
            mu = u > mu ? u : mu;
        }
        s[i] = row_scale(mu);
        round_row(v, N, s[i], q + i * N);
    }
}
"""
# no FMA contraction: the kernel rounds exactly as the torch ops below do
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-ffp-contract=off"]

_lock = threading.Lock()
_lib = None
_tried = False


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> int8 (M, K) and fp32 scales (M,): x ~ s * q, s = max|x| / 127 per row (1 for a
    row of near zeros, max|x| <= 1e-30), q = x * (1 / s) rounded half to even; a row holding inf
    or NaN gets that as its scale (and zeros), so what is made from it is not finite either.
    The torch twin of mnt_quant_rows."""
    x = x.float()
    m = x.abs().amax(-1)
    finite = torch.isfinite(m)
    s = torch.where(finite, torch.where(m > 1e-30, m / 127, torch.ones_like(m)), m)
    q = (x * (1 / s)[:, None]).round().clamp_(-127, 127)
    return torch.where(finite[:, None], q, 0).to(torch.int8), s


def _scale_torch(y, xs, ws, bias, act):
    v = y.float() * xs[:, None] * ws
    if bias is not None:
        v = v + bias
    return v.relu().square() if act == "relu2" else v


def _f32(t):
    """A parameter as a plain contiguous fp32 tensor (None stays None)."""
    return None if t is None else t.detach().float().contiguous()


def _weights(module, linear: nn.Linear, name: str) -> None:
    """linear's weight as int8 (K, N) with one scale per output feature, and its bias in fp32,
    as plain attributes name_w, name_s, name_b of module (not buffers: a decode step reads them
    hundreds of times, and nn.Module's attribute lookup is the slow path)."""
    q, s = quantize_rows(_f32(linear.weight))                            # (N, K), (N,)
    module.__dict__[f"{name}_w"] = q.t().contiguous()                     # (K, N)
    module.__dict__[f"{name}_s"] = s
    module.__dict__[f"{name}_b"] = _f32(linear.bias)


def _norm(module, ln: nn.LayerNorm | None) -> None:
    """ln's gain, bias and eps (fp32) kept by module, which applies the norm to its input."""
    module.__dict__["ln_w"] = None if ln is None else _f32(ln.weight)
    module.__dict__["ln_b"] = None if ln is None else _f32(ln.bias)
    module.eps = 0.0 if ln is None else float(ln.eps)


class Int8Linear(nn.Module):
    """Inference-only nn.Linear with int8 weights (one scale per output feature) and int8 inputs
    (one scale per row), bf16 in and out; ln: a LayerNorm applied to the input first (in fp32,
    fused with the rounding: the block's ln_1 then becomes an Identity). Never trained or saved."""

    def __init__(self, linear: nn.Linear, ln: nn.LayerNorm | None = None):
        super().__init__()
        _weights(self, linear, "fc")
        _norm(self, ln)
        self.out_features = linear.out_features

    def forward(self, x):
        shape = x.shape
        q, s = _quant(x.reshape(-1, shape[-1]), self)
        y = _dequant(torch._int_mm(q, self.fc_w), s, self.fc_s, self.fc_b, None)
        return y.view(*shape[:-1], self.out_features)


class Int8MLP(nn.Module):
    """The MLP with ReLU² (c_fc, ReLU², c_proj) as two int8 products; the hidden layer goes
    from the first to the second as int8 (rounded per row from fp32), without a bf16 copy."""

    def __init__(self, mlp: nn.Module, ln: nn.LayerNorm | None = None):
        super().__init__()
        _weights(self, mlp.c_fc, "fc")
        _weights(self, mlp.c_proj, "proj")
        _norm(self, ln)

    def forward(self, x):
        shape = x.shape
        q, s = _quant(x.reshape(-1, shape[-1]), self)
        h, hs = _dequant_quant(torch._int_mm(q, self.fc_w), s, self.fc_s, self.fc_b, "relu2")
        y = _dequant(torch._int_mm(h, self.proj_w), hs, self.proj_s, self.proj_b, None)
        return y.view(*shape[:-1], y.shape[-1])


def _quant(x2: torch.Tensor, layer=None):
    """(M, K) bf16 -> int8 (M, K), scales (M,); with layer.ln_w, LayerNorm'd first."""
    lib = native()
    ln = layer is not None and layer.ln_w is not None
    if lib is None:
        return quantize_rows(_layer_norm(x2, layer) if ln else x2)
    if x2.dtype != torch.bfloat16 or x2.stride(-1) != 1:
        x2 = x2.to(torch.bfloat16).contiguous()
    M, K = x2.shape
    q, s = torch.empty((M, K), dtype=torch.int8), torch.empty(M, dtype=torch.float32)
    threads = torch.get_num_threads()
    if ln:
        lib[3](x2.data_ptr(), M, K, x2.stride(0), layer.ln_w.data_ptr(),
               None if layer.ln_b is None else layer.ln_b.data_ptr(), layer.eps,
               q.data_ptr(), s.data_ptr(), threads)
    else:
        lib[0](x2.data_ptr(), M, K, x2.stride(0), q.data_ptr(), s.data_ptr(), threads)
    return q, s


def _layer_norm(x2, layer):
    return F.layer_norm(x2.float(), (x2.shape[-1],), layer.ln_w, layer.ln_b, layer.eps)


def _args(y, xs, ws, bias, act):
    M, N = y.shape
    return (y.data_ptr(), M, N, xs.data_ptr(), ws.data_ptr(),
            None if bias is None else bias.data_ptr(), int(act == "relu2"))


def _dequant(y, xs, ws, bias, act) -> torch.Tensor:
    """int32 products (M, N) -> bf16 (M, N): times the row and column scales, plus bias, act."""
    lib = native()
    if lib is None:
        return _scale_torch(y, xs, ws, bias, act).to(torch.bfloat16)
    out = torch.empty(y.shape, dtype=torch.bfloat16)
    lib[1](*_args(y, xs, ws, bias, act), out.data_ptr(), y.shape[1], torch.get_num_threads())
    return out


def _dequant_quant(y, xs, ws, bias, act):
    """int32 products (M, N) -> as _dequant, in fp32, then rounded per row: int8 (M, N), (M,)."""
    lib = native()
    if lib is None:
        return quantize_rows(_scale_torch(y, xs, ws, bias, act))
    q, s = torch.empty(y.shape, dtype=torch.int8), torch.empty(y.shape[0], dtype=torch.float32)
    lib[2](*_args(y, xs, ws, bias, act), q.data_ptr(), s.data_ptr(), torch.get_num_threads())
    return q, s


def _load(path):
    lib = ctypes.CDLL(str(path))
    fns = lib.mnt_quant_rows, lib.mnt_dequant, lib.mnt_dequant_quant, lib.mnt_ln_quant
    L, P = ctypes.c_long, ctypes.c_void_p
    for f in fns:
        f.restype = None
    I = ctypes.c_int
    fns[0].argtypes = [P, L, L, L, P, P, I]
    fns[1].argtypes = [P, L, L, P, P, P, I, P, L, I]
    fns[2].argtypes = [P, L, L, P, P, P, I, P, P, I]
    fns[3].argtypes = [P, L, L, L, P, P, ctypes.c_float, P, P, I]
    return fns


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit, NaN where the other has NaN."""
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0), b.nan_to_num(0))
    return torch.equal(a, b)


def _self_check(lib) -> bool:
    """The kernel against the torch ops, bit for bit, on random inputs: a strided input with a
    row of zeros, one of tiny values and one holding NaN; products scaled with and without bias
    and ReLU², to bf16 and to int8."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(7, 48).to(torch.bfloat16)[:, 3:43]
        x[2], x[4], x[5, 7] = 0, 1e-35, float("nan")
        q, s = quantize_rows(x)
        q2, s2 = torch.empty_like(q), torch.empty_like(s)
        lib[0](x.data_ptr(), 7, 40, x.stride(0), q2.data_ptr(), s2.data_ptr(), 1)
        if not (_same(q, q2) and _same(s, s2)):
            return False
        y = torch.randint(-40000, 40000, (7, 24), dtype=torch.int32)
        ws, b = torch.rand(24) / 100, torch.randn(24)
        for bias, act in ((b, None), (None, "relu2"), (b, "relu2")):
            want = _scale_torch(y, s, ws, bias, act)
            out = torch.empty(7, 24, dtype=torch.bfloat16)
            lib[1](*_args(y, s, ws, bias, act), out.data_ptr(), 24, 1)
            q3, s3 = torch.empty(7, 24, dtype=torch.int8), torch.empty(7)
            lib[2](*_args(y, s, ws, bias, act), q3.data_ptr(), s3.data_ptr(), 1)
            wq, wsc = quantize_rows(want)
            if not (_same(out, want.to(torch.bfloat16)) and _same(q3, wq) and _same(s3, wsc)):
                return False
        return _ln_close(lib, x[:4])


def _ln_close(lib, x) -> bool:
    """The fused LayerNorm and rounding against torch's: its sums run in another order, so a
    value may round to the next integer and a scale differ in its last bits."""
    ln = nn.LayerNorm(x.shape[1])
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5), ln.bias.uniform_(-1, 1)
    layer = nn.Module()
    _norm(layer, ln)
    want_q, want_s = quantize_rows(_layer_norm(x, layer))
    q, s = torch.empty_like(want_q), torch.empty_like(want_s)
    lib[3](x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), layer.ln_w.data_ptr(),
           layer.ln_b.data_ptr(), layer.eps, q.data_ptr(), s.data_ptr(), 1)
    return bool((q.int() - want_q.int()).abs().max() <= 1 and torch.allclose(s, want_s, rtol=1e-5, atol=0))


@functools.cache
def int_mm_works() -> bool:
    """Whether this build of torch has a CPU int8 matmul (torch._int_mm) that gives exact sums."""
    try:
        a = torch.randint(-127, 128, (5, 32), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
        b = torch.randint(-127, 128, (8, 32), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
        big = torch.full((64, 1024), 127, dtype=torch.int8)     # the sums a CPU's 16-bit steps could clip
        big[1::2] = -127
        return (torch.equal(torch._int_mm(a, b.t()), a.int() @ b.t().int())
                and torch.equal(torch._int_mm(big, big.t()), big.int() @ big.t().int()))
    except (RuntimeError, AttributeError):
        return False


def native():
    """The kernel's (quantize, dequantize) ctypes functions, built and checked once per process;
    None where there is no C compiler or MNISTTEXT_NATIVE=0 (the torch ops then run)."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            lib = None
            if kvcache.native_attend() is not None and int_mm_works():   # honours MNISTTEXT_NATIVE
                lib = kvcache.load_native(_load, _self_check, source=SOURCE, stem="int8", flags=FLAGS)
            _lib, _tried = lib, True
    return _lib


def int8_available() -> bool:
    """Whether int8 sampling can run fast here: torch's int8 matmul and the kernel."""
    return int_mm_works() and native() is not None


def quantize_blocks(fast: nn.Module, source: nn.Module) -> None:
    """Swap the linear layers of a bf16 sampler's transformer blocks (in place) for int8 ones,
    rounded from `source`'s (the fp32 model's) weights: Int8MLP for a ReLU² MLP, Int8Linear
    elsewhere. The head and the embeddings stay as they are."""
    relu2 = getattr(source.config, "act", "gelu") == "relu2"
    for bf, bm in zip(fast.transformer.h, source.transformer.h):
        ln_1 = bm.ln_1 if bm.canon_a is None else None        # a canon layer sits between them
        ln_2 = bm.ln_2 if bm.canon_c is None else None
        bf.attn.c_attn, bf.attn.c_proj = Int8Linear(bm.attn.c_attn, ln_1), Int8Linear(bm.attn.c_proj)
        if ln_1 is not None:
            bf.ln_1 = nn.Identity()
        if relu2:
            bf.mlp = Int8MLP(bm.mlp, ln_2)
        else:                             # GELU between two int8 products, in bf16
            bf.mlp.c_fc, bf.mlp.c_proj = Int8Linear(bm.mlp.c_fc, ln_2), Int8Linear(bm.mlp.c_proj)
            bf.mlp.gelu = nn.GELU(approximate="none" if source.config.gelu == "exact" else "tanh")
        if ln_2 is not None:
            bf.ln_2 = nn.Identity()
