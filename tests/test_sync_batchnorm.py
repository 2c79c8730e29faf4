"""SyncBatchNorm: BatchNorm over the union of several processes' batches.

MPI tests launch 2 and 3 ranks (mpiexec next to the interpreter or on PATH,
worker tests/mpi_sync_worker.py) and compare every rank with single-process
BatchNorm on the concatenated batch; they skip without mpi4py/mpiexec unless
FASTNORM_REQUIRE_MPI=1 (CI), which turns the skip into a failure.  In-process
tests simulate ranks with threads over a fake communicator.

Tolerance against the single-process result (the moments are merged in
another order, so not bitwise): relative 1e-12 for float64 and 1e-6 for
float32 with an absolute floor of the same factor times the largest
magnitude of the compared array; num_batches_tracked exactly.  Across ranks
the statistics, running statistics and parameter gradients are compared
bitwise, and so is everything when a single rank holds all the data.
"""
import copy
import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastnorm
import mpi_sync_worker as W
from util import OneRank, run_isolated
from fastnorm import _batch_norm as _bn
from fastnorm._sync_batch_norm import SyncBatchNorm

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_sync_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastnorm.__file__)))
TIMEOUT = 90
TOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
BN = {2: fastnorm.BatchNorm1d, 3: fastnorm.BatchNorm1d, 4: fastnorm.BatchNorm2d,
      5: fastnorm.BatchNorm3d}


def assert_close(got, ref, what, scale=None):
    """got == ref to TOL relative, with an absolute floor of TOL * scale
    (default: the largest magnitude in ref)."""
    tol = TOL[ref.dtype]
    assert got.dtype == ref.dtype and got.shape == ref.shape, what
    if scale is None:
        scale = float(np.abs(ref).max()) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale, err_msg=what)


# --------------------------------------------------------------------------
# A fake communicator: ranks are threads, allgather a pickled exchange
# --------------------------------------------------------------------------

class ThreadGroup:
    """size simulated ranks; a rank that never arrives breaks the barrier
    after `timeout` seconds instead of hanging the test."""

    def __init__(self, size, timeout=20):
        self.size = size
        self.slots = [None] * size
        self.barrier = threading.Barrier(size, timeout=timeout)
        self.calls = [0] * size

    def comm(self, rank):
        return ThreadComm(self, rank)


class ThreadComm:
    def __init__(self, group, rank):
        self.group, self.rank = group, rank

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.group.size

    def allgather(self, obj):
        g = self.group
        g.calls[self.rank] += 1
        g.slots[self.rank] = pickle.dumps(obj)      # MPI copies: so does this
        g.barrier.wait()
        got = [pickle.loads(s) for s in g.slots]
        g.barrier.wait()
        return got


def run_ranks(size, fn, timeout=30):
    """fn(rank, comm) on `size` threads; per rank its result, or the
    exception it raised."""
    group = ThreadGroup(size)
    res = [None] * size

    def body(r):
        try:
            res[r] = fn(r, group.comm(r))
        except BaseException as e:  # noqa: BLE001 - reported to the test
            res[r] = e

    threads = [threading.Thread(target=body, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a simulated rank hung"
    for r in res:
        if isinstance(r, threading.BrokenBarrierError):
            raise AssertionError("a simulated rank never reached the exchange") from r
    return res, group


class NoTalk(OneRank):
    def allgather(self, obj):
        raise AssertionError("eval mode must not communicate")


# --------------------------------------------------------------------------
# The single-process reference and the checks shared by MPI and thread ranks
# --------------------------------------------------------------------------

def reference(name, size):
    """BatchNorm on the concatenated batch: per step (y, dx, wg, bg, rm, rv,
    nbt), then per rank the eval (y, dx, wg, bg) of its own slice."""
    s = W.SCENARIOS[name]
    dt = np.dtype(s["dtype"])
    bn = BN[len(s["tail"]) + 1](W.C, dtype=dt, **s["kw"])
    if bn.weight is not None:
        bn.weight[...], bn.bias[...] = W.params(dt)
    steps = []
    for step in range(W.STEPS):
        x, dy = W.global_batch(name, size, step)
        y = bn(x)
        dx = bn.backward(dy)
        # dx is a difference of terms of about |dy| * |weight| * invstd, which
        # can cancel (to rounding noise with 2 values per channel): its scale
        a = _bn.saved_eval(bn._saved).invstd * (1.0 if bn.weight is None else np.abs(bn.weight))
        steps.append(dict(y=y.copy(), dx=dx.copy(), weight_grad=bn.weight_grad,
                          dx_scale=float(np.abs(dy).max(initial=0) * a.max()),
                          bias_grad=bn.bias_grad, running_mean=copy.copy(bn.running_mean),
                          running_var=copy.copy(bn.running_var),
                          nbt=None if bn.num_batches_tracked is None
                          else int(bn.num_batches_tracked)))
    bn.eval()
    x, dy = W.global_batch(name, size, W.STEPS)
    evals = []
    for rank in range(size):
        sl = W.rank_slice(name, size, rank)
        y = bn(np.ascontiguousarray(x[sl]))
        dx = bn.backward(np.ascontiguousarray(dy[sl]))
        evals.append(dict(y=y.copy(), dx=dx.copy(), weight_grad=bn.weight_grad,
                          bias_grad=bn.bias_grad))
    return steps, evals


def check_scenario(name, size, ranks):
    """ranks: what each rank saw (run_scenario).  Every rank matches the
    reference; shared results are the same bits on every rank; with one rank
    holding all the data, everything is BatchNorm's bits."""
    steps, evals = reference(name, size)
    sp = W.SCENARIOS[name]["splits"][size]
    bitwise = sum(1 for n in sp if n) == 1
    for rank, got in enumerate(ranks):
        sl = W.rank_slice(name, size, rank)
        for i, (g, ref) in enumerate(zip(got["steps"], steps)):
            where = f"{name} size {size} rank {rank} step {i}"
            for k in ("y", "dx"):
                r = ref[k][sl]
                assert_close(g[k], r, f"{where} {k}", ref.get(f"{k}_scale"))
                if bitwise:
                    assert np.array_equal(g[k], r), f"{where} {k} not bitwise"
            for k in ("weight_grad", "bias_grad", "running_mean", "running_var"):
                if ref[k] is None:
                    assert g[k] is None, f"{where} {k}"
                    continue
                assert_close(g[k], ref[k], f"{where} {k}")
                if bitwise:
                    assert np.array_equal(g[k], ref[k]), f"{where} {k} not bitwise"
                # the same bits on every rank
                assert np.array_equal(g[k], ranks[0]["steps"][i][k]), f"{where} {k} vs rank 0"
            assert g["nbt"] == ref["nbt"], where
            for k in ("mean", "invstd"):
                assert g[k].dtype == np.float64
                assert np.array_equal(g[k], ranks[0]["steps"][i][k]), f"{where} {k} vs rank 0"
        ev, rev = got["eval"], evals[rank]
        for k in ("y", "dx", "weight_grad", "bias_grad"):
            if rev[k] is None:
                assert ev[k] is None
            else:
                assert_close(ev[k], rev[k], f"{name} size {size} rank {rank} eval {k}")


# --------------------------------------------------------------------------
# MPI: real processes
# --------------------------------------------------------------------------

def _mpi_or_skip():
    why = None
    if importlib.util.find_spec("mpi4py") is None:
        why = 'mpi4py is not installed (pip install "fastnorm[mpi]")'
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.access(exe, os.X_OK):
        exe = shutil.which("mpiexec")
    if exe is None and why is None:
        why = "no mpiexec next to the interpreter or on PATH"
    if why is not None:
        if os.environ.get("FASTNORM_REQUIRE_MPI") == "1":
            pytest.fail(f"FASTNORM_REQUIRE_MPI=1 but {why}")
        pytest.skip(why)
    return exe


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"        # 3 ranks on 2 cores; results do not depend on it
    return env


def _run(cmd, timeout=TIMEOUT):
    return run_isolated(cmd, timeout, env=_env(), cwd=ROOT)


_launched = {}


def mpi_ranks(mode, size, tmp_path_factory):
    """Each rank's pickled results of one mpiexec launch (once per module)."""
    exe = _mpi_or_skip()
    key = (mode, size)
    if key not in _launched:
        d = tmp_path_factory.mktemp(f"mpi-{mode}-{size}")
        cmd = [exe, "-n", str(size), sys.executable, "-m", "mpi4py", WORKER, mode,
               str(d), str(size)]
        rc, out = _run(cmd)
        assert rc == 0, f"{' '.join(cmd)} exited with {rc}:\n{out[-4000:]}"
        ranks = []
        for r in range(size):
            with open(d / f"{mode}-rank{r}.pkl", "rb") as f:
                ranks.append(pickle.load(f))
            assert ranks[-1]["_world"] == (r, size)
        _launched[key] = ranks
    return _launched[key]


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("name", list(W.SCENARIOS))
def test_mpi_matches_batchnorm_on_concatenated_batch(name, size, tmp_path_factory):
    ranks = mpi_ranks("results", size, tmp_path_factory)
    check_scenario(name, size, [r[name] for r in ranks])


def expected_errors(case, size):
    """Per rank: (exception type, a piece of its message)."""
    name, call, bad = case
    failing = sorted(r for r in bad if isinstance(r, int))
    where = "SyncBatchNorm" + (".backward" if call == "backward" else "")
    specific = {"channels": ("ValueError", "expected input with 3 channels"),
                "dtype": ("TypeError", "input has dtype float64"),
                "out": ("ValueError", "out has shape"),
                "rank": ("ValueError", "expected 2D to 5D input"),
                "grad": ("ValueError", "grad_output has shape"),
                "inplace": ("RuntimeError", "wrote its output over its input")}
    if "splits" in bad:
        return [("ValueError", "expected more than 1 value per channel")] * size
    if "eps" in bad.values():
        return [("ValueError", "layers do not match")] * size
    who = ("rank " if len(failing) == 1 else "ranks ") + ", ".join(map(str, failing))
    return [specific[bad[r]] if r in failing else
            ("RuntimeError", f"{where}: {who} of {size} failed in this call")
            for r in range(size)]


def check_error_outcomes(ranks, size):
    for case in W.ERROR_CASES:
        want = expected_errors(case, size)
        for r, got in enumerate(ranks):
            err, msg, unchanged = got[case[0]]
            assert err == want[r][0] and want[r][1] in msg, (case[0], r, err, msg)
            assert unchanged, f"{case[0]}: rank {r} changed state in a failed call"
            if err == "RuntimeError" and "failed in this call" in msg:
                # the others are told what went wrong on the failing rank
                for fr, (t, m) in enumerate(want):
                    if "failed in this call" not in m:
                        assert f"rank {fr}: {t}: " in msg and m in msg
    # then a good call: still in step, and right
    x = np.concatenate([np.arange(4 * W.C, dtype=np.float64).reshape(4, W.C) * (r + 1)
                        for r in range(size)])
    bn = fastnorm.BatchNorm1d(W.C, dtype=np.float64)
    bn(x)
    for got in ranks:
        rm, rv = got["after"]
        np.testing.assert_allclose(rm, bn.running_mean, rtol=1e-12)
        np.testing.assert_allclose(rv, bn.running_var, rtol=1e-12)
        assert np.array_equal(rm, ranks[0]["after"][0]) and np.array_equal(rv, ranks[0]["after"][1])


def test_mpi_bad_input_on_some_ranks_raises_on_every_rank(tmp_path_factory):
    """3 processes; bad input on one or two of them: every rank raises (no
    rank hangs: the launch has a timeout), the failing ones with their own
    error, the others naming them; nothing changes; the next call works."""
    ranks = mpi_ranks("errors", 3, tmp_path_factory)
    check_error_outcomes(ranks, 3)


def test_mpi_comm_none_is_comm_world_of_a_single_process():
    """Without mpiexec, comm=None is MPI.COMM_WORLD of size 1 (mpi4py's
    singleton init), and the layer is BatchNorm, bit for bit."""
    _mpi_or_skip()
    code = """if 1:
        import numpy as np, fastnorm
        from mpi4py import MPI
        from fastnorm._sync_batch_norm import SyncBatchNorm
        s = SyncBatchNorm(4, dtype=np.float64)
        assert s.comm == MPI.COMM_WORLD and s.comm.Get_size() == 1
        b = fastnorm.BatchNorm2d(4, dtype=np.float64)
        x = np.random.default_rng(0).normal(size=(3, 4, 5, 6)) + 3
        assert np.array_equal(s(x), b(x))
        assert np.array_equal(s.backward(x), b.backward(x))
        assert np.array_equal(s.weight_grad, b.weight_grad)
        assert np.array_equal(s.running_var, b.running_var)
        print("singleton ok")
    """
    rc, out = _run([sys.executable, "-c", code], timeout=60)
    assert rc == 0 and "singleton ok" in out, out[-4000:]


# --------------------------------------------------------------------------
# In process: simulated ranks
# --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("name", ["f32-4d-unequal", "f64-2d-empty-rank-cumulative",
                                  "f32-3d-empty-rank-noaffine", "f32-5d-untracked",
                                  "f64-3d-all-empty-cumulative"])
def test_thread_ranks_match_batchnorm(name, size):
    res, _ = run_ranks(size, lambda r, comm: W.run_scenario(name, size, r, comm))
    for r in res:
        if isinstance(r, BaseException):
            raise r
    check_scenario(name, size, res)


def test_thread_ranks_bad_input_raises_on_every_rank():
    res = [{} for _ in range(3)]
    for case in W.ERROR_CASES:
        out, _ = run_ranks(3, lambda r, comm: W.run_error_case(case, 3, r, comm))
        for r in range(3):
            res[r][case[0]] = out[r]
    out, _ = run_ranks(3, lambda r, comm: W.after_errors(3, r, comm))
    for r in range(3):
        res[r]["after"] = out[r]
    check_error_outcomes(res, 3)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 7), (2, 3, 4, 5), (2, 3, 2, 3, 4)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_one_rank_is_batchnorm_bit_for_bit(shape, dt, momentum):
    rng = np.random.default_rng(len(shape))
    comm = OneRank()
    s = SyncBatchNorm(3, momentum=momentum, dtype=dt, comm=comm)
    b = BN[len(shape)](3, momentum=momentum, dtype=dt)
    w = rng.uniform(0.5, 2, 3).astype(dt)
    s.weight[...] = b.weight[...] = w
    s.bias[...] = b.bias[...] = -w
    for _ in range(3):
        x = (rng.normal(size=shape) * 3 + 2).astype(dt)
        g = rng.normal(size=shape).astype(dt)
        assert np.array_equal(s(x), b(x))
        assert np.array_equal(s.backward(g), b.backward(g))
        for k in ("weight_grad", "bias_grad", "running_mean", "running_var",
                  "num_batches_tracked"):
            assert np.array_equal(getattr(s, k), getattr(b, k)), k
    assert comm.calls == 6           # one exchange per training forward and backward
    s.eval()
    b.eval()
    assert np.array_equal(s(x), b(x))
    assert np.array_equal(s.backward(g), b.backward(g))
    assert np.array_equal(s.weight_grad, b.weight_grad)
    assert comm.calls == 6


def test_eval_mode_does_not_communicate():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    for track in (True, False):
        s = SyncBatchNorm(3, track_running_stats=track, comm=NoTalk()).eval()
        b = fastnorm.BatchNorm1d(3, track_running_stats=track).eval()
        if track:
            s.running_mean[...] = b.running_mean[...] = [1, 2, 3]
        assert np.array_equal(s(x), b(x))          # track=False: this rank's own batch
        assert np.array_equal(s.backward(x), b.backward(x))
        assert np.array_equal(s.weight_grad, b.weight_grad)
    with pytest.raises(AssertionError, match="must not communicate"):
        s.train()(x)


def test_empty_batch_on_a_rank():
    """N = 0 on rank 1: count 0, an empty output and input gradient, and the
    others get BatchNorm of theirs (bitwise: the empty rank adds nothing)."""
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(n, 3, 4, 4)) for n in (4, 0, 3)]
    gs = [rng.normal(size=x.shape) for x in xs]

    def fn(r, comm):
        s = SyncBatchNorm(3, dtype=np.float64, comm=comm)
        y = s(xs[r])
        dx = s.backward(gs[r])
        return y, dx, s.weight_grad, s.running_var.copy()

    res, group = run_ranks(3, fn)
    assert group.calls == [2, 2, 2]
    b = fastnorm.BatchNorm2d(3, dtype=np.float64)
    y = b(np.concatenate(xs))
    dx = b.backward(np.concatenate(gs))
    assert res[1][0].shape == (0, 3, 4, 4) and res[1][1].shape == (0, 3, 4, 4)
    for r, (yr, dxr, wg, rv) in enumerate(res):
        sl = slice(sum(len(x) for x in xs[:r]), sum(len(x) for x in xs[:r + 1]))
        assert_close(yr, y[sl], f"y rank {r}")
        assert_close(dxr, dx[sl], f"dx rank {r}")
        assert_close(wg, b.weight_grad, "weight_grad")
        assert_close(rv, b.running_var, "running_var")
        assert np.array_equal(wg, res[0][2]) and np.array_equal(rv, res[0][3])


def test_ranks_in_different_calls_raise_on_every_rank():
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)

    def fn(r, comm):
        s = SyncBatchNorm(3, comm=comm)
        if r == 0:
            s(x)
        else:
            s.backward(x)     # fails locally (no forward) but joins the exchange

    res, _ = run_ranks(2, fn)
    assert isinstance(res[0], RuntimeError) and "rank 1 of 2 failed" in str(res[0])
    assert isinstance(res[1], RuntimeError) and "no forward call" in str(res[1])

    def fn2(r, comm):
        s = SyncBatchNorm(3, comm=comm)
        s(x)
        s.backward(x) if r == 0 else s(x)

    res, _ = run_ranks(2, fn2)
    for e in res:
        assert isinstance(e, RuntimeError) and "different calls" in str(e), e


def test_ranks_with_different_layers_raise_on_every_rank():
    def fn(r, comm):
        C = 3 if r == 0 else 4
        s = SyncBatchNorm(C, comm=comm)
        before = s.running_mean.copy()
        try:
            s(np.ones((2, C, 3), np.float32))
        finally:
            assert np.array_equal(s.running_mean, before) and s.num_batches_tracked == 0

    res, _ = run_ranks(2, fn)
    for e in res:
        assert isinstance(e, ValueError) and "layers do not match" in str(e), e


def test_comm_argument():
    with pytest.raises(TypeError, match="lacks allgather, Get_size"):
        SyncBatchNorm(3, comm=type("C", (), {"Get_rank": lambda self: 0})())

    class BadRank(OneRank):
        def Get_rank(self):
            return 1

    with pytest.raises(ValueError, match="rank 1 of size 1"):
        SyncBatchNorm(3, comm=BadRank())

    class Short(OneRank):
        def Get_size(self):
            return 2

        def Get_rank(self):
            return 0

    s = SyncBatchNorm(3, comm=Short())
    with pytest.raises(RuntimeError, match="expected a list of one item per rank"):
        s(np.ones((2, 3), np.float32))
    assert s.num_batches_tracked == 0


def test_comm_none_without_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)      # import mpi4py fails
    with pytest.raises(ImportError, match=r'pip install "fastnorm\[mpi\]"'):
        SyncBatchNorm(3)
    with pytest.raises(ValueError, match="num_features"):   # arguments first
        SyncBatchNorm(0)
    SyncBatchNorm(3, comm=OneRank())                          # a comm needs no mpi4py


def test_state_dict_repr_modes_and_copies():
    comm = OneRank()
    s = SyncBatchNorm(5, momentum=None, comm=comm)
    b = fastnorm.BatchNorm2d(5, momentum=None)
    assert list(s.state_dict()) == list(b.state_dict())
    assert repr(s) == repr(b).replace("BatchNorm2d", "SyncBatchNorm")
    assert repr(s).startswith("SyncBatchNorm(5, eps=1e-05, momentum=None, affine=True")
    b.running_mean[...] = 4
    b.num_batches_tracked[...] = 7
    s.load_state_dict(b.state_dict())
    assert np.array_equal(s.running_mean, b.running_mean) and s.num_batches_tracked == 7
    assert s.eval() is s and not s.training and s.train() is s and s.training
    c = copy.deepcopy(s)
    assert c.comm is comm and c.running_mean is not s.running_mean
    c(np.arange(10, dtype=np.float32).reshape(2, 5, 1, 1))
    assert c.num_batches_tracked == 8 and s.num_batches_tracked == 7
    p = pickle.loads(pickle.dumps(s))
    assert p.comm is not comm and isinstance(p.comm, OneRank)
    assert np.array_equal(p.running_mean, s.running_mean)
    with pytest.raises(ValueError, match="expected 2D to 5D"):
        s(np.ones(3, np.float32))


def test_ranks_with_and_without_affine_raise_on_every_rank():
    def fn(r, comm):
        s = SyncBatchNorm(3, affine=(r == 0), comm=comm)
        s(np.ones((2, 3, 3), np.float32))

    res, _ = run_ranks(2, fn)
    for e in res:
        assert isinstance(e, ValueError) and "layers do not match" in str(e), e


def test_results_do_not_depend_on_the_thread_count():
    """Three simulated ranks, each at 1 and then 2 OpenMP threads: the same
    bits (outputs, gradients, running statistics), shapes off the kernels'
    block boundaries."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(11)
    xs = [(rng.normal(size=(n, 5, 67)) * 2 + 3).astype(np.float32) for n in (3, 0, 5)]
    gs = [rng.normal(size=x.shape).astype(np.float32) for x in xs]

    def run(threads):
        def fn(r, comm):
            with threadpool_limits(limits=threads, user_api="openmp"):
                s = SyncBatchNorm(5, comm=comm)
                s.weight[...] = np.arange(1, 6)
                out = []
                for _ in range(2):
                    out += [s(xs[r]).copy(), s.backward(gs[r]).copy()]
                return out + [s.weight_grad, s.bias_grad, s.running_mean, s.running_var]
        res, _ = run_ranks(3, fn)
        for r in res:
            if isinstance(r, BaseException):
                raise r
        return res

    one, two = run(1), run(2)
    for r in range(3):
        for k, (a, b) in enumerate(zip(one[r], two[r])):
            assert np.array_equal(a, b), f"rank {r} item {k} differs between 1 and 2 threads"


def test_convert_sync_batchnorm():
    comm = OneRank()
    bn = fastnorm.BatchNorm2d(4, eps=1e-3, momentum=None, dtype=np.float64)
    bn.weight[...] = [1, 2, 3, 4]
    bn.running_mean[...] = 5
    bn.num_batches_tracked[...] = 3
    bn.eval()
    gn = fastnorm.GroupNorm(2, 4)
    other = SyncBatchNorm(4, comm=comm)
    bn1 = fastnorm.BatchNorm1d(4, affine=False, track_running_stats=False)
    got = SyncBatchNorm.convert_sync_batchnorm(
        {"a": [bn, gn], "b": (bn1, other), "c": 7}, comm=comm)
    s, g2 = got["a"]
    s1, o2 = got["b"]
    assert type(got["a"]) is list and type(got["b"]) is tuple and got["c"] == 7
    assert g2 is gn and o2 is other
    assert type(s) is SyncBatchNorm and s.comm is comm and not s.training
    assert (s.num_features, s.eps, s.momentum, s.dtype) == (4, 1e-3, None, np.float64)
    # the arrays are shared, as PyTorch's conversion shares them
    for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert getattr(s, k) is getattr(bn, k), k
    x = np.random.default_rng(1).normal(size=(2, 4, 3, 3))
    assert np.array_equal(s(x), bn(x))
    s.train()(x)
    assert bn.num_batches_tracked == 4
    assert type(s1) is SyncBatchNorm and s1.weight is None and s1.running_mean is None
    assert s1.training and s1.dtype == np.float32
    assert SyncBatchNorm.convert_sync_batchnorm(gn, comm=comm) is gn
    assert fastnorm.SyncBatchNorm is SyncBatchNorm


def test_import_does_not_import_mpi4py():
    code = ("import sys, fastnorm; fastnorm.SyncBatchNorm; "
            "assert 'mpi4py' not in sys.modules; print('lazy ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "lazy ok" in out.stdout, out.stderr[-2000:]
