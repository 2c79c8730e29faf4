/* OpenMP shim: the package builds and runs serially when the compiler has no
 * OpenMP.  Cython's prange degrades to a plain loop in that case; these
 * stand-ins cover the two runtime calls the kernels make. */
#ifndef FASTNORM_OMP_SHIM_H
#define FASTNORM_OMP_SHIM_H
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#define FASTNORM_HAVE_OPENMP 1
#else
#define FASTNORM_HAVE_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
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
#endif
