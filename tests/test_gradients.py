"""Backward checked by central finite differences in float64."""
import numpy as np
import pytest

import fastnorm
import fastnorm.functional as F
from util import assert_layer_gradients, finite_differences as _fd




@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4), (2, 3, 2, 3), (2, 2, 2, 1, 3)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_gradients_by_finite_differences(shape, training, affine, rng):
    layer = {2: fastnorm.BatchNorm1d, 3: fastnorm.BatchNorm1d, 4: fastnorm.BatchNorm2d,
             5: fastnorm.BatchNorm3d}[len(shape)](shape[1], affine=affine, dtype=np.float64)
    C = shape[1]
    layer.running_mean[...] = rng.normal(size=C)
    layer.running_var[...] = rng.uniform(0.5, 2, C)
    if affine:
        layer.weight[...] = rng.uniform(0.5, 2, C)
        layer.bias[...] = rng.normal(size=C)
    x = rng.normal(size=shape) * 2 + 0.5
    g = rng.normal(size=shape)
    layer.train(training)
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()

    def loss():
        layer.running_mean[...] = rm  # keep eval statistics fixed across probes
        layer.running_var[...] = rv
        return float((layer(x) * g).sum())

    assert_layer_gradients(layer, x, g, loss)


@pytest.mark.parametrize("training", [True, False])
def test_functional_gradients_by_finite_differences(training, rng):
    x = rng.normal(size=(3, 2, 5))
    g = rng.normal(size=x.shape)
    rm, rv = rng.normal(size=2), rng.uniform(0.5, 2, 2)
    w, b = rng.uniform(0.5, 2, 2), rng.normal(size=2)

    def loss():
        return float((F.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training) * g).sum())

    dx, dw, db = F.batch_norm_backward(g, x, rm, rv, w, b, training=training)
    np.testing.assert_allclose(dx, _fd(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, _fd(loss, w), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, _fd(loss, b), rtol=1e-5, atol=1e-7)


from fastnorm import _catalogue as cat  # noqa: E402

GRAD_CASES = [(e, s) for e in cat.CATALOGUE for s in e.shapes[:2]]


@pytest.mark.parametrize("entry,shape", GRAD_CASES, ids=[cat.case_id(*c) for c in GRAD_CASES])
def test_catalogue_gradients_by_finite_differences(entry, shape, rng):
    """Every catalogue layer, as it configures it, float64, in each mode:
    the input gradient and every parameter gradient (SwitchableNorm's mixing
    logits included) against central finite differences."""
    layer = entry.layer(shape, np.float64, rng)
    x = rng.normal(size=shape) * 2 + 0.5
    g = rng.normal(size=shape)
    state = {k: np.array(getattr(layer, k), copy=True) for k in
             ("running_mean", "running_var", "num_batches_tracked")
             if getattr(layer, k, None) is not None}
    for mode in entry.modes:
        layer.train(mode == "train")

        def loss():
            for k, v in state.items():      # the same statistics at every probe
                getattr(layer, k)[...] = v
            return float((layer(x) * g).sum())
        assert_layer_gradients(layer, x, g, loss, params=entry.params)
