"""Batch normalisation: argument checks, running statistics, kernel calls.

Shared by the BatchNorm layers and by fastnorm.functional.  Statistics and
per-channel coefficients are float64; data stays in its own dtype.
"""
from dataclasses import dataclass

import numpy as np

from . import _checks as ck
from . import _pool
from ._dtypes import kernel_view as kv
from ._native import kernels as _kernels


@dataclass
class Saved:
    """What a forward call leaves for its backward."""

    x3: np.ndarray          # input as contiguous (N, C, L)
    shape: tuple            # input's shape
    mean: np.ndarray        # float64 (C,): the mean that normalised
    invstd: np.ndarray      # float64 (C,): 1 / sqrt(var + eps) that normalised
    batch_stats: bool       # statistics came from this batch
    overwritten: bool       # out= was the input: x3 no longer holds it


def saved_eval(saved):
    """The Saved of a forward call: `saved` itself, or made from the tuple
    (x, mean, invstd, inplace, batch_stats) of a fast path
    (_kernels.batch_call, _kernels.batch_train_call)."""
    if type(saved) is not tuple:
        return saved
    x, mean, invstd, inplace, batch_stats = saved
    return Saved(ck.as_ncl(x), x.shape, mean, invstd, batch_stats, inplace)


def check_params(where, C, dt, weight, bias, running_mean, running_var, writable):
    """The checked (C,) weight, bias, running_mean and running_var (each may
    be None) for data of dtype dt: each of dt, or for 16-bit data float32,
    but all of one dtype.  writable: the running statistics will be updated."""
    weight = ck.param(weight, "weight", C, dt, where)
    bias = ck.param(bias, "bias", C, dt, where)
    running_mean = ck.buffer(running_mean, "running_mean", C, dt, where, writable)
    running_var = ck.buffer(running_var, "running_var", C, dt, where, writable)
    if dt.itemsize == 2:        # float32 or 16-bit, but one of them
        ck.same_dtype(where, weight=weight, bias=bias, running_mean=running_mean,
                      running_var=running_var)
    return weight, bias, running_mean, running_var


def forward(where, x, running_mean, running_var, weight, bias, batch_stats,
            update, momentum, eps, out, nbt=None, moments=None):
    """Batch norm of a checked input x (ndarray, rank >= 2).

    batch_stats: normalise with this batch's statistics (else running ones).
    update: with batch_stats, fold them into running_mean / running_var.
    momentum: float, or None for a cumulative average over nbt batches
    (nbt: the count including this batch).
    moments: with batch_stats, None or a callable(x3) -> (mean, var, count)
    (float64 (C,) mean and biased variance, values per channel) that replaces
    x's own statistics: SyncBatchNorm's, over every process's batch (x may
    then be empty).  Called once, after every check, before anything is
    written.
    Returns (y, Saved).
    """
    C = x.shape[1]
    dt = x.dtype
    eps = ck.eps_value(eps, where)
    weight, bias, running_mean, running_var = check_params(
        where, C, dt, weight, bias, running_mean, running_var, writable=update)
    if not batch_stats and (running_mean is None or running_var is None):
        raise ValueError(
            f"{where}: running_mean and running_var are required when not training"
        )
    if update:
        if momentum is None:
            if nbt is None or nbt < 1:
                raise ValueError(f"{where}: momentum=None needs the batch count")
        else:
            momentum = ck.momentum_value(momentum, where, allow_none=False)
    out = ck.out_array(out, x.shape, dt, x, where)

    x3 = ck.as_ncl(x)
    y = out if out is not None else _pool.empty(x.shape, dt)
    if x.size == 0 and (moments is None or not batch_stats):
        # An empty batch (N = 0 or a zero spatial dim): nothing to normalise,
        # and in training no statistics, so the running ones stay as they
        # are (PyTorch's semantics; a layer still counts the batch).
        return y, _empty_saved(x3, x.shape, batch_stats)
    if batch_stats and moments is not None:
        mean, var, count = moments(x3)
        if count == 0:      # every process's batch is empty
            return y, _empty_saved(x3, x.shape, batch_stats)
        invstd = 1.0 / np.sqrt(var + eps)
    else:
        mean, var, invstd = statistics(where, x3, x.shape, running_mean, running_var,
                                       batch_stats, eps)
        count = x3.shape[0] * x3.shape[2]
    y3 = y.reshape(x3.shape)

    scale = invstd if weight is None else invstd * weight
    # y = (x - mean) * scale + bias = (x - center) * scale + shift
    center, shift = ck.centered(mean, dt, scale)
    if bias is not None:
        shift += bias
    if x3.size:
        _kernels.batch_affine(kv(x3), kv(y3), center, scale, shift)
    if batch_stats and update and running_mean is not None:
        f = momentum if momentum is not None else 1.0 / nbt
        unbiased = var * (count / (count - 1))
        ck.blend(running_mean, f, f * mean)
        ck.blend(running_var, f, f * unbiased)
    overwritten = out is not None and np.may_share_memory(out, x3)
    return y, Saved(x3, x.shape, mean, invstd, batch_stats, overwritten)


def _empty_saved(x3, shape, batch_stats):
    """What a forward of an empty batch leaves for its backward."""
    C = x3.shape[1]
    return Saved(x3, shape, np.zeros(C), np.ones(C), batch_stats, False)


def statistics(where, x3, shape, running_mean, running_var, batch_stats, eps):
    """(mean, biased var, invstd) in float64 that normalise x3 (N, C, L), not
    empty."""
    if batch_stats:
        count = x3.shape[0] * x3.shape[2]
        if count == 1:
            raise ValueError(
                f"{where}: expected more than 1 value per channel when training, "
                f"got input of shape {ck.shape_str(shape)}"
            )
        mean = np.empty(x3.shape[1])
        var = np.empty(x3.shape[1])
        _kernels.batch_stats(kv(x3), mean, var)
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    return mean, var, 1.0 / np.sqrt(var + eps)


def backward(where, grad_output, saved, weight, need_weight, need_bias, grad_input_out=None,
             reduce=None):
    """Gradients of the forward that produced `saved`.

    Returns (grad_input, grad_weight or None, grad_bias or None), all in the
    input's dtype.  grad_input = d/dx of sum(grad_output * y).
    reduce: None or a callable(sum_dy, sum_dyx, count) -> the same three for
    the whole batch the forward's statistics came from (SyncBatchNorm: summed
    over every process).  Called once, after every check, also when
    grad_output is empty.
    """
    saved = saved_eval(saved)
    dt = saved.x3.dtype
    ck.input_kept(saved.overwritten, where)
    g = ck.grad_output(grad_output, saved.shape, dt, where)
    if weight is not None:
        weight = ck.param(weight, "weight", saved.x3.shape[1], dt, where)
    dx = ck.out_array(grad_input_out, saved.shape, dt, None, where)

    x3 = saved.x3
    C = x3.shape[1]
    if dx is None:
        dx = _pool.empty(saved.shape, dt)
    if g.size == 0 and reduce is None:
        z = np.zeros(C, dtype=weight.dtype if weight is not None else dt)
        return dx, (z if need_weight else None), (z.copy() if need_bias else None)
    g3 = ck.as_ncl(g)
    dx3 = dx.reshape(x3.shape)

    sum_dy = np.zeros(C)
    sum_dyx = np.zeros(C)
    count = x3.shape[0] * x3.shape[2]
    if g.size:
        _kernels.batch_bwd_sums(kv(x3), kv(g3), saved.mean, sum_dy, sum_dyx)
    if reduce is not None:
        sum_dy, sum_dyx, count = reduce(sum_dy, sum_dyx, count)

    a = saved.invstd if weight is None else saved.invstd * weight
    if g.size == 0:
        pass        # an empty share of a synced batch: no input gradient to write
    elif saved.batch_stats:
        b = a * saved.invstd * saved.invstd * sum_dyx / count
        k = a * sum_dy / count
        # dx = a*dy - b*(x - mean) - k, with x - mean = (x - center) + (center - mean)
        center, term = ck.centered(saved.mean, dt, b)
        k = k + term
        _kernels.batch_bwd_input(kv(x3), kv(g3), kv(dx3), center, a, b, k)
    else:
        _kernels.batch_scale(kv(g3), kv(dx3), a)

    pdt = weight.dtype if weight is not None else dt     # gradients: the parameters' dtype
    gw = (sum_dyx * saved.invstd).astype(pdt) if need_weight else None
    gb = sum_dy.astype(pdt) if need_bias else None
    return dx, gw, gb
