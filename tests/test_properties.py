"""Property-based checks against the float64 reference over random shapes,
parameters and modes (derandomized under CI=true, see conftest.py)."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import fastnorm
import reference as ref

LAYERS = {2: fastnorm.BatchNorm1d, 3: fastnorm.BatchNorm1d, 4: fastnorm.BatchNorm2d,
          5: fastnorm.BatchNorm3d}


@st.composite
def cases(draw):
    rank = draw(st.integers(2, 5))
    shape = [draw(st.integers(1, 9)), draw(st.integers(1, 6))]
    shape += [draw(st.integers(1, 40 if rank == 3 else 7)) for _ in range(rank - 2)]
    if np.prod([shape[0]] + shape[2:]) < 2:
        shape[0] = 2
    return dict(shape=tuple(shape),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                training=draw(st.booleans()),
                affine=draw(st.booleans()),
                momentum=draw(st.one_of(st.none(), st.floats(0, 1))),
                eps=draw(st.sampled_from([1e-5, 1e-3, 0.5])),
                offset=draw(st.sampled_from([0.0, 3.0, -1e3])),
                scale=draw(st.sampled_from([1e-3, 1.0, 50.0])),
                seed=draw(st.integers(0, 2**31 - 1)))


@given(cases())
def test_forward_backward_match_reference(case):
    rng = np.random.default_rng(case["seed"])
    shape, dt = case["shape"], case["dtype"]
    C = shape[1]
    layer = LAYERS[len(shape)](C, eps=case["eps"], momentum=case["momentum"],
                               affine=case["affine"], dtype=dt)
    layer.running_mean[...] = rng.normal(size=C)
    layer.running_var[...] = rng.uniform(0.2, 3, C)
    if case["affine"]:
        layer.weight[...] = rng.uniform(-2, 2, C)
        layer.bias[...] = rng.normal(size=C)
    layer.train(case["training"])
    x = (rng.normal(size=shape) * case["scale"] + case["offset"]).astype(dt)
    g = rng.normal(size=shape).astype(dt)
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    y = layer(x)
    dx = layer.backward(g)
    ey, erm, erv, mean, var = ref.batch_norm(x, rm, rv, layer.weight, layer.bias,
                                             case["training"], case["momentum"],
                                             case["eps"], num_batches_tracked=1)
    edx, edw, edb = ref.batch_norm_backward(g, x, mean, var, layer.weight,
                                            case["training"], case["eps"])
    # float32: errors relative to the size of what is being computed
    tol = 1e-10 if dt == np.float64 else 2e-4
    n = x.size // C
    np.testing.assert_allclose(y, ey, rtol=tol, atol=tol * (1 + np.abs(ey).max()))
    np.testing.assert_allclose(dx, edx, rtol=tol, atol=tol * (1 + np.abs(edx).max()))
    if case["training"]:
        np.testing.assert_allclose(layer.running_mean, erm, rtol=tol, atol=tol * (1 + abs(case["offset"])))
        np.testing.assert_allclose(layer.running_var, erv, rtol=tol, atol=tol)
    if case["affine"]:
        np.testing.assert_allclose(layer.weight_grad, edw, rtol=tol, atol=tol * n)
        np.testing.assert_allclose(layer.bias_grad, edb, rtol=tol, atol=tol * n)
