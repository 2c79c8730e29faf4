"""Threads: OpenMP in the build, control by threadpoolctl / OMP_NUM_THREADS,
and results bitwise identical whatever the thread count."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fastnorm
from fastnorm._native import kernels as _kernels

# Shapes just off the unit boundaries, odd sample counts, a huge plane with 3
# channels, (N, C) input and many channels; each big enough
# (> 65536 elements) for a 2-thread call to use both threads.
SHAPES = [(97, 3, 1000), (9, 3, 4095), (9, 3, 4096), (9, 3, 4097), (5, 3, 8193),
          (1, 3, 1 << 18), (1001, 70), (3, 300, 257), (2, 4, 9, 31, 33), (3, 5, 101, 47),
          # rows mode (planes shorter than 32): several channel chunks with a
          # remainder, odd plane lengths, just below and at the switch
          (257, 600), (33, 1100, 7), (300, 40, 31), (300, 40, 32)]
LAYER = {2: fastnorm.BatchNorm1d, 3: fastnorm.BatchNorm1d, 4: fastnorm.BatchNorm2d,
         5: fastnorm.BatchNorm3d}


SERIAL_ALLOWED = os.environ.get("FASTNORM_ALLOW_SERIAL") == "1"
# Tests of the OpenMP runtime: skipped only for a deliberate serial build.
needs_openmp = pytest.mark.skipif(
    SERIAL_ALLOWED and not _kernels.openmp_enabled(),
    reason="serial build allowed by FASTNORM_ALLOW_SERIAL=1")


def test_built_with_openmp():
    """A build that should have OpenMP and lost it fails here.

    Set FASTNORM_ALLOW_SERIAL=1 only for a deliberate serial build (a
    compiler without OpenMP)."""
    if SERIAL_ALLOWED:
        pytest.skip("serial build allowed by FASTNORM_ALLOW_SERIAL=1")
    assert _kernels.openmp_enabled(), "fastnorm._kernels was built without OpenMP"


@needs_openmp
def test_threadpoolctl_sees_and_limits_fastnorm_openmp():
    info = [i for i in threadpool_info() if i["user_api"] == "openmp"]
    assert info, f"no OpenMP runtime visible to threadpoolctl: {threadpool_info()}"
    with threadpool_limits(limits=1, user_api="openmp"):
        assert _kernels.max_threads() == 1
    with threadpool_limits(limits=2, user_api="openmp"):
        assert _kernels.max_threads() == 2


def _run(code, cwd, **env):
    # cwd: away from a source checkout, whose fastnorm/ (no compiled
    # extension) `python -c` would otherwise import instead of the installed one
    full = dict(os.environ, **env)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                         text=True, check=True, cwd=cwd)
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_openmp
def test_import_loads_openmp_runtime_and_omp_num_threads_is_obeyed(tmp_path):
    code = (
        "import json, numpy as np, threadpoolctl\n"
        "before = [i['filepath'] for i in threadpoolctl.threadpool_info() if i['user_api']=='openmp']\n"
        "import fastnorm\n"
        "after = [i['filepath'] for i in threadpoolctl.threadpool_info() if i['user_api']=='openmp']\n"
        "fastnorm.BatchNorm2d(3)(np.ones((2, 3, 256, 256), np.float32))\n"
        "print(json.dumps([before, after, fastnorm._native.kernels.max_threads(),\n"
        "                  fastnorm._native.kernels.threads_used()]))\n"
    )
    before, after, mx, used = _run(code, tmp_path, OMP_NUM_THREADS="1")
    assert len(after) >= 1 and len(after) >= len(before)
    assert (mx, used) == (1, 1)
    _, _, mx, used = _run(code, tmp_path, OMP_NUM_THREADS="2")
    assert (mx, used) == (2, 2)


def _everything(shape, dtype, n_threads):
    rng = np.random.default_rng(7)
    x = (rng.normal(size=shape) * 3 + 100).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    layer = LAYER[len(shape)](shape[1], dtype=dtype)
    layer.weight[...] = rng.uniform(0.5, 2, shape[1])
    with threadpool_limits(limits=n_threads, user_api="openmp"):
        y = layer(x)
        used = _kernels.threads_used()
        dx = layer.backward(g)
        res = [y, dx, layer.weight_grad, layer.bias_grad, layer.running_mean.copy(),
               layer.running_var.copy()]
        layer.eval()
        res += [layer(x), layer.backward(g), layer.weight_grad]
    return res, used


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bitwise_identical_at_1_and_2_threads(shape, dtype):
    one, used1 = _everything(shape, dtype, 1)
    two, used2 = _everything(shape, dtype, 2)
    again, _ = _everything(shape, dtype, 2)
    assert used1 == 1
    if _kernels.openmp_enabled():
        assert used2 == 2, "a 2-thread call ran on one thread"
    for a, b, c in zip(one, two, again):
        assert a.tobytes() == b.tobytes()
        assert b.tobytes() == c.tobytes()
