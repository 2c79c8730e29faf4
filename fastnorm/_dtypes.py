"""The storage dtypes of fastnorm: the one table on the Python side.

A layer or function takes data in one of these dtypes, and the kernels read
it in that dtype and compute in its compute dtype (float32 arithmetic for
float32, bfloat16 and float16, float64 for float64), rounding each output
once.  The C side has the same list (FN_STORAGE_TYPES in _storage.h) and the
Cython side its fused type (_kernels.pyx); tests/test_dtypes.py checks that
the three agree.  A new storage type is one more entry here.

bfloat16 is ml_dtypes.bfloat16, an optional dependency: imported only when
a layer is built with dtype="bfloat16" (an array of it means the caller has
imported it already; its dtype is recognised by name).

Parameters and running statistics of 16-bit data may be float32 ("mixed",
as PyTorch's CPU norms: a float32 layer called on 16-bit data) or of the
data's own dtype ("pure": a layer built with dtype=bfloat16 or float16).
"""
import numpy as np

# dtype name: (kernel suffix, compute dtype name), in the order of
# FN_STORAGE_TYPES
STORAGE = {
    "float32": ("f32", "float32"),
    "float64": ("f64", "float64"),
    "bfloat16": ("bf16", "float32"),
    "float16": ("f16", "float32"),
}
SIXTEEN = ("bfloat16", "float16")
# the buffer the kernels take 16-bit data as (their bits)
_KERNEL_VIEW = {"bfloat16": np.dtype(np.uint16), "float16": np.dtype(np.int16)}
NAMES = ", ".join(list(STORAGE)[:-1]) + " or " + list(STORAGE)[-1]   # for messages
FLOAT32 = np.dtype(np.float32)


def bfloat16():
    """ml_dtypes.bfloat16 as a NumPy dtype (imports ml_dtypes)."""
    try:
        import ml_dtypes
    except ImportError as e:
        raise ImportError("fastnorm: bfloat16 is ml_dtypes.bfloat16; install it with "
                          "pip install ml_dtypes") from e
    return np.dtype(ml_dtypes.bfloat16)


# storage dtypes (native order) by dtype: a dict lookup, on every call's path
# (dtype.name is computed by Python code in NumPy: ~1 us); bfloat16 joins
# when first seen (recognised by name: ml_dtypes need not be imported here)
_NAME_OF = {np.dtype(n): n for n in STORAGE if n != "bfloat16"}


def storage_name(dt):
    """The name of dt if it is a storage dtype (native order), else None."""
    name = _NAME_OF.get(dt)
    if name is not None:
        return name
    if dt.kind == "V" and dt.isnative and dt.itemsize == 2 and dt.name == "bfloat16":
        _NAME_OF[dt] = "bfloat16"
        from . import _native       # the kernels' fast paths take it from now on
        _native.register_bfloat16(dt)
        return "bfloat16"
    return None


def as_dtype(spec):
    """np.dtype(spec), with the name "bfloat16" meaning ml_dtypes.bfloat16."""
    if isinstance(spec, str) and spec == "bfloat16":
        return bfloat16()
    return np.dtype(spec)


_COMPUTE = {np.dtype(n): np.dtype(c) for n, (_, c) in STORAGE.items() if n != "bfloat16"}


def compute_dtype(dtype):
    """The dtype the kernels compute in for data of `dtype` (a dict lookup:
    this is on every call's path)."""
    try:
        return _COMPUTE[dtype]
    except (KeyError, TypeError):
        dt = np.dtype(dtype)
        _COMPUTE[dt] = np.dtype(STORAGE[dt.name][1])
        return _COMPUTE[dt]


def is_sixteen(dt):
    return dt.itemsize == 2


_VIEWS = {np.dtype(np.float16): _KERNEL_VIEW["float16"]}


def kernel_view(a):
    """a as the kernels take it: itself for float32/float64, a view of its
    bits for 16-bit data (ml_dtypes arrays export no buffer, and the
    kernels' typed memoryviews know no 'e')."""
    dt = a.dtype
    if dt.itemsize != 2:
        return a
    v = _VIEWS.get(dt)
    if v is None:
        v = _VIEWS[dt] = _KERNEL_VIEW[dt.name]
    return a.view(v)


def param_dtypes(data):
    """The dtypes parameters and running statistics may have for data of
    dtype `data`: its own, and float32 for 16-bit data."""
    return (data, FLOAT32) if data.itemsize == 2 else (data,)
