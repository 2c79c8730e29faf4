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

Units.  Each channel's values are cut into *units* by the shape alone, in
one of two modes:
  * planes (L >= SMALL_L): a unit belongs to one channel: a piece of at most
    UNIT consecutive elements of one plane when L >= UNIT, else a block of
    UNIT // L consecutive samples, all of their L elements.  Loops run along
    the plane with register accumulators.
  * rows (L < SMALL_L, e.g. BatchNorm1d on (N, C)): planes are too short to
    loop along, so a unit is a block of ROW_COUNT // L samples times a chunk
    of channels (at most ROW_COLS elements of each row), and loops run along
    the contiguous rows with one float64 accumulator per column.
A unit is small enough to stay in L1/L2 between the two passes made over it.

Statistics.  For each unit, a two-pass mean and M2 (corrected two-pass: sum of
deviations from the first-pass mean is folded back in).  float64 data, and
rows mode, accumulate in float64 lanes; float32 data in planes mode
accumulates float32 vectors over blocks of 64 elements, each block flushed to
float64 (a block whose float32 sums overflow is redone in float64), centred
on the first-pass mean rounded to float32.  Unit partials are float64.  The per-unit partials (count, mean, M2) are then merged per
channel with Chan's formula, in unit order.  Units are computed in parallel
(any thread may take any unit), the merge is parallel over channels, and
neither the units nor the merge order depend on the thread count: results are
bitwise identical whatever the number of threads.  Backward sums (sum of dy,
sum of dy * (x - mean)) use the same units and the same ordered merge; for
float32 they too run in float32 blocks, centred on the mean rounded to
float32 and corrected for that rounding in float64.

Slices.  Normalisations whose statistics cover contiguous slices (LayerNorm,
RMSNorm rows; GroupNorm and InstanceNorm groups of a sample) use fused slice
kernels when a slice fits in L2: one thread computes a slice's statistics and
normalises it (or its backward sums, then its gradient) in one read from
memory, and prefetches its next slice during the passes that run from cache.
A slice's statistics use the same pieces and merge as above.

Elementwise passes (normalise, input gradient) go over pieces of planes
(planes mode) or of rows, with per-column coefficients expanded once per call
(rows mode).

Normalisation.  y = (x - c) * s + t per channel, where c is the mean rounded
to the data type, s = weight * invstd and t absorbs bias and the rounding of
c, all computed in float64.  x - c cancels exactly for values near the mean,
so float32 data with a large offset (1e4 + N(0, 1)) keeps full precision,
where the fused x * s + (b - mean * s) loses ~1e-3.

Threads.  The thread count is read from omp_get_max_threads() on every call,
so threadpoolctl and OMP_NUM_THREADS take effect; the extension never calls
omp_set_num_threads.  Small problems run on fewer threads (MIN_WORK elements
per thread at least).  Every kernel runs its loops inside a parallel region,
also with one thread: the outlined loop body compiles to better code than the
same loop inlined into the wrapper (measured 1.8x on the statistics), and a
one-thread region costs well under a microsecond.

Fork.  The extension registers pthread_atfork handlers at import
(_omp_shim.h): the OpenMP pool of the thread that forks is ended before
fork(), so a forked child starts a fresh one with the same thread count;
a child whose pool could not be reset runs every kernel on one thread
(max_threads_now()).  Thread counts never change results, so neither does
forking.
"""

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.math cimport isfinite, sqrt
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcpy, memset
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer)

cdef extern from "_omp_shim.h" nogil:
    int omp_get_max_threads()
    int omp_get_thread_num()
    int omp_get_num_threads()
    int FASTNORM_HAVE_OPENMP
    size_t fn_openmp_address()
    int fn_fork_install()
    int fn_threads_cap()
    int fn_fork_serial
    int fn_fork_pause_off
    long fn_fork_pauses

cdef extern from "_loops.h" nogil:
    double fn_sum_blk_f32(const float *x, int64_t n)
    void fn_dev_blk_f32(const float *x, int64_t n, float m, double *sd, double *sdd)
    double fn_sum_f64(const double *x, int64_t n)
    void fn_dev_f64(const double *x, int64_t n, double m, double *sd, double *sdd)
    void fn_dot_blk_f32(const float *x, const float *dy, int64_t n, double m,
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
    void fn_bwd_pf_f32(const float *x, const float *dy, float *dx, int64_t n,
                       float c, float a, float b, float k, const float *px,
                       const float *py)
    void fn_bwd_pf_f64(const double *x, const double *dy, double *dx, int64_t n,
                       double c, double a, double b, double k, const double *px,
                       const double *py)
    void fn_scale_f32(const float *dy, float *dx, int64_t n, float a)
    void fn_scale_f64(const double *dy, double *dx, int64_t n, double a)
    void fn_rsum_f32(const float *x, double *acc, int64_t n)
    void fn_rsum_f64(const double *x, double *acc, int64_t n)
    void fn_rdev_f32(const float *x, const double *m, double *a, double *b, int64_t n)
    void fn_rdev_f64(const double *x, const double *m, double *a, double *b, int64_t n)
    void fn_rdot_f32(const float *x, const float *dy, const double *m, double *a,
                     double *b, int64_t n)
    void fn_rdot_f64(const double *x, const double *dy, const double *m, double *a,
                     double *b, int64_t n)
    void fn_raffine_f32(const float *x, float *y, const float *c, const float *s,
                        const float *t, int64_t n)
    void fn_raffine_f64(const double *x, double *y, const double *c, const double *s,
                        const double *t, int64_t n)
    void fn_rbwd_f32(const float *x, const float *dy, float *dx, const float *c,
                     const float *a, const float *b, const float *k, int64_t n)
    void fn_rbwd_f64(const double *x, const double *dy, double *dx, const double *c,
                     const double *a, const double *b, const double *k, int64_t n)
    void fn_rscale_f32(const float *dy, float *dx, const float *a, int64_t n)
    void fn_rscale_f64(const double *dy, double *dx, const double *a, int64_t n)
    void fn_lnaff_f32(const float *x, float *y, int64_t n, float c, float s, float t,
                      const float *w, const float *b)
    void fn_lnaff_f64(const double *x, double *y, int64_t n, double c, double s,
                      double t, const double *w, const double *b)
    void fn_lnbwd_f32(const float *x, const float *dy, float *dx, int64_t n,
                      const float *w, float c, float a, float q, float k)
    void fn_lnbwd_f64(const double *x, const double *dy, double *dx, int64_t n,
                      const double *w, double c, double a, double q, double k)
    void fn_lnsums_f32(const float *x, const float *dy, const float *w, int64_t n,
                       double m, double inv, double *A, double *B, double *c1,
                       double *c2)
    void fn_lnsums_f64(const double *x, const double *dy, const double *w, int64_t n,
                       double m, double inv, double *A, double *B, double *c1,
                       double *c2)
    void fn_lnrow_f32(const float *x, const float *dy, float *dx, const float *w,
                      int64_t n, double m, double inv, int rms, float *c1, float *c2)
    void fn_stream_f32(float *dst, const float *src, int64_t n)
    void fn_stream_f64(double *dst, const double *src, int64_t n)
    void fn_stream_fence()
    void fn_prefetch(const void *p)
    void fn_lrn_fwd_f32(const float *x, float *y, int64_t C, int64_t L, int64_t l0,
                        int64_t ln, int64_t size, double alpha, double beta, double k,
                        double *den, double *pre, double *suf)
    void fn_lrn_fwd_f64(const double *x, double *y, int64_t C, int64_t L, int64_t l0,
                        int64_t ln, int64_t size, double alpha, double beta, double k,
                        double *den, double *pre, double *suf)
    void fn_lrn_bwd_f32(const float *x, const float *dy, float *dx, int64_t C,
                        int64_t L, int64_t l0, int64_t ln, int64_t size, double alpha,
                        double beta, double k, double *den, double *t, double *pre,
                        double *suf)
    void fn_lrn_bwd_f64(const double *x, const double *dy, double *dx, int64_t C,
                        int64_t L, int64_t l0, int64_t ln, int64_t size, double alpha,
                        double beta, double k, double *den, double *t, double *pre,
                        double *suf)

# The unit geometry is part of the library's definition of its results: a
# change moves the last bits of results (not their accuracy).
cdef enum:
    UNIT = 4096         # planes mode: elements per unit
    SMALL_L = 32        # planes shorter than this use rows mode
    ROW_COUNT = 256     # rows mode: samples x plane length per unit
    ROW_COLS = 512      # rows mode: elements of a row per unit (whole channels)
    MIN_WORK = 32768    # fewest elements worth giving to one more thread
    TILE = 1024         # elements of an output tile computed in L1, then streamed
    STREAM_BYTES = 64 << 20  # default: outputs this large use streaming stores
    LAYER_ROWS = 64     # layer backward: rows per block of column partials

cdef enum Red:
    RED_MOMENTS = 0     # mean and biased variance of x
    RED_DOT = 1         # sum(dy) and sum(dy * (x - mean))

cdef enum Op:
    OP_AFFINE = 0       # out = (x - k0) * k1 + k2
    OP_BWD = 1          # out = k1 * dy - k2 * (x - k0) - k3
    OP_SCALE = 2        # out = k1 * dy

cdef extern from *:
    """
    /* Which instruction set this copy of the kernels was compiled for (the
     * same source is built twice: baseline x86-64 and -mavx2), and whether
     * the CPU running it has AVX2 (CPUID, OS support of the YMM state). */
    #ifdef __AVX2__
    #define FN_ISA "avx2"
    #else
    #define FN_ISA "baseline"
    #endif
    static int fn_cpu_has_avx2(void)
    {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") != 0;
    #else
        return 0;
    #endif
    }
    """
    const char *FN_ISA
    int fn_cpu_has_avx2()

cdef int g_threads_used = 1


# --------------------------------------------------------------------------
# Geometry and thread count
# --------------------------------------------------------------------------

cdef struct Units:
    int64_t N, C, L
    bint rows_mode
    # planes mode
    int64_t rows        # samples per unit
    int64_t pieces      # units per plane (L >= UNIT), else 1
    int64_t piece       # elements per piece of a plane
    # rows mode
    int64_t cw          # channels per chunk
    int64_t nk          # channel chunks
    # both
    int64_t per_chan    # units (partials) per channel
    int64_t total       # units in all


cdef inline Units make_units(int64_t N, int64_t C, int64_t L) noexcept nogil:
    cdef Units g
    g.N = N
    g.C = C
    g.L = L
    g.rows_mode = L < SMALL_L
    if g.rows_mode:
        g.rows = ROW_COUNT // L
        g.cw = ROW_COLS // L
        if g.cw > C:
            g.cw = C
        g.nk = (C + g.cw - 1) // g.cw
        g.pieces = 1
        g.piece = L
        g.per_chan = (N + g.rows - 1) // g.rows
        g.total = g.per_chan * g.nk
    else:
        if L >= UNIT:
            g.rows = 1
            g.piece = UNIT
            g.pieces = (L + UNIT - 1) // UNIT
        else:
            g.rows = UNIT // L
            g.piece = L
            g.pieces = 1
        g.cw = 1
        g.nk = C
        g.per_chan = ((N + g.rows - 1) // g.rows) * g.pieces
        g.total = C * g.per_chan
    return g


cdef inline int64_t unit_count(const Units *g, int64_t u) noexcept nogil:
    """Values per channel in partial u of a channel."""
    cdef int64_t block = u // g.pieces
    cdef int64_t n0 = block * g.rows
    cdef int64_t n1 = n0 + g.rows
    cdef int64_t l0 = (u - block * g.pieces) * g.piece
    cdef int64_t ln = g.piece
    if n1 > g.N:
        n1 = g.N
    if l0 + ln > g.L:
        ln = g.L - l0
    return (n1 - n0) * ln


cdef inline int max_threads_now() noexcept nogil:
    """omp_get_max_threads(), or 1 in a forked child that must stay serial
    (_omp_shim.h, fork safety)."""
    cdef int nt = omp_get_max_threads()
    cdef int cap = fn_threads_cap()
    if cap > 0 and nt > cap:
        nt = cap
    return nt


cdef inline int threads_for(int64_t work, int64_t items) noexcept nogil:
    cdef int nt = max_threads_now()
    cdef int64_t cap = work // MIN_WORK
    if cap > items:
        cap = items
    if cap < 1:
        cap = 1
    if cap < nt:
        nt = <int>cap
    if nt < 1:
        nt = 1
    return nt


cdef size_t g_stream_bytes = STREAM_BYTES


cdef inline bint streams(const void *out, const void *x, size_t nbytes) noexcept nogil:
    """Write this output with streaming stores: large, and not in place."""
    return nbytes >= g_stream_bytes and out != x


def stream_bytes(nbytes=None):
    """Outputs of at least this many bytes are written with streaming stores
    (from L1 tiles; same values).  With an argument, sets it (tests, tuning)
    and returns the previous value."""
    global g_stream_bytes
    old = g_stream_bytes
    if nbytes is not None:
        if nbytes < 0:
            raise ValueError(f"stream_bytes: expected >= 0, got {nbytes}")
        g_stream_bytes = nbytes
    return old


cdef inline void note_threads(int asked) noexcept nogil:
    """Record the size of the running team (thread 0 writes, once per item)."""
    global g_threads_used
    if omp_get_thread_num() == 0:
        g_threads_used = omp_get_num_threads() if asked > 1 else 1


# --------------------------------------------------------------------------
# Planes mode.  Units are processed in memory order, i = (block * C + c) *
# pieces + piece, so that a thread streams through contiguous memory; the
# partial of unit i is stored at c * per_chan + (block * pieces + piece), so
# each channel's partials are merged in the same order whoever computed them.
# --------------------------------------------------------------------------

cdef inline int64_t plane_unit(const Units *g, int64_t i, int64_t *c,
                               int64_t *n0, int64_t *n1, int64_t *l0,
                               int64_t *ln) noexcept nogil:
    """Decode unit i; returns where its partial is stored."""
    cdef int64_t p = i % g.pieces
    cdef int64_t t = i // g.pieces
    cdef int64_t block = t // g.C
    c[0] = t - block * g.C
    n0[0] = block * g.rows
    n1[0] = n0[0] + g.rows
    if n1[0] > g.N:
        n1[0] = g.N
    l0[0] = p * g.piece
    ln[0] = g.piece
    if l0[0] + ln[0] > g.L:
        ln[0] = g.L - l0[0]
    return c[0] * g.per_chan + block * g.pieces + p

cdef inline void plane_moments(const floating *x, const Units *g, int64_t i,
                               double *pm, double *pm2) noexcept nogil:
    """Two-pass mean and M2 of unit i, stored in pm, pm2."""
    cdef int64_t c, n0, n1, l0, ln, n, at
    cdef double s = 0.0, sd = 0.0, sdd = 0.0, cnt, m
    cdef const floating *p
    at = plane_unit(g, i, &c, &n0, &n1, &l0, &ln)
    cnt = <double>((n1 - n0) * ln)
    for n in range(n0, n1):
        p = x + (n * g.C + c) * g.L + l0
        if floating is float:
            s += fn_sum_blk_f32(p, ln)
        else:
            s += fn_sum_f64(p, ln)
    # centre the second pass on the first-pass mean rounded to the data type
    # (float32 deviations need a float32 centre); the ordered sum of the
    # deviations then corrects the mean exactly as before
    m = <double><floating>(s / cnt)
    for n in range(n0, n1):
        p = x + (n * g.C + c) * g.L + l0
        if floating is float:
            fn_dev_blk_f32(p, ln, <float>m, &sd, &sdd)
        else:
            fn_dev_f64(p, ln, m, &sd, &sdd)
    pm[at] = m + sd / cnt if isfinite(m) else m
    sdd = sdd - sd * sd / cnt
    pm2[at] = 0.0 if sdd < 0.0 else sdd


cdef inline void plane_dot(const floating *x, const floating *dy, const Units *g,
                           int64_t i, const double *mean, double *pa,
                           double *pb) noexcept nogil:
    """Sum of dy and of dy * (x - mean[c]) over unit i, stored in pa, pb."""
    cdef int64_t c, n0, n1, l0, ln, n, off, at
    cdef double a = 0.0, b = 0.0
    at = plane_unit(g, i, &c, &n0, &n1, &l0, &ln)
    for n in range(n0, n1):
        off = (n * g.C + c) * g.L + l0
        if floating is float:
            fn_dot_blk_f32(x + off, dy + off, ln, mean[c], &a, &b)
        else:
            fn_dot_f64(x + off, dy + off, ln, mean[c], &a, &b)
    pa[at] = a
    pb[at] = b


# --------------------------------------------------------------------------
# Rows mode: unit i = row block (i // nk) x channel chunk (i % nk); its
# partial for channel c is stored at c * per_chan + row block.
# scratch: 3 arrays of cw * L doubles, private to the calling thread.
# --------------------------------------------------------------------------

cdef inline int64_t rows_stride(const Units *g) noexcept nogil:
    """Distance between the scratch arrays, padded by a cache line so that
    arrays (and threads' scratch) are never a multiple of 4 KiB apart: loads
    and stores 4 KiB apart falsely depend on each other."""
    return g.cw * g.L + 8


cdef inline int64_t rows_scratch(const Units *g) noexcept nogil:
    """Doubles of scratch per thread (a multiple of 8, not of 512)."""
    return 3 * rows_stride(g) + 8

cdef inline void rows_moments(const floating *x, const Units *g, int64_t i,
                              double *pm, double *pm2,
                              double *scratch) noexcept nogil:
    cdef int64_t b = i // g.nk, k = i % g.nk
    cdef int64_t n0 = b * g.rows, n1 = n0 + g.rows, n, c, l, j
    cdef int64_t c0 = k * g.cw, c1 = c0 + g.cw
    cdef int64_t W, stride = g.C * g.L
    cdef double *acc = scratch
    cdef double *acc2
    cdef double *mj
    cdef double cnt, s, sd, sdd
    cdef const floating *p
    if n1 > g.N:
        n1 = g.N
    if c1 > g.C:
        c1 = g.C
    W = (c1 - c0) * g.L
    acc2 = scratch + rows_stride(g)
    mj = scratch + 2 * rows_stride(g)
    cnt = <double>((n1 - n0) * g.L)
    memset(acc, 0, W * sizeof(double))
    for n in range(n0, n1):
        p = x + n * stride + c0 * g.L
        if floating is float:
            fn_rsum_f32(p, acc, W)
        else:
            fn_rsum_f64(p, acc, W)
    for c in range(c1 - c0):
        s = 0.0
        for l in range(g.L):
            s += acc[c * g.L + l]
        s = s / cnt
        for l in range(g.L):
            mj[c * g.L + l] = s
    memset(acc, 0, W * sizeof(double))
    memset(acc2, 0, W * sizeof(double))
    for n in range(n0, n1):
        p = x + n * stride + c0 * g.L
        if floating is float:
            fn_rdev_f32(p, mj, acc, acc2, W)
        else:
            fn_rdev_f64(p, mj, acc, acc2, W)
    for c in range(c1 - c0):
        sd = 0.0
        sdd = 0.0
        for l in range(g.L):
            j = c * g.L + l
            sd += acc[j]
            sdd += acc2[j]
        j = (c0 + c) * g.per_chan + b
        pm[j] = mj[c * g.L] + sd / cnt if isfinite(mj[c * g.L]) else mj[c * g.L]
        sdd = sdd - sd * sd / cnt
        pm2[j] = 0.0 if sdd < 0.0 else sdd


cdef inline void rows_dot(const floating *x, const floating *dy, const Units *g,
                          int64_t i, const double *mean, double *pa, double *pb,
                          double *scratch) noexcept nogil:
    cdef int64_t b = i // g.nk, k = i % g.nk
    cdef int64_t n0 = b * g.rows, n1 = n0 + g.rows, n, c, l, j, off
    cdef int64_t c0 = k * g.cw, c1 = c0 + g.cw
    cdef int64_t W, stride = g.C * g.L
    cdef double *acc = scratch
    cdef double *acc2
    cdef double *mj
    cdef double sa, sb
    if n1 > g.N:
        n1 = g.N
    if c1 > g.C:
        c1 = g.C
    W = (c1 - c0) * g.L
    acc2 = scratch + rows_stride(g)
    mj = scratch + 2 * rows_stride(g)
    for c in range(c1 - c0):
        for l in range(g.L):
            mj[c * g.L + l] = mean[c0 + c]
    memset(acc, 0, W * sizeof(double))
    memset(acc2, 0, W * sizeof(double))
    for n in range(n0, n1):
        off = n * stride + c0 * g.L
        if floating is float:
            fn_rdot_f32(x + off, dy + off, mj, acc, acc2, W)
        else:
            fn_rdot_f64(x + off, dy + off, mj, acc, acc2, W)
    for c in range(c1 - c0):
        sa = 0.0
        sb = 0.0
        for l in range(g.L):
            j = c * g.L + l
            sa += acc[j]
            sb += acc2[j]
        j = (c0 + c) * g.per_chan + b
        pa[j] = sa
        pb[j] = sb


# --------------------------------------------------------------------------
# Ordered merges of the partials of one channel
# --------------------------------------------------------------------------

cdef inline void chan_merge(const Units *g, int64_t c, const double *pm,
                            const double *pm2, double *mean,
                            double *var) noexcept nogil:
    """Chan's merge of the partials of channel c, in unit order."""
    cdef int64_t u
    cdef double cnt = 0.0, mu = 0.0, m2 = 0.0, nb, tot, d
    for u in range(g.per_chan):
        nb = <double>unit_count(g, u)
        tot = cnt + nb
        d = pm[c * g.per_chan + u] - mu
        if isfinite(mu) and isfinite(pm[c * g.per_chan + u]):
            mu = mu + d * (nb / tot)
        else:
            mu = (mu * cnt + pm[c * g.per_chan + u] * nb) / tot
        m2 = m2 + pm2[c * g.per_chan + u] + d * d * (cnt * nb / tot)
        cnt = tot
    mean[c] = mu
    var[c] = (0.0 if m2 < 0.0 else m2) / cnt


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
# Reductions
# --------------------------------------------------------------------------

cdef int reduction(int op, const floating *x, const floating *dy,
                   const double *mean, int64_t N, int64_t C, int64_t L,
                   double *a, double *b) except -1:
    """Per-channel reduction of (N, C, L), N * L > 0, into a and b (C,).

    RED_MOMENTS: a = mean, b = biased variance of x.
    RED_DOT: a = sum(dy), b = sum(dy * (x - mean)).
    Partials of every unit, then an ordered merge per channel.
    """
    cdef Units g = make_units(N, C, L)
    cdef int64_t i, c
    cdef int nt = threads_for((2 if op == RED_DOT else 1) * N * C * L, g.total)
    cdef double *pa = <double *>malloc(2 * C * g.per_chan * sizeof(double))
    cdef double *pb
    cdef double *scratch = NULL
    # failure is reported through a pointer: a variable assigned inside a
    # parallel block is private to each thread and undefined after it
    cdef int failed = 0
    cdef int *fail = &failed
    if pa == NULL:
        raise MemoryError()
    pb = pa + C * g.per_chan
    with nogil:
        if g.rows_mode:
            with parallel(num_threads=nt):
                # each thread's scratch from its own allocation (measured
                # faster than slices of one block); a thread whose malloc
                # failed still takes part in the loop, doing nothing, so the
                # team never waits on it
                scratch = <double *>malloc(rows_scratch(&g) * sizeof(double))
                if scratch == NULL:
                    fail[0] = 1
                note_threads(nt)
                for i in prange(g.total, schedule='static'):
                    if scratch != NULL:
                        if op == RED_MOMENTS:
                            rows_moments(x, &g, i, pa, pb, scratch)
                        else:
                            rows_dot(x, dy, &g, i, mean, pa, pb, scratch)
                free(scratch)
        else:
            for i in prange(g.total, num_threads=nt, schedule='static'):
                note_threads(nt)
                if op == RED_MOMENTS:
                    plane_moments(x, &g, i, pa, pb)
                else:
                    plane_dot(x, dy, &g, i, mean, pa, pb)
        if not failed:
            for c in prange(C, num_threads=nt, schedule='static'):
                if op == RED_MOMENTS:
                    chan_merge(&g, c, pa, pb, a, b)
                else:
                    sum_merge(&g, c, pa, pb, a, b)
    free(pa)
    if failed:
        raise MemoryError()
    return 0


def batch_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var):
    """Per-channel mean and biased variance of x (N, C, L), N * L > 0.

    IN x; OUT mean (C,), var (C,): float64.
    """
    reduction(RED_MOMENTS, &x[0, 0, 0], NULL, NULL, x.shape[0], x.shape[1],
              x.shape[2], &mean[0], &var[0])


def batch_bwd_sums(const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
                   const double[::1] mean, double[::1] sum_dy,
                   double[::1] sum_dyx):
    """Per-channel sum(dy) and sum(dy * (x - mean)) in float64.

    IN x, dy (N, C, L), N * L > 0; IN mean (C,); OUT sum_dy, sum_dyx (C,).
    """
    reduction(RED_DOT, &x[0, 0, 0], &dy[0, 0, 0], &mean[0], x.shape[0],
              x.shape[1], x.shape[2], &sum_dy[0], &sum_dyx[0])


# --------------------------------------------------------------------------
# Elementwise passes
# --------------------------------------------------------------------------

cdef inline void plane_item(int op, const floating *x, const floating *dy,
                            floating *out, const Units *g, int64_t i,
                            const double *k0, const double *k1,
                            const double *k2, const double *k3) noexcept nogil:
    """Piece i of the N * C planes (g.pieces pieces of g.piece per plane)."""
    cdef int64_t plane = i // g.pieces
    cdef int64_t l0 = (i - plane * g.pieces) * g.piece
    cdef int64_t ln = g.L - l0
    cdef int64_t c = plane % g.C
    cdef int64_t off = plane * g.L + l0
    if ln > g.piece:
        ln = g.piece
    if floating is float:
        if op == OP_AFFINE:
            fn_affine_f32(x + off, out + off, ln, <float>k0[c], <float>k1[c],
                          <float>k2[c])
        elif op == OP_BWD:
            fn_bwd_f32(x + off, dy + off, out + off, ln, <float>k0[c],
                       <float>k1[c], <float>k2[c], <float>k3[c])
        else:
            fn_scale_f32(dy + off, out + off, ln, <float>k1[c])
    else:
        if op == OP_AFFINE:
            fn_affine_f64(x + off, out + off, ln, k0[c], k1[c], k2[c])
        elif op == OP_BWD:
            fn_bwd_f64(x + off, dy + off, out + off, ln, k0[c], k1[c], k2[c], k3[c])
        else:
            fn_scale_f64(dy + off, out + off, ln, k1[c])


cdef inline void row_item(int op, const floating *x, const floating *dy,
                          floating *out, int64_t W, int64_t pieces, int64_t i,
                          const floating *e) noexcept nogil:
    """Piece i of the N rows of W = C * L elements (pieces of UNIT per row);
    e holds the 4 coefficient rows, each W long."""
    cdef int64_t row = i // pieces
    cdef int64_t j0 = (i - row * pieces) * UNIT
    cdef int64_t ln = W - j0
    cdef int64_t off = row * W + j0
    if ln > UNIT:
        ln = UNIT
    if floating is float:
        if op == OP_AFFINE:
            fn_raffine_f32(x + off, out + off, e + j0, e + W + j0, e + 2 * W + j0, ln)
        elif op == OP_BWD:
            fn_rbwd_f32(x + off, dy + off, out + off, e + j0, e + W + j0,
                        e + 2 * W + j0, e + 3 * W + j0, ln)
        else:
            fn_rscale_f32(dy + off, out + off, e + W + j0, ln)
    else:
        if op == OP_AFFINE:
            fn_raffine_f64(x + off, out + off, e + j0, e + W + j0, e + 2 * W + j0, ln)
        elif op == OP_BWD:
            fn_rbwd_f64(x + off, dy + off, out + off, e + j0, e + W + j0,
                        e + 2 * W + j0, e + 3 * W + j0, ln)
        else:
            fn_rscale_f64(dy + off, out + off, e + W + j0, ln)


cdef int elementwise(int op, const floating *x, const floating *dy, floating *out,
                     int64_t N, int64_t C, int64_t L, int reads,
                     const double *k0, const double *k1, const double *k2,
                     const double *k3) except -1:
    """out = op(x, dy; per-channel coefficients k0..k3) over (N, C, L)."""
    cdef Units g = make_units(N, C, L)
    cdef int64_t total, i, j, c, l, W = C * L, pieces
    cdef int nt
    cdef floating *e = NULL
    if not g.rows_mode:
        total = N * C * g.pieces
        nt = threads_for(reads * N * W, total)
        with nogil:
            if nt == 1:
                # small call: no parallel region to enter (about 0.3 us)
                note_threads(1)
                for i in range(total):
                    plane_item(op, x, dy, out, &g, i, k0, k1, k2, k3)
            else:
                for i in prange(total, num_threads=nt, schedule='static'):
                    note_threads(nt)
                    plane_item(op, x, dy, out, &g, i, k0, k1, k2, k3)
    else:
        # per-column coefficients, rounded to the data type once
        e = <floating *>malloc(4 * W * sizeof(floating))
        if e == NULL:
            raise MemoryError()
        for c in range(C):
            for l in range(L):
                j = c * L + l
                e[j] = <floating>k0[c]
                e[W + j] = <floating>k1[c]
                e[2 * W + j] = <floating>k2[c]
                e[3 * W + j] = <floating>k3[c]
        pieces = (W + UNIT - 1) // UNIT
        total = N * pieces
        nt = threads_for(reads * N * W, total)
        with nogil:
            if nt == 1:
                note_threads(1)
                for i in range(total):
                    row_item(op, x, dy, out, W, pieces, i, e)
            else:
                for i in prange(total, num_threads=nt, schedule='static'):
                    note_threads(nt)
                    row_item(op, x, dy, out, W, pieces, i, e)
        free(e)
    return 0


def batch_affine(const floating[:, :, ::1] x, floating[:, :, ::1] out,
                 const double[::1] center, const double[::1] scale,
                 const double[::1] shift):
    """out = (x - center[c]) * scale[c] + shift[c], in the data type.

    IN x (N, C, L); OUT out (N, C, L), may be x itself; IN center, scale,
    shift (C,) float64, rounded to the data type once per channel.
    """
    elementwise(OP_AFFINE, &x[0, 0, 0], NULL, &out[0, 0, 0], x.shape[0],
                x.shape[1], x.shape[2], 1, &center[0], &scale[0], &shift[0],
                &shift[0])


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


cdef int eval_coefficients(const floating *rm, const floating *rv,
                           const floating *w, const floating *b, double eps,
                           int64_t C, double *mean, double *invstd,
                           double *k) noexcept nogil:
    """BatchNorm eval coefficients, as the general path computes them in
    NumPy (float64): invstd = 1 / sqrt(var + eps), scale = invstd * weight,
    centre = mean rounded to the data type, shift = (centre - mean) * scale
    + bias.  k: centre, scale, shift, each C long.  Returns 0 when some
    var + eps is not positive (NaN or negative variance: left to the
    general path and its warnings) or a mean or weight is not finite (the
    general path's rule for those), else 1."""
    cdef int64_t c
    cdef double m, inv, sc, ctr
    for c in range(C):
        if not (<double>rv[c] + eps > 0.0 and isfinite(<double>rm[c])):
            return 0
        if w != NULL and not isfinite(<double>w[c]):
            return 0
    for c in range(C):
        m = <double>rm[c]
        inv = 1.0 / sqrt(<double>rv[c] + eps)
        mean[c] = m
        invstd[c] = inv
        sc = inv if w == NULL else inv * <double>w[c]
        ctr = <double>(<floating>m)
        k[c] = ctr
        k[C + c] = sc
        k[2 * C + c] = (ctr - m) * sc
        if b != NULL:
            k[2 * C + c] = k[2 * C + c] + <double>b[c]
    return 1


def batch_eval(x, out, running_mean, running_var, weight, bias, double eps,
               mean, invstd):
    """Eval-mode batch norm in one call: the per-call fast path of the layers.

    out = (x - running_mean) / sqrt(running_var + eps) * weight + bias, with
    the coefficients of eval_coefficients, so the same bits as the general
    path.  x: C-contiguous ndarray (N, C, *) of float32 or float64 with
    N * L > 0; out: a writable C-contiguous array of x's size and dtype;
    running_mean, running_var, weight, bias: (C,) arrays of x's dtype (weight
    and bias may be None); mean, invstd: writable (C,) float64, receive what a
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
    cdef char fmt
    cdef Py_ssize_t C, N, L, d
    cdef double buf[3 * 64]
    cdef double *k = buf
    dt = getattr(x, "dtype", None)
    if dt is None or dt.kind != "f":
        return 0
    if dt.itemsize == 4:
        fmt = b"f"
    elif dt.itemsize == 8:
        fmt = b"d"
    else:
        return 0
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
            got[held] = o is not None and take_buffer(o, &v[held], 0, fmt, C)
            held += 1
            if o is not None and not got[held - 1]:
                return 0
            if got[held - 1] and (<size_t>v[held - 1].buf) % v[0].itemsize:
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
        if fmt == b"f":
            if not eval_coefficients(<float *>v[2].buf, <float *>v[3].buf,
                                     <float *>v[4].buf, <float *>v[5].buf, eps, C,
                                     <double *>v[6].buf, <double *>v[7].buf, k):
                return 0
            elementwise(OP_AFFINE, <float *>v[0].buf, <float *>NULL, <float *>v[1].buf,
                        N, C, L, 1, k, k + C, k + 2 * C, k + 2 * C)
        else:
            if not eval_coefficients(<double *>v[2].buf, <double *>v[3].buf,
                                     <double *>v[4].buf, <double *>v[5].buf, eps, C,
                                     <double *>v[6].buf, <double *>v[7].buf, k):
                return 0
            elementwise(OP_AFFINE, <double *>v[0].buf, <double *>NULL,
                        <double *>v[1].buf, N, C, L, 1, k, k + C, k + 2 * C, k + 2 * C)
        return 2 if v[1].buf == v[0].buf else 1
    finally:
        if k != buf:
            free(k)
        for i in range(held):
            if got[i]:
                PyBuffer_Release(&v[i])


def batch_bwd_input(const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
                    floating[:, :, ::1] dx, const double[::1] center,
                    const double[::1] a, const double[::1] b,
                    const double[::1] k):
    """dx = a[c] * dy - b[c] * (x - center[c]) - k[c], in the data type.

    Input gradient of a normalisation whose statistics came from the batch.
    IN x, dy (N, C, L); OUT dx (N, C, L), may alias dy; IN (C,) float64.
    """
    elementwise(OP_BWD, &x[0, 0, 0], &dy[0, 0, 0], &dx[0, 0, 0], x.shape[0],
                x.shape[1], x.shape[2], 2, &center[0], &a[0], &b[0], &k[0])


def batch_scale(const floating[:, :, ::1] dy, floating[:, :, ::1] dx,
                const double[::1] a):
    """dx = a[c] * dy, in the data type (input gradient with fixed stats).

    IN dy (N, C, L); OUT dx (N, C, L), may be dy itself; IN a (C,) float64.
    """
    elementwise(OP_SCALE, &dy[0, 0, 0], &dy[0, 0, 0], &dx[0, 0, 0], dy.shape[0],
                dy.shape[1], dy.shape[2], 1, &a[0], &a[0], &a[0], &a[0])


# --------------------------------------------------------------------------
# Layer kernels: x (R, D), each row normalised over its D elements with a
# weight and bias per column (LayerNorm; RMSNorm with centre 0).  Row
# statistics come from batch_stats on a (1, R, D) view.
# --------------------------------------------------------------------------

cdef inline void layer_item(int op, const floating *x, const floating *dy,
                            floating *out, int64_t D, int64_t pieces, int64_t i,
                            const double *k0, const double *k1, const double *k2,
                            const double *k3, const floating *w,
                            const floating *b) noexcept nogil:
    """Piece i (of UNIT columns) of the R rows."""
    cdef int64_t r = i // pieces
    cdef int64_t j0 = (i - r * pieces) * UNIT
    cdef int64_t ln = D - j0
    cdef int64_t off = r * D + j0
    if ln > UNIT:
        ln = UNIT
    if floating is float:
        if op == OP_AFFINE:
            fn_lnaff_f32(x + off, out + off, ln, <float>k0[r], <float>k1[r],
                         <float>k2[r], w + j0, b + j0)
        else:
            fn_lnbwd_f32(x + off, dy + off, out + off, ln, w + j0, <float>k0[r],
                         <float>k1[r], <float>k2[r], <float>k3[r])
    else:
        if op == OP_AFFINE:
            fn_lnaff_f64(x + off, out + off, ln, k0[r], k1[r], k2[r], w + j0, b + j0)
        else:
            fn_lnbwd_f64(x + off, dy + off, out + off, ln, w + j0, k0[r], k1[r],
                         k2[r], k3[r])


def layer_affine(const floating[:, ::1] x, floating[:, ::1] out,
                 const double[::1] center, const double[::1] scale,
                 const double[::1] shift, const floating[::1] weight,
                 const floating[::1] bias):
    """out = ((x - center[r]) * scale[r] + shift[r]) * weight[d] + bias[d].

    IN x (R, D); OUT out (R, D), may be x; IN (R,) float64 rounded to the
    data type once per row; IN weight, bias (D,) in the data type.
    """
    cdef int64_t R = x.shape[0], D = x.shape[1], i
    cdef int64_t pieces = (D + UNIT - 1) // UNIT, total = R * pieces
    cdef int nt = threads_for(R * D, total)
    cdef const floating *px = &x[0, 0]
    cdef floating *po = &out[0, 0]
    with nogil:
        for i in prange(total, num_threads=nt, schedule='static'):
            note_threads(nt)
            layer_item(OP_AFFINE, px, NULL, po, D, pieces, i, &center[0], &scale[0],
                       &shift[0], NULL, &weight[0], &bias[0])


def layer_bwd_input(const floating[:, ::1] x, const floating[:, ::1] dy,
                    floating[:, ::1] dx, const floating[::1] weight,
                    const double[::1] center, const double[::1] a,
                    const double[::1] q, const double[::1] k):
    """dx = a[r] * weight[d] * dy - q[r] * (x - center[r]) - k[r].

    IN x, dy (R, D); OUT dx (R, D), may alias dy; IN weight (D,); IN (R,).
    """
    cdef int64_t R = x.shape[0], D = x.shape[1], i
    cdef int64_t pieces = (D + UNIT - 1) // UNIT, total = R * pieces
    cdef int nt = threads_for(2 * R * D, total)
    cdef const floating *px = &x[0, 0]
    cdef const floating *pg = &dy[0, 0]
    cdef floating *po = &dx[0, 0]
    with nogil:
        for i in prange(total, num_threads=nt, schedule='static'):
            note_threads(nt)
            layer_item(OP_BWD, px, pg, po, D, pieces, i, &center[0], &a[0], &q[0],
                       &k[0], &weight[0], NULL)


cdef inline void layer_sums_unit(const floating *x, const floating *dy,
                                 const floating *w, int64_t R, int64_t D,
                                 int64_t nc, int64_t i, const double *mean,
                                 const double *invstd, double *pA, double *pB,
                                 double *c1, double *c2) noexcept nogil:
    """Unit i = row block (i // nc) x column chunk (i % nc)."""
    cdef int64_t rb = i // nc, cc = i - (i // nc) * nc
    cdef int64_t r0 = rb * LAYER_ROWS, r1 = r0 + LAYER_ROWS, r
    cdef int64_t j0 = cc * UNIT, ln = D - cc * UNIT, off
    cdef double A, B
    cdef double *s1
    cdef double *s2
    if r1 > R:
        r1 = R
    if ln > UNIT:
        ln = UNIT
    s1 = c1 + rb * D + j0
    s2 = c2 + rb * D + j0
    memset(s1, 0, ln * sizeof(double))
    memset(s2, 0, ln * sizeof(double))
    for r in range(r0, r1):
        A = 0.0
        B = 0.0
        off = r * D + j0
        if floating is float:
            fn_lnsums_f32(x + off, dy + off, w + j0, ln, mean[r], invstd[r], &A, &B,
                          s1, s2)
        else:
            fn_lnsums_f64(x + off, dy + off, w + j0, ln, mean[r], invstd[r], &A, &B,
                          s1, s2)
        pA[r * nc + cc] = A
        pB[r * nc + cc] = B


def layer_bwd_sums(const floating[:, ::1] x, const floating[:, ::1] dy,
                   const floating[::1] weight, const double[::1] mean,
                   const double[::1] invstd, double[::1] row_a, double[::1] row_b,
                   double[::1] col_dy, double[::1] col_dyxhat):
    """Fused backward sums of a row normalisation, one pass over x and dy.

    IN x, dy (R, D), R * D > 0; IN weight (D,); IN mean, invstd (R,).
    OUT row_a[r] = sum_d dy * w, row_b[r] = sum_d dy * w * (x - mean[r]);
    OUT col_dy[d] = sum_r dy, col_dyxhat[d] = sum_r dy * (x - mean[r]) * invstd[r].
    Units are blocks of LAYER_ROWS rows x UNIT columns; row sums are merged
    over column chunks and column sums over row blocks, in order.
    """
    cdef int64_t R = x.shape[0], D = x.shape[1], i, r, d, u
    cdef int64_t nc = (D + UNIT - 1) // UNIT
    cdef int64_t nb = (R + LAYER_ROWS - 1) // LAYER_ROWS
    cdef int nt = threads_for(2 * R * D, nb * nc)
    cdef const floating *px = &x[0, 0]
    cdef const floating *pg = &dy[0, 0]
    cdef double *pA = <double *>malloc(2 * R * nc * sizeof(double))
    cdef double *pB
    cdef double *c1 = <double *>malloc(2 * nb * D * sizeof(double))
    cdef double *c2
    cdef double sa, sb
    if pA == NULL or c1 == NULL:
        free(pA)
        free(c1)
        raise MemoryError()
    pB = pA + R * nc
    c2 = c1 + nb * D
    with nogil:
        for i in prange(nb * nc, num_threads=nt, schedule='static'):
            note_threads(nt)
            layer_sums_unit(px, pg, &weight[0], R, D, nc, i, &mean[0], &invstd[0],
                            pA, pB, c1, c2)
        for r in prange(R, num_threads=nt, schedule='static'):
            sa = 0.0
            sb = 0.0
            for u in range(nc):
                sa = sa + pA[r * nc + u]
                sb = sb + pB[r * nc + u]
            row_a[r] = sa
            row_b[r] = sb
        for d in prange(D, num_threads=nt, schedule='static'):
            sa = 0.0
            sb = 0.0
            for u in range(nb):
                sa = sa + c1[u * D + d]
                sb = sb + c2[u * D + d]
            col_dy[d] = sa
            col_dyxhat[d] = sb
    free(pA)
    free(c1)


# --------------------------------------------------------------------------
# Fused slice kernels: x (R, D), R independent slices of D contiguous
# elements, each normalised over its own D values (LayerNorm and RMSNorm: a
# row; GroupNorm: the K channels of one group of one sample; InstanceNorm:
# one plane).  One thread takes a whole slice: its statistics, then its
# normalisation (or its backward sums, then its input gradient) while the
# slice is still in L1/L2, so the data comes from memory once per call.
# A slice's statistics are computed exactly as batch_stats computes those of
# a channel of a (1, R, D) view: pieces of UNIT elements, Chan-merged in
# order; nothing depends on which thread took the slice.
#
# Weights: G == 0: one weight and bias per column of the row (LayerNorm);
# G > 0: slice r = (sample, group r % G) holds K = C // G channel planes of
# D // K elements each, channel (r % G) * K + k with weight[ch], bias[ch].
# --------------------------------------------------------------------------

cdef inline void run_moments(const floating *p, int64_t n, double *pm,
                             double *pm2) noexcept nogil:
    """Two-pass mean and M2 of one run of n values (= plane_moments)."""
    cdef double s, sd = 0.0, sdd = 0.0, cnt = <double>n, m
    if floating is float:
        s = fn_sum_blk_f32(p, n)
    else:
        s = fn_sum_f64(p, n)
    m = <double><floating>(s / cnt)
    if floating is float:
        fn_dev_blk_f32(p, n, <float>m, &sd, &sdd)
    else:
        fn_dev_f64(p, n, m, &sd, &sdd)
    pm[0] = m + sd / cnt if isfinite(m) else m
    sdd = sdd - sd * sd / cnt
    pm2[0] = 0.0 if sdd < 0.0 else sdd


cdef struct Moments:
    double mean, var, invstd


cdef inline Moments slice_moments(const floating *p, int64_t D) noexcept nogil:
    """Mean and biased variance of p[0:D]: pieces of UNIT, Chan-merged.

    Returned by value: inside prange, a variable is private to the thread
    only when the loop assigns it; one written through its address is
    shared by the team."""
    cdef Moments res
    cdef int64_t j0, ln
    cdef double cnt = 0.0, mu = 0.0, m2 = 0.0, nb, tot, d, pm, pm2
    j0 = 0
    while j0 < D:
        ln = D - j0
        if ln > UNIT:
            ln = UNIT
        run_moments(p + j0, ln, &pm, &pm2)
        nb = <double>ln
        tot = cnt + nb
        d = pm - mu
        if isfinite(mu) and isfinite(pm):
            mu = mu + d * (nb / tot)
        else:
            mu = (mu * cnt + pm * nb) / tot
        m2 = m2 + pm2 + d * d * (cnt * nb / tot)
        cnt = tot
        j0 += ln
    res.mean = mu
    res.var = (0.0 if m2 < 0.0 else m2) / cnt
    res.invstd = 0.0           # set by slice_statistics
    return res


cdef inline void prefetch_run(const floating *p, int64_t n) noexcept nogil:
    """Ask for p[0:n] (the same part of the next slice), one line per 64 bytes."""
    cdef int64_t j
    cdef int64_t step = 64 // sizeof(floating)
    j = 0
    while j < n:
        fn_prefetch(p + j)
        j += step


cdef inline void slice_normalise(const floating *x, floating *y, int64_t D,
                                 int64_t r, int64_t G, int64_t K, double m,
                                 double inv, bint rms, const floating *w,
                                 const floating *b, bint stream) noexcept nogil:
    """y = (x - m) * inv, then the weight and bias, as (x - c) * s + t.
    stream: compute TILE values at a time in L1 and write them to y with
    streaming stores (same values)."""
    cdef double c = 0.0 if rms else <double><floating>m
    cdef double s, t
    cdef int64_t k, ch, L, j, n
    cdef floating tile[TILE]
    cdef floating *tp = &tile[0]
    if G == 0:
        t = (c - m) * inv
        j = 0
        while j < D:
            n = D - j if not stream or D - j < TILE else TILE
            if stream:
                prefetch_run(x + D + j, n)
            if floating is float:
                if w != NULL:
                    fn_lnaff_f32(x + j, tp if stream else y + j, n, <float>c,
                                 <float>inv, <float>t, w + j,
                                 b + j if b != NULL else NULL)
                else:
                    fn_affine_f32(x + j, tp if stream else y + j, n, <float>c,
                                  <float>inv, <float>t)
                if stream:
                    fn_stream_f32(y + j, tp, n)
            else:
                if w != NULL:
                    fn_lnaff_f64(x + j, tp if stream else y + j, n, c, inv, t, w + j,
                                 b + j if b != NULL else NULL)
                else:
                    fn_affine_f64(x + j, tp if stream else y + j, n, c, inv, t)
                if stream:
                    fn_stream_f64(y + j, tp, n)
            j += n
        if stream:
            fn_stream_fence()
        return
    L = D // K
    for k in range(K):
        ch = (r % G) * K + k
        s = inv * <double>w[ch] if w != NULL else inv
        t = (c - m) * s
        if b != NULL:
            t = t + <double>b[ch]
        j = 0
        while j < L:
            n = L - j if not stream or L - j < TILE else TILE
            if stream:
                prefetch_run(x + D + k * L + j, n)
            if floating is float:
                fn_affine_f32(x + k * L + j, tp if stream else y + k * L + j, n,
                              <float>c, <float>s, <float>t)
                if stream:
                    fn_stream_f32(y + k * L + j, tp, n)
            else:
                fn_affine_f64(x + k * L + j, tp if stream else y + k * L + j, n, c, s, t)
                if stream:
                    fn_stream_f64(y + k * L + j, tp, n)
            j += n
    if stream:
        fn_stream_fence()


cdef inline Moments slice_statistics(const floating *p, int64_t D, double eps,
                                     bint rms) noexcept nogil:
    """slice_moments and invstd: 1 / sqrt(var + eps), or with rms
    1 / sqrt(var + mean**2 + eps)."""
    cdef Moments mo = slice_moments(p, D)
    cdef double ms
    cdef int64_t j
    if rms:
        ms = mo.var + mo.mean * mo.mean
        if not isfinite(ms):    # an infinity in the slice: var is NaN, the mean square inf
            ms = 0.0
            for j in range(D):
                ms = ms + <double>p[j] * <double>p[j]
            ms = ms / <double>D
        mo.invstd = 1.0 / sqrt(ms + eps)
    else:
        mo.invstd = 1.0 / sqrt(mo.var + eps)
    return mo


def slice_forward(const floating[:, ::1] x, floating[:, ::1] out, int64_t G,
                  int64_t K, double eps, bint rms, const floating[::1] weight,
                  bint has_weight, const floating[::1] bias, bint has_bias,
                  double[::1] mean, double[::1] var, double[::1] invstd):
    """Statistics and normalisation of each slice (row) of x, one pass.

    IN x (R, D), R * D > 0; OUT out (R, D), may be x.  G, K: see above
    (G = 0: weight and bias of shape (D,); else (G * K,)); has_*: whether
    weight / bias are used (else any array of the dtype is passed).
    OUT mean, var (R,): the slice's mean (0 with rms: the centre used) and
    biased variance; OUT invstd (R,): 1 / sqrt(var + eps), or with rms
    1 / sqrt(var + mean**2 + eps), the slice then scaled around 0.
    """
    cdef int64_t R = x.shape[0], D = x.shape[1], r
    cdef int nt = threads_for(R * D, R)
    cdef const floating *px = &x[0, 0]
    cdef floating *po = &out[0, 0]
    cdef const floating *w = &weight[0] if has_weight else NULL
    cdef const floating *b = &bias[0] if has_bias else NULL
    cdef Moments mo
    cdef bint stream = streams(po, px, R * D * sizeof(floating))
    with nogil:
        for r in prange(R, num_threads=nt, schedule='static'):
            note_threads(nt)
            mo = slice_statistics(px + r * D, D, eps, rms)
            mean[r] = 0.0 if rms else mo.mean
            var[r] = mo.var
            invstd[r] = mo.invstd
            slice_normalise(px + r * D, po + r * D, D, r, G, K, mean[r], mo.invstd,
                            rms, w, b, stream)


def slice_stats(const floating[:, ::1] x, double eps, bint rms, double[::1] mean,
                double[::1] var, double[::1] invstd):
    """The statistics of slice_forward without its output (same arithmetic).

    IN x (R, D), R * D > 0; OUT mean, var, invstd (R,).
    """
    cdef int64_t R = x.shape[0], D = x.shape[1], r
    cdef int nt = threads_for(R * D, R)
    cdef const floating *px = &x[0, 0]
    cdef Moments mo
    with nogil:
        for r in prange(R, num_threads=nt, schedule='static'):
            note_threads(nt)
            mo = slice_statistics(px + r * D, D, eps, rms)
            mean[r] = 0.0 if rms else mo.mean
            var[r] = mo.var
            invstd[r] = mo.invstd


cdef inline void row_backward(const double *x, const double *dy, double *dx,
                              int64_t D, const double *w, double m, double inv,
                              bint rms, double *c1, double *c2) noexcept nogil:
    """One float64 row of the LayerNorm/RMSNorm backward; adds its column
    sums (float32 rows: fn_lnrow_f32 via float_rows_block)."""
    cdef int64_t j0 = 0, ln
    cdef double A = 0.0, B = 0.0, a, bb, c, q, k
    while j0 < D:
        ln = D - j0
        if ln > UNIT:
            ln = UNIT
        a = 0.0
        bb = 0.0
        fn_lnsums_f64(x + j0, dy + j0, w + j0, ln, m, inv, &a, &bb, c1 + j0, c2 + j0)
        A = A + a
        B = B + bb
        j0 += ln
    # dx = inv * w * dy - q * (x - m) - inv * A / D, with x - m = (x - c) + (c - m)
    q = inv * inv * inv * B / <double>D
    if rms:
        c = 0.0
        k = 0.0
    else:
        c = m
        k = inv * A / <double>D
    fn_lnbwd_f64(x, dy, dx, D, w, c, inv, q, k)


cdef inline void group_backward(const floating *x, const floating *dy, floating *dx,
                                int64_t D, int64_t r, int64_t G, int64_t K,
                                const floating *w, double m, double inv,
                                double *s1, double *s2) noexcept nogil:
    """One slice of the GroupNorm/InstanceNorm backward; stores the sums of
    dy and of dy * (x - m) of each of its channel planes in s1, s2."""
    cdef int64_t L = D // K, k, ch
    cdef double A = 0.0, B = 0.0, sa, sb, wv, c, q, kk
    for k in range(K):
        sa = 0.0
        sb = 0.0
        if floating is float:
            fn_dot_blk_f32(x + k * L, dy + k * L, L, m, &sa, &sb)
        else:
            fn_dot_f64(x + k * L, dy + k * L, L, m, &sa, &sb)
        s1[k] = sa
        s2[k] = sb
        wv = <double>w[(r % G) * K + k] if w != NULL else 1.0
        A = A + wv * sa
        B = B + wv * sb
    q = inv * inv * inv * B / <double>D
    c = <double><floating>m
    # as _checks.centered: no correction for a non-finite mean or q
    kk = inv * A / <double>D + (q * (c - m) if isfinite(m) and isfinite(q) else 0.0)
    for k in range(K):
        ch = (r % G) * K + k
        wv = <double>w[ch] if w != NULL else 1.0
        # prefetch the same part of the next slice (taken next by this thread)
        if floating is float:
            fn_bwd_pf_f32(x + k * L, dy + k * L, dx + k * L, L, <float>c,
                          <float>(wv * inv), <float>q, <float>kk, x + D + k * L,
                          dy + D + k * L)
        else:
            fn_bwd_pf_f64(x + k * L, dy + k * L, dx + k * L, L, c, wv * inv, q, kk,
                          x + D + k * L, dy + D + k * L)


cdef inline void float_rows_block(const float *x, const float *dy, float *dx,
                                  int64_t D, int64_t R, int64_t i, bint rms,
                                  const float *w,
                                  const double *mean, const double *invstd,
                                  float *f1, float *f2, double *c1,
                                  double *c2) noexcept nogil:
    """Rows [i * LAYER_ROWS, ...) of a float32 row backward: float32 column
    sums over the block (f1, f2: D floats of scratch), flushed to c1, c2; a
    column whose float32 sum is not finite is summed again in float64."""
    cdef int64_t r0 = i * LAYER_ROWS, r1 = r0 + LAYER_ROWS, r, d
    cdef double s1, s2
    if r1 > R:
        r1 = R
    memset(f1, 0, D * sizeof(float))
    memset(f2, 0, D * sizeof(float))
    for r in range(r0, r1):
        fn_lnrow_f32(x + r * D, dy + r * D, dx + r * D, w, D, mean[r], invstd[r],
                     rms, f1, f2)
    for d in range(D):
        s1 = <double>f1[d]
        s2 = <double>f2[d]
        if not (isfinite(s1) and isfinite(s2)):
            s1 = 0.0
            s2 = 0.0
            for r in range(r0, r1):
                s1 = s1 + <double>dy[r * D + d]
                s2 = s2 + <double>dy[r * D + d] * ((<double>x[r * D + d] - mean[r])
                                                    * invstd[r])
        c1[d] = s1
        c2[d] = s2


def slice_backward(const floating[:, ::1] x, const floating[:, ::1] dy,
                   floating[:, ::1] dx, int64_t G, int64_t K, bint rms,
                   const floating[::1] weight, bint has_weight,
                   const double[::1] mean, const double[::1] invstd,
                   double[::1] sum1, double[::1] sum2):
    """Input gradient of slice_forward (statistics from the slice), one pass
    over x and dy per slice, and the sums behind the weight/bias gradients.

    IN x, dy (R, D), R * D > 0; OUT dx (R, D), may alias dy; IN mean, invstd
    (R,) as slice_forward returned them (mean is ignored with rms).
    G == 0 (rows): weight (D,), needed (pass ones when there is none);
      OUT sum1[d] = sum_r dy, sum2[d] = sum_r dy * (x - m_r) * inv_r, merged
      over fixed blocks of LAYER_ROWS rows in order.
    G > 0 (groups): OUT sum1, sum2 (R * K,): per channel plane of each slice,
      sum dy and sum dy * (x - m_r).
    """
    cdef int64_t R = x.shape[0], D = x.shape[1], r, i, d, u, r1
    cdef int64_t nb = (R + LAYER_ROWS - 1) // LAYER_ROWS
    cdef int nt
    cdef const floating *px = &x[0, 0]
    cdef const floating *pg = &dy[0, 0]
    cdef floating *po = &dx[0, 0]
    cdef const floating *w = &weight[0] if has_weight else NULL
    cdef double *cs = NULL
    cdef double sa, sb
    cdef float *cf = NULL
    cdef int failed = 0
    cdef int *fail = &failed    # shared: see reduction()
    if G > 0:
        nt = threads_for(2 * R * D, R)
        with nogil:
            for r in prange(R, num_threads=nt, schedule='static'):
                note_threads(nt)
                group_backward(px + r * D, pg + r * D, po + r * D, D, r, G, K, w,
                               mean[r], invstd[r], &sum1[r * K], &sum2[r * K])
        return
    cs = <double *>calloc(2 * nb * D, sizeof(double))
    if cs == NULL:
        raise MemoryError()
    nt = threads_for(2 * R * D, nb)
    with nogil:
        if floating is float:
            with parallel(num_threads=nt):
                # float32 column sums of a block, per thread (see reduction())
                cf = <float *>malloc((2 * D + 16) * sizeof(float))
                if cf == NULL:
                    fail[0] = 1
                note_threads(nt)
                for i in prange(nb, schedule='static'):
                    if cf != NULL:
                        float_rows_block(px, pg, po, D, R, i, rms, &weight[0], &mean[0],
                                         &invstd[0], cf, cf + D + 16,
                                         cs + i * D, cs + (nb + i) * D)
                free(cf)
        else:
            for i in prange(nb, num_threads=nt, schedule='static'):
                note_threads(nt)
                r1 = (i + 1) * LAYER_ROWS
                if r1 > R:
                    r1 = R
                for r in range(i * LAYER_ROWS, r1):
                    row_backward(px + r * D, pg + r * D, po + r * D, D, &weight[0],
                                 mean[r], invstd[r], rms, cs + i * D, cs + (nb + i) * D)
    if failed:
        free(cs)
        raise MemoryError()
    with nogil:
        for d in prange(D, num_threads=nt, schedule='static'):
            sa = 0.0
            sb = 0.0
            for u in range(nb):
                sa = sa + cs[u * D + d]
                sb = sb + cs[(nb + u) * D + d]
            sum1[d] = sa
            sum2[d] = sb
    free(cs)


# --------------------------------------------------------------------------
# Local response normalisation: x (N, C, L), a window over channels.  Work
# items are strips of `strip` columns of one sample, all channels; each is
# independent, so results do not depend on the thread count.
# --------------------------------------------------------------------------

cdef inline int64_t lrn_strip(int64_t C, int64_t L) noexcept nogil:
    """Columns per strip: scratch of 4 * C * strip doubles stays ~1 MiB."""
    cdef int64_t s = 32768 // C
    if s > 256:
        s = 256
    if s < 4:
        s = 4
    if s > L:
        s = L
    return s


cdef int lrn(const floating *x, const floating *dy, floating *out, int64_t N,
             int64_t C, int64_t L, int64_t size, double alpha, double beta,
             double k) except -1:
    """Forward (dy == NULL: out = y) or backward (out = dx)."""
    cdef int64_t strip = lrn_strip(C, L)
    cdef int64_t per = (L + strip - 1) // strip, total = N * per, i, n, l0, ln
    cdef int64_t need = 4 * C * strip
    cdef int nt = threads_for((3 if dy != NULL else 2) * N * C * L * 8, total)
    cdef double *scratch = NULL
    cdef int failed = 0
    cdef int *fail = &failed    # shared: see reduction()
    with nogil:
        with parallel(num_threads=nt):
            scratch = <double *>malloc(need * sizeof(double))
            if scratch == NULL:
                fail[0] = 1
            note_threads(nt)
            for i in prange(total, schedule='static'):
                if scratch != NULL:
                    n = i // per
                    l0 = (i - n * per) * strip
                    ln = L - l0
                    if ln > strip:
                        ln = strip
                    if dy == NULL:
                        if floating is float:
                            fn_lrn_fwd_f32(x + n * C * L, out + n * C * L, C, L, l0, ln,
                                           size, alpha, beta, k, scratch,
                                           scratch + C * strip, scratch + 2 * C * strip)
                        else:
                            fn_lrn_fwd_f64(x + n * C * L, out + n * C * L, C, L, l0, ln,
                                           size, alpha, beta, k, scratch,
                                           scratch + C * strip, scratch + 2 * C * strip)
                    else:
                        if floating is float:
                            fn_lrn_bwd_f32(x + n * C * L, dy + n * C * L, out + n * C * L,
                                           C, L, l0, ln, size, alpha, beta, k, scratch,
                                           scratch + C * strip, scratch + 2 * C * strip,
                                           scratch + 3 * C * strip)
                        else:
                            fn_lrn_bwd_f64(x + n * C * L, dy + n * C * L, out + n * C * L,
                                           C, L, l0, ln, size, alpha, beta, k, scratch,
                                           scratch + C * strip, scratch + 2 * C * strip,
                                           scratch + 3 * C * strip)
            free(scratch)
    if failed:
        raise MemoryError()
    return 0


def lrn_forward(const floating[:, :, ::1] x, floating[:, :, ::1] out, int64_t size,
                double alpha, double beta, double k):
    """out = x * (k + alpha / size * window sum of x**2 over channels)**-beta.

    IN x (N, C, L), N * C * L > 0; OUT out (N, C, L), must not alias x (a
    strip's later channels are read after earlier ones are written).
    """
    lrn(&x[0, 0, 0], NULL, &out[0, 0, 0], x.shape[0], x.shape[1], x.shape[2], size,
        alpha, beta, k)


def lrn_backward(const floating[:, :, ::1] x, const floating[:, :, ::1] dy,
                 floating[:, :, ::1] dx, int64_t size, double alpha, double beta,
                 double k):
    """dx of sum(dy * lrn(x)); IN x, dy (N, C, L); OUT dx, aliasing neither."""
    lrn(&x[0, 0, 0], &dy[0, 0, 0], &dx[0, 0, 0], x.shape[0], x.shape[1], x.shape[2],
        size, alpha, beta, k)


# --------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------

def stream_copy(const unsigned char[::1] src, unsigned char[::1] dst):
    """dst[:] = src[:], one contiguous part per OpenMP thread, each one memcpy
    call (a large call lets memcpy use streaming stores): the benchmark's
    measure of the machine's memory bandwidth."""
    cdef int64_t n = src.shape[0], i, part, lo, hi
    cdef int nt = threads_for(n, 1 << 30)
    if dst.shape[0] != n:
        raise ValueError(f"stream_copy: dst has {dst.shape[0]} bytes, src {n}")
    if n == 0:
        return
    part = ((n + nt - 1) // nt + 63) // 64 * 64
    with nogil:
        for i in prange(nt, num_threads=nt, schedule='static'):
            note_threads(nt)
            lo = i * part
            hi = lo + part
            if hi > n:
                hi = n
            if lo < hi:
                memcpy(&dst[0] + lo, &src[0] + lo, hi - lo)


def isa():
    """Instruction set this copy of the kernels was compiled for:
    'baseline' (any x86-64, SSE2) or 'avx2'."""
    return FN_ISA.decode()


def cpu_has_avx2():
    """True when the running CPU (and OS) supports AVX2."""
    return bool(fn_cpu_has_avx2())


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(FASTNORM_HAVE_OPENMP)


def openmp_address():
    """Address of omp_get_max_threads as this extension resolved it (0 when
    built without OpenMP): it lies in the OpenMP runtime fastnorm uses."""
    return fn_openmp_address()


def max_threads():
    """Threads a large kernel call may use now (omp_get_max_threads(), or 1
    in a forked child that must stay serial)."""
    return max_threads_now()


# pthread_atfork handlers that keep forked children working (_omp_shim.h)
if fn_fork_install() != 0:
    raise ImportError("fastnorm: pthread_atfork failed: cannot make the kernels fork-safe")


def fork_state():
    """How fork() treats this process's kernels: a dict with serial (True in
    a forked child whose OpenMP pool could not be reset: every kernel runs on
    one thread) and pauses (OpenMP pauses made by fork() in this process)."""
    return dict(serial=bool(fn_fork_serial), pauses=fn_fork_pauses)


def _fork_pause_off(off):
    """Tests: with off=True, fork() acts as if the OpenMP pause failed (the
    child runs serially).  Returns the previous setting."""
    global fn_fork_pause_off
    old = bool(fn_fork_pause_off)
    fn_fork_pause_off = 1 if off else 0
    return old


def threads_used():
    """Threads the parallel region of the last kernel call ran on."""
    return g_threads_used


def geometry(N, C, L):
    """The shape-only decomposition used for (N, C, L): a dict, for tests."""
    cdef Units g = make_units(N, C, L)
    return dict(rows_mode=bool(g.rows_mode), rows=g.rows, pieces=g.pieces,
                piece=g.piece, channels_per_chunk=g.cw, per_channel=g.per_chan,
                units=g.total)
