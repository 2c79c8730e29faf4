"""Behaviour every layer shares: backward before forward, reset_parameters,
state_dict round trip."""
import numpy as np
import pytest

import fastnorm

LAYERS = [
    (lambda: fastnorm.BatchNorm2d(4), (2, 4, 3, 3)),
    (lambda: fastnorm.InstanceNorm2d(4, affine=True, track_running_stats=True), (2, 4, 3, 3)),
    (lambda: fastnorm.GroupNorm(2, 4), (2, 4, 3, 3)),
    (lambda: fastnorm.LayerNorm((3, 3)), (2, 4, 3, 3)),
    (lambda: fastnorm.RMSNorm(3), (2, 4, 3, 3)),
    (lambda: fastnorm.LocalResponseNorm(3), (2, 4, 3, 3)),
]
IDS = ["batch", "instance", "group", "layer", "rms", "lrn"]


@pytest.mark.parametrize("make,shape", LAYERS, ids=IDS)
def test_backward_before_forward_is_refused(make, shape):
    with pytest.raises(RuntimeError, match="no forward call"):
        make().backward(np.ones(shape, np.float32))


@pytest.mark.parametrize("make,shape", LAYERS, ids=IDS)
def test_reset_parameters_and_state_dict_round_trip(make, shape, rng):
    layer = make()
    layer(rng.normal(size=shape).astype(np.float32))
    for k in ("weight", "bias"):
        if getattr(layer, k, None) is not None:
            getattr(layer, k)[...] = rng.normal(size=getattr(layer, k).shape)
    sd = layer.state_dict()
    other = make()
    other.load_state_dict(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(getattr(other, k), v)
    if not hasattr(layer, "reset_parameters"):
        assert sd == {}          # LocalResponseNorm: no parameters, no state
        return
    layer.reset_parameters()
    if layer.weight is not None:
        assert (layer.weight == 1).all()
    if getattr(layer, "bias", None) is not None:
        assert (layer.bias == 0).all()
