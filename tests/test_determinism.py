"""Determinism for every layer: outputs, gradients and running statistics are
bitwise identical at 1 and 2 threads and across repeated runs, on shapes just
off the kernels' boundaries: units of 4096 elements, blocks of 64 rows,
slices at the 512 KiB one-pass limit, output tiles of 1024, and call sizes
around the work per thread (32768 elements).  (BatchNorm has its own table in
test_threads.py.)"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastnorm
from fastnorm._native import kernels as _kernels

ONE_PASS = 512 * 1024       # bytes of a slice handled by the one-pass kernels


def _in(shape, dt):
    return fastnorm.InstanceNorm1d(shape[1], affine=True, track_running_stats=True,
                                   momentum=None, dtype=dt)


def _gn(groups):
    return lambda shape, dt: fastnorm.GroupNorm(groups, shape[1], dtype=dt)


def _ln(k):
    return lambda shape, dt: fastnorm.LayerNorm(shape[-k:], dtype=dt)


def _rms(shape, dt):
    return fastnorm.RMSNorm(shape[-1], dtype=dt)


def _lrn(size):
    return lambda shape, dt: fastnorm.LocalResponseNorm(size, alpha=0.5, k=0.5)


def _planes(dt):
    """InstanceNorm plane lengths: around a unit, and around the one-pass slice."""
    n1 = ONE_PASS // np.dtype(dt).itemsize
    return [4095, 4097, 8193, n1 - 1, n1 + 1]


CASES = []
for dt in (np.float32, np.float64):
    for L in _planes(dt):
        CASES.append(("InstanceNorm", _in, (1 if L > 10000 else 9, 3, L), dt))
    CASES += [
        ("InstanceNorm", _in, (3, 300, 257), dt),             # many short planes
        ("GroupNorm", _gn(4), (5, 8, 4097), dt),
        ("GroupNorm", _gn(3), (12, 6, 31, 33), dt),
        ("GroupNorm", _gn(1), (1, 2, ONE_PASS // np.dtype(dt).itemsize // 2 + 3), dt),
        ("GroupNorm", _gn(16), (9, 32, 257), dt),
        ("LayerNorm", _ln(1), (63, 2049), dt),
        ("LayerNorm", _ln(1), (65, 1023), dt),
        ("LayerNorm", _ln(1), (129, 4097), dt),
        ("LayerNorm", _ln(2), (33, 3, 701), dt),
        ("LayerNorm", _ln(1), (3, ONE_PASS // np.dtype(dt).itemsize + 7), dt),
        ("RMSNorm", _rms, (127, 769), dt),
        ("RMSNorm", _rms, (2, 3, 4097 * 3), dt),
        ("LocalResponseNorm", _lrn(5), (3, 97, 331), dt),
        ("SwitchableNorm", lambda shape, dt: fastnorm.SwitchableNorm1d(shape[1], dtype=dt),
         (9, 8, 4097), dt),
        ("LocalResponseNorm", _lrn(4), (2, 7, 33, 333), dt),
    ]


def _run(name, make, shape, dt, threads):
    rng = np.random.default_rng(11)
    x = (rng.normal(size=shape) * 2 + 50).astype(dt)
    g = rng.normal(size=shape).astype(dt)
    layer = make(shape, dt)
    if getattr(layer, "weight", None) is not None:
        layer.weight[...] = rng.uniform(0.5, 2, layer.weight.shape)
    res = []
    with threadpool_limits(limits=threads, user_api="openmp"):
        for _ in range(2):      # twice: running statistics advance
            res.append(layer(x).copy())
        used = _kernels.threads_used()
        res.append(layer.backward(g).copy())
        for k in ("weight_grad", "bias_grad", "running_mean", "running_var"):
            v = getattr(layer, k, None)
            if v is not None:
                res.append(np.array(v, copy=True))
        if hasattr(layer, "track_running_stats"):
            layer.eval()
            res += [layer(x).copy(), layer.backward(g).copy()]
    return res, used


@pytest.mark.parametrize("name,make,shape,dt", CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[2]))}-{np.dtype(c[3]).name}"
                              for c in CASES])
def test_bitwise_identical_at_1_and_2_threads_and_repeated(name, make, shape, dt):
    one, used1 = _run(name, make, shape, dt, 1)
    two, used2 = _run(name, make, shape, dt, 2)
    again, _ = _run(name, make, shape, dt, 2)
    assert used1 == 1
    if _kernels.openmp_enabled() and _kernels.max_threads() >= 2:
        assert used2 == 2, "a 2-thread call ran on one thread"
    assert len(one) == len(two) == len(again)
    for i, (a, b, c) in enumerate(zip(one, two, again)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), f"result {i} differs between 1 and 2 threads"
        assert b.tobytes() == c.tobytes(), f"result {i} differs between two runs"


@pytest.mark.parametrize("fn,args", [
    ("group_norm", (4,)), ("layer_norm", ((4097,),)), ("rms_norm", ((4097,),)),
    ("instance_norm", ()), ("batch_norm", "running"), ("local_response_norm", (3,)),
])
def test_functional_bitwise_identical_at_1_and_2_threads(fn, args):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(9, 8, 4097)).astype(np.float32) + 3
    g = rng.normal(size=x.shape).astype(np.float32)
    if args == "running":
        args = (np.zeros(8, np.float32), np.ones(8, np.float32))
    kw = {"training": True} if fn == "batch_norm" else {}
    f, b = getattr(fastnorm.functional, fn), getattr(fastnorm.functional, fn + "_backward")
    outs = []
    for threads in (1, 2, 2):
        with threadpool_limits(limits=threads, user_api="openmp"):
            a = [np.array(v, copy=True) for v in args if isinstance(v, np.ndarray)]
            call_args = [np.array(v, copy=True) if isinstance(v, np.ndarray) else v
                         for v in args]
            y = f(x, *call_args, **kw)
            grads = b(g, x, *call_args, **kw)
            grads = grads if isinstance(grads, tuple) else (grads,)
            outs.append([y] + [v for v in grads if v is not None]
                        + [v for v in call_args if isinstance(v, np.ndarray)] + a)
    for a, b2, c in zip(*outs):
        assert a.tobytes() == b2.tobytes() == c.tobytes()
