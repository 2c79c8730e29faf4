"""One rank of the SyncBatchNorm MPI tests (tests/test_sync_batchnorm.py).

Run as  mpiexec -n SIZE python -m mpi4py mpi_sync_worker.py MODE OUTDIR SIZE
(python -m mpi4py aborts every rank when one raises, so a broken rank
cannot leave the others waiting).  MODE "results" runs every scenario of
SCENARIOS and pickles what each rank saw to OUTDIR/results-rank<r>.pkl;
MODE "errors" runs ERROR_CASES, bad input on some ranks, and pickles each
rank's outcome and whether its state stayed unchanged.  The layers use
comm=None, that is MPI.COMM_WORLD.

The data helpers are imported by the test module too, which computes the
single-process BatchNorm reference on the concatenated batch.
"""
import os
import pickle
import sys

import numpy as np

C = 3

# name: dtype, trailing shape after N (first is C), batch size per rank for
# each communicator size, layer arguments
SCENARIOS = {
    "f32-4d-unequal": dict(dtype="float32", tail=(C, 5, 4),
                           splits={2: [3, 6], 3: [4, 1, 3]}, kw={}),
    "f64-4d-unequal": dict(dtype="float64", tail=(C, 5, 4),
                           splits={2: [5, 2], 3: [2, 5, 3]}, kw={}),
    "f64-2d-empty-rank-cumulative": dict(dtype="float64", tail=(C,),
                                         splits={2: [0, 7], 3: [3, 0, 4]},
                                         kw=dict(momentum=None)),
    "f32-3d-empty-rank-noaffine": dict(dtype="float32", tail=(C, 9),
                                       splits={2: [6, 0], 3: [0, 2, 5]},
                                       kw=dict(affine=False)),
    "f32-5d-untracked": dict(dtype="float32", tail=(C, 3, 2, 3),
                             splits={2: [2, 3], 3: [1, 1, 2]},
                             kw=dict(track_running_stats=False)),
    "f64-2d-one-value-each": dict(dtype="float64", tail=(C,),
                                  splits={2: [1, 1], 3: [1, 1, 1]}, kw={}),
    # every rank empty: empty outputs, running statistics kept, the call
    # counted (and weighing the cumulative average: there is none to weigh)
    "f64-3d-all-empty-cumulative": dict(dtype="float64", tail=(C, 4),
                                        splits={2: [0, 0], 3: [0, 0, 0]},
                                        kw=dict(momentum=None)),
    "f32-4d-larger": dict(dtype="float32", tail=(C, 24, 24),
                          splits={2: [9, 7], 3: [5, 8, 3]}, kw=dict(momentum=0.3)),
}
STEPS = 3


def params(dtype):
    rng = np.random.default_rng(99)
    return (rng.uniform(0.5, 2.0, C).astype(dtype), rng.normal(size=C).astype(dtype))


def global_batch(name, size, step):
    """(x, dy) of the whole batch of a step (step == STEPS: the eval batch)."""
    s = SCENARIOS[name]
    n = sum(s["splits"][size])
    rng = np.random.default_rng([size, step, len(name)] + [ord(c) for c in name])
    shape = (n,) + s["tail"]
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, C).reshape((1, C) + (1,) * (len(shape) - 2))
    x = x + 10.0 * (step + 1)    # offset: the merge of the moments matters
    dy = rng.normal(size=shape)
    return x.astype(s["dtype"]), dy.astype(s["dtype"])


def rank_slice(name, size, rank):
    sp = SCENARIOS[name]["splits"][size]
    start = sum(sp[:rank])
    return slice(start, start + sp[rank])


def _layer(name, comm=None):
    from fastnorm._sync_batch_norm import SyncBatchNorm

    s = SCENARIOS[name]
    layer = SyncBatchNorm(C, dtype=np.dtype(s["dtype"]), comm=comm, **s["kw"])
    if layer.weight is not None:
        w, b = params(layer.dtype)
        layer.weight[...] = w
        layer.bias[...] = b
    return layer


def run_scenario(name, size, rank, comm=None):
    """What one rank sees: per training step its output, input gradient,
    weight/bias gradients, running statistics and the statistics that
    normalised; then an eval forward and backward."""
    layer = _layer(name, comm)
    sl = rank_slice(name, size, rank)
    steps = []
    for step in range(STEPS):
        x, dy = global_batch(name, size, step)
        x, dy = np.ascontiguousarray(x[sl]), np.ascontiguousarray(dy[sl])
        if step == 1:
            out = np.empty_like(x)
            y = layer(x, out=out)
            assert y is out
        else:
            y = layer(x)
        dx = layer.backward(dy)
        steps.append(dict(
            y=y.copy(), dx=dx.copy(),
            weight_grad=None if layer.weight_grad is None else layer.weight_grad.copy(),
            bias_grad=None if layer.bias_grad is None else layer.bias_grad.copy(),
            running_mean=None if layer.running_mean is None else layer.running_mean.copy(),
            running_var=None if layer.running_var is None else layer.running_var.copy(),
            nbt=None if layer.num_batches_tracked is None else int(layer.num_batches_tracked),
            mean=layer._saved.mean.copy(), invstd=layer._saved.invstd.copy()))
    layer.eval()
    x, dy = global_batch(name, size, STEPS)
    x, dy = np.ascontiguousarray(x[sl]), np.ascontiguousarray(dy[sl])
    y = layer(x)
    dx = layer.backward(dy)
    ev = dict(y=y.copy(), dx=dx.copy(), weight_grad=layer.weight_grad,
              bias_grad=layer.bias_grad)
    return dict(steps=steps, eval=ev)


# --------------------------------------------------------------------------
# Bad input on some ranks: each case is (name, what the ranks do).  Every
# rank of every case calls the layer once (forward or backward); the ones
# named in "bad" get a bad argument.
# --------------------------------------------------------------------------

ERROR_CASES = [
    # name, call, {rank: bad argument kind}
    ("channels", "forward", {1: "channels"}),
    ("dtype", "forward", {2: "dtype"}),
    ("out", "forward", {0: "out"}),
    ("two-ranks", "forward", {0: "rank", 2: "channels"}),
    ("too-few-values", "forward", {"splits": [1, 0, 0]}),
    ("config", "forward", {2: "eps"}),
    ("grad-shape", "backward", {1: "grad"}),
    ("in-place-forward", "backward", {0: "inplace"}),
]


def _snapshot(layer):
    return {k: (None if v is None else np.array(v, copy=True)) for k, v in
            [("running_mean", layer.running_mean), ("running_var", layer.running_var),
             ("nbt", layer.num_batches_tracked), ("weight", layer.weight),
             ("bias", layer.bias), ("weight_grad", layer.weight_grad),
             ("bias_grad", layer.bias_grad)]}


def _same(a, b):
    return all((a[k] is None and b[k] is None) or np.array_equal(a[k], b[k]) for k in a)


def run_error_case(case, size, rank, comm=None):
    """(exception type name or None, message, state unchanged) on this rank."""
    from fastnorm._sync_batch_norm import SyncBatchNorm

    name, call, bad = case
    kind = bad.get(rank)
    splits = bad.get("splits", [3, 2, 4][:size])
    rng = np.random.default_rng(rank)
    n = splits[rank]
    eps = 1e-3 if kind == "eps" else 1e-5
    layer = SyncBatchNorm(C, eps=eps, comm=comm)
    layer.weight[...] = params(np.float32)[0]
    tail = (C,) if "splits" in bad else (C, 4)      # (N, C): one value per sample
    x = rng.normal(size=(n,) + tail).astype(np.float32)
    if call == "backward":
        # a good training forward on every rank first (rank 0 in place when asked)
        x_fwd = x.copy()
        layer(x_fwd, out=x_fwd if kind == "inplace" else None)
    if kind == "channels":
        x = rng.normal(size=(n, C + 1, 4)).astype(np.float32)
    elif kind == "dtype":
        x = x.astype(np.float64)
    elif kind == "rank":
        x = x[:, :, 0].reshape(-1)
    out = np.full(x.shape if kind != "out" else (n + 1,) + tail, 7.0, np.float32)
    saved = layer._saved
    before = _snapshot(layer)
    x_before, out_before = x.copy(), out.copy()
    try:
        if call == "forward":
            layer(x, out=out)
        else:
            g = np.ones((n + (kind == "grad"),) + tail, np.float32)
            layer.backward(g)
        err, msg = None, ""
    except Exception as e:      # noqa: BLE001 - recorded for the test to judge
        err, msg = type(e).__name__, str(e)
    unchanged = (_same(before, _snapshot(layer)) and layer._saved is saved
                 and np.array_equal(x, x_before) and np.array_equal(out, out_before))
    return err, msg, unchanged


def after_errors(size, rank, comm=None):
    """A good training step after the failures: the ranks are still in step
    (same collective sequence), and the result is a correct BatchNorm."""
    from fastnorm._sync_batch_norm import SyncBatchNorm

    layer = SyncBatchNorm(C, dtype=np.float64, comm=comm)
    x = np.arange(4 * C, dtype=np.float64).reshape(4, C) * (rank + 1)
    layer(x)
    return layer.running_mean.copy(), layer.running_var.copy()


def main(argv):
    mode, outdir, size = argv[0], argv[1], int(argv[2])
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if comm.Get_size() != size:
        raise SystemExit(f"mpi_sync_worker: started as one of {comm.Get_size()} ranks, "
                         f"expected {size}: this mpiexec does not belong to mpi4py's MPI "
                         "library")
    if mode == "results":
        res = {name: run_scenario(name, size, rank) for name in SCENARIOS}
    elif mode == "errors":
        res = {case[0]: run_error_case(case, size, rank) for case in ERROR_CASES}
        res["after"] = after_errors(size, rank)
    else:
        raise SystemExit(f"mpi_sync_worker: unknown mode {mode!r}")
    res["_world"] = (rank, comm.Get_size())
    path = os.path.join(outdir, f"{mode}-rank{rank}.pkl")
    with open(path + ".tmp", "wb") as f:
        pickle.dump(res, f)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main(sys.argv[1:])
