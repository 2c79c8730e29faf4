# The BatchNorm eval fast path: one kernel call per eval-mode forward,
# validation included, for the common call (a native-order C-contiguous
# ndarray of the layer's dtype, parameters as built).  Buffers are taken
# with PyObject_GetBuffer, without memoryview objects, and the coefficients
# are computed in C with the same float64 arithmetic as the general path
# (_batch_norm.py), so both give the same bits; anything unusual returns 0
# and the general path runs, with its error messages.  About 2 us per call.
# Included by _kernels.pyx.

cdef int take_buffer(object o, Py_buffer *v, int writable, char fmt,
                     Py_ssize_t n) noexcept:
    """Fill v with o's buffer when o exports native-order data of format fmt
    ('f' or 'd'), C-contiguous, n elements (a 1-D one when n >= 0, any rank
    when n < 0), writable if asked; else 0 with nothing held and no error set."""
    cdef int flags = PyBUF_FORMAT | PyBUF_C_CONTIGUOUS
    if writable:
        flags |= PyBUF_WRITABLE
    if not PyObject_CheckBuffer(o):
        return 0
    try:
        PyObject_GetBuffer(o, v, flags)
    except Exception:
        return 0
    if (v.format == NULL or v.format[0] != fmt or v.format[1] != 0
            or (n >= 0 and (v.ndim != 1 or v.shape[0] != n))):
        PyBuffer_Release(v)
        return 0
    return 1


cdef int eval_coefficients(const storage *rm, const storage *rv,
                           const storage *w, const storage *b, double eps,
                           int64_t C, double *mean, double *invstd,
                           double *k) noexcept nogil:
    """BatchNorm eval coefficients, as the general path computes them in
    NumPy (float64): invstd = 1 / sqrt(var + eps), scale = invstd * weight,
    centre = mean rounded to the compute type, shift = (centre - mean) *
    scale + bias.  k: centre, scale, shift, each C long.  Returns 0 when some
    var + eps is not positive (NaN or negative variance: left to the
    general path and its warnings) or a mean or weight is not finite (the
    general path's rule for those), else 1."""
    cdef int64_t c
    cdef double m, inv, sc, ctr
    for c in range(C):
        if not (fn_at(rv, c) + eps > 0.0 and isfinite(fn_at(rm, c))):
            return 0
        if w != NULL and not isfinite(fn_at(w, c)):
            return 0
    for c in range(C):
        m = fn_at(rm, c)
        inv = 1.0 / sqrt(fn_at(rv, c) + eps)
        mean[c] = m
        invstd[c] = inv
        sc = inv if w == NULL else inv * fn_at(w, c)
        ctr = fn_centre(rm, m)
        k[c] = ctr
        k[C + c] = sc
        k[2 * C + c] = (ctr - m) * sc
        if b != NULL:
            k[2 * C + c] = k[2 * C + c] + fn_at(b, c)
    return 1


cdef int coefficients(char pfmt, const Py_buffer *v, double eps, int64_t C,
                      double *k) noexcept:
    """eval_coefficients from the parameter buffers v[2:8], of format pfmt."""
    if pfmt == b"f":
        return eval_coefficients(<const float *>v[2].buf, <const float *>v[3].buf,
                                 <const float *>v[4].buf, <const float *>v[5].buf, eps, C,
                                 <double *>v[6].buf, <double *>v[7].buf, k)
    if pfmt == b"d":
        return eval_coefficients(<const double *>v[2].buf, <const double *>v[3].buf,
                                 <const double *>v[4].buf, <const double *>v[5].buf, eps, C,
                                 <double *>v[6].buf, <double *>v[7].buf, k)
    if pfmt == b"H":
        return eval_coefficients(<const fn_bf16 *>v[2].buf, <const fn_bf16 *>v[3].buf,
                                 <const fn_bf16 *>v[4].buf, <const fn_bf16 *>v[5].buf, eps,
                                 C, <double *>v[6].buf, <double *>v[7].buf, k)
    return eval_coefficients(<const fn_f16 *>v[2].buf, <const fn_f16 *>v[3].buf,
                             <const fn_f16 *>v[4].buf, <const fn_f16 *>v[5].buf, eps, C,
                             <double *>v[6].buf, <double *>v[7].buf, k)


cdef int affine_call(char fmt, const void *x, void *y, int64_t N, int64_t C, int64_t L,
                     const double *k) except -1:
    """The affine pass over data of format fmt (one branch per storage type)."""
    if fmt == b"f":
        elementwise(OP_AFFINE, <const float *>x, <const float *>NULL, <float *>y, N, C, L, 1,
                    k, k + C, k + 2 * C, k + 2 * C)
    elif fmt == b"d":
        elementwise(OP_AFFINE, <const double *>x, <const double *>NULL, <double *>y, N, C, L,
                    1, k, k + C, k + 2 * C, k + 2 * C)
    elif fmt == b"H":
        elementwise(OP_AFFINE, <const fn_bf16 *>x, <const fn_bf16 *>NULL, <fn_bf16 *>y, N, C,
                    L, 1, k, k + C, k + 2 * C, k + 2 * C)
    else:
        elementwise(OP_AFFINE, <const fn_f16 *>x, <const fn_f16 *>NULL, <fn_f16 *>y, N, C, L,
                    1, k, k + C, k + 2 * C, k + 2 * C)
    return 0


def batch_eval(x, out, running_mean, running_var, weight, bias, double eps,
               mean, invstd):
    """Eval-mode batch norm in one call: the per-call fast path of the layers.

    out = (x - running_mean) / sqrt(running_var + eps) * weight + bias, with
    the coefficients of eval_coefficients, so the same bits as the general
    path.  x: C-contiguous ndarray (N, C, *) of float32 or float64, or the
    bits of 16-bit data (uint16 for bfloat16, int16 for float16:
    fastnorm/_dtypes.kernel_view), with N * L > 0; out: a writable
    C-contiguous array of x's size and dtype; running_mean, running_var,
    weight, bias: (C,) arrays of x's dtype, or for 16-bit data of float32
    (mixed) (weight and bias may be None); mean, invstd: writable (C,)
    float64, receive what a
    backward call needs.  out may be x itself (same memory), not a partial
    overlap.  Returns 1 when done, 2 when done in place (out's memory is
    x's), 0, with nothing written, when an argument is not exactly that or a
    variance is not positive: the caller then takes the general path, which
    explains what is wrong.  Buffers are taken
    without memoryview objects (this call costs well under a microsecond).
    """
    cdef Py_buffer v[8]
    cdef bint got[8]            # v[i] holds a buffer to release
    cdef int held = 0, i
    cdef char fmt, pfmt
    cdef Py_ssize_t C, N, L, d
    cdef double buf[3 * 64]
    cdef double *k = buf
    dt = getattr(x, "dtype", None)
    if dt is None:
        return 0
    if dt.kind == "f" and dt.itemsize == 4:
        fmt = b"f"
    elif dt.kind == "f" and dt.itemsize == 8:
        fmt = b"d"
    elif dt.kind == "u" and dt.itemsize == 2:
        fmt = b"H"              # bfloat16 bits
    elif dt.kind == "i" and dt.itemsize == 2:
        fmt = b"h"              # float16 bits
    else:
        return 0
    # parameters: the data's format, or float32 for 16-bit data (mixed)
    pdt = getattr(running_mean, "dtype", None)
    pfmt = b"f" if (fmt in (b"H", b"h") and pdt is not None and pdt.kind == "f"
                    and pdt.itemsize == 4) else fmt
    try:
        got[0] = take_buffer(x, &v[0], 0, fmt, -1)
        held = 1
        if not got[0]:
            return 0
        if v[0].ndim < 2:
            return 0
        N = v[0].shape[0]
        C = v[0].shape[1]
        L = 1
        for d in range(2, v[0].ndim):
            L *= v[0].shape[d]
        if N * L == 0:
            return 0
        got[1] = take_buffer(out, &v[1], 1, fmt, -1)
        held = 2
        if not got[1]:
            return 0
        if v[1].len != v[0].len:
            return 0
        # aligned, and either the same memory as x or apart from it
        if (<size_t>v[0].buf) % v[0].itemsize or (<size_t>v[1].buf) % v[1].itemsize:
            return 0
        if v[1].buf != v[0].buf and (<char *>v[1].buf < <char *>v[0].buf + v[0].len and
                                     <char *>v[0].buf < <char *>v[1].buf + v[1].len):
            return 0
        for o in (running_mean, running_var, weight, bias):
            v[held].buf = NULL
            got[held] = o is not None and take_buffer(o, &v[held], 0, pfmt, C)
            held += 1
            if o is not None and not got[held - 1]:
                return 0
            if got[held - 1] and (<size_t>v[held - 1].buf) % v[held - 1].itemsize:
                return 0        # unaligned: the general path copies it
        for o in (mean, invstd):
            got[held] = take_buffer(o, &v[held], 1, b"d", C)
            held += 1
            if not got[held - 1]:
                return 0
        if v[2].buf == NULL or v[3].buf == NULL:
            return 0
        if C > 64:
            k = <double *>malloc(3 * C * sizeof(double))
            if k == NULL:
                raise MemoryError()
        if not coefficients(pfmt, v, eps, C, k):
            return 0
        affine_call(fmt, v[0].buf, v[1].buf, N, C, L, k)
        return 2 if v[1].buf == v[0].buf else 1
    finally:
        if k != buf:
            free(k)
        for i in range(held):
            if got[i]:
                PyBuffer_Release(&v[i])
