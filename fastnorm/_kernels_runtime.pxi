# Runtime of the kernels: thread counts, fork safety, ISA and introspection.
# Included by _kernels.pyx.
#
# Threads.  The thread count is read from omp_get_max_threads() on every call,
# so threadpoolctl and OMP_NUM_THREADS take effect; the extension never calls
# omp_set_num_threads.  Small problems run on fewer threads (MIN_WORK elements
# per thread at least).  Every kernel runs its loops inside a parallel region,
# also with one thread: the outlined loop body compiles to better code than the
# same loop inlined into the wrapper (measured 1.8x on the statistics), and a
# one-thread region costs well under a microsecond (elementwise calls of one
# thread skip the region: about 0.3 us).
#
# Fork.  The extension registers pthread_atfork handlers at import
# (_omp_shim.h): the OpenMP pool of the thread that forks is ended before
# fork(), so a forked child starts a fresh one with the same thread count;
# a child whose pool could not be reset runs every kernel on one thread
# (max_threads_now()).  Thread counts never change results, so neither does
# forking.
#
# ISA.  FN_ISA names the instruction set this copy was compiled for;
# fastnorm._native picks the copy at import.

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

cdef extern from *:
    """
    /* Which instruction set this copy of the kernels was compiled for (the
     * same source is built three times: baseline x86-64, -mavx2 -mf16c, and
     * AVX-512 F/VL/BW/DQ/BF16), and whether the CPU running it has what each
     * copy uses (CPUID and the OS's support of the YMM / ZMM state, which
     * __builtin_cpu_supports checks): every AVX2 CPU made has F16C, the
     * check is for safety. */
    #if defined(__AVX512F__)
    #define FN_ISA "avx512"
    #elif defined(__AVX2__)
    #define FN_ISA "avx2"
    #else
    #define FN_ISA "baseline"
    #endif
    static int fn_cpu_has_avx2(void)
    {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("f16c") != 0;
    #else
        return 0;
    #endif
    }
    static int fn_cpu_has_avx512(void)
    {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        return fn_cpu_has_avx2() && __builtin_cpu_supports("avx512f") != 0
            && __builtin_cpu_supports("avx512vl") != 0
            && __builtin_cpu_supports("avx512bw") != 0
            && __builtin_cpu_supports("avx512dq") != 0
            && __builtin_cpu_supports("avx512bf16") != 0;
    #else
        return 0;
    #endif
    }
    """
    const char *FN_ISA
    int fn_cpu_has_avx2()
    int fn_cpu_has_avx512()

cdef int g_threads_used = 1


cdef inline int max_threads_now() noexcept nogil:
    """omp_get_max_threads(), or 1 in a forked child that must stay serial
    (_omp_shim.h, fork safety)."""
    cdef int nt = omp_get_max_threads()
    cdef int cap = fn_threads_cap()
    if cap > 0 and nt > cap:
        nt = cap
    return nt


cdef inline int threads_for(int64_t work, int64_t items) noexcept nogil:
    """Threads for a call of `work` element visits over `items` work items."""
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


cdef inline void note_threads(int asked) noexcept nogil:
    """Record the size of the running team (thread 0 writes, once per item)."""
    global g_threads_used
    if omp_get_thread_num() == 0:
        g_threads_used = omp_get_num_threads() if asked > 1 else 1


cdef size_t g_stream_bytes = STREAM_BYTES


cdef inline bint streams(const void *out, const void *x, size_t nbytes,
                         size_t slice_bytes) noexcept nogil:
    """Write this output with streaming stores: large, not in place, and in
    slices of at least STREAM_SLICE bytes.  Each slice ends with a fence; on
    shorter ones the fences cost more than the stores save (LayerNorm on 64
    MiB of float32 rows of 96 measured 6x slower streamed, GroupNorm on
    (N, C) batches 14x; rows of 1024 gained 1.1x)."""
    return nbytes >= g_stream_bytes and slice_bytes >= STREAM_SLICE and out != x


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
    'baseline' (any x86-64, SSE2), 'avx2' or 'avx512'."""
    return FN_ISA.decode()


def cpu_has_avx2():
    """True when the running CPU (and OS) supports AVX2 (and F16C, which the
    AVX2 copy uses for float16)."""
    return bool(fn_cpu_has_avx2())


def cpu_has_avx512():
    """True when the running CPU (and OS) supports what the AVX-512 copy uses:
    AVX2, F16C and AVX-512 F, VL, BW, DQ and BF16."""
    return bool(fn_cpu_has_avx512())


def storage_types():
    """The storage types the kernels are compiled for, by suffix ('f32', ...),
    in the order of FN_STORAGE_TYPES (_storage.h)."""
    return FN_STORAGE_NAMES.decode().split()


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


def threads_used():
    """Threads the parallel region of the last kernel call ran on."""
    return g_threads_used


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
