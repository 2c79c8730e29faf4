"""Argument checks and shape helpers shared by every fastnorm layer and
function: the one module the layer and family modules share (they import it,
and the kernels, never each other's helpers).

Every check runs before any kernel and before anything is written, so a call
that fails changes nothing.  Messages name the function, what was expected
and what came.
"""
import functools
import math
import numbers

import numpy as np

from ._dtypes import NAMES, as_dtype, compute_dtype, param_dtypes, storage_name

# Slices (rows, groups) of at most this many bytes take the one-pass slice
# kernels: the slice, and for the backward its gradient, stay in L2 between
# the two loops over it.
FUSE_BYTES = 512 * 1024


def shape_str(shape):
    return str(tuple(int(s) for s in shape))


def float_dtype(dtype, where):
    """The storage dtype named by `dtype` (a layer's dtype= keyword)."""
    try:
        dt = as_dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{where}: dtype must be {NAMES}, got {dtype!r}") from e
    if storage_name(dt) is None:
        raise TypeError(f"{where}: dtype must be {NAMES}, got {dt}")
    return dt


def as_float_array(a, name, where):
    """`a` as an ndarray of a storage dtype, without copying a native-order ndarray.

    Array-likes (lists, PyTorch CPU tensors) are converted with np.asarray.
    Byte-swapped float data is converted to native order (a copy).  Any other
    dtype (integer, bool, complex, float16, object) is refused: fastnorm never
    changes the precision of data behind the caller's back.
    """
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except Exception:
            a = _tensor_to_numpy(a, name, where)
    dt = a.dtype
    if dt.kind == "f" and not dt.isnative and storage_name(dt.newbyteorder("=")):
        a = a.astype(dt.newbyteorder("="))
        dt = a.dtype
    if storage_name(dt) is None:
        raise TypeError(
            f"{where}: expected {name} of dtype {NAMES}, got {dt}; "
            f"convert it explicitly, e.g. {name}.astype(np.float32)"
        )
    return a


def _tensor_to_numpy(t, name, where):
    # A PyTorch tensor that requires grad refuses np.asarray, and one of
    # torch.bfloat16 has no NumPy dtype: its bits become ml_dtypes.bfloat16.
    detach = getattr(t, "detach", None)
    if detach is not None:
        try:
            t = detach().cpu()
            if str(getattr(t, "dtype", "")) == "torch.bfloat16":
                import torch
                from ._dtypes import bfloat16
                return t.view(torch.int16).numpy().view(bfloat16())
            return np.asarray(t.numpy())
        except ImportError:
            raise
        except Exception:
            pass
    raise TypeError(f"{where}: {name} must be an array, got {type(t).__name__}")


def check_dtype_match(a, dtype, name, where):
    """A parameter or running statistic of a dtype allowed for input of
    `dtype`: the same, or float32 for 16-bit input (mixed)."""
    if a.dtype not in param_dtypes(dtype):
        mixed = " (or float32, for 16-bit input)" if dtype.itemsize == 2 else ""
        raise TypeError(
            f"{where}: {name} has dtype {a.dtype} but the input has dtype {dtype}; "
            f"parameters and input must have the same dtype{mixed}"
        )


def same_dtype(where, **arrays):
    """The one dtype of the given parameter arrays (None entries skipped), or
    None when none is given; parameters of different dtypes are refused."""
    given = {k: v.dtype for k, v in arrays.items() if v is not None}
    dts = set(given.values())
    if len(dts) > 1:
        what = ", ".join(f"{k} {v}" for k, v in given.items())
        raise TypeError(f"{where}: parameters and running statistics must share one "
                        f"dtype, got {what}")
    return dts.pop() if dts else None


def param(a, name, C, dtype, where):
    """A per-channel parameter of shape (C,) and the input's dtype, or None."""
    if a is None:
        return None
    a = as_float_array(a, name, where)
    if a.shape != (C,):
        raise ValueError(
            f"{where}: expected {name} of shape ({C},) for an input with {C} "
            f"channels, got shape {shape_str(a.shape)}"
        )
    check_dtype_match(a, dtype, name, where)
    return a


def buffer(a, name, C, dtype, where, writable):
    """A running statistic: an ndarray (C,) of the input's dtype, updated in place."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        if writable:
            raise TypeError(
                f"{where}: {name} must be a NumPy array (it is updated in place), "
                f"got {type(a).__name__}"
            )
        a = as_float_array(a, name, where)
    if a.shape != (C,):
        raise ValueError(
            f"{where}: expected {name} of shape ({C},) for an input with {C} "
            f"channels, got shape {shape_str(a.shape)}"
        )
    native = a.dtype.newbyteorder("=") if a.dtype.kind == "f" else a.dtype
    if native not in param_dtypes(dtype):
        if storage_name(native) is None:
            raise TypeError(f"{where}: expected {name} of dtype {dtype}, got {a.dtype}")
        check_dtype_match(a, dtype, name, where)
    if writable and not a.flags.writeable:
        raise ValueError(f"{where}: {name} is read-only but must be updated in place")
    return a


def eps_value(eps, where):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{where}: eps must be a positive real number, got {eps!r}")
    eps = float(eps)
    if not (eps > 0.0 and math.isfinite(eps)):
        raise ValueError(f"{where}: eps must be positive and finite, got {eps!r}")
    return eps


def momentum_value(momentum, where, allow_none=True):
    if momentum is None and allow_none:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(
            f"{where}: momentum must be a number in [0, 1]"
            + (" or None" if allow_none else "") + f", got {momentum!r}"
        )
    m = float(momentum)
    if not (0.0 <= m <= 1.0):
        raise ValueError(f"{where}: momentum must be in [0, 1], got {momentum!r}")
    return m


def positive_int(v, name, where):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{where}: {name} must be a positive integer, got {v!r}")
    return int(v)


def out_array(out, shape, dtype, x, where):
    """Validate `out`: C-contiguous, writable, right shape and dtype, and either
    the input itself (in-place) or not overlapping it at all."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{where}: out must be a NumPy array, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(
            f"{where}: out has shape {shape_str(out.shape)}, expected {shape_str(shape)}"
        )
    if out.dtype != dtype:
        raise TypeError(f"{where}: out has dtype {out.dtype}, expected {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{where}: out is read-only")
    if not (out.flags.c_contiguous and out.flags.aligned):
        raise ValueError(f"{where}: out must be C-contiguous and aligned")
    if x is not None and out is not x and np.may_share_memory(out, x):
        same = (
            out.__array_interface__["data"][0] == x.__array_interface__["data"][0]
            and out.strides == x.strides
        )
        if not same:
            raise ValueError(
                f"{where}: out overlaps the input without being the input itself; "
                "pass out=x for in-place, or a separate array"
            )
    return out


def grad_output(g, shape, dtype, where):
    """The output gradient of a backward call: shape and dtype of the forward."""
    g = as_float_array(g, "grad_output", where)
    if g.shape != tuple(shape):
        raise ValueError(
            f"{where}: grad_output has shape {shape_str(g.shape)}, expected "
            f"{shape_str(shape)} (the shape of the forward input)"
        )
    if g.dtype != dtype:
        raise TypeError(
            f"{where}: grad_output has dtype {g.dtype} but the input has dtype {dtype}; "
            "they must have the same dtype")
    return g


def input_kept(overwritten, where):
    """Refuse a backward whose forward wrote its output over its input."""
    if overwritten:
        raise RuntimeError(
            f"{where}: the forward call wrote its output over its input (out=x), "
            "so the input needed by backward is gone; run forward without "
            "out=x to take gradients"
        )


def centered(mean, dtype, factor):
    """(center, term): the float64 mean rounded to the compute type of the
    data type (as the kernels' fn_centre), and
    (center - mean) * factor, the correction that lets kernels work with
    x - center.  The term is 0 where the mean or the factor is not finite:
    center equals such a mean, and inf - inf would put a NaN where the data
    calls for none.  No floating-point warnings."""
    center = mean.astype(compute_dtype(dtype)).astype(np.float64)
    d = np.subtract(center, mean, out=np.zeros_like(mean), where=np.isfinite(mean))
    term = np.multiply(d, factor, out=np.zeros(np.broadcast(d, factor).shape),
                       where=np.isfinite(factor))
    return center, term


def for_kernel(a):
    """a as a C-contiguous, aligned array for the kernels (a copy only when a
    is not already one: strided, or contiguous at an unaligned address)."""
    if a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.array(a, order="C", copy=True)


# --------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------

def check_rank(x, where, ndims, layout=None):
    """x as a float ndarray of one of the ranks in ndims; the message names
    them (a range as "2D to 63D") and the layout, e.g. "(N, C, *)"."""
    x = as_float_array(x, "input", where)
    if x.ndim not in ndims:
        ndims = list(ndims)
        if len(ndims) > 2 and ndims == list(range(ndims[0], ndims[-1] + 1)):
            want = f"{ndims[0]}D to {ndims[-1]}D"
        else:
            want = " or ".join(f"{d}D" for d in ndims)
        lay = f" {layout}" if layout else ""
        raise ValueError(
            f"{where}: expected {want} input{lay}, got {x.ndim}D input of "
            f"shape {shape_str(x.shape)}"
        )
    return x


def as_ncl(x):
    """Contiguous aligned (N, C, L) view of x (N, C, *) (a copy only if x is not)."""
    x = for_kernel(x)
    L = 1
    for s in x.shape[2:]:
        L *= s
    return x.reshape(x.shape[0], x.shape[1], L)


def as_rows(x, D):
    """Contiguous aligned (R, D) view of x (a copy only if x is not)."""
    x2 = for_kernel(x).reshape(-1, D)
    if not x2.flags.aligned:  # pragma: no cover - numpy allocates aligned
        x2 = x2.copy()
    return x2


def fused(D, dtype):
    """Whether slices of D elements of dtype take the one-pass kernels."""
    return D * dtype.itemsize <= FUSE_BYTES


@functools.lru_cache(maxsize=32)
def unit_weight(D, dtype):
    """A read-only weight of ones in the compute type of dtype (shared: no
    allocation per call)."""
    w = np.ones(D, compute_dtype(dtype))
    w.flags.writeable = False
    return w


_U8 = np.dtype(np.uint8)


def kernel_param(a, data_dtype):
    """A parameter array for the kernels: None, or its values in the compute
    type of data_dtype, C-contiguous, as bytes (the kernels' weights are raw
    buffers of the compute type; a copy only for 16-bit parameters)."""
    if a is None:
        return None
    c = compute_dtype(data_dtype)
    flags = a.flags
    if a.dtype is not c or not (flags.c_contiguous and flags.aligned):
        a = np.ascontiguousarray(a, dtype=c)
    return (a if a.ndim == 1 else a.reshape(-1)).view(_U8)


def blend(buf, f, step):
    """buf = (1 - f) * buf + step, in place, step being f * (the new value):
    a running statistic's update.  16-bit statistics are updated in float64
    and rounded once; float32 and float64 ones as they always were."""
    if buf.dtype.itemsize == 2:
        buf[...] = (1.0 - f) * buf.astype(np.float64) + step
    else:
        buf[...] = (1.0 - f) * buf + step

