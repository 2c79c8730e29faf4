"""LayerNorm and RMSNorm: float64 reference, PyTorch parity, finite
differences, thread invariance, bad input."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastnorm
import fastnorm.functional as F
import reference as ref
from util import assert_layer_gradients
from fastnorm._native import kernels as _kernels

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}
GTOL = {np.float32: 1e-4, np.float64: 1e-10}
CASES = [((768,), (16, 768)), ((3, 4), (2, 5, 3, 4)), ((5,), (5,)), ((4100,), (3, 4100)),
         ((7,), (300, 7)), ((1,), (4, 1)), ((9, 33), (70, 9, 33)), ((50,), (130, 50))]


def _layer(rms, nshape, dtype, **kw):
    return (fastnorm.RMSNorm if rms else fastnorm.LayerNorm)(nshape, dtype=dtype, **kw)


def _params(layer, rng):
    if layer.weight is not None:
        layer.weight[...] = rng.uniform(-2, 2, layer.weight.shape)
    if layer.bias is not None:
        layer.bias[...] = rng.normal(size=layer.bias.shape)


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nshape,shape", CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_matches_reference(rms, nshape, shape, dtype, affine, rng):
    layer = _layer(rms, nshape, dtype, elementwise_affine=affine)
    _params(layer, rng)
    x = (rng.normal(size=shape) * 3 + 1).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    eps = 1e-5 if not rms else float(np.finfo(dtype).eps)
    y = layer(x)
    ey = ref.layer_norm(x, nshape, layer.weight, layer.bias, eps, rms)
    np.testing.assert_allclose(y, ey, **TOL[dtype])
    dx = layer.backward(g)
    edx, edw, edb = ref.layer_norm_backward(g, x, nshape, layer.weight, eps, rms)
    tol = GTOL[dtype]
    np.testing.assert_allclose(dx, edx, rtol=tol, atol=tol * (1 + np.abs(edx).max()))
    rows = x.size // int(np.prod(nshape))
    if affine:
        np.testing.assert_allclose(layer.weight_grad, edw, rtol=tol, atol=tol * rows)
        assert layer.weight_grad.shape == nshape and layer.weight_grad.dtype == dtype
        if not rms:
            np.testing.assert_allclose(layer.bias_grad, edb, rtol=tol, atol=tol * rows)
    if rms:
        fy = F.rms_norm(x, nshape, layer.weight)
        fdx, fdw, fdb = F.rms_norm_backward(g, x, nshape, layer.weight)
        assert fdb is None
    else:
        fy = F.layer_norm(x, nshape, layer.weight, layer.bias)
        fdx, fdw, fdb = F.layer_norm_backward(g, x, nshape, layer.weight, layer.bias)
    assert fy.tobytes() == y.tobytes() and fdx.tobytes() == dx.tobytes()


def test_large_offset_float32_is_accurate(rng):
    x = (1e4 + rng.normal(size=(64, 512))).astype(np.float32)
    err = np.abs(fastnorm.LayerNorm(512)(x) - ref.layer_norm(x, (512,))).max()
    assert err < 5e-6, err




@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_gradients_by_finite_differences(rms, rng):
    layer = _layer(rms, (2, 3), np.float64, eps=1e-3)
    _params(layer, rng)
    x = rng.normal(size=(3, 2, 3)) + 0.5
    assert layer.weight is not None and (layer.bias is None) == rms
    assert_layer_gradients(layer, x, rng.normal(size=x.shape))


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nshape,shape", [((768,), (257, 768)), ((300001,), (1, 300001)),
                                          ((4097,), (65, 4097)), ((5,), (20001, 5))],
                         ids=["rows", "one-huge-row", "off-boundary", "short-rows"])
def test_bitwise_identical_at_1_and_2_threads(rms, dtype, nshape, shape):
    res = []
    for nt in (1, 2, 2):
        rng = np.random.default_rng(5)
        layer = _layer(rms, nshape, dtype)
        _params(layer, rng)
        x = (rng.normal(size=shape) + 20).astype(dtype)
        g = rng.normal(size=shape).astype(dtype)
        with threadpool_limits(limits=nt, user_api="openmp"):
            y = layer(x)
            dx = layer.backward(g)
            used = _kernels.threads_used()
        res.append(([y, dx, layer.weight_grad], used))
    assert res[0][1] == 1
    if _kernels.openmp_enabled():
        assert res[1][1] == 2
    for a, b, c in zip(res[0][0], res[1][0], res[2][0]):
        assert a.tobytes() == b.tobytes() == c.tobytes()


@pytest.mark.parametrize("call,exc,words", [
    (lambda: fastnorm.LayerNorm(5)(np.ones((3, 4), np.float32)), ValueError,
     ["trailing dimensions (5,)", "got input of shape (3, 4)"]),
    (lambda: fastnorm.LayerNorm((3, 4))(np.ones(4, np.float32)), ValueError,
     ["(3, 4)", "shape (4,)"]),
    (lambda: fastnorm.LayerNorm(0), ValueError, ["normalized_shape must be positive"]),
    (lambda: fastnorm.LayerNorm("x"), ValueError, ["normalized_shape"]),
    (lambda: fastnorm.RMSNorm(4)(np.ones((2, 4), np.float64)), TypeError, ["float64", "float32"]),
    (lambda: fastnorm.RMSNorm(4)(np.ones((2, 4), np.int32)), TypeError, ["int32"]),
    (lambda: F.layer_norm(np.ones((2, 4)), 4, np.ones(5)), ValueError,
     ["weight of shape (4,)", "(5,)"]),
    (lambda: F.layer_norm(np.ones((2, 4)), 4, np.ones(4, np.float32)), TypeError,
     ["weight has dtype float32"]),
    (lambda: F.rms_norm(np.ones((2, 4)), (2, 2)), ValueError, ["trailing dimensions (2, 2)"]),
    (lambda: fastnorm.RMSNorm(4, eps=0.0), ValueError, ["eps must be positive"]),
    (lambda: F.layer_norm(np.ones((2, 4)), 4, eps=-1), ValueError, ["eps must be positive"]),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_failed_call_changes_nothing_and_backward_checks(rng):
    layer = fastnorm.LayerNorm(4)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    keep = x.copy()
    out = np.full((3, 4), 7.0, np.float32)
    layer.weight = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="weight of shape"):
        layer(x, out=out)
    assert (out == 7).all() and np.array_equal(x, keep)
    layer.weight = np.ones(4, np.float32)
    with pytest.raises(RuntimeError, match="no forward call"):
        layer.backward(x)
    layer(x)
    with pytest.raises(ValueError, match=r"grad_output has shape \(2, 4\)"):
        layer.backward(x[:2])
    xc = x.copy()
    layer(xc, out=xc)
    with pytest.raises(RuntimeError, match="out=x"):
        layer.backward(x)


def test_rms_eps_none_is_machine_epsilon(rng):
    x = rng.normal(size=(3, 8)) * 1e-9
    for dt in (np.float32, np.float64):
        y = fastnorm.RMSNorm(8, dtype=dt)(x.astype(dt))
        np.testing.assert_allclose(y, ref.layer_norm(x.astype(dt), (8,), eps=np.finfo(dt).eps,
                                                     rms=True), **TOL[dt])


class TestTorchParity:
    @pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
    @pytest.mark.parametrize("nshape,shape", CASES[:5])
    def test_forward_backward(self, torch, rms, nshape, shape, rng):
        fl = _layer(rms, nshape, np.float32)
        tl = (torch.nn.RMSNorm if rms else torch.nn.LayerNorm)(nshape)
        assert repr(fl) == repr(tl) and list(fl.state_dict()) == list(tl.state_dict())
        w = rng.uniform(0.5, 2, nshape).astype(np.float32)
        fl.weight[...] = w
        with torch.no_grad():
            tl.weight.copy_(torch.from_numpy(w))
        x = (rng.normal(size=shape) * 2 + 1).astype(np.float32)
        g = rng.normal(size=shape).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_()
        yt = tl(xt)
        yt.backward(torch.from_numpy(g))
        np.testing.assert_allclose(fl(x), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fl.backward(g), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(fl.weight_grad, tl.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
        if not rms:
            np.testing.assert_allclose(fl.bias_grad, tl.bias.grad.numpy(), rtol=1e-4, atol=1e-4)
        fresh = _layer(rms, nshape, np.float32)
        fresh.load_state_dict(tl.state_dict())
        np.testing.assert_array_equal(fresh.weight, w)

    def test_repr_variants(self, torch):
        for kw in [dict(elementwise_affine=False), dict(bias=False), dict(eps=1e-3)]:
            assert repr(fastnorm.LayerNorm((2, 3), **kw)) == repr(torch.nn.LayerNorm((2, 3), **kw))
        assert repr(fastnorm.RMSNorm([4], eps=1e-6, elementwise_affine=False)) == \
            repr(torch.nn.RMSNorm([4], eps=1e-6, elementwise_affine=False))

    def test_functional(self, torch, rng):
        x = rng.normal(size=(3, 4, 6))
        w, b = rng.normal(size=6), rng.normal(size=6)
        np.testing.assert_allclose(
            F.layer_norm(x, (6,), w, b, 1e-3),
            torch.nn.functional.layer_norm(torch.tensor(x), (6,), torch.tensor(w),
                                           torch.tensor(b), 1e-3).numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            F.rms_norm(x, (4, 6), w * np.ones((4, 1))),
            torch.nn.functional.rms_norm(torch.tensor(x), (4, 6),
                                         torch.tensor(w * np.ones((4, 1)))).numpy(),
            rtol=1e-12, atol=1e-12)


def test_float32_column_sums_that_overflow_are_redone_in_float64(rng):
    """Weight/bias gradients of float32 rows are summed in float32 over blocks
    of rows; a block whose float32 sum overflows is summed again in float64."""
    layer = fastnorm.LayerNorm(40)
    x = rng.normal(size=(6, 40)).astype(np.float32)
    g = rng.normal(size=(6, 40)).astype(np.float32)
    g[:, 3] = [3e38, 3e38, -3e38, -3e38, 1.0, 2.0]
    # x near the row mean in that column (xhat 0.1 to 0.6): its weight gradient
    # stays finite, and well above what float32 statistics leave uncertain
    # (~1e-7 of xhat)
    x[:, 3] = (x.sum(axis=1) - x[:, 3]) / 39 + 0.1 * np.arange(1, 7)
    layer(x)
    layer.backward(g)
    assert layer.bias_grad[3] == np.float32(3.0)
    _, edw, edb = ref.layer_norm_backward(g.astype(np.float64), x, (40,), layer.weight,
                                         1e-5, False)
    np.testing.assert_allclose(layer.bias_grad, edb, rtol=1e-6)
    assert np.isfinite(layer.weight_grad).all()
    np.testing.assert_allclose(layer.weight_grad, edw, rtol=1e-5, atol=1e-5 * np.abs(edw).max())


@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("D", [512, 515, 1031])
def test_backward_of_rows_from_memory_keeps_each_rows_bits(rms, dtype, D, rng):
    """Inputs whose x and dy reach ROW_PF_BYTES (4 MiB) take the row backward
    that prefetches the next row (rows of at least 512): each row's input
    gradient is that of the same row in a small call, bit for bit, the first
    blocks and the last, partial one included."""
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    dt = np.dtype(dtype)
    R = (4 << 20) // (2 * D * dt.itemsize) + 70
    x = (rng.normal(size=(R, D)) * 2 + 3).astype(dt)
    g = rng.normal(size=(R, D)).astype(dt)
    w = rng.uniform(0.5, 2, D).astype(np.float32)
    assert 2 * x.nbytes >= 4 << 20 > 2 * x[:70].nbytes

    def dx(s):
        if rms:
            return F.rms_norm_backward(g[s], x[s], (D,), w)[0]
        return F.layer_norm_backward(g[s], x[s], (D,), w, w)[0]

    big = dx(slice(None))
    for s in (slice(0, 70), slice(R - 70, R)):
        np.testing.assert_array_equal(big[s].view(f"u{dt.itemsize}"),
                                      dx(s).view(f"u{dt.itemsize}"))
