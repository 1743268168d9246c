/* Sorted weighted draws and the counter-based standard exponentials behind them, the C form of
   boltzformer/model/kernels/counter_rng.py (bit for bit; tested). Built with sampled_attention.c
   into one shared library by boltzformer/model/kernels/cpu_build.py. */

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

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
