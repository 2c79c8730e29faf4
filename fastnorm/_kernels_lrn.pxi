# Local response normalisation: x (N, C, L), a window over channels.  Work
# items are strips of `strip` columns of one sample, all channels; each is
# independent, so results do not depend on the thread count.  Window sums
# come from block prefix and suffix sums in float64 (_loops_lrn.h): O(1) per
# element for any window size, additions only.  Included by _kernels.pyx.

cdef extern from "_loops_lrn.h" nogil:
    void fn_lrn_fwd(const void *x, void *y, int64_t C, int64_t L, int64_t l0,
                    int64_t ln, int64_t size, double alpha, double beta, double k,
                    double *den, double *pre, double *suf)
    void fn_lrn_bwd(const void *x, const void *dy, void *dx, int64_t C, int64_t L,
                    int64_t l0, int64_t ln, int64_t size, double alpha, double beta,
                    double k, double *den, double *t, double *pre, double *suf)
    enum: FN_LRN_STRIP


cdef inline int64_t lrn_strip(int64_t C, int64_t L) noexcept nogil:
    """Columns per strip: scratch of 4 * C * strip doubles stays ~1 MiB; at
    most FN_LRN_STRIP (the loops' row buffers)."""
    cdef int64_t s = 32768 // C
    if s > FN_LRN_STRIP:
        s = FN_LRN_STRIP
    if s < 4:
        s = 4
    if s > L:
        s = L
    return s


cdef inline void lrn_item(const storage *x, const storage *dy, storage *out, int64_t C,
                          int64_t L, int64_t per, int64_t strip, int64_t i, int64_t size,
                          double alpha, double beta, double k,
                          double *scratch) noexcept nogil:
    """Strip i (sample i // per): forward (dy == NULL) or backward."""
    cdef int64_t n = i // per
    cdef int64_t l0 = (i - n * per) * strip
    cdef int64_t ln = L - l0
    if ln > strip:
        ln = strip
    if dy == NULL:
        fn_lrn_fwd(x + n * C * L, out + n * C * L, C, L, l0, ln, size, alpha, beta, k,
                   scratch, scratch + C * strip, scratch + 2 * C * strip)
    else:
        fn_lrn_bwd(x + n * C * L, dy + n * C * L, out + n * C * L, C, L, l0, ln, size,
                   alpha, beta, k, scratch, scratch + C * strip, scratch + 2 * C * strip,
                   scratch + 3 * C * strip)


cdef int lrn(const storage *x, const storage *dy, storage *out, int64_t N,
             int64_t C, int64_t L, int64_t size, double alpha, double beta,
             double k) except -1:
    """Forward (dy == NULL: out = y) or backward (out = dx)."""
    cdef int64_t strip = lrn_strip(C, L)
    cdef int64_t per = (L + strip - 1) // strip, total = N * per, i
    cdef int64_t need = 4 * C * strip
    cdef int nt = threads_for((3 if dy != NULL else 2) * N * C * L * 8, total)
    cdef double *scratch = NULL
    cdef int failed = 0
    cdef int *fail = &failed    # shared: see reduction()
    if N * C * L <= MIN_WORK:
        # small call: no parallel region to enter
        scratch = <double *>malloc(need * sizeof(double))
        if scratch == NULL:
            raise MemoryError()
        with nogil:
            note_threads(1)
            for i in range(total):
                lrn_item(x, dy, out, C, L, per, strip, i, size, alpha, beta, k, scratch)
        free(scratch)
        return 0
    with nogil:
        with parallel(num_threads=nt):
            scratch = <double *>malloc(need * sizeof(double))
            if scratch == NULL:
                fail[0] = 1
            note_threads(nt)
            for i in prange(total, schedule='static'):
                if scratch != NULL:
                    lrn_item(x, dy, out, C, L, per, strip, i, size, alpha, beta, k,
                             scratch)
            free(scratch)
    if failed:
        raise MemoryError()
    return 0


def lrn_forward(const storage[:, :, ::1] x, storage[:, :, ::1] out, int64_t size,
                double alpha, double beta, double k):
    """out = x * (k + alpha / size * window sum of x**2 over channels)**-beta.

    IN x (N, C, L), N * C * L > 0; OUT out (N, C, L), must not alias x (a
    strip's later channels are read after earlier ones are written).
    """
    lrn(&x[0, 0, 0], <const storage *>NULL, &out[0, 0, 0], x.shape[0], x.shape[1],
        x.shape[2], size, alpha, beta, k)


def lrn_backward(const storage[:, :, ::1] x, const storage[:, :, ::1] dy,
                 storage[:, :, ::1] dx, int64_t size, double alpha, double beta,
                 double k):
    """dx of sum(dy * lrn(x)); IN x, dy (N, C, L); OUT dx, aliasing neither."""
    lrn(&x[0, 0, 0], &dy[0, 0, 0], &dx[0, 0, 0], x.shape[0], x.shape[1], x.shape[2],
        size, alpha, beta, k)
