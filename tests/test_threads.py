"""Threads: OpenMP in the build, control by threadpoolctl / OMP_NUM_THREADS.
(Results bitwise identical whatever the thread count: test_determinism.py,
for every layer of the catalogue.)"""
import json
import os
import subprocess
import sys

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from fastnorm._native import kernels as _kernels

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

