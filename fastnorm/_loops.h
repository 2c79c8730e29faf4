/* Inner loops of the fastnorm kernels, one contiguous run of elements each.
 *
 * Each loop is written twice (float, double) by the FN_LOOPS macro.  Sums are
 * carried in FN_LANES independent float64 accumulators that are combined in a
 * fixed order at the end: the compiler can keep them in vector registers
 * without -ffast-math, and the result depends only on the data and the length
 * of the run, never on threads or alignment.
 *
 * None of these functions allocates, checks its arguments or touches Python.
 * Output pointers may alias input pointers exactly (in-place use); they are
 * therefore not declared restrict.
 */
#ifndef FASTNORM_LOOPS_H
#define FASTNORM_LOOPS_H
#include <stdint.h>

#define FN_LANES 8

static inline double fn_combine(const double *acc)
{
    /* fixed pairwise order */
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) +
           ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

#define FN_LOOPS(T, SUF)                                                      \
/* sum of x[0:n] in float64 */                                                \
static inline double fn_sum_##SUF(const T *x, int64_t n)                      \
{                                                                             \
    double acc[FN_LANES] = {0};                                               \
    int64_t i = 0;                                                            \
    for (; i + FN_LANES <= n; i += FN_LANES)                                  \
        for (int j = 0; j < FN_LANES; j++) acc[j] += (double)x[i + j];        \
    for (int j = 0; i < n; i++, j++) acc[j] += (double)x[i];                  \
    return fn_combine(acc);                                                   \
}                                                                             \
/* sum of (x - m) and of (x - m)^2 over x[0:n] in float64 */                  \
static inline void fn_dev_##SUF(const T *x, int64_t n, double m,              \
                                double *sd, double *sdd)                      \
{                                                                             \
    double a[FN_LANES] = {0}, b[FN_LANES] = {0};                              \
    int64_t i = 0;                                                            \
    for (; i + FN_LANES <= n; i += FN_LANES)                                  \
        for (int j = 0; j < FN_LANES; j++) {                                  \
            double d = (double)x[i + j] - m;                                  \
            a[j] += d;                                                        \
            b[j] += d * d;                                                    \
        }                                                                     \
    for (int j = 0; i < n; i++, j++) {                                        \
        double d = (double)x[i] - m;                                          \
        a[j] += d;                                                            \
        b[j] += d * d;                                                        \
    }                                                                         \
    *sd += fn_combine(a);                                                     \
    *sdd += fn_combine(b);                                                    \
}                                                                             \
/* sum of dy and of dy * (x - m) over [0:n] in float64 */                     \
static inline void fn_dot_##SUF(const T *x, const T *dy, int64_t n, double m, \
                                double *sdy, double *sdyx)                    \
{                                                                             \
    double a[FN_LANES] = {0}, b[FN_LANES] = {0};                              \
    int64_t i = 0;                                                            \
    for (; i + FN_LANES <= n; i += FN_LANES)                                  \
        for (int j = 0; j < FN_LANES; j++) {                                  \
            double g = (double)dy[i + j];                                     \
            a[j] += g;                                                        \
            b[j] += g * ((double)x[i + j] - m);                               \
        }                                                                     \
    for (int j = 0; i < n; i++, j++) {                                        \
        double g = (double)dy[i];                                             \
        a[j] += g;                                                            \
        b[j] += g * ((double)x[i] - m);                                       \
    }                                                                         \
    *sdy += fn_combine(a);                                                    \
    *sdyx += fn_combine(b);                                                   \
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

FN_LOOPS(float, f32)
FN_LOOPS(double, f64)
FN_ROW_LOOPS(float, f32)
FN_ROW_LOOPS(double, f64)

#endif
