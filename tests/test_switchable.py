"""SwitchableNorm: forward against the float64 reference written from the
paper, gradients of the input, affine and mixing weights against finite
differences (and PyTorch autograd of the same equations when installed),
running statistics, modes and errors."""
import numpy as np
import pytest

import fastnorm
import fastnorm.functional as F
import reference as ref
from util import finite_differences

CLASSES = {3: fastnorm.SwitchableNorm1d, 4: fastnorm.SwitchableNorm2d,
           5: fastnorm.SwitchableNorm3d}
SHAPES = [(4, 3, 7), (3, 4, 5, 6), (2, 3, 2, 3, 4), (1, 5, 9), (6, 2, 1, 1)]


def _layer(shape, dt, using_bn=True, affine=True, momentum=0.1, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    layer = CLASSES[len(shape)](C, momentum=momentum, affine=affine, using_bn=using_bn,
                                dtype=dt)
    layer.mean_weight[...] = rng.normal(size=layer.mean_weight.shape)
    layer.var_weight[...] = rng.normal(size=layer.var_weight.shape)
    if affine:
        layer.weight[...] = rng.uniform(0.5, 2, C)
        layer.bias[...] = rng.normal(size=C)
    if using_bn:
        layer.running_mean[...] = rng.normal(size=C)
        layer.running_var[...] = rng.uniform(0.5, 2, C)
    return layer


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("using_bn", [True, False], ids=["bn", "no-bn"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_reference(shape, using_bn, training, dt):
    if training and using_bn and shape[0] * int(np.prod(shape[2:])) < 2:
        pytest.skip("one value per channel: refused in training (tested below)")
    layer = _layer(shape, dt, using_bn)
    layer.train(training)
    x = (np.random.default_rng(1).normal(size=shape) * 3 + 20).astype(dt)
    rm = None if layer.running_mean is None else layer.running_mean.copy()
    rv = None if layer.running_var is None else layer.running_var.copy()
    y = layer(x)
    ey, erm, erv = ref.switchable_norm(x, layer.mean_weight, layer.var_weight, layer.weight,
                                       layer.bias, layer.eps, training, rm, rv, using_bn)
    tol = 1e-10 if dt == np.float64 else 2e-4
    np.testing.assert_allclose(y, ey, rtol=tol, atol=tol)
    if using_bn and training:
        np.testing.assert_allclose(layer.running_mean, erm, rtol=tol, atol=tol)
        np.testing.assert_allclose(layer.running_var, erv, rtol=tol, atol=tol)
        assert int(layer.num_batches_tracked) == 1
    elif using_bn:
        assert layer.running_mean.tobytes() == rm.tobytes()
        assert layer.running_var.tobytes() == rv.tobytes()


def test_large_offset_is_stable():
    """The layer and batch statistics come from merged instance moments, not
    from sums of squares: data at 1e4 + N(0, 1) in float32 normalises as
    accurately as centred data."""
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(8, 4, 16, 16)) + 1e4).astype(np.float32)
    layer = _layer(x.shape, np.float32)
    y = layer(x)
    ey = ref.switchable_norm(x, layer.mean_weight, layer.var_weight, layer.weight,
                             layer.bias, layer.eps, True, layer.running_mean.copy(),
                             layer.running_var.copy())[0]
    np.testing.assert_allclose(y, ey, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("using_bn", [True, False], ids=["bn", "no-bn"])
@pytest.mark.parametrize("shape", [(3, 2, 4), (2, 3, 2, 3)], ids=["1d", "2d"])
def test_gradients_match_finite_differences(shape, using_bn, training):
    layer = _layer(shape, np.float64, using_bn, seed=3)
    layer.train(training)
    rng = np.random.default_rng(4)
    x = rng.normal(size=shape) * 2 + 1
    g = rng.normal(size=shape)
    keep = (None if layer.running_mean is None else layer.running_mean.copy(),
            None if layer.running_var is None else layer.running_var.copy())

    def loss():
        if keep[0] is not None:     # every call starts from the same running stats
            layer.running_mean[...] = keep[0]
            layer.running_var[...] = keep[1]
        return float((layer(x) * g).sum())
    loss()
    dx = layer.backward(g)
    grads = {k: getattr(layer, k + "_grad").copy()
             for k in ("weight", "bias", "mean_weight", "var_weight")}
    np.testing.assert_allclose(dx, finite_differences(loss, x), rtol=1e-6, atol=1e-8)
    for k, got in grads.items():
        np.testing.assert_allclose(got, finite_differences(loss, getattr(layer, k)),
                                   rtol=1e-6, atol=1e-8, err_msg=k)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradients_match_torch_autograd(torch, training):
    """PyTorch autograd of the paper's equations (float64) on a larger input."""
    shape = (5, 6, 7, 8)
    layer = _layer(shape, np.float64, True, seed=5)
    layer.train(training)
    rng = np.random.default_rng(6)
    x = rng.normal(size=shape) * 2 - 3
    g = rng.normal(size=shape)
    t = {k: torch.tensor(np.array(getattr(layer, k)), requires_grad=True)
         for k in ("weight", "bias", "mean_weight", "var_weight")}
    tx = torch.tensor(x, requires_grad=True)
    rm, rv = torch.tensor(layer.running_mean), torch.tensor(layer.running_var)
    sp, ln, bn = (2, 3), (1, 2, 3), (0, 2, 3)

    def stat(axes):
        return (tx.mean(dim=axes, keepdim=True),
                tx.var(dim=axes, keepdim=True, unbiased=False))
    mus, vs = zip(stat(sp), stat(ln), stat(bn) if training else
                  (rm.view(1, -1, 1, 1), rv.view(1, -1, 1, 1)))
    a, b = torch.softmax(t["mean_weight"], 0), torch.softmax(t["var_weight"], 0)
    mu = sum(a[k] * mus[k] for k in range(3))
    var = sum(b[k] * vs[k] for k in range(3))
    y = (tx - mu) / torch.sqrt(var + layer.eps) * t["weight"].view(1, -1, 1, 1) \
        + t["bias"].view(1, -1, 1, 1)
    (y * torch.tensor(g)).sum().backward()
    ours = layer(x)
    np.testing.assert_allclose(ours, y.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy(), rtol=1e-9, atol=1e-10)
    for k, v in t.items():
        np.testing.assert_allclose(getattr(layer, k + "_grad"), v.grad.numpy(), rtol=1e-9,
                                   atol=1e-9, err_msg=k)


def test_momentum_none_is_a_cumulative_average():
    rng = np.random.default_rng(7)
    layer = fastnorm.SwitchableNorm2d(3, momentum=None, dtype=np.float64)
    xs = [rng.normal(size=(4, 3, 5, 5)) + i for i in range(3)]
    for x in xs:
        layer(x)
    means = np.mean([x.mean(axis=(0, 2, 3)) for x in xs], axis=0)
    np.testing.assert_allclose(layer.running_mean, means, rtol=1e-12)
    assert int(layer.num_batches_tracked) == 3


def test_state_dict_and_defaults():
    layer = fastnorm.SwitchableNorm2d(4)
    assert list(layer.state_dict()) == ["weight", "bias", "mean_weight", "var_weight",
                                        "running_mean", "running_var", "num_batches_tracked"]
    assert (layer.mean_weight == 1).all() and layer.mean_weight.shape == (3,)
    nobn = fastnorm.SwitchableNorm1d(4, using_bn=False, affine=False)
    assert list(nobn.state_dict()) == ["mean_weight", "var_weight"]
    assert nobn.var_weight.shape == (2,)
    assert repr(nobn) == "SwitchableNorm1d(4, eps=1e-05, momentum=0.1, affine=False, using_bn=False)"
    other = fastnorm.SwitchableNorm2d(4)
    sd = {k: v + 1 for k, v in layer.state_dict().items()}
    other.load_state_dict(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(other.state_dict()[k], v)


@pytest.mark.parametrize("call,exc,words", [
    (lambda l: l(np.ones((2, 3, 4), np.float32)), ValueError, ["expected 4D input", "got 3D"]),
    (lambda l: l(np.ones((2, 5, 4, 4), np.float32)), ValueError, ["3 channels", "got 5"]),
    (lambda l: l(np.ones((1, 3, 1, 1), np.float32)), ValueError, ["more than 1 value per channel"]),
    (lambda l: l(np.ones((0, 3, 2, 2), np.float32)), ValueError, ["non-empty input"]),
    (lambda l: l(np.ones((2, 3, 2, 2), np.float64)), TypeError, ["float64", "float32"]),
    (lambda l: (setattr(l, "mean_weight", np.ones(2, np.float32)), l(np.ones((2, 3, 2, 2), np.float32))),
     ValueError, ["mean_weight of shape (3,)", "got shape (2,)"]),
    (lambda l: (setattr(l, "var_weight", np.ones(3)), l(np.ones((2, 3, 2, 2), np.float32))),
     TypeError, ["var_weight has dtype float64"]),
    (lambda l: l.backward(np.ones((2, 3, 2, 2), np.float32)), RuntimeError, ["no forward call"]),
])
def test_bad_input_raises_and_changes_nothing(call, exc, words):
    layer = fastnorm.SwitchableNorm2d(3)
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    originals = {k: getattr(layer, k) for k in before}   # a case may replace one
    with pytest.raises(exc) as info:
        call(layer)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    for k, v in before.items():
        np.testing.assert_array_equal(originals[k], v)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_functional_matches_the_layer(training):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    layer = _layer(x.shape, np.float32, seed=9)
    layer.train(training)
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    y = layer(x)
    dx = layer.backward(g)
    args = (layer.mean_weight, layer.var_weight, rm, rv, layer.weight, layer.bias)
    fy = fastnorm.functional.switchable_norm(x, *args, training=training)
    np.testing.assert_array_equal(fy, y)
    np.testing.assert_array_equal(rm, layer.running_mean)     # updated the same way
    rm2, rv2 = rm.copy(), rv.copy()
    if training:   # the backward's statistics are the forward's (batch ones)
        fdx, fgw, fgb, fgm, fgv = fastnorm.functional.switchable_norm_backward(
            g, x, *args, training=True)
    else:
        fdx, fgw, fgb, fgm, fgv = fastnorm.functional.switchable_norm_backward(
            g, x, *args[:2], rm2, rv2, *args[4:], training=False)
    np.testing.assert_array_equal(fdx, dx)
    for got, want in ((fgw, layer.weight_grad), (fgb, layer.bias_grad),
                      (fgm, layer.mean_weight_grad), (fgv, layer.var_weight_grad)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(rm2, rm)      # backward changes no running stat


def test_softmax_exp_is_accurate_and_portable():
    """The mixing weights' exp uses IEEE +, * and ldexp only (the same bits on
    every CPU: tests/test_isa.py runs SwitchableNorm on an emulated CPU too),
    within 2 ulp of NumPy's exp, and exact at 0, +-inf and NaN."""
    from fastnorm._switchable import exp

    x = np.linspace(-700, 700, 100001)
    e, t = exp(x), np.exp(x)
    assert np.max(np.abs(e - t) / t) <= 2 * np.finfo(np.float64).eps
    special = exp(np.array([0.0, -0.0, np.inf, -np.inf, np.nan]))
    assert special[0] == special[1] == 1.0 and special[2] == np.inf and special[3] == 0.0
    assert np.isnan(special[4])


def test_softmax_exp_scalar_is_bitwise_the_array_exp():
    """softmax of the few mixing logits runs exp_scalar, Python floats: the
    same bits as the NumPy version, including ties of the range reduction
    (k * log2(e) halfway between integers), the clipping and overflow."""
    from fastnorm._switchable import _INV_LN2, exp, exp_scalar

    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-800, 800, 20001), rng.normal(size=5000) * 30,
                        (np.arange(-40, 41) + 0.5) / _INV_LN2,
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 709.9, 709.79, -745.2,
                         -744.44, 5e-324, -5e-324]])
    with np.errstate(over="ignore"):
        want = exp(x)
    got = np.array([exp_scalar(float(v)) for v in x])
    assert got.tobytes() == want.tobytes()


def test_softmax_exp_in_c_is_bitwise_exp_scalar():
    """The mixing weights' softmax runs exp in C (exp_ieee, shared by the
    general and the fast path): the same bits as exp_scalar's Python steps,
    ties of the range reduction, clipping, overflow and underflow included,
    in every kernel copy."""
    from fastnorm import _native
    from fastnorm._switchable import _INV_LN2, exp_scalar

    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(-800, 800, 20001), rng.normal(size=5000) * 30,
                        (np.arange(-40, 41) + 0.5) / _INV_LN2,
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 709.9, 709.79, -745.2,
                         -744.44, 5e-324, -5e-324]])
    want = np.array([exp_scalar(float(v)) for v in x])
    for k in _native._loaded:
        got = np.empty_like(x)
        k.exp_ieee_values(x, got)
        assert got.tobytes() == want.tobytes(), k.__name__


@pytest.mark.parametrize("using_bn", [True, False], ids=["bn", "no-bn"])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_eval_fast_path_is_bitwise_the_general_path(using_bn, dt):
    """An eval call takes the fast path (switchable_call): the same output,
    and a backward from its saved statistics with the same gradients, as the
    general path; also in place (out=x), through the functional, and with a
    NaN logit or an infinite running variance (NaN and 0 where the general
    path puts them)."""
    from util import fast_paths_off, took_fast_path

    shape = (2, 5, 4, 3)
    rng = np.random.default_rng(3)
    x = (rng.normal(size=shape) * 2 + 1).astype(dt)
    g = rng.normal(size=shape).astype(dt)
    for case in ("plain", "nan-logit", "inf-var"):
        a, b = _layer(shape, dt, using_bn, seed=4), _layer(shape, dt, using_bn, seed=4)
        for layer in (a, b):
            layer.eval()
            if case == "nan-logit":
                layer.mean_weight[1] = np.nan
            if case == "inf-var" and using_bn:
                layer.running_var[2] = np.inf
        y = a(x)
        assert took_fast_path(a)
        with fast_paths_off():
            want = b(x)
            assert not took_fast_path(b)
            dwant = b.backward(g)
        assert y.tobytes() == want.tobytes(), case
        assert a.backward(g).tobytes() == dwant.tobytes(), case
        for k in ("weight", "bias", "mean_weight", "var_weight"):
            assert getattr(a, k + "_grad").tobytes() == getattr(b, k + "_grad").tobytes()
        args = (a.mean_weight, a.var_weight, a.running_mean, a.running_var, a.weight, a.bias)
        f = F.switchable_norm(x, *args, training=False, using_bn=using_bn)
        assert f.tobytes() == want.tobytes(), case
        xi = x.copy()
        F.switchable_norm(xi, *args, training=False, using_bn=using_bn, out=xi)
        assert xi.tobytes() == want.tobytes(), case


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_eval_without_running_statistics_is_a_clear_error(dt):
    """An eval call with using_bn has no batch term without the running
    statistics: a ValueError that says so (in every dtype), with nothing
    written to out; using_bn=False needs none."""
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(dt)
    mw, vw = np.ones(3, dt), np.ones(3, dt)
    out = np.zeros_like(x)
    for rm, rv in ((None, None), (np.zeros(3, dt), None), (None, np.ones(3, dt))):
        with pytest.raises(ValueError, match="eval mode with using_bn needs running_mean"):
            F.switchable_norm(x, mw, vw, rm, rv, training=False, out=out)
        with pytest.raises(ValueError, match="eval mode with using_bn needs running_mean"):
            F.switchable_norm_backward(x, x, mw, vw, rm, rv, training=False)
    assert not out.any()
    y = F.switchable_norm(x, mw[:2], vw[:2], training=False, using_bn=False)
    assert np.isfinite(y).all()
