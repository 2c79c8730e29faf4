"""Normalisation over groups of channels of each sample: GroupNorm, and
InstanceNorm (one channel per group).

x (N, C, L) is viewed as N * G slices of (C / G) * L contiguous values, one
per group of a sample.  Slices of at most _checks.FUSE_BYTES take the one-pass slice
kernels (statistics and normalisation of a slice by one thread while it is in
cache; backward likewise).  Larger slices take two passes: statistics from the
batch-norm kernels on a (1, N * G, (C / G) * L) view (the same arithmetic as
the slice kernels), elementwise passes over (1, N * C, L) with coefficients
per (sample, channel).
"""
from dataclasses import dataclass

import numpy as np

from . import _checks as ck
from . import _pool
from ._dtypes import kernel_view as kv
from ._native import kernels as _kernels


@dataclass
class SavedGroups:
    x3: np.ndarray          # input as contiguous (N, C, L)
    shape: tuple            # input's shape as the caller gave it
    groups: int
    mean: np.ndarray        # float64 (N * G,)
    invstd: np.ndarray      # float64 (N * G,)
    overwritten: bool       # out= was the input


def statistics(x3, groups, eps):
    """(mean, biased var, invstd) per (sample, group), float64 (N * G,)."""
    N, C, L = x3.shape
    D = (C // groups) * L
    mean = np.empty(N * groups)
    var = np.empty(N * groups)
    if ck.fused(D, x3.dtype):
        invstd = np.empty(N * groups)
        _kernels.slice_stats(kv(x3.reshape(N * groups, D)), eps, False, mean, var, invstd)
        return mean, var, invstd
    _kernels.batch_stats(kv(x3.reshape(1, N * groups, D)), mean, var)
    return mean, var, 1.0 / np.sqrt(var + eps)


def forward_slices(x3, y3, groups, weight, bias, eps):
    """Statistics of x3 per (sample, group) and y3 = its normalisation, by the
    one-pass slice kernel or, for large slices, two passes.
    Returns (mean, var, invstd), float64 (N * G,)."""
    N, C, L = x3.shape
    D = (C // groups) * L
    dt = x3.dtype
    if not ck.fused(D, dt):
        mean, var, invstd = statistics(x3, groups, eps)
        normalise(x3, y3, groups, mean, invstd, weight, bias)
        return mean, var, invstd
    R = N * groups
    mean, var, invstd = np.empty(R), np.empty(R), np.empty(R)
    _kernels.groups_forward(kv(x3.reshape(R, D)), kv(y3.reshape(R, D)), groups, C // groups,
                            eps, ck.kernel_param(weight, dt), ck.kernel_param(bias, dt),
                            mean, var, invstd)
    return mean, var, invstd


def normalise(x3, y3, groups, mean, invstd, weight, bias):
    """y3 = (x3 - mean) * invstd * weight[c] + bias[c], per (sample, group)."""
    N, C, L = x3.shape
    cg = C // groups
    dt = x3.dtype
    mean_nc = np.repeat(mean, cg)
    scale = np.repeat(invstd, cg)
    if weight is not None:
        scale *= np.tile(weight, N)
    center, shift = ck.centered(mean_nc, dt, scale)
    if bias is not None:
        shift += np.tile(bias, N)
    _kernels.batch_affine(kv(x3.reshape(1, N * C, L)), kv(y3.reshape(1, N * C, L)),
                          center, scale, shift)


def saved_groups(saved):
    """The SavedGroups of a forward call: `saved` itself, or made from the
    tuple (x, mean, invstd, inplace, groups) of the per-call fast path
    (_kernels.groups_call)."""
    if type(saved) is not tuple:
        return saved
    x, mean, invstd, inplace, groups = saved
    return SavedGroups(ck.as_ncl(x), x.shape, groups, mean, invstd, inplace)


def backward(where, grad_output, saved, weight, need_weight, need_bias):
    """(grad_input, grad_weight, grad_bias) of a group/instance normalisation
    whose statistics came from its input (a SavedGroups, or the fast path's
    tuple: saved_groups)."""
    saved = saved_groups(saved)
    x3 = saved.x3
    dt = x3.dtype
    ck.input_kept(saved.overwritten, where)
    g = ck.grad_output(grad_output, saved.shape, dt, where)
    N, C, L = x3.shape
    G = saved.groups
    cg = C // G
    if weight is not None:
        weight = ck.for_kernel(ck.param(weight, "weight", C, dt, where))
    dx = _pool.empty(saved.shape, dt)
    if g.size == 0:
        z = np.zeros(C, dtype=weight.dtype if weight is not None else dt)
        return dx, (z if need_weight else None), (z.copy() if need_bias else None)
    g3 = ck.for_kernel(g).reshape(1, N * C, L)
    # per (n, c) sums: as large as x itself on (N, C) batches, so from the
    # pool (a fresh array there costs more in page faults than the kernel)
    s1 = _pool.scratch((N * C,), np.float64)    # sum of dy per (n, c)
    s2 = _pool.scratch((N * C,), np.float64)    # sum of dy * (x - mean) per (n, c)
    if ck.fused(cg * L, dt):
        _kernels.groups_backward(kv(x3.reshape(N * G, cg * L)), kv(g3.reshape(N * G, cg * L)),
                                 kv(dx.reshape(N * G, cg * L)), G, cg,
                                 ck.kernel_param(weight, dt), saved.mean, saved.invstd, s1, s2)
    else:
        _backward_two_pass(x3, g3, dx, saved, weight, np.repeat(saved.invstd, cg), s1, s2)
    pdt = weight.dtype if weight is not None else dt     # gradients: the parameters' dtype
    # sum over the samples of invstd_(n, g) * s2 and of s1 (from 0, in order)
    gw = np.empty(C) if need_weight else None
    gb = np.empty(C) if need_bias else None
    if need_weight or need_bias:
        _kernels.groups_param_grads(s1, s2, saved.invstd, G, cg, gw, gb)
    return dx, (gw.astype(pdt) if need_weight else None), (gb.astype(pdt) if need_bias else None)


def _backward_two_pass(x3, g3, dx, saved, weight, inv_nc, s1, s2):
    """Input gradient of large slices: sums pass, then elementwise pass."""
    N, C, L = x3.shape
    G = saved.groups
    cg = C // G
    dt = x3.dtype
    xf = x3.reshape(1, N * C, L)
    mean_nc = np.repeat(saved.mean, cg)
    _kernels.batch_bwd_sums(kv(xf), kv(g3), mean_nc, s1, s2)

    w_nc = np.tile(weight.astype(np.float64), N) if weight is not None else np.ones(N * C)
    m = cg * L
    sum_dxhat = (w_nc * s1).reshape(N * G, cg).sum(axis=1)
    sum_dxhat_xmu = (w_nc * s2).reshape(N * G, cg).sum(axis=1)
    a = w_nc * inv_nc
    b = np.repeat(saved.invstd * saved.invstd * saved.invstd * sum_dxhat_xmu / m, cg)
    k = np.repeat(saved.invstd * sum_dxhat / m, cg)
    center, term = ck.centered(mean_nc, dt, b)
    k += term
    _kernels.batch_bwd_input(kv(xf), kv(g3), kv(dx.reshape(1, N * C, L)), center, a, b, k)


def _prepare(where, x, C, weight, bias, eps, out):
    dt = x.dtype
    eps = ck.eps_value(eps, where)
    weight = ck.param(weight, "weight", C, dt, where)
    bias = ck.param(bias, "bias", C, dt, where)
    if dt.itemsize == 2:        # float32 or 16-bit, but one of them
        ck.same_dtype(where, weight=weight, bias=bias)
    weight = None if weight is None else ck.for_kernel(weight)
    bias = None if bias is None else ck.for_kernel(bias)
    out = ck.out_array(out, x.shape, dt, x, where)
    return eps, weight, bias, out


def group_forward(where, x, groups, weight, bias, eps, out):
    """GroupNorm of a checked input x (N, C, *). Returns (y, SavedGroups)."""
    C = x.shape[1]
    if C % groups:
        raise ValueError(
            f"{where}: input has {C} channels, not divisible into {groups} groups"
        )
    eps, weight, bias, out = _prepare(where, x, C, weight, bias, eps, out)
    x3 = ck.as_ncl(x)
    y = out if out is not None else _pool.empty(x.shape, x.dtype)
    if x.size == 0:
        return y, SavedGroups(x3, x.shape, groups, np.zeros(0), np.zeros(0), False)
    mean, _, invstd = forward_slices(x3, y.reshape(x3.shape), groups, weight, bias, eps)
    return y, SavedGroups(x3, x.shape, groups, mean, invstd,
                          out is not None and np.may_share_memory(out, x3))


def instance_forward(where, x, running_mean, running_var, weight, bias,
                     update, momentum, eps, out, nbt=None):
    """InstanceNorm with per-instance statistics of a checked input x (N, C, *).

    update: fold the batch average of the instance statistics into the
    running ones (unbiased variance), with momentum, or with 1 / nbt when
    momentum is None.  Returns (y, SavedGroups).
    """
    N, C = x.shape[:2]
    L = 1
    for s in x.shape[2:]:
        L *= s
    if L == 1:
        raise ValueError(
            f"{where}: expected more than 1 spatial element when using instance "
            f"statistics, got input of shape {ck.shape_str(x.shape)}"
        )
    eps, weight, bias, out = _prepare(where, x, C, weight, bias, eps, out)
    dt = x.dtype
    running_mean = ck.buffer(running_mean, "running_mean", C, dt, where, update)
    running_var = ck.buffer(running_var, "running_var", C, dt, where, update)
    if dt.itemsize == 2:
        ck.same_dtype(where, weight=weight, bias=bias, running_mean=running_mean,
                      running_var=running_var)
    if update and running_mean is not None and momentum is not None:
        momentum = ck.momentum_value(momentum, where, allow_none=False)
    x3 = ck.as_ncl(x)
    y = out if out is not None else _pool.empty(x.shape, dt)
    if x.size == 0:  # no instance, or empty planes: nothing to normalise or average
        return y, SavedGroups(x3, x.shape, C, np.zeros(0), np.zeros(0), False)
    mean, var, invstd = forward_slices(x3, y.reshape(x3.shape), C, weight, bias, eps)
    if update and running_mean is not None:
        f = momentum if momentum is not None else 1.0 / nbt
        batch_mean = mean.reshape(N, C).mean(axis=0)
        batch_var = (var * (L / (L - 1))).reshape(N, C).mean(axis=0)
        ck.blend(running_mean, f, f * batch_mean)
        ck.blend(running_var, f, f * batch_var)
    return y, SavedGroups(x3, x.shape, C, mean, invstd,
                          out is not None and np.may_share_memory(out, x3))


def saved_for_backward(where, x, groups, weight, bias, eps, instance):
    """Checks and statistics of a forward call, without its output: what a
    functional *_backward needs (one pass over x instead of two)."""
    N, C = x.shape[:2]
    if C % groups:
        raise ValueError(
            f"{where}: input has {C} channels, not divisible into {groups} groups"
        )
    if instance and int(np.prod(x.shape[2:])) == 1:
        raise ValueError(
            f"{where}: expected more than 1 spatial element when using instance "
            f"statistics, got input of shape {ck.shape_str(x.shape)}"
        )
    eps, _, _, _ = _prepare(where, x, C, weight, bias, eps, None)
    x3 = ck.as_ncl(x)
    if x.size == 0:
        return SavedGroups(x3, x.shape, groups, np.zeros(0), np.zeros(0), False)
    mean, _, invstd = statistics(x3, groups, eps)
    return SavedGroups(x3, x.shape, groups, mean, invstd, False)
