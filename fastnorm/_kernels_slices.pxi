# Slice kernels: x (R, D), R independent slices of D contiguous elements,
# each normalised over its own D values.  Two kinds of slice, each with its
# own entry points:
#   rows    LayerNorm and RMSNorm: a slice is a row, with a weight and bias
#           per column (D,): rows_forward, rows_backward;
#   groups  GroupNorm and InstanceNorm: slice r is group r % G of a sample,
#           K = C // G channel planes of D // K elements each, with weight
#           and bias per channel (G * K,): groups_forward, groups_backward.
# slice_stats gives the statistics of either without an output.  Included by
# _kernels.pyx.
#
# One pass.  For slices that fit in L2 (the Python layer decides, FUSE_BYTES),
# one thread takes a whole slice: its statistics, then its normalisation (or
# its backward sums, then its input gradient) while the slice is still in
# L1/L2, so the data comes from memory once per call, and it prefetches its
# next slice during the passes that run from cache.  A slice's statistics are
# computed exactly as batch_stats computes those of a channel of a (1, R, D)
# view: pieces of UNIT elements, Chan-merged in order; nothing depends on
# which thread took the slice.  Outputs of g_stream_bytes or more, in slices
# of STREAM_SLICE bytes or more, are computed in L1 tiles of TILE and written
# with streaming stores.
#
# Two passes.  Longer rows take the channel kernels' statistics on a (1, R, D)
# view, parallel within the row, then the layer_* kernels here (pieces of
# UNIT columns; backward sums over blocks of LAYER_ROWS rows x UNIT columns).
#
# Row backward.  The fused row backward differs by compute type (float32
# column sums in per-thread scratch, or float64 ones): fn_rowsbwd in
# _loops_slices.h; the column partials of each block of LAYER_ROWS rows are
# merged over the blocks in order.

cdef extern from "_loops_slices.h" nogil:
    void fn_lnaff(const void *x, void *y, int64_t n, double c, double s, double t,
                  const void *w, const void *b)
    void fn_lnbwd(const void *x, const void *dy, void *dx, int64_t n, const void *w,
                  double c, double a, double q, double k)
    void fn_lnsums(const void *x, const void *dy, const void *w, int64_t n, double m,
                   double inv, double *A, double *B, double *c1, double *c2)
    int fn_rows8(const void *x, int64_t n, double eps, int rms, double *mean,
                 double *var, double *invstd)
    int64_t fn_rows_scratch(const void *tag, int64_t D)
    void fn_gnaff1(const void *x, void *y, int64_t K, double c, double m, double inv,
                   const void *w, const void *b)
    void fn_gnsums1(const void *x, const void *dy, int64_t K, double m, const void *w,
                    double *s1, double *s2, double *A, double *B)
    void fn_gnbwd1(const void *x, const void *dy, void *dx, int64_t K, double c,
                   double inv, double q, double kk, const void *w)
    void fn_rowsbwd(const void *x, const void *dy, void *dx, int64_t D, int64_t r0,
                    int64_t r1, int rms, const void *w, const double *mean,
                    const double *invstd, int64_t unit, void *scratch, double *c1,
                    double *c2, int pf)


cdef inline const void *wofs(const storage *x, const void *w, int64_t j) noexcept nogil:
    """w + j values of x's compute type (weights are not in the storage
    type), or NULL for NULL."""
    if w == NULL:
        return NULL
    return <const char *>w + j * fn_csize(x)


cdef inline const void *param_ptr(const unsigned char[::1] a, int64_t n,
                                  int64_t csize) except? NULL:
    """Address of a parameter given as the bytes of n values of the compute
    type (csize bytes each), or NULL for None."""
    if a is None:
        return NULL
    if a.shape[0] != n * csize:
        raise ValueError(f"kernel: a parameter of {a.shape[0]} bytes, expected {n} "
                         f"values of {csize} bytes")
    return &a[0]


# --------------------------------------------------------------------------
# Two-pass row kernels: statistics from batch_stats on a (1, R, D) view.
# --------------------------------------------------------------------------

cdef inline void layer_item(int op, const storage *x, const storage *dy,
                            storage *out, int64_t D, int64_t pieces, int64_t i,
                            const double *k0, const double *k1, const double *k2,
                            const double *k3, const void *w,
                            const void *b) noexcept nogil:
    """Piece i (of UNIT columns) of the R rows; w, b: arrays of the compute
    type, indexed by column."""
    cdef int64_t r = i // pieces
    cdef int64_t j0 = (i - r * pieces) * UNIT
    cdef int64_t ln = D - j0
    cdef int64_t off = r * D + j0
    if ln > UNIT:
        ln = UNIT
    if op == OP_AFFINE:
        fn_lnaff(x + off, out + off, ln, k0[r], k1[r], k2[r], wofs(x, w, j0),
                 wofs(x, b, j0))
    else:
        fn_lnbwd(x + off, dy + off, out + off, ln, wofs(x, w, j0), k0[r], k1[r],
                 k2[r], k3[r])


def layer_affine(const storage[:, ::1] x, storage[:, ::1] out,
                 const double[::1] center, const double[::1] scale,
                 const double[::1] shift, const unsigned char[::1] weight,
                 const unsigned char[::1] bias):
    """out = ((x - center[r]) * scale[r] + shift[r]) * weight[d] + bias[d].

    IN x (R, D); OUT out (R, D), may be x; IN (R,) float64 rounded to the
    compute type once per row; IN weight, bias (D,).
    """
    cdef int64_t R = x.shape[0], D = x.shape[1], i
    cdef int64_t pieces = (D + UNIT - 1) // UNIT, total = R * pieces
    cdef int nt = threads_for(R * D, total)
    cdef const storage *px = &x[0, 0]
    cdef storage *po = &out[0, 0]
    cdef const void *w = param_ptr(weight, D, fn_csize(px))
    cdef const void *b = param_ptr(bias, D, fn_csize(px))
    with nogil:
        for i in prange(total, num_threads=nt, schedule='static'):
            note_threads(nt)
            layer_item(OP_AFFINE, px, <const storage *>NULL, po, D, pieces, i,
                       &center[0], &scale[0], &shift[0], NULL, w, b)


def layer_bwd_input(const storage[:, ::1] x, const storage[:, ::1] dy,
                    storage[:, ::1] dx, const unsigned char[::1] weight,
                    const double[::1] center, const double[::1] a,
                    const double[::1] q, const double[::1] k):
    """dx = a[r] * weight[d] * dy - q[r] * (x - center[r]) - k[r].

    IN x, dy (R, D); OUT dx (R, D), may alias dy; IN weight (D,); IN (R,).
    """
    cdef int64_t R = x.shape[0], D = x.shape[1], i
    cdef int64_t pieces = (D + UNIT - 1) // UNIT, total = R * pieces
    cdef int nt = threads_for(2 * R * D, total)
    cdef const storage *px = &x[0, 0]
    cdef const storage *pg = &dy[0, 0]
    cdef storage *po = &dx[0, 0]
    cdef const void *w = param_ptr(weight, D, fn_csize(px))
    with nogil:
        for i in prange(total, num_threads=nt, schedule='static'):
            note_threads(nt)
            layer_item(OP_BWD, px, pg, po, D, pieces, i, &center[0], &a[0], &q[0],
                       &k[0], w, NULL)


cdef inline void layer_sums_unit(const storage *x, const storage *dy,
                                 const void *w, int64_t R, int64_t D,
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
        fn_lnsums(x + off, dy + off, wofs(x, w, j0), ln, mean[r], invstd[r], &A, &B,
                  s1, s2)
        pA[r * nc + cc] = A
        pB[r * nc + cc] = B


def layer_bwd_sums(const storage[:, ::1] x, const storage[:, ::1] dy,
                   const unsigned char[::1] weight, const double[::1] mean,
                   const double[::1] invstd, double[::1] row_a, double[::1] row_b,
                   double[::1] col_dy, double[::1] col_dyxhat):
    """Backward sums of a row normalisation, one pass over x and dy.

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
    cdef const storage *px = &x[0, 0]
    cdef const storage *pg = &dy[0, 0]
    cdef const void *w = param_ptr(weight, D, fn_csize(px))
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
            layer_sums_unit(px, pg, w, R, D, nc, i, &mean[0], &invstd[0],
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
# Statistics of one slice
# --------------------------------------------------------------------------

cdef inline double run_centre(const storage *p, int64_t n) noexcept nogil:
    """First pass of run_moments: the mean of p[0:n] as a centre."""
    return fn_centre(p, fn_sum(p, n) / <double>n)


cdef inline void run_close(double m, double sd, double sdd, int64_t n, double *pm,
                           double *pm2) noexcept nogil:
    """run_moments' mean and M2 from the deviations about the centre m."""
    cdef double cnt = <double>n
    pm[0] = m + sd / cnt if isfinite(m) else m
    sdd = sdd - sd * sd / cnt
    pm2[0] = 0.0 if sdd < 0.0 else sdd


cdef inline void run_moments(const storage *p, int64_t n, double *pm,
                             double *pm2) noexcept nogil:
    """Two-pass mean and M2 of one run of n values (= plane_moments)."""
    cdef double sd = 0.0, sdd = 0.0
    cdef double m = run_centre(p, n)
    fn_dev(p, n, m, &sd, &sdd)
    run_close(m, sd, sdd, n, pm, pm2)


cdef struct Moments:
    double mean, var, invstd


cdef struct Merge:
    double cnt, mu, m2


cdef inline Merge merge_empty() noexcept nogil:
    """No values yet."""
    cdef Merge a
    a.cnt = 0.0
    a.mu = 0.0
    a.m2 = 0.0
    return a


cdef inline Merge merge_piece(Merge a, double pm, double pm2, int64_t n) noexcept nogil:
    """a with a piece of n values of mean pm and M2 pm2 merged in (Chan)."""
    cdef double nb = <double>n, tot = a.cnt + nb, d = pm - a.mu
    if isfinite(a.mu) and isfinite(pm):
        a.mu = a.mu + d * (nb / tot)
    else:
        a.mu = (a.mu * a.cnt + pm * nb) / tot
    a.m2 = a.m2 + pm2 + d * d * (a.cnt * nb / tot)
    a.cnt = tot
    return a


cdef inline Moments finish_moments(Merge a, double eps) noexcept nogil:
    """The merged pieces of a slice as mean, biased variance and
    invstd = 1 / sqrt(var + eps)."""
    cdef Moments mo
    mo.mean = a.mu
    mo.var = (0.0 if a.m2 < 0.0 else a.m2) / a.cnt
    mo.invstd = 1.0 / sqrt(mo.var + eps)
    return mo


cdef inline double slice_mean_square(const storage *p, int64_t D) noexcept nogil:
    """Mean of p[0:D]**2 (RMSNorm): the sums of squares of pieces of UNIT
    added in order, divided by D (as batch_squares on a (1, R, D) view)."""
    cdef double a = 0.0
    cdef int64_t j0 = 0, ln
    while j0 < D:
        ln = D - j0
        if ln > UNIT:
            ln = UNIT
        a = a + (0.0 + fn_sumsq(p + j0, ln))
        j0 += ln
    return a / <double>D


cdef inline Moments rms_moments(double ms, double eps) noexcept nogil:
    """RMSNorm's statistics from the mean square: mean 0, var the mean
    square, invstd = 1 / sqrt(ms + eps)."""
    cdef Moments mo
    mo.mean = 0.0
    mo.var = ms
    mo.invstd = 1.0 / sqrt(ms + eps)
    return mo


cdef inline Moments slice_statistics(const storage *p, int64_t D, double eps,
                                     bint rms) noexcept nogil:
    """Mean, biased variance and invstd of p[0:D] (finish_moments): pieces of
    UNIT, Chan-merged; with rms, rms_moments of slice_mean_square (one pass).

    Returned by value: inside prange, a variable is private to the thread
    only when the loop assigns it; one written through its address is
    shared by the team."""
    cdef Merge a = merge_empty()
    cdef int64_t j0 = 0, ln
    cdef double pm, pm2
    if rms:
        return rms_moments(slice_mean_square(p, D), eps)
    while j0 < D:
        ln = D - j0
        if ln > UNIT:
            ln = UNIT
        run_moments(p + j0, ln, &pm, &pm2)
        a = merge_piece(a, pm, pm2, ln)
        j0 += ln
    return finish_moments(a, eps)


cdef inline void short_statistics(const storage *p, int64_t D, int64_t nr, double eps,
                                  bint rms, double *mean, double *var,
                                  double *invstd) noexcept nogil:
    """slice_statistics of nr <= SHORT_ROWS consecutive slices of D <= SHORT_D
    elements each (one piece), mean[r] 0 with rms.  The same operations on
    each slice, so the same bits, taken phase by phase over the slices: the
    sums of one slice, then its divisions and square root, no longer wait
    on the last slice's (short slices are bound by that chain, not by
    memory)."""
    cdef double m[SHORT_ROWS]
    cdef double sd[SHORT_ROWS]
    cdef double sdd[SHORT_ROWS]
    cdef double pm, pm2
    cdef int64_t r
    cdef Merge a
    cdef Moments mo
    if nr == SHORT_ROWS and fn_rows8(p, D, eps, rms, mean, var, invstd):
        return
    if rms:
        for r in range(nr):
            mo = rms_moments(slice_mean_square(p + r * D, D), eps)
            mean[r] = 0.0
            var[r] = mo.var
            invstd[r] = mo.invstd
        return
    for r in range(nr):
        m[r] = run_centre(p + r * D, D)
    for r in range(nr):
        sd[r] = 0.0
        sdd[r] = 0.0
        fn_dev(p + r * D, D, m[r], &sd[r], &sdd[r])
    for r in range(nr):
        run_close(m[r], sd[r], sdd[r], D, &pm, &pm2)
        a = merge_piece(merge_empty(), pm, pm2, D)
        mo = finish_moments(a, eps)
        mean[r] = mo.mean
        var[r] = mo.var
        invstd[r] = mo.invstd


cdef inline void prefetch_run(const storage *p, int64_t n) noexcept nogil:
    """Ask for p[0:n] (the same part of the next slice), one line per 64 bytes."""
    cdef int64_t j
    cdef int64_t step = 64 // sizeof(storage)
    j = 0
    while j < n:
        fn_prefetch(p + j)
        j += step


def slice_stats(const storage[:, ::1] x, double eps, bint rms, double[::1] mean,
                double[::1] var, double[::1] invstd):
    """The statistics of rows_forward / groups_forward without an output
    (same arithmetic).

    IN x (R, D), R * D > 0; OUT mean, var, invstd (R,) (with rms: 0, the
    mean square, 1 / sqrt(ms + eps)).
    """
    cdef int64_t R = x.shape[0], D = x.shape[1], r
    cdef int nt = threads_for(R * D, R)
    cdef const storage *px = &x[0, 0]
    cdef Moments mo
    with nogil:
        for r in prange(R, num_threads=nt, schedule='static'):
            note_threads(nt)
            mo = slice_statistics(px + r * D, D, eps, rms)
            mean[r] = 0.0 if rms else mo.mean
            var[r] = mo.var
            invstd[r] = mo.invstd


# --------------------------------------------------------------------------
# Rows: LayerNorm and RMSNorm
# --------------------------------------------------------------------------

cdef inline void row_affine(const storage *x, storage *y, int64_t D, double m,
                            double inv, bint rms, const void *w,
                            const void *b) noexcept nogil:
    """y = ((x - m) * inv) * w + b, as ((x - c) * inv + t) * w + b (c the
    mean rounded to the compute type, or 0 with rms: t = (c - m) * inv)."""
    cdef double c = 0.0 if rms else fn_centre(x, m)
    cdef double t = (c - m) * inv
    if w != NULL:
        fn_lnaff(x, y, D, c, inv, t, w, b)
    else:
        fn_affine(x, y, D, c, inv, t)


cdef inline void row_normalise(const storage *x, storage *y, int64_t D, double m,
                               double inv, bint rms, const void *w, const void *b,
                               bint stream) noexcept nogil:
    """row_affine; with stream, TILE values at a time computed in L1 and
    written to y with streaming stores (same values)."""
    cdef double c, t
    cdef int64_t j, n
    cdef storage tile[TILE]
    cdef storage *tp = &tile[0]
    if not stream:
        row_affine(x, y, D, m, inv, rms, w, b)
        return
    c = 0.0 if rms else fn_centre(x, m)
    t = (c - m) * inv
    j = 0
    while j < D:
        n = D - j if D - j < TILE else TILE
        prefetch_run(x + D + j, n)
        if w != NULL:
            fn_lnaff(x + j, tp, n, c, inv, t, wofs(x, w, j), wofs(x, b, j))
        else:
            fn_affine(x + j, tp, n, c, inv, t)
        fn_stream(y + j, tp, n)
        j += n
    fn_stream_fence()


cdef inline void rows_item(const storage *px, storage *po, int64_t R, int64_t D,
                           int64_t i, double eps, bint rms, const void *w,
                           const void *b, double *mean, double *var, double *invstd,
                           bint stream) noexcept nogil:
    """Work item i of rows_run: rows [i * SHORT_ROWS, ...) of at most SHORT_D
    elements (statistics side by side, short_statistics), or row i of a
    longer D."""
    cdef int64_t r0, nr, r
    cdef Moments mo
    if D > SHORT_D:
        mo = slice_statistics(px + i * D, D, eps, rms)
        mean[i] = 0.0 if rms else mo.mean
        var[i] = mo.var
        invstd[i] = mo.invstd
        row_normalise(px + i * D, po + i * D, D, mean[i], mo.invstd, rms, w, b, stream)
        return
    r0 = i * SHORT_ROWS
    nr = R - r0 if R - r0 < SHORT_ROWS else SHORT_ROWS
    short_statistics(px + r0 * D, D, nr, eps, rms, mean + r0, var + r0, invstd + r0)
    for r in range(r0, r0 + nr):
        if stream:
            row_normalise(px + r * D, po + r * D, D, mean[r], invstd[r], rms, w, b, True)
        else:
            row_affine(px + r * D, po + r * D, D, mean[r], invstd[r], rms, w, b)


cdef inline int64_t slice_items(int64_t R, int64_t D) noexcept nogil:
    """Work items of R slices of D elements: blocks of SHORT_ROWS short
    slices, or one each."""
    return R if D > SHORT_D else (R + SHORT_ROWS - 1) // SHORT_ROWS


cdef void rows_run(const storage *px, storage *po, int64_t R, int64_t D, double eps,
                   bint rms, const void *w, const void *b, double *mean, double *var,
                   double *invstd) noexcept nogil:
    """rows_forward on raw pointers (also the per-call fast path's kernel,
    _kernels_fast.pxi): R * D > 0, w and b compute-type values or NULL."""
    cdef int64_t i, items = slice_items(R, D)
    cdef int nt = threads_for(R * D, items)
    cdef bint stream = streams(po, px, R * D * sizeof(storage), D * sizeof(storage))
    if R * D <= MIN_WORK:
        # small call: no parallel region to enter (larger one-thread calls
        # keep the region: its outlined loop compiles to faster code)
        note_threads(1)
        for i in range(items):
            rows_item(px, po, R, D, i, eps, rms, w, b, mean, var, invstd, stream)
    else:
        for i in prange(items, num_threads=nt, schedule='static'):
            note_threads(nt)
            rows_item(px, po, R, D, i, eps, rms, w, b, mean, var, invstd, stream)


def rows_forward(const storage[:, ::1] x, storage[:, ::1] out, double eps, bint rms,
                 const unsigned char[::1] weight, const unsigned char[::1] bias,
                 double[::1] mean, double[::1] var, double[::1] invstd):
    """Statistics and normalisation of each row of x, one pass (LayerNorm,
    or with rms RMSNorm).

    IN x (R, D), R * D > 0; OUT out (R, D), may be x; IN weight, bias (D,)
    or None (bias only with a weight).  OUT mean, var (R,): the row's mean
    and biased variance, with rms 0 (the centre used) and the mean square
    (one pass of sums of squares); OUT invstd (R,): 1 / sqrt(var + eps),
    the row then scaled around 0 with rms.
    """
    cdef int64_t R = x.shape[0], D = x.shape[1]
    cdef const storage *px = &x[0, 0]
    cdef storage *po = &out[0, 0]
    cdef const void *w = param_ptr(weight, D, fn_csize(px))
    cdef const void *b = param_ptr(bias, D, fn_csize(px))
    with nogil:
        rows_run(px, po, R, D, eps, rms, w, b, &mean[0], &var[0], &invstd[0])


cdef int rows_bwd_run(const storage *px, const storage *pg, storage *po, int64_t R,
                      int64_t D, bint rms, const void *w, const double *mean,
                      const double *invstd, double *sum1, double *sum2) except -1:
    """rows_backward on pointers (w: D values of the compute type)."""
    cdef int64_t r1, i, d, u
    cdef int64_t nb = (R + LAYER_ROWS - 1) // LAYER_ROWS
    cdef int64_t need = fn_rows_scratch(px, D)
    cdef int nt = threads_for(2 * R * D, nb)
    # rows from memory, long enough for their next one to be worth asking for
    cdef int pf = D >= ROW_PF_D and 2 * R * D * sizeof(storage) >= ROW_PF_BYTES
    cdef double *cs
    cdef double sa, sb
    cdef void *scratch = NULL
    cdef int failed = 0
    cdef int *fail = &failed    # shared: see reduction()
    if nb == 1:
        # one block (a decode step's rows): its partials are the sums.  The
        # merge below would add them to 0.0, which changes nothing: a sum
        # that starts from +0.0 is never -0.0 (float32 sums start from a
        # zeroed scratch, float64 ones from zeroed partials: need == 0)
        if need == 0:
            memset(sum1, 0, D * sizeof(double))
            memset(sum2, 0, D * sizeof(double))
        scratch = malloc(need) if need > 0 else NULL
        if need > 0 and scratch == NULL:
            raise MemoryError()
        with nogil:
            note_threads(1)
            fn_rowsbwd(px, pg, po, D, 0, R, rms, w, mean, invstd, UNIT, scratch, sum1, sum2,
                       pf)
        free(scratch)
        return 0
    cs = <double *>calloc(2 * nb * D, sizeof(double))
    if cs == NULL:
        raise MemoryError()
    with nogil:
        if nt == 1:
            # small call: no parallel region to enter
            note_threads(1)
            scratch = malloc(need) if need > 0 else NULL
            if need > 0 and scratch == NULL:
                failed = 1
            else:
                for i in range(nb):
                    r1 = min((i + 1) * LAYER_ROWS, R)
                    fn_rowsbwd(px, pg, po, D, i * LAYER_ROWS, r1, rms, w, mean, invstd,
                               UNIT, scratch, cs + i * D, cs + (nb + i) * D, pf)
            free(scratch)
        else:
            with parallel(num_threads=nt):
                # per-thread scratch for the float32 column sums of a block
                # (none for float64); a thread whose malloc failed does nothing
                scratch = malloc(need) if need > 0 else NULL
                if need > 0 and scratch == NULL:
                    fail[0] = 1
                note_threads(nt)
                for i in prange(nb, schedule='static'):
                    if need == 0 or scratch != NULL:
                        r1 = (i + 1) * LAYER_ROWS
                        if r1 > R:
                            r1 = R
                        fn_rowsbwd(px, pg, po, D, i * LAYER_ROWS, r1, rms, w, mean,
                                   invstd, UNIT, scratch, cs + i * D, cs + (nb + i) * D,
                                   pf)
                free(scratch)
    if failed:
        free(cs)
        raise MemoryError()
    with nogil:
        if nt == 1 or nb == 1:
            # the same additions per column, blocks outside (in vectors)
            for d in range(D):
                sum1[d] = 0.0
                sum2[d] = 0.0
            for u in range(nb):
                for d in range(D):
                    sum1[d] = sum1[d] + cs[u * D + d]
                    sum2[d] = sum2[d] + cs[(nb + u) * D + d]
        else:
            for d in prange(D, num_threads=nt, schedule='static'):
                sa = 0.0
                sb = 0.0
                for u in range(nb):
                    sa = sa + cs[u * D + d]
                    sb = sb + cs[(nb + u) * D + d]
                sum1[d] = sa
                sum2[d] = sb
    free(cs)
    return 0


def rows_backward(const storage[:, ::1] x, const storage[:, ::1] dy,
                  storage[:, ::1] dx, bint rms, const unsigned char[::1] weight,
                  const double[::1] mean, const double[::1] invstd,
                  double[::1] sum1, double[::1] sum2):
    """Input gradient of rows_forward, one pass over x and dy per row, and
    the sums behind the weight/bias gradients.

    IN x, dy (R, D), R * D > 0; OUT dx (R, D), may alias dy; IN weight (D,)
    (ones when the layer has none); IN mean, invstd (R,) as rows_forward
    returned them (mean is ignored with rms).  OUT sum1[d] = sum_r dy,
    sum2[d] = sum_r dy * (x - m_r) * inv_r, merged over fixed blocks of
    LAYER_ROWS rows in order.
    """
    rows_bwd_run(&x[0, 0], &dy[0, 0], &dx[0, 0], x.shape[0], x.shape[1], rms,
                 param_ptr(weight, x.shape[1], fn_csize(&x[0, 0])), &mean[0], &invstd[0],
                 &sum1[0], &sum2[0])


# --------------------------------------------------------------------------
# Groups: GroupNorm and InstanceNorm
# --------------------------------------------------------------------------

cdef inline void group_normalise(const storage *x, storage *y, int64_t D,
                                 int64_t r, int64_t G, int64_t K, double m,
                                 double inv, const void *w, const void *b,
                                 bint stream) noexcept nogil:
    """y = (x - m) * inv * weight[ch] + bias[ch] for each channel plane of
    the slice, as (x - c) * s + t.  stream: as row_normalise.  Channel runs
    of one value ((N, C) batches) take fn_gnaff1: the same loop, folded."""
    cdef double c = fn_centre(x, m)
    cdef double s, t
    cdef int64_t k, ch, L = D // K, j, n
    cdef int64_t ch0 = (r % G) * K
    cdef storage tile[TILE]
    cdef storage *tp = &tile[0]
    if L == 1:
        j = 0
        while j < K:
            n = K - j
            if stream and n > TILE:
                n = TILE
            fn_gnaff1(x + j, tp if stream else y + j, n, c, m, inv, wofs(x, w, ch0 + j),
                      wofs(x, b, ch0 + j))
            if stream:
                fn_stream(y + j, tp, n)
            j += n
        if stream:
            fn_stream_fence()
        return
    for k in range(K):
        ch = ch0 + k
        s = inv * fn_wat(x, w, ch) if w != NULL else inv
        t = (c - m) * s
        if b != NULL:
            t = t + fn_wat(x, b, ch)
        if not stream:
            fn_affine(x + k * L, y + k * L, L, c, s, t)
            continue
        j = 0
        while j < L:
            n = L - j if L - j < TILE else TILE
            prefetch_run(x + D + k * L + j, n)
            fn_affine(x + k * L + j, tp, n, c, s, t)
            fn_stream(y + k * L + j, tp, n)
            j += n
    if stream:
        fn_stream_fence()


cdef inline void groups_item(const storage *px, storage *po, int64_t R, int64_t D,
                             int64_t i, int64_t G, int64_t K, double eps,
                             const void *w, const void *b, double *mean, double *var,
                             double *invstd, bint stream) noexcept nogil:
    """Work item i of groups_run (as rows_item): slices [i * SHORT_ROWS, ...)
    of at most SHORT_D elements, or slice i of a longer D."""
    cdef int64_t r0, nr, r
    cdef Moments mo
    if D > SHORT_D:
        mo = slice_statistics(px + i * D, D, eps, False)
        mean[i] = mo.mean
        var[i] = mo.var
        invstd[i] = mo.invstd
        group_normalise(px + i * D, po + i * D, D, i, G, K, mo.mean, mo.invstd, w, b,
                        stream)
        return
    r0 = i * SHORT_ROWS
    nr = R - r0 if R - r0 < SHORT_ROWS else SHORT_ROWS
    short_statistics(px + r0 * D, D, nr, eps, False, mean + r0, var + r0, invstd + r0)
    for r in range(r0, r0 + nr):
        group_normalise(px + r * D, po + r * D, D, r, G, K, mean[r], invstd[r], w, b,
                        stream)


cdef void groups_run(const storage *px, storage *po, int64_t R, int64_t D, int64_t G,
                     int64_t K, double eps, const void *w, const void *b, double *mean,
                     double *var, double *invstd) noexcept nogil:
    """groups_forward on raw pointers (also the per-call fast path's kernel,
    _kernels_fast.pxi): R * D > 0, w and b compute-type values or NULL."""
    cdef int64_t i, items = slice_items(R, D)
    cdef int nt = threads_for(R * D, items)
    cdef bint stream = streams(po, px, R * D * sizeof(storage), D * sizeof(storage))
    if R * D <= MIN_WORK:
        # small call: no parallel region to enter (larger one-thread calls
        # keep the region: its outlined loop compiles to faster code)
        note_threads(1)
        for i in range(items):
            groups_item(px, po, R, D, i, G, K, eps, w, b, mean, var, invstd, stream)
    else:
        for i in prange(items, num_threads=nt, schedule='static'):
            note_threads(nt)
            groups_item(px, po, R, D, i, G, K, eps, w, b, mean, var, invstd, stream)


def groups_forward(const storage[:, ::1] x, storage[:, ::1] out, int64_t G,
                   int64_t K, double eps, const unsigned char[::1] weight,
                   const unsigned char[::1] bias, double[::1] mean, double[::1] var,
                   double[::1] invstd):
    """Statistics and normalisation of each slice (group of a sample) of x,
    one pass (GroupNorm, InstanceNorm with G = C and K = 1).

    IN x (R, D), R * D > 0, R a multiple of G; OUT out (R, D), may be x;
    IN weight, bias (G * K,) or None.  OUT mean, var, invstd (R,).
    """
    cdef int64_t R = x.shape[0], D = x.shape[1]
    cdef const storage *px = &x[0, 0]
    cdef storage *po = &out[0, 0]
    cdef const void *w = param_ptr(weight, G * K, fn_csize(px))
    cdef const void *b = param_ptr(bias, G * K, fn_csize(px))
    with nogil:
        groups_run(px, po, R, D, G, K, eps, w, b, &mean[0], &var[0], &invstd[0])


cdef inline void group_backward(const storage *x, const storage *dy, storage *dx,
                                int64_t D, int64_t r, int64_t G, int64_t K,
                                const void *w, double m, double inv,
                                double *s1, double *s2) noexcept nogil:
    """One slice of the GroupNorm/InstanceNorm backward; stores the sums of
    dy and of dy * (x - m) of each of its channel planes in s1, s2."""
    cdef int64_t L = D // K, k, ch
    cdef int64_t ch0 = (r % G) * K
    cdef double A = 0.0, B = 0.0, sa, sb, wv, c, q, kk
    # channel runs of one value ((N, C) batches): the same loops, folded
    if L == 1:
        fn_gnsums1(x, dy, K, m, wofs(x, w, ch0), s1, s2, &A, &B)
    else:
        for k in range(K):
            sa = 0.0
            sb = 0.0
            fn_dot(x + k * L, dy + k * L, L, m, &sa, &sb)
            s1[k] = sa
            s2[k] = sb
            wv = fn_wat(x, w, ch0 + k) if w != NULL else 1.0
            A = A + wv * sa
            B = B + wv * sb
    q = inv * inv * inv * B / <double>D
    c = fn_centre(x, m)
    # as _checks.centered: no correction for a non-finite mean or q
    kk = inv * A / <double>D + (q * (c - m) if isfinite(m) and isfinite(q) else 0.0)
    if L == 1:
        fn_gnbwd1(x, dy, dx, K, c, inv, q, kk, wofs(x, w, ch0))
        return
    for k in range(K):
        ch = ch0 + k
        wv = fn_wat(x, w, ch) if w != NULL else 1.0
        # prefetch the same part of the next slice (taken next by this thread)
        fn_bwd_pf(x + k * L, dy + k * L, dx + k * L, L, c, wv * inv, q, kk,
                  x + D + k * L, dy + D + k * L)


cdef int groups_bwd_run(const storage *px, const storage *pg, storage *po, int64_t R,
                        int64_t D, int64_t G, int64_t K, const void *w, const double *mean,
                        const double *invstd, double *sum1, double *sum2) except -1:
    """groups_backward on pointers (w: G * K values of the compute type, or
    NULL)."""
    cdef int64_t r
    cdef int nt = threads_for(2 * R * D, R)
    with nogil:
        if nt == 1:
            note_threads(1)
            for r in range(R):
                group_backward(px + r * D, pg + r * D, po + r * D, D, r, G, K, w,
                               mean[r], invstd[r], sum1 + r * K, sum2 + r * K)
        else:
            for r in prange(R, num_threads=nt, schedule='static'):
                note_threads(nt)
                group_backward(px + r * D, pg + r * D, po + r * D, D, r, G, K, w,
                               mean[r], invstd[r], sum1 + r * K, sum2 + r * K)
    return 0


cdef void group_param_sums(const double *s1, const double *s2, const double *invstd,
                           int64_t N, int64_t G, int64_t K, double *gw,
                           double *gb) noexcept nogil:
    """The weight and bias gradients of groups_backward's per-(n, c) sums:
    gw[c] = sum over n of invstd[n * G + c // K] * s2[n * C + c], gb[c] = sum
    over n of s1[n * C + c], each from 0.0 in sample order (as NumPy sums
    the (N, C) products over axis 0).  gw or gb may be NULL."""
    cdef int64_t C = G * K, n, g, k, c
    cdef double inv
    for c in range(C):
        if gw != NULL:
            gw[c] = 0.0
        if gb != NULL:
            gb[c] = 0.0
    for n in range(N):
        if gw != NULL:
            for g in range(G):
                inv = invstd[n * G + g]
                for k in range(K):
                    c = g * K + k
                    gw[c] = gw[c] + inv * s2[n * C + c]
        if gb != NULL:
            for c in range(C):
                gb[c] = gb[c] + s1[n * C + c]


def groups_param_grads(const double[::1] s1, const double[::1] s2,
                       const double[::1] invstd, int64_t G, int64_t K, gw, gb):
    """group_param_sums into gw, gb: float64 (G * K,) arrays or None.

    IN s1, s2 (N * G * K,) as groups_backward returns them; IN invstd (N * G,).
    """
    cdef int64_t N = invstd.shape[0] // G
    cdef double[::1] w
    cdef double[::1] b
    cdef double *pw = NULL
    cdef double *pb = NULL
    if gw is not None:
        w = gw
        pw = &w[0]
    if gb is not None:
        b = gb
        pb = &b[0]
    with nogil:
        group_param_sums(&s1[0], &s2[0], &invstd[0], N, G, K, pw, pb)


def groups_backward(const storage[:, ::1] x, const storage[:, ::1] dy,
                    storage[:, ::1] dx, int64_t G, int64_t K,
                    const unsigned char[::1] weight, const double[::1] mean,
                    const double[::1] invstd, double[::1] sum1, double[::1] sum2):
    """Input gradient of groups_forward (statistics from the slice), one pass
    over x and dy per slice, and the sums behind the weight/bias gradients.

    IN x, dy (R, D), R * D > 0; OUT dx (R, D), may alias dy; IN weight
    (G * K,) or None; IN mean, invstd (R,) as groups_forward returned them.
    OUT sum1, sum2 (R * K,): per channel plane of each slice, sum dy and
    sum dy * (x - m_r).
    """
    groups_bwd_run(&x[0, 0], &dy[0, 0], &dx[0, 0], x.shape[0], x.shape[1], G, K,
                   param_ptr(weight, G * K, fn_csize(&x[0, 0])), &mean[0], &invstd[0],
                   &sum1[0], &sum2[0])
