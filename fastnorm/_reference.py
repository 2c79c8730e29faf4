"""Slow, independent float64 NumPy twins of fastnorm's operations.

Written from the textbook definitions, sharing no code with the rest of
fastnorm: the tests compare fastnorm against these, and the layer
catalogue (_catalogue.py) names each layer's twin.  Not a public API.
"""
import numpy as np


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bcast(v, ndim):
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
               training=False, momentum=0.1, eps=1e-5, num_batches_tracked=None):
    """Returns (y, new_running_mean, new_running_var, mean, var) in float64.

    momentum=None: cumulative average, factor 1 / num_batches_tracked (the
    count after this batch).
    """
    x = np.asarray(x, np.float64)
    new_rm = None if running_mean is None else np.array(running_mean, np.float64)
    new_rv = None if running_var is None else np.array(running_var, np.float64)
    if training:
        mean = x.mean(axis=_axes(x))
        var = ((x - _bcast(mean, x.ndim)) ** 2).mean(axis=_axes(x))
        n = x.size // x.shape[1]
        if new_rm is not None:
            f = momentum if momentum is not None else 1.0 / num_batches_tracked
            new_rm = (1 - f) * new_rm + f * mean
            new_rv = (1 - f) * new_rv + f * var * n / (n - 1)
    else:
        mean = np.asarray(running_mean, np.float64)
        var = np.asarray(running_var, np.float64)
    y = (x - _bcast(mean, x.ndim)) / np.sqrt(_bcast(var, x.ndim) + eps)
    if weight is not None:
        y = y * _bcast(weight, x.ndim)
    if bias is not None:
        y = y + _bcast(bias, x.ndim)
    return y, new_rm, new_rv, mean, var


def batch_norm_backward(dy, x, mean, var, weight=None, training=True, eps=1e-5):
    """(dx, dweight, dbias) of sum(dy * batch_norm(x)) in float64.

    training=True: mean and var are the batch's own statistics (they depend
    on x); training=False: they are constants (running statistics).
    """
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    ax = _axes(x)
    m = x.size // x.shape[1]
    invstd = 1.0 / np.sqrt(_bcast(var, x.ndim) + eps)
    xhat = (x - _bcast(mean, x.ndim)) * invstd
    w = _bcast(weight, x.ndim) if weight is not None else 1.0
    dxhat = dy * w
    if training:
        dx = invstd / m * (m * dxhat - dxhat.sum(axis=ax, keepdims=True)
                           - xhat * (dxhat * xhat).sum(axis=ax, keepdims=True))
    else:
        dx = dxhat * invstd
    return dx, (dy * xhat).sum(axis=ax), dy.sum(axis=ax)


def group_norm(x, groups, weight=None, bias=None, eps=1e-5):
    """Returns (y, mean, var) in float64; mean, var of shape (N, groups)."""
    x = np.asarray(x, np.float64)
    N, C = x.shape[:2]
    xg = x.reshape(N, groups, -1)
    mean = xg.mean(axis=2)
    var = ((xg - mean[..., None]) ** 2).mean(axis=2)
    y = ((xg - mean[..., None]) / np.sqrt(var[..., None] + eps)).reshape(x.shape)
    if weight is not None:
        y = y * _bcast(weight, x.ndim)
    if bias is not None:
        y = y + _bcast(bias, x.ndim)
    return y, mean, var


def group_norm_backward(dy, x, groups, weight=None, eps=1e-5):
    """(dx, dweight, dbias) of sum(dy * group_norm(x)) in float64."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    N, C = x.shape[:2]
    _, mean, var = group_norm(x, groups, eps=eps)
    invstd = 1.0 / np.sqrt(var + eps)
    xg = x.reshape(N, groups, -1)
    xhat = (xg - mean[..., None]) * invstd[..., None]
    w = _bcast(weight, x.ndim) if weight is not None else 1.0
    dxhat = (dy * w).reshape(N, groups, -1)
    m = xg.shape[2]
    dx = invstd[..., None] / m * (m * dxhat - dxhat.sum(axis=2, keepdims=True)
                                  - xhat * (dxhat * xhat).sum(axis=2, keepdims=True))
    ax = _axes(x)
    xhat = xhat.reshape(x.shape)
    return dx.reshape(x.shape), (dy * xhat).sum(axis=ax), dy.sum(axis=ax)


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5, num_batches_tracked=None):
    """Returns (y, new_running_mean, new_running_var) in float64.

    With instance statistics, the running statistics move towards the batch
    average of the instance means and unbiased variances.
    """
    x = np.asarray(x, np.float64)
    C = x.shape[1]
    if not use_input_stats:
        return batch_norm(x, running_mean, running_var, weight, bias, False, eps=eps)[:3]
    y, mean, var = group_norm(x, C, weight, bias, eps)
    new_rm = None if running_mean is None else np.array(running_mean, np.float64)
    new_rv = None if running_var is None else np.array(running_var, np.float64)
    if new_rm is not None:
        n = x[0, 0].size
        f = momentum if momentum is not None else 1.0 / num_batches_tracked
        new_rm = (1 - f) * new_rm + f * mean.mean(axis=0)
        new_rv = (1 - f) * new_rv + f * (var * n / (n - 1)).mean(axis=0)
    return y, new_rm, new_rv


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, rms=False):
    """LayerNorm (or RMSNorm with rms=True) in float64 over the trailing dims."""
    x = np.asarray(x, np.float64)
    ax = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    if rms:
        y = x / np.sqrt((x * x).mean(axis=ax, keepdims=True) + eps)
    else:
        mean = x.mean(axis=ax, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=ax, keepdims=True)
        y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def layer_norm_backward(dy, x, normalized_shape, weight=None, eps=1e-5, rms=False):
    """(dx, dweight, dbias) of sum(dy * layer_norm(x)) in float64."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    k = len(normalized_shape)
    ax = tuple(range(x.ndim - k, x.ndim))
    lead = tuple(range(x.ndim - k))
    d = int(np.prod(normalized_shape))
    w = np.asarray(weight, np.float64) if weight is not None else 1.0
    g = dy * w
    if rms:
        inv = 1.0 / np.sqrt((x * x).mean(axis=ax, keepdims=True) + eps)
        xhat = x * inv
        dx = inv * g - x * inv ** 3 / d * (g * x).sum(axis=ax, keepdims=True)
    else:
        mean = x.mean(axis=ax, keepdims=True)
        inv = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=ax, keepdims=True) + eps)
        xhat = (x - mean) * inv
        dx = inv / d * (d * g - g.sum(axis=ax, keepdims=True)
                        - xhat * (g * xhat).sum(axis=ax, keepdims=True))
    return dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """(y, D) in float64: D = k + alpha / size * window sum of x**2 over
    channels [c - size // 2, c + (size - 1) // 2], zero-padded."""
    x = np.asarray(x, np.float64)
    C = x.shape[1]
    sq = x * x
    s = np.zeros_like(x)
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
        s[:, c] = sq[:, lo:hi + 1].sum(axis=1)
    d = k + alpha / size * s
    return x * d ** -beta, d


def local_response_norm_backward(dy, x, size, alpha=1e-4, beta=0.75, k=1.0):
    """dx of sum(dy * local_response_norm(x)) in float64, by the chain rule
    written element by element (no sliding sums)."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    _, d = local_response_norm(x, size, alpha, beta, k)
    C = x.shape[1]
    dx = dy * d ** -beta
    t = dy * x * d ** (-beta - 1)
    for j in range(C):
        # channels c whose window holds j
        cs = [c for c in range(C) if c - size // 2 <= j <= c + (size - 1) // 2]
        dx[:, j] -= 2 * alpha * beta / size * x[:, j] * t[:, cs].sum(axis=1)
    return dx


def switchable_norm(x, mean_weight, var_weight, weight=None, bias=None, eps=1e-5,
                    training=True, running_mean=None, running_var=None, using_bn=True,
                    momentum=0.1, num_batches_tracked=1):
    """Switchable normalisation written from the paper's equations, float64:
    each statistic computed directly over its own axes (no merging).
    Returns (y, new_running_mean, new_running_var)."""
    x = np.asarray(x, np.float64)
    sp = tuple(range(2, x.ndim))
    mu_in, var_in = x.mean(axis=sp, keepdims=True), x.var(axis=sp, keepdims=True)
    ln = tuple(range(1, x.ndim))
    mu_ln, var_ln = x.mean(axis=ln, keepdims=True), x.var(axis=ln, keepdims=True)
    mus, vars_ = [mu_in, mu_ln], [var_in, var_ln]
    new_rm, new_rv = running_mean, running_var
    if using_bn:
        bn = (0,) + sp
        if training:
            mu_bn, var_bn = x.mean(axis=bn, keepdims=True), x.var(axis=bn, keepdims=True)
            n = x.size // x.shape[1]
            f = momentum if momentum is not None else 1.0 / num_batches_tracked
            new_rm = (1 - f) * np.asarray(running_mean, np.float64) + f * mu_bn.ravel()
            new_rv = (1 - f) * np.asarray(running_var, np.float64) + f * var_bn.ravel() * n / (n - 1)
        else:
            mu_bn = _bcast(np.asarray(running_mean, np.float64), x.ndim)
            var_bn = _bcast(np.asarray(running_var, np.float64), x.ndim)
        mus.append(mu_bn)
        vars_.append(var_bn)

    def softmax(v):
        e = np.exp(np.asarray(v, np.float64) - np.max(v))
        return e / e.sum()
    a, b = softmax(mean_weight), softmax(var_weight)
    mu = sum(ak * m for ak, m in zip(a, mus))
    var = sum(bk * v for bk, v in zip(b, vars_))
    y = (x - mu) / np.sqrt(var + eps)
    if weight is not None:
        y = y * _bcast(np.asarray(weight, np.float64), x.ndim)
    if bias is not None:
        y = y + _bcast(np.asarray(bias, np.float64), x.ndim)
    return y, new_rm, new_rv
