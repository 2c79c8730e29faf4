/* Inner loops of the fastnorm kernels, one contiguous run of elements each.
 *
 * Each loop is written twice (float, double) by the FN_LOOPS and
 * FN_ROW_LOOPS macros; sums are carried in float64.
 *
 * None of these functions allocates, checks its arguments or touches Python.
 * Output pointers may alias input pointers exactly (in-place use); they are
 * therefore not declared restrict.
 */
#ifndef FASTNORM_LOOPS_H
#define FASTNORM_LOOPS_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

/* Reductions use explicit vectors (GCC/Clang vector extensions): each
 * accumulator is a vector of 4 doubles, lowered to whatever SIMD the build
 * targets (two SSE2 registers on baseline x86-64).  The lanes are combined in
 * a fixed order at the end, and the build disables floating-point contraction
 * (-ffp-contract=off), so a result depends only on the data and the run
 * length: not on threads, alignment or the instruction set. */
typedef double fn_v4d __attribute__((vector_size(32)));
typedef float fn_v4f __attribute__((vector_size(16)));

static inline fn_v4d fn_load4(const float *p)
{
    fn_v4f v;
    __builtin_memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, fn_v4d);
}

static inline fn_v4d fn_load4d(const double *p)
{
    fn_v4d v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline double fn_hsum(fn_v4d v)
{
    return (v[0] + v[2]) + (v[1] + v[3]);
}

/* float32 data: sums over blocks of FN_BLOCK elements are carried in float32
 * vectors (8 lanes, at most 8 terms each) and flushed to float64 after each
 * block, twice the speed of float64 lanes.  The terms are deviations from a
 * centre near the mean, so a block sum has float32's relative precision
 * (~1e-7) and the flushed total keeps float64's.  A block whose float32 sum is
 * not finite (values near the float32 range) is redone in float64. */
#define FN_BLOCK 64
typedef float fn_v8f __attribute__((vector_size(32)));

static inline fn_v8f fn_load8f(const float *p)
{
    fn_v8f v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline double fn_hsum8(fn_v8f v)
{
    /* fixed order, in float64 */
    return (((double)v[0] + (double)v[4]) + ((double)v[2] + (double)v[6])) +
           (((double)v[1] + (double)v[5]) + ((double)v[3] + (double)v[7]));
}

/* Statistics passes over float32 runs: four float32 vector accumulators
 * (32 lanes, so four independent add chains), a block of FN_SBLOCK = 128
 * values puts 4 terms in each lane; the block's lanes are combined in
 * float32 to 8 and added, lane by lane, to float64 vector totals, summed in a
 * fixed order at the end.  A run whose float64 total is not finite (a float32
 * block overflowed) is summed again wholly in float64. */
#define FN_SBLOCK 128

static inline void fn_flush8(fn_v8f v, fn_v4d *lo, fn_v4d *hi)
{
    fn_v4f l = {v[0], v[1], v[2], v[3]}, h = {v[4], v[5], v[6], v[7]};
    *lo += __builtin_convertvector(l, fn_v4d);
    *hi += __builtin_convertvector(h, fn_v4d);
}

/* sum of x[0:n] in float64, float32 blocks */
static inline double fn_sum_blk_f32(const float *x, int64_t n)
{
    fn_v4d lo = {0}, hi = {0};
    double t = 0.0;
    int64_t i = 0;
    for (; i + FN_SBLOCK <= n; i += FN_SBLOCK) {
        fn_v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int j = 0; j < FN_SBLOCK; j += 32) {
            a0 += fn_load8f(x + i + j);
            a1 += fn_load8f(x + i + j + 8);
            a2 += fn_load8f(x + i + j + 16);
            a3 += fn_load8f(x + i + j + 24);
        }
        fn_flush8((a0 + a1) + (a2 + a3), &lo, &hi);
    }
    for (; i < n; i++) t += (double)x[i];
    double total = fn_hsum(lo + hi) + t;
    if (!__builtin_isfinite(total)) {
        fn_v4d r0 = {0}, r1 = {0};
        t = 0.0;
        for (i = 0; i + 8 <= n; i += 8) {
            r0 += fn_load4(x + i);
            r1 += fn_load4(x + i + 4);
        }
        for (; i < n; i++) t += (double)x[i];
        total = fn_hsum(r0 + r1) + t;
    }
    return total;
}

/* sum of (x - m) and of (x - m)^2 over x[0:n], m a float32 value; float32
 * blocks flushed to float64 */
static inline void fn_dev_blk_f32(const float *x, int64_t n, float m,
                                  double *sd, double *sdd)
{
    fn_v8f mv = {m, m, m, m, m, m, m, m};
    fn_v4d alo = {0}, ahi = {0}, blo = {0}, bhi = {0};
    double ta = 0.0, tb = 0.0;
    int64_t i = 0;
    for (; i + FN_SBLOCK <= n; i += FN_SBLOCK) {
        fn_v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        fn_v8f b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
        /* this second pass runs from cache: ask for the n values that follow
         * (the next run of a thread walking memory), one line per 64 bytes,
         * so that the first pass over them finds them on its way */
        for (int j = 0; j < FN_SBLOCK; j += 16)
            __builtin_prefetch(x + n + i + j, 0, 3);
        for (int j = 0; j < FN_SBLOCK; j += 32) {
            fn_v8f d0 = fn_load8f(x + i + j) - mv;
            fn_v8f d1 = fn_load8f(x + i + j + 8) - mv;
            fn_v8f d2 = fn_load8f(x + i + j + 16) - mv;
            fn_v8f d3 = fn_load8f(x + i + j + 24) - mv;
            a0 += d0;
            a1 += d1;
            a2 += d2;
            a3 += d3;
            b0 += d0 * d0;
            b1 += d1 * d1;
            b2 += d2 * d2;
            b3 += d3 * d3;
        }
        fn_flush8((a0 + a1) + (a2 + a3), &alo, &ahi);
        fn_flush8((b0 + b1) + (b2 + b3), &blo, &bhi);
    }
    for (; i < n; i++) {
        double d = (double)x[i] - (double)m;
        ta += d;
        tb += d * d;
    }
    double a = fn_hsum(alo + ahi) + ta, b = fn_hsum(blo + bhi) + tb;
    if (!__builtin_isfinite(a) || !__builtin_isfinite(b)) {
        fn_v4d mm = {m, m, m, m}, a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
        ta = tb = 0.0;
        for (i = 0; i + 8 <= n; i += 8) {
            fn_v4d d0 = fn_load4(x + i) - mm, d1 = fn_load4(x + i + 4) - mm;
            a0 += d0;
            a1 += d1;
            b0 += d0 * d0;
            b1 += d1 * d1;
        }
        for (; i < n; i++) {
            double d = (double)x[i] - (double)m;
            ta += d;
            tb += d * d;
        }
        a = fn_hsum(a0 + a1) + ta;
        b = fn_hsum(b0 + b1) + tb;
    }
    *sd += a;
    *sdd += b;
}

/* sum of dy and of dy * (x - m) over [0:n]: float32 blocks of FN_BLOCK
 * centred on mf = (float)m, flushed to float64, then corrected for the centre
 * (dy * (x - m) = dy * (x - mf) + (mf - m) * dy); a block whose float32 sums
 * are not finite is redone in float64.  pf: data to prefetch (the next run),
 * read at the same pace, or NULL. */
static inline void fn_dot_blk_f32(const float *x, const float *dy, int64_t n,
                                  double m, double *sdy, double *sdyx)
{
    float mf = (float)m;
    fn_v8f mv = {mf, mf, mf, mf, mf, mf, mf, mf};
    double ta = 0.0, tb = 0.0;
    int64_t i = 0;
    for (; i + FN_BLOCK <= n; i += FN_BLOCK) {
        fn_v8f a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
        for (int j = 0; j < FN_BLOCK; j += 16) {
            fn_v8f g0 = fn_load8f(dy + i + j), g1 = fn_load8f(dy + i + j + 8);
            a0 += g0;
            a1 += g1;
            b0 += g0 * (fn_load8f(x + i + j) - mv);
            b1 += g1 * (fn_load8f(x + i + j + 8) - mv);
        }
        double a = fn_hsum8(a0 + a1), b = fn_hsum8(b0 + b1);
        if (!__builtin_isfinite(a) || !__builtin_isfinite(b)) {
            a = b = 0.0;
            for (int j = 0; j < FN_BLOCK; j++) {
                double g = (double)dy[i + j];
                a += g;
                b += g * ((double)x[i + j] - (double)mf);
            }
        }
        ta += a;
        tb += b;
    }
    for (; i < n; i++) {
        double g = (double)dy[i];
        ta += g;
        tb += g * ((double)x[i] - (double)mf);
    }
    *sdy += ta;
    *sdyx += tb + ((double)mf != m && __builtin_isfinite(ta) ? ((double)mf - m) * ta : 0.0);
}

/* Streaming (non-temporal) stores of a tile computed in L1: the output
 * line is written without first being read into the cache (a third less
 * memory traffic for a large output that is not re-read soon).  The values
 * are the tile's bits, whatever the store instruction.  fn_stream_fence()
 * orders them before the results are used (once per row, by the writer). */
static inline void fn_stream_f32(float *dst, const float *src, int64_t n)
{
#if defined(__SSE2__)
    int64_t i = 0;
    while (i < n && ((uintptr_t)(dst + i) & 31)) {
        dst[i] = src[i];
        i++;
    }
#if defined(__AVX__)
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
#else
    for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
#endif
    for (; i < n; i++) dst[i] = src[i];
#else
    memcpy(dst, src, (size_t)n * sizeof(float));
#endif
}

static inline void fn_stream_f64(double *dst, const double *src, int64_t n)
{
#if defined(__SSE2__)
    int64_t i = 0;
    while (i < n && ((uintptr_t)(dst + i) & 31)) {
        dst[i] = src[i];
        i++;
    }
#if defined(__AVX__)
    for (; i + 4 <= n; i += 4) _mm256_stream_pd(dst + i, _mm256_loadu_pd(src + i));
#else
    for (; i + 2 <= n; i += 2) _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
#endif
    for (; i < n; i++) dst[i] = src[i];
#else
    memcpy(dst, src, (size_t)n * sizeof(double));
#endif
}

static inline void fn_prefetch(const void *p)
{
    __builtin_prefetch(p, 0, 3);
}

static inline void fn_stream_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

#define FN_LOOPS(T, SUF, LOAD)                                                \
/* sum of x[0:n] in float64 */                                                \
static inline double fn_sum_##SUF(const T *x, int64_t n)                      \
{                                                                             \
    fn_v4d a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                            \
    double t = 0.0;                                                           \
    int64_t i = 0;                                                            \
    for (; i + 16 <= n; i += 16) {                                            \
        a0 += LOAD(x + i);                                                    \
        a1 += LOAD(x + i + 4);                                                \
        a2 += LOAD(x + i + 8);                                                \
        a3 += LOAD(x + i + 12);                                               \
    }                                                                         \
    for (; i < n; i++) t += (double)x[i];                                     \
    return fn_hsum((a0 + a2) + (a1 + a3)) + t;                                \
}                                                                             \
/* sum of (x - m) and of (x - m)^2 over x[0:n] in float64 */                  \
static inline void fn_dev_##SUF(const T *x, int64_t n, double m,              \
                                double *sd, double *sdd)                      \
{                                                                             \
    fn_v4d a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};                            \
    fn_v4d mv = {m, m, m, m};                                                 \
    double ta = 0.0, tb = 0.0;                                                \
    int64_t i = 0;                                                            \
    for (; i + 8 <= n; i += 8) {                                              \
        fn_v4d d0 = LOAD(x + i) - mv;                                         \
        fn_v4d d1 = LOAD(x + i + 4) - mv;                                     \
        a0 += d0;                                                             \
        a1 += d1;                                                             \
        b0 += d0 * d0;                                                        \
        b1 += d1 * d1;                                                        \
    }                                                                         \
    for (; i < n; i++) {                                                      \
        double d = (double)x[i] - m;                                          \
        ta += d;                                                              \
        tb += d * d;                                                          \
    }                                                                         \
    *sd += fn_hsum(a0 + a1) + ta;                                             \
    *sdd += fn_hsum(b0 + b1) + tb;                                            \
}                                                                             \
/* sum of dy and of dy * (x - m) over [0:n] in float64 */                     \
static inline void fn_dot_##SUF(const T *x, const T *dy, int64_t n, double m, \
                                double *sdy, double *sdyx)                    \
{                                                                             \
    fn_v4d a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};                            \
    fn_v4d mv = {m, m, m, m};                                                 \
    double ta = 0.0, tb = 0.0;                                                \
    int64_t i = 0;                                                            \
    for (; i + 8 <= n; i += 8) {                                              \
        fn_v4d g0 = LOAD(dy + i), g1 = LOAD(dy + i + 4);                      \
        a0 += g0;                                                             \
        a1 += g1;                                                             \
        b0 += g0 * (LOAD(x + i) - mv);                                        \
        b1 += g1 * (LOAD(x + i + 4) - mv);                                    \
    }                                                                         \
    for (; i < n; i++) {                                                      \
        double g = (double)dy[i];                                             \
        ta += g;                                                              \
        tb += g * ((double)x[i] - m);                                         \
    }                                                                         \
    *sdy += fn_hsum(a0 + a1) + ta;                                            \
    *sdyx += fn_hsum(b0 + b1) + tb;                                           \
}                                                                             \
/* y = (x - c) * s + t: normalise + affine around a centre c close to the     \
 * mean, so that x - c cancels exactly and no large product is rounded */     \
static inline void fn_affine_##SUF(const T *x, T *y, int64_t n,               \
                                   T c, T s, T t)                             \
{                                                                             \
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] - c) * s + t;                \
}                                                                             \
/* dx = a * dy - b * (x - c) - k: input gradient with batch statistics */     \
static inline void fn_bwd_##SUF(const T *x, const T *dy, T *dx, int64_t n,    \
                                T c, T a, T b, T k)                           \
{                                                                             \
    for (int64_t i = 0; i < n; i++) dx[i] = a * dy[i] - b * (x[i] - c) - k;   \
}                                                                             \
/* fn_bwd, also prefetching px[0:n] and py[0:n] (what the calling thread    \
 * reads next) while this run is served from cache */                        \
static inline void fn_bwd_pf_##SUF(const T *x, const T *dy, T *dx, int64_t n, \
                                   T c, T a, T b, T k, const T *px,           \
                                   const T *py)                               \
{                                                                             \
    const int64_t step = 64 / sizeof(T);                                      \
    for (int64_t i0 = 0; i0 < n; i0 += step) {                                \
        int64_t i1 = i0 + step < n ? i0 + step : n;                           \
        __builtin_prefetch(px + i0, 0, 3);                                    \
        __builtin_prefetch(py + i0, 0, 3);                                    \
        for (int64_t i = i0; i < i1; i++)                                     \
            dx[i] = a * dy[i] - b * (x[i] - c) - k;                           \
    }                                                                         \
}                                                                             \
/* dx = a * dy: input gradient with fixed (running) statistics */             \
static inline void fn_scale_##SUF(const T *dy, T *dx, int64_t n, T a)         \
{                                                                             \
    for (int64_t i = 0; i < n; i++) dx[i] = a * dy[i];                        \
}

/* Row loops for small planes: element j of a row belongs to its own column,
 * with per-column accumulators (acc*) and coefficients (arrays of n).  These
 * vectorise across the contiguous row, whatever the plane length. */
#define FN_ROW_LOOPS(T, SUF)                                                  \
static inline void fn_rsum_##SUF(const T *x, double *acc, int64_t n)          \
{                                                                             \
    for (int64_t j = 0; j < n; j++) acc[j] += (double)x[j];                   \
}                                                                             \
static inline void fn_rdev_##SUF(const T *x, const double *m, double *a,      \
                                 double *b, int64_t n)                        \
{                                                                             \
    for (int64_t j = 0; j < n; j++) {                                         \
        double d = (double)x[j] - m[j];                                       \
        a[j] += d;                                                            \
        b[j] += d * d;                                                        \
    }                                                                         \
}                                                                             \
static inline void fn_rdot_##SUF(const T *x, const T *dy, const double *m,    \
                                 double *a, double *b, int64_t n)             \
{                                                                             \
    for (int64_t j = 0; j < n; j++) {                                         \
        double g = (double)dy[j];                                             \
        a[j] += g;                                                            \
        b[j] += g * ((double)x[j] - m[j]);                                    \
    }                                                                         \
}                                                                             \
static inline void fn_raffine_##SUF(const T *x, T *y, const T *c, const T *s, \
                                    const T *t, int64_t n)                    \
{                                                                             \
    for (int64_t j = 0; j < n; j++) y[j] = (x[j] - c[j]) * s[j] + t[j];       \
}                                                                             \
static inline void fn_rbwd_##SUF(const T *x, const T *dy, T *dx, const T *c,  \
                                 const T *a, const T *b, const T *k,          \
                                 int64_t n)                                   \
{                                                                             \
    for (int64_t j = 0; j < n; j++)                                           \
        dx[j] = a[j] * dy[j] - b[j] * (x[j] - c[j]) - k[j];                   \
}                                                                             \
static inline void fn_rscale_##SUF(const T *dy, T *dx, const T *a, int64_t n) \
{                                                                             \
    for (int64_t j = 0; j < n; j++) dx[j] = a[j] * dy[j];                     \
}

/* Rows normalised over their own elements with a weight and bias per
 * column (LayerNorm, RMSNorm): scalars per row, arrays per column. */
#define FN_LAYER_LOOPS(T, SUF, LOAD)                                          \
/* y = ((x - c) * s + t) * w + b */                                           \
static inline void fn_lnaff_##SUF(const T *x, T *y, int64_t n, T c, T s, T t, \
                                  const T *w, const T *b)                     \
{                                                                             \
    if (b)                                                                    \
        for (int64_t j = 0; j < n; j++)                                       \
            y[j] = ((x[j] - c) * s + t) * w[j] + b[j];                        \
    else                                                                      \
        for (int64_t j = 0; j < n; j++) y[j] = ((x[j] - c) * s + t) * w[j];   \
}                                                                             \
/* dx = a * w * dy - q * (x - c) - k */                                       \
static inline void fn_lnbwd_##SUF(const T *x, const T *dy, T *dx, int64_t n,  \
                                  const T *w, T c, T a, T q, T k)             \
{                                                                             \
    for (int64_t j = 0; j < n; j++)                                           \
        dx[j] = a * w[j] * dy[j] - q * (x[j] - c) - k;                        \
}                                                                             \
/* One row piece of the fused backward sums, with d = x - m:                  \
 * *A += sum(dy * w), *B += sum(dy * w * d)          (row sums)               \
 * c1[j] += dy, c2[j] += dy * d * inv                (column sums) */         \
static inline void fn_lnsums_##SUF(const T *x, const T *dy, const T *w,       \
                                   int64_t n, double m, double inv,           \
                                   double *A, double *B, double *c1,          \
                                   double *c2)                                \
{                                                                             \
    fn_v4d a0 = {0}, b0 = {0};                                                \
    fn_v4d mv = {m, m, m, m}, iv = {inv, inv, inv, inv};                      \
    double ta = 0.0, tb = 0.0;                                                \
    int64_t j = 0;                                                            \
    for (; j + 4 <= n; j += 4) {                                              \
        fn_v4d g = LOAD(dy + j), d = LOAD(x + j) - mv, gw = g * LOAD(w + j);  \
        fn_v4d s1 = fn_load4d(c1 + j) + g, s2 = fn_load4d(c2 + j) + g * d * iv;\
        a0 += gw;                                                             \
        b0 += gw * d;                                                         \
        __builtin_memcpy(c1 + j, &s1, sizeof s1);                             \
        __builtin_memcpy(c2 + j, &s2, sizeof s2);                             \
    }                                                                         \
    for (; j < n; j++) {                                                      \
        double g = (double)dy[j], d = (double)x[j] - m, gw = g * (double)w[j];\
        ta += gw;                                                             \
        tb += gw * d;                                                         \
        c1[j] += g;                                                           \
        c2[j] += g * d * inv;                                                 \
    }                                                                         \
    *A += fn_hsum(a0) + ta;                                                   \
    *B += fn_hsum(b0) + tb;                                                   \
}

/* One float32 row of the LayerNorm/RMSNorm backward, in float32 vectors.
 * With xh = ((x - mf) - df) * inv (mf the mean rounded to float32, df the
 * rounding, so x - m loses nothing to a large offset):
 *   A = sum(dy * w), B = sum(dy * w * xh)  float32 blocks of FN_BLOCK flushed
 *                                          to float64 (a block that is not
 *                                          finite is redone in float64)
 *   c1[j] += dy, c2[j] += dy * xh          float32 column sums of the caller's
 *                                          block of rows
 *   dx = inv * w * dy - (inv * B / n) * xh - inv * A / n
 * (RMSNorm, rms != 0: m = 0 and no A term). */
static inline void fn_lnrow_f32(const float *x, const float *dy, float *dx,
                                const float *w, int64_t n, double m, double inv,
                                int rms, float *c1, float *c2)
{
    float mf = (float)m, df = (float)(m - (double)mf), iv = (float)inv;
    fn_v8f mv = {mf, mf, mf, mf, mf, mf, mf, mf};
    fn_v8f dv = {df, df, df, df, df, df, df, df};
    fn_v8f ivv = {iv, iv, iv, iv, iv, iv, iv, iv};
    double A = 0.0, B = 0.0;
    int64_t i = 0;
    for (; i + FN_BLOCK <= n; i += FN_BLOCK) {
        /* two accumulators each: independent add chains */
        fn_v8f a0 = {0}, b0 = {0}, a1 = {0}, b1 = {0};
        for (int j = 0; j < FN_BLOCK; j += 16) {
            fn_v8f g0 = fn_load8f(dy + i + j), g1 = fn_load8f(dy + i + j + 8);
            fn_v8f xh0 = ((fn_load8f(x + i + j) - mv) - dv) * ivv;
            fn_v8f xh1 = ((fn_load8f(x + i + j + 8) - mv) - dv) * ivv;
            fn_v8f gw0 = g0 * fn_load8f(w + i + j), gw1 = g1 * fn_load8f(w + i + j + 8);
            fn_v8f s10 = fn_load8f(c1 + i + j) + g0, s20 = fn_load8f(c2 + i + j) + g0 * xh0;
            fn_v8f s11 = fn_load8f(c1 + i + j + 8) + g1;
            fn_v8f s21 = fn_load8f(c2 + i + j + 8) + g1 * xh1;
            a0 += gw0;
            b0 += gw0 * xh0;
            a1 += gw1;
            b1 += gw1 * xh1;
            __builtin_memcpy(c1 + i + j, &s10, sizeof s10);
            __builtin_memcpy(c2 + i + j, &s20, sizeof s20);
            __builtin_memcpy(c1 + i + j + 8, &s11, sizeof s11);
            __builtin_memcpy(c2 + i + j + 8, &s21, sizeof s21);
        }
        double ba = fn_hsum8(a0 + a1), bb = fn_hsum8(b0 + b1);
        if (!__builtin_isfinite(ba) || !__builtin_isfinite(bb)) {
            ba = bb = 0.0;
            for (int j = 0; j < FN_BLOCK; j++) {
                double gw = (double)dy[i + j] * (double)w[i + j];
                ba += gw;
                bb += gw * (((double)x[i + j] - m) * inv);
            }
        }
        A += ba;
        B += bb;
    }
    for (; i < n; i++) {
        float g = dy[i], xh = ((x[i] - mf) - df) * iv;
        double gw = (double)dy[i] * (double)w[i];
        A += gw;
        B += gw * (((double)x[i] - m) * inv);
        c1[i] += g;
        c2[i] += g * xh;
    }
    float q = (float)(inv * B / (double)n), k = rms ? 0.0f : (float)(inv * A / (double)n);
    for (int64_t j = 0; j < n; j++) {
        float xh = ((x[j] - mf) - df) * iv;
        dx[j] = iv * w[j] * dy[j] - q * xh - k;
    }
}

/* Local response normalisation over channels, one strip of columns
 * [l0, l0 + ln) of one sample: x is (C, L) with row stride L.
 *
 * Window sums over channels come from block prefix and suffix sums (blocks of
 * `size` channels): a window [lo, hi] spans at most two blocks and its sum is
 * suf[lo] + pre[hi] (or one of them when it starts or ends on a block edge).
 * Only additions: sums of squares never lose small terms to cancellation,
 * and the cost is O(1) per element whatever the window size.
 * pre, suf: scratch of C * ln doubles each. */
static inline void fn_window_sums(double *v, int64_t C, int64_t ln, int64_t size,
                                  int64_t before, int64_t after, double *pre,
                                  double *suf)
{
    /* v (C, ln) in, window sums (C, ln) out in v; window of c is
     * [c - before, c + after] clipped to [0, C - 1] */
    for (int64_t c = 0; c < C; c++) {
        double *p = pre + c * ln;
        const double *vc = v + c * ln;
        if (c % size == 0)
            for (int64_t l = 0; l < ln; l++) p[l] = vc[l];
        else
            for (int64_t l = 0; l < ln; l++) p[l] = p[l - ln] + vc[l];
    }
    for (int64_t c = C - 1; c >= 0; c--) {
        double *q = suf + c * ln;
        const double *vc = v + c * ln;
        if (c % size == size - 1 || c == C - 1)
            for (int64_t l = 0; l < ln; l++) q[l] = vc[l];
        else
            for (int64_t l = 0; l < ln; l++) q[l] = q[l + ln] + vc[l];
    }
    for (int64_t c = 0; c < C; c++) {
        int64_t lo = c - before, hi = c + after;
        double *out = v + c * ln;
        if (lo < 0) lo = 0;
        if (hi > C - 1) hi = C - 1;
        if (lo / size != hi / size) {
            const double *a = suf + lo * ln, *b = pre + hi * ln;
            for (int64_t l = 0; l < ln; l++) out[l] = a[l] + b[l];
        } else if (lo % size == 0) {
            const double *b = pre + hi * ln;
            for (int64_t l = 0; l < ln; l++) out[l] = b[l];
        } else {
            const double *a = suf + lo * ln;
            for (int64_t l = 0; l < ln; l++) out[l] = a[l];
        }
    }
}

/* d^-beta for d > 0.  The common exponents go through correctly rounded
 * square roots and divisions (a few ulp of float64, and 5-10x faster than
 * pow, which does not vectorise): 0.75 (the default of LocalResponseNorm
 * and AlexNet's), 0.5 and 1. */
static inline double fn_pow_neg(double d, double beta)
{
    if (beta == 0.75) {
        double r = sqrt(d);
        return 1.0 / (r * sqrt(r));
    }
    if (beta == 0.5)
        return 1.0 / sqrt(d);
    if (beta == 1.0)
        return 1.0 / d;
    return pow(d, -beta);
}

#define FN_LRN_LOOPS(T, SUF)                                                  \
/* y = x * (k + alpha / size * S)^-beta; den (C, ln) receives the base */     \
static inline void fn_lrn_fwd_##SUF(const T *x, T *y, int64_t C, int64_t L,   \
                                    int64_t l0, int64_t ln, int64_t size,     \
                                    double alpha, double beta, double k,      \
                                    double *den, double *pre, double *suf)    \
{                                                                             \
    for (int64_t c = 0; c < C; c++)                                           \
        for (int64_t l = 0; l < ln; l++) {                                    \
            double v = (double)x[c * L + l0 + l];                             \
            den[c * ln + l] = v * v;                                          \
        }                                                                     \
    fn_window_sums(den, C, ln, size, size / 2, (size - 1) / 2, pre, suf);     \
    const double ak = alpha / (double)size;                                   \
    for (int64_t c = 0; c < C; c++) {                                         \
        double *dc = den + c * ln;                                            \
        const T *xc = x + c * L + l0;                                         \
        if (y) {                                                              \
            T *yc = y + c * L + l0;                                           \
            for (int64_t l = 0; l < ln; l++)                                  \
                yc[l] = (T)((double)xc[l] * fn_pow_neg(k + ak * dc[l], beta));\
        } else {                                                              \
            for (int64_t l = 0; l < ln; l++) dc[l] = k + ak * dc[l];          \
        }                                                                     \
    }                                                                         \
}                                                                             \
/* dx = dy * D^-beta - 2 alpha beta / size * x * sum over the mirrored        \
 * window of dy * x * D^(-beta - 1) */                                        \
static inline void fn_lrn_bwd_##SUF(const T *x, const T *dy, T *dx,           \
                                    int64_t C, int64_t L, int64_t l0,         \
                                    int64_t ln, int64_t size, double alpha,   \
                                    double beta, double k, double *den,       \
                                    double *t, double *pre, double *suf)      \
{                                                                             \
    fn_lrn_fwd_##SUF(x, (T *)0, C, L, l0, ln, size, alpha, beta, k, den,      \
                     pre, suf);                                               \
    /* t = dy * x * D^(-beta - 1); den becomes D^-beta */                     \
    for (int64_t c = 0; c < C; c++)                                           \
        for (int64_t l = 0; l < ln; l++) {                                    \
            int64_t i = c * L + l0 + l;                                       \
            double d = den[c * ln + l], p = fn_pow_neg(d, beta);              \
            t[c * ln + l] = (double)dy[i] * (double)x[i] * (p / d);           \
            den[c * ln + l] = p;                                              \
        }                                                                     \
    fn_window_sums(t, C, ln, size, (size - 1) / 2, size / 2, pre, suf);       \
    const double f = 2.0 * alpha * beta / (double)size;                       \
    for (int64_t c = 0; c < C; c++)                                           \
        for (int64_t l = 0; l < ln; l++) {                                    \
            int64_t i = c * L + l0 + l;                                       \
            dx[i] = (T)((double)dy[i] * den[c * ln + l]                       \
                        - f * (double)x[i] * t[c * ln + l]);                  \
        }                                                                     \
}

FN_LOOPS(float, f32, fn_load4)
FN_LOOPS(double, f64, fn_load4d)
FN_ROW_LOOPS(float, f32)
FN_ROW_LOOPS(double, f64)
FN_LAYER_LOOPS(float, f32, fn_load4)
FN_LAYER_LOOPS(double, f64, fn_load4d)
FN_LRN_LOOPS(float, f32)
FN_LRN_LOOPS(double, f64)

#endif
