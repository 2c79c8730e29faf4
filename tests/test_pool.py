"""The output pool: large outputs are recycled once every view of them is
gone, never while one lives; idle memory is capped and can be released."""
import gc
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import fastnorm
from fastnorm import _pool

# 16 MiB of float32: above the pool threshold
SHAPE = (4, 64, 128, 128)


def _addr(a):
    return a.__array_interface__["data"][0]


def _span(a):
    lo = _addr(a)
    return lo, lo + a.nbytes


def _disjoint(a, b):
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a1 <= b0 or b1 <= a0


@pytest.fixture
def fresh_pool():
    limit = fastnorm.output_pool_info()["limit"]
    fastnorm.release_output_pool()
    fastnorm.set_output_pool_limit(256 << 20)
    yield
    fastnorm.set_output_pool_limit(limit)
    fastnorm.release_output_pool()


def test_a_dead_output_is_reused_and_results_do_not_change(fresh_pool, rng):
    assert np.prod(SHAPE) * 4 >= _pool.THRESHOLD
    x = rng.normal(size=SHAPE).astype(np.float32)
    layer = fastnorm.InstanceNorm2d(64)
    y1 = layer(x)
    ref = y1.copy()
    a1 = _addr(y1)
    info = fastnorm.output_pool_info()
    del y1
    assert fastnorm.output_pool_info()["idle_bytes"] >= ref.nbytes
    y2 = layer(x)
    assert _addr(y2) == a1                     # the same memory, no page faults
    assert fastnorm.output_pool_info()["hits"] == info["hits"] + 1
    np.testing.assert_array_equal(y2, ref)
    assert y2.flags.writeable and y2.flags.c_contiguous and y2.flags.aligned
    assert y2.shape == SHAPE and y2.dtype == np.float32


def test_live_outputs_and_their_views_are_never_handed_out_again(fresh_pool, rng):
    x = rng.normal(size=SHAPE).astype(np.float32)
    g = rng.normal(size=SHAPE).astype(np.float32)
    layer = fastnorm.BatchNorm2d(64)
    y1 = layer(x)
    keep = y1[1:3, ::2]                        # a view outliving its array
    snapshot = keep.copy()
    del y1
    gc.collect()
    outs = [layer(x + 1), layer.backward(g), layer(x * 2)]
    for o in outs:
        assert _disjoint(o, keep)
    for i in range(len(outs)):
        for j in range(i):
            assert _disjoint(outs[i], outs[j])
    np.testing.assert_array_equal(keep, snapshot)
    del keep
    assert fastnorm.output_pool_info()["idle_blocks"] >= 1


def test_limit_and_release(fresh_pool, rng):
    x = rng.normal(size=SHAPE).astype(np.float32)
    layer = fastnorm.LayerNorm([128, 128])
    outs = [layer(x) for _ in range(5)]        # 5 live 16 MiB outputs
    fastnorm.set_output_pool_limit(40 << 20)
    del outs
    info = fastnorm.output_pool_info()
    assert info["idle_bytes"] <= 40 << 20 and info["idle_blocks"] == 2
    fastnorm.set_output_pool_limit(16 << 20)
    assert fastnorm.output_pool_info()["idle_blocks"] == 1
    assert fastnorm.release_output_pool() == 16 << 20
    assert fastnorm.output_pool_info()["idle_bytes"] == 0
    with pytest.raises(ValueError, match="pool limit must be >= 0 bytes, got -1"):
        fastnorm.set_output_pool_limit(-1)


def test_limit_zero_turns_the_pool_off(fresh_pool, rng):
    fastnorm.set_output_pool_limit(0)
    x = rng.normal(size=SHAPE).astype(np.float32)
    layer = fastnorm.RMSNorm(128 * 128)
    y = layer(x.reshape(4, 64, -1))
    assert y.base is None                      # a plain NumPy allocation
    del y
    assert fastnorm.output_pool_info()["idle_bytes"] == 0


def test_small_outputs_bypass_the_pool(fresh_pool, rng):
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    before = fastnorm.output_pool_info()
    y = fastnorm.BatchNorm2d(3)(x)
    assert y.base is None
    after = fastnorm.output_pool_info()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_group_norm_backward_temporaries_come_back_from_the_pool(fresh_pool, rng):
    """GroupNorm's backward on (N, C) keeps per-(n, c) sums of 1-8 MiB, below
    the output threshold: they come from the pool (the second call takes
    the first call's blocks back) and the gradients do not change."""
    N, C = 64, 4096
    assert _pool.SCRATCH_THRESHOLD <= N * C * 8 < _pool.THRESHOLD
    x = rng.normal(size=(N, C)).astype(np.float32)
    g = rng.normal(size=(N, C)).astype(np.float32)
    layer = fastnorm.GroupNorm(32, C)
    layer(x)
    dx1 = layer.backward(g)
    w1 = layer.weight_grad.copy()
    info = fastnorm.output_pool_info()
    dx2 = layer.backward(g)
    assert fastnorm.output_pool_info()["hits"] == info["hits"] + 2     # s1 and s2
    assert dx2.tobytes() == dx1.tobytes() and layer.weight_grad.tobytes() == w1.tobytes()


def test_no_memory_is_kept_beyond_the_idle_blocks(fresh_pool, rng):
    x = rng.normal(size=SHAPE).astype(np.float32)
    g = rng.normal(size=SHAPE).astype(np.float32)
    layers = [fastnorm.GroupNorm(8, 64), fastnorm.LocalResponseNorm(5),
              fastnorm.InstanceNorm2d(64, affine=True)]
    for layer in layers:                       # warm-up: imports, caches
        layer(x)
        layer.backward(g)
    fastnorm.release_output_pool()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(10):
            for layer in layers:
                layer(x)
                layer.backward(g)
        idle = fastnorm.output_pool_info()["idle_bytes"]
        held = tracemalloc.get_traced_memory()[0] - base
        assert idle > 0
        # the idle blocks plus what the layers keep for backward (x itself
        # is the caller's; saved statistics are small)
        assert held < idle + (1 << 20)
        fastnorm.release_output_pool()
        gc.collect()
        assert tracemalloc.get_traced_memory()[0] - base < (1 << 20)
    finally:
        tracemalloc.stop()


def test_bad_pool_size_in_the_environment_is_refused(tmp_path):
    env = dict(os.environ, FASTNORM_POOL_MIB="lots")
    out = subprocess.run([sys.executable, "-c", "import fastnorm"], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "FASTNORM_POOL_MIB must be a number of MiB, got 'lots'" in out.stderr
    env["FASTNORM_POOL_MIB"] = "64"
    code = "import fastnorm; print(fastnorm.output_pool_info()['limit'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert int(out.stdout) == 64 << 20


from fastnorm import _catalogue as cat  # noqa: E402


@pytest.mark.parametrize("entry", cat.CATALOGUE, ids=lambda e: e.name)
def test_every_layer_takes_its_large_outputs_from_the_pool(fresh_pool, entry, rng):
    """Every catalogue layer, on its large shape (8 MiB or more), in each
    mode: the output and the input gradient come from the pool, a dead one
    is reused by the next call, and no two live outputs share memory."""
    x = rng.normal(size=entry.large).astype(np.float32)
    g = rng.normal(size=entry.large).astype(np.float32)
    layer = entry.layer(entry.large, np.float32, rng)
    for mode in entry.modes:
        layer.train(mode == "train")
        taken = fastnorm.output_pool_info()
        y = layer(x)
        dx = layer.backward(g)
        now = fastnorm.output_pool_info()
        assert (now["hits"] + now["misses"]) - (taken["hits"] + taken["misses"]) == 2
        assert not y.flags.owndata and not dx.flags.owndata
        assert _disjoint(y, dx)
        want_y, want_dx = y.copy(), dx.copy()
        hits = fastnorm.output_pool_info()["hits"]
        del y, dx
        y2 = layer(x)
        dx2 = layer.backward(g)
        assert fastnorm.output_pool_info()["hits"] >= hits + 2, "dead outputs not reused"
        if mode == "eval" or not entry.stateful:
            assert y2.tobytes() == want_y.tobytes() and dx2.tobytes() == want_dx.tobytes()
        del y2, dx2
