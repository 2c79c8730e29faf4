"""Mergeable moments: moments() against a float64 two-pass reference, and
the merge of any split equal to the moments of the whole."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastnorm.functional as F

SHAPE = (6, 5, 7, 9)
AXES = [None, 0, -1, (0, 2, 3), (2, 3), (0,), (1, 3), (0, 2), (0, 1, 2, 3), (3, 0)]


def _reference(x, axes):
    x = np.asarray(x, np.float64)
    if axes is None:
        axes = tuple(range(x.ndim))
    mean = x.mean(axis=axes)
    m2 = ((x - x.mean(axis=axes, keepdims=True)) ** 2).sum(axis=axes)
    n = x.size // max(mean.size, 1) if x.size else 0
    return n, mean, m2


def _data(dt, offset=0.0, seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * 2 + offset).astype(dt)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("axes", AXES, ids=str)
def test_moments_match_reference(axes, dt):
    for offset in (0.0, 1e4):
        x = _data(dt, offset)
        m = F.moments(x, axes)
        n, mean, m2 = _reference(x, axes)
        assert m.mean.shape == mean.shape == m.m2.shape == m.count.shape
        assert (m.count == n).all() and m.count.dtype == np.int64
        np.testing.assert_allclose(m.mean, mean, rtol=1e-13, atol=1e-13 * (1 + offset))
        np.testing.assert_allclose(m.m2, m2, rtol=1e-11)
        np.testing.assert_allclose(m.var, m2 / n, rtol=1e-11)
        np.testing.assert_allclose(m.unbiased_var, m2 / (n - 1), rtol=1e-11)


def _split(x, axis, cuts):
    return np.split(x, cuts, axis=axis)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("axes,split_axis", [((0, 2, 3), 0), ((0, 2, 3), 2), ((0, 2, 3), 3),
                                             (None, 1), ((2, 3), 3), ((0,), 0)])
def test_any_split_merges_to_the_whole(axes, split_axis, dt):
    rng = np.random.default_rng(4)
    x = _data(dt, 1e3, seed=1, shape=(13, 5, 11, 17))
    whole = F.moments(x, axes)
    for trial in range(6):
        k = rng.integers(1, 6)
        cuts = np.sort(rng.integers(0, x.shape[split_axis] + 1, size=k))  # empty pieces too
        parts = [F.moments(p, axes) for p in _split(x, split_axis, cuts)]
        merged = F.reduce_moments(parts)
        seq = parts[0]
        for p in parts[1:]:
            seq = F.merge_moments(seq, p)
        for m in (merged, seq):
            assert (m.count == whole.count).all()
            np.testing.assert_allclose(m.mean, whole.mean, rtol=1e-13)
            np.testing.assert_allclose(m.m2, whole.m2, rtol=1e-12)


def test_chunked_dataset_statistics_like_batchnorm():
    """The documented use: per-channel statistics of a dataset too large for
    memory, in chunks of samples, equal to one pass over everything."""
    x = _data(np.float32, 5.0, seed=2, shape=(64, 3, 16, 16))
    total = None
    for chunk in np.array_split(x, 7):
        m = F.moments(chunk, axes=(0, 2, 3))
        total = m if total is None else F.merge_moments(total, m)
    ref = x.astype(np.float64)
    np.testing.assert_allclose(total.mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(total.var, ref.var(axis=(0, 2, 3)), rtol=1e-10)


def test_empty_moments_are_neutral():
    x = _data(np.float64)
    empty = F.moments(x[:0], axes=(0, 2, 3))
    assert (empty.count == 0).all() and (empty.mean == 0).all() and (empty.m2 == 0).all()
    assert np.isnan(empty.var).all()
    full = F.moments(x, axes=(0, 2, 3))
    for m in (F.merge_moments(empty, full), F.merge_moments(full, empty)):
        assert m.mean.tobytes() == full.mean.tobytes()
        assert m.m2.tobytes() == full.m2.tobytes()


def test_moments_are_the_same_at_any_thread_count():
    x = _data(np.float32, 3.0, seed=3, shape=(32, 8, 64, 65))
    got = []
    for t in (1, 2):
        with threadpool_limits(limits=t, user_api="openmp"):
            got.append(F.moments(x, (0, 2, 3)))
            got.append(F.moments(x, (1, 3)))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(got[0], got[2]))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(got[1], got[3]))


def test_nonfinite_values_propagate():
    x = _data(np.float64)
    x[0, 1, 0, 0] = np.nan
    m = F.moments(x, (0, 2, 3))
    assert np.isnan(m.mean[1]) and np.isnan(m.m2[1])
    assert np.isfinite(m.mean[[0, 2, 3, 4]]).all()


@pytest.mark.parametrize("call,exc,words", [
    (lambda x: F.moments(x, (0, 0)), ValueError, ["repeat an axis"]),
    (lambda x: F.moments(x, 4), ValueError, ["axis 4 is out of range", "4 dims"]),
    (lambda x: F.moments(x, 1.5), TypeError, ["axes must be", "1.5"]),
    (lambda x: F.moments(x.astype(np.int32), 0), TypeError, ["float32, float64, bfloat16 or float16", "int32"]),
    (lambda x: F.merge_moments(F.moments(x, 0), F.moments(x, 1)), ValueError,
     ["expected the same"]),
    (lambda x: F.merge_moments((1, 2), F.moments(x, 0)), TypeError, ["Moments"]),
    (lambda x: F.merge_moments((np.ones(2), np.ones(2), np.ones(2)),
                               (np.ones(2), np.ones(2), np.ones(2))), TypeError,
     ["count must be integers"]),
    (lambda x: F.reduce_moments([]), ValueError, ["at least one"]),
])
def test_bad_arguments(call, exc, words):
    x = _data(np.float64)
    with pytest.raises(exc) as info:
        call(x)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
