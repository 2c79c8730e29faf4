# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False, nonecheck=False
"""OpenMP kernels of fastnorm.

Design notes
------------
Files.  One extension per ISA copy (this file, and _kernels_avx2.pyx which
includes it, compiled with -mavx2).  Each kernel family has its own Cython
file, included here, and its own C header of inner loops, each with a design
note of its own:
  _kernels_runtime.pxi   threads, fork safety, ISA and introspection
                         (_omp_shim.h)
  _kernels_channels.pxi  per-channel statistics and elementwise passes:
                         BatchNorm, and the two-pass paths of the others
                         (_loops_channels.h)
  _kernels_fast.pxi      the per-call fast paths: the common call of a
                         layer or function in one C call, validation
                         included (NumPy C API, no memoryviews)
  _kernels_slices.pxi    rows and slices normalised over themselves:
                         LayerNorm, RMSNorm, GroupNorm, InstanceNorm
                         (_loops_slices.h)
  _kernels_lrn.pxi       LocalResponseNorm (_loops_lrn.h)
  _kernels_switchable.pxi  SwitchableNorm's mixing of statistics (shared by
                         its general and fast paths) and its eval fast path
Cython `include` keeps one module (one extension) per ISA copy: the families
share the geometry, thread and fork helpers without a cross-module C API,
and a copy's code is all compiled for its ISA.

Storage types.  Data is read in a storage type and computed in its compute
type (float32 arithmetic for float32, float64 for float64), each output
element rounded once to storage.  The Cython code is written once over the
fused type `storage` below; the C loops are instantiated for every storage
type from the one list FN_STORAGE_TYPES in _storage.h and chosen by the type
of the pointer passed (C11 _Generic), so the Cython code calls fn_<op>(...)
without branching on the type.  The extern declarations take `const void *`
and `void *` for that reason: the pointer keeps its real type in the
generated C, where _Generic sees it (a type with no loop is a compile
error).  Adding a storage type: a line in FN_STORAGE_TYPES with its
conversions (_storage.h), an entry in `storage` here, and one in
fastnorm/_dtypes.py (tests/test_dtypes.py checks that the three agree).

Layout.  Every kernel sees its data as C-contiguous: (N, C, L) for the
channel and LRN kernels, (R, D) for the slice kernels.  The Python layer
reshapes, validates and makes the data contiguous before any kernel runs;
kernels assume valid input, hold no Python objects and run without the GIL.

Determinism.  Statistics are computed over units fixed by the shape alone,
merged in a fixed order (Chan's formula), in float64: results are bitwise
identical whatever the number of threads, and the two ISA copies round
identically (explicit vector lanes combined in a fixed order, no fused
multiply-add).  The family notes say how each family cuts its work.

Normalisation.  y = (x - c) * s + t, where c is the mean rounded to the
compute type, s = weight * invstd and t absorbs bias and the rounding of c,
all computed in float64 and rounded to the compute type once.  x - c cancels
exactly for values near the mean, so float32 data with a large offset
(1e4 + N(0, 1)) keeps full precision, where the fused x * s + (b - mean * s)
loses ~1e-3.
"""

from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.math cimport isfinite, ldexp, nearbyint, sqrt
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcpy, memset

# The storage types of the kernels, in Cython: the typed memoryviews of the
# public kernels dispatch on the buffer's format ('f', 'd', and for the
# 16-bit types their bits: 'H' bfloat16, 'h' float16; the Python layer
# passes such a view, fastnorm/_dtypes.kernel_view).  Weights and biases are
# raw bytes of the compute type (`const unsigned char[::1]`, checked for
# length): one specialisation per storage type.
cdef extern from "_storage.h" nogil:
    ctypedef unsigned short fn_bf16
    ctypedef short fn_f16

ctypedef fused storage:
    float
    double
    fn_bf16
    fn_f16

cdef extern from "_storage.h" nogil:
    const char *FN_STORAGE_NAMES
    double fn_at(const void *p, int64_t i)
    double fn_centre(const void *p, double m)
    double fn_wat(const void *p, const void *w, int64_t i)
    int64_t fn_csize(const void *p)
    void fn_stream(void *dst, const void *src, int64_t n)
    void fn_stream_fence()
    void fn_prefetch(const void *p)
    fn_bf16 fn_std_bf16(double v)
    fn_f16 fn_std_f16(double v)

# The unit geometry is part of the library's definition of its results: a
# change moves the last bits of results (not their accuracy).
cdef enum:
    UNIT = 4096         # elements per unit of a plane, row or slice piece
    SMALL_L = 32        # planes shorter than this use rows mode
    ROW_COUNT = 256     # rows mode: samples x plane length per unit
    ROW_COLS = 512      # rows mode: elements of a row per unit (whole channels)
    MIN_WORK = 32768    # fewest elements worth giving to one more thread
    TILE = 1024         # elements of an output tile computed in L1, then streamed
    STREAM_BYTES = 64 << 20  # default: outputs this large use streaming stores,
    STREAM_SLICE = 4096 # when their slices are this long (bytes)
    LAYER_ROWS = 64     # row backward: rows per block of column partials
    ROW_PF_BYTES = 4 << 20  # row backward: x and dy this large come from memory,
    ROW_PF_D = 512      # and rows this long prefetch the next one (shorter
                        # ones gained nothing: the hardware keeps up)
    SHORT_ROWS = 8      # short slices whose statistics are taken side by side:
    SHORT_D = 384       # those of at most this many elements (8 rows of 384
                        # float32 values fill 12 KiB of L1; 320 and 384 measured
                        # 1.2-1.4x faster than one at a time, 448-512 mixed)

cdef enum Op:
    OP_AFFINE = 0       # out = (x - k0) * k1 + k2
    OP_BWD = 1          # out = k1 * dy - k2 * (x - k0) - k3
    OP_SCALE = 2        # out = k1 * dy

include "_kernels_runtime.pxi"
include "_kernels_channels.pxi"
include "_kernels_slices.pxi"
include "_kernels_fast.pxi"
include "_kernels_lrn.pxi"
include "_kernels_switchable.pxi"
