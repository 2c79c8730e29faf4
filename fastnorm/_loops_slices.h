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
 * (RMSNorm, rms != 0: m = 0 and no A term). */
#define FN_LNROW_float(S, SUF)                                                \
static inline void fn_lnrow_##SUF(const S *x, const S *dy, S *dx,             \
                                  const float *w, int64_t n, double m,        \
                                  double inv, int rms, float *c1, float *c2)  \
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
 * float64 column partials, D each, zero on entry. */
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
                                    void *scratch, double *c1, double *c2)    \
{                                                                             \
    float *f1 = (float *)scratch, *f2 = f1 + D + 16;                          \
    (void)unit;                                                               \
    memset(f1, 0, (size_t)D * sizeof(float));                                 \
    memset(f2, 0, (size_t)D * sizeof(float));                                 \
    for (int64_t r = r0; r < r1; r++)                                         \
        fn_lnrow_##SUF(x + r * D, dy + r * D, dx + r * D, (const float *)w, D,\
                       mean[r], invstd[r], rms, f1, f2);                      \
    for (int64_t d = 0; d < D; d++) {                                         \
        double s1 = (double)f1[d], s2 = (double)f2[d];                        \
        if (!(__builtin_isfinite(s1) && __builtin_isfinite(s2))) {            \
            s1 = 0.0;                                                         \
            s2 = 0.0;                                                         \
            for (int64_t r = r0; r < r1; r++) {                               \
                s1 = s1 + (double)fn_ld_##SUF(dy[r * D + d]);                 \
                s2 = s2 + (double)fn_ld_##SUF(dy[r * D + d])                  \
                     * (((double)fn_ld_##SUF(x[r * D + d]) - mean[r])         \
                        * invstd[r]);                                         \
            }                                                                 \
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
                                    void *scratch, double *c1, double *c2)    \
{                                                                             \
    const double *w = (const double *)w_;                                     \
    (void)scratch;                                                            \
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

#define FN_INST_SLICES(a, S, SUF, T) \
    FN_LAYER_##T(S, SUF) FN_LNSUMS(S, SUF, T) FN_ROWSBWD_##T(S, SUF)
FN_STORAGE_TYPES(FN_INST_SLICES, _)

#define fn_lnaff(x, y, n, c, s, t, w, b) FN_PICK(fn_lnaff, x)(x, y, n, c, s, t, w, b)
#define fn_lnbwd(x, dy, dx, n, w, c, a, q, k) FN_PICK(fn_lnbwd, x)(x, dy, dx, n, w, c, a, q, k)
#define fn_lnsums(x, dy, w, n, m, inv, A, B, c1, c2) \
    FN_PICK(fn_lnsums, x)(x, dy, w, n, m, inv, A, B, c1, c2)
#define fn_rows_scratch(tag, D) FN_PICK(fn_rows_scratch, tag)(tag, D)
#define fn_rowsbwd(x, dy, dx, D, r0, r1, rms, w, mean, invstd, unit, scratch, c1, c2) \
    FN_PICK(fn_rowsbwd, x)(x, dy, dx, D, r0, r1, rms, w, mean, invstd, unit, scratch, c1, c2)
#endif
