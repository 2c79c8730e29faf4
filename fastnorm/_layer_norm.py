"""Normalisation of each row over its trailing `normalized_shape` elements:
LayerNorm (mean and variance) and RMSNorm (root mean square).

x is viewed as contiguous (R, D), D = prod(normalized_shape).  Rows of at
most _checks.FUSE_BYTES go to the fused slice kernels: one thread computes a row's
statistics and normalises it (backward: its sums, then its gradient) while
the row is in cache, one read of the data per call.  Longer rows (too few to
share among threads, too long for the cache) take two passes: statistics from
the batch-norm kernel on a (1, R, D) view, parallel within the row, then the
layer kernels.  Both compute a row's statistics with the same arithmetic
(pieces of 4096, Chan-merged in order); RMSNorm's mean square is one pass
of sums of squares over the same pieces, added in order (non-negative
terms: nothing cancels, no centre is needed).
"""
import math
import numbers
from dataclasses import dataclass

import numpy as np

from . import _checks as ck
from . import _pool
from ._dtypes import kernel_view as kv, storage_name
from ._native import kernels as _kernels


@dataclass
class SavedRows:
    x2: np.ndarray          # input as contiguous (R, D)
    shape: tuple            # input's shape
    mean: np.ndarray        # float64 (R,): centre (zeros for RMSNorm)
    invstd: np.ndarray      # float64 (R,): 1 / sqrt(var + eps) or 1 / rms
    rms: bool
    overwritten: bool


def normalized_shape_value(normalized_shape, where):
    """normalized_shape as a tuple of positive ints (an int means (int,))."""
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    try:
        shape = tuple(normalized_shape)
    except TypeError:
        raise TypeError(
            f"{where}: normalized_shape must be an int or a sequence of ints, "
            f"got {normalized_shape!r}") from None
    if not shape or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                            and s >= 1 for s in shape):
        raise ValueError(
            f"{where}: normalized_shape must be positive ints, got {normalized_shape!r}")
    return tuple(int(s) for s in shape)


def rms_eps(eps, dtype, where):
    """eps=None: the machine epsilon of the input's dtype, as PyTorch's
    RMSNorm (2**-7 for bfloat16, 2**-10 for float16)."""
    if eps is None:
        e = _MACHINE_EPS.get(dtype)
        if e is None:       # float32/float64/float16 known; bfloat16 by name
            e = _MACHINE_EPS[dtype] = (2.0 ** -7 if storage_name(dtype) == "bfloat16"
                                       else float(np.finfo(dtype).eps))
        return e
    return ck.eps_value(eps, where)


# machine epsilon by dtype (np.finfo costs microseconds a call)
_MACHINE_EPS = {}


def _row_param(a, name, nshape, dtype, where):
    if a is None:
        return None
    a = ck.as_float_array(a, name, where)
    if a.shape != nshape:
        raise ValueError(
            f"{where}: expected {name} of shape {ck.shape_str(nshape)} "
            f"(normalized_shape), got shape {ck.shape_str(a.shape)}")
    ck.check_dtype_match(a, dtype, name, where)
    return ck.for_kernel(a).reshape(-1)


def check_rows(where, x, nshape):
    """x as a float ndarray whose trailing dims are nshape."""
    x = ck.as_float_array(x, "input", where)
    k = len(nshape)
    if x.ndim < k or x.shape[x.ndim - k:] != nshape:
        raise ValueError(
            f"{where}: expected input with trailing dimensions {ck.shape_str(nshape)} "
            f"(normalized_shape), got input of shape {ck.shape_str(x.shape)}")
    return x


def statistics(where, x, nshape, weight, bias, eps, rms):
    """Checks, and the row statistics of a checked x, as SavedRows (no output)."""
    dt = x.dtype
    D = math.prod(nshape)
    _row_param(weight, "weight", nshape, dt, where)
    _row_param(bias, "bias", nshape, dt, where)
    if dt.itemsize == 2:        # float32 or 16-bit, but one of them
        ck.same_dtype(where, weight=weight, bias=bias)
    x2 = ck.as_rows(x, D)
    R = x2.shape[0]
    if R == 0:
        return SavedRows(x2, x.shape, np.zeros(0), np.zeros(0), rms, False)
    mean = np.empty(R)
    var = np.empty(R)
    if ck.fused(D, dt):
        invstd = np.empty(R)
        _kernels.slice_stats(kv(x2), eps, rms, mean, var, invstd)
        return SavedRows(x2, x.shape, mean, invstd, rms, False)
    if rms:
        _kernels.batch_squares(kv(x2.reshape(1, R, D)), var)   # the mean square
        invstd = 1.0 / np.sqrt(var + eps)
        mean = np.zeros(R)
    else:
        _kernels.batch_stats(kv(x2.reshape(1, R, D)), mean, var)
        invstd = 1.0 / np.sqrt(var + eps)
    return SavedRows(x2, x.shape, mean, invstd, rms, False)


def forward(where, x, nshape, weight, bias, eps, out, rms):
    """LayerNorm (rms=False) or RMSNorm of a checked x.  Returns (y, SavedRows)."""
    dt = x.dtype
    D = math.prod(nshape)
    out = ck.out_array(out, x.shape, dt, x, where)
    if ck.fused(D, dt) and x.size:
        w = _row_param(weight, "weight", nshape, dt, where)
        b = _row_param(bias, "bias", nshape, dt, where)
        if dt.itemsize == 2:
            ck.same_dtype(where, weight=w, bias=b)
        x2 = ck.as_rows(x, D)
        R = x2.shape[0]
        y = out if out is not None else _pool.empty(x.shape, dt)
        mean, var, invstd = np.empty(R), np.empty(R), np.empty(R)
        if w is None and b is not None:     # the kernel takes a bias only with a weight
            w = ck.unit_weight(D, dt)
        _kernels.rows_forward(kv(x2), kv(y.reshape(R, D)), eps, rms, ck.kernel_param(w, dt),
                              ck.kernel_param(b, dt), mean, var, invstd)
        saved = SavedRows(x2, x.shape, mean, invstd, rms,
                          out is not None and np.may_share_memory(out, x2))
        return y, saved
    saved = statistics(where, x, nshape, weight, bias, eps, rms)
    y = out if out is not None else _pool.empty(x.shape, dt)
    R = saved.x2.shape[0]
    if R == 0:
        return y, saved
    w = _row_param(weight, "weight", nshape, dt, where)
    b = _row_param(bias, "bias", nshape, dt, where)
    if rms:
        center = shift = saved.mean          # zeros
    else:
        center, shift = ck.centered(saved.mean, dt, saved.invstd)
    _kernels.layer_affine(kv(saved.x2), kv(y.reshape(R, D)), center, saved.invstd, shift,
                          ck.kernel_param(w if w is not None else ck.unit_weight(D, dt), dt),
                          ck.kernel_param(b, dt))
    saved.overwritten = out is not None and np.may_share_memory(out, saved.x2)
    return y, saved


def saved_rows(saved, nshape):
    """The SavedRows of a forward call: `saved` itself, or made from the
    tuple (x, mean, invstd, inplace, rms) of the per-call fast path
    (_kernels.rows_call)."""
    if type(saved) is not tuple:
        return saved
    x, mean, invstd, inplace, rms = saved
    return SavedRows(ck.as_rows(x, math.prod(nshape)), x.shape, mean, invstd, rms, inplace)


def backward(where, grad_output, saved, weight, nshape, need_weight, need_bias):
    """(grad_input, grad_weight, grad_bias) of the forward that made `saved`
    (a SavedRows, or the fast path's tuple: saved_rows)."""
    saved = saved_rows(saved, nshape)
    x2 = saved.x2
    dt = x2.dtype
    ck.input_kept(saved.overwritten, where)
    g = ck.grad_output(grad_output, saved.shape, dt, where)
    R, D = x2.shape
    w = _row_param(weight, "weight", nshape, dt, where)
    pdt = w.dtype if w is not None else dt     # gradients: the parameters' dtype
    dx = _pool.empty(saved.shape, dt)
    if R == 0:
        z = np.zeros(nshape, dtype=pdt)
        return dx, (z if need_weight else None), (z.copy() if need_bias else None)
    g2 = ck.for_kernel(g).reshape(R, D)
    w1 = w if w is not None else ck.unit_weight(D, dt)
    col_dy, col_dyxhat = np.empty(D), np.empty(D)
    if ck.fused(D, dt):
        _kernels.rows_backward(kv(x2), kv(g2), kv(dx.reshape(R, D)), saved.rms,
                               ck.kernel_param(w1, dt), saved.mean, saved.invstd, col_dy,
                               col_dyxhat)
        gw = col_dyxhat.astype(pdt).reshape(nshape) if need_weight else None
        gb = col_dy.astype(pdt).reshape(nshape) if need_bias else None
        return dx, gw, gb
    row_a, row_b = np.empty(R), np.empty(R)
    _kernels.layer_bwd_sums(kv(x2), kv(g2), ck.kernel_param(w1, dt), saved.mean,
                            saved.invstd, row_a, row_b, col_dy, col_dyxhat)
    inv = saved.invstd
    q = (inv * inv * inv) * row_b / D
    if saved.rms:
        center = saved.mean          # zeros
        k = np.zeros(R)
    else:
        center, term = ck.centered(saved.mean, dt, q)
        k = inv * row_a / D + term
    _kernels.layer_bwd_input(kv(x2), kv(g2), kv(dx.reshape(R, D)), ck.kernel_param(w1, dt),
                             center, inv, q, k)
    gw = col_dyxhat.astype(pdt).reshape(nshape) if need_weight else None
    gb = col_dy.astype(pdt).reshape(nshape) if need_bias else None
    return dx, gw, gb
