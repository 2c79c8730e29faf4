"""Large outputs (64 MiB or more by default) are written with streaming
stores from L1 tiles: the values must be those of the ordinary path (small
calls, in-place calls), wherever the output starts (alignment prologue) and
ends (tails).  The tests lower the size that streams to 1 MiB."""
import numpy as np
import pytest

import fastnorm
from fastnorm._native import kernels as _kernels

STREAM_BYTES = 1 << 20


@pytest.fixture(autouse=True)
def stream_from_1mib():
    old = _kernels.stream_bytes(STREAM_BYTES)
    yield
    _kernels.stream_bytes(old)


def _chunks(layer, x, n):
    """The same layer applied n samples at a time (outputs below the
    streaming size), concatenated."""
    return np.concatenate([layer(x[i:i + n]) for i in range(0, x.shape[0], n)])


def _offset_out(shape, dtype, k):
    """A C-contiguous output starting k elements into a fresh buffer."""
    buf = np.full(int(np.prod(shape)) + 8, np.nan, dtype)
    return buf[k:k + int(np.prod(shape))].reshape(shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make, shape, n", [
    (lambda dt: fastnorm.LayerNorm(4101, dtype=dt), (131, 4101), 15),
    (lambda dt: fastnorm.RMSNorm(3001, dtype=dt), (180, 3001), 20),
    (lambda dt: fastnorm.GroupNorm(4, 12, dtype=dt), (5, 12, 97, 103), 1),
    (lambda dt: fastnorm.InstanceNorm2d(5, affine=True, dtype=dt), (3, 5, 150, 151), 1),
    # (N, C): channel runs of one value, slices of 1100 values (4 KiB or more)
    (lambda dt: fastnorm.GroupNorm(1, 1100, dtype=dt), (300, 1100), 30),
])
def test_streamed_outputs_equal_the_ordinary_path(make, shape, n, dtype, rng):
    x = (rng.normal(size=shape) * 2 + 3).astype(dtype)
    assert x.nbytes >= STREAM_BYTES > x[:n].nbytes
    layer = make(dtype)
    if layer.weight is not None:
        layer.weight[...] = rng.uniform(0.5, 2, layer.weight.shape)
    if getattr(layer, "bias", None) is not None:
        layer.bias[...] = rng.normal(size=layer.bias.shape)
    want = _chunks(layer, x, n)
    y = layer(x)
    np.testing.assert_array_equal(y, want, strict=True)
    for k in (1, 3):                          # outputs not 32-byte aligned
        out = _offset_out(shape, dtype, k)
        layer(x, out=out)
        np.testing.assert_array_equal(out, want, strict=True)
    xc = x.copy()
    layer(xc, out=xc)                         # in place: ordinary stores
    np.testing.assert_array_equal(xc, want, strict=True)


from fastnorm import _catalogue as cat  # noqa: E402


@pytest.mark.parametrize("entry", cat.CATALOGUE, ids=lambda e: e.name)
def test_every_layer_streams_the_bits_of_ordinary_stores(entry, rng):
    """Every catalogue layer on its large shape, in each mode: the output
    and input gradient with streaming stores allowed (from 1 MiB here) are
    the bits of those with streaming off, into a fresh output and into one
    not 32-byte aligned."""
    x = (rng.normal(size=entry.large) * 2 + 3).astype(np.float32)
    g = rng.normal(size=entry.large).astype(np.float32)
    assert x.nbytes >= STREAM_BYTES

    def run(stream_from, offset=None):
        old = _kernels.stream_bytes(stream_from)
        try:
            layer = entry.layer(entry.large, np.float32, np.random.default_rng(2))
            res = []
            for mode in entry.modes:
                layer.train(mode == "train")
                out = None if offset is None else _offset_out(x.shape, x.dtype, offset)
                res += [np.array(layer(x, out=out)), np.array(layer.backward(g))]
            return res
        finally:
            _kernels.stream_bytes(old)
    want = run(1 << 62)
    for got in (run(STREAM_BYTES), run(STREAM_BYTES, offset=1)):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, strict=True)
