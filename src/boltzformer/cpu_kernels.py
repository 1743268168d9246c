"""Cache-blocked CPU kernels for sampled attention and sorted draws, compiled on first use.

Sampled attention touches, for every (query, head) row r, the rows ``rows[r, 0..n)`` of a feature
matrix X (M, C): scores ``A[r] . X[rows[r, t]]`` (a sampled dense-dense product, "SDDMM"), weighted
sums ``sum_t W[r, t] X[rows[r, t]]`` ("SpMM") and, in backward, the transposed scatter. PyTorch has
these as ``torch.sparse.sampled_addmm`` and ``F.embedding_bag``, which walk the rows one by one and
read X from memory at random; with 808 rows x 1,638 draws over 16,384 tokens that is memory-bound.
The kernels here visit X in blocks of ``BLOCK`` tokens that stay in the L2 cache and, for each block,
every row's draws that fall in it (each row's draws are sorted, so a row's draws in a block are a
contiguous run: :func:`segments`). Same arithmetic, several times faster at paper size.

They are plain C (OpenMP), built with the system C compiler into the user cache directory the first
time they are needed and loaded with ctypes; no build step at install time. Where no compiler is
found, or with ``BOLTZFORMER_CPU_KERNELS=0``, :func:`available` is False and callers use the
PyTorch operations above, which give the same results (tested).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["BLOCK_BYTES", "available", "sddmm", "segments", "spmm", "spmm_t", "weighted_draws"]

#: bytes of X per block: a block and the rows of A or of the output it meets stay in a 1.25 MB L2
#: (512 KB measured 10-20 % faster than 256 KB at paper size, and 64-128 KB slower)
BLOCK_BYTES = 512 * 1024


def _block(C: int) -> int:
    return max(1, BLOCK_BYTES // (4 * C))

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <omp.h>

/* weights this small add nothing to a float32 sum of weights <= 1, and multiplying by a denormal is
   ~100x slower: skip them (softmax weights underflow to denormals at cold temperatures) */
#define NEGLIGIBLE 1e-30f

static inline void axpy(float w, const float* x, float* y, int64_t C) {
    for (int64_t c = 0; c < C; c++) y[c] += w * x[c];
}

/* four rows of X against one row of A: four independent accumulator chains (one chain per dot
   product would wait on the FMA latency at every step) */
static inline void dot4(const float* a, const float* x0, const float* x1, const float* x2, const float* x3,
                        int64_t C, float* out) {
    float s0[16] = {0}, s1[16] = {0}, s2[16] = {0}, s3[16] = {0};
    int64_t c = 0;
    for (; c + 16 <= C; c += 16)
        for (int l = 0; l < 16; l++) {
            float av = a[c + l];
            s0[l] += av * x0[c + l]; s1[l] += av * x1[c + l];
            s2[l] += av * x2[c + l]; s3[l] += av * x3[c + l];
        }
    float r0 = 0.f, r1 = 0.f, r2 = 0.f, r3 = 0.f;
    for (int l = 0; l < 16; l++) { r0 += s0[l]; r1 += s1[l]; r2 += s2[l]; r3 += s3[l]; }
    for (; c < C; c++) { r0 += a[c] * x0[c]; r1 += a[c] * x1[c]; r2 += a[c] * x2[c]; r3 += a[c] * x3[c]; }
    out[0] = r0; out[1] = r1; out[2] = r2; out[3] = r3;
}

static inline float dot1(const float* a, const float* b, int64_t C) {
    float acc[4][16] = {{0}};
    int64_t c = 0;
    for (; c + 64 <= C; c += 64)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 16; l++) acc[k][l] += a[c + 16 * k + l] * b[c + 16 * k + l];
    float s = 0.f;
    for (int k = 0; k < 4; k++) for (int l = 0; l < 16; l++) s += acc[k][l];
    for (; c < C; c++) s += a[c] * b[c];
    return s;
}

/* y += w0 x0 + w1 x1 + w2 x2 + w3 x3: one load and store of y for four rows of X */
static inline void axpy4(const float* w, const float* x0, const float* x1, const float* x2, const float* x3,
                         float* y, int64_t C) {
    float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
    for (int64_t c = 0; c < C; c++) y[c] += (w0 * x0[c] + w1 * x1[c]) + (w2 * x2[c] + w3 * x3[c]);
}

/* seg[r, b] = first t with rows[r, t] >= b * bs (rows sorted within each row), b = 0..nb */
void segments(const int64_t* rows, int64_t R, int64_t n, int64_t bs, int64_t nb, int64_t* seg, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < R; r++) {
        const int64_t* row = rows + r * n;
        int64_t* s = seg + r * (nb + 1);
        int64_t t = 0;
        for (int64_t b = 0; b <= nb; b++) {
            int64_t lo = b * bs;
            while (t < n && row[t] < lo) t++;
            s[b] = t;
        }
    }
}

/* out[r, t] = A[r] . X[rows[r, t]] where valid, else 0; threads split the rows, blocks outermost.
   A row's valid draws in a block go four at a time (dot4); repeats are skipped */
void sddmm(const float* A, const float* X, const int64_t* rows, const uint8_t* valid, const int64_t* seg,
           int64_t R, int64_t n, int64_t C, int64_t nb, float* out, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t r0 = R * tid / nt, r1 = R * (tid + 1) / nt;
        for (int64_t b = 0; b < nb; b++)
            for (int64_t r = r0; r < r1; r++) {
                const int64_t* s = seg + r * (nb + 1);
                const float* a = A + r * C;
                int64_t pick[4]; int k = 0;
                for (int64_t t = s[b]; t < s[b + 1]; t++) {
                    int64_t i = r * n + t;
                    if (!valid[i]) { out[i] = 0.f; continue; }
                    pick[k++] = i;
                    if (k == 4) {
                        float d[4];
                        dot4(a, X + rows[pick[0]] * C, X + rows[pick[1]] * C, X + rows[pick[2]] * C,
                             X + rows[pick[3]] * C, C, d);
                        for (int j = 0; j < 4; j++) out[pick[j]] = d[j];
                        k = 0;
                    }
                }
                for (int j = 0; j < k; j++) out[pick[j]] = dot1(a, X + rows[pick[j]] * C, C);
            }
    }
}

/* out[r] = sum_t W[r, t] X[rows[r, t]] (out zeroed by the caller), four draws at a time */
void spmm(const float* W, const float* X, const int64_t* rows, const int64_t* seg,
          int64_t R, int64_t n, int64_t C, int64_t nb, float* out, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t r0 = R * tid / nt, r1 = R * (tid + 1) / nt;
        for (int64_t b = 0; b < nb; b++)
            for (int64_t r = r0; r < r1; r++) {
                const int64_t* s = seg + r * (nb + 1);
                float* y = out + r * C;
                int64_t pick[4]; int k = 0;
                for (int64_t t = s[b]; t < s[b + 1]; t++) {
                    int64_t i = r * n + t;
                    if (!(fabsf(W[i]) > NEGLIGIBLE)) continue;
                    pick[k++] = i;
                    if (k == 4) {
                        float w[4] = {W[pick[0]], W[pick[1]], W[pick[2]], W[pick[3]]};
                        axpy4(w, X + rows[pick[0]] * C, X + rows[pick[1]] * C, X + rows[pick[2]] * C,
                              X + rows[pick[3]] * C, y, C);
                        k = 0;
                    }
                }
                for (int j = 0; j < k; j++) axpy(W[pick[j]], X + rows[pick[j]] * C, y, C);
            }
    }
}

/* out[rows[r, t]] += W[r, t] A[r] (out zeroed by the caller); threads split the blocks, so no two
   write the same row of out */
void spmm_t(const float* W, const float* A, const int64_t* rows, const int64_t* seg,
            int64_t R, int64_t n, int64_t C, int64_t nb, float* out, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t b = 0; b < nb; b++)
        for (int64_t r = 0; r < R; r++) {
            const int64_t* s = seg + r * (nb + 1);
            for (int64_t t = s[b]; t < s[b + 1]; t++) {
                int64_t i = r * n + t;
                if (fabsf(W[i]) > NEGLIGIBLE) axpy(W[i], A + r * C, out + rows[i] * C, C);
            }
        }
}

/* Sorted draws in one pass per row (sampling._weighted_draws does the same with PyTorch): the row's
   weights W (R, N) (a distribution up to its normalisation) summed into a float64 CDF; for each of
   k sets, n sorted uniforms from the n + 1 standard exponentials U (R, k, n + 1) (normalised partial
   sums), scaled to the CDF's total, each mapped to its token by a galloping search from the
   previous one. idx (R, k, n); valid (R, k, n) false on repeats. work: threads x (N + n + 1). */
void weighted_draws(const float* W, const double* U, int64_t R, int64_t N, int64_t k, int64_t n,
                    int64_t* idx, uint8_t* valid, double* work, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        double* c = work + (int64_t)omp_get_thread_num() * (N + n + 1);
        double* sums = c + N;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            const float* w = W + r * N;
            double acc = 0.0;
            for (int64_t j = 0; j < N; j++) { acc += (double)w[j]; c[j] = acc; }
            if (!(acc > 0.0)) {  /* no candidate: draw uniformly */
                for (int64_t j = 0; j < N; j++) c[j] = (double)(j + 1);
                acc = (double)N;
            }
            double total = acc, top = nextafter(total, 0.0);
            for (int64_t set = 0; set < k; set++) {
                const double* u = U + (r * k + set) * (n + 1);
                double run = 0.0;
                for (int64_t i = 0; i <= n; i++) { run += u[i]; sums[i] = run; }
                double recip = 1.0 / run;
                int64_t* out = idx + (r * k + set) * n;
                uint8_t* ok = valid + (r * k + set) * n;
                int64_t prev = -1;
                for (int64_t i = 0; i < n; i++) {
                    double x = sums[i] * recip * total;
                    if (x > top) x = top;
                    /* invariant: lo == -1 or c[lo] <= x; find hi with hi == N or c[hi] > x */
                    int64_t lo = prev < 0 ? -1 : prev - 1, hi = lo + 1, step = 1;
                    while (hi < N && c[hi] <= x) { lo = hi; hi += step; step *= 2; }
                    if (hi > N) hi = N;
                    while (hi - lo > 1) {
                        int64_t mid = lo + (hi - lo) / 2;
                        if (c[mid] <= x) lo = mid; else hi = mid;
                    }
                    out[i] = hi;
                    ok[i] = hi != prev;
                    prev = hi;
                }
            }
        }
    }
}
"""

_lib_cache: list = []  # [CDLL or None] once tried


def _build() -> ctypes.CDLL | None:
    if os.environ.get("BOLTZFORMER_CPU_KERNELS", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    # the binary is built for this CPU (-march=native): the key names the source, compiler and CPU
    cpu = platform.processor() + platform.machine()
    try:
        cpu += next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    key = hashlib.sha256((_SOURCE + cc + cpu + "-mprefer-vector-width=512").encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "boltzformer" / "kernels"
    lib = cache / f"sampled_{key}.so"
    if not lib.is_file():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                src = Path(tmp) / "k.c"
                src.write_text(_SOURCE)
                out = Path(tmp) / "k.so"
                base = [cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(src), "-o", str(out)]
                try:
                    # full-width AVX-512 where the CPU has it (gcc and clang default to 256-bit vectors):
                    # the gathers run 1.3-1.9x faster with it on an Ice Lake Xeon
                    subprocess.run(base + ["-mprefer-vector-width=512"], check=True, capture_output=True, timeout=120)
                except subprocess.CalledProcessError:  # a compiler without the option
                    subprocess.run(base, check=True, capture_output=True, timeout=120)
                os.replace(out, lib)  # atomic: concurrent builders each put a whole file
        except (OSError, subprocess.SubprocessError):
            return None
    try:
        dll = ctypes.CDLL(str(lib))
    except OSError:
        return None
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    dll.segments.argtypes = [p, i64, i64, i64, i64, p, i32]
    dll.sddmm.argtypes = [p, p, p, p, p, i64, i64, i64, i64, p, i32]
    dll.spmm.argtypes = [p, p, p, p, i64, i64, i64, i64, p, i32]
    dll.spmm_t.argtypes = [p, p, p, p, i64, i64, i64, i64, p, i32]
    dll.weighted_draws.argtypes = [p, p, i64, i64, i64, i64, p, p, p, i32]
    return dll


def _lib() -> ctypes.CDLL | None:
    if not _lib_cache:
        _lib_cache.append(_build())
    return _lib_cache[0]


def available(*tensors: Tensor) -> bool:
    """Whether the kernels are built and apply to these tensors (CPU, no autograd through them)."""
    if os.environ.get("BOLTZFORMER_CPU_KERNELS", "1") == "0":
        return False
    return all(t.device.type == "cpu" for t in tensors) and _lib() is not None


def _threads(work: int) -> int:
    """torch's thread count, or 1 for calls too small to repay waking the other threads."""
    return torch.get_num_threads() if work >= 1 << 20 else 1


def _ptr(t: Tensor) -> int:
    assert t.is_contiguous(), "kernel inputs must be contiguous"
    return t.data_ptr()


def segments(rows: Tensor, num_rows: int, channels: int) -> Tensor:
    """(R, nb + 1) int64: where each row's sorted ``rows`` (R, n) enter each block of X (num_rows,
    channels), a block being ``BLOCK_BYTES`` of rows."""
    R, n = rows.shape
    bs = _block(channels)
    nb = -(-num_rows // bs)
    seg = torch.empty(R, nb + 1, dtype=torch.int64)
    _lib().segments(_ptr(rows), R, n, bs, nb, _ptr(seg), _threads(R * (n + nb)))
    return seg


def sddmm(A: Tensor, X: Tensor, rows: Tensor, valid: Tensor, seg: Tensor) -> Tensor:
    """(R, n): ``A[r] . X[rows[r, t]]`` where ``valid``, 0 elsewhere. A (R, C), X (M, C) float32."""
    R, n = rows.shape
    out = torch.empty(R, n, dtype=torch.float32)
    _lib().sddmm(_ptr(A), _ptr(X), _ptr(rows), _ptr(valid), _ptr(seg), R, n, A.shape[1], seg.shape[1] - 1,
                 _ptr(out), _threads(R * n * A.shape[1]))
    return out


def spmm(W: Tensor, X: Tensor, rows: Tensor, seg: Tensor) -> Tensor:
    """(R, C): ``sum_t W[r, t] X[rows[r, t]]``."""
    R, n = rows.shape
    out = torch.zeros(R, X.shape[1], dtype=torch.float32)
    _lib().spmm(_ptr(W), _ptr(X), _ptr(rows), _ptr(seg), R, n, X.shape[1], seg.shape[1] - 1, _ptr(out),
                _threads(R * n * X.shape[1]))
    return out


def spmm_t(W: Tensor, A: Tensor, rows: Tensor, seg: Tensor, num_rows: int) -> Tensor:
    """(M, C): ``out[rows[r, t]] += W[r, t] A[r]``, the transpose of :func:`spmm`."""
    R, n = rows.shape
    out = torch.zeros(num_rows, A.shape[1], dtype=torch.float32)
    _lib().spmm_t(_ptr(W), _ptr(A), _ptr(rows), _ptr(seg), R, n, A.shape[1], seg.shape[1] - 1, _ptr(out),
                  _threads(R * n * A.shape[1]))
    return out


def weighted_draws(weights: Tensor, exponentials: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted draws for weights (R, N) float32 (a distribution up to normalisation) and standard
    exponentials (R, k, n + 1) float64: ``(indices, valid)``, int64 and bool (R, k, n). What
    ``sampling._weighted_draws`` computes with PyTorch, in one pass per row, without its (R, N)
    and (R, k, n) float64 intermediates."""
    R, N = weights.shape
    k, n = exponentials.shape[1], exponentials.shape[2] - 1
    threads = _threads(R * (N + k * n) * 4)
    idx = torch.empty(R, k, n, dtype=torch.int64)
    valid = torch.empty(R, k, n, dtype=torch.bool)
    work = torch.empty(max(threads, torch.get_num_threads()), N + n + 1, dtype=torch.float64)
    _lib().weighted_draws(_ptr(weights), _ptr(exponentials), R, N, k, n, _ptr(idx), _ptr(valid), _ptr(work), threads)
    return idx, valid
