# Per-call fast paths: the common call of a layer or function in one C call,
# validation included.  Included by _kernels.pyx.
#
# A call on a tiny input (a decode step's one token, a batch-1 feature map)
# costs its Python glue, not its arithmetic: the general path validates in
# Python, makes array views and typed memoryviews, allocates its statistics
# and builds a dataclass to save for backward, 10-16 us in all.  A fast path
# reads its arguments through the NumPy C API (a field read per check, where
# a buffer or memoryview costs ~75 ns each), allocates the output and the
# statistics in C, and runs the same kernel loop as the general path
# (rows_run, elementwise) with the same coefficients, so both give the same
# bits.
#
# What a fast path takes: exact ndarrays (no subclass, no array-like),
# native byte order, C-contiguous and aligned; a storage dtype (float32,
# float64, float16, and bfloat16 once fastnorm._dtypes has registered it);
# parameters of the shape the general path requires, all of one dtype,
# which is the data's, or float32 for 16-bit data (mixed); a float eps,
# positive and finite; `out` None or an exact ndarray of x's shape and
# dtype, writable, C-contiguous, and either x's memory or apart from it; a
# non-empty input.  Anything else returns None without touching anything,
# and the caller's general path runs: it accepts every call the fast path
# declines (array-likes, strided or byte-swapped data, integer eps, empty
# batches, ...) or raises its clear error.  Both paths write nothing before
# every check has passed.  `fast_paths(False)` turns them all off (tests
# compare the two paths bit for bit).
#
# What they return: (y, saved), saved being a tuple the layer keeps for
# backward and turns into its family's saved record only when backward runs
# (_layer_norm.saved_rows, _batch_norm.saved_eval).  The statistics are new
# arrays per call (two float64 arrays of R or C values, ~50 ns each): a
# layer called from several threads at once shares nothing.

cimport numpy as cnp
from cpython.object cimport PyObject
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_AsSsize_t, PyLong_CheckExact
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_CheckExact

cnp.import_array()

cdef enum Code:
    S_NONE = -1         # not a storage dtype (or not an acceptable array)
    S_ABSENT = -2       # None (an optional parameter not given)
    S_F32 = 0
    S_F64 = 1
    S_BF16 = 2
    S_F16 = 3

cdef bint g_fast = True                 # fast_paths()
cdef object g_bf16 = None               # the bfloat16 dtype (register_bfloat16)
cdef object g_pool_empty = None         # output allocator for large outputs
cdef Py_ssize_t g_pool_bytes = -1       # outputs this large go to g_pool_empty
cdef enum:
    FUSE_BYTES = 512 * 1024             # = fastnorm._checks.FUSE_BYTES
    SMALL_K = 64                        # channels with coefficients on the stack


def fast_paths(enabled=None):
    """Whether the per-call fast paths run (True at import); with a bool,
    sets it and returns the previous value.  Off, every call takes the
    general path (for tests)."""
    global g_fast
    cdef bint was = g_fast
    if enabled is not None:
        g_fast = bool(enabled)
    return was


def register_bfloat16(dtype):
    """Tell the fast paths which dtype is bfloat16 (fastnorm._dtypes does,
    when it first meets it)."""
    global g_bf16
    g_bf16 = dtype


def set_output_allocator(empty, Py_ssize_t threshold):
    """Outputs of threshold bytes or more are allocated by empty(shape,
    dtype) (fastnorm._pool), smaller ones by the fast path itself."""
    global g_pool_empty, g_pool_bytes
    g_pool_empty = empty
    g_pool_bytes = threshold


cdef inline int type_code(int type_num, PyObject *descr) noexcept:
    """The storage code of a dtype (its type number and object), S_NONE for
    any other."""
    if type_num == cnp.NPY_FLOAT:
        return S_F32
    if type_num == cnp.NPY_DOUBLE:
        return S_F64
    if type_num == cnp.NPY_FLOAT16:
        return S_F16
    if g_bf16 is not None and descr == <PyObject *>g_bf16:
        return S_BF16
    return S_NONE


cdef inline int array_code(object o, bint writable) noexcept:
    """o's storage code when o is an exact ndarray, native order, C-contiguous,
    aligned (and writable if asked); S_NONE otherwise."""
    cdef int need = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    if not cnp.PyArray_CheckExact(o):
        return S_NONE
    if writable:
        need |= cnp.NPY_ARRAY_WRITEABLE
    if (cnp.PyArray_FLAGS(<cnp.ndarray>o) & need) != need:
        return S_NONE
    if not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>o):
        return S_NONE
    return type_code(cnp.PyArray_TYPE(<cnp.ndarray>o),
                     <PyObject *>cnp.PyArray_DESCR(<cnp.ndarray>o))


cdef inline int layer_code(object dtype) noexcept:
    """The storage code of a layer's dtype; S_ABSENT for None (a function)."""
    if dtype is None:
        return S_ABSENT
    if not cnp.PyArray_DescrCheck(dtype):
        return S_NONE
    return type_code((<cnp.dtype>dtype).type_num, <PyObject *>dtype)


cdef inline bint sixteen(int code) noexcept nogil:
    return code == S_BF16 or code == S_F16


cdef inline bint data_fits_layer(int xcode, int lcode) noexcept nogil:
    """Data of xcode for a layer of lcode: the same dtype, or 16-bit data
    for a float32 layer (mixed); any storage dtype for a function."""
    return (lcode == S_ABSENT or xcode == lcode
            or (lcode == S_F32 and sixteen(xcode)))


cdef inline int param_code(object o, cnp.ndarray x, int nd) noexcept:
    """The storage code of a parameter whose shape must be x's trailing nd
    dims (nd = -1: the shape (x.shape[1],), a per-channel parameter);
    S_ABSENT for None, S_NONE for anything else."""
    cdef int code, i, xn
    cdef cnp.npy_intp *pd
    cdef cnp.npy_intp *xd
    if o is None:
        return S_ABSENT
    code = array_code(o, False)
    if code == S_NONE:
        return S_NONE
    pd = cnp.PyArray_DIMS(<cnp.ndarray>o)
    xd = cnp.PyArray_DIMS(x)
    xn = cnp.PyArray_NDIM(x)
    if nd < 0:
        if cnp.PyArray_NDIM(<cnp.ndarray>o) != 1 or pd[0] != xd[1]:
            return S_NONE
        return code
    if cnp.PyArray_NDIM(<cnp.ndarray>o) != nd:
        return S_NONE
    for i in range(nd):
        if pd[i] != xd[xn - nd + i]:
            return S_NONE
    return code


cdef inline int params_code(int xcode, int a, int b, int c, int d) noexcept nogil:
    """The one dtype code of the given parameters (S_ABSENT for none given):
    all the same, the data's, or float32 for 16-bit data; S_NONE otherwise."""
    cdef int got = S_ABSENT, k, i
    cdef int codes[4]
    codes[0] = a
    codes[1] = b
    codes[2] = c
    codes[3] = d
    for i in range(4):
        k = codes[i]
        if k == S_ABSENT:
            continue
        if k == S_NONE or (got != S_ABSENT and k != got):
            return S_NONE
        got = k
    if got == S_ABSENT or got == xcode or (got == S_F32 and sixteen(xcode)):
        return got
    return S_NONE


cdef inline int small_int(object o, Py_ssize_t *value) noexcept:
    """An exact int that fits a Py_ssize_t (a larger one: 0, no error set,
    the general path explains)."""
    if not PyLong_CheckExact(o):
        return 0
    try:
        value[0] = PyLong_AsSsize_t(o)
    except OverflowError:
        return 0
    return 1


cdef inline bint channels_match(object channels, Py_ssize_t C) noexcept:
    """A function's call (channels None) takes any C; a layer's, its own."""
    cdef Py_ssize_t want
    if channels is None:
        return True
    return small_int(channels, &want) and want == C


cdef inline int eps_ok(object eps, double *value) noexcept:
    """A Python float, positive and finite (ints and others: general path)."""
    cdef double e
    if not PyFloat_CheckExact(eps):
        return 0
    e = PyFloat_AS_DOUBLE(eps)
    if not (e > 0.0 and isfinite(e)):
        return 0
    value[0] = e
    return 1


cdef object output_for(object out, cnp.ndarray x, int xcode, int *inplace):
    """out checked against x, or a new C-contiguous array like x when out is
    None; None when out is not acceptable (the general path explains why).
    inplace: 1 when out is x's memory."""
    cdef char *xp
    cdef char *op
    cdef Py_ssize_t nb
    cdef int i
    inplace[0] = 0
    if out is None:
        if g_pool_bytes >= 0 and cnp.PyArray_NBYTES(x) >= g_pool_bytes:
            return g_pool_empty((<object>x).shape, (<object>x).dtype)
        return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x),
                                 cnp.PyArray_TYPE(x), 0)
    if array_code(out, True) != xcode:
        return None
    if cnp.PyArray_NDIM(<cnp.ndarray>out) != cnp.PyArray_NDIM(x):
        return None
    for i in range(cnp.PyArray_NDIM(x)):
        if cnp.PyArray_DIMS(<cnp.ndarray>out)[i] != cnp.PyArray_DIMS(x)[i]:
            return None
    xp = <char *>cnp.PyArray_DATA(x)
    op = <char *>cnp.PyArray_DATA(<cnp.ndarray>out)
    nb = cnp.PyArray_NBYTES(x)
    if op == xp:
        for i in range(cnp.PyArray_NDIM(x)):
            if cnp.PyArray_STRIDES(<cnp.ndarray>out)[i] != cnp.PyArray_STRIDES(x)[i]:
                return None     # x's memory seen another way: the general path refuses it
        inplace[0] = 1
    elif op < xp + nb and xp < op + nb:
        return None             # partial overlap: refused by the general path
    return out


cdef int compute_params(int pcode, const void *w, const void *b, Py_ssize_t n,
                        const void **wk, const void **bk, float **owned) except -1:
    """Parameters as the kernels take them (compute-type values): w and b
    themselves, or for 16-bit parameters (a pure 16-bit layer) their float32
    values in *owned (one allocation for both, freed by the caller)."""
    cdef Py_ssize_t i
    cdef float *f
    wk[0] = w
    bk[0] = b
    owned[0] = NULL
    if not sixteen(pcode) or (w == NULL and b == NULL):
        return 0
    f = <float *>malloc(2 * n * sizeof(float))
    if f == NULL:
        raise MemoryError()
    owned[0] = f
    for i in range(n):
        if w != NULL:
            f[i] = <float>(fn_at(<const fn_bf16 *>w, i) if pcode == S_BF16
                           else fn_at(<const fn_f16 *>w, i))
        if b != NULL:
            f[n + i] = <float>(fn_at(<const fn_bf16 *>b, i) if pcode == S_BF16
                               else fn_at(<const fn_f16 *>b, i))
    wk[0] = f if w != NULL else NULL
    bk[0] = f + n if b != NULL else NULL
    return 0


cdef inline const void *data_or_null(object o) noexcept:
    return NULL if o is None else cnp.PyArray_DATA(<cnp.ndarray>o)


# --------------------------------------------------------------------------
# LayerNorm and RMSNorm
# --------------------------------------------------------------------------

cdef void rows_dispatch(int code, const void *x, void *y, int64_t R, int64_t D,
                        double eps, bint rms, const void *w, const void *b, double *mean,
                        double *var, double *invstd) noexcept nogil:
    if code == S_F32:
        rows_run(<const float *>x, <float *>y, R, D, eps, rms, w, b, mean, var, invstd)
    elif code == S_F64:
        rows_run(<const double *>x, <double *>y, R, D, eps, rms, w, b, mean, var, invstd)
    elif code == S_BF16:
        rows_run(<const fn_bf16 *>x, <fn_bf16 *>y, R, D, eps, rms, w, b, mean, var,
                 invstd)
    else:
        rows_run(<const fn_f16 *>x, <fn_f16 *>y, R, D, eps, rms, w, b, mean, var, invstd)


cdef inline double machine_eps(int code) noexcept nogil:
    """RMSNorm's eps=None: the machine epsilon of the data's dtype
    (= _layer_norm.rms_eps)."""
    if code == S_F32:
        return 1.1920928955078125e-07       # 2**-23
    if code == S_F64:
        return 2.220446049250313e-16        # 2**-52
    if code == S_BF16:
        return 0.0078125                    # 2**-7
    return 0.0009765625                     # 2**-10


def rows_call(x, out, normalized_shape, weight, bias, eps, bint rms, layer_dtype):
    """LayerNorm (rms False) or RMSNorm forward of the common call, or None.

    x: the input; normalized_shape: a tuple of ints, x's trailing dims;
    weight, bias: arrays of that shape or None; eps: a float (None for
    RMSNorm: the machine epsilon of x's dtype); layer_dtype: the layer's
    dtype, None for a function.  Rows of at most FUSE_BYTES only (the
    one-pass kernel; longer rows take the general path's two passes).
    Returns (y, (x, mean, invstd, inplace, rms)): mean and invstd (R,)
    float64 as rows_forward gives them, inplace when y is x's memory."""
    cdef int xcode, pcode, inplace, k, i
    cdef cnp.ndarray xa
    cdef cnp.npy_intp D = 1, R, dim
    cdef Py_ssize_t pdim
    cdef double e
    cdef const void *wk
    cdef const void *bk
    cdef float *owned = NULL
    cdef double vbuf[64]
    cdef double *var = vbuf
    if not g_fast:
        return None
    xcode = array_code(x, False)
    if xcode == S_NONE or not data_fits_layer(xcode, layer_code(layer_dtype)):
        return None
    xa = <cnp.ndarray>x
    if not PyTuple_CheckExact(normalized_shape):
        return None
    k = <int>PyTuple_GET_SIZE(normalized_shape)
    if k < 1 or k > cnp.PyArray_NDIM(xa):
        return None
    for i in range(k):
        if not small_int(<object>PyTuple_GET_ITEM(normalized_shape, i), &pdim):
            return None
        dim = pdim
        if dim < 1 or dim != cnp.PyArray_DIMS(xa)[cnp.PyArray_NDIM(xa) - k + i]:
            return None
        D *= dim
    R = cnp.PyArray_SIZE(xa) // D
    if R == 0 or D * cnp.PyArray_ITEMSIZE(xa) > FUSE_BYTES:
        return None
    if rms and eps is None:
        e = machine_eps(xcode)
    elif not eps_ok(eps, &e):
        return None
    pcode = params_code(xcode, param_code(weight, xa, k),
                        S_NONE if rms and bias is not None else param_code(bias, xa, k),
                        S_ABSENT, S_ABSENT)
    if pcode == S_NONE or (weight is None and bias is not None):
        return None
    y = output_for(out, xa, xcode, &inplace)
    if y is None:
        return None
    mean = cnp.PyArray_EMPTY(1, &R, cnp.NPY_DOUBLE, 0)
    invstd = cnp.PyArray_EMPTY(1, &R, cnp.NPY_DOUBLE, 0)
    compute_params(pcode, data_or_null(weight), data_or_null(bias), D, &wk, &bk, &owned)
    if R > 64:
        var = <double *>malloc(R * sizeof(double))
        if var == NULL:
            free(owned)
            raise MemoryError()
    with nogil:
        rows_dispatch(xcode, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(<cnp.ndarray>y), R, D,
                      e, rms, wk, bk, <double *>cnp.PyArray_DATA(<cnp.ndarray>mean), var,
                      <double *>cnp.PyArray_DATA(<cnp.ndarray>invstd))
    if var != vbuf:
        free(var)
    free(owned)
    return y, (x, mean, invstd, bool(inplace), bool(rms))


# --------------------------------------------------------------------------
# GroupNorm and InstanceNorm (statistics of the input)
# --------------------------------------------------------------------------

cdef void groups_dispatch(int code, const void *x, void *y, int64_t R, int64_t D,
                          int64_t G, int64_t K, double eps, const void *w, const void *b,
                          double *mean, double *var, double *invstd) noexcept nogil:
    if code == S_F32:
        groups_run(<const float *>x, <float *>y, R, D, G, K, eps, w, b, mean, var, invstd)
    elif code == S_F64:
        groups_run(<const double *>x, <double *>y, R, D, G, K, eps, w, b, mean, var,
                   invstd)
    elif code == S_BF16:
        groups_run(<const fn_bf16 *>x, <fn_bf16 *>y, R, D, G, K, eps, w, b, mean, var,
                   invstd)
    else:
        groups_run(<const fn_f16 *>x, <fn_f16 *>y, R, D, G, K, eps, w, b, mean, var,
                   invstd)


def groups_call(x, out, groups, weight, bias, eps, layer_dtype, int min_ndim,
                int max_ndim, channels, running_mean, running_var,
                bint instance=False, bint update=False, momentum=None, counter=None):
    """GroupNorm, or InstanceNorm with the input's statistics, of the common
    call; or None.

    x (N, C, *) of min_ndim to max_ndim dims, non-empty; groups: a
    positive int dividing C, or with instance InstanceNorm (groups
    ignored: C groups, more than one spatial element); weight, bias (C,) or None; running_mean, running_var:
    None, or (C,) arrays that are checked as the general path checks them
    (an InstanceNorm layer tracking statistics in eval mode normalises
    with them: batch_call) but not read; channels: the layer's C (None
    for a function: any).
    update (InstanceNorm, C > 1): fold the batch average of the instance
    statistics (unbiased variance) into running_mean / running_var, as
    _group_norm.instance_forward does, with momentum (a float in [0, 1], or
    None: the cumulative average over counter + 1 batches, and then the
    counter, num_batches_tracked, is incremented).
    Slices of at most FUSE_BYTES only.  Returns (y, (x, mean, invstd,
    inplace, G)): mean, invstd (N * G,) float64."""
    cdef int xcode, pcode, inplace, nd, d
    cdef cnp.ndarray xa
    cdef cnp.npy_intp N, C, L = 1, G, R, D
    cdef Py_ssize_t pg
    cdef double e
    cdef const void *wk
    cdef const void *bk
    cdef float *owned = NULL
    cdef double vbuf[64]
    cdef double *var = vbuf
    cdef double f = 0.0, corr, sm, sv
    cdef int64_t nbt = 0, c, n
    cdef const double *pm
    if not g_fast:
        return None
    xcode = array_code(x, False)
    if xcode == S_NONE or not data_fits_layer(xcode, layer_code(layer_dtype)):
        return None
    xa = <cnp.ndarray>x
    nd = cnp.PyArray_NDIM(xa)
    if nd < min_ndim or nd > max_ndim or nd < 2:
        return None
    N = cnp.PyArray_DIMS(xa)[0]
    C = cnp.PyArray_DIMS(xa)[1]
    for d in range(2, nd):
        L *= cnp.PyArray_DIMS(xa)[d]
    if N * C * L == 0 or not channels_match(channels, C):
        return None
    if instance:
        if L < 2:
            return None         # instance statistics of one value: the general path's error
        G = C
    elif not small_int(groups, &pg):
        return None
    else:
        G = pg
    if G < 1 or C % G:
        return None
    R = N * G
    D = (C // G) * L
    if D * cnp.PyArray_ITEMSIZE(xa) > FUSE_BYTES or not eps_ok(eps, &e):
        return None
    pcode = params_code(xcode, param_code(weight, xa, -1), param_code(bias, xa, -1),
                        param_code(running_mean, xa, -1), param_code(running_var, xa, -1))
    if pcode == S_NONE:
        return None
    if update and (not instance or C < 2
                   or not update_args(running_mean, running_var, momentum, counter, &f,
                                      &nbt)):
        return None
    y = output_for(out, xa, xcode, &inplace)
    if y is None:
        return None
    mean = cnp.PyArray_EMPTY(1, &R, cnp.NPY_DOUBLE, 0)
    invstd = cnp.PyArray_EMPTY(1, &R, cnp.NPY_DOUBLE, 0)
    compute_params(pcode, data_or_null(weight), data_or_null(bias), C, &wk, &bk, &owned)
    if R > 64:
        var = <double *>malloc(R * sizeof(double))
        if var == NULL:
            free(owned)
            raise MemoryError()
    with nogil:
        groups_dispatch(xcode, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(<cnp.ndarray>y), R, D,
                        G, C // G, e, wk, bk, <double *>cnp.PyArray_DATA(<cnp.ndarray>mean),
                        var, <double *>cnp.PyArray_DATA(<cnp.ndarray>invstd))
    if update:
        # as instance_forward: NumPy's mean over the samples (a sum from 0 in
        # order, then / N) of the means and of var * (L / (L - 1)), blended
        pm = <const double *>cnp.PyArray_DATA(<cnp.ndarray>mean)
        corr = <double>L / <double>(L - 1)
        for c in range(C):
            sm = 0.0
            sv = 0.0
            for n in range(N):
                sm = sm + pm[n * C + c]
                sv = sv + var[n * C + c] * corr
            blend_at(pcode, cnp.PyArray_DATA(<cnp.ndarray>running_mean), c, f,
                     f * (sm / <double>N))
            blend_at(pcode, cnp.PyArray_DATA(<cnp.ndarray>running_var), c, f,
                     f * (sv / <double>N))
        if counter is not None and momentum is None:
            (<int64_t *>cnp.PyArray_DATA(<cnp.ndarray>counter))[0] = nbt
    if var != vbuf:
        free(var)
    free(owned)
    return y, (x, mean, invstd, bool(inplace), G)


# --------------------------------------------------------------------------
# Backward of the slice fast paths (rows_call, groups_call)
# --------------------------------------------------------------------------

cdef int same_array(object g, cnp.ndarray x, int xcode) noexcept:
    """g an acceptable array (array_code) of x's storage code and shape."""
    cdef int d
    if array_code(g, False) != xcode:
        return 0
    if cnp.PyArray_NDIM(<cnp.ndarray>g) != cnp.PyArray_NDIM(x):
        return 0
    for d in range(cnp.PyArray_NDIM(x)):
        if cnp.PyArray_DIMS(<cnp.ndarray>g)[d] != cnp.PyArray_DIMS(x)[d]:
            return 0
    return 1


cdef void rows_bwd_dispatch(int code, const void *x, const void *dy, void *dx, int64_t R,
                            int64_t D, bint rms, const void *w, const double *mean,
                            const double *invstd, double *s1, double *s2) except *:
    if code == S_F32:
        rows_bwd_run(<const float *>x, <const float *>dy, <float *>dx, R, D, rms, w, mean,
                     invstd, s1, s2)
    elif code == S_F64:
        rows_bwd_run(<const double *>x, <const double *>dy, <double *>dx, R, D, rms, w, mean,
                     invstd, s1, s2)
    elif code == S_BF16:
        rows_bwd_run(<const fn_bf16 *>x, <const fn_bf16 *>dy, <fn_bf16 *>dx, R, D, rms, w,
                     mean, invstd, s1, s2)
    else:
        rows_bwd_run(<const fn_f16 *>x, <const fn_f16 *>dy, <fn_f16 *>dx, R, D, rms, w, mean,
                     invstd, s1, s2)


cdef void groups_bwd_dispatch(int code, const void *x, const void *dy, void *dx, int64_t R,
                              int64_t D, int64_t G, int64_t K, const void *w,
                              const double *mean, const double *invstd, double *s1,
                              double *s2) except *:
    if code == S_F32:
        groups_bwd_run(<const float *>x, <const float *>dy, <float *>dx, R, D, G, K, w, mean,
                       invstd, s1, s2)
    elif code == S_F64:
        groups_bwd_run(<const double *>x, <const double *>dy, <double *>dx, R, D, G, K, w,
                       mean, invstd, s1, s2)
    elif code == S_BF16:
        groups_bwd_run(<const fn_bf16 *>x, <const fn_bf16 *>dy, <fn_bf16 *>dx, R, D, G, K, w,
                       mean, invstd, s1, s2)
    else:
        groups_bwd_run(<const fn_f16 *>x, <const fn_f16 *>dy, <fn_f16 *>dx, R, D, G, K, w,
                       mean, invstd, s1, s2)


cdef object grad_like(object weight, bint need):
    """A new array of the weight's shape and dtype for its gradient, or None."""
    if not need:
        return None
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(<cnp.ndarray>weight),
                             cnp.PyArray_DIMS(<cnp.ndarray>weight),
                             cnp.PyArray_TYPE(<cnp.ndarray>weight), 0)


def rows_bwd_call(grad_output, saved, weight, bint need_weight, bint need_bias):
    """LayerNorm/RMSNorm gradients of a forward made by rows_call, of the
    common call; or None.

    The general path's arithmetic (_layer_norm.backward, one pass per
    row), so its bits.  saved: rows_call's tuple (x, mean, invstd, inplace,
    rms); grad_output: of x's shape and dtype; weight: the layer's, of the
    normalized shape, or None (then no parameter gradient asked for).  None
    also when the forward wrote over its input (the general path's error).
    Returns (dx, grad_weight or None, grad_bias or None), the gradients of
    the weight's shape and dtype."""
    cdef int xcode, pcode, tmp
    cdef cnp.ndarray xa
    cdef cnp.npy_intp R, D, j
    cdef const void *wk
    cdef const void *bk
    cdef float *owned = NULL
    cdef double sbuf[2 * 256]
    cdef double *s = sbuf
    cdef bint rms
    if not g_fast or not PyTuple_CheckExact(saved) or PyTuple_GET_SIZE(saved) != 5:
        return None
    x, mean, invstd, inplace, rms_o = saved
    if inplace is not False or type(rms_o) is not bool:
        return None
    rms = rms_o
    xcode = array_code(x, False)
    if xcode == S_NONE or not same_array(grad_output, <cnp.ndarray>x, xcode):
        return None
    xa = <cnp.ndarray>x
    R = cnp.PyArray_DIMS(<cnp.ndarray>mean)[0]
    if R == 0:
        return None
    D = cnp.PyArray_SIZE(xa) // R
    if weight is None:
        if need_weight or need_bias:
            return None
        pcode = S_ABSENT
    else:
        pcode = params_code(xcode, param_code(weight, xa, cnp.PyArray_NDIM(<cnp.ndarray>weight)),
                            S_ABSENT, S_ABSENT, S_ABSENT)
        if pcode == S_NONE or cnp.PyArray_SIZE(<cnp.ndarray>weight) != D:
            return None
    dx = output_for(None, xa, xcode, &tmp)
    gw = grad_like(weight, need_weight)
    gb = grad_like(weight, need_bias)
    if D > 256:
        s = <double *>malloc(2 * D * sizeof(double))
        if s == NULL:
            raise MemoryError()
    try:
        if weight is None:
            # the kernel takes a weight: ones in the compute type
            wk = owned = <float *>malloc(D * (8 if xcode == S_F64 else 4))
            if owned == NULL:
                raise MemoryError()
            for j in range(D):
                if xcode == S_F64:
                    (<double *>owned)[j] = 1.0
                else:
                    owned[j] = 1.0
        else:
            compute_params(pcode, cnp.PyArray_DATA(<cnp.ndarray>weight), NULL, D, &wk, &bk,
                           &owned)
        rows_bwd_dispatch(xcode, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(<cnp.ndarray>grad_output),
                          cnp.PyArray_DATA(<cnp.ndarray>dx), R, D, rms, wk,
                          <const double *>cnp.PyArray_DATA(<cnp.ndarray>mean),
                          <const double *>cnp.PyArray_DATA(<cnp.ndarray>invstd), s, s + D)
        if need_weight:
            store_doubles(pcode, cnp.PyArray_DATA(<cnp.ndarray>gw), s + D, D)
        if need_bias:
            store_doubles(pcode, cnp.PyArray_DATA(<cnp.ndarray>gb), s, D)
    finally:
        free(owned)
        if s != sbuf:
            free(s)
    return dx, gw, gb


def groups_bwd_call(grad_output, saved, weight, bint need_weight, bint need_bias):
    """GroupNorm/InstanceNorm gradients of a forward made by groups_call, of
    the common call; or None.

    The general path's arithmetic (_group_norm.backward, one pass per
    slice; the parameter gradients summed over the samples in order), so
    its bits.  saved: groups_call's tuple (x, mean, invstd, inplace, G);
    grad_output: of x's shape and dtype; weight: the layer's, (C,) or None
    (then no parameter gradient asked for).  Per-(sample, channel) sums of
    at most FUSE_BYTES (larger: the general path's pooled arrays), C > 1.
    Returns (dx, grad_weight or None, grad_bias or None)."""
    cdef int xcode, pcode, tmp, d
    cdef cnp.ndarray xa
    cdef cnp.npy_intp N, C, L = 1, G, K, R
    cdef const void *wk
    cdef const void *bk
    cdef float *owned = NULL
    cdef double sbuf[2 * 256]
    cdef double *s = sbuf
    cdef const double *pi
    cdef double gbuf[2 * 128]
    cdef double *sums = gbuf
    cdef Py_ssize_t pg
    if not g_fast or not PyTuple_CheckExact(saved) or PyTuple_GET_SIZE(saved) != 5:
        return None
    x, mean, invstd, inplace, groups = saved
    if inplace is not False or not small_int(groups, &pg):
        return None
    xcode = array_code(x, False)
    if xcode == S_NONE or not same_array(grad_output, <cnp.ndarray>x, xcode):
        return None
    xa = <cnp.ndarray>x
    if cnp.PyArray_NDIM(xa) < 2:
        return None
    N = cnp.PyArray_DIMS(xa)[0]
    C = cnp.PyArray_DIMS(xa)[1]
    for d in range(2, cnp.PyArray_NDIM(xa)):
        L *= cnp.PyArray_DIMS(xa)[d]
    G = pg
    if G < 1 or C < 2 or C % G or N * C * L == 0 or 2 * N * C * 8 > FUSE_BYTES:
        return None
    K = C // G
    R = N * G
    if cnp.PyArray_DIMS(<cnp.ndarray>mean)[0] != R:
        return None
    if weight is None:
        if need_weight or need_bias:
            return None
        pcode = S_ABSENT
    else:
        pcode = params_code(xcode, param_code(weight, xa, -1), S_ABSENT, S_ABSENT, S_ABSENT)
        if pcode == S_NONE:
            return None
    pi = <const double *>cnp.PyArray_DATA(<cnp.ndarray>invstd)
    dx = output_for(None, xa, xcode, &tmp)
    gw = grad_like(weight, need_weight)
    gb = grad_like(weight, need_bias)
    if N * C > 256:
        s = <double *>malloc(2 * N * C * sizeof(double))
        if s == NULL:
            raise MemoryError()
    try:
        compute_params(pcode, data_or_null(weight), NULL, C, &wk, &bk, &owned)
        groups_bwd_dispatch(xcode, cnp.PyArray_DATA(xa),
                            cnp.PyArray_DATA(<cnp.ndarray>grad_output),
                            cnp.PyArray_DATA(<cnp.ndarray>dx), R, K * L, G, K, wk,
                            <const double *>cnp.PyArray_DATA(<cnp.ndarray>mean), pi, s,
                            s + N * C)
        # the general path's sums over the samples (group_param_sums)
        if C > 128:
            sums = <double *>malloc(2 * C * sizeof(double))
            if sums == NULL:
                raise MemoryError()
        group_param_sums(s, s + N * C, pi, N, G, K, sums, sums + C)
        if need_weight:
            store_doubles(pcode, cnp.PyArray_DATA(<cnp.ndarray>gw), sums, C)
        if need_bias:
            store_doubles(pcode, cnp.PyArray_DATA(<cnp.ndarray>gb), sums + C, C)
    finally:
        free(owned)
        if s != sbuf:
            free(s)
        if sums != gbuf:
            free(sums)
    return dx, gw, gb


# --------------------------------------------------------------------------
# BatchNorm in eval mode (and the functionals with running statistics)
# --------------------------------------------------------------------------

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
        # (centre - mean) * scale, 0 where the scale is not finite (an
        # overflowing weight * invstd), as _checks.centered
        k[2 * C + c] = (ctr - m) * sc if isfinite(sc) else 0.0
        if b != NULL:
            k[2 * C + c] = k[2 * C + c] + fn_at(b, c)
    return 1


cdef int coefficients(int pcode, const void *rm, const void *rv, const void *w,
                      const void *b, double eps, int64_t C, double *mean, double *invstd,
                      double *k) noexcept nogil:
    """eval_coefficients on parameters of storage code pcode."""
    if pcode == S_F32:
        return eval_coefficients(<const float *>rm, <const float *>rv, <const float *>w,
                                 <const float *>b, eps, C, mean, invstd, k)
    if pcode == S_F64:
        return eval_coefficients(<const double *>rm, <const double *>rv,
                                 <const double *>w, <const double *>b, eps, C, mean,
                                 invstd, k)
    if pcode == S_BF16:
        return eval_coefficients(<const fn_bf16 *>rm, <const fn_bf16 *>rv,
                                 <const fn_bf16 *>w, <const fn_bf16 *>b, eps, C, mean,
                                 invstd, k)
    return eval_coefficients(<const fn_f16 *>rm, <const fn_f16 *>rv, <const fn_f16 *>w,
                             <const fn_f16 *>b, eps, C, mean, invstd, k)


cdef int elementwise_call(int code, int op, const void *x, const void *dy, void *y,
                          int64_t N, int64_t C, int64_t L, int reads, const double *k0,
                          const double *k1, const double *k2, const double *k3) except -1:
    """elementwise() over data of storage code `code`."""
    if code == S_F32:
        elementwise(op, <const float *>x, <const float *>dy, <float *>y, N, C, L, reads,
                    k0, k1, k2, k3)
    elif code == S_F64:
        elementwise(op, <const double *>x, <const double *>dy, <double *>y, N, C, L, reads,
                    k0, k1, k2, k3)
    elif code == S_BF16:
        elementwise(op, <const fn_bf16 *>x, <const fn_bf16 *>dy, <fn_bf16 *>y, N, C, L,
                    reads, k0, k1, k2, k3)
    else:
        elementwise(op, <const fn_f16 *>x, <const fn_f16 *>dy, <fn_f16 *>y, N, C, L, reads,
                    k0, k1, k2, k3)
    return 0


cdef inline int affine_call(int code, const void *x, void *y, int64_t N, int64_t C,
                            int64_t L, const double *k) except -1:
    """The affine pass (k: centre, scale, shift, each C long)."""
    return elementwise_call(code, OP_AFFINE, x, NULL, y, N, C, L, 1, k, k + C, k + 2 * C,
                            k + 2 * C)


cdef int reduction_call(int code, int op, const void *x, const void *dy,
                        const double *mean, int64_t N, int64_t C, int64_t L, double *a,
                        double *b) except -1:
    """reduction() over data of storage code `code`."""
    if code == S_F32:
        reduction(op, <const float *>x, <const float *>dy, mean, N, C, L, a, b)
    elif code == S_F64:
        reduction(op, <const double *>x, <const double *>dy, mean, N, C, L, a, b)
    elif code == S_BF16:
        reduction(op, <const fn_bf16 *>x, <const fn_bf16 *>dy, mean, N, C, L, a, b)
    else:
        reduction(op, <const fn_f16 *>x, <const fn_f16 *>dy, mean, N, C, L, a, b)
    return 0


cdef inline double value_at(int code, const void *p, int64_t i) noexcept nogil:
    """p[i] as a double, p of storage code `code`."""
    if code == S_F32:
        return (<const float *>p)[i]
    if code == S_F64:
        return (<const double *>p)[i]
    if code == S_BF16:
        return fn_at(<const fn_bf16 *>p, i)
    return fn_at(<const fn_f16 *>p, i)


cdef inline void store_double(int code, void *p, int64_t i, double v) noexcept nogil:
    """p[i] = v rounded once to storage code `code` (as NumPy's and
    ml_dtypes' casts from float64)."""
    if code == S_F32:
        (<float *>p)[i] = <float>v
    elif code == S_F64:
        (<double *>p)[i] = v
    elif code == S_BF16:
        (<fn_bf16 *>p)[i] = fn_std_bf16(v)
    else:
        (<fn_f16 *>p)[i] = fn_std_f16(v)


cdef void store_doubles(int code, void *p, const double *v, int64_t n) noexcept nogil:
    """p[:n] = v[:n] rounded once to storage code `code` (store_double)."""
    cdef int64_t i
    if code == S_F32:
        for i in range(n):
            (<float *>p)[i] = <float>v[i]
    elif code == S_F64:
        memcpy(p, v, n * sizeof(double))
    elif code == S_BF16:
        for i in range(n):
            (<fn_bf16 *>p)[i] = fn_std_bf16(v[i])
    else:
        for i in range(n):
            (<fn_f16 *>p)[i] = fn_std_f16(v[i])


cdef inline void blend_at(int code, void *buf, int64_t i, double f, double step) noexcept nogil:
    """buf[i] = (1 - f) * buf[i] + step, as _checks.blend: the product in
    float32 for a float32 buffer (NumPy's rule for a Python float), in
    float64 for the others; the sum in float64, rounded once to the
    buffer's dtype."""
    cdef float keep
    if code == S_F32:
        keep = <float>(1.0 - f)
        (<float *>buf)[i] = <float>(<double>(keep * (<float *>buf)[i]) + step)
    else:
        store_double(code, buf, i, (1.0 - f) * value_at(code, buf, i) + step)


cdef int update_args(object running_mean, object running_var, object momentum,
                     object counter, double *f, int64_t *nbt) noexcept:
    """The running statistics' update of a training call: 1 when both
    buffers are writable and momentum a float in [0, 1] (f = momentum), or
    None with a counter (f = 1 / (count + 1)); nbt = counter + 1 (0 without
    a counter).  0 otherwise (the general path explains)."""
    nbt[0] = 0
    if (running_mean is None or running_var is None or not is_writable(running_mean)
            or not is_writable(running_var)):
        return 0
    if counter is not None:
        if not counter_value(counter, nbt) or nbt[0] < 0:
            return 0
        nbt[0] += 1
    if momentum is None:
        if counter is None:
            return 0
        f[0] = 1.0 / <double>nbt[0]
        return 1
    if not PyFloat_CheckExact(momentum):
        return 0
    f[0] = PyFloat_AS_DOUBLE(momentum)
    return 0.0 <= f[0] <= 1.0


cdef inline double centre_for(int code, double m) noexcept nogil:
    """m rounded to the compute type of data of storage code `code` (float64
    for float64 data, float32 for the others), as fn_centre and
    _checks.centered."""
    if code == S_F64:
        return m
    return <double><float>m


cdef inline double centre_term(double ctr, double m, double factor) noexcept nogil:
    """(ctr - m) * factor, 0 where m or factor is not finite: _checks.centered."""
    cdef double d = ctr - m if isfinite(m) else 0.0
    return d * factor if isfinite(factor) else 0.0


def batch_call(x, out, running_mean, running_var, weight, bias, eps, layer_dtype,
               int min_ndim, int max_ndim, channels):
    """Eval-mode batch norm of the common call, or None.

    out = (x - running_mean) / sqrt(running_var + eps) * weight + bias, with
    the coefficients of eval_coefficients, so the same bits as the general
    path (_batch_norm.py).  x (N, C, *) of min_ndim to max_ndim dims, N * L
    > 0; running_mean, running_var (C,) (both required); weight, bias (C,)
    or None; layer_dtype: the layer's dtype, None for a function;
    channels: the layer's C (None for a function: any).  None
    also when a variance is not positive or a mean or weight not finite (the
    general path's warnings and rules).  Returns (y, (x, mean, invstd,
    inplace, False)): mean, invstd (C,) float64, what batch_bwd_call needs
    (False: the statistics did not come from the batch)."""
    cdef int xcode, pcode, inplace, nd, d
    cdef cnp.ndarray xa
    cdef cnp.npy_intp N, C, L = 1
    cdef double e
    cdef double kbuf[3 * SMALL_K]
    cdef double *k = kbuf
    cdef int ok
    if not g_fast:
        return None
    xcode = array_code(x, False)
    if xcode == S_NONE or not data_fits_layer(xcode, layer_code(layer_dtype)):
        return None
    xa = <cnp.ndarray>x
    nd = cnp.PyArray_NDIM(xa)
    if nd < min_ndim or nd > max_ndim or nd < 2:
        return None
    N = cnp.PyArray_DIMS(xa)[0]
    C = cnp.PyArray_DIMS(xa)[1]
    for d in range(2, nd):
        L *= cnp.PyArray_DIMS(xa)[d]
    if (N * L == 0 or C == 0 or not channels_match(channels, C)
            or running_mean is None or running_var is None):
        return None
    if not eps_ok(eps, &e):
        return None
    pcode = params_code(xcode, param_code(running_mean, xa, -1),
                        param_code(running_var, xa, -1), param_code(weight, xa, -1),
                        param_code(bias, xa, -1))
    if pcode == S_NONE:
        return None
    y = output_for(out, xa, xcode, &inplace)
    if y is None:
        return None
    mean = cnp.PyArray_EMPTY(1, &C, cnp.NPY_DOUBLE, 0)
    invstd = cnp.PyArray_EMPTY(1, &C, cnp.NPY_DOUBLE, 0)
    if C > SMALL_K:
        k = <double *>malloc(3 * C * sizeof(double))
        if k == NULL:
            raise MemoryError()
    try:
        ok = coefficients(pcode, cnp.PyArray_DATA(<cnp.ndarray>running_mean),
                          cnp.PyArray_DATA(<cnp.ndarray>running_var), data_or_null(weight),
                          data_or_null(bias), e, C,
                          <double *>cnp.PyArray_DATA(<cnp.ndarray>mean),
                          <double *>cnp.PyArray_DATA(<cnp.ndarray>invstd), k)
        if not ok:
            return None     # nothing written to y (a new array, or out untouched)
        affine_call(xcode, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(<cnp.ndarray>y), N, C,
                    L, k)
    finally:
        if k != kbuf:
            free(k)
    return y, (x, mean, invstd, bool(inplace), False)


cdef inline int counter_value(object counter, int64_t *value) noexcept:
    """A layer's num_batches_tracked: an exact writable 0-d int64 array."""
    cdef int need = cnp.NPY_ARRAY_ALIGNED | cnp.NPY_ARRAY_WRITEABLE
    if not cnp.PyArray_CheckExact(counter):
        return 0
    if (cnp.PyArray_NDIM(<cnp.ndarray>counter) != 0
            or cnp.PyArray_TYPE(<cnp.ndarray>counter) != cnp.NPY_INT64
            or (cnp.PyArray_FLAGS(<cnp.ndarray>counter) & need) != need
            or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>counter)):
        return 0
    value[0] = (<int64_t *>cnp.PyArray_DATA(<cnp.ndarray>counter))[0]
    return 1


cdef inline bint is_writable(object o) noexcept:
    return (cnp.PyArray_FLAGS(<cnp.ndarray>o) & cnp.NPY_ARRAY_WRITEABLE) != 0


def batch_train_call(x, out, running_mean, running_var, weight, bias, eps, momentum,
                     counter, layer_dtype, int min_ndim, int max_ndim, channels):
    """Batch norm with this batch's statistics, of the common call, or None.

    The general path's arithmetic (_batch_norm.forward), so its bits:
    mean and biased variance per channel (the reduction of batch_stats),
    invstd = 1 / sqrt(var + eps), the affine pass with the coefficients of
    _checks.centered, then the running statistics' update.
    x (N, C, *) of min_ndim to max_ndim dims, N * L > 1; weight, bias (C,)
    or None; running_mean, running_var: both None (nothing to update), or
    both (C,) writable arrays, updated as _checks.blend does with momentum (a float in [0, 1],
    or None: the cumulative average over the batch count); counter: None,
    or the layer's num_batches_tracked (0-d int64), incremented (needed
    for momentum None).  Nothing is written before every check has passed.
    Returns (y, (x, mean, invstd, inplace, True)): mean, invstd (C,)
    float64, what batch_bwd_call needs."""
    cdef int xcode, pcode, inplace, nd, d
    cdef cnp.ndarray xa
    cdef cnp.npy_intp N, C, L = 1
    cdef int64_t c, count, nbt = 0
    cdef double e, f = 0.0, corr, m, inv, sc, ctr, t
    cdef double kbuf[4 * SMALL_K]       # centre, scale, shift, var
    cdef double *k = kbuf
    cdef double *pm
    cdef double *pi
    cdef const void *w
    cdef const void *b
    cdef void *prm
    cdef void *prv
    cdef bint update
    if not g_fast:
        return None
    xcode = array_code(x, False)
    if xcode == S_NONE or not data_fits_layer(xcode, layer_code(layer_dtype)):
        return None
    xa = <cnp.ndarray>x
    nd = cnp.PyArray_NDIM(xa)
    if nd < min_ndim or nd > max_ndim or nd < 2:
        return None
    N = cnp.PyArray_DIMS(xa)[0]
    C = cnp.PyArray_DIMS(xa)[1]
    for d in range(2, nd):
        L *= cnp.PyArray_DIMS(xa)[d]
    count = N * L
    if count < 2 or C == 0 or not channels_match(channels, C) or not eps_ok(eps, &e):
        return None
    update = running_mean is not None or running_var is not None
    pcode = params_code(xcode, param_code(running_mean, xa, -1),
                        param_code(running_var, xa, -1), param_code(weight, xa, -1),
                        param_code(bias, xa, -1))
    if pcode == S_NONE:
        return None
    if update:
        if not update_args(running_mean, running_var, momentum, counter, &f, &nbt):
            return None
    elif counter is not None:
        return None
    y = output_for(out, xa, xcode, &inplace)
    if y is None:
        return None
    mean = cnp.PyArray_EMPTY(1, &C, cnp.NPY_DOUBLE, 0)
    invstd = cnp.PyArray_EMPTY(1, &C, cnp.NPY_DOUBLE, 0)
    pm = <double *>cnp.PyArray_DATA(<cnp.ndarray>mean)
    pi = <double *>cnp.PyArray_DATA(<cnp.ndarray>invstd)
    w = data_or_null(weight)
    b = data_or_null(bias)
    if C > SMALL_K:
        k = <double *>malloc(4 * C * sizeof(double))
        if k == NULL:
            raise MemoryError()
    try:
        reduction_call(xcode, RED_MOMENTS, cnp.PyArray_DATA(xa), NULL, NULL, N, C, L, pm,
                       k + 3 * C)
        for c in range(C):
            m = pm[c]
            inv = 1.0 / sqrt(k[3 * C + c] + e)
            pi[c] = inv
            sc = inv if w == NULL else inv * value_at(pcode, w, c)
            ctr = centre_for(xcode, m)
            t = centre_term(ctr, m, sc)
            k[c] = ctr
            k[C + c] = sc
            k[2 * C + c] = t if b == NULL else t + value_at(pcode, b, c)
        affine_call(xcode, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(<cnp.ndarray>y), N, C,
                    L, k)
        if update:
            # _checks.blend of the batch mean and unbiased variance
            corr = <double>count / <double>(count - 1)
            prm = cnp.PyArray_DATA(<cnp.ndarray>running_mean)
            prv = cnp.PyArray_DATA(<cnp.ndarray>running_var)
            for c in range(C):
                blend_at(pcode, prm, c, f, f * pm[c])
                blend_at(pcode, prv, c, f, f * (k[3 * C + c] * corr))
            if counter is not None:
                (<int64_t *>cnp.PyArray_DATA(<cnp.ndarray>counter))[0] = nbt
    finally:
        if k != kbuf:
            free(k)
    return y, (x, mean, invstd, bool(inplace), True)


def batch_bwd_call(grad_output, saved, weight, bint need_weight, bint need_bias):
    """Gradients of a batch norm forward made by batch_call or
    batch_train_call, of the common call; or None.

    The general path's arithmetic (_batch_norm.backward), so its bits.
    saved: the forward's tuple (x, mean, invstd, inplace, batch_stats);
    grad_output: of x's shape and dtype; weight: the layer's, None or (C,).
    None also
    when the forward wrote over its input (the general path's error).
    Returns (dx, grad_weight or None, grad_bias or None), the gradients in
    the parameters' dtype."""
    cdef int xcode, pcode, nd, d, gtype
    cdef cnp.ndarray xa, ga
    cdef cnp.npy_intp N, C, L = 1
    cdef int64_t c, count
    cdef double inv, a, bb, ctr
    cdef double kbuf[6 * SMALL_K]       # sum dy, sum dy (x - mean), centre, a, b, k
    cdef double *k = kbuf
    cdef const double *pm
    cdef const double *pi
    cdef const void *w
    cdef bint batch_stats
    if not g_fast or not PyTuple_CheckExact(saved) or PyTuple_GET_SIZE(saved) != 5:
        return None
    x, mean, invstd, inplace, batch_stats = saved
    if inplace is not False:
        return None
    xcode = array_code(x, False)
    if xcode == S_NONE or not same_array(grad_output, <cnp.ndarray>x, xcode):
        return None
    xa = <cnp.ndarray>x
    ga = <cnp.ndarray>grad_output
    nd = cnp.PyArray_NDIM(xa)
    if nd < 2:
        return None
    N = cnp.PyArray_DIMS(xa)[0]
    C = cnp.PyArray_DIMS(xa)[1]
    for d in range(2, nd):
        L *= cnp.PyArray_DIMS(xa)[d]
    count = N * L
    if count == 0 or C == 0:
        return None
    pcode = params_code(xcode, param_code(weight, xa, -1), S_ABSENT, S_ABSENT, S_ABSENT)
    if pcode == S_NONE:
        return None
    # the gradients' dtype: the weight's, else the data's
    gtype = cnp.PyArray_TYPE(<cnp.ndarray>(x if weight is None else weight))
    if pcode == S_ABSENT:
        pcode = xcode
    pm = <const double *>cnp.PyArray_DATA(<cnp.ndarray>mean)
    pi = <const double *>cnp.PyArray_DATA(<cnp.ndarray>invstd)
    w = data_or_null(weight)
    dx = output_for(None, xa, xcode, &d)
    gw = cnp.PyArray_EMPTY(1, &C, gtype, 0) if need_weight else None
    gb = cnp.PyArray_EMPTY(1, &C, gtype, 0) if need_bias else None
    if C > SMALL_K:
        k = <double *>malloc(6 * C * sizeof(double))
        if k == NULL:
            raise MemoryError()
    try:
        reduction_call(xcode, RED_DOT, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(ga), pm, N, C,
                       L, k, k + C)
        for c in range(C):
            inv = pi[c]
            a = inv if w == NULL else inv * value_at(pcode, w, c)
            k[3 * C + c] = a
            if batch_stats:
                # dx = a*dy - b*(x - mean) - k, x - mean = (x - centre) + (centre - mean)
                bb = a * inv * inv * k[C + c] / <double>count
                ctr = centre_for(xcode, pm[c])
                k[2 * C + c] = ctr
                k[4 * C + c] = bb
                k[5 * C + c] = a * k[c] / <double>count + centre_term(ctr, pm[c], bb)
        if batch_stats:
            elementwise_call(xcode, OP_BWD, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(ga),
                             cnp.PyArray_DATA(<cnp.ndarray>dx), N, C, L, 2, k + 2 * C,
                             k + 3 * C, k + 4 * C, k + 5 * C)
        else:
            elementwise_call(xcode, OP_SCALE, cnp.PyArray_DATA(ga), cnp.PyArray_DATA(ga),
                             cnp.PyArray_DATA(<cnp.ndarray>dx), N, C, L, 1, k + 3 * C,
                             k + 3 * C, k + 3 * C, k + 3 * C)
        for c in range(C):
            if need_weight:
                store_double(pcode, cnp.PyArray_DATA(<cnp.ndarray>gw), c, k[C + c] * pi[c])
            if need_bias:
                store_double(pcode, cnp.PyArray_DATA(<cnp.ndarray>gb), c, k[c])
    finally:
        if k != kbuf:
            free(k)
    return dx, gw, gb


# --------------------------------------------------------------------------
# LocalResponseNorm
# --------------------------------------------------------------------------

cdef int lrn_dispatch(int code, const void *x, void *y, int64_t N, int64_t C, int64_t L,
                      int64_t size, double alpha, double beta, double k) except -1:
    if code == S_F32:
        lrn(<const float *>x, <const float *>NULL, <float *>y, N, C, L, size, alpha, beta, k)
    elif code == S_F64:
        lrn(<const double *>x, <const double *>NULL, <double *>y, N, C, L, size, alpha,
            beta, k)
    elif code == S_BF16:
        lrn(<const fn_bf16 *>x, <const fn_bf16 *>NULL, <fn_bf16 *>y, N, C, L, size, alpha,
            beta, k)
    else:
        lrn(<const fn_f16 *>x, <const fn_f16 *>NULL, <fn_f16 *>y, N, C, L, size, alpha,
            beta, k)
    return 0


cdef inline int finite_float(object v, double *value) noexcept:
    if not PyFloat_CheckExact(v):
        return 0
    value[0] = PyFloat_AS_DOUBLE(v)
    return isfinite(value[0])


def lrn_call(x, out, size, alpha, beta, k):
    """LocalResponseNorm forward of the common call, or None: x (N, C, *) of
    3 to 64 dims, non-empty; size a positive int; alpha, beta, k finite
    floats; out None or an array apart from x (no overlap at all: each
    output reads neighbouring channels).  Returns y."""
    cdef int xcode, inplace, nd, d
    cdef cnp.ndarray xa
    cdef cnp.npy_intp N, C, L = 1
    cdef Py_ssize_t sz
    cdef double a, b, kk
    if not g_fast:
        return None
    xcode = array_code(x, False)
    if xcode == S_NONE:
        return None
    xa = <cnp.ndarray>x
    nd = cnp.PyArray_NDIM(xa)
    if nd < 3 or nd > 64 or not small_int(size, &sz):
        return None
    N = cnp.PyArray_DIMS(xa)[0]
    C = cnp.PyArray_DIMS(xa)[1]
    for d in range(2, nd):
        L *= cnp.PyArray_DIMS(xa)[d]
    if (N * C * L == 0 or sz < 1 or not finite_float(alpha, &a) or not finite_float(beta, &b)
            or not finite_float(k, &kk)):
        return None
    y = output_for(out, xa, xcode, &inplace)
    if y is None or inplace:
        return None
    lrn_dispatch(xcode, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(<cnp.ndarray>y), N, C, L, sz,
                 a, b, kk)
    return y
