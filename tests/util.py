"""Helpers shared by the tests."""
import contextlib
import os
import pickle
import signal
import subprocess

import numpy as np
import pytest


def asan_loaded():
    """True when AddressSanitizer's runtime is in this process (.ci/run's
    sanitizer step preloads it)."""
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


@contextlib.contextmanager
def fast_paths_off():
    """Every call inside takes the general path: the per-call fast paths
    (_kernels_fast.pxi) off in every kernel copy loaded."""
    from fastnorm import _native
    was = [m.fast_paths(False) for m in _native._loaded]
    try:
        yield
    finally:
        for m, w in zip(_native._loaded, was):
            m.fast_paths(w)


def general_path(f, *args, **kwargs):
    """f(*args, **kwargs) with the fast paths off."""
    with fast_paths_off():
        return f(*args, **kwargs)


def took_fast_path(layer):
    """Whether the layer's last forward was a fast-path call: it saved the
    fast path's tuple, which backward turns into the family's record."""
    saved = layer._saved
    if type(saved) is tuple and len(saved) == 2:    # InstanceNorm's (saved, unbatched)
        saved = saved[0]
    if type(saved) is tuple and len(saved) == 3:    # LocalResponseNorm's (x, shape, args)
        return saved[1] is None
    return type(saved) is tuple and len(saved) in (4, 5) and isinstance(saved[1], np.ndarray)


def run_isolated(cmd, timeout, env=None, cwd=None):
    """Run cmd in a session of its own; (returncode, stdout and stderr).  A
    run that has not finished after timeout seconds fails the test, after
    the whole session (every process it forked) is killed: a hang fails
    instead of stopping the suite."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, cwd=cwd, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"{' '.join(cmd)} hung (killed after {timeout} s):\n{out[-4000:]}")
    return p.returncode, out


class OneRank:
    """A communicator of size 1 for SyncBatchNorm; counts its collective
    calls.  allgather pickles, as MPI copies, unless pickled=False (the leak
    test: unpickling arrays fills caches of pickle's own for a while)."""

    def __init__(self, pickled=True):
        self.calls = 0
        self.pickled = pickled

    def allgather(self, obj):
        self.calls += 1
        return [pickle.loads(pickle.dumps(obj)) if self.pickled else obj]

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1


def finite_differences(f, a, h=1e-6):
    """Central differences of the scalar f() with respect to each element of
    the array a, which f reads (a is perturbed in place and restored)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def assert_layer_gradients(layer, x, g, loss=None, params=("weight", "bias")):
    """layer.backward(g) after a forward of x, and the weight/bias gradients
    it stores, match central differences of loss() (default sum(layer(x) * g))
    with respect to x and to each of `params` that the layer has."""
    if loss is None:
        def loss():
            return float((layer(x) * g).sum())
    loss()
    dx = layer.backward(g)
    grads = {p: getattr(layer, p + "_grad") for p in params}
    np.testing.assert_allclose(dx, finite_differences(loss, x), rtol=1e-5, atol=1e-7)
    for p, got in grads.items():
        if getattr(layer, p, None) is not None:
            np.testing.assert_allclose(got, finite_differences(loss, getattr(layer, p)),
                                       rtol=1e-5, atol=1e-7)
