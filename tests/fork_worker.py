"""The scenarios of tests/test_fork.py.

Run as  python fork_worker.py SCENARIO  in a process of its own, with
OMP_NUM_THREADS=2 (the test kills the process, and every process it forked,
if it has not finished in time: a hang fails the test).  A scenario prints
"ok SCENARIO" when every check passed.  A failed check raises; in a forked
child it prints the traceback and exits with status 1, which the parent
checks.

Every input is large enough that its kernels run on two threads, and the
parent has made parallel calls before it forks: that is what used to leave a
child waiting forever for OpenMP workers it does not have.  Every result a
child computes is compared bit for bit with the parent's (results do not
depend on the thread count, so they must not depend on forking either).
"""
import copy
import multiprocessing
import os
import sys
import threading
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastnorm                                   # noqa: E402
from fastnorm import _catalogue as cat            # noqa: E402
from fastnorm._native import kernels as K         # noqa: E402
from util import OneRank                          # noqa: E402

THREADS = 2 if K.openmp_enabled() else 1     # a serial build runs on one


def catalogue():
    """(name, layer, input shape) for every layer of fastnorm's catalogue, as
    it configures it (parameters and running statistics not at their
    defaults), on its first boundary shape (2**16 elements or more: two
    threads)."""
    rng = np.random.default_rng(7)
    return [(e.name, e.layer(e.boundary[0], np.float32, rng), e.boundary[0])
            for e in cat.CATALOGUE]


def data(shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 2 + 1).astype(np.float32)
    return x, rng.normal(size=shape).astype(np.float32)


def exercise(name, layer, shape, seed=0):
    """Train forward + backward, then eval forward + backward: every array
    the calls produce or change, and the threads each forward ran on."""
    x, g = data(shape, seed)
    res, threads = [], []
    for mode in (True, False):
        layer.train(mode)
        y = layer(x)
        threads.append(K.threads_used())
        dx = layer.backward(g)
        res += [y, dx]
        for k in ("weight_grad", "bias_grad", "mean_weight_grad", "var_weight_grad",
                  "running_mean", "running_var", "num_batches_tracked"):
            v = getattr(layer, k, None)
            if v is not None:
                res.append(np.array(v, copy=True))
    return res, threads


def same(a, b, what):
    assert len(a) == len(b), what
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype and u.shape == v.shape, (what, i)
        assert u.tobytes() == v.tobytes(), f"{what}: result {i} differs from the parent's"


def expect_threads(threads, want, what):
    assert all(t == want for t in threads), f"{what}: forwards ran on {threads} threads, expected {want}"


def fork_and_check(child, label):
    """Fork; the child runs child() and exits 0, or 1 with the traceback;
    the parent waits and raises if the child failed."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        except BaseException:     # noqa: BLE001 - reported, then the exit status
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, \
        f"{label}: forked child failed (status {status})"


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------

def every_layer():
    """Parallel calls of every layer (train and eval, forward and backward);
    fork; the child repeats them on copies made before the parent's calls:
    the same bits, on two threads.  The parent keeps working after."""
    layers = catalogue()
    fresh = copy.deepcopy(layers)
    want = {}
    for name, layer, shape in layers:
        want[name], threads = exercise(name, layer, shape)
        expect_threads(threads, THREADS, f"parent {name}")

    def child():
        assert not K.fork_state()["serial"] and K.max_threads() == THREADS
        for name, layer, shape in copy.deepcopy(fresh):
            got, threads = exercise(name, layer, shape)
            same(got, want[name], f"child {name}")
            expect_threads(threads, THREADS, f"child {name}")

    fork_and_check(child, "every-layer")
    assert K.fork_state()["pauses"] >= K.openmp_enabled()     # the fork reset the pool
    for name, layer, shape in copy.deepcopy(fresh):     # the parent after the fork
        got, threads = exercise(name, layer, shape)
        same(got, want[name], f"parent after fork {name}")
        expect_threads(threads, THREADS, f"parent after fork {name}")


def grandchild():
    """A child that forks a child of its own: both keep their threads."""
    name, fresh, shape = next(c for c in catalogue() if c[0] == "BatchNorm2d")
    want, _ = exercise(name, copy.deepcopy(fresh), shape)

    def check(who):
        got, threads = exercise(name, copy.deepcopy(fresh), shape)
        same(got, want, who)
        expect_threads(threads, THREADS, who)

    def child():
        check("child")
        fork_and_check(lambda: check("grandchild"), "grandchild")
        check("child after its fork")

    fork_and_check(child, "child")


def _pool_work(seed):
    """One multiprocessing task: GroupNorm and LayerNorm forward/backward."""
    out = []
    for name, layer, shape in (("GroupNorm", fastnorm.GroupNorm(4, 16), (8, 16, 32, 64)),
                               ("LayerNorm", fastnorm.LayerNorm(256), (1024, 256))):
        res, threads = exercise(name, layer, shape, seed)
        out.append((res, threads, K.fork_state()["serial"]))
    return out


def _pool(method):
    want = [_pool_work(s) for s in range(4)]       # parallel calls before the pool starts
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        got = pool.map(_pool_work, range(4))
    for seed, (g, w) in enumerate(zip(got, want)):
        for (gr, gt, serial), (wr, _, _) in zip(g, w):
            same(gr, wr, f"{method} pool task {seed}")
            expect_threads(gt, THREADS, f"{method} pool task {seed}")
            assert not serial


def pool_fork():
    _pool("fork")


def pool_spawn():
    _pool("spawn")


def pool_forkserver():
    _pool("forkserver")


def thread_in_call():
    """Fork while another thread is inside fastnorm calls: training calls
    that update running statistics (the layer's lock held, a pooled 8 MiB
    output) and eval calls.  fork() waits for the training call in flight;
    the child finds the layer's lock free and its running statistics those
    of a whole number of calls, and every call there works."""
    shape = (8, 32, 64, 128)                 # 8 MiB: the output pool serves it
    x, g = data(shape, 1)
    bn = fastnorm.BatchNorm2d(32)
    start = copy.deepcopy(bn)
    ln = fastnorm.LayerNorm(128).eval()
    stop = threading.Event()
    calls = [0]

    def worker():
        while not stop.is_set():
            bn(x)
            ln(x)
            calls[0] += 1

    held = []
    # runs before fastnorm's own hook (hooks run in reverse order of
    # registration): was the training lock held when the fork began?
    os.register_at_fork(before=lambda: held.append(_held(bn._update_lock)))
    t = threading.Thread(target=worker)
    t.start()
    try:
        while calls[0] < 2:
            time.sleep(0.001)
        i = 0
        while i < 6 or not any(held):      # until one fork came during a training call
            assert i < 60, "no fork happened while a training call held its lock"
            time.sleep(0.001 * (i % 7))
            i += 1

            def child():
                n = int(bn.num_batches_tracked)
                ref = copy.deepcopy(start)
                for _ in range(n):
                    ref(x)
                assert bn.running_mean.tobytes() == ref.running_mean.tobytes()
                assert bn.running_var.tobytes() == ref.running_var.tobytes()
                y = bn(x)                    # the lock is free, the pool works
                same([y, bn.running_mean], [ref(x), ref.running_mean], "child bn")
                same([bn.backward(g)], [ref.backward(g)], "child bn backward")
                assert K.threads_used() == THREADS
                same([ln(x)], [fastnorm.LayerNorm(128)(x)], "child ln")
            fork_and_check(child, f"fork {i} during calls")
    finally:
        stop.set()
        t.join()


def _held(lock):
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


class ForkingComm(OneRank):
    """A communicator whose first allgather forks: the fork happens inside a
    SyncBatchNorm training call, with the layer's lock held by the thread
    that forks."""

    def __init__(self):
        super().__init__()
        self.pid = None

    def allgather(self, obj):
        if self.pid is None:
            sys.stdout.flush()
            self.pid = os.fork()
        return super().allgather(obj)


def fork_inside_call():
    comm = ForkingComm()
    layer = fastnorm.SyncBatchNorm(16, comm=comm)
    ref = fastnorm.BatchNorm2d(16)
    x, g = data((8, 16, 32, 64), 2)
    y = layer(x)                  # forks inside; both processes finish the call
    if comm.pid == 0:             # the child
        code = 1
        try:
            same([y], [ref(x)], "child, the call it forked in")
            same([layer(x), layer.running_mean], [ref(x), ref.running_mean],
                 "child, the next training call")
            assert K.threads_used() == THREADS
            code = 0
        except BaseException:     # noqa: BLE001
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(comm.pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed ({status})"
    same([y, layer(x)], [ref(x), ref(x)], "parent")


def serial_fallback():
    """When the OpenMP pause fails (simulated), the child runs every kernel
    on one thread, and so does its own child: same bits, no hang."""
    layers = catalogue()
    fresh = copy.deepcopy(layers)
    want = {name: exercise(name, layer, shape)[0] for name, layer, shape in layers}
    K._fork_pause_off(True)

    def check(who):
        assert K.fork_state()["serial"] and K.max_threads() == 1, who
        info = fastnorm.show_config("dicts")
        assert info["fork"]["serial"] and info["threads"]["max_threads"] == 1, who
        for name, layer, shape in copy.deepcopy(fresh):
            got, threads = exercise(name, layer, shape)
            same(got, want[name], f"{who} {name}")
            expect_threads(threads, 1, f"{who} {name}")

    def child():
        check("serial child")
        fork_and_check(lambda: check("its child"), "serial grandchild")

    fork_and_check(child, "serial child")
    K._fork_pause_off(False)
    assert not K.fork_state()["serial"] and K.max_threads() == THREADS


SCENARIOS = {"every-layer": every_layer, "grandchild": grandchild, "pool-fork": pool_fork,
             "pool-spawn": pool_spawn, "pool-forkserver": pool_forkserver,
             "thread-in-call": thread_in_call, "fork-inside-call": fork_inside_call,
             "serial-fallback": serial_fallback}

if __name__ == "__main__":
    name = sys.argv[1]
    assert K.max_threads() == THREADS, f"run with OMP_NUM_THREADS={THREADS}"
    SCENARIOS[name]()
    print(f"ok {name}", flush=True)
