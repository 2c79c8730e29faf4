"""Mergeable moments: (count, mean, M2) of data over some axes, computed by
the statistics kernels, and Chan's formula to merge two sets of them."""
import numbers
from collections import namedtuple

import numpy as np

from . import _checks as ck
from ._dtypes import kernel_view as kv
from ._native import kernels as _kernels


class Moments(namedtuple("Moments", ["count", "mean", "m2"])):
    """Partial statistics of some data: count (int64), mean and m2 (the sum
    of squared deviations from the mean, float64), arrays of one shape.

    Merge with merge_moments / reduce_moments; var and unbiased_var give the
    variances (NaN where the count is too small)."""

    __slots__ = ()

    @property
    def var(self):
        """Biased variance m2 / count (what normalisation uses)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.m2 / np.maximum(self.count, 1), np.nan)

    @property
    def unbiased_var(self):
        """m2 / (count - 1) (what running_var tracks)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 1, self.m2 / np.maximum(self.count - 1, 1), np.nan)


def _axes(axes, ndim, where):
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, numbers.Integral) and not isinstance(axes, bool):
        axes = (axes,)
    try:
        axes = tuple(axes)
    except TypeError:
        raise TypeError(f"{where}: axes must be an int, a sequence of ints or None, "
                        f"got {axes!r}") from None
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral):
            raise TypeError(f"{where}: axes must be ints, got {a!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"{where}: axis {a} is out of range for input of {ndim} dims")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: axes {axes} repeat an axis")
    return tuple(sorted(out))


def moments(x, axes=None):
    """Moments (count, mean, m2) of x over `axes` (an int, a sequence of ints,
    or None for all), computed in float64 by the same kernels as the layers'
    statistics (Welford/Chan over fixed units, so the same at any thread
    count).  float32 data is widened to a float64 temporary first (twice
    its size: pass chunks of a large dataset); so is data whose kept axes
    are not side by side (a transposed copy).  The arrays have x's shape without the reduced axes; count is the
    number of values reduced into each.  Merging the moments of the pieces of
    any split of x along the reduced axes gives those of x, to float64
    rounding.  An empty reduction gives count 0, mean 0, m2 0 (merging it
    changes nothing).  NaN and inf propagate to mean and m2.
    """
    where = "moments"
    x = ck.as_float_array(x, "x", where)
    ax = _axes(axes, x.ndim, where)
    keep = tuple(a for a in range(x.ndim) if a not in ax)
    out_shape = tuple(x.shape[a] for a in keep)
    K = int(np.prod(out_shape, dtype=np.int64))
    n = int(np.prod([x.shape[a] for a in ax], dtype=np.int64))
    count = np.full(out_shape, n, np.int64)
    mean = np.zeros(K)
    var = np.zeros(K)
    if n and K:
        # float32 data is widened first: the float64 kernels add in float64
        # throughout, so any split merges to the whole to float64 rounding
        # (the float32 kernels' block sums would round at float32 precision)
        if not keep or keep == tuple(range(keep[0], keep[-1] + 1)):
            # kept axes side by side: (before, kept, after), a view of x
            N = int(np.prod(x.shape[:keep[0]] if keep else (), dtype=np.int64))
            L = int(np.prod(x.shape[keep[-1] + 1:] if keep else x.shape, dtype=np.int64))
            x64 = x.astype(np.float64) if x.dtype != np.float64 else ck.for_kernel(x)
            x3 = x64.reshape(N if keep else 1, K, L)
        else:
            # reduced axes first, kept ones last: (reduced, kept, 1), a copy
            x3 = np.array(np.transpose(x, ax + keep), dtype=np.float64,
                          order="C").reshape(n, K, 1)
        _kernels.batch_stats(kv(x3), mean, var)
    return Moments(count, mean.reshape(out_shape), (var * n).reshape(out_shape))


def _as_moments(m, name, where):
    try:
        count, mean, m2 = m
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be Moments (count, mean, m2), got "
                        f"{type(m).__name__}") from None
    count = np.asarray(count)
    mean = np.asarray(mean, np.float64)
    m2 = np.asarray(m2, np.float64)
    if count.dtype.kind not in "iu":
        raise TypeError(f"{where}: {name}.count must be integers, got {count.dtype}")
    if not (count.shape == mean.shape == m2.shape):
        raise ValueError(f"{where}: {name} has count, mean, m2 of shapes "
                         f"{count.shape}, {mean.shape}, {m2.shape}; expected one shape")
    if (count < 0).any():
        raise ValueError(f"{where}: {name}.count has negative values")
    return count.astype(np.int64), mean, m2


def merge_moments(a, b):
    """Moments of the union of the data behind a and b (Chan et al.):
    n = na + nb, delta = mean_b - mean_a, mean = mean_a + delta * nb / n,
    m2 = m2_a + m2_b + delta**2 * na * nb / n, elementwise (shapes must
    match).  A side with count 0 contributes nothing."""
    where = "merge_moments"
    na, ma, sa = _as_moments(a, "a", where)
    nb, mb, sb = _as_moments(b, "b", where)
    if na.shape != nb.shape:
        raise ValueError(f"{where}: a has shape {na.shape}, b has shape {nb.shape}; "
                         "expected the same")
    n = na + nb
    with np.errstate(invalid="ignore", divide="ignore"):
        fa = na.astype(np.float64)
        fb = nb.astype(np.float64)
        tot = np.maximum(n, 1).astype(np.float64)
        delta = mb - ma
        mean = ma + delta * (fb / tot)
        m2 = sa + sb + delta * delta * (fa * fb / tot)
    # an empty side contributes nothing (and its mean is not used at all)
    mean = np.where(na == 0, mb, np.where(nb == 0, ma, mean))
    m2 = np.where(na == 0, sb, np.where(nb == 0, sa, m2))
    return Moments(n, mean, m2)


def reduce_moments(parts):
    """Merge a sequence of Moments (at least one) in a balanced tree, so
    rounding grows with log(len(parts)) rather than len(parts)."""
    parts = list(parts)
    if not parts:
        raise ValueError("reduce_moments: expected at least one Moments, got none")
    parts = [Moments(*_as_moments(p, f"parts[{i}]", "reduce_moments"))
             for i, p in enumerate(parts)]
    while len(parts) > 1:
        nxt = [merge_moments(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]
