# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False, nonecheck=False
"""OpenMP kernels of fastnorm.

Design notes
------------
Layout.  Every kernel sees its data as a C-contiguous (N, C, L) array: N
samples, C channels, L elements per channel plane.  Statistics are per
channel, over the N * L values of that channel.  The Python layer reshapes,
validates and makes the data contiguous before any kernel runs; kernels
assume valid input, hold no Python objects and run without the GIL.

Units.  Each channel's values are cut into *units* by the shape alone:
  * L >= UNIT: a unit is a piece of at most UNIT consecutive elements of one
    plane (one sample, one channel);
  * L <  UNIT: a unit is a block of UNIT // L consecutive samples of one
    channel, all of their L elements.
A unit is small enough to stay in L1/L2 between the two passes made over it.

Statistics.  For each unit, a two-pass mean and M2 (corrected two-pass: sum of
deviations from the first-pass mean is folded back in) with float64
accumulators.  The per-unit partials (count, mean, M2) are then merged per
channel with Chan's formula, in unit order.  Units are computed in parallel
(any thread may take any unit), the merge is parallel over channels, and
neither the units nor the merge order depend on the thread count: results are
bitwise identical whatever the number of threads.  Backward sums (sum of dy,
sum of dy * (x - mean)) use the same units and the same ordered merge.

Normalisation.  y = (x - c) * s + t per channel, where c is the mean rounded
to the data type, s = weight * invstd and t absorbs bias and the rounding of
c, all computed in float64.  x - c cancels exactly for values near the mean,
so float32 data with a large offset (1e4 + N(0, 1)) keeps full precision,
where the fused x * s + (b - mean * s) loses ~1e-3.

Threads.  The thread count is read from omp_get_max_threads() on every call,
so threadpoolctl and OMP_NUM_THREADS take effect; the extension never calls
omp_set_num_threads.  Small problems run on fewer threads (MIN_WORK elements
per thread at least) and a single-threaded call runs no parallel region.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

cdef extern from "_omp_shim.h" nogil:
    int omp_get_max_threads()
    int omp_get_thread_num()
    int omp_get_num_threads()
    int FASTNORM_HAVE_OPENMP

cdef extern from "_loops.h" nogil:
    double fn_sum_f32(const float *x, int64_t n)
    double fn_sum_f64(const double *x, int64_t n)
    void fn_dev_f32(const float *x, int64_t n, double m, double *sd, double *sdd)
    void fn_dev_f64(const double *x, int64_t n, double m, double *sd, double *sdd)
    void fn_dot_f32(const float *x, const float *dy, int64_t n, double m,
                    double *sdy, double *sdyx)
    void fn_dot_f64(const double *x, const double *dy, int64_t n, double m,
                    double *sdy, double *sdyx)
    void fn_affine_f32(const float *x, float *y, int64_t n, float c, float s, float t)
    void fn_affine_f64(const double *x, double *y, int64_t n, double c, double s,
                       double t)
    void fn_bwd_f32(const float *x, const float *dy, float *dx, int64_t n,
                    float c, float a, float b, float k)
    void fn_bwd_f64(const double *x, const double *dy, double *dx, int64_t n,
                    double c, double a, double b, double k)
    void fn_scale_f32(const float *dy, float *dx, int64_t n, float a)
    void fn_scale_f64(const double *dy, double *dx, int64_t n, double a)

# Elements per unit.  Changing it changes the last bits of results (not their
# accuracy), so it is a constant of the library, not a tuning knob.
cdef enum:
    UNIT = 4096
    # Fewest elements worth giving to one more thread.
    MIN_WORK = 32768

cdef int g_threads_used = 1


# --------------------------------------------------------------------------
# Geometry and thread count
# --------------------------------------------------------------------------

cdef struct Units:
    int64_t N, C, L
    int64_t rows        # samples per unit
    int64_t pieces      # units per plane (L >= UNIT), else 1
    int64_t piece       # elements per piece of a plane
    int64_t per_chan    # units per channel


cdef inline Units make_units(int64_t N, int64_t C, int64_t L) noexcept nogil:
    cdef Units g
    g.N = N
    g.C = C
    g.L = L
    if L >= UNIT:
        g.rows = 1
        g.piece = UNIT
        g.pieces = (L + UNIT - 1) // UNIT
    else:
        g.rows = UNIT // L
        g.piece = L
        g.pieces = 1
    g.per_chan = ((N + g.rows - 1) // g.rows) * g.pieces
    return g


cdef inline void unit_span(const Units *g, int64_t u, int64_t *n0, int64_t *n1,
                           int64_t *l0, int64_t *ln) noexcept nogil:
    """Samples [n0, n1) and elements [l0, l0 + ln) of unit u of a channel."""
    cdef int64_t block = u // g.pieces
    cdef int64_t p = u - block * g.pieces
    n0[0] = block * g.rows
    n1[0] = n0[0] + g.rows
    if n1[0] > g.N:
        n1[0] = g.N
    l0[0] = p * g.piece
    ln[0] = g.piece
    if l0[0] + ln[0] > g.L:
        ln[0] = g.L - l0[0]


cdef inline int threads_for(int64_t work) noexcept nogil:
    cdef int nt = omp_get_max_threads()
    cdef int64_t cap = work // MIN_WORK
    if cap < 1:
        cap = 1
    if cap < nt:
        nt = <int>cap
    if nt < 1:
        nt = 1
    return nt


cdef inline void note_threads() noexcept nogil:
    global g_threads_used
    if omp_get_thread_num() == 0:
        g_threads_used = omp_get_num_threads()


# --------------------------------------------------------------------------
# Per-unit bodies (one unit of one channel each)
# --------------------------------------------------------------------------

cdef inline void unit_moments(const floating *x, const Units *g, int64_t c,
                              int64_t u, double *mean, double *m2) noexcept nogil:
    """OUT mean[0], m2[0]: two-pass moments of unit u of channel c."""
    cdef int64_t n0, n1, l0, ln, n
    cdef double s = 0.0, sd = 0.0, sdd = 0.0, cnt, m
    cdef const floating *p
    unit_span(g, u, &n0, &n1, &l0, &ln)
    cnt = <double>((n1 - n0) * ln)
    for n in range(n0, n1):
        p = x + (n * g.C + c) * g.L + l0
        if floating is float:
            s += fn_sum_f32(p, ln)
        else:
            s += fn_sum_f64(p, ln)
    m = s / cnt
    for n in range(n0, n1):
        p = x + (n * g.C + c) * g.L + l0
        if floating is float:
            fn_dev_f32(p, ln, m, &sd, &sdd)
        else:
            fn_dev_f64(p, ln, m, &sd, &sdd)
    mean[0] = m + sd / cnt
    sdd = sdd - sd * sd / cnt
    m2[0] = sdd if sdd > 0.0 else 0.0


cdef inline void unit_dot(const floating *x, const floating *dy, const Units *g,
                          int64_t c, int64_t u, double m, double *sdy,
                          double *sdyx) noexcept nogil:
    """OUT sdy[0], sdyx[0]: sum of dy and of dy * (x - m) over unit u of c."""
    cdef int64_t n0, n1, l0, ln, n, off
    cdef double a = 0.0, b = 0.0
    unit_span(g, u, &n0, &n1, &l0, &ln)
    for n in range(n0, n1):
        off = (n * g.C + c) * g.L + l0
        if floating is float:
            fn_dot_f32(x + off, dy + off, ln, m, &a, &b)
        else:
            fn_dot_f64(x + off, dy + off, ln, m, &a, &b)
    sdy[0] = a
    sdyx[0] = b


cdef inline void chan_merge(const Units *g, int64_t c, const double *pm,
                            const double *pm2, double *mean,
                            double *var) noexcept nogil:
    """Chan's merge of the partials of channel c, in unit order."""
    cdef int64_t u, n0, n1, l0, ln
    cdef double cnt = 0.0, mu = 0.0, m2 = 0.0, nb, tot, d
    for u in range(g.per_chan):
        unit_span(g, u, &n0, &n1, &l0, &ln)
        nb = <double>((n1 - n0) * ln)
        tot = cnt + nb
        d = pm[c * g.per_chan + u] - mu
        mu = mu + d * (nb / tot)
        m2 = m2 + pm2[c * g.per_chan + u] + d * d * (cnt * nb / tot)
        cnt = tot
    mean[c] = mu
    var[c] = (m2 if m2 > 0.0 else 0.0) / cnt


cdef inline void sum_merge(const Units *g, int64_t c, const double *pa,
                           const double *pb, double *a, double *b) noexcept nogil:
    cdef int64_t u
    cdef double sa = 0.0, sb = 0.0
    for u in range(g.per_chan):
        sa = sa + pa[c * g.per_chan + u]
        sb = sb + pb[c * g.per_chan + u]
    a[c] = sa
    b[c] = sb


# --------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------

def batch_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var):
    """Per-channel mean and biased variance of x (N, C, L), N * L > 0.

    OUT mean (C,), var (C,): float64.
    """
    cdef Units g = make_units(x.shape[0], x.shape[1], x.shape[2])
    cdef int64_t total = g.C * g.per_chan, i, c
    cdef int nt = threads_for(g.N * g.C * g.L)
    cdef const floating *px = &x[0, 0, 0]
    cdef double *pm = <double *>malloc(2 * total * sizeof(double))
    cdef double *pm2
    if pm == NULL:
        raise MemoryError()
    pm2 = pm + total
    with nogil:
        if nt == 1:
            for i in range(total):
                unit_moments(px, &g, i // g.per_chan, i % g.per_chan,
                             &pm[i], &pm2[i])
            for c in range(g.C):
                chan_merge(&g, c, pm, pm2, &mean[0], &var[0])
        else:
            for i in prange(total, num_threads=nt, schedule='static'):
                note_threads()
                unit_moments(px, &g, i // g.per_chan, i % g.per_chan,
                             &pm[i], &pm2[i])
            for c in prange(g.C, num_threads=nt, schedule='static'):
                chan_merge(&g, c, pm, pm2, &mean[0], &var[0])
    free(pm)
    _set_threads(nt)


def batch_affine(const floating[:, :, ::1] x, floating[:, :, ::1] out,
                 const double[::1] center, const double[::1] scale,
                 const double[::1] shift):
    """out = (x - center[c]) * scale[c] + shift[c], in the data type.

    IN x (N, C, L); OUT out (N, C, L), may be x itself; IN center, scale,
    shift (C,) float64, rounded to the data type once per channel.
    """
    cdef Units g = make_units(x.shape[0], x.shape[1], x.shape[2])
    cdef int64_t total = g.N * g.C * g.pieces, i
    cdef int nt = threads_for(g.N * g.C * g.L)
    cdef const floating *px = &x[0, 0, 0]
    cdef floating *py = &out[0, 0, 0]
    with nogil:
        if nt == 1:
            for i in range(total):
                affine_item(px, py, &g, i, &center[0], &scale[0], &shift[0])
        else:
            for i in prange(total, num_threads=nt, schedule='static'):
                note_threads()
                affine_item(px, py, &g, i, &center[0], &scale[0], &shift[0])
    _set_threads(nt)


cdef inline void affine_item(const floating *x, floating *y, const Units *g,
                             int64_t i, const double *center,
                             const double *scale,
                             const double *shift) noexcept nogil:
    """Piece i of the (N * C) planes, each cut into g.pieces pieces."""
    cdef int64_t plane = i // g.pieces
    cdef int64_t l0 = (i - plane * g.pieces) * g.piece
    cdef int64_t ln = g.L - l0
    cdef int64_t c = plane % g.C
    cdef int64_t off = plane * g.L + l0
    if ln > g.piece:
        ln = g.piece
    if floating is float:
        fn_affine_f32(x + off, y + off, ln, <float>center[c], <float>scale[c],
                      <float>shift[c])
    else:
        fn_affine_f64(x + off, y + off, ln, center[c], scale[c], shift[c])


def batch_bwd_sums(const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
                   const double[::1] mean, double[::1] sum_dy,
                   double[::1] sum_dyx):
    """Per-channel sum(dy) and sum(dy * (x - mean)) in float64.

    IN x, dy (N, C, L), N * L > 0; IN mean (C,); OUT sum_dy, sum_dyx (C,).
    """
    cdef Units g = make_units(x.shape[0], x.shape[1], x.shape[2])
    cdef int64_t total = g.C * g.per_chan, i, c
    cdef int nt = threads_for(2 * g.N * g.C * g.L)
    cdef const floating *px = &x[0, 0, 0]
    cdef const floating *pg = &dy[0, 0, 0]
    cdef const double *pmean = &mean[0]
    cdef double *pa = <double *>malloc(2 * total * sizeof(double))
    cdef double *pb
    if pa == NULL:
        raise MemoryError()
    pb = pa + total
    with nogil:
        if nt == 1:
            for i in range(total):
                unit_dot(px, pg, &g, i // g.per_chan, i % g.per_chan,
                         pmean[i // g.per_chan], &pa[i], &pb[i])
            for c in range(g.C):
                sum_merge(&g, c, pa, pb, &sum_dy[0], &sum_dyx[0])
        else:
            for i in prange(total, num_threads=nt, schedule='static'):
                note_threads()
                unit_dot(px, pg, &g, i // g.per_chan, i % g.per_chan,
                         pmean[i // g.per_chan], &pa[i], &pb[i])
            for c in prange(g.C, num_threads=nt, schedule='static'):
                sum_merge(&g, c, pa, pb, &sum_dy[0], &sum_dyx[0])
    free(pa)
    _set_threads(nt)


def batch_bwd_input(const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
                    floating[:, :, ::1] dx, const double[::1] center,
                    const double[::1] a, const double[::1] b,
                    const double[::1] k):
    """dx = a[c] * dy - b[c] * (x - center[c]) - k[c], in the data type.

    Input gradient of a normalisation whose statistics came from the batch.
    IN x, dy (N, C, L); OUT dx (N, C, L), may alias dy; IN (C,) float64.
    """
    cdef Units g = make_units(x.shape[0], x.shape[1], x.shape[2])
    cdef int64_t total = g.N * g.C * g.pieces, i
    cdef int nt = threads_for(2 * g.N * g.C * g.L)
    cdef const floating *px = &x[0, 0, 0]
    cdef const floating *pg = &dy[0, 0, 0]
    cdef floating *po = &dx[0, 0, 0]
    with nogil:
        if nt == 1:
            for i in range(total):
                bwd_item(px, pg, po, &g, i, &center[0], &a[0], &b[0], &k[0])
        else:
            for i in prange(total, num_threads=nt, schedule='static'):
                note_threads()
                bwd_item(px, pg, po, &g, i, &center[0], &a[0], &b[0], &k[0])
    _set_threads(nt)


cdef inline void bwd_item(const floating *x, const floating *dy, floating *dx,
                          const Units *g, int64_t i, const double *center,
                          const double *a, const double *b,
                          const double *k) noexcept nogil:
    cdef int64_t plane = i // g.pieces
    cdef int64_t l0 = (i - plane * g.pieces) * g.piece
    cdef int64_t ln = g.L - l0
    cdef int64_t c = plane % g.C
    cdef int64_t off = plane * g.L + l0
    if ln > g.piece:
        ln = g.piece
    if floating is float:
        fn_bwd_f32(x + off, dy + off, dx + off, ln, <float>center[c],
                   <float>a[c], <float>b[c], <float>k[c])
    else:
        fn_bwd_f64(x + off, dy + off, dx + off, ln, center[c], a[c], b[c], k[c])


def batch_scale(const floating[:, :, ::1] dy, floating[:, :, ::1] dx,
                const double[::1] a):
    """dx = a[c] * dy, in the data type (input gradient with fixed stats).

    IN dy (N, C, L); OUT dx (N, C, L), may be dy itself; IN a (C,) float64.
    """
    cdef Units g = make_units(dy.shape[0], dy.shape[1], dy.shape[2])
    cdef int64_t total = g.N * g.C * g.pieces, i
    cdef int nt = threads_for(g.N * g.C * g.L)
    cdef const floating *pg = &dy[0, 0, 0]
    cdef floating *po = &dx[0, 0, 0]
    with nogil:
        if nt == 1:
            for i in range(total):
                scale_item(pg, po, &g, i, &a[0])
        else:
            for i in prange(total, num_threads=nt, schedule='static'):
                note_threads()
                scale_item(pg, po, &g, i, &a[0])
    _set_threads(nt)


cdef inline void scale_item(const floating *dy, floating *dx, const Units *g,
                            int64_t i, const double *a) noexcept nogil:
    cdef int64_t plane = i // g.pieces
    cdef int64_t l0 = (i - plane * g.pieces) * g.piece
    cdef int64_t ln = g.L - l0
    cdef int64_t c = plane % g.C
    cdef int64_t off = plane * g.L + l0
    if ln > g.piece:
        ln = g.piece
    if floating is float:
        fn_scale_f32(dy + off, dx + off, ln, <float>a[c])
    else:
        fn_scale_f64(dy + off, dx + off, ln, a[c])


# --------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------

cdef inline void _set_threads(int nt) noexcept nogil:
    global g_threads_used
    if nt == 1:
        g_threads_used = 1


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(FASTNORM_HAVE_OPENMP)


def max_threads():
    """Threads a large kernel call would use now (omp_get_max_threads())."""
    return omp_get_max_threads()


def threads_used():
    """Threads the parallel region of the last kernel call ran on."""
    return g_threads_used


def unit_size():
    """Elements per statistics unit (a constant of the library)."""
    return UNIT
