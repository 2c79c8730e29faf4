"""Parity with PyTorch's CPU BatchNorm (forward, backward, running stats, state_dict)."""
import numpy as np
import pytest

import fastnorm
import fastnorm.functional as F

CASES = [("BatchNorm1d", (8, 5)), ("BatchNorm1d", (4, 5, 33)), ("BatchNorm2d", (4, 5, 9, 11)),
         ("BatchNorm3d", (2, 5, 3, 4, 7)), ("BatchNorm2d", (2, 3, 64, 65))]


def _pair(torch, name, C, **kw):
    return getattr(fastnorm, name)(C, **kw), getattr(torch.nn, name)(C, **kw)


@pytest.mark.parametrize("name,shape", CASES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
def test_training_steps_then_eval(torch, name, shape, momentum, affine, rng):
    fl, tl = _pair(torch, name, shape[1], momentum=momentum, affine=affine)
    if affine:
        w = rng.uniform(0.5, 2, shape[1]).astype(np.float32)
        fl.weight[...] = w
        with torch.no_grad():
            tl.weight.copy_(torch.from_numpy(w))
    for step in range(4):
        x = (rng.normal(size=shape) * (step + 1) + step).astype(np.float32)
        g = rng.normal(size=shape).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_()
        yt = tl(xt)
        yt.backward(torch.from_numpy(g))
        y = fl(x)
        dx = fl.backward(g)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
        if affine:
            np.testing.assert_allclose(fl.weight_grad, tl.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(fl.bias_grad, tl.bias.grad.numpy(), rtol=1e-4, atol=1e-4)
            tl.weight.grad = tl.bias.grad = None
        np.testing.assert_allclose(fl.running_mean, tl.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fl.running_var, tl.running_var.numpy(), rtol=1e-5, atol=1e-6)
        assert int(fl.num_batches_tracked) == int(tl.num_batches_tracked)
    fl.eval()
    tl.eval()
    x = rng.normal(size=shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    g = rng.normal(size=shape).astype(np.float32)
    yt = tl(xt)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(fl(x), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fl.backward(g), xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    if affine:
        np.testing.assert_allclose(fl.weight_grad, tl.weight.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_eval_without_tracking_uses_batch_stats(torch, rng):
    fl, tl = _pair(torch, "BatchNorm2d", 3, track_running_stats=False)
    x = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(fl.eval()(x), tl.eval()(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)


def test_functional_matches_torch(torch, rng):
    x = rng.normal(size=(6, 4, 10)).astype(np.float64)
    rm, rv = rng.normal(size=4), rng.uniform(1, 2, 4)
    w, b = rng.normal(size=4), rng.normal(size=4)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, eps=1e-3)
    yt = torch.nn.functional.batch_norm(torch.tensor(x), trm, trv, torch.tensor(w),
                                        torch.tensor(b), training=True, momentum=0.3, eps=1e-3)
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12, atol=1e-12)


def test_repr_matches_torch(torch):
    for kw in [{}, dict(eps=1e-3, momentum=None), dict(affine=False),
               dict(track_running_stats=False), dict(bias=False)]:
        for name in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"):
            fl, tl = _pair(torch, name, 7, **kw)
            assert repr(fl) == repr(tl)


@pytest.mark.parametrize("kw", [{}, dict(affine=False), dict(track_running_stats=False),
                                dict(bias=False)])
def test_state_dict_round_trip_with_torch(torch, kw, rng):
    fl, tl = _pair(torch, "BatchNorm2d", 4, **kw)
    for _ in range(3):
        tl(torch.randn(3, 4, 5, 5))
    if tl.weight is not None:
        with torch.no_grad():
            tl.weight.uniform_(0.5, 2)
    tsd = tl.state_dict()
    assert list(fl.state_dict()) == list(tsd)
    fl.load_state_dict(tsd)  # tensors accepted as they are
    for k, v in tsd.items():
        np.testing.assert_array_equal(np.asarray(getattr(fl, k)), v.numpy())
    x = rng.normal(size=(2, 4, 5, 5)).astype(np.float32)
    fl.eval()
    tl.eval()
    np.testing.assert_allclose(fl(x), tl(torch.from_numpy(x)).detach().numpy(), rtol=1e-6, atol=1e-6)
    # and back: a fresh torch layer loads fastnorm's state_dict
    t2 = getattr(torch.nn, "BatchNorm2d")(4, **kw)
    t2.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in fl.state_dict().items()})
    for k, v in fl.state_dict().items():
        np.testing.assert_array_equal(t2.state_dict()[k].numpy(), v)


def test_parameter_tensor_requiring_grad_is_accepted(torch):
    fl = fastnorm.BatchNorm1d(3)
    tl = torch.nn.BatchNorm1d(3)
    sd = dict(tl.state_dict())
    sd["weight"] = torch.full((3,), 2.0, requires_grad=True)
    fl.load_state_dict(sd)
    assert (fl.weight == 2).all()


def test_large_offset_as_accurate_as_torch(torch, rng):
    import reference as ref

    x = (1e4 + rng.normal(size=(16, 8, 24, 24))).astype(np.float32)
    exact = ref.batch_norm(x, training=True)[0]
    err_fn = np.abs(fastnorm.BatchNorm2d(8)(x) - exact).max()
    err_t = np.abs(torch.nn.BatchNorm2d(8)(torch.from_numpy(x)).detach().numpy() - exact).max()
    assert err_fn <= max(err_t, 1e-6), (err_fn, err_t)
