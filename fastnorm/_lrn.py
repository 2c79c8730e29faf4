"""Local response normalisation across channels (PyTorch's window)."""
import math
import numbers

import numpy as np

from . import _checks as ck
from . import _pool
from ._dtypes import kernel_view as kv
from ._native import kernels as _kernels


def check_args(size, alpha, beta, k, where):
    """size: positive int; alpha, beta, k: finite reals."""
    size = ck.positive_int(size, "size", where)
    vals = []
    for name, v in (("alpha", alpha), ("beta", beta), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{where}: {name} must be a finite real number, got {v!r}")
        vals.append(float(v))
    return (size, *vals)


def check_input(x, where):
    """x as a float ndarray (N, C, *) of rank 3 or more."""
    return ck.check_rank(x, where, range(3, 65), layout="(N, C, *)")


def forward(where, x, size, alpha, beta, k, out):
    """y = x / (k + alpha / size * window sum of x**2)**beta.  Returns (y, x3)."""
    out = ck.out_array(out, x.shape, x.dtype, x, where)
    if out is not None and np.may_share_memory(out, x):
        raise ValueError(
            f"{where}: out must not share memory with the input (each output "
            "depends on neighbouring channels of the input)")
    x3 = ck.as_ncl(x)
    y = out if out is not None else _pool.empty(x.shape, x.dtype)
    if x.size:
        _kernels.lrn_forward(kv(x3), kv(y.reshape(x3.shape)), size, alpha, beta, k)
    return y, x3


def backward(where, grad_output, x3, shape, size, alpha, beta, k):
    """Input gradient of the forward on x3 (contiguous (N, C, L) of `shape`)."""
    g = ck.grad_output(grad_output, shape, x3.dtype, where)
    dx = _pool.empty(shape, x3.dtype)
    if g.size:
        g3 = ck.for_kernel(g).reshape(x3.shape)
        _kernels.lrn_backward(kv(x3), kv(g3), kv(dx.reshape(x3.shape)), size, alpha, beta, k)
    return dx
