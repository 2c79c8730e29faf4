"""Fork safety: a process made by fork() after parallel fastnorm calls gets
working kernels, on as many threads as its parent, with the same bits.

Each scenario of tests/fork_worker.py runs in a Python process of its own
with OMP_NUM_THREADS=2; one that hangs is killed with everything it forked
and fails (util.run_isolated).  The scenarios: os.fork after parallel calls
of every layer (train and eval, forward and backward), and the parent after
the fork; a child of a child; a multiprocessing pool with the fork start
method, and with spawn and forkserver as controls; fork while another
thread is inside training and eval calls (its layer lock held, a pooled
output); fork from inside a call (a SyncBatchNorm communicator that forks,
the lock held by the forking thread); and the serial fallback of a child
whose OpenMP pool could not be reset.
"""
import os
import sys

import pytest

import fastnorm
from fastnorm._native import kernels
from util import run_isolated

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fork_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastnorm.__file__)))
TIMEOUT = 180

SCENARIOS = ["every-layer", "grandchild", "pool-fork", "pool-spawn", "pool-forkserver",
             "thread-in-call", "fork-inside-call", "serial-fallback"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fork_scenario(scenario):
    if scenario == "serial-fallback" and not kernels.openmp_enabled():
        pytest.skip("a serial build has no OpenMP pool to fall back from")
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "2"
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    rc, out = run_isolated([sys.executable, WORKER, scenario], TIMEOUT, env=env, cwd=ROOT)
    assert rc == 0 and f"ok {scenario}" in out, out[-6000:]


def test_the_worker_lists_every_scenario():
    import fork_worker

    assert sorted(fork_worker.SCENARIOS) == sorted(SCENARIOS)
