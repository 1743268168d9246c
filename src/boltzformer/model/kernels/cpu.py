"""Cache-blocked CPU kernels for sampled attention and sorted draws, compiled on first use.

Sampled attention touches, for every (query, head) row r, the rows ``rows[r, 0..n)`` of a feature
matrix X (M, C): scores ``A[r] . X[rows[r, t]]`` (a sampled dense-dense product, "SDDMM"), their
softmax over the row, weighted sums ``sum_t W[r, t] X[rows[r, t]]`` ("SpMM") and, in backward, the
transposed scatter. PyTorch has these as ``torch.sparse.sampled_addmm`` and ``F.embedding_bag``,
which walk the rows one by one and read X from memory at random; with 808 rows x 1,638 draws over
16,384 tokens that is memory-bound.

The kernels here first make a :class:`Plan`: every row's valid draws regrouped block by block,
a block being ``BLOCK_BYTES`` of X's rows (small enough to stay in L2). Every kernel then walks the
plan in order, so X is read one block at a time and the draws' indices, scores and weights
sequentially. The scores, the softmax and the weighted sums all stay in plan order; nothing goes
back to the row-major layout. One plan serves the forward and backward passes of one attention.

They are plain C (OpenMP, AVX-512 intrinsics where the CPU has them), built with the system C
compiler into the user cache directory the first time they are needed and loaded with ctypes; no
build step at install time. Where no compiler is found, or with ``BOLTZFORMER_CPU_KERNELS=0``,
:func:`available` is False and callers use the PyTorch operations above, which give the same
results (tested).
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
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "BLOCK_BYTES", "Plan", "available", "plan", "plan_sddmm", "plan_softmax", "plan_softmax_backward",
    "plan_spmm", "plan_spmm_t", "weighted_draws", "exponentials",
]

#: bytes of X per block: a block and the rows of A or of the output it meets stay in a 1.25 MB L2
#: (512 KB-1 MB measured fastest at paper size; smaller blocks mean more, shorter runs per row)
BLOCK_BYTES = 512 * 1024


def _block(C: int) -> int:
    return max(1, BLOCK_BYTES // (4 * C))

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* weights this small add nothing to a float32 sum of weights <= 1, and multiplying by a denormal is
   ~100x slower: skip them (softmax weights underflow to denormals at cold temperatures) */
#define NEGLIGIBLE 1e-30f
/* draws handled together: a row's draws in a block are multiplied this many at a time */
#define GROUP 16

/* ---- plain C forms of the group operations (any C; any CPU) ---- */

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

#ifdef __AVX512F__
/* ---- AVX-512 forms, for C a multiple of 16. Written with intrinsics because from the plain loops
   the compiler makes a scalar horizontal sum per draw (it may not reorder float additions), which
   cost more than the multiply-adds themselves. ---- */

/* lane j: the sum of the 16 lanes of x[(j % 4) * 4 + j / 4] (callers store draw j's partial sums
   there). Four rounds of shuffles and adds turn 16 vectors into one: 30 shuffles and 15 adds for
   16 dot products, against 16 x 15 dependent scalar adds. */
static inline __m512 reduce16(const __m512* x) {
    __m512 y[8], z[4], w[2];
    for (int i = 0; i < 8; i++)
        y[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)
        z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        w[i] = _mm512_add_ps(_mm512_shuffle_ps(z[2 * i], z[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(z[2 * i], z[2 * i + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
}

/* lane-wise partial sums of a . x0..x3 over C: one load of a serves four rows, and two accumulators
   per row keep eight multiply-add chains going */
static inline void dot4_lanes(const float* a, const float* const* x, int64_t C, __m512* out) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, t0 = s0, t1 = s0, t2 = s0, t3 = s0;
    int64_t c = 0;
    for (; c + 32 <= C; c += 32) {
        __m512 u = _mm512_loadu_ps(a + c), v = _mm512_loadu_ps(a + c + 16);
        s0 = _mm512_fmadd_ps(u, _mm512_loadu_ps(x[0] + c), s0); t0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x[0] + c + 16), t0);
        s1 = _mm512_fmadd_ps(u, _mm512_loadu_ps(x[1] + c), s1); t1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x[1] + c + 16), t1);
        s2 = _mm512_fmadd_ps(u, _mm512_loadu_ps(x[2] + c), s2); t2 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x[2] + c + 16), t2);
        s3 = _mm512_fmadd_ps(u, _mm512_loadu_ps(x[3] + c), s3); t3 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x[3] + c + 16), t3);
    }
    if (c < C) {
        __m512 u = _mm512_loadu_ps(a + c);
        s0 = _mm512_fmadd_ps(u, _mm512_loadu_ps(x[0] + c), s0); s1 = _mm512_fmadd_ps(u, _mm512_loadu_ps(x[1] + c), s1);
        s2 = _mm512_fmadd_ps(u, _mm512_loadu_ps(x[2] + c), s2); s3 = _mm512_fmadd_ps(u, _mm512_loadu_ps(x[3] + c), s3);
    }
    out[0] = _mm512_add_ps(s0, t0); out[1] = _mm512_add_ps(s1, t1);
    out[2] = _mm512_add_ps(s2, t2); out[3] = _mm512_add_ps(s3, t3);
}

/* y[c0, c0 + 64) += sum_j w[j] x[j][c0, c0 + 64); two accumulator sets so that consecutive draws
   do not wait on each other's multiply-add */
static inline void axpy_tile64(const float* w, const float** x, int m, int64_t c0, float* y) {
    __m512 a0 = _mm512_loadu_ps(y + c0), a1 = _mm512_loadu_ps(y + c0 + 16);
    __m512 a2 = _mm512_loadu_ps(y + c0 + 32), a3 = _mm512_loadu_ps(y + c0 + 48);
    __m512 b0 = _mm512_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
    int j = 0;
    for (; j + 2 <= m; j += 2) {
        __m512 u = _mm512_set1_ps(w[j]), v = _mm512_set1_ps(w[j + 1]);
        const float *p = x[j] + c0, *q = x[j + 1] + c0;
        a0 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p), a0); b0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(q), b0);
        a1 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 16), a1); b1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(q + 16), b1);
        a2 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 32), a2); b2 = _mm512_fmadd_ps(v, _mm512_loadu_ps(q + 32), b2);
        a3 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 48), a3); b3 = _mm512_fmadd_ps(v, _mm512_loadu_ps(q + 48), b3);
    }
    if (j < m) {
        __m512 u = _mm512_set1_ps(w[j]);
        const float* p = x[j] + c0;
        a0 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p), a0); a1 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 16), a1);
        a2 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 32), a2); a3 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 48), a3);
    }
    _mm512_storeu_ps(y + c0, _mm512_add_ps(a0, b0)); _mm512_storeu_ps(y + c0 + 16, _mm512_add_ps(a1, b1));
    _mm512_storeu_ps(y + c0 + 32, _mm512_add_ps(a2, b2)); _mm512_storeu_ps(y + c0 + 48, _mm512_add_ps(a3, b3));
}

static inline void axpy_tile16(const float* w, const float** x, int m, int64_t c0, float* y) {
    __m512 a = _mm512_loadu_ps(y + c0), b = _mm512_setzero_ps();
    int j = 0;
    for (; j + 2 <= m; j += 2) {
        a = _mm512_fmadd_ps(_mm512_set1_ps(w[j]), _mm512_loadu_ps(x[j] + c0), a);
        b = _mm512_fmadd_ps(_mm512_set1_ps(w[j + 1]), _mm512_loadu_ps(x[j + 1] + c0), b);
    }
    if (j < m) a = _mm512_fmadd_ps(_mm512_set1_ps(w[j]), _mm512_loadu_ps(x[j] + c0), a);
    _mm512_storeu_ps(y + c0, _mm512_add_ps(a, b));
}


/* exp(x) for x <= 0 (softmax arguments), to about 1 ulp: x = n ln2 + r, |r| <= ln2 / 2, Cephes'
   polynomial for exp(r), then a scaling by 2^n. Below -87.3 (where exp leaves the normal float
   range) it returns 0, not a denormal: arithmetic on denormals is ~100x slower, and a softmax
   weight under 1e-38 adds nothing to a sum of weights that is 1. */
static inline __m512 exp512(__m512 x) {
    __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-100.f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_maskz_scalef_ps(normal, p, n);
}
#endif

/* d[j] = a . x[j] for the m (<= GROUP) rows x[j] */
static inline void dot_group(const float* a, const float** x, int m, int64_t C, float* d) {
#ifdef __AVX512F__
    if (C % 16 == 0) {
        __m512 part[GROUP], four[4];
        const float* xs[GROUP];
        for (int j = 0; j < GROUP; j++) xs[j] = x[j < m ? j : m - 1];
        for (int j = 0; j < GROUP; j += 4) {  /* draw j + i goes to part[i * 4 + j / 4] (see reduce16) */
            if (j >= m) { for (int i = 0; i < 4; i++) part[i * 4 + (j >> 2)] = _mm512_setzero_ps(); continue; }
            dot4_lanes(a, xs + j, C, four);
            for (int i = 0; i < 4; i++) part[i * 4 + (j >> 2)] = four[i];
        }
        __m512 s = reduce16(part);
        _mm512_mask_storeu_ps(d, (__mmask16)((1u << m) - 1), s);
        return;
    }
#endif
    int j = 0;
    for (; j + 4 <= m; j += 4) dot4(a, x[j], x[j + 1], x[j + 2], x[j + 3], C, d + j);
    for (; j < m; j++) d[j] = dot1(a, x[j], C);
}

/* y += sum_j w[j] x[j] over the m rows x[j] */
static inline void axpy_group(const float* w, const float** x, int m, int64_t C, float* y) {
#ifdef __AVX512F__
    if (C % 16 == 0) {
        int64_t c0 = 0;
        for (; c0 + 64 <= C; c0 += 64) axpy_tile64(w, x, m, c0, y);
        for (; c0 < C; c0 += 16) axpy_tile16(w, x, m, c0, y);
        return;
    }
#endif
    int j = 0;
    for (; j + 4 <= m; j += 4) axpy4(w + j, x[j], x[j + 1], x[j + 2], x[j + 3], y, C);
    for (; j < m; j++) axpy(w[j], x[j], y, C);
}

/* ---- plans ----
   X (M, C) is read in blocks of bs rows, small enough to stay in L2. A plan lists every row's valid
   draws block by block: for block b and row r, the draws of row r that fall in block b are
   k in [off[b R + r], off[b R + r + 1]), and idx[k] is the row of X each reads. Draws that are not
   valid (repeats) are left out of the plan: no kernel spends a read on them. Every kernel below walks
   the plan in order: the draws' indices, scores and weights are read and written sequentially, and X
   one block at a time. (Walking the row-major draws block by block instead starts a new stretch of
   memory for every (row, block), a cache miss each: that cost more than the arithmetic.) Threads
   split the blocks, so each reads only its share of X from memory, or the rows when there are
   fewer blocks than threads.

   The draws come as token indices d (R, n), ascending in each row; row r reads the row
   (d + (r / per_batch) * stride) * heads + r % heads of X: with heads = 1 and stride = 0 the draws
   are X's rows themselves; with the heads interleaved in X's rows (projected keys, (tokens x heads)
   rows of one head's channels) and a batch of images, the decoder's draws map to them without
   another (R, n) array. */

typedef struct { int64_t b0, b1, r0, r1; } Share;

static inline Share share(int64_t nb, int64_t R, int tid, int nt) {
    Share s;
    if (nb >= nt) { s.b0 = nb * tid / nt; s.b1 = nb * (tid + 1) / nt; s.r0 = 0; s.r1 = R; }
    else { s.b0 = 0; s.b1 = nb; s.r0 = R * tid / nt; s.r1 = R * (tid + 1) / nt; }
    return s;
}

/* the number of draws row[t..n) below lim (the row ascending): eight compares at a time */
static inline int64_t below(const int64_t* row, int64_t t, int64_t n, int64_t lim) {
#ifdef __AVX512F__
    const __m512i l = _mm512_set1_epi64(lim);
    for (; t + 8 <= n; t += 8) {
        __mmask8 m = _mm512_cmplt_epi64_mask(_mm512_loadu_si512(row + t), l);
        if (m != 0xFF) return t + __builtin_popcount(m);
    }
#endif
    while (t < n && row[t] < lim) t++;
    return t;
}

/* For each block b and row r: first[b R + r], where the row's draws in block b start, and
   cnt[b R + r], how many of them are valid. A draw d is in blocks 0..b exactly when
   (d + base) h' + h < (b + 1) bs, that is when d < ceil(((b + 1) bs - h) / h') - base: the row is
   scanned once, against one limit per block. */
void plan_runs(const int64_t* d, const uint8_t* valid, int64_t R, int64_t n, int64_t heads, int64_t per_batch,
               int64_t stride, int64_t bs, int64_t nb, int64_t* first, int64_t* cnt, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < R; r++) {
        const int64_t* row = d + r * n;
        const uint8_t* ok = valid + r * n;
        int64_t base = (r / per_batch) * stride, h = r % heads, t = 0;
        for (int64_t b = 0; b < nb; b++) {
            int64_t t1 = t;
            if (t < n) {
                int64_t end = (b + 1) * bs;
                t1 = end - h <= 0 ? t : below(row, t, n, (end - h + heads - 1) / heads - base);
            }
            int64_t c = 0;
            for (int64_t j = t; j < t1; j++) c += ok[j] != 0;
            first[b * R + r] = t;
            cnt[b * R + r] = c;
            t = t1;
        }
    }
}

/* idx in plan order (the valid draws only), from the offsets off (the counts' exclusive prefix
   sums) and first. The rows go in tiles of TILE: a tile's draws stay in cache while its runs go
   out block by block, TILE runs in a row of idx each (walking the blocks outermost instead read
   from R places at once, a miss at the start of each run; walking each whole row wrote to nb
   places at once). Threads split the rows. */
#define TILE 16
void plan_fill(const int64_t* d, const uint8_t* valid, int64_t R, int64_t n, int64_t heads, int64_t per_batch,
               int64_t stride, int64_t nb, const int64_t* off, const int64_t* first, int32_t* idx, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t lo = R * tid / nt, hi = R * (tid + 1) / nt;
        for (int64_t r0 = lo; r0 < hi; r0 += TILE) {
            int64_t r1 = r0 + TILE < hi ? r0 + TILE : hi;
            for (int64_t b = 0; b < nb; b++)
                for (int64_t r = r0; r < r1; r++) {
                    int64_t k0 = off[b * R + r], len = off[b * R + r + 1] - k0;
                    if (!len) continue;
                    int64_t t = r * n + first[b * R + r];
                    int32_t base = (int32_t)((r / per_batch) * stride), hs = (int32_t)heads, h = (int32_t)(r % heads);
                    const int64_t* src = d + t;
                    const uint8_t* ok = valid + t;
                    int32_t* out = idx + k0;
                    int64_t m = 0, j = 0;
#if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512BW__)
                    const __m256i vb = _mm256_set1_epi32(base), vh = _mm256_set1_epi32(h), vs = _mm256_set1_epi32(hs);
                    for (; m + 8 <= len; j += 8) {  /* eight draws at a time, the valid ones packed */
                        __m256i x = _mm512_cvtepi64_epi32(_mm512_loadu_si512(src + j));
                        x = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_add_epi32(x, vb), vs), vh);
                        __mmask8 keep = (__mmask8)_mm_test_epi8_mask(_mm_loadl_epi64((const __m128i*)(ok + j)),
                                                                     _mm_set1_epi8((char)0xFF));
                        _mm256_mask_compressstoreu_epi32(out + m, keep, x);
                        m += __builtin_popcount(keep);
                    }
#endif
                    for (; m < len; j++)
                        if (ok[j]) out[m++] = ((int32_t)src[j] + base) * hs + h;
                }
        }
    }
}

/* S[k] = A[r] . X[idx[k]]. With mx (threads x R, or NULL), each thread also records the largest
   score of every row among its draws (-inf for rows it has none of): the softmax's first pass, while
   the scores are in registers. */
void plan_sddmm(const float* A, const float* X, const int64_t* off, const int32_t* idx, int64_t R, int64_t nb,
                int64_t C, float* S, float* mx, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num();
        Share sh = share(nb, R, tid, omp_get_num_threads());
        float* top = mx ? mx + (size_t)tid * R : NULL;
        if (top) for (int64_t r = 0; r < R; r++) top[r] = -INFINITY;
        const float* x[GROUP];
        for (int64_t b = sh.b0; b < sh.b1; b++)
            for (int64_t r = sh.r0; r < sh.r1; r++) {
                const float* a = A + r * C;
                int64_t k0 = off[b * R + r], k1 = off[b * R + r + 1];
#if defined(__AVX512F__)
                if (C == 64) {  /* 64-channel heads, the common case: the row of A stays in registers */
                    const __m512 a0 = _mm512_loadu_ps(a), a1 = _mm512_loadu_ps(a + 16);
                    const __m512 a2 = _mm512_loadu_ps(a + 32), a3 = _mm512_loadu_ps(a + 48);
                    __m512 best = _mm512_set1_ps(-INFINITY);
                    for (int64_t k = k0; k < k1; k += GROUP) {
                        int m = k1 - k < GROUP ? (int)(k1 - k) : GROUP;
                        __m512 part[GROUP];
                        #pragma GCC unroll 16
                        for (int j = 0; j < GROUP; j++) {
                            const float* p = X + (int64_t)idx[k + (j < m ? j : m - 1)] * 64;
                            __m512 s = _mm512_mul_ps(a0, _mm512_loadu_ps(p));
                            s = _mm512_fmadd_ps(a1, _mm512_loadu_ps(p + 16), s);
                            s = _mm512_fmadd_ps(a2, _mm512_loadu_ps(p + 32), s);
                            part[(j & 3) * 4 + (j >> 2)] = _mm512_fmadd_ps(a3, _mm512_loadu_ps(p + 48), s);
                        }
                        __m512 sc = reduce16(part);  /* lanes past m repeat draw m - 1: harmless in the max */
                        best = _mm512_max_ps(best, sc);
                        _mm512_mask_storeu_ps(S + k, (__mmask16)((1u << m) - 1), sc);
                    }
                    if (top && k1 > k0) top[r] = fmaxf(top[r], _mm512_reduce_max_ps(best));
                    continue;
                }
#endif
                for (int64_t k = k0; k < k1; k += GROUP) {
                    int m = k1 - k < GROUP ? (int)(k1 - k) : GROUP;
                    for (int j = 0; j < m; j++) x[j] = X + (int64_t)idx[k + j] * C;
                    dot_group(a, x, m, C, S + k);
                }
                if (top) for (int64_t k = k0; k < k1; k++) top[r] = fmaxf(top[r], S[k]);
            }
    }
}

/* y += sum_k w[k] X[idx[k]] for m draws, negligible weights counted as 0 */
static inline void spmm_run(const float* w, const int32_t* idx, int64_t m, const float* X, int64_t C, float* y) {
#if defined(__AVX512F__)
    if (C == 64) {  /* the output row stays in registers; two accumulator sets */
        __m512 a0 = _mm512_loadu_ps(y), a1 = _mm512_loadu_ps(y + 16);
        __m512 a2 = _mm512_loadu_ps(y + 32), a3 = _mm512_loadu_ps(y + 48);
        __m512 b0 = _mm512_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
        int64_t k = 0;
        for (; k + 2 <= m; k += 2) {
            float wu = w[k], wv = w[k + 1];
            __m512 u = _mm512_set1_ps(fabsf(wu) > NEGLIGIBLE ? wu : 0.f);
            __m512 v = _mm512_set1_ps(fabsf(wv) > NEGLIGIBLE ? wv : 0.f);
            const float *p = X + (int64_t)idx[k] * 64, *q = X + (int64_t)idx[k + 1] * 64;
            a0 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p), a0); b0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(q), b0);
            a1 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 16), a1); b1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(q + 16), b1);
            a2 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 32), a2); b2 = _mm512_fmadd_ps(v, _mm512_loadu_ps(q + 32), b2);
            a3 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 48), a3); b3 = _mm512_fmadd_ps(v, _mm512_loadu_ps(q + 48), b3);
        }
        if (k < m) {
            __m512 u = _mm512_set1_ps(fabsf(w[k]) > NEGLIGIBLE ? w[k] : 0.f);
            const float* p = X + (int64_t)idx[k] * 64;
            a0 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p), a0); a1 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 16), a1);
            a2 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 32), a2); a3 = _mm512_fmadd_ps(u, _mm512_loadu_ps(p + 48), a3);
        }
        _mm512_storeu_ps(y, _mm512_add_ps(a0, b0)); _mm512_storeu_ps(y + 16, _mm512_add_ps(a1, b1));
        _mm512_storeu_ps(y + 32, _mm512_add_ps(a2, b2)); _mm512_storeu_ps(y + 48, _mm512_add_ps(a3, b3));
        return;
    }
#endif
    const float* x[GROUP]; float wg[GROUP];
    int g = 0;
    for (int64_t k = 0; k < m; k++) {
        if (!(fabsf(w[k]) > NEGLIGIBLE)) continue;
        x[g] = X + (int64_t)idx[k] * C; wg[g++] = w[k];
        if (g == GROUP) { axpy_group(wg, x, g, C, y); g = 0; }
    }
    if (g) axpy_group(wg, x, g, C, y);
}

/* out[r] = sum_k W[k] X[idx[k]] over row r's draws (out zeroed by the caller). With mx (R, the
   rows' largest scores; else NULL), W holds the scores and the weights are their softmax, made on
   the fly: exp(W[k] - mx[r]) in chunks, summed per row, the row divided by its sum at the end (the
   softmax and the weighted sum in one pass over the scores; sums: threads x R, zeroed by the caller).
   When threads split the blocks, each adds into its own copy of out (and of the sums), combined at
   the end. */
#define CHUNK 64
void plan_spmm(const float* W, const float* X, const int64_t* off, const int32_t* idx, int64_t R, int64_t nb,
               int64_t C, const float* mx, float* sums, float* out, int threads) {
    float* copies = NULL;
    int split = nb >= threads && threads > 1;
    if (split && !(copies = (float*)calloc((size_t)(threads - 1) * R * C, sizeof(float)))) threads = 1, split = 0;
    #pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        Share sh = share(nb, R, tid, nt);
        float* dst = split && tid ? copies + (size_t)(tid - 1) * R * C : out;
        float* mine = sums ? sums + (size_t)tid * R : NULL;
        float w[CHUNK];
        for (int64_t b = sh.b0; b < sh.b1; b++)
            for (int64_t r = sh.r0; r < sh.r1; r++) {
                int64_t k0 = off[b * R + r], k1 = off[b * R + r + 1];
                if (!mx) { if (k1 > k0) spmm_run(W + k0, idx + k0, k1 - k0, X, C, dst + r * C); continue; }
                float top = mx[r], sum = 0.f;
                for (int64_t k = k0; k < k1; k += CHUNK) {
                    int64_t m = k1 - k < CHUNK ? k1 - k : CHUNK, j = 0;
#ifdef __AVX512F__
                    __m512 vs = _mm512_setzero_ps(), vt = _mm512_set1_ps(top);
                    for (; j < m; j += 16) {
                        __mmask16 t = m - j < 16 ? (__mmask16)((1u << (m - j)) - 1) : (__mmask16)0xFFFF;
                        __m512 e = _mm512_maskz_mov_ps(t, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(t, W + k + j), vt)));
                        _mm512_storeu_ps(w + j, e);
                        vs = _mm512_add_ps(vs, e);
                    }
                    sum += _mm512_reduce_add_ps(vs);
#else
                    for (; j < m; j++) { float d = W[k + j] - top; w[j] = d >= -87.3f ? expf(d) : 0.f; sum += w[j]; }
#endif
                    spmm_run(w, idx + k, m, X, C, dst + r * C);
                }
                mine[r] += sum;
            }
        if (split || mx) {
            #pragma omp barrier
            #pragma omp for schedule(static)
            for (int64_t r = 0; r < R; r++) {
                float total = 0.f;
                if (mx) for (int c = 0; c < nt; c++) total += sums[(size_t)c * R + r];
                float inv = !mx ? 1.f : total > 0.f ? 1.f / total : 0.f;
                for (int64_t e = r * C; e < (r + 1) * C; e++) {
                    float v = out[e];
                    if (split) for (int c = 0; c < nt - 1; c++) v += copies[(size_t)c * R * C + e];
                    out[e] = v * inv;
                }
            }
        }
    }
    free(copies);
}

/* out[idx[k]] = sum of W[k] A[r] (+ W2[k] A2[r] when W2 is not NULL: two scatters into one output,
   whose rows are then read and written once, not twice) over the draws k of each row of out (M, C);
   threads split the blocks, so no two write the same row of out, and each zeroes its block just
   before adding to it (a separate zero fill of out was a pass over memory of its own) */
void plan_spmm_t(const float* W, const float* A, const float* W2, const float* A2, const int64_t* off,
                 const int32_t* idx, int64_t R, int64_t nb, int64_t C, int64_t bs, int64_t M, float* out, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        for (int64_t b = nb * tid / nt; b < nb * (tid + 1) / nt; b++) {
            int64_t lo = b * bs, hi = lo + bs < M ? lo + bs : M;
            memset(out + lo * C, 0, sizeof(float) * (size_t)(hi - lo) * C);
            for (int64_t r = 0; r < R; r++) {
                const float* a = A + r * C;
                int64_t k0 = off[b * R + r], k1 = off[b * R + r + 1];
                if (!W2) {
                    for (int64_t k = k0; k < k1; k++)
                        if (fabsf(W[k]) > NEGLIGIBLE) axpy(W[k], a, out + (int64_t)idx[k] * C, C);
                    continue;
                }
                const float* a2 = A2 + r * C;
                for (int64_t k = k0; k < k1; k++) {
                    float u = fabsf(W[k]) > NEGLIGIBLE ? W[k] : 0.f, v = fabsf(W2[k]) > NEGLIGIBLE ? W2[k] : 0.f;
                    if (u == 0.f && v == 0.f) continue;
                    float* y = out + (int64_t)idx[k] * C;
                    for (int64_t c = 0; c < C; c++) y[c] += u * a[c] + v * a2[c];
                }
            }
        }
    }
}

/* Softmax over each row's draws, in plan order: P[k] = exp(S[k] - max_r) / sum_r. With backward
   (dP given), dS[k] = P[k] (dP[k] - sum_r P dP). Each thread reduces over its blocks into its own
   per-row copy (in part); the copies are combined between passes. */
static void plan_row_reduce(float* part, int64_t R, int nt, int use_max, float* out) {
    #pragma omp for schedule(static)
    for (int64_t r = 0; r < R; r++) {
        float v = part[r];
        for (int c = 1; c < nt; c++) v = use_max ? fmaxf(v, part[(int64_t)c * R + r]) : v + part[(int64_t)c * R + r];
        out[r] = v;
    }
}

void plan_softmax(const float* S, const int64_t* off, int64_t R, int64_t nb, const float* given, float* P, float* part,
                  int threads) {
    float* row = part + (size_t)R * threads;  /* part: (threads + 1) x R, the caller's */
    #pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        Share sh = share(nb, R, tid, nt);
        float* mine = part + (size_t)tid * R;
        if (given) {  /* the rows' maxima are known (from plan_sddmm) */
            #pragma omp for schedule(static)
            for (int64_t r = 0; r < R; r++) row[r] = given[r];
        } else {
            for (int64_t r = 0; r < R; r++) mine[r] = -INFINITY;
            for (int64_t b = sh.b0; b < sh.b1; b++)
                for (int64_t r = sh.r0; r < sh.r1; r++) {
                    int64_t k = off[b * R + r], k1 = off[b * R + r + 1];
                    float mx = mine[r];
#ifdef __AVX512F__
                    __m512 vm = _mm512_set1_ps(-INFINITY);
                    for (; k < k1; k += 16) {
                        __mmask16 t = k1 - k < 16 ? (__mmask16)((1u << (k1 - k)) - 1) : (__mmask16)0xFFFF;
                        vm = _mm512_mask_max_ps(vm, t, vm, _mm512_maskz_loadu_ps(t, S + k));
                    }
                    mx = fmaxf(mx, _mm512_reduce_max_ps(vm));
#else
                    for (; k < k1; k++) mx = fmaxf(mx, S[k]);
#endif
                    mine[r] = mx;
                }
            #pragma omp barrier
            plan_row_reduce(part, R, nt, 1, row);  /* row = max (implicit barrier) */
        }
        for (int64_t r = 0; r < R; r++) mine[r] = 0.f;
        for (int64_t b = sh.b0; b < sh.b1; b++)
            for (int64_t r = sh.r0; r < sh.r1; r++) {
                int64_t k = off[b * R + r], k1 = off[b * R + r + 1];
                float mx = row[r], sum = 0.f;
#ifdef __AVX512F__
                __m512 vs = _mm512_setzero_ps(), vm = _mm512_set1_ps(mx);
                for (; k < k1; k += 16) {
                    __mmask16 t = k1 - k < 16 ? (__mmask16)((1u << (k1 - k)) - 1) : (__mmask16)0xFFFF;
                    __m512 e = _mm512_maskz_mov_ps(t, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(t, S + k), vm)));
                    _mm512_mask_storeu_ps(P + k, t, e);
                    vs = _mm512_add_ps(vs, e);
                }
                sum = _mm512_reduce_add_ps(vs);
#else
                for (; k < k1; k++) { float e = S[k] - mx >= -87.3f ? expf(S[k] - mx) : 0.f; P[k] = e; sum += e; }
#endif
                mine[r] += sum;
            }
        #pragma omp barrier
        plan_row_reduce(part, R, nt, 0, row);  /* row = sum */
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) row[r] = row[r] > 0.f ? 1.f / row[r] : 0.f;
        for (int64_t b = sh.b0; b < sh.b1; b++)
            for (int64_t r = sh.r0; r < sh.r1; r++) {
                float inv = row[r];
                int64_t k = off[b * R + r], k1 = off[b * R + r + 1];
#ifdef __AVX512F__
                __m512 vi = _mm512_set1_ps(inv);
                for (; k + 16 <= k1; k += 16) _mm512_storeu_ps(P + k, _mm512_mul_ps(_mm512_loadu_ps(P + k), vi));
#endif
                for (; k < k1; k++) P[k] *= inv;
            }
    }
}

void plan_softmax_backward(const float* P, const float* dP, const int64_t* off, int64_t R, int64_t nb, float* dS,
                           float* part, int threads) {
    float* row = part + (size_t)R * threads;  /* part: (threads + 1) x R, the caller's */
    #pragma omp parallel num_threads(threads)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        Share sh = share(nb, R, tid, nt);
        float* mine = part + (size_t)tid * R;
        for (int64_t r = 0; r < R; r++) mine[r] = 0.f;
        for (int64_t b = sh.b0; b < sh.b1; b++)
            for (int64_t r = sh.r0; r < sh.r1; r++) {
                float s = 0.f;
                int64_t k = off[b * R + r], k1 = off[b * R + r + 1];
#ifdef __AVX512F__
                __m512 vs = _mm512_setzero_ps();
                for (; k + 16 <= k1; k += 16) vs = _mm512_fmadd_ps(_mm512_loadu_ps(P + k), _mm512_loadu_ps(dP + k), vs);
                s = _mm512_reduce_add_ps(vs);
#endif
                for (; k < k1; k++) s += P[k] * dP[k];
                mine[r] += s;
            }
        #pragma omp barrier
        plan_row_reduce(part, R, nt, 0, row);
        for (int64_t b = sh.b0; b < sh.b1; b++)
            for (int64_t r = sh.r0; r < sh.r1; r++) {
                float s = row[r];
                int64_t k = off[b * R + r], k1 = off[b * R + r + 1];
#ifdef __AVX512F__
                __m512 vs = _mm512_set1_ps(s);
                for (; k + 16 <= k1; k += 16)
                    _mm512_storeu_ps(dS + k, _mm512_mul_ps(_mm512_loadu_ps(P + k), _mm512_sub_ps(_mm512_loadu_ps(dP + k), vs)));
#endif
                for (; k < k1; k++) dS[k] = P[k] * (dP[k] - s);
            }
    }
}

/* Standard exponentials from a counter-based generator, for the draws below.

   torch.rand on CPU is one sequential Mersenne Twister stream (about 7 ns per float64, a third of
   the sampling's time at 1024 x 1024), and -log(1 - U) then takes two more passes over a float64
   array of (rows x sets x (n + 1)). Here number i of a call is made from i alone: SplitMix64's
   output for state seed + (i + 1) * gamma (Steele, Lea & Flood 2014), whose top 24 bits give
   v = (bits + 1) / 2^24 in (0, 1], then E = -log v (float32, Cephes' polynomial for log, to about
   1 ulp). The same seed gives the same numbers whatever the number of threads, and gcc vectorises
   the loop (AVX-512DQ multiplies 64-bit lanes). Contraction into fused multiply-adds is off in this
   function: each step is one IEEE float32 operation, so that PyTorch (boltzformer.model.kernels.counter_rng)
   and Triton make the very same numbers (with contraction, 0.12 % of the 2^24 inputs differed by
   1 ulp). */
#if defined(__clang__)
#define EXACT_FLOAT_BEGIN _Pragma("clang fp contract(off)")
#define EXACT_FLOAT_FUNCTION
#elif defined(__GNUC__)
#define EXACT_FLOAT_BEGIN
#define EXACT_FLOAT_FUNCTION __attribute__((optimize("fp-contract=off")))
#else
#define EXACT_FLOAT_BEGIN
#define EXACT_FLOAT_FUNCTION
#endif
#define GOLDEN 0x9E3779B97F4A7C15ULL
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

EXACT_FLOAT_FUNCTION void exponentials(uint64_t seed, uint64_t first, int64_t m, float* out) {
    EXACT_FLOAT_BEGIN
    for (int64_t i = 0; i < m; i++) {
        uint32_t bits = (uint32_t)(mix64(seed + (first + (uint64_t)i + 1) * GOLDEN) >> 40) + 1u;  /* 1 .. 2^24 */
        float v = (float)bits;  /* exact; the 2^-24 scale is added to the exponent below */
        uint32_t u; memcpy(&u, &v, 4);
        int e = (int)(u >> 23) - 127 - 24;
        u = (u & 0x007FFFFFu) | 0x3F800000u;  /* mantissa in [1, 2) */
        float x; memcpy(&x, &u, 4);
        int big = x > 1.41421356f;  /* log(x) near 0: x in [sqrt(1/2), sqrt(2)) */
        x = big ? 0.5f * x : x;
        float fe = (float)(e + big);
        x = x - 1.0f;
        float z = x * x;
        float y = 7.0376836292e-2f;
        y = y * x - 1.1514610310e-1f; y = y * x + 1.1676998740e-1f; y = y * x - 1.2420140846e-1f;
        y = y * x + 1.4249322787e-1f; y = y * x - 1.6668057665e-1f; y = y * x + 2.0000714765e-1f;
        y = y * x - 2.4999993993e-1f; y = y * x + 3.3333331174e-1f;
        y = y * x * z - 2.12194440e-4f * fe - 0.5f * z;
        out[i] = -((x + y) + 0.693359375f * fe);  /* -log v >= 0 */
    }
}

/* Sorted draws in one pass per row (sampling._weighted_draws does the same with PyTorch): the row's
   weights W (R, N) (a distribution up to its normalisation) summed into a float64 CDF; for each of
   k sets, n sorted uniforms from n + 1 standard exponentials (normalised partial sums), scaled to
   the CDF's total, each mapped to its token by a search from the previous one. The exponentials are
   U (R, k, n + 1) when given, else made from seed (see exponentials above; set s of row r uses
   numbers (r k + s)(n + 1) ..). idx (R, k, n); valid (R, k, n) false on repeats. work: threads x
   (N + n + 1) float64; fwork: threads x (n + 1) float32. */
void weighted_draws(const float* W, const double* U, uint64_t seed, int64_t R, int64_t N, int64_t k, int64_t n,
                    int64_t* idx, uint8_t* valid, double* work, float* fwork, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        double* c = work + (int64_t)omp_get_thread_num() * (N + n + 1);
        double* sums = c + N;
        float* e = fwork + (int64_t)omp_get_thread_num() * (n + 1);
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
                double run = 0.0;
                if (U) {
                    const double* u = U + (r * k + set) * (n + 1);
                    for (int64_t i = 0; i <= n; i++) { run += u[i]; sums[i] = run; }
                } else {
                    exponentials(seed, (uint64_t)(r * k + set) * (uint64_t)(n + 1), n + 1, e);
                    for (int64_t i = 0; i <= n; i++) { run += (double)e[i]; sums[i] = run; }
                }
                double recip = 1.0 / run;
                int64_t* out = idx + (r * k + set) * n;
                uint8_t* ok = valid + (r * k + set) * n;
                int64_t prev = -1;
                for (int64_t i = 0; i < n; i++) {
                    double x = sums[i] * recip * total;
                    if (x > top) x = top;
                    /* invariant: lo == -1 or c[lo] <= x; find hi with hi == N or c[hi] > x: a gallop
                       from the previous draw, then a bisection */
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
    dll.plan_runs.argtypes = [p, p, i64, i64, i64, i64, i64, i64, i64, p, p, i32]
    dll.plan_fill.argtypes = [p, p, i64, i64, i64, i64, i64, i64, p, p, p, i32]
    dll.plan_sddmm.argtypes = [p, p, p, p, i64, i64, i64, p, p, i32]
    dll.plan_spmm.argtypes = [p, p, p, p, i64, i64, i64, p, p, p, i32]
    dll.plan_spmm_t.argtypes = [p, p, p, p, p, p, i64, i64, i64, i64, i64, p, i32]
    dll.plan_softmax.argtypes = [p, p, i64, i64, p, p, p, i32]
    dll.plan_softmax_backward.argtypes = [p, p, p, i64, i64, p, p, i32]
    dll.weighted_draws.argtypes = [p, p, ctypes.c_uint64, i64, i64, i64, i64, p, p, p, p, i32]
    dll.exponentials.argtypes = [ctypes.c_uint64, ctypes.c_uint64, i64, p]
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
    # real checks, not asserts (gone under python -O): a CUDA pointer or a strided view would be read
    # as a contiguous CPU array
    if t.device.type != "cpu":
        raise ValueError(f"the CPU kernels take CPU tensors, got one on {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"the CPU kernels take contiguous tensors, got shape {tuple(t.shape)} strides {t.stride()}")
    return t.data_ptr()


class Plan(NamedTuple):
    """Every row's valid draws, block by block: the draws of row r in block b are
    ``k in [off[b * rows + r], off[b * rows + r + 1])``, and ``idx[k]`` is the row of X each reads.
    Draws that are not valid (repeats) are not in it."""

    off: Tensor  # int64 (blocks * rows + 1)
    idx: Tensor  # int32 (valid draws,)
    rows: int  # R
    blocks: int  # nb
    num_rows: int  # M, rows of X
    channels: int  # C, channels of X (the block size depends on it)


def plan(
    draws: Tensor, valid: Tensor, num_rows: int, channels: int, *, heads: int = 1, per_batch: int | None = None,
    stride: int = 0,
) -> Plan:
    """The plan of draws (R, n) int64, ascending in each row, into X (num_rows, channels). Row r's
    draw d reads X's row ``(d + (r // per_batch) * stride) * heads + r % heads`` (by default, d);
    draws where ``valid`` (R, n) is False are left out."""
    if num_rows >= 2**31:
        raise ValueError(f"the kernels index X with int32: {num_rows} rows is too many")
    R, n = draws.shape
    bs = _block(channels)
    nb = -(-num_rows // bs)
    per_batch = per_batch or R
    threads = _threads(R * n * 4)
    first = torch.empty(nb * R, dtype=torch.int64)  # where each (block, row) run starts among the row's draws
    counts = torch.empty(nb * R + 1, dtype=torch.int64)  # its valid draws
    counts[0] = 0
    _lib().plan_runs(_ptr(draws), _ptr(valid), R, n, heads, per_batch, stride, bs, nb, _ptr(first),
                     counts[1:].data_ptr(), threads)
    off = counts.cumsum_(0)
    idx = torch.empty(int(off[-1]), dtype=torch.int32)
    _lib().plan_fill(_ptr(draws), _ptr(valid), R, n, heads, per_batch, stride, nb, _ptr(off), _ptr(first), _ptr(idx),
                     threads)
    return Plan(off, idx, R, nb, num_rows, channels)


def _work(p: Plan, C: int) -> int:
    return _threads(p.idx.numel() * C)


def plan_sddmm(A: Tensor, X: Tensor, p: Plan, *, row_max: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Scores in plan order: ``S[k] = A[r] . X[idx[k]]``. A (R, C), X (M, C) float32. With
    ``row_max``, also each row's largest score (R,), found while the scores are computed."""
    C = X.shape[1]
    out, threads = torch.empty(p.idx.numel(), dtype=torch.float32), _work(p, C)
    top = torch.empty(threads, p.rows, dtype=torch.float32) if row_max else None
    _lib().plan_sddmm(_ptr(A), _ptr(X), _ptr(p.off), _ptr(p.idx), p.rows, p.blocks, C, _ptr(out),
                      None if top is None else _ptr(top), threads)
    return (out, top.amax(0)) if row_max else out


def plan_softmax(S: Tensor, p: Plan, *, row_max: Tensor | None = None) -> Tensor:
    """Each row's softmax over its draws, in plan order; ``row_max`` (R,), the rows' largest
    scores where known (:func:`plan_sddmm`), saves a pass."""
    out, threads = torch.empty_like(S), _work(p, 8)
    part = torch.empty(threads + 1, p.rows, dtype=torch.float32)  # per-thread row maxima and sums
    _lib().plan_softmax(_ptr(S), _ptr(p.off), p.rows, p.blocks, None if row_max is None else _ptr(row_max), _ptr(out),
                        _ptr(part), threads)
    return out


def plan_softmax_backward(P: Tensor, dP: Tensor, p: Plan) -> Tensor:
    """The scores' gradient from the softmax ``P`` and its gradient ``dP``, in plan order."""
    out, threads = torch.empty_like(P), _work(p, 8)
    part = torch.empty(threads + 1, p.rows, dtype=torch.float32)
    _lib().plan_softmax_backward(_ptr(P), _ptr(dP), _ptr(p.off), p.rows, p.blocks, _ptr(out), _ptr(part), threads)
    return out


def plan_spmm(W: Tensor, X: Tensor, p: Plan, *, row_max: Tensor | None = None) -> Tensor:
    """(R, C): ``out[r] = sum_k W[k] X[idx[k]]`` over row r's draws. With ``row_max`` (R,), W holds
    scores and their softmax (:func:`plan_softmax`) is made on the fly: the softmax and the weighted
    sum in one pass."""
    C = X.shape[1]
    out, threads = torch.zeros(p.rows, C, dtype=torch.float32), _work(p, C)
    sums = None if row_max is None else torch.zeros(threads, p.rows, dtype=torch.float32)
    _lib().plan_spmm(_ptr(W), _ptr(X), _ptr(p.off), _ptr(p.idx), p.rows, p.blocks, C,
                     None if row_max is None else _ptr(row_max), None if sums is None else _ptr(sums), _ptr(out), threads)
    return out


def plan_spmm_t(W: Tensor, A: Tensor, p: Plan, W2: Tensor | None = None, A2: Tensor | None = None) -> Tensor:
    """(M, C): ``out[idx[k]] += W[k] A[r]``, the transpose of :func:`plan_spmm`; with ``W2`` and
    ``A2``, ``+= W[k] A[r] + W2[k] A2[r]``, the sum of two such products in one pass."""
    if (W2 is None) != (A2 is None):
        raise ValueError("plan_spmm_t: give both W2 and A2, or neither")
    C = A.shape[1]
    out = torch.empty(p.num_rows, C, dtype=torch.float32)  # the kernel zeroes it block by block
    _lib().plan_spmm_t(_ptr(W), _ptr(A), None if W2 is None else _ptr(W2), None if A2 is None else _ptr(A2),
                       _ptr(p.off), _ptr(p.idx), p.rows, p.blocks, C, _block(p.channels), p.num_rows, _ptr(out),
                       _work(p, C))
    return out


def weighted_draws(weights: Tensor, exponentials: Tensor | None = None, *, sets: int = 1, n: int = 0,
                   seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sorted draws for weights (R, N) float32 (a distribution up to normalisation): ``(indices,
    valid)``, int64 and bool (R, k, n). What ``sampling._weighted_draws`` computes with PyTorch, in
    one pass per row, without its (R, N) and (R, k, n) float64 intermediates. The standard
    exponentials behind the draws are ``exponentials`` (R, k, n + 1) float64 when given, else
    ``sets`` x (n + 1) per row made in the kernel from ``seed`` (see :func:`exponentials`)."""
    R, N = weights.shape
    if exponentials is not None:
        sets, n = exponentials.shape[1], exponentials.shape[2] - 1
    elif sets < 1 or n < 1:
        raise ValueError(f"weighted_draws: without exponentials, sets and n must be >= 1, got sets={sets}, n={n}")
    threads = _threads(R * (N + sets * n) * 4)
    idx = torch.empty(R, sets, n, dtype=torch.int64)
    valid = torch.empty(R, sets, n, dtype=torch.bool)
    slots = max(threads, torch.get_num_threads())
    work = torch.empty(slots, N + n + 1, dtype=torch.float64)
    fwork = torch.empty(slots, n + 1, dtype=torch.float32)
    _lib().weighted_draws(_ptr(weights), None if exponentials is None else _ptr(exponentials), seed & (2**64 - 1), R,
                          N, sets, n, _ptr(idx), _ptr(valid), _ptr(work), _ptr(fwork), threads)
    return idx, valid


def exponentials(seed: int, count: int, first: int = 0) -> Tensor:
    """float32 (count,): numbers ``first .. first + count - 1`` of the kernels' standard exponentials
    for ``seed`` (SplitMix64 counters, -log of a 24-bit uniform in (0, 1]): what
    :func:`weighted_draws` uses without ``exponentials``."""
    out = torch.empty(count, dtype=torch.float32)
    _lib().exponentials(seed & (2**64 - 1), first, count, _ptr(out))
    return out
