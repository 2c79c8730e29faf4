"""No memory leaks: a long loop of mixed calls leaves resident memory where it was.

More than 100,000 calls (forward in train and eval mode, backward, the
functional forms, every layer, both float dtypes, a few calls large enough to
take their outputs from the pool) on small shapes.  After a warm-up (OpenMP
threads started, caches and the pool filled) the process's resident set size
may not grow by more than RSS_BOUND; two finer counters must stay flat too:
the bytes glibc's malloc has handed out and not had back (C-level leaks: a
kernel's scratch never freed) and CPython's count of allocated blocks (a
reference leaked on any object).  Each of the ~140 kinds of call runs ~550
times, so a leak in a single kind shows: ~550 leaked objects, or more than
HEAP_BOUND when it loses ~120 bytes or more of malloc'd memory per call.

Skipped under AddressSanitizer (.ci/run's sanitizer step): its allocator
replaces malloc and keeps freed memory in quarantine, so neither the resident
size nor malloc's counters mean anything there.
"""
import ctypes
import gc
import os
import sys
import time

import numpy as np
import pytest

import fastnorm
import fastnorm.functional as F
from fastnorm import _catalogue as cat
from util import asan_loaded

CALLS = 100_000            # fastnorm calls in the measured loop
WARMUP_CALLS = 5_000
# Measured without a leak: growth 0 for RSS, < 1 KiB of malloc'd memory and
# fewer than 10 blocks (negative as often as not).
RSS_BOUND = 4 << 20        # bytes of resident memory the loop may add
HEAP_BOUND = 64 << 10      # bytes malloc may have handed out on balance
BLOCKS_BOUND = 200         # CPython allocated blocks
POOLED_EVERY = 1_000       # one large (pooled) forward + backward every this many steps


pytestmark = [
    pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                       reason="needs /proc/self/statm (Linux)"),
    pytest.mark.skipif(asan_loaded(),
                       reason="AddressSanitizer's allocator makes RSS and malloc counters "
                              "meaningless"),
]


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                 "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_counter():
    """Bytes handed out by glibc malloc and not freed, or None off glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    mallinfo2.argtypes = []

    def in_use():
        m = mallinfo2()
        return m.uordblks + m.hblkhd
    return in_use


def _steps(rng):
    """(number of fastnorm calls, callable making them), one per kind of call."""
    steps = []
    for dt in (np.float32, np.float64):
        def arr(*shape):
            return rng.normal(size=shape).astype(dt)

        x4, g4 = arr(2, 3, 4, 5), arr(2, 3, 4, 5)
        x2, g2 = arr(4, 6), arr(4, 6)
        xl, gl = arr(3, 4, 8), arr(3, 4, 8)
        w3, b3 = arr(3), arr(3)
        w6, b6 = arr(6), arr(6)
        w8, b8 = arr(8), arr(8)
        rm, rv = np.zeros(3, dt), np.ones(3, dt)
        mw, vw = arr(3), arr(3)
        out4 = np.empty_like(x4)

        # every catalogue layer on its first small shape, and one variant
        layers = []
        for e in cat.CATALOGUE:
            shape = e.shapes[0]
            layers.append((e.layer(shape, dt, rng), arr(*shape), arr(*shape)))
        layers.append((fastnorm.SwitchableNorm1d(3, using_bn=False, dtype=dt),
                       x4[:, :, 0], g4[:, :, 0]))
        for layer, x, g in layers:
            def train(layer=layer, x=x):
                layer.train()
                return layer(x)

            def train_backward(layer=layer, x=x, g=g):
                layer.train()
                layer(x)
                return layer.backward(g)

            def eval_(layer=layer, x=x):
                layer.eval()
                return layer(x)

            def eval_backward(layer=layer, x=x, g=g):
                layer.eval()
                layer(x)
                return layer.backward(g)

            steps += [(1, train), (2, train_backward), (1, eval_), (2, eval_backward)]

        functional = [
            lambda: F.batch_norm(x4, rm, rv, w3, b3, training=True),
            lambda: F.batch_norm(x4, rm, rv, w3, b3, training=False, out=out4),
            lambda: F.batch_norm_backward(g4, x4, rm, rv, w3, b3, training=True),
            lambda: F.batch_norm_backward(g4, x4, rm, rv, w3, b3, training=False),
            lambda: F.instance_norm(x4, weight=w3, bias=b3),
            lambda: F.instance_norm_backward(g4, x4, weight=w3, bias=b3),
            lambda: F.group_norm(x4, 3, w3, b3),
            lambda: F.group_norm_backward(g4, x4, 3, w3, b3),
            lambda: F.layer_norm(xl, (8,), w8, b8),
            lambda: F.layer_norm_backward(gl, xl, (8,), w8, b8),
            lambda: F.rms_norm(x2, (6,), w6),
            lambda: F.rms_norm_backward(g2, x2, (6,), w6),
            lambda: F.local_response_norm(x4, 2),
            lambda: F.local_response_norm_backward(g4, x4, 2),
            lambda: F.switchable_norm(x4, mw, vw, rm, rv, w3, b3, training=True),
            lambda: F.switchable_norm_backward(g4, x4, mw, vw, rm, rv, w3, b3),
            lambda: F.moments(x4, (0, 2, 3)),
        ]
        steps += [(1, f) for f in functional]
        steps.append((3, lambda: F.reduce_moments([F.moments(x2, 0), F.moments(g2, 0)])))
    return steps


def _pooled_step(rng):
    """Forward and backward on 8 MiB float32: both outputs come from the pool."""
    shape = (1, 2, 1024, 1024)
    x = rng.normal(size=shape).astype(np.float32)
    layer = fastnorm.InstanceNorm2d(2)
    assert x.nbytes >= fastnorm.output_pool_info()["threshold"]

    def step():
        layer(x)
        return layer.backward(x)
    return step


def _run(steps, pooled, calls):
    """Steps in turn until `calls` fastnorm calls are made; returns the steps run."""
    k = len(steps)
    made = i = 0
    while made < calls:
        n, step = steps[i % k]
        step()
        made += n
        if i % POOLED_EVERY == 0:
            pooled()
            made += 2
        i += 1
    return i


def test_a_long_loop_of_calls_does_not_grow_memory():
    rng = np.random.default_rng(7)
    steps, pooled = _steps(rng), _pooled_step(rng)
    heap_in_use = _heap_counter()

    _run(steps, pooled, WARMUP_CALLS)
    gc.collect()
    rss0 = _rss()
    heap0 = heap_in_use() if heap_in_use else 0
    blocks0 = sys.getallocatedblocks()
    t0 = time.perf_counter()

    n_steps = _run(steps, pooled, CALLS)

    seconds = time.perf_counter() - t0
    gc.collect()
    blocks1 = sys.getallocatedblocks()
    heap1 = heap_in_use() if heap_in_use else 0
    rss1 = _rss()

    mib = 1 / (1 << 20)
    report = (f"{CALLS} calls ({n_steps} steps of {len(steps)} kinds, "
              f"{n_steps // POOLED_EVERY + 1} pooled) in "
              f"{seconds:.1f} s: RSS {rss0 * mib:.1f} -> {rss1 * mib:.1f} MiB "
              f"(+{(rss1 - rss0) * mib:.2f}, bound {RSS_BOUND * mib:.0f}); "
              f"malloc in use {heap0 * mib:.2f} -> {heap1 * mib:.2f} MiB "
              f"(+{(heap1 - heap0) * mib:.3f}, bound {HEAP_BOUND * mib:.2f}); "
              f"Python blocks {blocks0} -> {blocks1} (+{blocks1 - blocks0}, "
              f"bound {BLOCKS_BOUND})")
    print(report)
    assert rss1 - rss0 < RSS_BOUND, "resident memory grew: " + report
    assert heap1 - heap0 < HEAP_BOUND, "malloc'd memory grew: " + report
    assert blocks1 - blocks0 < BLOCKS_BOUND, "Python objects leaked: " + report

