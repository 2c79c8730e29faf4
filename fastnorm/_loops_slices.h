/* Inner loops of the row and slice kernels (_kernels_slices.pxi): rows
 * normalised over their own elements with a weight and bias per column
 * (LayerNorm, RMSNorm), and the blocks of rows of their fused backward.
 * Weights and biases are arrays of the compute type T; per-row scalars come
 * as doubles and are rounded to T once.
 *
 * The fused row backward (fn_rowsbwd) differs by compute type:
 *   float:  float32 vectors over the row, float32 column sums over a block
 *           of rows in scratch (fn_rows_scratch bytes per thread), flushed
 *           to float64; a column whose float32 sum is not finite is summed
 *           again in float64;
 *   double: float64 row sums in pieces of `unit`, column sums added to the
 *           block's float64 partials directly (no scratch).
 */
#ifndef FASTNORM_LOOPS_SLICES_H
#define FASTNORM_LOOPS_SLICES_H
#include "_storage.h"
#include "_loops_channels.h"

#define FN_LAYER_double(S, SUF) FN_LAYER_SCALAR(S, SUF, double)
#define FN_LAYER_SCALAR(S, SUF, T)                                            \
/* y = ((x - c) * s + t) * w + b (b may be NULL) */                           \
static inline void fn_lnaff_##SUF(const S *x, S *y, int64_t n, double c_,     \
                                  double s_, double t_, const void *w_,       \
                                  const void *b_)                             \
{                                                                             \
    T c = (T)c_, s = (T)s_, t = (T)t_;                                        \
    const T *w = (const T *)w_, *b = (const T *)b_;                           \
    if (b)                                                                    \
        for (int64_t j = 0; j < n; j++)                                       \
            y[j] = fn_st_##SUF(((fn_ld_##SUF(x[j]) - c) * s + t) * w[j] + b[j]);\
    else                                                                      \
        for (int64_t j = 0; j < n; j++)                                       \
            y[j] = fn_st_##SUF(((fn_ld_##SUF(x[j]) - c) * s + t) * w[j]);     \
}                                                                             \
/* dx = a * w * dy - q * (x - c) - k */                                       \
static inline void fn_lnbwd_##SUF(const S *x, const S *dy, S *dx, int64_t n,  \
                                  const void *w_, double c_, double a_,       \
                                  double q_, double k_)                       \
{                                                                             \
    T c = (T)c_, a = (T)a_, q = (T)q_, k = (T)k_;                             \
    const T *w = (const T *)w_;                                               \
    for (int64_t j = 0; j < n; j++)                                           \
        dx[j] = fn_st_##SUF(a * w[j] * fn_ld_##SUF(dy[j])                     \
                            - q * (fn_ld_##SUF(x[j]) - c) - k);               \
}


/* float compute: the same arithmetic over float vectors (FN_VL lanes) */
#define FN_LAYER_float(S, SUF)                                                \
static inline void fn_lnaff_##SUF(const S *x, S *y, int64_t n, double c_,     \
                                  double s_, double t_, const void *w_,       \
                                  const void *b_)                             \
{                                                                             \
    float c = (float)c_, s = (float)s_, t = (float)t_;                        \
    fn_vf cv = fn_vsplat(c), sv = fn_vsplat(s), tv = fn_vsplat(t);            \
    const float *w = (const float *)w_, *b = (const float *)b_;               \
    int64_t j = 0;                                                            \
    if (b) {                                                                  \
        for (; j + FN_VL <= n; j += FN_VL)                                    \
            fn_stv_##SUF(y + j, ((fn_ldv_##SUF(x + j) - cv) * sv + tv)        \
                         * fn_vload(w + j) + fn_vload(b + j));                \
        for (; j < n; j++)                                                    \
            y[j] = fn_st_##SUF(((fn_ld_##SUF(x[j]) - c) * s + t) * w[j] + b[j]);\
    } else {                                                                  \
        for (; j + FN_VL <= n; j += FN_VL)                                    \
            fn_stv_##SUF(y + j, ((fn_ldv_##SUF(x + j) - cv) * sv + tv)        \
                         * fn_vload(w + j));                                  \
        for (; j < n; j++)                                                    \
            y[j] = fn_st_##SUF(((fn_ld_##SUF(x[j]) - c) * s + t) * w[j]);     \
    }                                                                         \
}                                                                             \
static inline void fn_lnbwd_##SUF(const S *x, const S *dy, S *dx, int64_t n,  \
                                  const void *w_, double c_, double a_,       \
                                  double q_, double k_)                       \
{                                                                             \
    float c = (float)c_, a = (float)a_, q = (float)q_, k = (float)k_;         \
    fn_vf cv = fn_vsplat(c), av = fn_vsplat(a);                               \
    fn_vf qv = fn_vsplat(q), kv = fn_vsplat(k);                               \
    const float *w = (const float *)w_;                                       \
    int64_t j = 0;                                                            \
    for (; j + FN_VL <= n; j += FN_VL)                                        \
        fn_stv_##SUF(dx + j, av * fn_vload(w + j) * fn_ldv_##SUF(dy + j)      \
                     - qv * (fn_ldv_##SUF(x + j) - cv) - kv);                 \
    for (; j < n; j++)                                                        \
        dx[j] = fn_st_##SUF(a * w[j] * fn_ld_##SUF(dy[j])                     \
                            - q * (fn_ld_##SUF(x[j]) - c) - k);               \
}

#define FN_LNSUMS(S, SUF, T)                                                  \
/* One row piece of the backward sums, in float64, with d = x - m:            \
 * *A += sum(dy * w), *B += sum(dy * w * d)          (row sums)               \
 * c1[j] += dy, c2[j] += dy * d * inv                (column sums) */         \
static inline void fn_lnsums_##SUF(const S *x, const S *dy, const void *w_,   \
                                   int64_t n, double m, double inv,           \
                                   double *A, double *B, double *c1,          \
                                   double *c2)                                \
{                                                                             \
    const T *w = (const T *)w_;                                               \
    fn_v4d a0 = {0}, b0 = {0};                                                \
    fn_v4d mv = {m, m, m, m}, iv = {inv, inv, inv, inv};                      \
    double ta = 0.0, tb = 0.0;                                                \
    int64_t j = 0;                                                            \
    for (; j + 4 <= n; j += 4) {                                              \
        fn_v4d g = fn_ld4d_##SUF(dy + j), d = fn_ld4d_##SUF(x + j) - mv;      \
        fn_v4d gw = g * fn_load4_##T(w + j);                                  \
        fn_v4d s1 = fn_load4_double(c1 + j) + g;                              \
        fn_v4d s2 = fn_load4_double(c2 + j) + g * d * iv;                     \
        a0 += gw;                                                             \
        b0 += gw * d;                                                         \
        __builtin_memcpy(c1 + j, &s1, sizeof s1);                             \
        __builtin_memcpy(c2 + j, &s2, sizeof s2);                             \
    }                                                                         \
    for (; j < n; j++) {                                                      \
        double g = (double)fn_ld_##SUF(dy[j]);                                \
        double d = (double)fn_ld_##SUF(x[j]) - m, gw = g * (double)w[j];      \
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
 * (RMSNorm, rms != 0: m = 0 and no A term).  pf: prefetch x[n:2n] and
 * dy[n:2n] during the dx pass. */
#define FN_LNROW_float(S, SUF)                                                \
static inline void fn_lnrow_##SUF(const S *x, const S *dy, S *dx,             \
                                  const float *w, int64_t n, double m,        \
                                  double inv, int rms, float *c1, float *c2,  \
                                  int pf)                                     \
{                                                                             \
    float mf = (float)m, df = (float)(m - (double)mf), iv = (float)inv;       \
    fn_vf mv = fn_vsplat(mf), dv = fn_vsplat(df), ivv = fn_vsplat(iv);        \
    double A = 0.0, B = 0.0;                                                  \
    int64_t i = 0;                                                            \
    for (; i + FN_BLOCK <= n; i += FN_BLOCK) {                                \
        /* two 8-lane accumulators each: independent add chains */            \
        fn_vf av[FN_N16] = {{0}}, bv[FN_N16] = {{0}};                         \
        for (int j = 0; j < FN_BLOCK; j += 16)                                \
            for (int k = 0; k < FN_N16; k++) {                                \
                int64_t o = i + j + k * FN_VL;                                \
                fn_vf g = fn_ldv_##SUF(dy + o);                               \
                fn_vf xh = ((fn_ldv_##SUF(x + o) - mv) - dv) * ivv;           \
                fn_vf gw = g * fn_vload(w + o);                               \
                fn_vf s1 = fn_vload(c1 + o) + g;                              \
                fn_vf s2 = fn_vload(c2 + o) + g * xh;                         \
                av[k] += gw;                                                  \
                bv[k] += gw * xh;                                             \
                __builtin_memcpy(c1 + o, &s1, sizeof s1);                     \
                __builtin_memcpy(c2 + o, &s2, sizeof s2);                     \
            }                                                                 \
        double ba = fn_hsum8(fn_fold16(av)), bb = fn_hsum8(fn_fold16(bv));    \
        if (!__builtin_isfinite(ba) || !__builtin_isfinite(bb)) {             \
            ba = bb = 0.0;                                                    \
            for (int j = 0; j < FN_BLOCK; j++) {                              \
                double gw = (double)fn_ld_##SUF(dy[i + j]) * (double)w[i + j];\
                ba += gw;                                                     \
                bb += gw * (((double)fn_ld_##SUF(x[i + j]) - m) * inv);       \
            }                                                                 \
        }                                                                     \
        A += ba;                                                              \
        B += bb;                                                              \
    }                                                                         \
    for (; i < n; i++) {                                                      \
        float g = fn_ld_##SUF(dy[i]), xh = ((fn_ld_##SUF(x[i]) - mf) - df) * iv;\
        double gw = (double)fn_ld_##SUF(dy[i]) * (double)w[i];                \
        A += gw;                                                              \
        B += gw * (((double)fn_ld_##SUF(x[i]) - m) * inv);                    \
        c1[i] += g;                                                           \
        c2[i] += g * xh;                                                      \
    }                                                                         \
    float q = (float)(inv * B / (double)n);                                   \
    float k = rms ? 0.0f : (float)(inv * A / (double)n);                      \
    fn_vf qv = fn_vsplat(q), kv = fn_vsplat(k);                               \
    int64_t j = 0;                                                            \
    for (; j + FN_VL <= n; j += FN_VL) {                                      \
        if (pf) {                                                             \
            /* this pass runs from L1: fetch the next row's x and dy */       \
            __builtin_prefetch(x + n + j, 0, 3);                              \
            __builtin_prefetch(dy + n + j, 0, 3);                             \
        }                                                                     \
        fn_vf xh = ((fn_ldv_##SUF(x + j) - mv) - dv) * ivv;                   \
        fn_stv_##SUF(dx + j, ivv * fn_vload(w + j) * fn_ldv_##SUF(dy + j)     \
                     - qv * xh - kv);                                         \
    }                                                                         \
    for (; j < n; j++) {                                                      \
        float xh = ((fn_ld_##SUF(x[j]) - mf) - df) * iv;                      \
        dx[j] = fn_st_##SUF(iv * w[j] * fn_ld_##SUF(dy[j]) - q * xh - k);     \
    }                                                                         \
}

/* Rows [r0, r1) of the fused row backward (see above); c1, c2: this block's
 * float64 column partials, D each, zero on entry.  pf: the rows come from
 * memory; each row's second pass (from L1) asks for the next row's x and dy
 * (float compute; the same values either way). */
#define FN_ROWSBWD_float(S, SUF)                                              \
FN_LNROW_float(S, SUF)                                                        \
static inline int64_t fn_rows_scratch_##SUF(const S *tag, int64_t D)          \
{                                                                             \
    (void)tag;                                                                \
    return (2 * D + 16) * (int64_t)sizeof(float);                             \
}                                                                             \
static inline void fn_rowsbwd_##SUF(const S *x, const S *dy, S *dx, int64_t D,\
                                    int64_t r0, int64_t r1, int rms,          \
                                    const void *w, const double *mean,        \
                                    const double *invstd, int64_t unit,       \
                                    void *scratch, double *c1, double *c2,    \
                                    int pf)                                   \
{                                                                             \
    float *f1 = (float *)scratch, *f2 = f1 + D + 16;                          \
    (void)unit;                                                               \
    memset(f1, 0, (size_t)D * sizeof(float));                                 \
    memset(f2, 0, (size_t)D * sizeof(float));                                 \
    for (int64_t r = r0; r < r1; r++)                                         \
        fn_lnrow_##SUF(x + r * D, dy + r * D, dx + r * D, (const float *)w, D,\
                       mean[r], invstd[r], rms, f1, f2, pf);                  \
    /* flush in vectors; then redo the columns whose sum is not finite */    \
    int bad = 0;                                                              \
    for (int64_t d = 0; d < D; d++) {                                         \
        c1[d] = (double)f1[d];                                                \
        c2[d] = (double)f2[d];                                                \
        /* f - f is 0 for a finite f, NaN for an infinity or a NaN */         \
        bad |= ((f1[d] - f1[d]) != 0.0f) | ((f2[d] - f2[d]) != 0.0f);         \
    }                                                                         \
    if (!bad)                                                                 \
        return;                                                               \
    for (int64_t d = 0; d < D; d++) {                                         \
        if (__builtin_isfinite(c1[d]) && __builtin_isfinite(c2[d]))           \
            continue;                                                         \
        double s1 = 0.0, s2 = 0.0;                                            \
        for (int64_t r = r0; r < r1; r++) {                                   \
            s1 = s1 + (double)fn_ld_##SUF(dy[r * D + d]);                     \
            s2 = s2 + (double)fn_ld_##SUF(dy[r * D + d])                      \
                 * (((double)fn_ld_##SUF(x[r * D + d]) - mean[r])             \
                    * invstd[r]);                                             \
        }                                                                     \
        c1[d] = s1;                                                           \
        c2[d] = s2;                                                           \
    }                                                                         \
}

#define FN_ROWSBWD_double(S, SUF)                                             \
static inline int64_t fn_rows_scratch_##SUF(const S *tag, int64_t D)          \
{                                                                             \
    (void)tag;                                                                \
    (void)D;                                                                  \
    return 0;                                                                 \
}                                                                             \
static inline void fn_rowsbwd_##SUF(const S *x, const S *dy, S *dx, int64_t D,\
                                    int64_t r0, int64_t r1, int rms,          \
                                    const void *w_, const double *mean,       \
                                    const double *invstd, int64_t unit,       \
                                    void *scratch, double *c1, double *c2,    \
                                    int pf)                                   \
{                                                                             \
    const double *w = (const double *)w_;                                     \
    (void)scratch;                                                            \
    (void)pf;                                                                 \
    for (int64_t r = r0; r < r1; r++) {                                       \
        const S *xr = x + r * D, *gr = dy + r * D;                            \
        double m = mean[r], inv = invstd[r], A = 0.0, B = 0.0, q, c, k;       \
        for (int64_t j0 = 0; j0 < D; j0 += unit) {                            \
            int64_t ln = D - j0 < unit ? D - j0 : unit;                       \
            double a = 0.0, bb = 0.0;                                         \
            fn_lnsums_##SUF(xr + j0, gr + j0, w + j0, ln, m, inv, &a, &bb,    \
                            c1 + j0, c2 + j0);                                \
            A = A + a;                                                        \
            B = B + bb;                                                       \
        }                                                                     \
        /* dx = inv * w * dy - q * (x - m) - inv * A / D */                   \
        q = inv * inv * inv * B / (double)D;                                  \
        if (rms) {                                                            \
            c = 0.0;                                                          \
            k = 0.0;                                                          \
        } else {                                                              \
            c = m;                                                            \
            k = inv * A / (double)D;                                          \
        }                                                                     \
        fn_lnbwd_##SUF(xr, gr, dx + r * D, D, w, c, inv, q, k);               \
    }                                                                         \
}

/* --- statistics of 8 short rows side by side ---------------------------
 * fn_rows8_SUF(x, n, eps, rms, mean, var, invstd): the statistics of the 8
 * rows x[r * n : (r + 1) * n], n < FN_SBLOCK, as short_statistics gives them
 * (_kernels_slices.pxi), bit for bit: per row the additions of fn_sum and
 * fn_dev on a run under FN_SBLOCK (a float32 block of 16 lanes over the
 * first n & ~15 values, folded to 8 and widened; 8 more values in float64
 * lanes; the tail one by one; combined as fn_hsum(lo + hi)), then run_close,
 * merge_piece into an empty total, finish_moments.  A row whose sums are not
 * finite (fn_sum and fn_dev sum it again in float64) returns 0 before
 * anything is written.
 * The rows' accumulators run side by side, then are transposed so that every
 * later step is one vector operation with a row in each lane (the divisions
 * and square root of 8 rows at once).  Returns 0, doing nothing, where it
 * does not apply (n >= FN_SBLOCK, float64 storage: the caller's loop). */
typedef int64_t fn_v8l __attribute__((vector_size(64)));
/* 8-double vectors stay in registers only with AVX-512 (elsewhere GCC 12
 * keeps them in memory): the other copies take short_statistics' loop */
#if defined(__AVX512F__)
#define FN_ROWS8_FAST 1
#else
#define FN_ROWS8_FAST 0
#endif

static inline fn_v8d fn_splat8d(double c) { return (fn_v8d){c, c, c, c, c, c, c, c}; }
static inline fn_v8d fn_sel8d(fn_v8l m, fn_v8d a, fn_v8d b)
{
    return (fn_v8d)(((fn_v8l)a & m) | ((fn_v8l)b & ~m));
}
static inline fn_v8d fn_sqrt8d(fn_v8d v)
{
#if defined(__AVX512F__)
    return (fn_v8d)_mm512_sqrt_pd((__m512d)v);
#else
    for (int k = 0; k < 8; k++) v[k] = __builtin_sqrt(v[k]);
    return v;
#endif
}
/* t[k][r] = a[r][k]: 8 rows of 8 lanes to 8 lanes of 8 rows (three rounds
 * of shuffles: pairs of lanes, then of pairs, then halves) */
static inline __attribute__((always_inline)) void fn_transpose8d(const fn_v8d *a, fn_v8d *t)
{
#if __has_builtin(__builtin_shufflevector)
#define FN_SH(x, y, ...) __builtin_shufflevector(x, y, __VA_ARGS__)
    fn_v8d p[4], q[4], c[8];
    for (int i = 0; i < 4; i++) {
        p[i] = FN_SH(a[2 * i], a[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14);
        q[i] = FN_SH(a[2 * i], a[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    }
    /* c[h * 4 + j]: rows 4h..4h+3 of lanes j and j + 4, j = 0, 2, 1, 3 */
    for (int h = 0; h < 2; h++) {
        c[h * 4 + 0] = FN_SH(p[2 * h], p[2 * h + 1], 0, 1, 8, 9, 4, 5, 12, 13);
        c[h * 4 + 1] = FN_SH(p[2 * h], p[2 * h + 1], 2, 3, 10, 11, 6, 7, 14, 15);
        c[h * 4 + 2] = FN_SH(q[2 * h], q[2 * h + 1], 0, 1, 8, 9, 4, 5, 12, 13);
        c[h * 4 + 3] = FN_SH(q[2 * h], q[2 * h + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    static const int lane[4] = {0, 2, 1, 3};
    for (int j = 0; j < 4; j++) {
        t[lane[j]] = FN_SH(c[j], c[4 + j], 0, 1, 2, 3, 8, 9, 10, 11);
        t[lane[j] + 4] = FN_SH(c[j], c[4 + j], 4, 5, 6, 7, 12, 13, 14, 15);
    }
#undef FN_SH
#else
    for (int k = 0; k < 8; k++)
        t[k] = (fn_v8d){a[0][k], a[1][k], a[2][k], a[3][k],
                        a[4][k], a[5][k], a[6][k], a[7][k]};
#endif
}
/* per row, fn_hsum(lo + hi) of its 8-lane accumulator, a row per lane */
static inline __attribute__((always_inline)) fn_v8d fn_hsum_rows8(const fn_v8d *acc)
{
    fn_v8d t[8];
    fn_transpose8d(acc, t);
    return ((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]));
}

#define FN_ROWS8_float(S, SUF)                                                \
/* RMSNorm: per row fn_sumsq's additions (one pass), then rms_moments of      \
 * slice_mean_square */                                                       \
static inline int fn_rows8ms_##SUF(const S *x, int64_t n, double eps,         \
                                   double *mean, double *var, double *invstd) \
{                                                                             \
    int64_t q = n & ~(int64_t)15, i, j;                                       \
    fn_v8d acc[8], zero = fn_splat8d(0.0), cnt = fn_splat8d((double)n), t = zero;\
    fn_vf f[8][FN_N16];                                                       \
    _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)                       \
        for (int k = 0; k < FN_N16; k++) f[r][k] = (fn_vf){0};                \
    for (i = 0; i < q; i += 16)                                               \
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)                   \
            for (int k = 0; k < FN_N16; k++) {                                \
                fn_vf v = fn_ldv_##SUF(x + r * n + i + k * FN_VL);            \
                f[r][k] += v * v;                                             \
            }                                                                 \
    _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)                       \
        acc[r] = q ? zero + fn_cvt8d(fn_fold16(f[r])) : zero;                 \
    i = q;                                                                    \
    if (i + 8 <= n) {                                                         \
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++) {                 \
            fn_v8d v = fn_cvt8d(fn_ld8f_##SUF(x + r * n + i));                \
            acc[r] += v * v;                                                  \
        }                                                                     \
        i += 8;                                                               \
    }                                                                         \
    for (j = i; j < n; j++) {                                                 \
        fn_v8d c;                                                             \
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++) c[r] = (double)fn_ld_##SUF(x[r * n + j]); \
        t += c * c;                                                           \
    }                                                                         \
    fn_v8d s = fn_hsum_rows8(acc) + t;                                        \
    /* a row that fn_sumsq would sum again in float64: the caller's loop */   \
    for (int r = 0; r < 8; r++)                                               \
        if (!__builtin_isfinite(s[r])) return 0;                              \
    /* the normalising pass runs from cache: ask for the next 8 rows */       \
    for (i = 0; i < 8 * n; i += 64 / (int64_t)sizeof(S))                      \
        __builtin_prefetch(x + 8 * n + i, 0, 3);                              \
    /* slice_mean_square: 0.0 + (0.0 + the row's sum), over n */              \
    fn_v8d ms = (zero + (zero + s)) / cnt;                                    \
    fn_v8d inv = fn_splat8d(1.0) / fn_sqrt8d(ms + fn_splat8d(eps));          \
    for (int r = 0; r < 8; r++) {                                             \
        mean[r] = 0.0;                                                        \
        var[r] = ms[r];                                                       \
        invstd[r] = inv[r];                                                   \
    }                                                                         \
    return 1;                                                                 \
}                                                                             \
static inline int fn_rows8_##SUF(const S *x, int64_t n, double eps, int rms,  \
                                 double *mean, double *var, double *invstd)   \
{                                                                             \
    if (n >= FN_SBLOCK || !FN_ROWS8_FAST) return 0;                           \
    if (rms) return fn_rows8ms_##SUF(x, n, eps, mean, var, invstd);           \
    int64_t q = n & ~(int64_t)15, i, j;                                       \
    fn_v8d acc[8], a8[8], b8[8], zero = fn_splat8d(0.0), cnt = fn_splat8d((double)n);\
    fn_v8d t = zero, ta = zero, tb = zero;                                    \
    fn_vf f[8][FN_N16], g[8][FN_N16];                                         \
    /* fn_sum: the float32 block of 16 lanes, flushed (0.0 + its lanes) */    \
    _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)                       \
        for (int k = 0; k < FN_N16; k++) f[r][k] = (fn_vf){0};                \
    for (i = 0; i < q; i += 16)                                               \
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)                   \
            for (int k = 0; k < FN_N16; k++)                                  \
                f[r][k] += fn_ldv_##SUF(x + r * n + i + k * FN_VL);           \
    _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)                       \
        acc[r] = q ? zero + fn_cvt8d(fn_fold16(f[r])) : zero;                 \
    /* then 8 values in float64 lanes, then one by one */                     \
    i = q;                                                                    \
    if (i + 8 <= n) {                                                         \
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)                   \
            acc[r] += fn_cvt8d(fn_ld8f_##SUF(x + r * n + i));                 \
        i += 8;                                                               \
    }                                                                         \
    for (j = i; j < n; j++) {                                                 \
        fn_v8d c;                                                             \
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++) c[r] = (double)fn_ld_##SUF(x[r * n + j]); \
        t += c;                                                               \
    }                                                                         \
    fn_v8d s = fn_hsum_rows8(acc) + t;                                        \
    /* a row that fn_sum would sum again in float64: the caller's loop */     \
    for (int r = 0; r < 8; r++)                                               \
        if (!__builtin_isfinite(s[r])) return 0;                              \
    /* run_centre: the mean rounded to float */                               \
    fn_v8d m = __builtin_convertvector(__builtin_convertvector(s / cnt, fn_v8f),\
                                       fn_v8d);                               \
    /* the second pass runs from cache: ask for the next 8 rows (the next    \
     * block of a thread walking memory) for the first pass over them */      \
    for (i = 0; i < 8 * n; i += 64 / (int64_t)sizeof(S))                      \
        __builtin_prefetch(x + 8 * n + i, 0, 3);                              \
    /* fn_dev: the float32 block of 16 lanes about (float)m, flushed */       \
    _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)                       \
        for (int k = 0; k < FN_N16; k++) {                                    \
            f[r][k] = (fn_vf){0};                                             \
            g[r][k] = (fn_vf){0};                                             \
        }                                                                     \
    for (i = 0; i < q; i += 16)                                               \
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++) {                 \
            fn_vf mv = fn_vsplat((float)m[r]);                                \
            for (int k = 0; k < FN_N16; k++) {                                \
                fn_vf d = fn_ldv_##SUF(x + r * n + i + k * FN_VL) - mv;       \
                f[r][k] += d;                                                 \
                g[r][k] += d * d;                                             \
            }                                                                 \
        }                                                                     \
    _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++) {                     \
        a8[r] = q ? zero + fn_cvt8d(fn_fold16(f[r])) : zero;                  \
        b8[r] = q ? zero + fn_cvt8d(fn_fold16(g[r])) : zero;                  \
    }                                                                         \
    i = q;                                                                    \
    if (i + 8 <= n) {                                                         \
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++) {                 \
            fn_v8d d = fn_cvt8d(fn_ld8f_##SUF(x + r * n + i)) - fn_splat8d(m[r]);\
            a8[r] += d;                                                       \
            b8[r] += d * d;                                                   \
        }                                                                     \
        i += 8;                                                               \
    }                                                                         \
    for (j = i; j < n; j++) {                                                 \
        fn_v8d d;                                                             \
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++) d[r] = (double)fn_ld_##SUF(x[r * n + j]); \
        d = d - m;                                                            \
        ta += d;                                                              \
        tb += d * d;                                                          \
    }                                                                         \
    /* sd, sdd: 0.0 + each row's total, as fn_dev adds to zeroed sums */      \
    fn_v8d sd = zero + (fn_hsum_rows8(a8) + ta);                              \
    fn_v8d sdd = zero + (fn_hsum_rows8(b8) + tb);                             \
    /* a row that fn_dev would sum again in float64: the caller's loop */     \
    for (int r = 0; r < 8; r++)                                               \
        if (!__builtin_isfinite(sd[r]) || !__builtin_isfinite(sdd[r])) return 0;\
    /* run_close */                                                           \
    fn_v8d pm = fn_sel8d((m - m) == zero, m + sd / cnt, m);                   \
    sdd = sdd - sd * sd / cnt;                                                \
    fn_v8d pm2 = fn_sel8d(sdd < zero, zero, sdd);                             \
    /* merge_piece into an empty total (cnt 0, mu 0, m2 0): nb / tot is 1 and \
     * cnt * nb / tot is 0, exactly; both branches of mu give 0 + pm */       \
    fn_v8d mu = zero + pm;                                                    \
    fn_v8d m2 = (zero + pm2) + pm * pm * zero;                                \
    /* finish_moments */                                                      \
    fn_v8d v = fn_sel8d(m2 < zero, zero, m2) / cnt;                           \
    fn_v8d e = fn_splat8d(eps), one = fn_splat8d(1.0), ms = v;                \
    fn_v8d inv = one / fn_sqrt8d(ms + e);                                     \
    for (int r = 0; r < 8; r++) {                                             \
        mean[r] = mu[r];                                                      \
        var[r] = v[r];                                                        \
        invstd[r] = inv[r];                                                   \
    }                                                                         \
    return 1;                                                                 \
}
#define FN_ROWS8_double(S, SUF)                                               \
static inline int fn_rows8_##SUF(const S *x, int64_t n, double eps, int rms,  \
                                 double *mean, double *var, double *invstd)   \
{                                                                             \
    (void)x; (void)n; (void)eps; (void)rms; (void)mean; (void)var;            \
    (void)invstd;                                                             \
    return 0;                                                                 \
}

/* --- groups of one-value channel runs: (N, C) batches --------------------
 * GroupNorm on (N, C) has slices of K channels of L = 1 value.  These are
 * group_normalise's and group_backward's per-channel loops
 * (_kernels_slices.pxi) with the run length 1 known at compile time, so the
 * channel loops' calls fold to a few operations per channel: the same
 * operations, so the same bits.  w, b: the slice's first channel's weight
 * and bias (compute type) or NULL.
 *   fn_gnaff1    y[k] = (x[k] - c) * s_k + t_k, s_k = inv * w[k],
 *                t_k = (c - m) * s_k + b[k]
 *   fn_gnsums1   s1[k] = dy[k], s2[k] = dy[k] * (x[k] - m) (fn_dot), and
 *                *A, *B the weighted sums over the channels in order
 *   fn_gnbwd1    dx[k] = w[k] * inv * dy[k] - q * (x[k] - c) - kk; asks for
 *                the K values after x and dy (the next slice) */
#define FN_GN1(S, SUF, T)                                                     \
static inline void fn_gnaff1_##SUF(const S *x, S *y, int64_t K, double c,     \
                                   double m, double inv, const void *w_,      \
                                   const void *b_)                            \
{                                                                             \
    const T *w = (const T *)w_, *b = (const T *)b_;                           \
    for (int64_t k = 0; k < K; k++) {                                         \
        double s = w ? inv * (double)w[k] : inv;                              \
        double t = (c - m) * s;                                               \
        if (b) t = t + (double)b[k];                                          \
        fn_affine_##SUF(x + k, y + k, 1, c, s, t);                            \
    }                                                                         \
}                                                                             \
static inline void fn_gnsums1_##SUF(const S *x, const S *dy, int64_t K,       \
                                    double m, const void *w_, double *s1,     \
                                    double *s2, double *A, double *B)         \
{                                                                             \
    const T *w = (const T *)w_;                                               \
    double a = 0.0, bb = 0.0;                                                 \
    /* the channels' sums (independent: one vector loop), then the slice's   \
     * weighted totals in channel order */                                    \
    for (int64_t k = 0; k < K; k++) {                                         \
        double sa = 0.0, sb = 0.0;                                            \
        fn_dot_##SUF(x + k, dy + k, 1, m, &sa, &sb);                          \
        s1[k] = sa;                                                           \
        s2[k] = sb;                                                           \
    }                                                                         \
    if (w)                                                                    \
        for (int64_t k = 0; k < K; k++) {                                     \
            a = a + (double)w[k] * s1[k];                                     \
            bb = bb + (double)w[k] * s2[k];                                   \
        }                                                                     \
    else                                                                      \
        for (int64_t k = 0; k < K; k++) {                                     \
            a = a + s1[k];                  /* weight 1: 1.0 * s exactly */   \
            bb = bb + s2[k];                                                  \
        }                                                                     \
    *A = a;                                                                   \
    *B = bb;                                                                  \
}                                                                             \
static inline void fn_gnbwd1_##SUF(const S *x, const S *dy, S *dx, int64_t K, \
                                   double c, double inv, double q, double kk, \
                                   const void *w_)                            \
{                                                                             \
    const T *w = (const T *)w_;                                               \
    for (int64_t k = 0; k < K; k += 64 / (int64_t)sizeof(S)) {                \
        __builtin_prefetch(x + K + k, 0, 3);                                  \
        __builtin_prefetch(dy + K + k, 0, 3);                                 \
    }                                                                         \
    if (w)                                                                    \
        for (int64_t k = 0; k < K; k++)                                       \
            fn_bwd_##SUF(x + k, dy + k, dx + k, 1, c, (double)w[k] * inv, q, kk);\
    else                                                                      \
        for (int64_t k = 0; k < K; k++)                                       \
            fn_bwd_##SUF(x + k, dy + k, dx + k, 1, c, inv, q, kk);            \
}

#define FN_INST_SLICES(a, S, SUF, T) \
    FN_LAYER_##T(S, SUF) FN_LNSUMS(S, SUF, T) FN_ROWSBWD_##T(S, SUF) \
    FN_ROWS8_##T(S, SUF) FN_GN1(S, SUF, T)
FN_STORAGE_TYPES(FN_INST_SLICES, _)

#define fn_lnaff(x, y, n, c, s, t, w, b) FN_PICK(fn_lnaff, x)(x, y, n, c, s, t, w, b)
#define fn_lnbwd(x, dy, dx, n, w, c, a, q, k) FN_PICK(fn_lnbwd, x)(x, dy, dx, n, w, c, a, q, k)
#define fn_lnsums(x, dy, w, n, m, inv, A, B, c1, c2) \
    FN_PICK(fn_lnsums, x)(x, dy, w, n, m, inv, A, B, c1, c2)
#define fn_rows8(x, n, eps, rms, mean, var, invstd) \
    FN_PICK(fn_rows8, x)(x, n, eps, rms, mean, var, invstd)
#define fn_gnaff1(x, y, K, c, m, inv, w, b) FN_PICK(fn_gnaff1, x)(x, y, K, c, m, inv, w, b)
#define fn_gnsums1(x, dy, K, m, w, s1, s2, A, B) \
    FN_PICK(fn_gnsums1, x)(x, dy, K, m, w, s1, s2, A, B)
#define fn_gnbwd1(x, dy, dx, K, c, inv, q, kk, w) \
    FN_PICK(fn_gnbwd1, x)(x, dy, dx, K, c, inv, q, kk, w)
#define fn_rows_scratch(tag, D) FN_PICK(fn_rows_scratch, tag)(tag, D)
#define fn_rowsbwd(x, dy, dx, D, r0, r1, rms, w, mean, invstd, unit, scratch, c1, c2, pf) \
    FN_PICK(fn_rowsbwd, x)(x, dy, dx, D, r0, r1, rms, w, mean, invstd, unit, scratch, c1, \
                           c2, pf)
#endif
