"""Switchable normalisation (Luo et al. 2018): instance, layer and batch
statistics mixed with softmax weights.

For x (N, C, L) (L: the spatial elements of a channel plane, M of them):
  instance  mu_in[n, c], var_in[n, c]   over the plane (biased)
  layer     mu_ln[n], var_ln[n]          over (C, L): the instance moments of
                                         sample n merged (Chan)
  batch     mu_bn[c], var_bn[c]          over (N, L): the instance moments of
                                         channel c merged; in eval mode the
                                         running statistics
  mu  = a_in mu_in  + a_ln mu_ln  + a_bn mu_bn,   a = softmax(mean_weight)
  var = b_in var_in + b_ln var_ln + b_bn var_bn,  b = softmax(var_weight)
  y   = (x - mu) / sqrt(var + eps) * weight[c] + bias[c]
The data is read once for the instance moments (the kernels' Welford/Chan
statistics per plane), once to normalise; layer and batch statistics come
from merging the instance moments, never from sums of squares.
With using_bn=False only the instance and layer terms exist (two weights).
"""
import functools
import math
from dataclasses import dataclass

import numpy as np

from . import _checks as ck
from . import _pool
from ._dtypes import kernel_view as kv
from ._native import kernels as _kernels


# Cody-Waite split of log(2) (the high part has 32 zero low bits, so k * hi
# is exact) and the Taylor coefficients 1 / n! of exp on |r| <= log(2) / 2.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e+00
_EXP_COEF = tuple(1.0 / math.factorial(n) for n in range(14))


def exp(v):
    """exp of a float64 array with IEEE additions, multiplications and
    ldexp only: the same bits on every CPU.  (NumPy's and libm's exp choose
    SIMD or FMA code by CPU and differ in the last bit, which would make the
    mixing weights, and every SwitchableNorm result, depend on the CPU.)
    Range reduction x = k log(2) + r, |r| <= log(2) / 2, then a degree-13
    Taylor polynomial: within a few ulp of exp."""
    x = np.clip(np.asarray(v, np.float64), -746.0, 710.0)
    nan = np.isnan(x)
    x = np.where(nan, 0.0, x)
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.full_like(r, _EXP_COEF[13])
    for c in _EXP_COEF[12::-1]:
        p = p * r + c
    with np.errstate(over="ignore"):        # exp(x) beyond the float64 range: inf
        return np.where(nan, np.nan, np.ldexp(p, k.astype(np.int64)))


def exp_scalar(x):
    """exp of one Python float, the same steps as exp() in Python's float
    arithmetic (IEEE double, no fused multiply-add, round() halves to even
    as np.rint): the same bits as exp(np.array([x]))[0].  The mixing
    weights' softmax runs these steps in C (exp_ieee,
    _kernels_switchable.pxi); exp and exp_scalar state them in NumPy and in
    Python, and the tests hold the three to the same bits."""
    if x != x:
        return math.nan
    x = min(max(x, -746.0), 710.0)
    k = float(round(x * _INV_LN2))
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _EXP_COEF[13]
    for c in _EXP_COEF[12::-1]:
        p = p * r + c
    try:
        return math.ldexp(p, int(k))
    except OverflowError:       # beyond the float64 range: inf, as np.ldexp
        return math.inf


@dataclass
class Saved:
    """What backward needs from a forward call."""
    x3: np.ndarray          # (N, C, L) view of the input
    shape: tuple
    mu_in: np.ndarray       # (N, C) float64
    var_in: np.ndarray
    mu_ln: np.ndarray       # (N,)
    mu_bn: np.ndarray       # (C,)
    mu: np.ndarray          # (N, C) mixed mean and 1 / sqrt(var + eps)
    invstd: np.ndarray
    stats: tuple            # (mu_k, var_k) per term, each broadcast to (N, C)
    a: np.ndarray           # softmax(mean_weight), softmax(var_weight)
    b: np.ndarray
    batch_grad: bool        # the batch term depends on x (training)
    overwritten: bool
    pdt: np.dtype = None    # the parameters' dtype (of their gradients)


def _quiet(f):
    """Run f with NumPy's floating-point warnings off: non-finite data makes
    NaN and inf in the statistics (inf - inf, inf * 0), as it should, and
    fastnorm warns about none of it (README, Numerics)."""
    @functools.wraps(f)
    def run(*args, **kw):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return f(*args, **kw)
    return run


def check_mixing(mean_weight, var_weight, terms, dtype, where):
    out = []
    for name, v in (("mean_weight", mean_weight), ("var_weight", var_weight)):
        v = ck.as_float_array(v, name, where)
        if v.shape != (terms,):
            raise ValueError(
                f"{where}: expected {name} of shape ({terms},) (one logit per "
                f"statistic: {'instance, layer, batch' if terms == 3 else 'instance, layer'}), "
                f"got shape {ck.shape_str(v.shape)}")
        ck.check_dtype_match(v, dtype, name, where)
        out.append(v)
    return out


def _terms(N, C, mu_in, var_in, mu_ln, var_ln, mu_bn, var_bn, terms):
    """(mu_k, var_k) per term, each broadcast to (N, C)."""
    stats = [(mu_in, var_in), (np.broadcast_to(mu_ln[:, None], (N, C)),
                               np.broadcast_to(var_ln[:, None], (N, C)))]
    if terms == 3:
        stats.append((np.broadcast_to(mu_bn, (N, C)), np.broadcast_to(var_bn, (N, C))))
    return tuple(stats)


def saved_fast(saved):
    """The Saved of an eval call that took the fast path (switchable_call:
    (x, stats, terms, inplace), stats its statistics in one float64 array)."""
    x, st, terms, inplace = saved
    N, C = x.shape[:2]
    NC = N * C
    mu_in, var_in, mu, invstd = (st[i * NC:(i + 1) * NC].reshape(N, C) for i in range(4))
    o = 4 * NC
    mu_ln, var_ln = st[o:o + N], st[o + N:o + 2 * N]
    o += 2 * N
    mu_bn, var_bn = st[o:o + C], st[o + C:o + 2 * C]
    o += 2 * C
    a, b = st[o:o + terms], st[o + 3:o + 3 + terms]
    return Saved(ck.as_ncl(x), x.shape, mu_in, var_in, mu_ln, mu_bn if terms == 3 else None,
                 mu, invstd, _terms(N, C, mu_in, var_in, mu_ln, var_ln, mu_bn, var_bn, terms),
                 a, b, False, inplace, x.dtype)


@_quiet
def statistics(where, x, mean_weight, var_weight, running_mean, running_var, weight,
               bias, training, using_bn, update, eps, out):
    """Checks, and the mixed statistics of a checked x (N, C, *): a Saved
    (overwritten left False), and the checked weight, bias and out."""
    N, C = x.shape[:2]
    dt = x.dtype
    terms = 3 if using_bn else 2
    eps = ck.eps_value(eps, where)
    mean_weight, var_weight = check_mixing(mean_weight, var_weight, terms, dt, where)
    weight = ck.param(weight, "weight", C, dt, where)
    bias = ck.param(bias, "bias", C, dt, where)
    if using_bn:
        running_mean = ck.buffer(running_mean, "running_mean", C, dt, where, update)
        running_var = ck.buffer(running_var, "running_var", C, dt, where, update)
    if dt.itemsize == 2:        # float32 or 16-bit, but one of them
        ck.same_dtype(where, weight=weight, bias=bias, mean_weight=mean_weight,
                      var_weight=var_weight, running_mean=running_mean,
                      running_var=running_var)
    if using_bn and not training and (running_mean is None or running_var is None):
        raise ValueError(f"{where}: eval mode with using_bn needs running_mean and "
                         "running_var (the batch term), got "
                         f"running_mean={'None' if running_mean is None else 'an array'}, "
                         f"running_var={'None' if running_var is None else 'an array'}")
    out = ck.out_array(out, x.shape, dt, x, where)
    x3 = ck.as_ncl(x)
    M = x3.shape[2]
    if M == 0 or N == 0:
        raise ValueError(f"{where}: expected a non-empty input, got shape "
                         f"{ck.shape_str(x.shape)}")
    if training and using_bn and N * M == 1:
        raise ValueError(f"{where}: expected more than 1 value per channel when training, "
                         f"got input of shape {ck.shape_str(x.shape)}")

    # instance moments, one pass over x: planes are the "channels" of (1, N*C, M)
    mu_in = np.empty(N * C)
    var_in = np.empty(N * C)
    _kernels.batch_stats(kv(x3.reshape(1, N * C, M)), mu_in, var_in)
    mu_in = mu_in.reshape(N, C)
    var_in = var_in.reshape(N, C)
    # the layer and batch moments merged from the instance moments, the
    # softmax weights and the mixture: one C loop (_kernels_switchable.pxi),
    # the fast path's arithmetic
    batch_from_x = bool(training)
    if using_bn and not training:
        mu_bn = running_mean.astype(np.float64)
        var_bn = running_var.astype(np.float64)
    else:
        mu_bn, var_bn = np.empty(C), np.empty(C)
    mu, invstd = np.empty((N, C)), np.empty((N, C))
    mu_ln, var_ln = np.empty(N), np.empty(N)
    a, b = np.empty(terms), np.empty(terms)
    _kernels.switchable_mix(mu_in, var_in, mean_weight.astype(np.float64),
                            var_weight.astype(np.float64), batch_from_x, eps, mu, invstd,
                            mu_ln, var_ln, mu_bn, var_bn, a, b)
    saved = Saved(x3, x.shape, mu_in, var_in, mu_ln, mu_bn if using_bn else None, mu,
                  invstd, _terms(N, C, mu_in, var_in, mu_ln, var_ln, mu_bn, var_bn, terms),
                  a, b, bool(training and using_bn), False, mean_weight.dtype)
    return saved, weight, bias, out


@_quiet
def forward(where, x, mean_weight, var_weight, running_mean, running_var, weight,
            bias, training, using_bn, update, momentum, eps, out, nbt=None):
    """Switchable norm of a checked x (N, C, *).  Returns (y, Saved)."""
    N, C = x.shape[:2]
    dt = x.dtype
    saved, weight, bias, out = statistics(where, x, mean_weight, var_weight, running_mean,
                                          running_var, weight, bias, training, using_bn,
                                          update, eps, out)
    x3 = saved.x3
    M = x3.shape[2]
    invstd = saved.invstd
    scale = invstd if weight is None else invstd * weight[None, :]
    center, shift = ck.centered(saved.mu.reshape(-1), dt, scale.reshape(-1))
    if bias is not None:
        shift = shift + np.tile(bias.astype(np.float64), N)
    y = out if out is not None else _pool.empty(x.shape, dt)
    _kernels.batch_affine(kv(x3.reshape(1, N * C, M)), kv(y.reshape(1, N * C, M)), center,
                          scale.reshape(-1), shift)
    if update:
        f = momentum if momentum is not None else 1.0 / nbt
        n = N * M
        var_bn = saved.stats[2][1][0]
        ck.blend(running_mean, f, f * saved.mu_bn)
        ck.blend(running_var, f, f * var_bn * (n / (n - 1)))
    saved.overwritten = out is not None and np.may_share_memory(out, x3)
    return y, saved


@_quiet
def backward(where, grad_output, saved, weight, need_weight, need_bias):
    """(grad_input, grad_weight, grad_bias, grad_mean_weight, grad_var_weight)."""
    x3 = saved.x3
    dt = x3.dtype
    N, C, M = x3.shape
    ck.input_kept(saved.overwritten, where)
    g = ck.grad_output(grad_output, saved.shape, dt, where)
    if weight is not None:
        weight = ck.param(weight, "weight", C, dt, where)
    g3 = ck.as_ncl(g)
    flat, gflat = x3.reshape(1, N * C, M), g3.reshape(1, N * C, M)

    # per plane: sum dy and sum dy * (x - mu) (mu: the mixed mean)
    s_dy = np.empty(N * C)
    s_dyx = np.empty(N * C)
    _kernels.batch_bwd_sums(kv(flat), kv(gflat), saved.mu.reshape(-1), s_dy, s_dyx)
    s_dy = s_dy.reshape(N, C)
    s_dyx = s_dyx.reshape(N, C)
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    inv = saved.invstd
    # dL/dmu and dL/dvar of each plane (mu, var: the mixed statistics)
    d_mu = -inv * w * s_dy
    d_var = -0.5 * (inv * inv * inv) * w * s_dyx
    a, b = saved.a, saved.b
    terms = len(a)
    # through the mixing into the instance mean and variance of each plane
    d_mu_in = a[0] * d_mu + a[1] * d_mu.sum(axis=1, keepdims=True) / C
    d_var_in = b[0] * d_var + b[1] * d_var.sum(axis=1, keepdims=True) / C
    # var_ln = mean_c(var_in) + mean_c((mu_in - mu_ln)**2)
    d_mu_in += b[1] * d_var.sum(axis=1, keepdims=True) * 2 * (saved.mu_in - saved.mu_ln[:, None]) / C
    if terms == 3 and saved.batch_grad:
        d_mu_in += a[2] * d_mu.sum(axis=0, keepdims=True) / N
        d_var_in += b[2] * d_var.sum(axis=0, keepdims=True) / N
        d_mu_in += b[2] * d_var.sum(axis=0, keepdims=True) * 2 * (saved.mu_in - saved.mu_bn[None, :]) / N
    # dx = w * inv * dy + d_mu_in / M + d_var_in * 2 (x - mu_in) / M, as the
    # elementwise kernel's a * dy - b * (x - center) - k
    coef_a = (inv * w).reshape(-1)
    coef_b = (-2.0 * d_var_in / M).reshape(-1)
    center, term = ck.centered(saved.mu_in.reshape(-1), dt, coef_b)
    coef_k = -(d_mu_in.reshape(-1) / M) + term
    dx = _pool.empty(saved.shape, dt)
    _kernels.batch_bwd_input(kv(flat), kv(gflat), kv(dx.reshape(1, N * C, M)), center, coef_a,
                             coef_b, coef_k)
    # parameters: x_hat = (x - mu) * inv, so sum dy * x_hat = s_dyx * inv
    pdt = saved.pdt
    gw = (s_dyx * inv).sum(axis=0).astype(pdt) if need_weight else None
    gb = s_dy.sum(axis=0).astype(pdt) if need_bias else None
    # mixing logits: dL/da_k = sum d_mu * mu_k, then through the softmax
    da = np.array([(d_mu * saved.stats[k][0]).sum() for k in range(terms)])
    db = np.array([(d_var * saved.stats[k][1]).sum() for k in range(terms)])
    g_mean_w = (a * (da - (a * da).sum())).astype(pdt)
    g_var_w = (b * (db - (b * db).sum())).astype(pdt)
    return dx, gw, gb, g_mean_w, g_var_w
