"""Property-based checks of every layer against the float64 reference over random shapes,
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


def _tol(dt):
    return 1e-10 if dt == np.float64 else 3e-4


def _close(got, want, dt, scale=1.0):
    tol = _tol(dt)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale * (1 + np.abs(want).max()))


@st.composite
def data(draw, shape, dt):
    seed = draw(st.integers(0, 2**31 - 1))
    offset = draw(st.sampled_from([0.0, 3.0, -1e3]))
    scale = draw(st.sampled_from([1e-2, 1.0, 50.0]))
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * scale + offset).astype(dt)
    g = rng.normal(size=shape).astype(dt)
    return rng, x, g


DTYPES = st.sampled_from([np.float32, np.float64])


@st.composite
def instance_cases(draw):
    rank = draw(st.integers(3, 5))
    shape = (draw(st.integers(1, 5)), draw(st.integers(1, 6)),
             *[draw(st.integers(1, 40 if rank == 3 else 7)) for _ in range(rank - 2)])
    if np.prod(shape[2:]) < 2:
        shape = shape[:2] + (2,) * (rank - 2)
    return dict(shape=shape, dt=draw(DTYPES), affine=draw(st.booleans()),
                track=draw(st.booleans()), training=draw(st.booleans()),
                momentum=draw(st.one_of(st.none(), st.floats(0, 1))),
                eps=draw(st.sampled_from([1e-5, 1e-2])))


@given(instance_cases(), st.data())
def test_instance_norm_matches_reference(case, d):
    shape, dt = case["shape"], case["dt"]
    rng, x, g = d.draw(data(shape, dt))
    cls = {3: fastnorm.InstanceNorm1d, 4: fastnorm.InstanceNorm2d,
           5: fastnorm.InstanceNorm3d}[len(shape)]
    C = shape[1]
    layer = cls(C, eps=case["eps"], momentum=case["momentum"], affine=case["affine"],
                track_running_stats=case["track"], dtype=dt)
    if case["affine"]:
        layer.weight[...] = rng.uniform(-2, 2, C)
        layer.bias[...] = rng.normal(size=C)
    if case["track"]:
        layer.running_mean[...] = rng.normal(size=C)
        layer.running_var[...] = rng.uniform(0.2, 3, C)
    layer.train(case["training"])
    rm = None if layer.running_mean is None else layer.running_mean.copy()
    rv = None if layer.running_var is None else layer.running_var.copy()
    use_input = case["training"] or not case["track"]
    update = case["training"] and case["track"]
    y = layer(x)
    dx = layer.backward(g)
    ey, erm, erv = ref.instance_norm(x, rm if update or not use_input else None,
                                     rv if update or not use_input else None,
                                     layer.weight, layer.bias, use_input,
                                     case["momentum"], case["eps"], num_batches_tracked=1)
    _close(y, ey, dt)
    if use_input:
        edx, edw, edb = ref.group_norm_backward(g, x, C, layer.weight, case["eps"])
    else:
        mean, var = np.asarray(rm, np.float64), np.asarray(rv, np.float64)
        edx, edw, edb = ref.batch_norm_backward(g, x, mean, var, layer.weight, False,
                                                case["eps"])
    _close(dx, edx, dt)
    if update:
        _close(layer.running_mean, erm, dt, scale=1e3)
        _close(layer.running_var, erv, dt, scale=10)
    elif case["track"]:
        assert layer.running_mean.tobytes() == rm.tobytes()
    if case["affine"]:
        n = x.size // C
        _close(layer.weight_grad, edw, dt, scale=n)
        _close(layer.bias_grad, edb, dt, scale=n)


@st.composite
def group_cases(draw):
    groups = draw(st.integers(1, 4))
    shape = (draw(st.integers(1, 5)), groups * draw(st.integers(1, 4)),
             *[draw(st.integers(1, 9)) for _ in range(draw(st.integers(0, 2)))])
    return dict(shape=shape, groups=groups, dt=draw(DTYPES), affine=draw(st.booleans()),
                eps=draw(st.sampled_from([1e-5, 1e-2])))


@given(group_cases(), st.data())
def test_group_norm_matches_reference(case, d):
    shape, dt, G = case["shape"], case["dt"], case["groups"]
    rng, x, g = d.draw(data(shape, dt))
    C = shape[1]
    layer = fastnorm.GroupNorm(G, C, eps=case["eps"], affine=case["affine"], dtype=dt)
    if case["affine"]:
        layer.weight[...] = rng.uniform(-2, 2, C)
        layer.bias[...] = rng.normal(size=C)
    y = layer(x)
    dx = layer.backward(g)
    ey = ref.group_norm(x, G, layer.weight, layer.bias, case["eps"])[0]
    edx, edw, edb = ref.group_norm_backward(g, x, G, layer.weight, case["eps"])
    _close(y, ey, dt)
    _close(dx, edx, dt)
    if case["affine"]:
        n = x.size // C
        _close(layer.weight_grad, edw, dt, scale=n)
        _close(layer.bias_grad, edb, dt, scale=n)


@st.composite
def row_cases(draw):
    k = draw(st.integers(1, 2))
    nshape = tuple(draw(st.integers(1, 70)) for _ in range(k))
    lead = tuple(draw(st.integers(0, 6)) for _ in range(draw(st.integers(0, 2))))
    return dict(shape=lead + nshape, nshape=nshape, dt=draw(DTYPES),
                affine=draw(st.booleans()), bias=draw(st.booleans()),
                rms=draw(st.booleans()), eps=draw(st.sampled_from([1e-5, 1e-2, None])))


@given(row_cases(), st.data())
def test_layer_and_rms_norm_match_reference(case, d):
    shape, dt, ns = case["shape"], case["dt"], case["nshape"]
    rng, x, g = d.draw(data(shape, dt))
    rms = case["rms"]
    if rms:
        layer = fastnorm.RMSNorm(ns, eps=case["eps"], elementwise_affine=case["affine"],
                                 dtype=dt)
        eps = case["eps"] if case["eps"] is not None else float(np.finfo(dt).eps)
    else:
        eps = case["eps"] or 1e-5
        layer = fastnorm.LayerNorm(ns, eps=eps, elementwise_affine=case["affine"],
                                   bias=case["bias"], dtype=dt)
    if layer.weight is not None:
        layer.weight[...] = rng.uniform(-2, 2, ns)
    if layer.bias is not None:
        layer.bias[...] = rng.normal(size=ns)
    y = layer(x)
    dx = layer.backward(g)
    if x.size == 0:
        assert y.shape == dx.shape == shape
        return
    ey = ref.layer_norm(x, ns, layer.weight, layer.bias, eps, rms=rms)
    edx, edw, edb = ref.layer_norm_backward(g, x, ns, layer.weight, eps, rms=rms)
    # RMSNorm of data with a tiny rms and eps: invstd is huge, so are errors
    # relative to the inputs; the reference is float64 of the same inputs
    _close(y, ey, dt)
    _close(dx, edx, dt)
    n = x.size // int(np.prod(ns))
    if layer.weight is not None:
        _close(layer.weight_grad, edw, dt, scale=n)
    if layer.bias is not None:
        _close(layer.bias_grad, edb, dt, scale=n)


@st.composite
def lrn_cases(draw):
    shape = (draw(st.integers(0, 4)), draw(st.integers(1, 12)),
             *[draw(st.integers(1, 9)) for _ in range(draw(st.integers(1, 2)))])
    return dict(shape=shape, dt=draw(DTYPES), size=draw(st.integers(1, 7)),
                alpha=draw(st.sampled_from([1e-4, 0.1, 1.0])),
                beta=draw(st.sampled_from([0.75, 0.5, 1.3])),
                k=draw(st.sampled_from([1.0, 2.0, 0.5])))


@given(lrn_cases(), st.data())
def test_local_response_norm_matches_reference(case, d):
    shape, dt = case["shape"], case["dt"]
    rng, x, g = d.draw(data(shape, dt))
    x = (x / (1 + np.abs(x).max(initial=0))).astype(dt) * 3   # keep x**2 sums moderate
    args = (case["size"], case["alpha"], case["beta"], case["k"])
    layer = fastnorm.LocalResponseNorm(*args)
    y = layer(x)
    dx = layer.backward(g)
    if x.size == 0:
        assert y.shape == dx.shape == shape
        return
    _close(y, ref.local_response_norm(x, *args)[0], dt)
    _close(dx, ref.local_response_norm_backward(g, x, *args), dt)


# ---------------------------------------------------------------------------
# Every layer of the catalogue (SwitchableNorm and SyncBatchNorm included),
# as it configures it, over random shapes of its ranks, scales, offsets,
# modes and dtypes: forward, running statistics and backward against the
# entry's float64 twin (SwitchableNorm's backward: tests/test_switchable.py).

from fastnorm import _catalogue as cat  # noqa: E402


@st.composite
def catalogue_cases(draw):
    entry = draw(st.sampled_from(cat.CATALOGUE))
    rank = draw(st.sampled_from([r for r in entry.ranks if 2 <= r <= 5] or [entry.ranks[0]]))
    shape = [draw(st.integers(2, 7)), draw(st.integers(2, 6))]
    shape += [draw(st.integers(2, 30 if rank == 3 else 6)) for _ in range(rank - 2)]
    return dict(entry=entry, shape=tuple(shape),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                training=draw(st.booleans()) if "eval" in entry.modes else True,
                offset=draw(st.sampled_from([0.0, 3.0, -1e3])),
                scale=draw(st.sampled_from([1e-2, 1.0, 50.0])),
                seed=draw(st.integers(0, 2**31 - 1)))


@given(catalogue_cases())
def test_catalogue_layers_match_their_twins(case):
    entry, shape, dt = case["entry"], case["shape"], case["dtype"]
    rng = np.random.default_rng(case["seed"])
    layer = entry.layer(shape, dt, rng)
    layer.train(case["training"])
    x = (rng.normal(size=shape) * case["scale"] + case["offset"]).astype(dt)
    g = rng.normal(size=shape).astype(dt)
    ey, erm, erv = entry.reference(layer, x, case["training"])
    want = entry.reference_backward(layer, x, g, case["training"])
    y = layer(x)
    dx = layer.backward(g)
    # float32: errors relative to the size of what is being computed
    tol = 1e-9 if dt == np.float64 else 3e-4
    np.testing.assert_allclose(y, ey, rtol=tol, atol=tol * (1 + np.abs(ey).max()))
    if erm is not None:
        np.testing.assert_allclose(layer.running_mean, erm, rtol=tol,
                                   atol=tol * (1 + np.abs(erm).max()))
        np.testing.assert_allclose(layer.running_var, erv, rtol=tol,
                                   atol=tol * (1 + np.abs(erv).max()))
    if want is not None:
        edx = want[0]
        np.testing.assert_allclose(dx, edx, rtol=10 * tol, atol=10 * tol * (1 + np.abs(edx).max()))
