"""The bad-input table, for every layer: each bad call raises a specific
exception whose message names what was expected and what came, and leaves
everything as it was (input, out, parameters, running statistics, gradients
and what the last successful forward saved for backward).

Zero-size inputs and a single value per channel have a documented outcome
per layer (README, "Bad input"), checked here too.
"""
import numpy as np
import pytest

import fastnorm
from fastnorm._dtypes import NAMES
from util import OneRank

F32, F64 = np.float32, np.float64


def _bn(cls, shape):
    def make():
        layer = cls(3)
        layer.weight[...] = [1.0, 2.0, 3.0]
        layer.bias[...] = [0.5, 0.0, -0.5]
        layer.running_mean[...] = [0.1, 0.2, 0.3]
        layer.running_var[...] = [1.5, 2.5, 3.5]
        layer.num_batches_tracked[...] = 4
        return layer
    return make


def _in(cls):
    def make():
        layer = cls(3, affine=True, track_running_stats=True)
        layer.weight[...] = [1.0, 2.0, 3.0]
        layer.running_var[...] = [1.5, 2.5, 3.5]
        return layer
    return make


# name: (factory, good input shape, bad ranks, wrong-channel shape and the
#        words its message must hold, modes with different behaviour)
LAYERS = {
    "BatchNorm1d": (_bn(fastnorm.BatchNorm1d, 3), (4, 3, 5), [1, 4],
                    ((4, 2, 5), ["3 channels", "got 2 channels"]), True),
    "BatchNorm2d": (_bn(fastnorm.BatchNorm2d, 4), (2, 3, 4, 5), [3, 5],
                    ((2, 4, 4, 5), ["3 channels", "got 4 channels"]), True),
    "BatchNorm3d": (_bn(fastnorm.BatchNorm3d, 5), (2, 3, 2, 3, 4), [4, 6],
                    ((2, 1, 2, 3, 4), ["3 channels", "got 1 channels"]), True),
    "InstanceNorm1d": (_in(fastnorm.InstanceNorm1d), (2, 3, 7), [1, 4],
                       ((2, 5, 7), ["3 channels", "got 5 channels"]), True),
    "InstanceNorm2d": (_in(fastnorm.InstanceNorm2d), (2, 3, 4, 5), [2, 5],
                       ((2, 6, 4, 5), ["3 channels", "got 6 channels"]), True),
    "InstanceNorm3d": (_in(fastnorm.InstanceNorm3d), (2, 3, 2, 3, 4), [3, 6],
                       ((2, 2, 2, 3, 4), ["3 channels", "got 2 channels"]), True),
    "GroupNorm": (lambda: fastnorm.GroupNorm(2, 4), (3, 4, 5), [1],
                  ((3, 6, 5), ["4 channels", "got 6 channels"]), False),
    "LayerNorm": (lambda: fastnorm.LayerNorm((4, 5)), (3, 4, 5), [1],
                  ((3, 5, 4), ["trailing dimensions (4, 5)", "(3, 5, 4)"]), False),
    "RMSNorm": (lambda: fastnorm.RMSNorm(5), (3, 4, 5), [],
                ((3, 4, 6), ["trailing dimensions (5,)", "(3, 4, 6)"]), False),
    "LocalResponseNorm": (lambda: fastnorm.LocalResponseNorm(3), (2, 4, 5), [1, 2],
                          None, False),
    "SwitchableNorm1d": (_bn(fastnorm.SwitchableNorm1d, 3), (4, 3, 5), [2, 4],
                         ((4, 2, 5), ["3 channels", "got 2 channels"]), True),
    "SwitchableNorm2d": (_bn(fastnorm.SwitchableNorm2d, 4), (2, 3, 4, 5), [3, 5],
                         ((2, 4, 4, 5), ["3 channels", "got 4 channels"]), True),
    "SwitchableNorm3d": (_bn(fastnorm.SwitchableNorm3d, 5), (2, 3, 2, 3, 4), [4, 6],
                         ((2, 1, 2, 3, 4), ["3 channels", "got 1 channels"]), True),
    # one process: the checks are local, before the exchange
    "SyncBatchNorm": (_bn(lambda C: fastnorm.SyncBatchNorm(C, comm=OneRank()), 4),
                      (2, 3, 4, 5), [1, 6],
                      ((2, 4, 4, 5), ["3 channels", "got 4 channels"]), True),
}
LAYER_NAMES = list(LAYERS)


def test_the_table_lists_every_catalogue_layer():
    from fastnorm._catalogue import CATALOGUE

    assert set(LAYERS) == {e.name for e in CATALOGUE}


def _x(shape, dtype=F32):
    return (np.arange(int(np.prod(shape))).reshape(shape) % 11 / 3 - 1).astype(dtype)


def _ro(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _snapshot(layer):
    """Bytes of every array the layer holds, and what backward would use."""
    arrays = {k: (v.dtype, v.shape, v.tobytes()) for k, v in vars(layer).items()
              if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in vars(layer).items()
               if isinstance(v, (int, float, bool, tuple, str, type(None)))}
    return arrays, scalars, vars(layer).get("_saved")


def _assert_unchanged(layer, before, originals):
    arrays, scalars, saved = _snapshot(layer)
    # a case may have replaced an attribute by a bad value: the original
    # arrays must not have been written through either
    for k, (dt, shape, data) in before[0].items():
        a = originals[k]
        assert (a.dtype, a.shape, a.tobytes()) == (dt, shape, data), f"{k} changed"
    for k, v in before[1].items():
        if k in scalars and not (isinstance(v, float) and np.isnan(v)):
            assert scalars[k] == v or k in ("eps", "momentum", "weight", "bias"), k
    assert saved is before[2], "a failed call replaced what backward uses"


def _run_case(name, call, exc, words, *, forward_first=True):
    make, shape = LAYERS[name][0], LAYERS[name][1]
    layer = make()
    x = _x(shape)
    if forward_first:
        layer(x)          # something for backward to use, which must survive
    keep_x = x.copy()
    out = np.full(shape, 7.0, F32)
    before = _snapshot(layer)
    originals = {k: v for k, v in vars(layer).items() if isinstance(v, np.ndarray)}
    with pytest.raises(exc) as info:
        call(layer, x, out)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert msg.startswith(type(layer).__name__), msg
    np.testing.assert_array_equal(x, keep_x)
    assert (out == 7.0).all()
    _assert_unchanged(layer, before, originals)


def _set(layer, **kw):
    for k, v in kw.items():
        setattr(layer, k, v)
    return layer


def _overlap(layer, x, out):
    buf = np.zeros(x.size + 1, x.dtype)
    buf[:-1] = x.ravel()
    keep = buf.copy()
    try:
        layer(buf[:-1].reshape(x.shape), out=buf[1:].reshape(x.shape))
    finally:
        np.testing.assert_array_equal(buf, keep)


def _cases():
    """(id, layer name, call, exception, words in the message)."""
    out = []
    for name, (make, shape, bad_ranks, channels, _) in LAYERS.items():
        layer = make()
        def add(tag, call, exc, words, name=name):
            out.append(pytest.param(name, call, exc, words, id=f"{name}-{tag}"))
        for r in bad_ranks:
            bad = tuple(range(2, 2 + r))
            words = ["expected", str(bad)]
            if name != "LayerNorm":   # LayerNorm names the trailing dims it needs
                words.append(f"got {r}D input")
            add(f"rank{r}", lambda l, x, o, b=bad: l(np.ones(b, F32)), ValueError, words)
        if channels is not None:
            cshape, cwords = channels
            add("channels", lambda l, x, o, s=cshape: l(np.ones(s, F32)), ValueError, cwords)
        for dt in ("int64", "bool", "complex64", "float128", "object"):
            add(f"dtype-{dt}", lambda l, x, o, dt=dt: l(x.astype(dt)), TypeError,
                [NAMES, f"got {dt}"])
        if hasattr(layer, "dtype"):   # LocalResponseNorm has no parameters, no dtype
            add("dtype-mismatch", lambda l, x, o: l(x.astype(F64)), TypeError,
                ["float64", "float32"])
        add("out-shape", lambda l, x, o: l(x, out=o[:1]), ValueError,
            ["out has shape", f"expected {shape}"])
        add("out-dtype", lambda l, x, o: l(x, out=np.zeros(x.shape, F64)), TypeError,
            ["out has dtype float64", "expected float32"])
        add("out-readonly", lambda l, x, o: l(x, out=_ro(o)), ValueError, ["out is read-only"])
        add("out-strided", lambda l, x, o: l(x, out=np.zeros(x.shape[::-1], F32).T),
            ValueError, ["C-contiguous"])
        add("out-list", lambda l, x, o: l(x, out=o.tolist()), TypeError,
            ["out must be a NumPy array", "list"])
        add("out-partial-overlap", _overlap, ValueError, ["overlaps the input"])
        if hasattr(layer, "eps"):
            for v in (0.0, -1.0, float("nan"), float("inf")):
                add(f"eps-{v}", lambda l, x, o, v=v: _set(l, eps=v)(x), ValueError,
                    ["eps must be positive", repr(v)])
            add("eps-str", lambda l, x, o: _set(l, eps="1e-5")(x), TypeError,
                ["eps must be", "'1e-5'"])
        if hasattr(layer, "momentum"):
            for v in (-0.1, 1.5, float("nan")):
                add(f"momentum-{v}", lambda l, x, o, v=v: _set(l, momentum=v)(x), ValueError,
                    ["momentum must be in [0, 1]", repr(v)])
            add("momentum-str", lambda l, x, o: _set(l, momentum="0.1")(x), TypeError,
                ["momentum", "'0.1'"])
        if getattr(layer, "weight", None) is not None:
            ws = layer.weight.shape
            bad = ws[:-1] + (ws[-1] + 1,)
            add("weight-shape", lambda l, x, o, b=bad: _set(l, weight=np.ones(b, F32))(x),
                ValueError, ["weight of shape", f"got shape {bad}"])
            add("weight-dtype", lambda l, x, o, s=ws: _set(l, weight=np.ones(s, F64))(x),
                TypeError, ["weight has dtype float64", "float32"])
            add("weight-int", lambda l, x, o, s=ws: _set(l, weight=np.ones(s, np.int32))(x),
                TypeError, ["weight", "int32"])
        if getattr(layer, "bias", None) is not None:
            bs = layer.bias.shape
            add("bias-shape", lambda l, x, o, s=bs: _set(l, bias=np.zeros(s + (1,), F32))(x),
                ValueError, ["bias of shape", f"got shape {bs + (1,)}"])
        if getattr(layer, "running_mean", None) is not None:
            add("running-mean-shape",
                lambda l, x, o: _set(l, running_mean=np.zeros(2, F32))(x), ValueError,
                ["running_mean of shape (3,)", "got shape (2,)"])
            add("running-var-readonly",
                lambda l, x, o: _set(l, running_var=_ro(np.ones(3, F32)))(x), ValueError,
                ["running_var is read-only"])
            add("running-var-dtype",
                lambda l, x, o: _set(l, running_var=np.ones(3, F64))(x), TypeError,
                ["running_var has dtype float64", "float32"])
            add("running-var-list",
                lambda l, x, o: _set(l, running_var=[1.0, 1.0, 1.0])(x), TypeError,
                ["running_var must be a NumPy array", "list"])
        # backward: wrong grad_output; the forward's saved state survives
        add("grad-shape", lambda l, x, o: l.backward(x[:1]), ValueError,
            ["grad_output has shape", f"expected {shape}"])
        add("grad-dtype", lambda l, x, o: l.backward(x.astype(F64)), TypeError,
            ["grad_output has dtype float64", "float32"])
        add("grad-int", lambda l, x, o: l.backward(x.astype(np.int32)), TypeError,
            ["grad_output", "int32"])
        add("grad-none", lambda l, x, o: l.backward(None), TypeError, ["grad_output", "object"])
    return out


@pytest.mark.parametrize("name,call,exc,words", _cases())
def test_bad_call_raises_and_changes_nothing(name, call, exc, words):
    _run_case(name, call, exc, words)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_backward_before_any_forward(name):
    _run_case(name, lambda l, x, o: l.backward(x), RuntimeError,
              ["no forward call"], forward_first=False)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_backward_after_mode_switch(name):
    """Layers whose forward differs by mode refuse a backward across a mode
    switch; the others (same computation in both modes) give the gradient of
    the forward that ran."""
    make, shape, _, _, modal = LAYERS[name]
    layer = make()
    x, g = _x(shape), _x(shape)[::-1].copy()
    layer(x)
    expected = layer.backward(g).copy()
    layer.eval()
    if modal:
        before = _snapshot(layer)
        originals = {k: v for k, v in vars(layer).items() if isinstance(v, np.ndarray)}
        with pytest.raises(RuntimeError, match="training mode but the layer is now in eval mode"):
            layer.backward(g)
        _assert_unchanged(layer, before, originals)
        layer.train()
        np.testing.assert_array_equal(layer.backward(g), expected)
    else:
        np.testing.assert_array_equal(layer.backward(g), expected)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_failed_forward_keeps_the_previous_one_for_backward(name):
    make, shape = LAYERS[name][:2]
    x, g = _x(shape), _x(shape)[::-1].copy()
    ref = make()
    ref(x)
    want = ref.backward(g)
    layer = make()
    layer(x)
    with pytest.raises(TypeError):
        layer(x.astype(np.int64))
    with pytest.raises(ValueError):
        layer(x, out=np.empty((1,), F32))
    np.testing.assert_array_equal(layer.backward(g), want)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_load_state_dict_is_checked_and_atomic(name):
    layer = LAYERS[name][0]()
    good = layer.state_dict()
    if not good:
        with pytest.raises(KeyError, match=r"unexpected keys \['weight'\]"):
            layer.load_state_dict({"weight": np.ones(3)})
        return
    before = {k: v.copy() for k, v in good.items()}
    first = next(iter(good))
    wrong = np.zeros(good[first].shape + (2,), F32)
    # the bad key comes last: the good keys before it must not be applied
    bad = {**{k: v + 1 for k, v in good.items() if k != first}, first: wrong}
    with pytest.raises(ValueError) as info:
        layer.load_state_dict(bad)
    assert f"{first} has shape {wrong.shape}" in str(info.value)
    assert f"expects {good[first].shape}" in str(info.value)
    with pytest.raises(TypeError, match="complex64"):
        layer.load_state_dict({**good, first: good[first].astype(np.complex64)})
    with pytest.raises(KeyError, match=r"unexpected keys \['extra'\]"):
        layer.load_state_dict({**good, "extra": np.zeros(1)})
    with pytest.raises(KeyError, match=rf"missing keys \['{first}'\]"):
        layer.load_state_dict({k: v for k, v in good.items() if k != first})
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(layer, k), v, err_msg=k)


# Zero-size dimensions and one value per channel: the documented outcome per
# layer and mode.  "ok": an empty (or constant) output of the input's shape
# and a backward of zeros; otherwise (exception, words).  An empty batch is
# PyTorch's: an empty output in training too, running statistics unchanged,
# BatchNorm's num_batches_tracked counting the call.
ONE_SPATIAL = (ValueError, ["more than 1 spatial element"])
OUTCOMES = {
    # name: {(what, mode): outcome}
    "BatchNorm2d": {("N=0", "train"): "ok", ("N=0", "eval"): "ok",
                    ("L=0", "train"): "ok", ("L=0", "eval"): "ok",
                    ("C=0", "train"): (ValueError, ["3 channels", "got 0 channels"]),
                    ("one", "train"): (ValueError, ["more than 1 value per channel"]),
                    ("one", "eval"): "ok"},
    "InstanceNorm2d": {("N=0", "train"): "ok", ("N=0", "eval"): "ok",
                       ("L=0", "train"): "ok", ("L=0", "eval"): "ok",
                       ("one", "train"): ONE_SPATIAL, ("one", "eval"): "ok"},
    "InstanceNorm1d-untracked": {("N=0", "train"): "ok", ("L=0", "eval"): "ok",
                                 ("one", "eval"): ONE_SPATIAL},
    "GroupNorm": {("N=0", "train"): "ok", ("L=0", "train"): "ok", ("one", "train"): "ok",
                  ("C=0", "train"): (ValueError, ["4 channels", "got 0 channels"])},
    "LayerNorm": {("N=0", "train"): "ok",
                  ("L=0", "train"): (ValueError, ["trailing dimensions (4, 5)"])},
    "RMSNorm": {("N=0", "train"): "ok", ("C=0", "train"): "ok", ("one", "train"): "ok"},
    "LocalResponseNorm": {("N=0", "train"): "ok", ("C=0", "train"): "ok",
                          ("L=0", "train"): "ok", ("one", "train"): "ok"},
    "SwitchableNorm2d": {("N=0", "train"): (ValueError, ["non-empty input"]),
                         ("N=0", "eval"): (ValueError, ["non-empty input"]),
                         ("L=0", "train"): (ValueError, ["non-empty input"]),
                         ("one", "train"): (ValueError, ["more than 1 value per channel"]),
                         ("one", "eval"): "ok"},
    # the count is the whole batch's (every rank's; one rank here)
    "SyncBatchNorm": {("N=0", "train"): "ok", ("N=0", "eval"): "ok",
                      ("L=0", "eval"): "ok", ("L=0", "train"): "ok",
                      ("C=0", "train"): (ValueError, ["3 channels", "got 0 channels"]),
                      ("one", "train"): (ValueError, ["more than 1 value per channel",
                                                      "got 1 over all 1 ranks"]),
                      ("one", "eval"): "ok"},
}
MAKERS = dict({k: v[0] for k, v in LAYERS.items()},
              **{"InstanceNorm1d-untracked": lambda: fastnorm.InstanceNorm1d(3)})
SHAPES = dict({k: v[1] for k, v in LAYERS.items()},
              **{"InstanceNorm1d-untracked": (2, 3, 7)})


def _degenerate(shape, what):
    s = list(shape)
    if what == "N=0":
        s[0] = 0
    elif what == "C=0":
        s[1] = 0
    elif what == "L=0":
        s[-1] = 0
    else:  # one value per channel (per row for RMSNorm: normalized_shape (1,))
        s = [1, s[1]] + [1] * (len(s) - 2)
    return tuple(s)


@pytest.mark.parametrize("name,what,mode,outcome",
                         [(n, w, m, o) for n, d in OUTCOMES.items() for (w, m), o in d.items()],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_zero_size_and_single_value_outcomes(name, what, mode, outcome):
    layer = MAKERS[name]()
    if name == "RMSNorm" and what == "one":
        layer = fastnorm.RMSNorm(1)
    layer.train(mode == "train")
    shape = _degenerate(SHAPES[name], what)
    if name == "RMSNorm" and what == "one":
        shape = (3, 1)
    x = np.full(shape, 2.5, F32)
    before = _snapshot(layer)
    originals = {k: v for k, v in vars(layer).items() if isinstance(v, np.ndarray)}
    if outcome != "ok":
        exc, words = outcome
        with pytest.raises(exc) as info:
            layer(x)
        for w in words:
            assert w in str(info.value), (w, str(info.value))
        assert str(shape) in str(info.value) or what == "C=0"
        _assert_unchanged(layer, before, originals)
        return
    y = layer(x)
    assert y.shape == shape and y.dtype == F32
    assert np.isfinite(y).all()
    if x.size and name != "LocalResponseNorm" and mode == "train":
        # one value per normalised slice: x - mean is 0, y is the bias
        b = getattr(layer, "bias", None)
        want = np.zeros(shape, F32) if b is None else np.broadcast_to(
            b.reshape((-1,) + (1,) * (len(shape) - 2)) if name != "RMSNorm" else b, shape)
        if name != "RMSNorm":
            np.testing.assert_array_equal(y, want)
    g = np.ones(shape, F32)
    dx = layer.backward(g)
    assert dx.shape == shape and np.isfinite(dx).all()
    if x.size == 0:
        for grad in (layer.weight_grad, layer.bias_grad) if hasattr(layer, "weight_grad") else ():
            if grad is not None:
                assert (grad == 0).all()
    if getattr(layer, "running_mean", None) is not None and x.size == 0:
        # an empty batch leaves the running statistics as they were; a
        # BatchNorm in training counts it (PyTorch), InstanceNorm (numeric
        # momentum) does not
        for k in ("running_mean", "running_var"):
            assert getattr(layer, k).tobytes() == before[0][k][2], k
        counted = mode == "train" and "BatchNorm" in name
        nbt = int(np.frombuffer(before[0]["num_batches_tracked"][2], np.int64)[0])
        assert int(layer.num_batches_tracked) == nbt + counted


def test_rank_message_names_a_range_not_a_list():
    with pytest.raises(ValueError) as info:
        fastnorm.GroupNorm(2, 4)(np.ones(3, F32))
    assert "expected 2D to 63D input (N, C, *), got 1D input of shape (3,)" in str(info.value)


# --------------------------------------------------------------------------
# Functional API: the same table; nothing passed in is changed.
# --------------------------------------------------------------------------
import fastnorm.functional as Fn  # noqa: E402

X4 = _x((2, 4, 3, 5))
W4, B4 = np.linspace(0.5, 2, 4).astype(F32), np.linspace(-1, 1, 4).astype(F32)
RM, RV = np.linspace(-0.2, 0.2, 4).astype(F32), np.linspace(0.5, 1.5, 4).astype(F32)
W35 = np.ones((3, 5), F32)

# name: (forward(x, **kw), backward(g, x, **kw), bad ranks, parameter keyword
#        and its good value, wrong-channel input and words)
FUNCS = {
    "batch_norm": (lambda x, **k: Fn.batch_norm(x, RM, RV, k.pop("weight", W4), B4, **k),
                   lambda g, x, **k: Fn.batch_norm_backward(g, x, RM, RV, k.pop("weight", W4),
                                                            B4, **k),
                   [1], W4, (np.ones((2, 3, 5), F32), ["(4,)", "3 channels"])),
    "instance_norm": (lambda x, **k: Fn.instance_norm(x, weight=k.pop("weight", W4), bias=B4, **k),
                      lambda g, x, **k: Fn.instance_norm_backward(
                          g, x, weight=k.pop("weight", W4), bias=B4, **k),
                      [1, 2], W4, (np.ones((2, 3, 5), F32), ["(4,)", "3 channels"])),
    "group_norm": (lambda x, **k: Fn.group_norm(x, 2, k.pop("weight", W4), B4, **k),
                   lambda g, x, **k: Fn.group_norm_backward(g, x, 2, k.pop("weight", W4), B4, **k),
                   [1], W4, (np.ones((2, 6, 5), F32), ["weight of shape (6,)", "got shape (4,)"])),
    "layer_norm": (lambda x, **k: Fn.layer_norm(x, (3, 5), k.pop("weight", W35), None, **k),
                   lambda g, x, **k: Fn.layer_norm_backward(g, x, (3, 5), k.pop("weight", W35),
                                                            None, **k),
                   [1], W35, (np.ones((2, 4, 5, 3), F32), ["trailing dimensions (3, 5)"])),
    "rms_norm": (lambda x, **k: Fn.rms_norm(x, (3, 5), k.pop("weight", W35), **k),
                 lambda g, x, **k: Fn.rms_norm_backward(g, x, (3, 5), k.pop("weight", W35), **k),
                 [1], W35, (np.ones((2, 4, 5, 3), F32), ["trailing dimensions (3, 5)"])),
    "local_response_norm": (lambda x, **k: Fn.local_response_norm(x, 3, **k),
                            lambda g, x, **k: Fn.local_response_norm_backward(g, x, 3, **k),
                            [1, 2], None, None),
}
SHARED = (X4, W4, B4, RM, RV, W35)


def _fcases():
    out = []
    for name, (fwd, bwd, ranks, w, channels) in FUNCS.items():
        def add(tag, call, exc, words, name=name):
            out.append(pytest.param(name, call, exc, words, id=f"{name}-{tag}"))
        for r in ranks:
            bad = tuple(range(2, 2 + r))
            add(f"rank{r}", lambda x, o, f=fwd, b=bad: f(np.ones(b, F32)), ValueError,
                ["expected", str(bad)])
        if channels is not None:
            add("channels", lambda x, o, f=fwd, c=channels[0]: f(c), ValueError, channels[1])
        for dt in ("int32", "bool", "complex128", "float128", "object"):
            add(f"dtype-{dt}", lambda x, o, f=fwd, dt=dt: f(x.astype(dt)), TypeError,
                [NAMES, f"got {dt}"])
        add("out-shape", lambda x, o, f=fwd: f(x, out=o[:1]), ValueError, ["out has shape"])
        add("out-dtype", lambda x, o, f=fwd: f(x, out=o.astype(F64)), TypeError,
            ["out has dtype float64"])
        add("out-readonly", lambda x, o, f=fwd: f(x, out=_ro(o)), ValueError, ["read-only"])
        add("grad-shape", lambda x, o, b=bwd: b(x[:1], x), ValueError, ["grad_output has shape"])
        add("grad-dtype", lambda x, o, b=bwd: b(x.astype(F64), x), TypeError,
            ["grad_output has dtype float64"])
        if w is not None:
            add("weight-shape", lambda x, o, f=fwd, w=w: f(x, weight=np.ones(w.size + 1, F32)),
                ValueError, ["weight of shape", f"got shape ({w.size + 1},)"])
            add("weight-dtype", lambda x, o, f=fwd, w=w: f(x, weight=w.astype(F64)),
                TypeError, ["weight has dtype float64"])
            add("bwd-weight-shape",
                lambda x, o, b=bwd, w=w: b(x, x, weight=np.ones(w.size + 1, F32)),
                ValueError, ["weight of shape"])
        if name != "local_response_norm":
            for v in (0.0, float("nan"), float("inf")):
                add(f"eps-{v}", lambda x, o, f=fwd, v=v: f(x, eps=v), ValueError,
                    ["eps must be positive", repr(v)])
                add(f"bwd-eps-{v}", lambda x, o, b=bwd, v=v: b(x, x, eps=v), ValueError,
                    ["eps must be positive"])
    for tag, call, exc, words in [
        ("momentum-nan", lambda x, o: Fn.batch_norm(x, RM, RV, training=True,
                                                     momentum=float("nan")),
         ValueError, ["momentum must be in [0, 1]", "nan"]),
        ("momentum-negative", lambda x, o: Fn.instance_norm(x, RM, RV, momentum=-0.5),
         ValueError, ["momentum must be in [0, 1]", "-0.5"]),
        ("running-readonly", lambda x, o: Fn.batch_norm(x, RM, _ro(RV), training=True),
         ValueError, ["running_var is read-only"]),
        ("running-one-of-two", lambda x, o: Fn.instance_norm(x, RM, None), ValueError,
         ["both running_mean and running_var"]),
        ("groups-do-not-divide", lambda x, o: Fn.group_norm(x, 3), ValueError,
         ["4 channels", "not divisible into 3 groups"]),
        ("lrn-size-0", lambda x, o: Fn.local_response_norm(x, 0), ValueError,
         ["size must be a positive integer", "0"]),
        ("lrn-beta-nan", lambda x, o: Fn.local_response_norm(x, 3, beta=float("nan")),
         ValueError, ["beta must be a finite real number", "nan"]),
        ("lrn-out-is-input", lambda x, o: Fn.local_response_norm(x, 3, out=x), ValueError,
         ["must not share memory"]),
        ("normalized-shape-0", lambda x, o: Fn.layer_norm(x, (0,)), ValueError,
         ["normalized_shape must be positive ints", "(0,)"]),
    ]:
        out.append(pytest.param(tag.split("-")[0], call, exc, words, id=tag))
    return out


@pytest.mark.parametrize("name,call,exc,words", _fcases())
def test_functional_bad_call_raises_and_changes_nothing(name, call, exc, words):
    keep = [a.copy() for a in SHARED]
    x = X4.copy()
    out = np.full(X4.shape, 7.0, F32)
    with pytest.raises(exc) as info:
        call(x, out)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    np.testing.assert_array_equal(x, X4)
    assert (out == 7.0).all()
    for a, b in zip(SHARED, keep):
        assert a.tobytes() == b.tobytes()
