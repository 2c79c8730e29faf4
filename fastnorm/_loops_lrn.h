/* Inner loops of the local response normalisation kernel
 * (_kernels_lrn.pxi), in float64 for every storage type: each output
 * element is one double expression rounded once to storage. */
#ifndef FASTNORM_LOOPS_LRN_H
#define FASTNORM_LOOPS_LRN_H
#include "_storage.h"

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

/* Columns per strip at most (the kernel's strips, _kernels_lrn.pxi): each
 * loop reads a strip's row of x (and dy) into a double row on the stack
 * (fn_ld_row), then computes over doubles, vectorised whatever the storage
 * type, and rounds a row of results to storage at once (fn_std_row). */
#define FN_LRN_STRIP 256

#define FN_LRN_LOOPS(a, T, SUF, TC)                                            \
/* y = x * (k + alpha / size * S)^-beta; den (C, ln) receives the base */     \
static inline void fn_lrn_fwd_##SUF(const T *x, T *y, int64_t C, int64_t L,   \
                                    int64_t l0, int64_t ln, int64_t size,     \
                                    double alpha, double beta, double k,      \
                                    double *den, double *pre, double *suf)    \
{                                                                             \
    double xr[FN_LRN_STRIP];                                                  \
    for (int64_t c = 0; c < C; c++) {                                         \
        fn_ld_row_##SUF(x + c * L + l0, xr, ln);                              \
        for (int64_t l = 0; l < ln; l++) den[c * ln + l] = xr[l] * xr[l];     \
    }                                                                         \
    fn_window_sums(den, C, ln, size, size / 2, (size - 1) / 2, pre, suf);     \
    const double ak = alpha / (double)size;                                   \
    for (int64_t c = 0; c < C; c++) {                                         \
        double *dc = den + c * ln;                                            \
        if (y) {                                                              \
            /* the row in double, then rounded to storage at once */          \
            fn_ld_row_##SUF(x + c * L + l0, xr, ln);                          \
            for (int64_t l = 0; l < ln; l++)                                  \
                dc[l] = xr[l] * fn_pow_neg(k + ak * dc[l], beta);             \
            fn_std_row_##SUF(dc, y + c * L + l0, ln);                         \
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
    double xr[FN_LRN_STRIP], gr[FN_LRN_STRIP];                                \
    for (int64_t c = 0; c < C; c++) {                                         \
        fn_ld_row_##SUF(x + c * L + l0, xr, ln);                              \
        fn_ld_row_##SUF(dy + c * L + l0, gr, ln);                             \
        for (int64_t l = 0; l < ln; l++) {                                    \
            double d = den[c * ln + l], p = fn_pow_neg(d, beta);              \
            t[c * ln + l] = gr[l] * xr[l] * (p / d);                          \
            den[c * ln + l] = p;                                              \
        }                                                                     \
    }                                                                         \
    fn_window_sums(t, C, ln, size, (size - 1) / 2, size / 2, pre, suf);       \
    const double f = 2.0 * alpha * beta / (double)size;                       \
    for (int64_t c = 0; c < C; c++) {                                         \
        double *tc = t + c * ln;                                              \
        fn_ld_row_##SUF(x + c * L + l0, xr, ln);                              \
        fn_ld_row_##SUF(dy + c * L + l0, gr, ln);                             \
        for (int64_t l = 0; l < ln; l++)                                      \
            tc[l] = gr[l] * den[c * ln + l] - f * xr[l] * tc[l];              \
        fn_std_row_##SUF(tc, dx + c * L + l0, ln);                            \
    }                                                                         \
}

FN_STORAGE_TYPES(FN_LRN_LOOPS, _)

#define fn_lrn_fwd(x, y, C, L, l0, ln, size, alpha, beta, k, den, pre, suf) \
    FN_PICK(fn_lrn_fwd, x)(x, y, C, L, l0, ln, size, alpha, beta, k, den, pre, suf)
#define fn_lrn_bwd(x, dy, dx, C, L, l0, ln, size, alpha, beta, k, den, t, pre, suf) \
    FN_PICK(fn_lrn_bwd, x)(x, dy, dx, C, L, l0, ln, size, alpha, beta, k, den, t, pre, suf)
#endif
