"""The per-call fast paths (fastnorm/_kernels_fast.pxi) against the general
path, bit for bit, for every catalogue layer, mode and storage dtype; the
calls they must take and the calls they must leave to the general path."""
import numpy as np
import pytest

import fastnorm
import fastnorm.functional as F
from fastnorm import _catalogue as cat

import reference as ref
from util import fast_paths_off, general_path, took_fast_path

DTYPES = cat.storage_dtypes()

# (layer, mode) whose common call (a C-contiguous batched ndarray,
# parameters as built) must take a fast path; the catalogue's InstanceNorm
# tracks running statistics, so its training calls update them (groups_call)
# and its eval calls normalise with them (batch_call)
FAST = {("BatchNorm1d", "eval"), ("BatchNorm2d", "eval"), ("BatchNorm3d", "eval"),
        ("BatchNorm1d", "train"), ("BatchNorm2d", "train"), ("BatchNorm3d", "train"),
        ("SyncBatchNorm", "eval"), ("LayerNorm", "train"), ("RMSNorm", "train"),
        ("GroupNorm", "train"), ("InstanceNorm1d", "eval"), ("InstanceNorm2d", "eval"),
        ("InstanceNorm3d", "eval"), ("InstanceNorm1d", "train"), ("InstanceNorm2d", "train"),
        ("InstanceNorm3d", "train"), ("LocalResponseNorm", "train")}
# the same, for float32 and float64 data only (16-bit data: the general path)
FAST_WIDE = {("SwitchableNorm1d", "eval"), ("SwitchableNorm2d", "eval"),
             ("SwitchableNorm3d", "eval")}

# every entry's small shapes, and the tiny calls of inference
SHAPES = {e.name: e.shapes + tuple(s for s in [(1, 16, 8, 8), (1, 768), (1, 1, 4096),
                                               (1, 16), (2, 3, 96)]
                                   if len(s) in e.ranks)
          for e in cat.CATALOGUE}
CASES = [(e, s, dt, m) for e in cat.CATALOGUE for s in SHAPES[e.name] for dt in DTYPES
         for m in e.modes]


def _pair(entry, shape, dtype, mode, layer_dtype=None):
    """Two layers with the same state, in `mode`."""
    ldt = dtype if layer_dtype is None else layer_dtype
    a = entry.layer(shape, ldt, np.random.default_rng(1))
    b = entry.layer(shape, ldt, np.random.default_rng(1))
    for layer in (a, b):
        layer.train(mode == "train")
    return a, b


def _state(layer):
    return {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}


def _check(entry, shape, dtype, mode, layer_dtype=None):
    a, b = _pair(entry, shape, dtype, mode, layer_dtype)
    rng = np.random.default_rng(2)
    x = (rng.normal(size=shape) * 2 + 0.5).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    try:
        want = general_path(b, x)
    except (ValueError, TypeError) as e:    # e.g. BatchNorm training on one value
        with pytest.raises(type(e)) as got:
            a(x)
        assert str(got.value) == str(e)
        return None
    y = a(x)
    # one channel's running statistics: NumPy's mean over the samples may
    # add them pairwise, so the update is the general path's
    one_channel = entry.name.startswith("Instance") and mode == "train" and shape[1] == 1
    fast = ((entry.name, mode) in FAST
            or ((entry.name, mode) in FAST_WIDE and np.dtype(dtype) in (np.float32, np.float64)))
    assert took_fast_path(a) == (fast and len(shape) in entry.ranks and not one_channel)
    assert not took_fast_path(b)
    assert y.dtype == want.dtype and y.tobytes() == want.tobytes()
    for k, v in _state(a).items():
        assert v.tobytes() == _state(b)[k].tobytes(), k
    dx = a.backward(g)
    assert dx.tobytes() == b.backward(g).tobytes()
    for k in entry.params:
        ga, gb = getattr(a, k + "_grad", None), getattr(b, k + "_grad", None)
        assert (ga is None) == (gb is None), k
        if ga is not None:
            assert ga.dtype == gb.dtype and ga.tobytes() == gb.tobytes(), k
    return a, b, x, y


@pytest.mark.parametrize("entry,shape,dtype,mode", CASES,
                         ids=[cat.case_id(e, s, dt) + f"-{m}" for e, s, dt, m in CASES])
def test_fast_path_is_bitwise_the_general_path(entry, shape, dtype, mode):
    res = _check(entry, shape, dtype, mode)
    if res is None:
        return
    a, b, x, y = res
    if entry.name == "LocalResponseNorm":
        return          # out= must not overlap its input: tests/test_lrn.py
    # out= a separate array, and out=x (in place)
    out = np.full(shape, np.nan).astype(dtype)
    assert a(x, out=out) is out
    assert out.tobytes() == y.tobytes()
    xc = x.copy()
    yc = a(xc, out=xc)
    assert yc is xc and xc.tobytes() == y.tobytes()
    if entry.name in ("SwitchableNorm1d", "SwitchableNorm2d", "SwitchableNorm3d"):
        return
    with pytest.raises(RuntimeError, match="wrote its output over its input"):
        a.backward(np.zeros(shape, dtype))


MIXED = [(e, s, dt, m) for e, s, dt, m in CASES if dt.itemsize == 2]


@pytest.mark.parametrize("entry,shape,dtype,mode", MIXED,
                         ids=[cat.case_id(e, s, dt) + f"-{m}" for e, s, dt, m in MIXED])
def test_fast_path_mixed_type(entry, shape, dtype, mode):
    """16-bit data into a float32 layer (float32 parameters)."""
    _check(entry, shape, dtype, mode, layer_dtype=np.float32)


FUNCS = [(e, s, dt) for e in cat.CATALOGUE if e.functional and e.name != "SyncBatchNorm"
         for s in SHAPES[e.name] if len(s) in e.ranks for dt in DTYPES]


@pytest.mark.parametrize("entry,shape,dtype", FUNCS,
                         ids=[cat.case_id(e, s, dt) for e, s, dt in FUNCS])
@pytest.mark.parametrize("training", [False, True])
def test_functional_fast_path_is_bitwise_the_general_path(entry, shape, dtype, training):
    layer = entry.layer(shape, dtype, np.random.default_rng(1))
    x = np.random.default_rng(2).normal(size=shape).astype(dtype)
    if not training and entry.name.startswith("Instance"):
        layer.running_var[...] = np.abs(layer.running_var)
    try:
        want = general_path(entry.functional_call, layer, x, training=training)
    except ValueError as e:     # e.g. batch statistics of one value
        with pytest.raises(ValueError) as got:
            entry.functional_call(layer, x, training=training)
        assert str(got.value) == str(e)
        return
    assert entry.functional_call(layer, x, training=training).tobytes() == want.tobytes()


# -- calls the fast paths leave to the general path ---------------------------

def test_rows_fast_path_leaves_odd_calls_to_the_general_path():
    rng = np.random.default_rng(0)
    ln = fastnorm.LayerNorm(6)
    ln.weight[...] = rng.uniform(0.5, 2, 6)
    ln.bias[...] = rng.normal(size=6)
    x = rng.normal(size=(3, 4, 6)).astype(np.float32)
    want = general_path(ln, x)
    for odd in (np.asfortranarray(x), x.astype(">f4"),
                x.transpose(1, 0, 2).copy().transpose(1, 0, 2)):
        assert ln(odd).tobytes() == want.tobytes()
        assert not took_fast_path(ln)
    xr = x.copy()
    xr.flags.writeable = False
    assert ln(xr).tobytes() == want.tobytes() and took_fast_path(ln)
    # eps as an int: general path, same bits as the float
    ln.eps = 1
    assert ln(x).tobytes() == general_path(ln, x).tobytes() and not took_fast_path(ln)
    ln.eps = 1e-5
    # errors keep the general path's messages, and nothing is written
    with pytest.raises(ValueError, match=r"trailing dimensions \(6,\)"):
        ln(np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="input has dtype float64"):
        ln(x.astype(np.float64))
    with pytest.raises(ValueError, match="eps must be positive"):
        ln.eps = -1.0
        ln(x)
    ln.eps = 1e-5
    w = ln.weight
    ln.weight = w.astype(np.float64)
    with pytest.raises(TypeError, match="weight has dtype float64"):
        ln(x)
    ln.weight = w[:5].copy()
    with pytest.raises(ValueError, match=r"expected weight of shape \(6,\)"):
        ln(x)
    ln.weight = w
    buf = np.zeros(x.size + 1, np.float32)
    xv, ov = buf[1:].reshape(x.shape), buf[:-1].reshape(x.shape)
    before = buf.copy()
    with pytest.raises(ValueError, match="out overlaps the input"):
        ln(xv, out=ov)
    assert buf.tobytes() == before.tobytes()
    ro = np.zeros(x.shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        ln(x, out=ro)
    with pytest.raises(TypeError, match="out has dtype float64"):
        ln(x, out=np.zeros(x.shape))
    # an empty batch: the general path's empty result
    assert ln(np.zeros((0, 6), np.float32)).shape == (0, 6)
    assert not took_fast_path(ln)


def test_rms_fast_path_eps_none_is_the_dtype_epsilon():
    rng = np.random.default_rng(0)
    for dt in DTYPES:
        x = (rng.normal(size=(2, 5)) * 1e-3).astype(dt)     # (NumPy 1.24 promotes 16-bit * float)
        a, b = fastnorm.RMSNorm(5, dtype=dt), fastnorm.RMSNorm(5, dtype=dt)
        y = a(x)
        assert took_fast_path(a)
        assert y.tobytes() == general_path(b, x).tobytes()
        assert a._saved[2].tobytes() == b._saved.invstd.tobytes()


def test_bfloat16_takes_the_fast_path_once_known():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    ln = fastnorm.LayerNorm(8)
    x = np.ones((2, 8), ml_dtypes.bfloat16)
    ln(x)
    ln(x)
    assert took_fast_path(ln)


@pytest.mark.parametrize("D", [8, 600_000])
def test_layer_norm_bias_without_weight(D):
    """functional.layer_norm with a bias and no weight adds the bias (one-pass
    and two-pass rows alike)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, D)).astype(np.float32)
    b = rng.normal(size=D).astype(np.float32)
    y = F.layer_norm(x, (D,), None, b)
    e = ref.layer_norm(x, (D,), None, b, 1e-5)
    np.testing.assert_allclose(y, e, rtol=1e-5, atol=1e-5)
    with fast_paths_off():
        assert F.layer_norm(x, (D,), None, b).tobytes() == y.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [False, True])
def test_instance_norm_without_running_stats(dtype, training):
    """PyTorch's default InstanceNorm (no running statistics) normalises with
    the input's statistics in both modes: groups_call, as GroupNorm."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 5, 4)).astype(dtype)
    g = rng.normal(size=x.shape).astype(dtype)
    a, b = fastnorm.InstanceNorm2d(6, dtype=dtype), fastnorm.InstanceNorm2d(6, dtype=dtype)
    a.train(training)
    b.train(training)
    y = a(x)
    assert took_fast_path(a)
    assert y.tobytes() == general_path(b, x).tobytes()
    assert a.backward(g).tobytes() == b.backward(g).tobytes()
    f = F.instance_norm(x)
    assert f.tobytes() == y.tobytes()
    assert general_path(F.instance_norm, x).tobytes() == y.tobytes()
    # unbatched input: the general path, the same values
    assert a(x[0]).tobytes() == y[0].tobytes() and not took_fast_path(a)


@pytest.mark.parametrize("groups", [0, -1, -2, 3, 2.0, True])
def test_group_norm_bad_group_counts_keep_their_errors(groups):
    """A group count that is not a positive int dividing C is the general
    path's error, never a fast-path result, for the functional and for a
    layer whose num_groups was changed after construction."""
    x = np.zeros((2, 4, 3, 3), np.float32)
    with pytest.raises((ValueError, TypeError)):
        F.group_norm(x, groups)
    layer = fastnorm.GroupNorm(2, 4)
    layer.num_groups = groups
    with pytest.raises((ValueError, TypeError)):
        layer(x)


def test_layer_attributes_changed_after_construction_keep_their_errors():
    """The general path re-checks momentum (in every mode), channel counts
    and group counts; the fast paths decline what it would refuse."""
    x = np.zeros((2, 3, 4), np.float32)
    for layer in (fastnorm.BatchNorm1d(3).eval(), fastnorm.InstanceNorm1d(3).eval()):
        layer.momentum = 5.0
        with pytest.raises(ValueError, match="momentum"):
            layer(x)
    for layer in (fastnorm.BatchNorm1d(6).eval(), fastnorm.InstanceNorm1d(6)):
        layer.num_features = -1
        with pytest.raises(ValueError, match="channels"):
            layer(np.zeros((2, 6, 4), np.float32))
    gn = fastnorm.GroupNorm(2, 4, affine=False)
    gn.num_channels = -1
    with pytest.raises(ValueError, match="channels"):
        gn(np.zeros((2, 6, 4), np.float32))
    with pytest.raises(ValueError):
        F.group_norm(np.zeros((2, 4, 3), np.float32), 2 ** 70)
    with pytest.raises(ValueError):
        F.layer_norm(np.zeros((2, 4), np.float32), (2 ** 70,))


def test_batch_norm_eval_overflowing_scale_as_the_general_path():
    """weight * invstd beyond float64: the shift keeps the bias alone (no
    0 * inf), on both paths."""
    bn = fastnorm.BatchNorm1d(2, dtype=np.float64).eval()
    bn.weight[:] = 1e308
    bn.running_var[:] = 0.0
    x = np.array([[1.0, -2.0]])
    with np.errstate(over="ignore", invalid="ignore"):
        y = bn(x)
        assert took_fast_path(bn)
        want = general_path(bn, x)
    assert y.tobytes() == want.tobytes()
    assert np.isinf(y).all()


def test_out_on_the_inputs_memory_with_other_strides_is_refused():
    x = np.random.default_rng(0).random((1, 4)).astype(np.float32)
    out = np.lib.stride_tricks.as_strided(x, shape=(1, 4), strides=(8, 4), writeable=True)
    with pytest.raises(ValueError, match="out overlaps the input"):
        F.layer_norm(x, 4, out=out)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # the general path on inf * 0
@pytest.mark.parametrize("momentum", [0.1, None, 0.0, 1.0])
@pytest.mark.parametrize("track,affine", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("dtype,layer_dtype", [(np.float32, np.float32),
                                               (np.float64, np.float64),
                                               (np.float16, np.float32),
                                               (np.float16, np.float16)])
@pytest.mark.parametrize("cls", [fastnorm.BatchNorm2d, fastnorm.InstanceNorm2d])
def test_training_fast_path_is_the_general_path(cls, momentum, track, affine, dtype,
                                                layer_dtype):
    """Training calls of BatchNorm and InstanceNorm, one after another:
    outputs, running statistics, the batch count and gradients bit for bit
    those of the general path, NaN and infinity in the batch included
    (momentum=None: the cumulative average over the count)."""
    rng = np.random.default_rng(3)
    a, b = (cls(6, momentum=momentum, affine=affine, track_running_stats=track,
                dtype=layer_dtype)
            for _ in range(2))
    if affine:
        for layer in (a, b):
            layer.weight[...] = np.linspace(-2, 3, 6)
            layer.bias[...] = np.linspace(1, -1, 6)
    for step in range(4):
        x = (rng.normal(size=(3, 6, 5, 4)) * 3 + step).astype(dtype)
        if step == 2:
            x[1, 2, 3, 1] = np.nan
            x[0, 4, 0, 0] = np.inf
        g = rng.normal(size=x.shape).astype(dtype)
        y = a(x)
        assert took_fast_path(a)
        want = general_path(b, x)
        assert not took_fast_path(b)
        assert y.tobytes() == want.tobytes()
        sa, sb = _state(a), _state(b)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].tobytes() == sb[k].tobytes(), (step, k)
        assert a.backward(g).tobytes() == b.backward(g).tobytes()
        for k in ("weight_grad", "bias_grad"):
            ga, gb = getattr(a, k), getattr(b, k)
            assert (ga is None) == (gb is None)
            if ga is not None:
                assert ga.dtype == gb.dtype and ga.tobytes() == gb.tobytes(), k


def test_batch_norm_training_fast_path_failed_calls_change_nothing():
    """Calls the training fast path declines keep the general path's errors,
    and neither path changes a running statistic or the count first."""
    bn = fastnorm.BatchNorm1d(4)
    bn.running_mean[...] = [1, 2, 3, 4]
    before = _state(bn)
    for x, err in [(np.ones((1, 4), np.float32), "more than 1 value per channel"),
                   (np.ones((5, 3), np.float32), "expected input with 4 channels"),
                   (np.ones((5, 4), np.float64), "dtype")]:
        with pytest.raises((ValueError, TypeError), match=err):
            bn(x)
        for k, v in _state(bn).items():
            assert v.tobytes() == before[k].tobytes(), k
    bn.running_var.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        bn(np.ones((5, 4), np.float32))
    assert bn.running_mean.tobytes() == before["running_mean"].tobytes()
    assert int(bn.num_batches_tracked) == 0


def _backward_call(layer):
    """The backward fast path a layer's last forward leads to."""
    from fastnorm._native import kernels
    saved = layer._saved
    if type(saved) is tuple and len(saved) == 2:    # InstanceNorm's (saved, unbatched)
        saved = saved[0]
    if isinstance(layer, (fastnorm.LayerNorm, fastnorm.RMSNorm)):
        return kernels.rows_bwd_call, saved
    if type(saved[4]) is bool:
        return kernels.batch_bwd_call, saved
    return kernels.groups_bwd_call, saved


@pytest.mark.parametrize("make,shape,mode", [
    (lambda dt: fastnorm.BatchNorm2d(16, dtype=dt), (1, 16, 8, 8), "train"),
    (lambda dt: fastnorm.BatchNorm2d(16, dtype=dt), (1, 16, 8, 8), "eval"),
    (lambda dt: fastnorm.BatchNorm1d(16, dtype=dt), (64, 16), "train"),
    (lambda dt: fastnorm.InstanceNorm2d(16, affine=True, dtype=dt), (1, 16, 8, 8), "train"),
    (lambda dt: fastnorm.InstanceNorm2d(16, affine=True, track_running_stats=True, dtype=dt),
     (1, 16, 8, 8), "eval"),
    (lambda dt: fastnorm.GroupNorm(4, 16, dtype=dt), (1, 16, 8, 8), "train"),
    (lambda dt: fastnorm.GroupNorm(2, 6, affine=False, dtype=dt), (3, 6, 5), "train"),
    (lambda dt: fastnorm.LayerNorm(768, dtype=dt), (1, 768), "train"),
    (lambda dt: fastnorm.LayerNorm((4, 6), bias=False, dtype=dt), (130, 4, 6), "train"),
    (lambda dt: fastnorm.RMSNorm(4096, dtype=dt), (1, 1, 4096), "train"),
    (lambda dt: fastnorm.RMSNorm(96, elementwise_affine=False, dtype=dt), (70, 96), "train"),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_backward_fast_path_takes_the_common_call(make, shape, mode, dtype):
    """A tiny call's backward runs in one kernel call (the call returns its
    result, not None), with the general path's bits."""
    rng = np.random.default_rng(4)
    layer = make(dtype).train(mode == "train")
    for name in ("weight", "bias", "running_mean", "running_var"):
        v = getattr(layer, name, None)
        if v is not None:
            v[...] = rng.uniform(0.5, 2, v.shape)
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    layer(x)
    call, saved = _backward_call(layer)
    need_w, need_b = layer.weight is not None, layer.bias is not None
    r = call(g, saved, layer.weight, need_w, need_b)
    assert r is not None
    with fast_paths_off():
        dx = layer.backward(g)
    assert r[0].dtype == dx.dtype and r[0].tobytes() == dx.tobytes()
    for got, name in zip(r[1:], ("weight_grad", "bias_grad")):
        want = getattr(layer, name)
        assert (got is None) == (want is None), name
        if got is not None:
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes(), name
