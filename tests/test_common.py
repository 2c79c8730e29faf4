"""Behaviour every layer shares: backward before forward, reset_parameters,
state_dict round trip."""
import contextlib

import numpy as np
import pytest

import fastnorm

from fastnorm import _catalogue as cat
from util import fast_paths_off, took_fast_path

# every catalogue layer, as it configures it, on its first small shape
LAYERS = [(lambda e=e: e.make(e.shapes[0], np.float32), e.shapes[0]) for e in cat.CATALOGUE]
IDS = [e.name for e in cat.CATALOGUE]


@pytest.mark.parametrize("make,shape", LAYERS, ids=IDS)
def test_backward_before_forward_is_refused(make, shape):
    with pytest.raises(RuntimeError, match="no forward call"):
        make().backward(np.ones(shape, np.float32))


@pytest.mark.parametrize("make,shape", LAYERS, ids=IDS)
def test_reset_parameters_and_state_dict_round_trip(make, shape, rng):
    layer = make()
    layer(rng.normal(size=shape).astype(np.float32))
    for k in ("weight", "bias"):
        if getattr(layer, k, None) is not None:
            getattr(layer, k)[...] = rng.normal(size=getattr(layer, k).shape)
    sd = layer.state_dict()
    other = make()
    other.load_state_dict(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(getattr(other, k), v)
    if not hasattr(layer, "reset_parameters"):
        assert sd == {}          # LocalResponseNorm: no parameters, no state
        return
    layer.reset_parameters()
    if layer.weight is not None:
        assert (layer.weight == 1).all()
    if getattr(layer, "bias", None) is not None:
        assert (layer.bias == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make,shape", [
    (lambda dt: fastnorm.LayerNorm(96, dtype=dt), (7, 96)),
    (lambda dt: fastnorm.RMSNorm(96, dtype=dt), (7, 96)),
    (lambda dt: fastnorm.LayerNorm(100, dtype=dt), (9, 100)),
    (lambda dt: fastnorm.RMSNorm(100, dtype=dt), (9, 100)),
    (lambda dt: fastnorm.RMSNorm(5000, dtype=dt), (3, 5000)),
    (lambda dt: fastnorm.GroupNorm(3, 6, dtype=dt), (4, 6, 5, 7)),
    (lambda dt: fastnorm.InstanceNorm2d(6, affine=True, dtype=dt), (4, 6, 8, 9)),
], ids=["layer", "rms", "layer-9x100", "rms-9x100", "rms-3x5000", "group", "instance"])
def test_one_pass_and_two_pass_kernels_agree(make, shape, dtype, rng, monkeypatch):
    """Small slices take the fused one-pass kernels, large ones two passes;
    both compute a slice's statistics with the same arithmetic."""
    from fastnorm import _checks

    x = (rng.normal(size=shape) * 2 + 5).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    w = rng.uniform(0.5, 2, make(dtype).weight.shape)
    res = []
    for limit in (_checks.FUSE_BYTES, 0):
        monkeypatch.setattr(_checks, "FUSE_BYTES", limit)
        layer = make(dtype)
        layer.weight[...] = w
        # the fast paths (one-pass kernels) do not read FUSE_BYTES: off for limit 0
        with (fast_paths_off() if limit == 0 else contextlib.nullcontext()):
            y = layer(x)
        saved = layer._saved
        if isinstance(saved, tuple) and len(saved) == 2:    # InstanceNorm's (saved, unbatched)
            saved = saved[0]
        if took_fast_path(layer):
            mean, invstd = saved[1], saved[2]
        else:
            mean, invstd = saved.mean, saved.invstd
        dx = layer.backward(g)
        res.append((y, dx, layer.weight_grad, mean, invstd))
    (y1, dx1, gw1, m1, i1), (y2, dx2, gw2, m2, i2) = res
    assert m1.tobytes() == m2.tobytes() and i1.tobytes() == i2.tobytes()
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y1, y2, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx1, dx2, rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(gw1, gw2, rtol=10 * tol, atol=10 * tol)


def _storage_dtypes():
    out = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)]
    try:
        import ml_dtypes
        out.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    return out


def _short_slices(R, D, dtype, rng):
    """R slices of D values: ordinary rows, and rows of special values at
    random positions (NaN, infinities, values near the float32 range, -0.0,
    constants, a large offset)."""
    x = rng.normal(size=(R, D)) * 3 + 1
    big = 6e4 if dtype == np.float16 else 3e38
    special = [
        np.full(D, -0.0), np.full(D, 2.5), rng.normal(size=D) * 1e-3 + 1e4,
        np.where(rng.random(D) < 0.5, big, -big), np.full(D, big),
        np.r_[np.nan, rng.normal(size=D - 1)], np.r_[rng.normal(size=D - 1), np.inf],
        np.r_[-np.inf, np.inf, rng.normal(size=D - 2)] if D > 1 else np.array([-np.inf]),
    ]
    for i, row in zip(rng.permutation(R)[:len(special)], special):
        x[i] = row[:D]
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", _storage_dtypes(), ids=str)
@pytest.mark.parametrize("D", [1, 2, 7, 8, 9, 16, 31, 33, 64, 96, 127, 128, 129, 200, 256, 257])
def test_short_slices_side_by_side_keep_each_slices_bits(dtype, D, rng):
    """Short slices take their statistics 8 at a time (short_statistics, and
    fn_rows8 with a slice per vector lane); each slice must get the bits it
    gets alone and those of slice_stats, which takes one slice at a time:
    LayerNorm, RMSNorm and GroupNorm/InstanceNorm slices, special values
    included, and a last block of fewer than 8."""
    from fastnorm._dtypes import kernel_view as kv
    from fastnorm._native import kernels as k

    R = 21
    x = _short_slices(R, D, dtype, rng)
    eps = 1e-5
    for rms in (False, True):
        ref = [np.empty(R) for _ in range(3)]
        k.slice_stats(kv(x), eps, rms, *ref)
        got = [np.empty(R) for _ in range(3)]
        y = np.empty_like(x)
        k.rows_forward(kv(x), kv(y), eps, rms, None, None, *got)
        for a, b in zip(ref, got):
            assert a.tobytes() == b.tobytes(), (rms, a, b)
        for i in range(R):                              # one row alone: the same bits
            one = [np.empty(1) for _ in range(3)]
            yi = np.empty_like(x[i:i + 1])
            k.rows_forward(kv(x[i:i + 1]), kv(yi), eps, rms, None, None, *one)
            assert [o.tobytes() for o in one] == [g[i:i + 1].tobytes() for g in got]
            assert yi.tobytes() == y[i:i + 1].tobytes()
    # groups: slice i is group i % G of a sample (here G = R, one plane each)
    got = [np.empty(R) for _ in range(3)]
    y = np.empty_like(x)
    k.groups_forward(kv(x), kv(y), R, 1, eps, None, None, *got)
    ref = [np.empty(R) for _ in range(3)]
    k.slice_stats(kv(x), eps, False, *ref)
    for a, b in zip(ref, got):
        assert a.tobytes() == b.tobytes()
