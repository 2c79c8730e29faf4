"""BatchNorm1d/2d/3d and functional.batch_norm against the float64 reference."""
import numpy as np
import pytest

import fastnorm
import fastnorm.functional as F
import reference as ref
from util import general_path, took_fast_path

LAYERS = {2: fastnorm.BatchNorm1d, 3: fastnorm.BatchNorm1d, 4: fastnorm.BatchNorm2d,
          5: fastnorm.BatchNorm3d}
SHAPES = [(7, 3), (4, 5, 9), (3, 4, 5, 6), (2, 3, 4, 5, 3), (2, 2, 70, 70), (3, 2, 4097),
          (300, 530), (40, 70, 31), (1, 7, 5000)]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}


def _layer(shape, dtype, **kw):
    return LAYERS[len(shape)](shape[1], dtype=dtype, **kw)


def _params(layer, rng):
    C = layer.num_features
    if layer.weight is not None:
        layer.weight[...] = rng.uniform(0.5, 2.0, C)
    if layer.bias is not None:
        layer.bias[...] = rng.normal(size=C)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_training_forward_matches_reference(shape, dtype, affine, rng):
    x = (rng.normal(size=shape) * 3 + 1).astype(dtype)
    layer = _layer(shape, dtype, affine=affine)
    _params(layer, rng)
    rm0, rv0 = layer.running_mean.copy(), layer.running_var.copy()
    y = layer(x)
    ey, erm, erv, _, _ = ref.batch_norm(x, rm0, rv0, layer.weight, layer.bias, training=True)
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_allclose(y, ey, **TOL[dtype])
    np.testing.assert_allclose(layer.running_mean, erm, **TOL[dtype])
    np.testing.assert_allclose(layer.running_var, erv, **TOL[dtype])
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_eval_forward_uses_running_stats(shape, dtype, rng):
    x = rng.normal(size=shape).astype(dtype)
    layer = _layer(shape, dtype).eval()
    _params(layer, rng)
    layer.running_mean[...] = rng.normal(size=shape[1])
    layer.running_var[...] = rng.uniform(0.5, 3, size=shape[1])
    rm0, rv0 = layer.running_mean.copy(), layer.running_var.copy()
    y = layer(x)
    ey = ref.batch_norm(x, rm0, rv0, layer.weight, layer.bias, training=False)[0]
    np.testing.assert_allclose(y, ey, **TOL[dtype])
    assert np.array_equal(layer.running_mean, rm0) and np.array_equal(layer.running_var, rv0)
    assert int(layer.num_batches_tracked) == 0


def test_bias_false_and_no_tracking(rng):
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    layer = fastnorm.BatchNorm1d(3, bias=False, track_running_stats=False)
    assert layer.bias is None and layer.running_mean is None
    assert layer.num_batches_tracked is None
    _params(layer, rng)
    ey = ref.batch_norm(x, weight=layer.weight, training=True)[0]
    np.testing.assert_allclose(layer(x), ey, **TOL[np.float32])
    # eval without running statistics normalises with the batch's own
    np.testing.assert_allclose(layer.eval()(x), ey, **TOL[np.float32])
    layer.backward(np.ones_like(x))
    assert layer.bias_grad is None and layer.weight_grad is not None


@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0, 0.37, None])
def test_running_stats_over_steps(momentum, rng):
    layer = fastnorm.BatchNorm2d(4, momentum=momentum, dtype=np.float64)
    rm, rv = np.zeros(4), np.ones(4)
    for step in range(1, 6):
        x = rng.normal(loc=step, scale=step, size=(3, 4, 5, 2))
        layer(x)
        _, rm, rv, _, _ = ref.batch_norm(x, rm, rv, training=True, momentum=momentum,
                                         num_batches_tracked=step)
        assert int(layer.num_batches_tracked) == step
        np.testing.assert_allclose(layer.running_mean, rm, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.running_var, rv, rtol=1e-12, atol=1e-12)
    if momentum is None:
        # cumulative average: exactly the mean of the batch statistics
        assert layer.running_mean.std() > 0


def test_momentum_none_is_cumulative_average(rng):
    layer = fastnorm.BatchNorm1d(3, momentum=None, dtype=np.float64)
    means, uvars = [], []
    for _ in range(4):
        x = rng.normal(size=(6, 3)) * rng.uniform(1, 5) + rng.normal()
        layer(x)
        means.append(x.mean(0))
        uvars.append(x.var(0, ddof=1))
    np.testing.assert_allclose(layer.running_mean, np.mean(means, 0), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, np.mean(uvars, 0), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_matches_reference_and_updates_in_place(dtype, rng):
    x = rng.normal(size=(5, 3, 7)).astype(dtype)
    rm = rng.normal(size=3).astype(dtype)
    rv = rng.uniform(1, 2, 3).astype(dtype)
    w = rng.uniform(0.5, 2, 3).astype(dtype)
    b = rng.normal(size=3).astype(dtype)
    ey, erm, erv, _, _ = ref.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2)
    rm_id = rm
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2)
    np.testing.assert_allclose(y, ey, **TOL[dtype])
    assert rm is rm_id
    np.testing.assert_allclose(rm, erm, **TOL[dtype])
    np.testing.assert_allclose(rv, erv, **TOL[dtype])
    # eval: running statistics, unchanged
    before = rm.copy()
    ey = ref.batch_norm(x, rm, rv, w, b, training=False)[0]
    np.testing.assert_allclose(F.batch_norm(x, rm, rv, w, b), ey, **TOL[dtype])
    assert np.array_equal(rm, before)
    # training without running statistics
    ey = ref.batch_norm(x, None, None, w, b, training=True)[0]
    np.testing.assert_allclose(F.batch_norm(x, None, None, w, b, training=True), ey,
                               **TOL[dtype])


@pytest.mark.parametrize("training", [True, False])
def test_functional_backward_matches_reference(training, rng):
    x = rng.normal(size=(4, 3, 6))
    dy = rng.normal(size=x.shape)
    rm, rv = rng.normal(size=3), rng.uniform(1, 2, 3)
    w = rng.uniform(0.5, 2, 3)
    dx, dw, db = F.batch_norm_backward(dy, x, rm, rv, w, np.zeros(3), training=training)
    if training:
        mean, var = x.mean((0, 2)), x.var((0, 2))
    else:
        mean, var = rm, rv
    edx, edw, edb = ref.batch_norm_backward(dy, x, mean, var, w, training=training)
    np.testing.assert_allclose(dx, edx, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(dw, edw, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(db, edb, rtol=1e-11, atol=1e-12)
    assert F.batch_norm_backward(dy, x, rm, rv, training=training)[1:] == (None, None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_layer_backward_matches_reference(shape, dtype, training, rng):
    x = (rng.normal(size=shape) * 2 - 1).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    layer = _layer(shape, dtype)
    _params(layer, rng)
    layer.running_mean[...] = rng.normal(size=shape[1])
    layer.running_var[...] = rng.uniform(0.5, 2, shape[1])
    rm0, rv0 = layer.running_mean.copy(), layer.running_var.copy()
    layer.train(training)
    layer(x)
    dx = layer.backward(dy)
    if training:
        _, _, _, mean, var = ref.batch_norm(x, training=True)
    else:
        mean, var = rm0, rv0
    edx, edw, edb = ref.batch_norm_backward(dy, x, mean, var, layer.weight, training)
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, edx, **tol)
    np.testing.assert_allclose(layer.weight_grad, edw, rtol=tol["rtol"],
                               atol=tol["atol"] * x.size / shape[1])
    np.testing.assert_allclose(layer.bias_grad, edb, rtol=tol["rtol"],
                               atol=tol["atol"] * x.size / shape[1])
    assert dx.dtype == dtype and layer.weight_grad.dtype == dtype


def test_backward_can_be_repeated_after_one_forward(rng):
    x = rng.normal(size=(4, 3, 8))
    layer = fastnorm.BatchNorm1d(3, dtype=np.float64)
    _params(layer, rng)
    layer(x)
    g1, g2 = rng.normal(size=x.shape), rng.normal(size=x.shape)
    d1 = layer.backward(g1)
    w1 = layer.weight_grad.copy()
    d2 = layer.backward(g2)
    fresh = fastnorm.BatchNorm1d(3, dtype=np.float64)
    fresh.load_state_dict(layer.state_dict())
    fresh.weight[...] = layer.weight
    fresh(x)
    np.testing.assert_array_equal(fresh.backward(g2), d2)
    np.testing.assert_array_equal(layer.backward(g1), d1)
    np.testing.assert_array_equal(layer.weight_grad, w1)


def test_out_and_in_place(rng):
    x = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    layer = fastnorm.BatchNorm2d(3).eval()
    layer.running_mean[...] = [1, 2, 3]
    expect = layer(x)
    out = np.empty_like(x)
    assert layer(x, out=out) is out
    np.testing.assert_array_equal(out, expect)
    xc = x.copy()
    assert layer(xc, out=xc) is xc
    np.testing.assert_array_equal(xc, expect)
    # training in place: same values as out-of-place
    t1, t2 = fastnorm.BatchNorm2d(3), fastnorm.BatchNorm2d(3)
    xc = x.copy()
    np.testing.assert_array_equal(t1(xc, out=xc), t2(x))
    np.testing.assert_array_equal(t1.running_var, t2.running_var)


@pytest.mark.parametrize("make", [
    lambda a: a.transpose(0, 1, 3, 2),
    lambda a: a[:, :, ::2, 1:],
    lambda a: a[::-1, :, ::-1],
    lambda a: np.asfortranarray(a),
    lambda a: a.astype(a.dtype.newbyteorder(">")),
], ids=["transposed", "sliced", "negative-stride", "fortran", "byteswapped"])
@pytest.mark.parametrize("training", [True, False])
def test_non_contiguous_input_equals_contiguous_copy(make, training, rng):
    base = rng.normal(size=(3, 4, 6, 8)).astype(np.float32)
    x = make(base)
    snapshot = x.copy()
    l1, l2 = fastnorm.BatchNorm2d(4).train(training), fastnorm.BatchNorm2d(4).train(training)
    y = l1(x)
    xc = np.ascontiguousarray(x).astype(np.float32)
    np.testing.assert_array_equal(y, l2(xc))
    np.testing.assert_array_equal(l1.running_mean, l2.running_mean)
    g = rng.normal(size=x.shape).astype(np.float32)
    np.testing.assert_array_equal(l1.backward(g[..., ::1]), l2.backward(g))
    np.testing.assert_array_equal(x, snapshot)


def test_input_is_never_modified(rng):
    x = rng.normal(size=(4, 3, 9)).astype(np.float32)
    keep = x.copy()
    layer = fastnorm.BatchNorm1d(3)
    layer(x)
    layer.backward(np.ones_like(x))
    layer.eval()(x)
    F.batch_norm(x, None, None, training=True)
    np.testing.assert_array_equal(x, keep)


def test_large_offset_float32_is_accurate(rng):
    """1e4 + N(0, 1) in float32: y must match the float64 result of the
    same float32 data to float32 precision (a fused x*s + t would lose ~1e-3)."""
    for x, layer in [((1e4 + rng.normal(size=(16, 4, 32, 32))).astype(np.float32),
                      fastnorm.BatchNorm2d(4)),
                     ((1e4 + rng.normal(size=(4000, 300))).astype(np.float32),
                      fastnorm.BatchNorm1d(300))]:
        y = layer(x)
        ey = ref.batch_norm(x, training=True)[0]
        err = np.abs(y - ey).max()
        assert err < 5e-6, err


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (5, 3, 0, 4)])
def test_empty_batch_is_an_empty_output_and_counts(shape, rng):
    """PyTorch's semantics: an empty batch in training gives an empty output,
    leaves the running statistics and counts the batch; with momentum=None
    the count then weighs the next batch (1 / num_batches_tracked)."""
    layer = fastnorm.BatchNorm2d(3, momentum=None, dtype=np.float64)
    layer.weight[...] = [1.0, 2.0, 3.0]
    x0 = np.zeros(shape)
    y = layer(x0)
    assert y.shape == shape and y.dtype == np.float64
    assert (layer.running_mean == 0).all() and (layer.running_var == 1).all()
    assert int(layer.num_batches_tracked) == 1
    dx = layer.backward(np.zeros(shape))
    assert dx.shape == shape
    assert (layer.weight_grad == 0).all() and (layer.bias_grad == 0).all()
    x = rng.normal(size=(4, 3, 5, 5)) * 2 + 1
    layer(x)
    assert int(layer.num_batches_tracked) == 2
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(layer.running_mean, mean / 2, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, 0.5 + var / 2, rtol=1e-12)
    layer.eval()
    assert layer(x0).shape == shape
    assert int(layer.num_batches_tracked) == 2


def test_functional_empty_batch_in_training(rng):
    rm, rv = rng.normal(size=3), rng.uniform(1, 2, 3)
    rm0, rv0 = rm.copy(), rv.copy()
    x = np.zeros((0, 3, 4))
    y = F.batch_norm(x, rm, rv, np.ones(3), np.zeros(3), training=True)
    assert y.shape == x.shape
    assert (rm == rm0).all() and (rv == rv0).all()
    dx, dw, db = F.batch_norm_backward(np.zeros_like(x), x, rm, rv, np.ones(3), np.zeros(3),
                                       training=True)
    assert dx.shape == x.shape and (dw == 0).all() and (db == 0).all()


def test_nan_propagates_to_its_channel_only(rng):
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    x[1, 1, 2] = np.nan
    layer = fastnorm.BatchNorm1d(3)
    y = layer(x)
    assert np.isnan(y[:, 1]).all()
    assert np.isfinite(y[:, [0, 2]]).all()
    assert np.isnan(layer.running_mean[1]) and np.isfinite(layer.running_mean[[0, 2]]).all()


def test_repr_and_train_eval_return_layer():
    layer = fastnorm.BatchNorm3d(5, eps=1e-3, momentum=None, affine=False)
    assert repr(layer) == ("BatchNorm3d(5, eps=0.001, momentum=None, affine=False, "
                           "bias=False, track_running_stats=True)")
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True


def test_reset_parameters_and_running_stats(rng):
    layer = fastnorm.BatchNorm1d(3)
    layer(rng.normal(size=(5, 3)).astype(np.float32))
    layer.weight[...] = 3
    layer.reset_running_stats()
    assert (layer.running_mean == 0).all() and (layer.running_var == 1).all()
    assert int(layer.num_batches_tracked) == 0 and (layer.weight == 3).all()
    layer.reset_parameters()
    assert (layer.weight == 1).all() and (layer.bias == 0).all()


# the variance of such data (>= 1e40) does not fit a float32 running_var:
# storing it overflows to inf, as in PyTorch; numpy warns about that cast
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("scale", [1e20, 1e30, 1e37])
def test_float32_near_its_range_keeps_finite_accurate_statistics(scale, rng):
    """float32 statistics run in float32 blocks flushed to float64; a block
    whose float32 sums overflow (squares above 3.4e38; at 1e37, also block
    sums of 64 values) is redone in float64, so the result is that of the
    float64 reference, not inf or nan.  (Values beyond ~1.7e38 are out of
    reach: x - mean itself overflows float32 when normalising.)"""
    x = (rng.normal(size=(4, 3, 16, 16)) * scale).astype(np.float32)
    layer = fastnorm.BatchNorm2d(3)
    y = layer(x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, ref.batch_norm(x, training=True)[0], rtol=2e-5, atol=2e-5)
    assert np.isfinite(layer.running_mean).all()
    ln = fastnorm.LayerNorm(256)(x.reshape(12, 256))
    np.testing.assert_allclose(ln, ref.layer_norm(x.reshape(12, 256), (256,)), rtol=2e-5, atol=2e-5)
    # short rows: one float32 block of 16 lanes (8 rows side by side in the
    # AVX-512 copy), then float64 for the last values
    for D in (40, 57, 96, 100, 200):
        rows = x.ravel()[: x.size // D * D].reshape(-1, D)
        ln = fastnorm.LayerNorm(D)(rows)
        assert np.isfinite(ln).all(), D
        np.testing.assert_allclose(ln, ref.layer_norm(rows, (D,)), rtol=2e-5, atol=2e-5)
    # RMSNorm's one-pass sums of squares (squares above 3.4e38 from 1.8e19):
    # short rows (8 side by side, and alone), rows of several pieces of 4096,
    # rows longer than FUSE_BYTES (the two-pass kernels)
    big = (rng.normal(size=2 * 140000) * scale).astype(np.float32)
    for D in (40, 57, 96, 100, 200, 9000, 140000):
        src = x.ravel() if D < 1000 else big
        rows = src[: src.size // D * D].reshape(-1, D)
        rn = fastnorm.RMSNorm(D, eps=1e-5)(rows)
        assert np.isfinite(rn).all(), D
        np.testing.assert_allclose(rn, ref.layer_norm(rows, (D,), rms=True), rtol=2e-5,
                                   atol=2e-5)


# the weight gradient of such dy (~1e38 * xhat) may overflow float32: numpy warns
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("make", [lambda: fastnorm.BatchNorm2d(3),
                                  lambda: fastnorm.GroupNorm(1, 3),
                                  lambda: fastnorm.InstanceNorm2d(3, affine=True)],
                         ids=["batch", "group", "instance"])
def test_float32_backward_sums_that_overflow_are_redone_in_float64(make, rng):
    """Backward sums of float32 data run in float32 vectors over blocks of 64
    values (lane j sums values j, j + 8, ...); a block whose float32 sum
    overflows is summed again in float64, so a gradient the float32 range can
    hold comes out finite and exact (bias grad = sum of dy)."""
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    # channel 1 is one block; its values 0, 16, 32, 48 share a lane, where
    # 3e38 + 3e38 overflows float32; the float64 sum of the block is exactly 0
    g[0, 1] = 0
    g[0, 1, ::2, 0] = [3e38, 3e38, -3e38, -3e38]
    layer = make()
    layer(x)
    layer.backward(g)
    assert layer.bias_grad[1] == 0
    expect = g.astype(np.float64).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(layer.bias_grad, expect, rtol=1e-6)


# --- the eval fast path (one kernel call for the common eval call) ---------

def _eval_pair(shape, dtype, rng, affine=True):
    """Two identical eval layers (the tests call the second with the fast
    paths off)."""
    a = _layer(shape, dtype, affine=affine)
    _params(a, rng)
    a.running_mean[...] = rng.normal(size=shape[1])
    a.running_var[...] = rng.uniform(0.3, 3.0, shape[1])
    b = _layer(shape, dtype, affine=affine)
    b.load_state_dict(a.state_dict())
    return a.eval(), b.eval()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 16, 8, 8), (7, 3), (300, 530), (2, 70, 5, 3),
                                   (3, 2, 4097), (2, 3, 4, 5, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_eval_fast_path_is_bitwise_the_general_path(shape, dtype, affine, rng):
    fast, general = _eval_pair(shape, dtype, rng, affine)
    x = (rng.normal(size=shape) * 3 + 1).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    y = fast(x)
    assert took_fast_path(fast)
    np.testing.assert_array_equal(y, general_path(general, x), strict=True)
    assert not took_fast_path(general)
    ey = ref.batch_norm(x, fast.running_mean, fast.running_var, fast.weight, fast.bias,
                        training=False)[0]
    np.testing.assert_allclose(y, ey, **TOL[dtype])
    np.testing.assert_array_equal(fast.backward(g), general.backward(g), strict=True)
    if affine:
        np.testing.assert_array_equal(fast.weight_grad, general.weight_grad, strict=True)
        np.testing.assert_array_equal(fast.bias_grad, general.bias_grad, strict=True)
    # out= a separate array, and out=x (in place: backward then refuses)
    out = np.full(shape, np.nan, dtype)
    assert fast(x, out=out) is out
    assert took_fast_path(fast)
    np.testing.assert_array_equal(out, y)
    xc = x.copy()
    assert fast(xc, out=xc) is xc
    assert took_fast_path(fast)
    np.testing.assert_array_equal(xc, y)
    with pytest.raises(RuntimeError, match="wrote its output over its input"):
        fast.backward(g)


def test_eval_fast_path_leaves_odd_calls_to_the_general_path(rng):
    shape = (2, 4, 3, 5)
    fast, general = _eval_pair(shape, np.float32, rng)
    x = rng.normal(size=shape).astype(np.float32)
    want = general_path(general, x)
    # non-contiguous input, byte-swapped input: general path, same result
    xt = np.asfortranarray(x)
    np.testing.assert_array_equal(fast(xt), want)
    assert not took_fast_path(fast)
    np.testing.assert_array_equal(fast(x.astype(">f4")), want)
    assert not took_fast_path(fast)
    xr = x.copy()
    xr.flags.writeable = False      # read-only input: fast path
    np.testing.assert_array_equal(fast(xr), want)
    assert took_fast_path(fast)
    # an integer eps: general path, same bits as the float
    fast.eps, general.eps = 1, 1.0
    np.testing.assert_array_equal(fast(x), general_path(general, x))
    assert not took_fast_path(fast)
    fast.eps = general.eps = 1e-5
    # partial overlap of out and x is refused with the general path's message
    buf = np.zeros(x.size + 1, np.float32)
    xv, ov = buf[1:].reshape(shape), buf[:-1].reshape(shape)
    with pytest.raises(ValueError, match="out overlaps the input"):
        fast(xv, out=ov)
    ro = np.empty(shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        fast(x, out=ro)
    with pytest.raises(TypeError, match="out has dtype float64"):
        fast(x, out=np.empty(shape))
    with pytest.raises(ValueError, match="out has shape"):
        fast(x, out=np.empty(shape[::-1], np.float32))
    # a buffer replaced by the user with the wrong dtype or shape
    rv = fast.running_var
    fast.running_var = rv.astype(np.float64)
    with pytest.raises(TypeError, match="running_var has dtype float64"):
        fast(x)
    fast.running_var = rv[:3].copy()
    with pytest.raises(ValueError, match=r"expected running_var of shape \(4,\)"):
        fast(x)
    fast.running_var = rv
    fast.weight = None
    general.weight = None
    np.testing.assert_array_equal(fast(x), general_path(general, x))
    assert took_fast_path(fast)
    # wrong channel count, dtype and rank keep their messages
    with pytest.raises(ValueError, match="expected input with 4 channels"):
        fast(np.zeros((2, 5, 3, 5), np.float32))
    with pytest.raises(TypeError, match="input has dtype float64"):
        fast(np.zeros(shape))
    with pytest.raises(ValueError, match="expected 4D input"):
        fast(np.zeros((2, 4, 3), np.float32))


def test_eval_fast_path_negative_variance_behaves_as_the_general_path(rng):
    shape = (2, 3, 4, 4)
    fast, general = _eval_pair(shape, np.float64, rng)
    for layer in (fast, general):
        layer.running_var[1] = -1.0
    x = rng.normal(size=shape)
    with pytest.warns(RuntimeWarning):
        y = fast(x)
    with pytest.warns(RuntimeWarning):
        e = general_path(general, x)
    np.testing.assert_array_equal(y, e)
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
    # the call the fast path declined changed nothing
    assert fast.running_var[1] == -1.0


def test_eval_fast_path_empty_batch(rng):
    fast, general = _eval_pair((0, 3, 4, 4), np.float32, rng)
    x = np.zeros((0, 3, 4, 4), np.float32)
    assert fast(x).shape == (0, 3, 4, 4)
    assert not took_fast_path(fast)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("where", ["running_mean", "weight"])
def test_eval_with_infinite_running_mean_or_weight(where):
    """An infinite running mean gives -inf (x finite), an infinite weight
    +-inf or NaN where x == mean, as (x - mean) * w / sqrt(var + eps) does,
    on the per-call fast path as on the general one, without warnings."""
    layer = fastnorm.BatchNorm2d(3).eval()
    layer.running_mean[...] = [0.5, 0.0, 0.0]
    getattr(layer, where)[0] = np.inf
    x = np.array([0.0, 0.5, 1.0, 2.0], np.float32).reshape(1, 1, 2, 2).repeat(3, axis=1)
    y = layer(x)
    if where == "running_mean":
        assert (y[:, 0] == -np.inf).all()
    else:
        want = np.array([-np.inf, np.nan, np.inf, np.inf], np.float32).reshape(1, 2, 2)
        np.testing.assert_array_equal(y[:, 0], want)
    np.testing.assert_allclose(y[:, 1:], x[:, 1:] / np.sqrt(1 + layer.eps), rtol=1e-6)
    swapped = x.astype(">f4")          # same values; the fast path declines it
    assert layer(swapped).tobytes() == y.tobytes()
