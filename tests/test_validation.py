"""Bad input: a specific error naming what was expected and what came, and
nothing changed by the failed call (input, out, parameters, running stats)."""
import numpy as np
import pytest

import fastnorm
import fastnorm.functional as F


def _layer():
    layer = fastnorm.BatchNorm2d(3)
    layer.weight[...] = [1.0, 2.0, 3.0]
    layer.bias[...] = [0.5, 0.0, -0.5]
    layer.running_mean[...] = [0.1, 0.2, 0.3]
    layer.running_var[...] = [1.5, 2.5, 3.5]
    layer.num_batches_tracked[...] = 4
    return layer


X = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5) / 7


def _ro(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _set(obj, **kw):
    for k, v in kw.items():
        setattr(obj, k, v)
    return obj


LAYER_CASES = [
    ("rank-3", lambda l, x, o: l(x[0]), ValueError, ["expected 4D input", "got 3D", "(3, 4, 5)"]),
    ("rank-5", lambda l, x, o: l(x[None]), ValueError, ["expected 4D input", "got 5D"]),
    ("channels", lambda l, x, o: l(np.zeros((2, 4, 4, 5), np.float32)), ValueError,
     ["3 channels", "got 4 channels"]),
    ("int-input", lambda l, x, o: l(x.astype(np.int64)), TypeError,
     ["float32, float64, bfloat16 or float16", "int64"]),
    ("bool-input", lambda l, x, o: l(x > 1), TypeError, ["float32, float64, bfloat16 or float16", "bool"]),
    ("float64-input-float32-layer", lambda l, x, o: l(x.astype(np.float64)), TypeError,
     ["float64", "the layer's dtype is float32"]),
    ("complex-input", lambda l, x, o: l(x.astype(np.complex64)), TypeError, ["complex64"]),
    ("dtype-mismatch", lambda l, x, o: l(x.astype(np.float64)), TypeError,
     ["float64", "layer's dtype is float32"]),
    ("out-shape", lambda l, x, o: l(x, out=np.empty((2, 3, 4, 4), np.float32)), ValueError,
     ["out has shape (2, 3, 4, 4)", "expected (2, 3, 4, 5)"]),
    ("out-dtype", lambda l, x, o: l(x, out=np.empty(x.shape, np.float64)), TypeError,
     ["out has dtype float64", "expected float32"]),
    ("out-readonly", lambda l, x, o: l(x, out=_ro(o)), ValueError, ["read-only"]),
    ("out-noncontig", lambda l, x, o: l(x, out=np.empty((2, 3, 5, 4), np.float32).transpose(0, 1, 3, 2)),
     ValueError, ["C-contiguous"]),
    ("out-overlap", lambda l, x, o: _overlapping_call(l), ValueError, ["overlaps the input"]),
    ("eps-zero", lambda l, x, o: _set(l, eps=0.0)(x), ValueError, ["eps must be positive", "0.0"]),
    ("eps-nan", lambda l, x, o: _set(l, eps=float("nan"))(x), ValueError, ["eps", "nan"]),
    ("momentum-high", lambda l, x, o: _set(l, momentum=1.5)(x), ValueError, ["momentum", "[0, 1]", "1.5"]),
    ("momentum-neg", lambda l, x, o: _set(l, momentum=-0.1)(x), ValueError, ["momentum", "-0.1"]),
    ("momentum-nan", lambda l, x, o: _set(l, momentum=float("nan"))(x), ValueError, ["momentum", "nan"]),
    ("weight-shape", lambda l, x, o: _set(l, weight=np.ones(4, np.float32))(x), ValueError,
     ["weight of shape (3,)", "got shape (4,)"]),
    ("weight-dtype", lambda l, x, o: _set(l, weight=np.ones(3))(x), TypeError,
     ["weight has dtype float64", "float32"]),
    ("bias-shape", lambda l, x, o: _set(l, bias=np.ones((3, 1), np.float32))(x), ValueError,
     ["bias of shape (3,)", "(3, 1)"]),
    ("running-mean-shape", lambda l, x, o: _set(l, running_mean=np.zeros(2, np.float32))(x),
     ValueError, ["running_mean of shape (3,)", "(2,)"]),
    ("running-var-readonly", lambda l, x, o: _set(l, running_var=_ro(np.ones(3, np.float32)))(x),
     ValueError, ["running_var is read-only"]),
    ("one-value-per-channel", lambda l, x, o: l(x[:1, :, :1, :1]), ValueError,
     ["more than 1 value per channel", "(1, 3, 1, 1)"]),
]


def _overlapping_call(layer):
    # input and out both C-contiguous, out shifted by one element
    buf = np.arange(X.size + 1, dtype=np.float32)
    inp = buf[:-1].reshape(X.shape)
    out = buf[1:].reshape(X.shape)
    keep = buf.copy()
    try:
        layer(inp, out=out)
    finally:
        np.testing.assert_array_equal(buf, keep)


def _state(layer):
    return {k: np.array(getattr(layer, k), copy=True)
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


@pytest.mark.parametrize("call,exc,words", [c[1:] for c in LAYER_CASES],
                         ids=[c[0] for c in LAYER_CASES])
def test_layer_rejects_bad_input_and_changes_nothing(call, exc, words):
    layer = _layer()
    x = X.copy()
    out = np.full_like(x, 7.0)
    before = _state(layer)
    # a case may replace a parameter or buffer with a bad one: compare the
    # original arrays, which must not have been touched either
    originals = {k: getattr(layer, k) for k in before}
    with pytest.raises(exc) as info:
        call(layer, x, out)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    np.testing.assert_array_equal(x, X)
    assert (out == 7.0).all()
    for k, v in before.items():
        np.testing.assert_array_equal(originals[k], v, err_msg=k)


@pytest.mark.parametrize("grad,exc,words", [
    (X[:1], ValueError, ["grad_output has shape (1, 3, 4, 5)", "expected (2, 3, 4, 5)"]),
    (X.astype(np.float64), TypeError, ["grad_output has dtype float64", "float32"]),
    (X.astype(np.int32), TypeError, ["grad_output", "int32"]),
], ids=["shape", "dtype", "int"])
def test_backward_rejects_bad_grad_and_changes_nothing(grad, exc, words):
    layer = _layer()
    layer(X)
    layer.backward(np.ones_like(X))
    before = _state(layer)
    wg, bg = layer.weight_grad.copy(), layer.bias_grad.copy()
    with pytest.raises(exc) as info:
        layer.backward(grad)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(layer, k), v)
    np.testing.assert_array_equal(layer.weight_grad, wg)
    np.testing.assert_array_equal(layer.bias_grad, bg)


def test_backward_before_forward_and_after_mode_switch():
    layer = _layer()
    with pytest.raises(RuntimeError, match="no forward call"):
        layer.backward(X)
    layer(X)
    layer.eval()
    with pytest.raises(RuntimeError, match="training mode but the layer is now in eval mode"):
        layer.backward(X)
    layer.train()
    layer.backward(X)


def test_backward_after_in_place_forward_is_refused():
    layer = _layer()
    x = X.copy()
    layer(x, out=x)
    with pytest.raises(RuntimeError, match="out=x"):
        layer.backward(X)


@pytest.mark.parametrize("kw,exc,words", [
    (dict(num_features=0), ValueError, ["num_features must be a positive integer", "0"]),
    (dict(num_features=2.5), ValueError, ["num_features", "2.5"]),
    (dict(num_features=3, eps=-1.0), ValueError, ["eps must be positive", "-1.0"]),
    (dict(num_features=3, momentum=2), ValueError, ["momentum must be in [0, 1]", "2"]),
    (dict(num_features=3, momentum="0.1"), TypeError, ["momentum", "'0.1'"]),
    (dict(num_features=3, dtype=np.int32), TypeError, ["dtype must be float32, float64, bfloat16 or float16", "int32"]),
])
def test_constructor_rejects_bad_arguments(kw, exc, words):
    with pytest.raises(exc) as info:
        fastnorm.BatchNorm2d(**kw)
    for w in words:
        assert w in str(info.value)


FUNCTIONAL_CASES = [
    ("rank-1", lambda x, rm, rv: F.batch_norm(x[0, 0, 0], rm, rv), ValueError,
     ["expected", "got 1D input"]),
    ("eval-without-running", lambda x, rm, rv: F.batch_norm(x, None, None), ValueError,
     ["running_mean and running_var must be given"]),
    ("running-wrong-channels", lambda x, rm, rv: F.batch_norm(x, rm[:2], rv[:2], training=True),
     ValueError, ["running_mean of shape (3,)", "got shape (2,)"]),
    ("running-not-array", lambda x, rm, rv: F.batch_norm(x, [0.0] * 3, rv, training=True),
     TypeError, ["running_mean must be a NumPy array", "list"]),
    ("running-dtype", lambda x, rm, rv: F.batch_norm(x, rm.astype(np.float64), rv, training=True),
     TypeError, ["running_mean has dtype float64"]),
    ("momentum-none", lambda x, rm, rv: F.batch_norm(x, rm, rv, training=True, momentum=None),
     TypeError, ["momentum", "None"]),
    ("weight-shape", lambda x, rm, rv: F.batch_norm(x, rm, rv, np.ones(2, np.float32)), ValueError,
     ["weight of shape (3,)", "(2,)"]),
    ("backward-grad-shape", lambda x, rm, rv: F.batch_norm_backward(x[:1], x, rm, rv), ValueError,
     ["grad_output has shape"]),
]


@pytest.mark.parametrize("call,exc,words", [c[1:] for c in FUNCTIONAL_CASES],
                         ids=[c[0] for c in FUNCTIONAL_CASES])
def test_functional_rejects_bad_input_and_changes_nothing(call, exc, words):
    x = X.copy()
    rm = np.array([0.1, 0.2, 0.3], np.float32)
    rv = np.array([1.5, 2.5, 3.5], np.float32)
    with pytest.raises(exc) as info:
        call(x, rm, rv)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(rm, np.array([0.1, 0.2, 0.3], np.float32))
    np.testing.assert_array_equal(rv, np.array([1.5, 2.5, 3.5], np.float32))


def test_load_state_dict_is_checked_and_atomic():
    layer = _layer()
    before = _state(layer)
    good = {k: v.copy() for k, v in before.items()}
    bad_shape = dict(good, running_var=np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"running_var has shape \(4,\), the layer expects \(3,\)"):
        layer.load_state_dict(dict(bad_shape, weight=np.zeros(3, np.float32)))
    with pytest.raises(KeyError, match=r"missing keys \['bias'\]"):
        layer.load_state_dict({k: v for k, v in good.items() if k != "bias"})
    with pytest.raises(KeyError, match=r"unexpected keys \['extra'\]"):
        layer.load_state_dict(dict(good, extra=np.zeros(3)))
    with pytest.raises(TypeError, match="complex"):
        layer.load_state_dict(dict(good, weight=np.zeros(3, np.complex64)))
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(layer, k), v)
    # non-strict: loads what fits, reports the rest
    missing, unexpected = layer.load_state_dict(
        {"weight": np.full(3, 9.0), "extra": 1}, strict=False)
    assert missing == ["bias", "running_mean", "running_var"] and unexpected == ["extra"]
    assert (layer.weight == 9).all() and layer.weight.dtype == np.float32
