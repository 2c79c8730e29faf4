# Channel kernels: per-channel statistics, backward sums and elementwise
# passes over (N, C, L).  BatchNorm uses them directly; InstanceNorm,
# GroupNorm and LayerNorm use them for slices too long for the one-pass
# kernels (statistics of a (1, R, D) view).  Included by _kernels.pyx.
#
# Units.  Each channel's values are cut into *units* by the shape alone, in
# one of two modes:
#   * planes (L >= SMALL_L): a unit belongs to one channel: a piece of at most
#     UNIT consecutive elements of one plane when L >= UNIT, else a block of
#     UNIT // L consecutive samples, all of their L elements.  Loops run along
#     the plane with register accumulators.
#   * rows (L < SMALL_L, e.g. BatchNorm1d on (N, C)): planes are too short to
#     loop along, so a unit is a block of ROW_COUNT // L samples times a chunk
#     of channels (at most ROW_COLS elements of each row), and loops run along
#     the contiguous rows with one float64 accumulator per column.
# A unit is small enough to stay in L1/L2 between the two passes made over it.
#
# Statistics.  For each unit, a two-pass mean and M2 (corrected two-pass: the
# sum of deviations from the first-pass mean is folded back in), centred on
# the first-pass mean rounded to the compute type; float32 compute runs the
# passes in float32 vector blocks flushed to float64 (_loops_channels.h).
# Unit partials are float64.  The per-unit partials (count, mean, M2) are
# merged per channel with Chan's formula, in unit order.  Units are computed in
# parallel (any thread may take any unit), the merge is parallel over
# channels, and neither the units nor the merge order depend on the thread
# count.  Backward sums (sum of dy, sum of dy * (x - mean)) use the same units
# and the same ordered merge, centred on the mean rounded to the compute type
# and corrected for that rounding in float64.
#
# Elementwise passes (normalise, input gradient) go over pieces of planes
# (planes mode) or of rows, with per-column coefficients expanded once per
# call, in the compute type (rows mode).

cdef extern from "_loops_channels.h" nogil:
    double fn_sum(const void *x, int64_t n)
    void fn_dev(const void *x, int64_t n, double m, double *sd, double *sdd)
    double fn_sumsq(const void *x, int64_t n)
    void fn_dot(const void *x, const void *dy, int64_t n, double m, double *sdy,
                double *sdyx)
    void fn_affine(const void *x, void *y, int64_t n, double c, double s, double t)
    void fn_bwd(const void *x, const void *dy, void *dx, int64_t n, double c, double a,
                double b, double k)
    void fn_bwd_pf(const void *x, const void *dy, void *dx, int64_t n, double c,
                   double a, double b, double k, const void *px, const void *py)
    void fn_scale(const void *dy, void *dx, int64_t n, double a)
    void fn_rsum(const void *x, int64_t stride, int64_t rows, double *acc, int64_t n)
    void fn_rdev(const void *x, int64_t stride, int64_t rows, const double *m, double *a,
                 double *b, int64_t n)
    void fn_rdot(const void *x, const void *dy, int64_t stride, int64_t rows,
                 const double *m, double *a, double *b, int64_t n)
    void fn_expand4(const void *tag, const double *k0, const double *k1,
                    const double *k2, const double *k3, int64_t C, int64_t L, void *e)
    void fn_raffine(const void *x, void *y, const void *e, int64_t W, int64_t j0,
                    int64_t n)
    void fn_rbwd(const void *x, const void *dy, void *dx, const void *e, int64_t W,
                 int64_t j0, int64_t n)
    void fn_rscale(const void *dy, void *dx, const void *e, int64_t W, int64_t j0,
                   int64_t n)

cdef enum Red:
    RED_MOMENTS = 0     # mean and biased variance of x
    RED_DOT = 1         # sum(dy) and sum(dy * (x - mean))
    RED_SQUARES = 2     # mean of x**2 (RMSNorm's long rows)


# --------------------------------------------------------------------------
# Geometry
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


def geometry(N, C, L):
    """The shape-only decomposition used for (N, C, L): a dict, for tests."""
    cdef Units g = make_units(N, C, L)
    return dict(rows_mode=bool(g.rows_mode), rows=g.rows, pieces=g.pieces,
                piece=g.piece, channels_per_chunk=g.cw, per_channel=g.per_chan,
                units=g.total)


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


cdef inline void plane_moments(const storage *x, const Units *g, int64_t i,
                               double *pm, double *pm2) noexcept nogil:
    """Two-pass mean and M2 of unit i, stored in pm, pm2."""
    cdef int64_t c, n0, n1, l0, ln, n, at
    cdef double s = 0.0, sd = 0.0, sdd = 0.0, cnt, m
    cdef const storage *p
    at = plane_unit(g, i, &c, &n0, &n1, &l0, &ln)
    cnt = <double>((n1 - n0) * ln)
    for n in range(n0, n1):
        p = x + (n * g.C + c) * g.L + l0
        s += fn_sum(p, ln)
    # centre the second pass on the first-pass mean rounded to the compute
    # type (float32 deviations need a float32 centre); the ordered sum of the
    # deviations then corrects the mean exactly as before
    m = fn_centre(x, s / cnt)
    for n in range(n0, n1):
        p = x + (n * g.C + c) * g.L + l0
        fn_dev(p, ln, m, &sd, &sdd)
    pm[at] = m + sd / cnt if isfinite(m) else m
    sdd = sdd - sd * sd / cnt
    pm2[at] = 0.0 if sdd < 0.0 else sdd


cdef inline void plane_squares(const storage *x, const Units *g, int64_t i,
                               double *pa) noexcept nogil:
    """Sum of x**2 over unit i, stored in pa."""
    cdef int64_t c, n0, n1, l0, ln, n, at
    cdef double a = 0.0
    at = plane_unit(g, i, &c, &n0, &n1, &l0, &ln)
    for n in range(n0, n1):
        a = a + fn_sumsq(x + (n * g.C + c) * g.L + l0, ln)
    pa[at] = a


cdef inline void plane_dot(const storage *x, const storage *dy, const Units *g,
                           int64_t i, const double *mean, double *pa,
                           double *pb) noexcept nogil:
    """Sum of dy and of dy * (x - mean[c]) over unit i, stored in pa, pb."""
    cdef int64_t c, n0, n1, l0, ln, n, off, at
    cdef double a = 0.0, b = 0.0
    at = plane_unit(g, i, &c, &n0, &n1, &l0, &ln)
    for n in range(n0, n1):
        off = (n * g.C + c) * g.L + l0
        fn_dot(x + off, dy + off, ln, mean[c], &a, &b)
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


cdef inline void rows_moments(const storage *x, const Units *g, int64_t i,
                              double *pm, double *pm2,
                              double *scratch) noexcept nogil:
    cdef int64_t b = i // g.nk, k = i % g.nk
    cdef int64_t n0 = b * g.rows, n1 = n0 + g.rows, c, l, j
    cdef int64_t c0 = k * g.cw, c1 = c0 + g.cw
    cdef int64_t W, stride = g.C * g.L
    cdef double *acc = scratch
    cdef double *acc2
    cdef double *mj
    cdef double cnt, s, sd, sdd
    if n1 > g.N:
        n1 = g.N
    if c1 > g.C:
        c1 = g.C
    W = (c1 - c0) * g.L
    acc2 = scratch + rows_stride(g)
    mj = scratch + 2 * rows_stride(g)
    cnt = <double>((n1 - n0) * g.L)
    memset(acc, 0, W * sizeof(double))
    fn_rsum(x + n0 * stride + c0 * g.L, stride, n1 - n0, acc, W)
    for c in range(c1 - c0):
        s = 0.0
        for l in range(g.L):
            s += acc[c * g.L + l]
        s = s / cnt
        for l in range(g.L):
            mj[c * g.L + l] = s
    memset(acc, 0, W * sizeof(double))
    memset(acc2, 0, W * sizeof(double))
    fn_rdev(x + n0 * stride + c0 * g.L, stride, n1 - n0, mj, acc, acc2, W)
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


cdef inline void rows_dot(const storage *x, const storage *dy, const Units *g,
                          int64_t i, const double *mean, double *pa, double *pb,
                          double *scratch) noexcept nogil:
    cdef int64_t b = i // g.nk, k = i % g.nk
    cdef int64_t n0 = b * g.rows, n1 = n0 + g.rows, c, l, j, off
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
    off = n0 * stride + c0 * g.L
    fn_rdot(x + off, dy + off, stride, n1 - n0, mj, acc, acc2, W)
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


cdef inline void square_merge(const Units *g, int64_t c, int64_t n, const double *pa,
                              double *a) noexcept nogil:
    """The unit sums of squares of channel c added in unit order, over n."""
    cdef int64_t u
    cdef double sa = 0.0
    for u in range(g.per_chan):
        sa = sa + pa[c * g.per_chan + u]
    a[c] = sa / <double>n


# --------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------

cdef int reduction(int op, const storage *x, const storage *dy,
                   const double *mean, int64_t N, int64_t C, int64_t L,
                   double *a, double *b) except -1:
    """Per-channel reduction of (N, C, L), N * L > 0, into a and b (C,).

    RED_MOMENTS: a = mean, b = biased variance of x.
    RED_DOT: a = sum(dy), b = sum(dy * (x - mean)).
    RED_SQUARES: a = mean of x**2 (the unit sums added in order, divided by
    N * L), b unused; planes mode only.
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
    if op == RED_SQUARES and g.rows_mode:
        free(pa)
        raise ValueError("reduction: sums of squares over rows mode units")
    pb = pa + C * g.per_chan
    if nt == 1:
        # small call: no parallel region to enter (about 0.3 us each)
        with nogil:
            note_threads(1)
            if g.rows_mode:
                scratch = <double *>malloc(rows_scratch(&g) * sizeof(double))
                if scratch == NULL:
                    failed = 1
                else:
                    for i in range(g.total):
                        if op == RED_MOMENTS:
                            rows_moments(x, &g, i, pa, pb, scratch)
                        else:
                            rows_dot(x, dy, &g, i, mean, pa, pb, scratch)
                    free(scratch)
            else:
                for i in range(g.total):
                    if op == RED_MOMENTS:
                        plane_moments(x, &g, i, pa, pb)
                    elif op == RED_SQUARES:
                        plane_squares(x, &g, i, pa)
                    else:
                        plane_dot(x, dy, &g, i, mean, pa, pb)
            if not failed:
                for c in range(C):
                    if op == RED_MOMENTS:
                        chan_merge(&g, c, pa, pb, a, b)
                    elif op == RED_SQUARES:
                        square_merge(&g, c, N * L, pa, a)
                    else:
                        sum_merge(&g, c, pa, pb, a, b)
        free(pa)
        if failed:
            raise MemoryError()
        return 0
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
                elif op == RED_SQUARES:
                    plane_squares(x, &g, i, pa)
                else:
                    plane_dot(x, dy, &g, i, mean, pa, pb)
        if not failed:
            for c in prange(C, num_threads=nt, schedule='static'):
                if op == RED_MOMENTS:
                    chan_merge(&g, c, pa, pb, a, b)
                elif op == RED_SQUARES:
                    square_merge(&g, c, N * L, pa, a)
                else:
                    sum_merge(&g, c, pa, pb, a, b)
    free(pa)
    if failed:
        raise MemoryError()
    return 0


def batch_stats(const storage[:, :, ::1] x, double[::1] mean, double[::1] var):
    """Per-channel mean and biased variance of x (N, C, L), N * L > 0.

    IN x; OUT mean (C,), var (C,): float64.
    """
    reduction(RED_MOMENTS, &x[0, 0, 0], <const storage *>NULL, NULL, x.shape[0],
              x.shape[1], x.shape[2], &mean[0], &var[0])


def batch_squares(const storage[:, :, ::1] x, double[::1] ms):
    """Per-channel mean of x**2 of x (N, C, L), N * L > 0, L >= SMALL_L
    (planes mode): RMSNorm's mean square of long rows, as a (1, R, D) view.

    IN x; OUT ms (C,): float64.
    """
    reduction(RED_SQUARES, &x[0, 0, 0], <const storage *>NULL, NULL, x.shape[0],
              x.shape[1], x.shape[2], &ms[0], NULL)


def batch_bwd_sums(const storage[:, :, ::1] x, const storage[:, :, ::1] dy,
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

cdef inline void plane_item(int op, const storage *x, const storage *dy,
                            storage *out, const Units *g, int64_t i,
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
    if op == OP_AFFINE:
        fn_affine(x + off, out + off, ln, k0[c], k1[c], k2[c])
    elif op == OP_BWD:
        fn_bwd(x + off, dy + off, out + off, ln, k0[c], k1[c], k2[c], k3[c])
    else:
        fn_scale(dy + off, out + off, ln, k1[c])


cdef inline void row_item(int op, const storage *x, const storage *dy,
                          storage *out, int64_t W, int64_t pieces, int64_t i,
                          const void *e) noexcept nogil:
    """Piece i of the N rows of W = C * L elements (pieces of UNIT per row);
    e holds the 4 coefficient rows (fn_expand4)."""
    cdef int64_t row = i // pieces
    cdef int64_t j0 = (i - row * pieces) * UNIT
    cdef int64_t ln = W - j0
    cdef int64_t off = row * W + j0
    if ln > UNIT:
        ln = UNIT
    if op == OP_AFFINE:
        fn_raffine(x + off, out + off, e, W, j0, ln)
    elif op == OP_BWD:
        fn_rbwd(x + off, dy + off, out + off, e, W, j0, ln)
    else:
        fn_rscale(dy + off, out + off, e, W, j0, ln)


cdef int elementwise(int op, const storage *x, const storage *dy, storage *out,
                     int64_t N, int64_t C, int64_t L, int reads,
                     const double *k0, const double *k1, const double *k2,
                     const double *k3) except -1:
    """out = op(x, dy; per-channel coefficients k0..k3) over (N, C, L)."""
    cdef Units g = make_units(N, C, L)
    cdef int64_t total, i, W = C * L, pieces
    cdef int nt
    cdef void *e = NULL
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
        # per-column coefficients, rounded to the compute type once
        e = malloc(4 * W * sizeof(double))
        if e == NULL:
            raise MemoryError()
        fn_expand4(x, k0, k1, k2, k3, C, L, e)
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


def batch_affine(const storage[:, :, ::1] x, storage[:, :, ::1] out,
                 const double[::1] center, const double[::1] scale,
                 const double[::1] shift):
    """out = (x - center[c]) * scale[c] + shift[c], in the compute type.

    IN x (N, C, L); OUT out (N, C, L), may be x itself; IN center, scale,
    shift (C,) float64, rounded to the compute type once per channel.
    """
    elementwise(OP_AFFINE, &x[0, 0, 0], <const storage *>NULL, &out[0, 0, 0], x.shape[0],
                x.shape[1], x.shape[2], 1, &center[0], &scale[0], &shift[0],
                &shift[0])


def batch_bwd_input(const storage[:, :, ::1] x, const storage[:, :, ::1] dy,
                    storage[:, :, ::1] dx, const double[::1] center,
                    const double[::1] a, const double[::1] b,
                    const double[::1] k):
    """dx = a[c] * dy - b[c] * (x - center[c]) - k[c], in the compute type.

    Input gradient of a normalisation whose statistics came from the batch.
    IN x, dy (N, C, L); OUT dx (N, C, L), may alias dy; IN (C,) float64.
    """
    elementwise(OP_BWD, &x[0, 0, 0], &dy[0, 0, 0], &dx[0, 0, 0], x.shape[0],
                x.shape[1], x.shape[2], 2, &center[0], &a[0], &b[0], &k[0])


def batch_scale(const storage[:, :, ::1] dy, storage[:, :, ::1] dx,
                const double[::1] a):
    """dx = a[c] * dy, in the compute type (input gradient with fixed stats).

    IN dy (N, C, L); OUT dx (N, C, L), may be dy itself; IN a (C,) float64.
    """
    elementwise(OP_SCALE, &dy[0, 0, 0], &dy[0, 0, 0], &dx[0, 0, 0], dy.shape[0],
                dy.shape[1], dy.shape[2], 1, &a[0], &a[0], &a[0], &a[0])
