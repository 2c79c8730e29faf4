"""The storage dtypes of fastnorm: the one table on the Python side.

A layer or function takes data in one of these dtypes, and the kernels read
it in that dtype and compute in its compute dtype (float32 arithmetic for
float32, float64 for float64), rounding each output once.  The C side has
the same list (FN_STORAGE_TYPES in _storage.h) and the Cython side its
fused type (_kernels.pyx); tests/test_dtypes.py checks that the three agree.
A new storage type is one more entry here.
"""
import numpy as np

# numpy dtype name: (kernel suffix, compute dtype name)
STORAGE = {
    "float32": ("f32", "float32"),
    "float64": ("f64", "float64"),
}

FLOAT_DTYPES = tuple(np.dtype(n) for n in STORAGE)
NAMES = " or ".join(STORAGE)        # for messages: "float32 or float64"


_COMPUTE = {np.dtype(n): np.dtype(c) for n, (_, c) in STORAGE.items()}


def compute_dtype(dtype):
    """The dtype the kernels compute in for data of `dtype` (a dict lookup:
    this is on every call's path)."""
    try:
        return _COMPUTE[dtype]
    except (KeyError, TypeError):
        dt = np.dtype(dtype)
        _COMPUTE[dt] = np.dtype(STORAGE[dt.name][1])
        return _COMPUTE[dt]
