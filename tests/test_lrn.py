"""LocalResponseNorm: float64 reference, PyTorch parity, finite differences,
thread invariance, robustness of the sliding sums, bad input."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastnorm
import fastnorm.functional as F
import reference as ref
from util import finite_differences as _fd
from fastnorm._native import kernels as _kernels

# sizes: odd, even, 1, >= C; shapes: 3D, 4D, 5D, odd spatial sizes
CASES = [(5, (4, 12, 7, 7)), (2, (3, 5, 9)), (4, (2, 6, 3, 3, 3)), (9, (2, 4, 10)),
         (1, (2, 3, 5)), (3, (1, 96, 11, 11)), (6, (2, 6, 13)), (7, (1, 7, 1)),
         (3, (2, 1, 5)), (2, (2, 1, 3, 3))]


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6], ids=lambda b: f"beta{b}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size,shape", CASES)
def test_matches_reference(size, shape, dtype, beta, rng):
    """beta 0.75, 0.5 and 1 take square roots and divisions, others pow."""
    x = (rng.normal(size=shape) * 3).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    kw = dict(alpha=0.05, beta=beta, k=1.5)
    layer = fastnorm.LocalResponseNorm(size, **kw)
    y = layer(x)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(y, ref.local_response_norm(x, size, **kw)[0], **tol)
    dx = layer.backward(g)
    np.testing.assert_allclose(dx, ref.local_response_norm_backward(g, x, size, **kw), **tol)
    assert F.local_response_norm(x, size, **kw).tobytes() == y.tobytes()
    assert F.local_response_norm_backward(g, x, size, **kw).tobytes() == dx.tobytes()


def test_sliding_sums_do_not_cancel():
    """A huge value leaving the window must not wipe out the small ones left:
    with k = 0 the output depends on them alone."""
    x = np.full((1, 8, 1), 1e-3)
    x[0, 0, 0] = 1e12
    y = fastnorm.LocalResponseNorm(3, alpha=1.0, beta=0.5, k=0.0)(x)
    np.testing.assert_allclose(y, ref.local_response_norm(x, 3, 1.0, 0.5, 0.0)[0], rtol=1e-12)
    assert np.isfinite(y).all()


def test_gradients_by_finite_differences(rng):
    x = rng.normal(size=(2, 5, 3))
    g = rng.normal(size=x.shape)
    layer = fastnorm.LocalResponseNorm(4, alpha=0.3, beta=0.6, k=1.2)
    dx = (layer(x), layer.backward(g))[1]
    fd = _fd(lambda: float((layer(x) * g).sum()), x)
    np.testing.assert_allclose(dx, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size,shape", [(5, (8, 96, 27, 27)), (4, (1, 3, 300, 301)),
                                        (2, (3, 2000, 7))])
def test_bitwise_identical_at_1_and_2_threads(size, shape, dtype):
    rng = np.random.default_rng(9)
    x = rng.normal(size=shape).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    layer = fastnorm.LocalResponseNorm(size)
    res = []
    for nt in (1, 2):
        with threadpool_limits(limits=nt, user_api="openmp"):
            y = layer(x)
            used = _kernels.threads_used()
            res.append((y, layer.backward(g), used))
    assert res[0][2] == 1
    if _kernels.openmp_enabled():
        assert res[1][2] == 2
    assert res[0][0].tobytes() == res[1][0].tobytes()
    assert res[0][1].tobytes() == res[1][1].tobytes()


@pytest.mark.parametrize("call,exc,words", [
    (lambda: fastnorm.LocalResponseNorm(0), ValueError, ["size must be a positive integer", "0"]),
    (lambda: fastnorm.LocalResponseNorm(2.5), ValueError, ["size", "2.5"]),
    (lambda: fastnorm.LocalResponseNorm(3, alpha=float("nan")), ValueError, ["alpha", "nan"]),
    (lambda: fastnorm.LocalResponseNorm(3)(np.ones((3, 4), np.float32)), ValueError,
     ["expected 3D to 64D input (N, C, *)", "got 2D"]),
    (lambda: fastnorm.LocalResponseNorm(3)(np.ones((2, 3, 4), np.int64)), TypeError, ["int64"]),
    (lambda: F.local_response_norm(np.ones((2, 3, 4)), 3, out=np.ones((2, 3, 4), np.float32)),
     TypeError, ["out has dtype float32"]),
    (lambda: F.local_response_norm_backward(np.ones((2, 3)), np.ones((2, 3, 4)), 3), ValueError,
     ["grad_output has shape (2, 3)"]),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_out_may_not_alias_input_and_empty_input():
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="must not share memory"):
        F.local_response_norm(x, 3, out=x)
    assert (x == 1).all()
    assert fastnorm.LocalResponseNorm(3)(np.ones((0, 3, 4), np.float32)).shape == (0, 3, 4)


@pytest.mark.parametrize("size,shape", CASES[:6])
def test_matches_torch(torch, size, shape, rng):
    x = (rng.normal(size=shape) * 3).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    fl = fastnorm.LocalResponseNorm(size, alpha=1e-2, k=2.0)
    tl = torch.nn.LocalResponseNorm(size, alpha=1e-2, k=2.0)
    assert repr(fl) == repr(tl)
    xt = torch.from_numpy(x).requires_grad_()
    yt = tl(xt)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(fl(x), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fl.backward(g), xt.grad.numpy(), rtol=1e-5, atol=1e-6)
