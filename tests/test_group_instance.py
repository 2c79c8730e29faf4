"""GroupNorm and InstanceNorm1d/2d/3d: float64 reference, PyTorch parity,
finite differences, thread invariance, bad input."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastnorm
import fastnorm.functional as F
import reference as ref
from util import assert_layer_gradients
from fastnorm._native import kernels as _kernels

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}
GTOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}
INSTANCE = {3: fastnorm.InstanceNorm1d, 4: fastnorm.InstanceNorm2d, 5: fastnorm.InstanceNorm3d}

GN_CASES = [((4, 8, 5, 5), 2), ((3, 6), 3), ((5, 6), 6), ((2, 4, 7), 4), ((2, 6, 3, 4, 5), 1),
            ((3, 12, 33), 4), ((2, 64, 9, 9), 32), ((1, 6, 4100), 3), ((40, 96), 2),
            ((9, 512), 32)]


def _affine(layer, rng):
    if layer.weight is not None:
        layer.weight[...] = rng.uniform(0.5, 2, layer.weight.shape)
    if layer.bias is not None:
        layer.bias[...] = rng.normal(size=layer.bias.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,groups", GN_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_reference(shape, groups, dtype, affine, rng):
    x = (rng.normal(size=shape) * 3 + 2).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    layer = fastnorm.GroupNorm(groups, shape[1], affine=affine, dtype=dtype)
    _affine(layer, rng)
    y = layer(x)
    ey = ref.group_norm(x, groups, layer.weight, layer.bias)[0]
    np.testing.assert_allclose(y, ey, **TOL[dtype])
    assert layer.eval()(x).tobytes() == y.tobytes()  # no running state: eval is the same
    dx = layer.backward(g)
    edx, edw, edb = ref.group_norm_backward(g, x, groups, layer.weight)
    np.testing.assert_allclose(dx, edx, **GTOL[dtype])
    if affine:
        n = x.size // shape[1]
        np.testing.assert_allclose(layer.weight_grad, edw, rtol=GTOL[dtype]["rtol"],
                                   atol=GTOL[dtype]["atol"] * n)
        np.testing.assert_allclose(layer.bias_grad, edb, rtol=GTOL[dtype]["rtol"],
                                   atol=GTOL[dtype]["atol"] * n)
    # the functional twins give the same bits
    fw = F.group_norm(x, groups, layer.weight, layer.bias)
    assert fw.tobytes() == y.tobytes()
    fdx, fdw, fdb = F.group_norm_backward(g, x, groups, layer.weight, layer.bias)
    assert fdx.tobytes() == dx.tobytes()


IN_SHAPES = [(4, 3, 9), (2, 3, 5, 6), (2, 3, 3, 4, 5), (3, 3, 40), (1, 3, 70, 70)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", IN_SHAPES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_instance_norm_tracking_matches_reference(shape, dtype, momentum, rng):
    layer = INSTANCE[len(shape)](3, affine=True, track_running_stats=True, momentum=momentum,
                                 dtype=dtype)
    _affine(layer, rng)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(1, 4):
        x = (rng.normal(size=shape) * step + step).astype(dtype)
        g = rng.normal(size=shape).astype(dtype)
        y = layer(x)
        ey, rm, rv = ref.instance_norm(x, rm, rv, layer.weight, layer.bias, True, momentum,
                                       num_batches_tracked=step)
        np.testing.assert_allclose(y, ey, **TOL[dtype])
        np.testing.assert_allclose(layer.running_mean, rm, **TOL[dtype])
        np.testing.assert_allclose(layer.running_var, rv, **TOL[dtype])
        # counted only for the cumulative average (PyTorch never counts)
        assert int(layer.num_batches_tracked) == (step if momentum is None else 0)
        edx, edw, edb = ref.group_norm_backward(g, x, 3, layer.weight)
        np.testing.assert_allclose(layer.backward(g), edx, **GTOL[dtype])
    # eval: the running statistics, per channel
    layer.eval()
    x = rng.normal(size=shape).astype(dtype)
    ey = ref.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias)[0]
    np.testing.assert_allclose(layer(x), ey, **TOL[dtype])
    g = rng.normal(size=shape).astype(dtype)
    edx = ref.batch_norm_backward(g, x, layer.running_mean, layer.running_var, layer.weight,
                                  training=False)[0]
    np.testing.assert_allclose(layer.backward(g), edx, **GTOL[dtype])


def test_instance_norm_default_and_unbatched(rng):
    x = rng.normal(size=(3, 5, 6)).astype(np.float32)
    layer = fastnorm.InstanceNorm2d(3)
    assert layer.running_mean is None and layer.weight is None
    y = layer(x)  # unbatched (C, H, W)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, ref.group_norm(x[None], 3)[0][0], **TOL[np.float32])
    np.testing.assert_array_equal(layer.eval()(x), y)  # no tracking: eval uses instance stats
    layer.train()
    layer(x)
    g = rng.normal(size=x.shape).astype(np.float32)
    np.testing.assert_allclose(layer.backward(g), ref.group_norm_backward(g[None], x[None], 3)[0][0],
                               **GTOL[np.float32])
    with pytest.raises(ValueError, match=r"grad_output has shape \(1, 3, 5, 6\), expected \(3, 5, 6\)"):
        layer.backward(g[None])


@pytest.mark.parametrize("use_input_stats", [True, False])
def test_functional_instance_norm(use_input_stats, rng):
    x = rng.normal(size=(4, 3, 7, 2))
    rm, rv = rng.normal(size=3), rng.uniform(1, 2, 3)
    w, b = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    ey, erm, erv = ref.instance_norm(x, rm, rv, w, b, use_input_stats, 0.3)
    y = F.instance_norm(x, rm, rv, w, b, use_input_stats, momentum=0.3)
    np.testing.assert_allclose(y, ey, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rm, erm, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rv, erv, rtol=1e-12, atol=1e-12)
    g = rng.normal(size=x.shape)
    dx, dw, db = F.instance_norm_backward(g, x, rm, rv, w, b, use_input_stats)
    if use_input_stats:
        edx, edw, edb = ref.group_norm_backward(g, x, 3, w)
    else:
        edx, edw, edb = ref.batch_norm_backward(g, x, rm, rv, w, training=False)
    for a, e in ((dx, edx), (dw, edw), (db, edb)):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)




@pytest.mark.parametrize("make", [lambda: fastnorm.GroupNorm(2, 4, dtype=np.float64),
                                  lambda: fastnorm.InstanceNorm1d(4, affine=True,
                                                                  dtype=np.float64)],
                         ids=["group", "instance"])
def test_gradients_by_finite_differences(make, rng):
    layer = make()
    _affine(layer, rng)
    x = rng.normal(size=(2, 4, 3)) * 2 + 1
    assert layer.weight is not None and layer.bias is not None
    assert_layer_gradients(layer, x, rng.normal(size=x.shape))


def _run_all(make, shape, dtype, n_threads):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=shape) * 2 + 50).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    layer = make(dtype)
    _affine(layer, rng)
    with threadpool_limits(limits=n_threads, user_api="openmp"):
        y = layer(x)
        used = _kernels.threads_used()
        dx = layer.backward(g)
    return [y, dx, layer.weight_grad, layer.bias_grad], used


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make,shape", [
    (lambda dt: fastnorm.GroupNorm(4, 12, dtype=dt), (3, 12, 2049)),
    (lambda dt: fastnorm.GroupNorm(32, 64, dtype=dt), (5, 64, 17, 19)),
    (lambda dt: fastnorm.GroupNorm(3, 600, dtype=dt), (257, 600)),
    (lambda dt: fastnorm.InstanceNorm1d(1, affine=True, dtype=dt), (1, 1, 300001)),
    (lambda dt: fastnorm.InstanceNorm2d(7, affine=True, dtype=dt), (3, 7, 61, 67)),
    (lambda dt: fastnorm.InstanceNorm1d(300, affine=True, dtype=dt), (70, 300, 5)),
], ids=["gn-few-groups", "gn-32", "gn-2d", "in-one-instance", "in-2d", "in-short-planes"])
def test_bitwise_identical_at_1_and_2_threads(make, shape, dtype):
    one, used1 = _run_all(make, shape, dtype, 1)
    two, used2 = _run_all(make, shape, dtype, 2)
    assert used1 == 1
    if _kernels.openmp_enabled():
        assert used2 == 2
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()


def test_instance_norm_refuses_wrong_channel_count_even_without_affine():
    """PyTorch only warns for InstanceNorm2d(1024) on 512 channels when
    affine=False, and normalises anyway; fastnorm refuses."""
    layer = fastnorm.InstanceNorm2d(1024)
    x = np.ones((2, 512, 4, 4), np.float32)
    with pytest.raises(ValueError, match="expected input with 1024 channels .* got 512 channels"):
        layer(x)
    with pytest.raises(ValueError, match="expected input with 1024 channels .* got 512 channels"):
        layer(x[0])  # unbatched


@pytest.mark.parametrize("call,exc,words", [
    (lambda: fastnorm.GroupNorm(3, 4), ValueError, ["num_channels (4)", "num_groups (3)"]),
    (lambda: fastnorm.GroupNorm(0, 4), ValueError, ["num_groups must be a positive integer"]),
    (lambda: F.group_norm(np.ones((2, 4, 3), np.float32), 3), ValueError,
     ["4 channels", "3 groups"]),
    (lambda: fastnorm.GroupNorm(2, 4)(np.ones((2, 6, 3), np.float32)), ValueError,
     ["expected input with 4 channels", "got 6"]),
    (lambda: fastnorm.GroupNorm(2, 4)(np.ones(4, np.float32)), ValueError,
     ["got 1D input"]),
    (lambda: fastnorm.GroupNorm(2, 4)(np.ones((2, 4), np.float64)), TypeError,
     ["float64", "float32"]),
    (lambda: F.group_norm(np.ones((2, 4, 3)), 2, np.ones(3)), ValueError,
     ["weight of shape (4,)", "(3,)"]),
    (lambda: fastnorm.InstanceNorm2d(3)(np.ones((2, 3, 1, 1), np.float32)), ValueError,
     ["more than 1 spatial element", "(2, 3, 1, 1)"]),
    # 3D is an unbatched (C, H, W) input for InstanceNorm2d: C is dim 0
    (lambda: fastnorm.InstanceNorm2d(3)(np.ones((2, 3, 4), np.float32)), ValueError,
     ["expected input with 3 channels (dim 0)", "got 2 channels"]),
    (lambda: fastnorm.InstanceNorm2d(3)(np.ones((2, 3), np.float32)), ValueError,
     ["expected 3D or 4D input", "got 2D"]),
    (lambda: fastnorm.InstanceNorm1d(3)(np.ones((2, 3, 4, 5), np.float32)), ValueError,
     ["expected 2D or 3D input", "got 4D"]),
    (lambda: F.instance_norm(np.ones((2, 3, 4)), use_input_stats=False), ValueError,
     ["running_mean and running_var must be given"]),
    (lambda: F.instance_norm(np.ones((2, 3, 4)), np.zeros(3)), ValueError,
     ["both running_mean and running_var"]),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_failed_instance_call_changes_nothing(rng):
    layer = fastnorm.InstanceNorm1d(3, affine=True, track_running_stats=True)
    layer(rng.normal(size=(2, 3, 5)).astype(np.float32))
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    x = rng.normal(size=(2, 3, 5)).astype(np.float32)
    keep = x.copy()
    layer.momentum = 2.0
    with pytest.raises(ValueError, match="momentum"):
        layer(x)
    layer.momentum = 0.1
    layer.weight = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="weight of shape"):
        layer(x)
    np.testing.assert_array_equal(x, keep)
    for k, v in before.items():
        if k != "weight":
            np.testing.assert_array_equal(getattr(layer, k), v)


def test_empty_batch_instance_norm_returns_empty_and_keeps_stats():
    layer = fastnorm.InstanceNorm2d(3, track_running_stats=True)
    y = layer(np.zeros((0, 3, 4, 4), np.float32))
    assert y.shape == (0, 3, 4, 4)
    assert int(layer.num_batches_tracked) == 0 and (layer.running_var == 1).all()


class TestTorchParity:
    def test_group_norm(self, torch, rng):
        # not ((5, 6), 6): one value per group, where fastnorm gives exactly
        # 0 (as the float64 reference) and PyTorch's float32 mean leaves ~5e-5
        for shape, G in [c for c in GN_CASES[:5] if c != ((5, 6), 6)]:
            x = (rng.normal(size=shape) * 3).astype(np.float32)
            g = rng.normal(size=shape).astype(np.float32)
            fl, tl = fastnorm.GroupNorm(G, shape[1]), torch.nn.GroupNorm(G, shape[1])
            w = rng.uniform(0.5, 2, shape[1]).astype(np.float32)
            fl.weight[...] = w
            with torch.no_grad():
                tl.weight.copy_(torch.from_numpy(w))
            xt = torch.from_numpy(x).requires_grad_()
            yt = tl(xt)
            yt.backward(torch.from_numpy(g))
            np.testing.assert_allclose(fl(x), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(fl.backward(g), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(fl.weight_grad, tl.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(fl.bias_grad, tl.bias.grad.numpy(), rtol=1e-4, atol=1e-4)
            assert repr(fl) == repr(tl)
            assert list(fl.state_dict()) == list(tl.state_dict())

    @pytest.mark.parametrize("name,shape", [("InstanceNorm1d", (4, 3, 9)),
                                            ("InstanceNorm2d", (2, 3, 5, 6)),
                                            ("InstanceNorm3d", (2, 3, 3, 4, 5)),
                                            ("InstanceNorm2d", (3, 5, 6))])
    def test_instance_norm(self, torch, name, shape, rng):
        fl = getattr(fastnorm, name)(3, affine=True, track_running_stats=True)
        tl = getattr(torch.nn, name)(3, affine=True, track_running_stats=True)
        assert repr(fl) == repr(tl)
        assert list(fl.state_dict()) == list(tl.state_dict())
        for _ in range(3):
            x = (rng.normal(size=shape) * 2 + 3).astype(np.float32)
            g = rng.normal(size=shape).astype(np.float32)
            xt = torch.from_numpy(x).requires_grad_()
            yt = tl(xt)
            yt.backward(torch.from_numpy(g))
            np.testing.assert_allclose(fl(x), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(fl.backward(g), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(fl.weight_grad, tl.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
            tl.weight.grad = tl.bias.grad = None
            np.testing.assert_allclose(fl.running_mean, tl.running_mean.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(fl.running_var, tl.running_var.numpy(), rtol=1e-5, atol=1e-6)
        fl.eval()
        tl.eval()
        x = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(fl(x), tl(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
        fresh = getattr(fastnorm, name)(3, affine=True, track_running_stats=True)
        fresh.load_state_dict(tl.state_dict())
        np.testing.assert_array_equal(fresh.running_var, tl.running_var.numpy())

    def test_functional(self, torch, rng):
        x = rng.normal(size=(3, 4, 10))
        w, b = rng.normal(size=4), rng.normal(size=4)
        np.testing.assert_allclose(
            F.group_norm(x, 2, w, b, eps=1e-3),
            torch.nn.functional.group_norm(torch.tensor(x), 2, torch.tensor(w), torch.tensor(b),
                                           eps=1e-3).numpy(), rtol=1e-12, atol=1e-12)
        rm, rv = np.zeros(4), np.ones(4)
        trm, trv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        y = F.instance_norm(x, rm, rv, w, b, momentum=0.2)
        yt = torch.nn.functional.instance_norm(torch.tensor(x), trm, trv, torch.tensor(w),
                                               torch.tensor(b), momentum=0.2)
        np.testing.assert_allclose(y, yt.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12, atol=1e-14)
