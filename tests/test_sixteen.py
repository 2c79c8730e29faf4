"""16-bit storage: bfloat16 (ml_dtypes) and float16, for every layer of the
catalogue.

The claim tested, exactly: a 16-bit call computes what the float32 call
computes on the same values (upcast), in float32 arithmetic, and rounds each
output element once to the 16-bit type, to nearest even.  So

* mixed (a float32 layer on 16-bit input): the output and the input gradient
  are bitwise the float32 layer's on x.astype(float32), rounded to the 16-bit
  type; parameter gradients (float32) and running statistics (float32) are
  bitwise the float32 layer's;
* LocalResponseNorm computes in float64: its 16-bit output is the float64
  layer's rounded once (not through float32);
* pure (a layer built with the 16-bit dtype): its parameters, converted
  exactly to float32, give the same outputs as the mixed layer with those
  values; its running statistics and gradients are 16-bit, within one
  rounding of the float32 ones.

With the float32 path's own accuracy (tests/test_catalogue.py: float32
against the float64 twin), a 16-bit output is within 0.5 ulp of its type
plus the float32 error of the same computation: within 1 ulp of the float64
result wherever that error is below half an ulp (everywhere but outputs near
zero that cancel large terms: there, within the float32 error).

The conversions themselves are checked on every 16-bit value, in both
kernel copies (the AVX2 copy converts float16 with F16C, the baseline copy in
integer arithmetic): overflow to inf past 65504 for float16, subnormals,
signed zeros, NaN staying NaN.
"""
import numpy as np
import pytest

import fastnorm
from fastnorm import _catalogue as cat
from fastnorm import _dtypes

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
SIXTEEN = [BF16, F16]


def rne(a, dt):
    """float32 or float64 values rounded once to the 16-bit dtype dt, to
    nearest even (independently of fastnorm: float16 by NumPy; bfloat16 by
    rounding to odd at float32, then ml_dtypes' float32 -> bfloat16)."""
    a = np.asarray(a)
    if dt == F16 or a.dtype == np.float32:
        with np.errstate(over="ignore"):
            return a.astype(dt)
    f = a.astype(np.float32)
    inexact = (f.astype(np.float64) != a) & np.isfinite(a) & np.isfinite(f)
    away = np.abs(f.astype(np.float64)) > np.abs(a)
    bits = f.view(np.uint32).copy()
    bits[inexact & away] -= 1
    bits[inexact] |= 1
    return bits.view(np.float32).astype(dt)


def same(a, b, what):
    """Bitwise equal, NaN positions equal (their bits are unspecified)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    na, nb = np.isnan(a.astype(np.float32)), np.isnan(b.astype(np.float32))
    assert np.array_equal(na, nb), f"{what}: NaN positions differ"
    bits = np.dtype(f"u{a.dtype.itemsize}")
    ia, ib = a[~na].view(bits), b[~nb].view(bits)
    bad = np.flatnonzero(ia != ib)
    assert bad.size == 0, (f"{what}: {bad.size} of {ia.size} differ, e.g. {a[~na][bad[:3]]} "
                           f"vs {b[~nb][bad[:3]]}")


def _copy_state(dst, src):
    for k in ("weight", "bias", "mean_weight", "var_weight", "running_mean", "running_var",
              "num_batches_tracked"):
        if getattr(src, k, None) is not None:
            getattr(dst, k)[...] = getattr(src, k)


def _run(layer, x, g, training):
    layer.train(training)
    y = layer(x)
    dx = layer.backward(g)
    grads = {k: np.array(getattr(layer, k)) for k in ("weight_grad", "bias_grad",
                                                      "mean_weight_grad", "var_weight_grad")
             if getattr(layer, k, None) is not None}
    stats = {k: np.array(getattr(layer, k)) for k in ("running_mean", "running_var",
                                                      "num_batches_tracked")
             if getattr(layer, k, None) is not None}
    return y, dx, grads, stats


CASES = [(e, s, dt) for e in cat.CATALOGUE for s in e.shapes + e.boundary[:1] for dt in SIXTEEN]


@pytest.mark.parametrize("entry,shape,dt", CASES, ids=[cat.case_id(*c) for c in CASES])
def test_mixed_is_the_float32_call_rounded_once(entry, shape, dt):
    rng = np.random.default_rng(len(shape))
    x = (rng.normal(size=shape) * 2 + 3).astype(dt)
    g = rng.normal(size=shape).astype(dt)
    wide = np.float64 if entry.scope == "window" else np.float32
    for mode in entry.modes:
        training = mode == "train"
        mixed = entry.layer(shape, np.float32, np.random.default_rng(3))
        ref = entry.layer(shape, wide, np.random.default_rng(3))
        _copy_state(ref, mixed)
        if getattr(mixed, "eps", 0) is None:     # RMSNorm: the input dtype's epsilon
            ref.eps = mixed._eps("test", dt)
        y, dx, grads, stats = _run(mixed, x, g, training)
        ry, rdx, rgrads, rstats = _run(ref, x.astype(wide), g.astype(wide), training)
        what = f"{entry.name} {mode} {dt}"
        assert y.dtype == dt and dx.dtype == dt
        same(y, rne(ry, dt), f"{what} y")
        same(dx, rne(rdx, dt), f"{what} dx")
        for k, v in grads.items():
            assert v.dtype == np.float32, k
            if wide == np.float32:
                same(v, rgrads[k], f"{what} {k}")
        for k, v in stats.items():
            same(v, rstats[k].astype(v.dtype), f"{what} {k}")


PURE = [(e, e.shapes[0], dt) for e in cat.CATALOGUE if e.params for dt in SIXTEEN]


@pytest.mark.parametrize("entry,shape,dt", PURE, ids=[cat.case_id(*c) for c in PURE])
def test_pure_layer_keeps_16_bit_parameters(entry, shape, dt):
    """A layer built with the 16-bit dtype: parameters, running statistics
    and gradients in it; outputs those of the mixed layer holding the same
    parameter values."""
    rng = np.random.default_rng(5)
    x = (rng.normal(size=shape) + 1).astype(dt)
    g = rng.normal(size=shape).astype(dt)
    pure = entry.layer(shape, dt, np.random.default_rng(4))
    mixed = entry.layer(shape, np.float32, np.random.default_rng(4))
    _copy_state(mixed, pure)        # the 16-bit values, exactly, in float32
    for k in entry.params:
        assert getattr(pure, k).dtype == dt, k
    for mode in entry.modes:
        training = mode == "train"
        y, dx, grads, stats = _run(pure, x, g, training)
        my, mdx, mgrads, mstats = _run(mixed, x, g, training)
        same(y, my, f"{entry.name} {mode} y")
        same(dx, mdx, f"{entry.name} {mode} dx")
        for k, v in grads.items():
            assert v.dtype == dt, k
            same(v, rne(mgrads[k], dt), f"{entry.name} {mode} {k}")
        for k, v in stats.items():
            if k == "num_batches_tracked":
                assert int(v) == int(mstats[k])
                continue
            assert v.dtype == dt, k
            # one rounding of the float64 update, against float32's: one ulp
            np.testing.assert_allclose(v.astype(np.float64), mstats[k], rtol=2 ** -7 if dt == BF16
                                       else 2 ** -10, atol=0)
        _copy_state(mixed, pure)


def test_other_mixes_are_refused():
    x16 = np.ones((2, 3, 4), BF16)
    with pytest.raises(TypeError, match="the layer's dtype is float64"):
        fastnorm.BatchNorm1d(3, dtype=np.float64)(x16)
    with pytest.raises(TypeError, match="the layer's dtype is float16"):
        fastnorm.BatchNorm1d(3, dtype=np.float16)(x16)
    with pytest.raises(TypeError, match="the layer's dtype is bfloat16"):
        fastnorm.BatchNorm1d(3, dtype="bfloat16")(np.ones((2, 3, 4), np.float32))
    import fastnorm.functional as F
    with pytest.raises(TypeError, match="parameters and running statistics must share"):
        F.batch_norm(x16, np.zeros(3, np.float32), np.ones(3, BF16), training=True)
    # the backward functionals refuse what their forward refuses
    f32, b16 = np.ones(3, np.float32), np.ones(3, BF16)
    for kw in (dict(weight=f32, bias=b16), dict(weight=b16, bias=f32),
               dict(weight=f32, running=(f32, b16))):
        rm, rv = kw.pop("running", (f32, f32))
        with pytest.raises(TypeError, match="parameters and running statistics must share"):
            F.batch_norm_backward(x16, x16, rm, rv, **kw)
        with pytest.raises(TypeError, match="parameters and running statistics must share"):
            F.instance_norm_backward(x16, x16, rm, rv, use_input_stats=False, **kw)
    gi, gw, gb = F.batch_norm_backward(x16, x16, f32, f32, weight=f32, bias=f32)
    assert gi.dtype == BF16 and gw.dtype == gb.dtype == np.float32
    with pytest.raises(TypeError, match="grad_output has dtype float32"):
        layer = fastnorm.LayerNorm(4)
        layer(x16)
        layer.backward(np.ones((2, 3, 4), np.float32))


@pytest.mark.parametrize("dt", SIXTEEN, ids=lambda d: d.name)
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_16_bit_value_converts_exactly(dt, isa, tmp_path):
    """y = x * s in the kernels (an eval BatchNorm with unit variance and the
    scale as its weight) for every 16-bit x and a few s: the float32 product
    rounded once, overflow to inf, subnormals (float32 results below 2^-126:
    the AVX-512 copy's bfloat16 instruction flushes them, its fallback must
    not), signed zeros, NaN; every kernel copy (run in a process of its own,
    FASTNORM_ISA)."""
    import os
    import subprocess
    import sys

    from fastnorm._native import kernels
    if isa == "avx2" and not kernels.cpu_has_avx2():
        pytest.skip("no AVX2 here")
    if isa == "avx512" and not kernels.cpu_has_avx512():
        pytest.skip("no AVX-512 (F VL BW DQ BF16) here")
    code = f"""if 1:
        import numpy as np, fastnorm, ml_dtypes, sys
        dt = np.dtype({"ml_dtypes.bfloat16" if dt == BF16 else "np.float16"})
        bits = np.arange(65536, dtype=np.uint16)
        x = bits.view(dt).reshape(1, 1, -1)
        out = {{}}
        for s in (1.0, 2.0 ** -12, 3.7, 2.0 ** 12, -1.0, 1.0 + 2.0 ** -8, 2.0 ** -130):
            bn = fastnorm.BatchNorm1d(1).eval()
            bn.running_mean[...] = 0
            bn.running_var[...] = 1.0 - 1e-5
            bn.weight[...] = s
            out[str(s)] = bn(x).view(np.uint16)
        np.savez(sys.argv[1], **out)
    """
    path = tmp_path / "conv.npz"
    env = dict(os.environ, FASTNORM_ISA=isa)
    subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True,
                   capture_output=True, text=True, cwd=tmp_path)
    x = np.arange(65536, dtype=np.uint16).view(dt)
    with np.load(path) as f, np.errstate(all="ignore"):
        for s, got in f.items():
            # BatchNorm's eval path: (x - 0) * s' + 0 with s' = s / sqrt(var + eps) in float32
            s32 = np.float32(float(s) / np.sqrt(np.float64(1.0 - 1e-5) + 1e-5))
            zero = np.float32(0)      # (-0 - 0) * s + 0 is +0, as in the kernel
            want = rne((x.astype(np.float32) - zero) * s32 + zero, dt)
            same(got.reshape(-1).view(dt), want, f"{isa} s={s}")


def test_float16_overflows_to_inf():
    """float16's largest value is 65504: a float32 result beyond it becomes
    inf (as PyTorch's), and NaN and inf propagate as in float32."""
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float16)
    layer = fastnorm.LayerNorm(4)
    layer.weight[...] = 1e5
    y = layer(x)
    assert np.isinf(y[0, [0, 3]]).all() and np.isfinite(y[0, 1:3]).all()
    x[0, 1] = np.nan
    assert np.isnan(layer(x)).all()


# ---------------------------------------------------------------------------
# Against PyTorch's CPU modules on the same 16-bit tensors (float32
# parameters: PyTorch's mixed type).  Both compute in float32 and round to
# the 16-bit type; their sums run in other orders, so the outputs agree to a
# 16-bit rounding or two of the output's scale.

def _torch_module(torch, entry, layer):
    n, nn = entry.name, torch.nn
    if n.startswith("BatchNorm"):
        m = getattr(nn, n)(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    elif n.startswith("InstanceNorm"):
        m = getattr(nn, n)(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                           affine=True, track_running_stats=True)
    elif n == "GroupNorm":
        m = nn.GroupNorm(layer.num_groups, layer.num_channels, eps=layer.eps)
    elif n == "LayerNorm":
        m = nn.LayerNorm(layer.normalized_shape, eps=layer.eps)
    elif n == "RMSNorm":
        m = nn.RMSNorm(layer.normalized_shape, eps=layer.eps)
    elif n == "LocalResponseNorm":
        m = nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
    else:
        return None
    m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in layer.state_dict().items()})
    return m


TORCH_CASES = [(e, e.boundary[0], dt) for e in cat.CATALOGUE for dt in SIXTEEN]


@pytest.mark.parametrize("entry,shape,dt", TORCH_CASES, ids=[cat.case_id(*c) for c in TORCH_CASES])
def test_matches_torch_16_bit(torch, entry, shape, dt):
    import warnings
    layer = entry.layer(shape, np.float32, np.random.default_rng(6))
    m = _torch_module(torch, entry, layer)
    if m is None:
        pytest.skip(f"PyTorch has no {entry.name}")
    tdt = torch.bfloat16 if dt == BF16 else torch.float16
    rng = np.random.default_rng(7)
    x = (rng.normal(size=shape) * 2 + 1).astype(dt)
    g = rng.normal(size=shape).astype(dt)

    def t(a):                                   # a 16-bit array as a torch tensor
        return torch.from_numpy(a.view(np.int16)).view(tdt)

    def n(tt):                                  # and back
        return tt.detach().contiguous().view(torch.int16).numpy().view(dt)
    ulp = 2.0 ** -7 if dt == BF16 else 2.0 ** -10
    for mode in entry.modes:
        layer.train(mode == "train")
        m.train(mode == "train")
        xt = t(x.copy()).requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # PyTorch: "mismatch dtype ... not fused"
            yt = m(xt)
            yt.backward(t(g.copy()))
        y = layer(x)
        dx = layer.backward(g)
        for name, a, b in (("y", y, n(yt)), ("dx", dx, n(xt.grad))):
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            scale = np.abs(b64).max()
            np.testing.assert_allclose(a64, b64, rtol=2 * ulp, atol=2 * ulp * scale,
                                       err_msg=f"{entry.name} {mode} {name}")
        for k in ("running_mean", "running_var"):
            if getattr(layer, k, None) is not None:
                np.testing.assert_allclose(getattr(layer, k), getattr(m, k).numpy(),
                                           rtol=1e-4, atol=1e-5, err_msg=k)


def _ulp(ref, dt):
    """The spacing of the 16-bit type dt at |ref| (its smallest subnormal
    near zero)."""
    info = ml_dtypes.finfo(dt) if dt == BF16 else np.finfo(dt)
    tiny = float(info.smallest_subnormal)
    e = np.floor(np.log2(np.maximum(np.abs(ref), float(info.smallest_normal))))
    return np.maximum(np.exp2(e - info.nmant), tiny)


def _excess(got, ref, dt):
    """max over elements of (|got - ref| - 1 ulp16(ref)), over max |ref|."""
    got, ref = got.astype(np.float64), np.asarray(ref, np.float64)
    fin = np.isfinite(ref)
    assert np.array_equal(fin, np.isfinite(got))
    scale = np.abs(ref[fin]).max() if fin.any() else 1.0
    return float((np.abs(got - ref) - _ulp(ref, dt))[fin].max()) / scale


@pytest.mark.parametrize("entry,shape,dt", CASES, ids=[cat.case_id(*c) for c in CASES])
def test_within_one_ulp_of_float64(entry, shape, dt):
    """The accuracy bound, against the float64 twin (fastnorm/_reference.py)
    on the same 16-bit values.  A 16-bit result is the float32 one rounded
    once (test above), so its error is at most half an ulp of the 16-bit type
    plus the float32 computation's error.  Tested: every output and input
    gradient element within 1 ulp of the 16-bit type of the float64 value,
    plus 2^-20 (outputs) or 2^-12 (input gradients, which cancel sums) of the
    tensor's largest magnitude: the float32 error where a value near zero
    comes out of cancelling larger terms (float32's own epsilon is 2^-23).
    Largest excess seen over these cases: 2^-26 for outputs, 2^-15 for input
    gradients (GroupNorm on groups of one value: large terms cancelling to
    near zero).  Parameter gradients stay float32 (mixed):
    tests/test_catalogue.py."""
    rng = np.random.default_rng(len(shape) + 7)
    x = (rng.normal(size=shape) * 2 + 3).astype(dt)
    g = rng.normal(size=shape).astype(dt)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    for mode in entry.modes:
        training = mode == "train"
        layer = entry.layer(shape, np.float32, np.random.default_rng(3))
        fresh = entry.layer(shape, np.float32, np.random.default_rng(3))
        if getattr(layer, "eps", 0) is None:         # RMSNorm: the input dtype's epsilon
            fresh.eps = layer._eps("test", dt)
        fresh.train(training)
        ey, _, _ = entry.reference(fresh, x64, training)
        want = entry.reference_backward(fresh, x64, g64, training)
        layer.train(training)
        y = layer(x)
        dx = layer.backward(g)
        what = f"{entry.name} {mode} {dt}"
        assert _excess(y, ey, dt) <= 2.0 ** -20, what + " y"
        if want is not None:
            assert _excess(dx, want[0], dt) <= 2.0 ** -12, what + " dx"
