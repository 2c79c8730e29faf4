/* Inner loops of the channel kernels (_kernels_channels.pxi): one contiguous
 * run of elements each.  Statistics (sums, deviations, backward dot
 * products) are carried in float64; elementwise passes compute in the
 * storage type's compute type and round once on store.
 *
 * Statistics per compute type:
 *   float  (float32 storage): float32 vector blocks flushed to float64
 *          (_storage.h, FN_BLOCK / FN_SBLOCK), a block or run that
 *          overflows float32 redone in float64;
 *   double (float64 storage): float64 vector lanes.
 * Every function is instantiated per storage type from FN_STORAGE_TYPES and
 * called through fn_<op>(p, ...), chosen by the type of its first pointer.
 */
#ifndef FASTNORM_LOOPS_CHANNELS_H
#define FASTNORM_LOOPS_CHANNELS_H
#include "_storage.h"

/* The float64 rest loops of the float-compute statistics, 8 values a step:
 * the same lanes and additions in either form.  With AVX-512 the two
 * 4-double accumulators are one 8-double register ([lo | hi]: one widening
 * per step); elsewhere they stay two (GCC 12 keeps an 8-double vector that
 * spans two registers in memory). */
/* 8 values a step in two 4-double lanes, as the float64 statistics and the
 * float compute's rest loops take them: d = x - m, a += d, b += d * d
 * (FN_DEV8); g = dy, a += g, b += g * (x - m) (FN_DOT8).  mv: m in 4 lanes. */
#define FN_DEV8(SUF, mv, a0, a1, b0, b1)                                      \
    for (; i + 8 <= n; i += 8) {                                              \
        fn_v4d d0 = fn_ld4d_##SUF(x + i) - mv;                                \
        fn_v4d d1 = fn_ld4d_##SUF(x + i + 4) - mv;                            \
        a0 += d0;                                                             \
        a1 += d1;                                                             \
        b0 += d0 * d0;                                                        \
        b1 += d1 * d1;                                                        \
    }
#define FN_DOT8(SUF, mv, a0, a1, b0, b1)                                      \
    for (; i + 8 <= n; i += 8) {                                              \
        fn_v4d g0 = fn_ld4d_##SUF(dy + i), g1 = fn_ld4d_##SUF(dy + i + 4);    \
        a0 += g0;                                                             \
        a1 += g1;                                                             \
        b0 += g0 * (fn_ld4d_##SUF(x + i) - mv);                               \
        b1 += g1 * (fn_ld4d_##SUF(x + i + 4) - mv);                           \
    }
#if defined(__AVX512F__)
#define FN_DEV_REST(SUF)                                                      \
    {                                                                         \
        fn_v8d m8 = {md, md, md, md, md, md, md, md};                         \
        fn_v8d a8 = fn_cat8d(alo, ahi), b8 = fn_cat8d(blo, bhi);              \
        for (; i + 8 <= n; i += 8) {                                          \
            fn_v8d d = fn_cvt8d(fn_ld8f_##SUF(x + i)) - m8;                   \
            a8 += d;                                                          \
            b8 += d * d;                                                      \
        }                                                                     \
        alo = fn_lo8d(a8);                                                    \
        ahi = fn_hi8d(a8);                                                    \
        blo = fn_lo8d(b8);                                                    \
        bhi = fn_hi8d(b8);                                                    \
    }
#define FN_DOT_REST(SUF)                                                      \
    {                                                                         \
        fn_v8d m8 = {md, md, md, md, md, md, md, md}, ga = {0}, gb = {0};     \
        for (; i + 8 <= n; i += 8) {                                          \
            fn_v8d g = fn_cvt8d(fn_ld8f_##SUF(dy + i));                       \
            ga += g;                                                          \
            gb += g * (fn_cvt8d(fn_ld8f_##SUF(x + i)) - m8);                  \
        }                                                                     \
        a0 = fn_lo8d(ga);                                                     \
        a1 = fn_hi8d(ga);                                                     \
        b0 = fn_lo8d(gb);                                                     \
        b1 = fn_hi8d(gb);                                                     \
    }
#else
#define FN_DEV_REST(SUF)                                                      \
    {                                                                         \
        fn_v4d m4 = {md, md, md, md};                                         \
        FN_DEV8(SUF, m4, alo, ahi, blo, bhi)                                  \
    }
#define FN_DOT_REST(SUF)                                                      \
    {                                                                         \
        fn_v4d m4 = {md, md, md, md};                                         \
        FN_DOT8(SUF, m4, a0, a1, b0, b1)                                      \
    }
#endif

/* --- statistics, float compute --------------------------------------- */
/* fn_NAME_SUF(x, n): sum of TERM(x) over x[0:n] in float64, TERM the
 * identity (fn_sum) or the square (fn_sumsq, RMSNorm's one pass): float32
 * blocks of FN_SBLOCK (32 lanes), then what is left under FN_SBLOCK in one
 * float32 block of 16 lanes (at most 7 terms each), each flushed to float64;
 * then 8 values widened to float64 lanes, then one by one.  A total that is
 * not finite (a float32 block or term overflowed) is summed again wholly in
 * float64.  PF: ask for the n values that follow (the next row of a thread
 * walking memory) into L2 during the blocks (the pass that reads it from
 * memory is the only one: RMSNorm's). */
#define FN_TERM_ID(v) (v)
#define FN_TERM_SQ(v) ((v) * (v))
#define FN_BLOCKSUM(S, SUF, NAME, TERM, PF)                                   \
static inline double fn_##NAME##_##SUF(const S *x, int64_t n)                 \
{                                                                             \
    fn_v4d lo = {0}, hi = {0};                                                \
    double t = 0.0;                                                           \
    int64_t i = 0;                                                            \
    for (; i + FN_SBLOCK <= n; i += FN_SBLOCK) {                              \
        fn_vf a[FN_N32] = {{0}};                                              \
        if (PF)                                                               \
            for (int j = 0; j < FN_SBLOCK; j += 64 / (int)sizeof(S))          \
                __builtin_prefetch(x + n + i + j, 0, 2);                      \
        for (int j = 0; j < FN_SBLOCK; j += 32)                               \
            for (int k = 0; k < FN_N32; k++) {                                \
                fn_vf v = fn_ldv_##SUF(x + i + j + k * FN_VL);                \
                a[k] += TERM(v);                                              \
            }                                                                 \
        fn_flush8(fn_fold32(a), &lo, &hi);                                    \
    }                                                                         \
    if (i + 16 <= n) {                                                        \
        fn_vf a[FN_N16] = {{0}};                                              \
        for (; i + 16 <= n; i += 16)                                          \
            for (int k = 0; k < FN_N16; k++) {                                \
                fn_vf v = fn_ldv_##SUF(x + i + k * FN_VL);                    \
                a[k] += TERM(v);                                              \
            }                                                                 \
        fn_flush8(fn_fold16(a), &lo, &hi);                                    \
    }                                                                         \
    if (i + 8 <= n) {                                                         \
        fn_v4d v0 = fn_ld4d_##SUF(x + i), v1 = fn_ld4d_##SUF(x + i + 4);      \
        lo += TERM(v0);                                                       \
        hi += TERM(v1);                                                       \
        i += 8;                                                               \
    }                                                                         \
    for (; i < n; i++) {                                                      \
        double v = (double)fn_ld_##SUF(x[i]);                                 \
        t += TERM(v);                                                         \
    }                                                                         \
    double total = fn_hsum(lo + hi) + t;                                      \
    if (!__builtin_isfinite(total)) {                                         \
        fn_v4d r0 = {0}, r1 = {0};                                            \
        t = 0.0;                                                              \
        for (i = 0; i + 8 <= n; i += 8) {                                     \
            fn_v4d v0 = fn_ld4d_##SUF(x + i), v1 = fn_ld4d_##SUF(x + i + 4);  \
            r0 += TERM(v0);                                                   \
            r1 += TERM(v1);                                                   \
        }                                                                     \
        for (; i < n; i++) {                                                  \
            double v = (double)fn_ld_##SUF(x[i]);                             \
            t += TERM(v);                                                     \
        }                                                                     \
        total = fn_hsum(r0 + r1) + t;                                         \
    }                                                                         \
    return total;                                                             \
}

#define FN_STATS_float(S, SUF)                                                \
FN_BLOCKSUM(S, SUF, sum, FN_TERM_ID, 0)                                       \
FN_BLOCKSUM(S, SUF, sumsq, FN_TERM_SQ, 1)                                     \
/* sum of (x - m) and of (x - m)^2 over x[0:n], m a float32 value (the       \
 * centre: m is rounded to float); float32 blocks flushed to float64 */       \
static inline void fn_dev_##SUF(const S *x, int64_t n, double m_,            \
                                double *sd, double *sdd)                      \
{                                                                             \
    float m = (float)m_;                                                      \
    fn_vf mv = fn_vsplat(m);                                                  \
    fn_v4d alo = {0}, ahi = {0}, blo = {0}, bhi = {0};                        \
    double ta = 0.0, tb = 0.0;                                                \
    int64_t i = 0;                                                            \
    for (; i + FN_SBLOCK <= n; i += FN_SBLOCK) {                              \
        fn_vf a[FN_N32] = {{0}}, b[FN_N32] = {{0}};                           \
        /* this second pass runs from cache: ask for the n values that       \
         * follow (the next run of a thread walking memory), one line per    \
         * 64 bytes, so that the first pass over them finds them on its way */\
        for (int j = 0; j < FN_SBLOCK; j += 64 / (int)sizeof(S))              \
            __builtin_prefetch(x + n + i + j, 0, 3);                          \
        for (int j = 0; j < FN_SBLOCK; j += 32)                               \
            for (int k = 0; k < FN_N32; k++) {                                \
                fn_vf d = fn_ldv_##SUF(x + i + j + k * FN_VL) - mv;           \
                a[k] += d;                                                    \
                b[k] += d * d;                                                \
            }                                                                 \
        fn_flush8(fn_fold32(a), &alo, &ahi);                                  \
        fn_flush8(fn_fold32(b), &blo, &bhi);                                  \
    }                                                                         \
    /* the rest (a short run, or the end of a long one), under FN_SBLOCK:     \
     * one float32 block of 16 lanes as fn_sum's, then the scalar loop's      \
     * float64 arithmetic, 8 values at a time in float64 lanes */             \
    if (i + 16 <= n) {                                                        \
        fn_vf a[FN_N16] = {{0}}, b[FN_N16] = {{0}};                           \
        for (int64_t j = i; j < n; j += 64 / (int64_t)sizeof(S))              \
            __builtin_prefetch(x + n + j, 0, 3);                              \
        for (; i + 16 <= n; i += 16)                                          \
            for (int k = 0; k < FN_N16; k++) {                                \
                fn_vf d = fn_ldv_##SUF(x + i + k * FN_VL) - mv;               \
                a[k] += d;                                                    \
                b[k] += d * d;                                                \
            }                                                                 \
        fn_flush8(fn_fold16(a), &alo, &ahi);                                  \
        fn_flush8(fn_fold16(b), &blo, &bhi);                                  \
    }                                                                         \
    double md = (double)m;                                                    \
    FN_DEV_REST(SUF)                                                          \
    for (; i < n; i++) {                                                      \
        double d = (double)fn_ld_##SUF(x[i]) - md;                            \
        ta += d;                                                              \
        tb += d * d;                                                          \
    }                                                                         \
    double a = fn_hsum(alo + ahi) + ta, b = fn_hsum(blo + bhi) + tb;          \
    if (!__builtin_isfinite(a) || !__builtin_isfinite(b)) {                   \
        fn_v4d mm = {m, m, m, m}, a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};     \
        ta = tb = 0.0;                                                        \
        i = 0;                                                                \
        FN_DEV8(SUF, mm, a0, a1, b0, b1)                                      \
        for (; i < n; i++) {                                                  \
            double d = (double)fn_ld_##SUF(x[i]) - (double)m;                 \
            ta += d;                                                          \
            tb += d * d;                                                      \
        }                                                                     \
        a = fn_hsum(a0 + a1) + ta;                                            \
        b = fn_hsum(b0 + b1) + tb;                                            \
    }                                                                         \
    *sd += a;                                                                 \
    *sdd += b;                                                                \
}                                                                             \
/* sum of dy and of dy * (x - m) over [0:n]: float32 blocks of FN_BLOCK      \
 * centred on mf = (float)m, flushed to float64, then corrected for the      \
 * centre (dy * (x - m) = dy * (x - mf) + (mf - m) * dy); a block whose      \
 * float32 sums are not finite is redone in float64. */                      \
static inline void fn_dot_##SUF(const S *x, const S *dy, int64_t n,          \
                                double m, double *sdy, double *sdyx)          \
{                                                                             \
    float mf = (float)m;                                                      \
    fn_vf mv = fn_vsplat(mf);                                                 \
    double ta = 0.0, tb = 0.0;                                                \
    int64_t i = 0;                                                            \
    for (; i + FN_BLOCK <= n; i += FN_BLOCK) {                                \
        fn_vf av[FN_N16] = {{0}}, bv[FN_N16] = {{0}};                         \
        for (int j = 0; j < FN_BLOCK; j += 16)                                \
            for (int k = 0; k < FN_N16; k++) {                                \
                fn_vf g = fn_ldv_##SUF(dy + i + j + k * FN_VL);               \
                av[k] += g;                                                   \
                bv[k] += g * (fn_ldv_##SUF(x + i + j + k * FN_VL) - mv);      \
            }                                                                 \
        double a = fn_hsum8(fn_fold16(av)), b = fn_hsum8(fn_fold16(bv));      \
        if (!__builtin_isfinite(a) || !__builtin_isfinite(b)) {               \
            a = b = 0.0;                                                      \
            for (int j = 0; j < FN_BLOCK; j++) {                              \
                double g = (double)fn_ld_##SUF(dy[i + j]);                    \
                a += g;                                                       \
                b += g * ((double)fn_ld_##SUF(x[i + j]) - (double)mf);        \
            }                                                                 \
        }                                                                     \
        ta += a;                                                              \
        tb += b;                                                              \
    }                                                                         \
    /* the rest: the scalar loop's float64 arithmetic, 8 values at a time in  \
     * float64 lanes, then one by one */                                      \
    {                                                                         \
        double md = (double)mf;                                               \
        fn_v4d a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};                        \
        FN_DOT_REST(SUF)                                                      \
        ta += fn_hsum(a0 + a1);                                               \
        tb += fn_hsum(b0 + b1);                                               \
    }                                                                         \
    for (; i < n; i++) {                                                      \
        double g = (double)fn_ld_##SUF(dy[i]);                                \
        ta += g;                                                              \
        tb += g * ((double)fn_ld_##SUF(x[i]) - (double)mf);                   \
    }                                                                         \
    *sdy += ta;                                                               \
    *sdyx += tb + ((double)mf != m && __builtin_isfinite(ta)                  \
                   ? ((double)mf - m) * ta : 0.0);                            \
}

/* --- statistics, double compute -------------------------------------- */
#define FN_STATS_double(S, SUF)                                               \
/* sum of x[0:n]^2 (RMSNorm's mean square) in 8 float64 lanes */              \
static inline double fn_sumsq_##SUF(const S *x, int64_t n)                    \
{                                                                             \
    fn_v4d r0 = {0}, r1 = {0};                                                \
    double t = 0.0;                                                           \
    int64_t i = 0;                                                            \
    for (; i + 8 <= n; i += 8) {                                              \
        fn_v4d v0 = fn_ld4d_##SUF(x + i), v1 = fn_ld4d_##SUF(x + i + 4);      \
        r0 += v0 * v0;                                                        \
        r1 += v1 * v1;                                                        \
    }                                                                         \
    for (; i < n; i++) t += x[i] * x[i];                                      \
    return fn_hsum(r0 + r1) + t;                                              \
}                                                                             \
/* sum of x[0:n] in float64 */                                                \
static inline double fn_sum_##SUF(const S *x, int64_t n)                      \
{                                                                             \
    fn_v4d a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                            \
    double t = 0.0;                                                           \
    int64_t i = 0;                                                            \
    for (; i + 16 <= n; i += 16) {                                            \
        a0 += fn_ld4d_##SUF(x + i);                                           \
        a1 += fn_ld4d_##SUF(x + i + 4);                                       \
        a2 += fn_ld4d_##SUF(x + i + 8);                                       \
        a3 += fn_ld4d_##SUF(x + i + 12);                                      \
    }                                                                         \
    for (; i < n; i++) t += (double)x[i];                                     \
    return fn_hsum((a0 + a2) + (a1 + a3)) + t;                                \
}                                                                             \
/* sum of (x - m) and of (x - m)^2 over x[0:n] in float64 */                  \
static inline void fn_dev_##SUF(const S *x, int64_t n, double m,              \
                                double *sd, double *sdd)                      \
{                                                                             \
    fn_v4d a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};                            \
    fn_v4d mv = {m, m, m, m};                                                 \
    double ta = 0.0, tb = 0.0;                                                \
    int64_t i = 0;                                                            \
    FN_DEV8(SUF, mv, a0, a1, b0, b1)                                          \
    for (; i < n; i++) {                                                      \
        double d = (double)x[i] - m;                                          \
        ta += d;                                                              \
        tb += d * d;                                                          \
    }                                                                         \
    *sd += fn_hsum(a0 + a1) + ta;                                             \
    *sdd += fn_hsum(b0 + b1) + tb;                                            \
}                                                                             \
/* sum of dy and of dy * (x - m) over [0:n] in float64 */                     \
static inline void fn_dot_##SUF(const S *x, const S *dy, int64_t n, double m, \
                                double *sdy, double *sdyx)                    \
{                                                                             \
    fn_v4d a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};                            \
    fn_v4d mv = {m, m, m, m};                                                 \
    double ta = 0.0, tb = 0.0;                                                \
    int64_t i = 0;                                                            \
    FN_DOT8(SUF, mv, a0, a1, b0, b1)                                          \
    for (; i < n; i++) {                                                      \
        double g = (double)dy[i];                                             \
        ta += g;                                                              \
        tb += g * ((double)x[i] - m);                                         \
    }                                                                         \
    *sdy += fn_hsum(a0 + a1) + ta;                                            \
    *sdyx += fn_hsum(b0 + b1) + tb;                                           \
}

/* --- elementwise passes, double compute: plain loops ------------------- */
#define FN_ELEM_double(S, SUF) FN_ELEM_SCALAR(S, SUF, double)
#define FN_ELEM_SCALAR(S, SUF, T)                                             \
/* y = (x - c) * s + t: normalise + affine around a centre c close to the     \
 * mean, so that x - c cancels exactly and no large product is rounded;       \
 * c, s, t are rounded to T once */                                           \
static inline void fn_affine_##SUF(const S *x, S *y, int64_t n,               \
                                   double c_, double s_, double t_)           \
{                                                                             \
    T c = (T)c_, s = (T)s_, t = (T)t_;                                        \
    for (int64_t i = 0; i < n; i++)                                           \
        y[i] = fn_st_##SUF((fn_ld_##SUF(x[i]) - c) * s + t);                  \
}                                                                             \
/* dx = a * dy - b * (x - c) - k: input gradient with batch statistics */     \
static inline void fn_bwd_##SUF(const S *x, const S *dy, S *dx, int64_t n,    \
                                double c_, double a_, double b_, double k_)   \
{                                                                             \
    T c = (T)c_, a = (T)a_, b = (T)b_, k = (T)k_;                             \
    for (int64_t i = 0; i < n; i++)                                           \
        dx[i] = fn_st_##SUF(a * fn_ld_##SUF(dy[i])                            \
                            - b * (fn_ld_##SUF(x[i]) - c) - k);               \
}                                                                             \
/* fn_bwd, also prefetching px[0:n] and py[0:n] (what the calling thread      \
 * reads next) while this run is served from cache */                         \
static inline void fn_bwd_pf_##SUF(const S *x, const S *dy, S *dx, int64_t n, \
                                   double c_, double a_, double b_,           \
                                   double k_, const S *px, const S *py)       \
{                                                                             \
    T c = (T)c_, a = (T)a_, b = (T)b_, k = (T)k_;                             \
    const int64_t step = 64 / sizeof(S);                                      \
    for (int64_t i0 = 0; i0 < n; i0 += step) {                                \
        int64_t i1 = i0 + step < n ? i0 + step : n;                           \
        __builtin_prefetch(px + i0, 0, 3);                                    \
        __builtin_prefetch(py + i0, 0, 3);                                    \
        for (int64_t i = i0; i < i1; i++)                                     \
            dx[i] = fn_st_##SUF(a * fn_ld_##SUF(dy[i])                        \
                                - b * (fn_ld_##SUF(x[i]) - c) - k);           \
    }                                                                         \
}                                                                             \
/* dx = a * dy: input gradient with fixed (running) statistics */             \
static inline void fn_scale_##SUF(const S *dy, S *dx, int64_t n, double a_)   \
{                                                                             \
    T a = (T)a_;                                                              \
    for (int64_t i = 0; i < n; i++) dx[i] = fn_st_##SUF(a * fn_ld_##SUF(dy[i]));\
}                                                                             \
static inline void fn_raffine_##SUF(const S *x, S *y, const void *e_,         \
                                    int64_t W, int64_t j0, int64_t n)         \
{                                                                             \
    const T *c = (const T *)e_ + j0, *s = c + W, *t = c + 2 * W;              \
    for (int64_t j = 0; j < n; j++)                                           \
        y[j] = fn_st_##SUF((fn_ld_##SUF(x[j]) - c[j]) * s[j] + t[j]);         \
}                                                                             \
static inline void fn_rbwd_##SUF(const S *x, const S *dy, S *dx,              \
                                 const void *e_, int64_t W, int64_t j0,       \
                                 int64_t n)                                   \
{                                                                             \
    const T *c = (const T *)e_ + j0, *a = c + W, *b = c + 2 * W, *k = c + 3 * W;\
    for (int64_t j = 0; j < n; j++)                                           \
        dx[j] = fn_st_##SUF(a[j] * fn_ld_##SUF(dy[j])                         \
                            - b[j] * (fn_ld_##SUF(x[j]) - c[j]) - k[j]);      \
}                                                                             \
static inline void fn_rscale_##SUF(const S *dy, S *dx, const void *e_,        \
                                   int64_t W, int64_t j0, int64_t n)          \
{                                                                             \
    const T *a = (const T *)e_ + W + j0;                                      \
    for (int64_t j = 0; j < n; j++) dx[j] = fn_st_##SUF(a[j] * fn_ld_##SUF(dy[j]));\
}

/* --- elementwise passes, float compute: FN_VL lanes at a time ---------- */
/* The per-element arithmetic of the scalar loops (so the same bits for
 * float32), over float vectors, so that 16-bit storage converts FN_VL values
 * at a time on load and on store. */
#define FN_ELEM_float(S, SUF)                                                 \
static inline void fn_affine_##SUF(const S *x, S *y, int64_t n,               \
                                   double c_, double s_, double t_)           \
{                                                                             \
    float c = (float)c_, s = (float)s_, t = (float)t_;                        \
    fn_vf cv = fn_vsplat(c), sv = fn_vsplat(s), tv = fn_vsplat(t);            \
    int64_t i = 0;                                                            \
    for (; i + FN_VL <= n; i += FN_VL)                                        \
        fn_stv_##SUF(y + i, (fn_ldv_##SUF(x + i) - cv) * sv + tv);            \
    for (; i < n; i++) y[i] = fn_st_##SUF((fn_ld_##SUF(x[i]) - c) * s + t);   \
}                                                                             \
static inline void fn_bwd_##SUF(const S *x, const S *dy, S *dx, int64_t n,    \
                                double c_, double a_, double b_, double k_)   \
{                                                                             \
    float c = (float)c_, a = (float)a_, b = (float)b_, k = (float)k_;         \
    fn_vf cv = fn_vsplat(c), av = fn_vsplat(a);                               \
    fn_vf bv = fn_vsplat(b), kv = fn_vsplat(k);                               \
    int64_t i = 0;                                                            \
    for (; i + FN_VL <= n; i += FN_VL)                                        \
        fn_stv_##SUF(dx + i, av * fn_ldv_##SUF(dy + i)                        \
                     - bv * (fn_ldv_##SUF(x + i) - cv) - kv);                 \
    for (; i < n; i++)                                                        \
        dx[i] = fn_st_##SUF(a * fn_ld_##SUF(dy[i])                            \
                            - b * (fn_ld_##SUF(x[i]) - c) - k);               \
}                                                                             \
/* fn_bwd, also prefetching px[0:n] and py[0:n] (what the calling thread      \
 * reads next) while this run is served from cache */                         \
static inline void fn_bwd_pf_##SUF(const S *x, const S *dy, S *dx, int64_t n, \
                                   double c_, double a_, double b_,           \
                                   double k_, const S *px, const S *py)       \
{                                                                             \
    const int64_t step = 64 / sizeof(S);                                      \
    for (int64_t i0 = 0; i0 < n; i0 += step) {                                \
        int64_t i1 = i0 + step < n ? i0 + step : n;                           \
        __builtin_prefetch(px + i0, 0, 3);                                    \
        __builtin_prefetch(py + i0, 0, 3);                                    \
        fn_bwd_##SUF(x + i0, dy + i0, dx + i0, i1 - i0, c_, a_, b_, k_);      \
    }                                                                         \
}                                                                             \
static inline void fn_scale_##SUF(const S *dy, S *dx, int64_t n, double a_)   \
{                                                                             \
    float a = (float)a_;                                                      \
    fn_vf av = fn_vsplat(a);                                                  \
    int64_t i = 0;                                                            \
    for (; i + FN_VL <= n; i += FN_VL)                                        \
        fn_stv_##SUF(dx + i, av * fn_ldv_##SUF(dy + i));                      \
    for (; i < n; i++) dx[i] = fn_st_##SUF(a * fn_ld_##SUF(dy[i]));           \
}                                                                             \
static inline void fn_raffine_##SUF(const S *x, S *y, const void *e_,         \
                                    int64_t W, int64_t j0, int64_t n)         \
{                                                                             \
    const float *c = (const float *)e_ + j0, *s = c + W, *t = c + 2 * W;      \
    int64_t j = 0;                                                            \
    for (; j + FN_VL <= n; j += FN_VL)                                        \
        fn_stv_##SUF(y + j, (fn_ldv_##SUF(x + j) - fn_vload(c + j))           \
                     * fn_vload(s + j) + fn_vload(t + j));                    \
    for (; j < n; j++)                                                        \
        y[j] = fn_st_##SUF((fn_ld_##SUF(x[j]) - c[j]) * s[j] + t[j]);         \
}                                                                             \
static inline void fn_rbwd_##SUF(const S *x, const S *dy, S *dx,              \
                                 const void *e_, int64_t W, int64_t j0,       \
                                 int64_t n)                                   \
{                                                                             \
    const float *c = (const float *)e_ + j0, *a = c + W, *b = c + 2 * W;      \
    const float *k = c + 3 * W;                                               \
    int64_t j = 0;                                                            \
    for (; j + FN_VL <= n; j += FN_VL)                                        \
        fn_stv_##SUF(dx + j, fn_vload(a + j) * fn_ldv_##SUF(dy + j)           \
                     - fn_vload(b + j) * (fn_ldv_##SUF(x + j) - fn_vload(c + j))\
                     - fn_vload(k + j));                                      \
    for (; j < n; j++)                                                        \
        dx[j] = fn_st_##SUF(a[j] * fn_ld_##SUF(dy[j])                         \
                            - b[j] * (fn_ld_##SUF(x[j]) - c[j]) - k[j]);      \
}                                                                             \
static inline void fn_rscale_##SUF(const S *dy, S *dx, const void *e_,        \
                                   int64_t W, int64_t j0, int64_t n)          \
{                                                                             \
    const float *a = (const float *)e_ + W + j0;                              \
    int64_t j = 0;                                                            \
    for (; j + FN_VL <= n; j += FN_VL)                                        \
        fn_stv_##SUF(dx + j, fn_vload(a + j) * fn_ldv_##SUF(dy + j));         \
    for (; j < n; j++) dx[j] = fn_st_##SUF(a[j] * fn_ld_##SUF(dy[j]));        \
}

/* Row loops for small planes: element j of a row belongs to its own column,
 * with per-column accumulators (double) and coefficients (T).  These
 * vectorise across the contiguous row, whatever the plane length. */
#define FN_ROWS(S, SUF, T)                                                    \
/* rows r = 0 .. rows-1 of x (row r at x + r * stride), each column's         \
 * float64 accumulator taking them in row order; 4 rows at a time with the    \
 * accumulator in a register (one load and store of it per 4 rows), the       \
 * rest one by one: the same additions either way */                          \
static inline void fn_rsum_##SUF(const S *x, int64_t stride, int64_t rows,    \
                                 double *acc, int64_t n)                      \
{                                                                             \
    int64_t r = 0;                                                            \
    for (; r + 4 <= rows; r += 4)                                             \
        for (int64_t j = 0; j < n; j++) {                                     \
            double s = acc[j];                                                \
            for (int q = 0; q < 4; q++)                                       \
                s += (double)fn_ld_##SUF(x[(r + q) * stride + j]);            \
            acc[j] = s;                                                       \
        }                                                                     \
    for (; r < rows; r++)                                                     \
        for (int64_t j = 0; j < n; j++)                                       \
            acc[j] += (double)fn_ld_##SUF(x[r * stride + j]);                 \
}                                                                             \
static inline void fn_rdev_##SUF(const S *x, int64_t stride, int64_t rows,    \
                                 const double *m, double *a, double *b,       \
                                 int64_t n)                                   \
{                                                                             \
    int64_t r = 0;                                                            \
    for (; r + 4 <= rows; r += 4)                                             \
        for (int64_t j = 0; j < n; j++) {                                     \
            double sa = a[j], sb = b[j];                                      \
            for (int q = 0; q < 4; q++) {                                     \
                double d = (double)fn_ld_##SUF(x[(r + q) * stride + j]) - m[j];\
                sa += d;                                                      \
                sb += d * d;                                                  \
            }                                                                 \
            a[j] = sa;                                                        \
            b[j] = sb;                                                        \
        }                                                                     \
    for (; r < rows; r++)                                                     \
        for (int64_t j = 0; j < n; j++) {                                     \
            double d = (double)fn_ld_##SUF(x[r * stride + j]) - m[j];         \
            a[j] += d;                                                        \
            b[j] += d * d;                                                    \
        }                                                                     \
}                                                                             \
static inline void fn_rdot_##SUF(const S *x, const S *dy, int64_t stride,     \
                                 int64_t rows, const double *m, double *a,    \
                                 double *b, int64_t n)                        \
{                                                                             \
    int64_t r = 0;                                                            \
    for (; r + 4 <= rows; r += 4)                                             \
        for (int64_t j = 0; j < n; j++) {                                     \
            double sa = a[j], sb = b[j];                                      \
            for (int q = 0; q < 4; q++) {                                     \
                int64_t o = (r + q) * stride + j;                             \
                double g = (double)fn_ld_##SUF(dy[o]);                        \
                sa += g;                                                      \
                sb += g * ((double)fn_ld_##SUF(x[o]) - m[j]);                 \
            }                                                                 \
            a[j] = sa;                                                        \
            b[j] = sb;                                                        \
        }                                                                     \
    for (; r < rows; r++)                                                     \
        for (int64_t j = 0; j < n; j++) {                                     \
            double g = (double)fn_ld_##SUF(dy[r * stride + j]);               \
            a[j] += g;                                                        \
            b[j] += g * ((double)fn_ld_##SUF(x[r * stride + j]) - m[j]);      \
        }                                                                     \
}                                                                             \
/* Per-column coefficients of rows mode: e holds 4 rows of W = C * L values   \

 * of T, row r element c * L + l = k_r[c] rounded to T (fn_expand4); the     \
 * row loops read columns [j0, j0 + n) of them. */                            \
static inline void fn_expand4_##SUF(const S *tag, const double *k0,           \
                                    const double *k1, const double *k2,       \
                                    const double *k3, int64_t C, int64_t L,   \
                                    void *e_)                                 \
{                                                                             \
    T *e = (T *)e_;                                                           \
    int64_t W = C * L;                                                        \
    (void)tag;                                                                \
    for (int64_t c = 0; c < C; c++)                                           \
        for (int64_t l = 0; l < L; l++) {                                     \
            int64_t j = c * L + l;                                            \
            e[j] = (T)k0[c];                                                  \
            e[W + j] = (T)k1[c];                                              \
            e[2 * W + j] = (T)k2[c];                                          \
            e[3 * W + j] = (T)k3[c];                                          \
        }                                                                     \
}

#define FN_INST_CHANNELS(a, S, SUF, T) \
    FN_STATS_##T(S, SUF) FN_ELEM_##T(S, SUF) FN_ROWS(S, SUF, T)
FN_STORAGE_TYPES(FN_INST_CHANNELS, _)

#define fn_sum(x, n) FN_PICK(fn_sum, x)(x, n)
#define fn_dev(x, n, m, sd, sdd) FN_PICK(fn_dev, x)(x, n, m, sd, sdd)
#define fn_sumsq(x, n) FN_PICK(fn_sumsq, x)(x, n)
#define fn_dot(x, dy, n, m, sdy, sdyx) FN_PICK(fn_dot, x)(x, dy, n, m, sdy, sdyx)
#define fn_affine(x, y, n, c, s, t) FN_PICK(fn_affine, x)(x, y, n, c, s, t)
#define fn_bwd(x, dy, dx, n, c, a, b, k) FN_PICK(fn_bwd, x)(x, dy, dx, n, c, a, b, k)
#define fn_bwd_pf(x, dy, dx, n, c, a, b, k, px, py) \
    FN_PICK(fn_bwd_pf, x)(x, dy, dx, n, c, a, b, k, px, py)
#define fn_scale(dy, dx, n, a) FN_PICK(fn_scale, dy)(dy, dx, n, a)
#define fn_rsum(x, stride, rows, acc, n) FN_PICK(fn_rsum, x)(x, stride, rows, acc, n)
#define fn_rdev(x, stride, rows, m, a, b, n) FN_PICK(fn_rdev, x)(x, stride, rows, m, a, b, n)
#define fn_rdot(x, dy, stride, rows, m, a, b, n) \
    FN_PICK(fn_rdot, x)(x, dy, stride, rows, m, a, b, n)
#define fn_expand4(tag, k0, k1, k2, k3, C, L, e) \
    FN_PICK(fn_expand4, tag)(tag, k0, k1, k2, k3, C, L, e)
#define fn_raffine(x, y, e, W, j0, n) FN_PICK(fn_raffine, x)(x, y, e, W, j0, n)
#define fn_rbwd(x, dy, dx, e, W, j0, n) FN_PICK(fn_rbwd, x)(x, dy, dx, e, W, j0, n)
#define fn_rscale(dy, dx, e, W, j0, n) FN_PICK(fn_rscale, dy)(dy, dx, e, W, j0, n)
#endif
