/* OpenMP shim: the package builds and runs serially when the compiler has no
 * OpenMP.  Cython's prange degrades to a plain loop in that case; these
 * stand-ins cover the runtime calls the kernels make.
 *
 * Fork safety.  GNU libgomp keeps a pool of worker threads per thread that
 * opened a parallel region, and fork() copies only the calling thread: in
 * the child the pool's bookkeeping says its workers exist, and the first
 * parallel region with more than one thread waits for them forever.  So
 * each kernel copy registers pthread_atfork handlers when it is loaded:
 *   - prepare (in the parent, in the thread that forks): a hard pause of the
 *     OpenMP runtime, omp_pause_resource_all(omp_pause_hard) (OpenMP 5.0),
 *     which in libgomp ends this thread's pool, its workers exit.  The
 *     child then starts a fresh pool with the same thread count on its first
 *     parallel call, and so does the parent (one pthread_create per worker,
 *     once per fork).  LLVM's libomp re-initialises itself in a forked child
 *     anyway; its pause is also safe.
 *   - child: if the pause failed (it does when fork() is called from inside
 *     a parallel region), the child's pool is not to be trusted: the child,
 *     and any process it forks, run every kernel on one thread
 *     (fn_threads_cap() returns 1), which gives the same bits, and never
 *     pause again (pausing a broken pool would wait on the same workers).
 * The handlers are plain C (no GIL, no allocation): they run for every
 * fork() of the process, Python's os.fork and C code's alike (vfork and
 * posix_spawn, which subprocess uses where it can, run none). */
#ifndef FASTNORM_OMP_SHIM_H
#define FASTNORM_OMP_SHIM_H
#include <stddef.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#define FASTNORM_HAVE_OPENMP 1
#else
#define FASTNORM_HAVE_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif

/* The address of omp_get_max_threads as this extension resolved it (0 in a
 * serial build): fastnorm.show_config() finds the OpenMP runtime fastnorm
 * uses from the mapping that holds it. */
static inline size_t fn_openmp_address(void)
{
#if FASTNORM_HAVE_OPENMP
    return (size_t)&omp_get_max_threads;
#else
    return 0;
#endif
}

/* Fork state of this process, as the handlers above leave it. */
static int fn_fork_serial = 0;        /* kernels run on one thread (see above) */
static int fn_fork_pause_failed = 0;  /* the prepare handler of this fork failed */
static int fn_fork_pause_off = 0;     /* tests: act as if every pause failed */
static long fn_fork_pauses = 0;       /* pauses done in this process (tests) */
static int fn_fork_installed = 0;

static void fn_fork_prepare(void)
{
    fn_fork_pause_failed = 0;
    if (fn_fork_serial)
        return;
#if FASTNORM_HAVE_OPENMP
    if (fn_fork_pause_off || omp_pause_resource_all(omp_pause_hard) != 0)
        fn_fork_pause_failed = 1;
    else
        fn_fork_pauses++;
#endif
}

static void fn_fork_parent(void) { fn_fork_pause_failed = 0; }

static void fn_fork_child(void)
{
    if (fn_fork_pause_failed)
        fn_fork_serial = 1;
    fn_fork_pause_failed = 0;
    fn_fork_pauses = 0;
}

/* Registers the handlers once; 0 on success. */
static inline int fn_fork_install(void)
{
    if (fn_fork_installed)
        return 0;
    if (pthread_atfork(fn_fork_prepare, fn_fork_parent, fn_fork_child) != 0)
        return -1;
    fn_fork_installed = 1;
    return 0;
}

/* The most threads a kernel may use in this process: 1 in a child whose
 * OpenMP pool could not be reset, else no cap (0). */
static inline int fn_threads_cap(void) { return fn_fork_serial; }
#endif
