"""The layer catalogue (fastnorm/_catalogue.py) that the cross-cutting
suites and fastnorm-bench read: complete, and right about each layer.

- Every public layer class and functional is in it (a new one that is not
  fails here, before any suite silently skips it).
- For every entry, shape, dtype and mode: the layer's forward and backward
  match the entry's float64 reference twin, and the entry's functional pair
  gives the layer's bits; the shapes are of the ranks the entry claims;
  the large shape is large enough to use two threads and the output pool.
"""
import inspect

import numpy as np
import pytest

import fastnorm
import fastnorm.functional as F
from fastnorm import _catalogue as cat
from fastnorm import _pool
from fastnorm._native import kernels

TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-9, atol=1e-9)}


def test_every_public_layer_and_functional_is_listed():
    classes = {n for n in fastnorm.__all__ if inspect.isclass(getattr(fastnorm, n))
               and hasattr(getattr(fastnorm, n), "forward")}
    names = [e.name for e in cat.CATALOGUE]
    assert len(names) == len(set(names))
    assert set(names) == classes, (set(names) ^ classes)
    covered = {e.functional for e in cat.CATALOGUE} | {
        e.functional + "_backward" for e in cat.CATALOGUE} | set(cat.OTHER_FUNCTIONS)
    assert set(F.__all__) <= covered, set(F.__all__) - covered
    assert all(getattr(e.make((2, 4, 6, 8)[:max(e.ranks[0], 3)], np.float32), "forward", None)
               for e in cat.CATALOGUE)


@pytest.mark.parametrize("entry", cat.CATALOGUE, ids=lambda e: e.name)
def test_shapes_are_of_the_ranks_claimed(entry):
    for s in entry.shapes + entry.boundary + (entry.large,):
        unbatched = entry.scope == "instance" and len(s) + 1 in entry.ranks
        assert len(s) in entry.ranks or unbatched, (entry.name, s)
    assert all(np.prod(s) >= 2 ** 16 for s in entry.boundary), entry.name
    assert cat.nbytes(entry.large) >= _pool.THRESHOLD
    assert np.prod(entry.large) >= 2 ** 18


@pytest.mark.parametrize("entry,shape,dtype", cat.cases(),
                         ids=[cat.case_id(*c) for c in cat.cases()])
def test_layer_matches_reference_and_functional(entry, shape, dtype, rng):
    x = (rng.normal(size=shape) * 2 + 3).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    layer = entry.layer(shape, dtype, rng)
    for mode in entry.modes:
        training = mode == "train"
        layer.train(training)
        fresh = entry.layer(shape, dtype, np.random.default_rng(1))
        fresh.train(training)
        for k in ("weight", "bias", "running_mean", "running_var", "mean_weight",
                  "var_weight", "num_batches_tracked"):
            if getattr(layer, k, None) is not None:
                getattr(fresh, k)[...] = getattr(layer, k)
        ey, erm, erv = entry.reference(fresh, x, training)
        batched = x.ndim in entry.ranks
        fy = entry.functional_call(fresh, x, training) if batched else None
        y = layer(x)
        np.testing.assert_allclose(y, ey, **TOL[dtype], err_msg=f"{entry.name} {mode} y")
        if fy is not None:
            assert fy.tobytes() == y.tobytes(), f"{entry.name} {mode}: functional bits differ"
        if erm is not None:
            np.testing.assert_allclose(layer.running_mean, erm, **TOL[dtype])
            np.testing.assert_allclose(layer.running_var, erv, **TOL[dtype])
        dx = layer.backward(g)
        want = entry.reference_backward(fresh, x, g, training)
        if want is not None:
            np.testing.assert_allclose(dx, want[0], rtol=TOL[dtype]["rtol"] * 10,
                                       atol=TOL[dtype]["atol"] * 10, err_msg=f"{entry.name} dx")
            for p, w in zip(("weight_grad", "bias_grad"), want[1:]):
                if w is not None and getattr(layer, p, None) is not None:
                    np.testing.assert_allclose(getattr(layer, p), w,
                                               rtol=TOL[dtype]["rtol"] * 10,
                                               atol=TOL[dtype]["atol"] * 100)
        if batched:
            fg = entry.functional_backward(fresh, x, g, training)
            assert fg[0].tobytes() == dx.tobytes(), f"{entry.name} {mode}: functional dx differs"


@pytest.mark.skipif(not kernels.openmp_enabled() or kernels.max_threads() < 2,
                    reason="needs two OpenMP threads")
@pytest.mark.parametrize("entry", cat.CATALOGUE, ids=lambda e: e.name)
def test_large_shape_uses_two_threads_and_the_pool(entry):
    x = np.random.default_rng(0).normal(size=entry.large).astype(np.float32)
    layer = entry.layer(entry.large, np.float32)
    y = layer(x)
    assert kernels.threads_used() == 2, entry.name
    assert not y.flags.owndata      # a view of a pooled block
