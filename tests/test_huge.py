"""Tensors of more than 2**31 elements (64-bit indexing end to end).

Opt-in: FASTNORM_TEST_HUGE=1 (needs about 9 GiB of free memory; the layers
run in place, out=x, so only the input is held).  The input is a pattern
whose statistics are known exactly, and elements past index 2**31 are
checked against them.
"""
import os

import numpy as np
import pytest

import fastnorm

pytestmark = pytest.mark.skipif(os.environ.get("FASTNORM_TEST_HUGE") != "1",
                                reason="set FASTNORM_TEST_HUGE=1 (needs ~9 GiB)")

PERIOD = 7


def _pattern_stats(L):
    """Mean and biased variance of v[l] = l % PERIOD for l < L, exactly."""
    counts = np.full(PERIOD, L // PERIOD, np.float64)
    counts[: L % PERIOD] += 1
    vals = np.arange(PERIOD, dtype=np.float64)
    mean = (counts * vals).sum() / L
    var = (counts * (vals - mean) ** 2).sum() / L
    return mean, var


def _fill(x, offset):
    """x[..., l] = l % PERIOD + offset, without a temporary of x's size."""
    flat = x.reshape(-1, x.shape[-1])
    block = 1 << 24
    base = (np.arange(block + PERIOD, dtype=np.int64) % PERIOD).astype(x.dtype)
    for r in range(flat.shape[0]):
        for s in range(0, flat.shape[1], block):
            n = min(block, flat.shape[1] - s)
            k = s % PERIOD      # the block starts at l = s
            flat[r, s:s + n] = base[k:k + n] + offset


def test_batchnorm_train_over_2_31_elements():
    L = (1 << 30) + 5                         # 2 channels: 2**31 + 10 elements
    x = np.empty((1, 2, L), np.float32)
    assert x.size > 2 ** 31
    _fill(x[:, :1], 0.0)
    _fill(x[:, 1:], 100.0)
    layer = fastnorm.BatchNorm1d(2, momentum=0.5)
    layer.weight[...] = [2.0, 3.0]
    layer.bias[...] = [1.0, -1.0]
    y = layer(x, out=x)
    assert y is x or np.shares_memory(y, x)
    mean, var = _pattern_stats(L)
    for c, off in enumerate((0.0, 100.0)):
        np.testing.assert_allclose(layer.running_mean[c], 0.5 * (mean + off), rtol=1e-6)
        np.testing.assert_allclose(layer.running_var[c], 0.5 + 0.5 * var * L / (L - 1),
                                   rtol=1e-5)
        # the last elements of the channel, far past index 2**31 for c = 1
        tail = np.arange(L - 20, L)
        want = ((tail % PERIOD) - mean) / np.sqrt(var + layer.eps) * layer.weight[c] \
            + layer.bias[c]
        np.testing.assert_allclose(y[0, c, -20:], want, rtol=1e-5, atol=1e-5)
        head = np.arange(20)
        want = ((head % PERIOD) - mean) / np.sqrt(var + layer.eps) * layer.weight[c] \
            + layer.bias[c]
        np.testing.assert_allclose(y[0, c, :20], want, rtol=1e-5, atol=1e-5)


def test_layernorm_row_of_more_than_2_31_elements():
    D = (1 << 31) + 3
    x = np.empty((1, D), np.float32)
    _fill(x, 5.0)
    layer = fastnorm.LayerNorm(D, elementwise_affine=False)
    y = layer(x, out=x)
    mean, var = _pattern_stats(D)
    for idx in (np.arange(16), np.arange(D - 16, D), np.arange(2 ** 31 - 8, D)):
        want = ((idx % PERIOD) - mean) / np.sqrt(var + layer.eps)
        np.testing.assert_allclose(y[0, idx], want, rtol=1e-5, atol=1e-5)
