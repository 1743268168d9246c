/* Cache-blocked CPU kernels of the sampled attention: plans (every row's valid draws regrouped
   block by block of X's rows), then the scores (SDDMM), softmax, weighted sums (SpMM), their
   transpose and the softmax's backward, each walking a plan in order. Built with draws.c into one
   shared library by boltzformer/model/kernels/cpu_build.py and called through ctypes from
   boltzformer/model/kernels/cpu.py, which documents each function's arguments. Plain C with OpenMP;
   AVX-512 intrinsics where the compiler targets a CPU that has them. */

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
