# SwitchableNorm's mixing of the instance, layer and batch statistics
# (_switchable.py says what they are), and its eval-mode fast path.  Included
# by _kernels.pyx after _kernels_fast.pxi.
#
# switchable_mix is the one definition of everything between the instance
# moments (reduction() over the (1, N * C, M) planes) and the normalising
# pass: the softmax of the mixing logits, the layer (and in training the
# batch) moments merged from the instance moments, the mixture and invstd.
# The general path (_switchable.statistics) and the fast path
# (switchable_call) both run it, so they give the same bits.  Sums run from
# 0.0 in index order; exp is _switchable.exp_scalar's IEEE steps (range
# reduction, a degree-13 Taylor polynomial, ldexp), so nothing depends on the
# CPU's libm.

import math as _math

cdef double g_exp_coef[14]
for _i in range(14):
    g_exp_coef[_i] = 1.0 / <double>_math.factorial(_i)

cdef enum:
    SN_TERMS_MAX = 3


cdef inline double exp_ieee(double x) noexcept nogil:
    """exp of x with IEEE additions, multiplications and ldexp only, the
    same steps as _switchable.exp_scalar (so the same bits)."""
    cdef double k, r, p
    cdef int i
    if x != x:
        return x
    if x < -746.0:
        x = -746.0
    if x > 710.0:
        x = 710.0
    k = nearbyint(x * 1.44269504088896338700e+00)       # halves to even
    r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10
    p = g_exp_coef[13]
    for i in range(12, -1, -1):
        p = p * r + g_exp_coef[i]
    return ldexp(p, <int>k)


cdef inline void softmax_ieee(const double *v, int n, double *out) noexcept nogil:
    """softmax of v[0:n]: exp_ieee(v - max(v)) over their sum (from 0.0, in
    order); a NaN among v makes every weight NaN, as np.max does."""
    cdef double m = v[0], s = 0.0
    cdef int i
    for i in range(1, n):
        if v[i] > m or v[i] != v[i]:
            m = v[i]
        if m != m:
            break
    for i in range(n):
        out[i] = exp_ieee(v[i] - m)
        s = s + out[i]
    for i in range(n):
        out[i] = out[i] / s


cdef void mix_core(const double *mu_in, const double *var_in, int64_t N, int64_t C,
                   const double *a, const double *b, int terms, bint batch_from_x,
                   double eps, double *mu, double *invstd, double *mu_ln, double *var_ln,
                   double *mu_bn, double *var_bn) noexcept nogil:
    """The mixed statistics of N x C instance moments.

    mu_ln[n] = sum_c mu_in / C, var_ln[n] = sum_c (var_in + (mu_in - mu_ln)**2) / C;
    with terms 3 and batch_from_x the same over n into mu_bn[c], var_bn[c]
    (otherwise mu_bn, var_bn are read: the running statistics);
    mu = ((0 + a0 mu_in) + a1 mu_ln) + a2 mu_bn, var likewise with b,
    invstd = 1 / sqrt(var + eps)."""
    cdef int64_t n, c, i
    cdef double s, d, m, v
    for n in range(N):
        s = 0.0
        for c in range(C):
            s = s + mu_in[n * C + c]
        mu_ln[n] = s / <double>C
        s = 0.0
        for c in range(C):
            d = mu_in[n * C + c] - mu_ln[n]
            s = s + (var_in[n * C + c] + d * d)
        var_ln[n] = s / <double>C
    if terms == 3 and batch_from_x:
        for c in range(C):
            s = 0.0
            for n in range(N):
                s = s + mu_in[n * C + c]
            mu_bn[c] = s / <double>N
            s = 0.0
            for n in range(N):
                d = mu_in[n * C + c] - mu_bn[c]
                s = s + (var_in[n * C + c] + d * d)
            var_bn[c] = s / <double>N
    for n in range(N):
        for c in range(C):
            i = n * C + c
            m = (0.0 + a[0] * mu_in[i]) + a[1] * mu_ln[n]
            v = (0.0 + b[0] * var_in[i]) + b[1] * var_ln[n]
            if terms == 3:
                m = m + a[2] * mu_bn[c]
                v = v + b[2] * var_bn[c]
            mu[i] = m
            invstd[i] = 1.0 / sqrt(v + eps)


def switchable_mix(const double[:, ::1] mu_in, const double[:, ::1] var_in,
                   const double[::1] mean_logits, const double[::1] var_logits,
                   bint batch_from_x, double eps, double[:, ::1] mu, double[:, ::1] invstd,
                   double[::1] mu_ln, double[::1] var_ln, double[::1] mu_bn,
                   double[::1] var_bn, double[::1] a, double[::1] b):
    """The general path's mixing (mix_core), the fast path's arithmetic.

    IN mu_in, var_in (N, C) instance moments; mean_logits, var_logits
    (terms,), 2 or 3; batch_from_x: the batch term from the instance moments
    (training), else mu_bn, var_bn are IN (the running statistics, float64).
    OUT mu, invstd (N, C); mu_ln, var_ln (N,); a, b (terms,) the softmax
    weights; mu_bn, var_bn (C,) with 3 terms (any length otherwise).
    """
    cdef int64_t N = mu_in.shape[0], C = mu_in.shape[1]
    cdef int terms = mean_logits.shape[0]
    if terms not in (2, 3) or var_logits.shape[0] != terms:
        raise ValueError(f"switchable_mix: expected 2 or 3 logits, got {terms}")
    if N == 0 or C == 0:
        raise ValueError("switchable_mix: expected N, C > 0")
    if terms == 3 and (mu_bn.shape[0] != C or var_bn.shape[0] != C):
        raise ValueError("switchable_mix: the batch term needs C values")
    if (var_in.shape[0] != N or var_in.shape[1] != C or mu.shape[0] != N
            or mu.shape[1] != C or invstd.shape[0] != N or invstd.shape[1] != C
            or mu_ln.shape[0] != N or var_ln.shape[0] != N or a.shape[0] != terms
            or b.shape[0] != terms):
        raise ValueError("switchable_mix: expected (N, C) moments, mixture and invstd, "
                         "(N,) layer moments and (terms,) weights")
    with nogil:
        softmax_ieee(&mean_logits[0], terms, &a[0])
        softmax_ieee(&var_logits[0], terms, &b[0])
        mix_core(&mu_in[0, 0], &var_in[0, 0], N, C, &a[0], &b[0], terms, batch_from_x,
                 eps, &mu[0, 0], &invstd[0, 0], &mu_ln[0], &var_ln[0],
                 &mu_bn[0] if terms == 3 else NULL, &var_bn[0] if terms == 3 else NULL)


def exp_ieee_values(const double[::1] x, double[::1] out):
    """exp_ieee over x (tests: bitwise _switchable.exp_scalar)."""
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        out[i] = exp_ieee(x[i])


cdef inline int logits_code(object o, int terms) noexcept:
    """The storage code of a (terms,) mixing-logit array, S_NONE otherwise."""
    cdef int code = array_code(o, False)
    if code == S_NONE:
        return S_NONE
    if cnp.PyArray_NDIM(<cnp.ndarray>o) != 1 or cnp.PyArray_DIMS(<cnp.ndarray>o)[0] != terms:
        return S_NONE
    return code


def switchable_call(x, out, mean_weight, var_weight, running_mean, running_var, weight,
                    bias, eps, bint using_bn, layer_dtype, int min_ndim, int max_ndim,
                    channels):
    """Eval-mode switchable norm of the common call, or None.

    The general path's steps (_switchable.forward with training False):
    instance moments of the (1, N * C, M) planes, switchable_mix's
    arithmetic with the running statistics as the batch term, the affine
    pass with center, scale = invstd * weight, shift as _checks.centered
    plus the bias.  Takes float32 or float64 data with every parameter of
    the data's dtype (16-bit data: the general path), x (N, C, *) of
    min_ndim to max_ndim dims, N * M > 0, the running statistics given when
    using_bn.  Returns (y, saved): saved = (x, stats, terms, inplace), stats
    one float64 array of the instance and mixed statistics and the softmax
    weights, which saved_fast (_switchable.py) turns into the general
    path's Saved for backward."""
    cdef int xcode, pcode, inplace, nd, d, terms = 3 if using_bn else 2, i
    cdef cnp.ndarray xa
    cdef cnp.npy_intp N, C, M = 1, NC, total
    cdef double e
    cdef double *st
    cdef double *k
    cdef double *mu_in
    cdef double *var_in
    cdef double *mu
    cdef double *inv
    cdef double *mu_ln
    cdef double *var_ln
    cdef double *mu_bn
    cdef double *var_bn
    cdef double *a
    cdef double *b
    cdef double la[SN_TERMS_MAX]
    cdef double lb[SN_TERMS_MAX]
    cdef const void *pw
    cdef const void *pb
    cdef int64_t n, c, j
    cdef double s, ctr
    if not g_fast:
        return None
    xcode = array_code(x, False)
    if (xcode != S_F32 and xcode != S_F64) or not data_fits_layer(xcode, layer_code(layer_dtype)):
        return None
    xa = <cnp.ndarray>x
    nd = cnp.PyArray_NDIM(xa)
    if nd < min_ndim or nd > max_ndim or nd < 3:
        return None
    N = cnp.PyArray_DIMS(xa)[0]
    C = cnp.PyArray_DIMS(xa)[1]
    for d in range(2, nd):
        M *= cnp.PyArray_DIMS(xa)[d]
    if N * M == 0 or C == 0 or not channels_match(channels, C):
        return None
    if not eps_ok(eps, &e):
        return None
    if using_bn and (running_mean is None or running_var is None):
        return None
    if logits_code(mean_weight, terms) != xcode or logits_code(var_weight, terms) != xcode:
        return None
    pcode = params_code(xcode, param_code(weight, xa, -1), param_code(bias, xa, -1),
                        param_code(running_mean, xa, -1) if using_bn else S_ABSENT,
                        param_code(running_var, xa, -1) if using_bn else S_ABSENT)
    if pcode != xcode and pcode != S_ABSENT:
        return None
    y = output_for(out, xa, xcode, &inplace)
    if y is None:
        return None
    NC = N * C
    # mu_in, var_in, mu, invstd (N * C each), mu_ln, var_ln (N), mu_bn,
    # var_bn (C), a, b (3): kept for backward; the coefficients (3 N C) after
    total = 4 * NC + 2 * N + 2 * C + 6
    stats = cnp.PyArray_EMPTY(1, &total, cnp.NPY_DOUBLE, 0)
    st = <double *>cnp.PyArray_DATA(<cnp.ndarray>stats)
    mu_in = st
    var_in = st + NC
    mu = st + 2 * NC
    inv = st + 3 * NC
    mu_ln = st + 4 * NC
    var_ln = mu_ln + N
    mu_bn = var_ln + N
    var_bn = mu_bn + C
    a = var_bn + C
    b = a + 3
    for i in range(terms):
        la[i] = value_at(xcode, cnp.PyArray_DATA(<cnp.ndarray>mean_weight), i)
        lb[i] = value_at(xcode, cnp.PyArray_DATA(<cnp.ndarray>var_weight), i)
    if using_bn:
        for c in range(C):
            mu_bn[c] = value_at(xcode, cnp.PyArray_DATA(<cnp.ndarray>running_mean), c)
            var_bn[c] = value_at(xcode, cnp.PyArray_DATA(<cnp.ndarray>running_var), c)
    k = <double *>malloc(3 * NC * sizeof(double))
    if k == NULL:
        raise MemoryError()
    pw = data_or_null(weight)
    pb = data_or_null(bias)
    try:
        reduction_call(xcode, RED_MOMENTS, cnp.PyArray_DATA(xa), NULL, NULL, 1, NC, M,
                       mu_in, var_in)
        with nogil:
            softmax_ieee(la, terms, a)
            softmax_ieee(lb, terms, b)
            mix_core(mu_in, var_in, N, C, a, b, terms, False, e, mu, inv, mu_ln, var_ln,
                     mu_bn, var_bn)
            # center, scale, shift per plane, as _switchable.forward
            for n in range(N):
                for c in range(C):
                    j = n * C + c
                    s = inv[j] * value_at(xcode, pw, c) if pw != NULL else inv[j]
                    ctr = centre_for(xcode, mu[j])
                    k[j] = ctr
                    k[NC + j] = s
                    k[2 * NC + j] = centre_term(ctr, mu[j], s)
                    if pb != NULL:
                        k[2 * NC + j] = k[2 * NC + j] + value_at(xcode, pb, c)
        affine_call(xcode, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(<cnp.ndarray>y), 1, NC,
                    M, k)
    finally:
        free(k)
    return y, (x, stats, terms, bool(inplace))
