"""SyncBatchNorm: batch normalisation over the union of the batches of
several processes (MPI ranks), on CPU.

Each rank computes the moments of its own batch with the statistics kernels;
the ranks exchange them and every rank merges all of them the same way, so
the statistics, the running statistics and the parameter gradients are the
same bits on every rank.  The normalisation itself and the input gradient
stay local.
"""
import copy

import numpy as np

from . import _batch_norm as _bn
from . import _checks as ck
from ._modules import _BatchNorm
from ._moments import Moments, reduce_moments
from ._dtypes import kernel_view as kv
from ._native import kernels as _kernels

INSTALL_HINT = 'pip install "fastnorm[mpi]"'
COMM_METHODS = ("allgather", "Get_rank", "Get_size")


def world_comm(where):
    """mpi4py's MPI.COMM_WORLD (imported here, on first use only)."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:   # no mpi4py, or no MPI library
        raise ImportError(
            f"{where}: comm=None means MPI.COMM_WORLD of mpi4py, which could not be "
            f"imported ({e}); install it with {INSTALL_HINT} (mpi4py and the MPICH "
            "library), or pass a communicator as comm="
        ) from e
    return MPI.COMM_WORLD


def check_comm(comm, where):
    """comm if it has the communicator methods SyncBatchNorm uses."""
    missing = [m for m in COMM_METHODS if not callable(getattr(comm, m, None))]
    if missing:
        raise TypeError(
            f"{where}: comm must be an mpi4py communicator or an object with its "
            f"methods {', '.join(COMM_METHODS)}; {type(comm).__name__} lacks "
            f"{', '.join(missing)}"
        )
    size, rank = comm.Get_size(), comm.Get_rank()
    if not (isinstance(size, (int, np.integer)) and isinstance(rank, (int, np.integer))
            and 0 <= rank < size):
        raise ValueError(f"{where}: comm has rank {rank!r} of size {size!r}; expected "
                         "integers with 0 <= rank < size")
    return comm


class _Exchange:
    """The one collective of a SyncBatchNorm call.

    Every rank calls allgather exactly once per call, whether its own part
    succeeded or not: a rank that failed before reaching the exchange joins
    it with its error (fail()), so no rank is left waiting.  Each rank sends
    (operation, signature, error, payload); every rank then raises if any
    rank failed or the ranks disagree, else gets the payloads in rank order.
    """

    def __init__(self, comm, where, op, signature):
        self.comm = comm
        self.where = where
        self.op = op
        self.signature = signature
        self.done = False

    def gather(self, payload, error=None):
        self.done = True
        err = None if error is None else (type(error).__name__, str(error))
        got = self.comm.allgather((self.op, self.signature, err, payload))
        size = self.comm.Get_size()
        if not isinstance(got, (list, tuple)) or len(got) != size:
            raise RuntimeError(f"{self.where}: comm.allgather returned "
                               f"{type(got).__name__} {got!r:.80} on a communicator of "
                               f"size {size}; expected a list of one item per rank")
        if error is not None:
            return None             # the caller raises its own error
        failed = [(r, g[2]) for r, g in enumerate(got) if g[2] is not None]
        if failed:
            who = "rank" if len(failed) == 1 else "ranks"
            ranks = ", ".join(str(r) for r, _ in failed)
            what = "; ".join(f"rank {r}: {t}: {m}" for r, (t, m) in failed)
            raise RuntimeError(
                f"{self.where}: {who} {ranks} of {size} failed in this call, so every "
                f"rank raises and none changed anything ({what})"
            )
        ops = [g[0] for g in got]
        if any(o != self.op for o in ops):
            raise RuntimeError(
                f"{self.where}: the ranks are in different calls (rank by rank: "
                f"{ops}); every rank must call forward and backward of its "
                "SyncBatchNorm in the same order and mode"
            )
        sigs = [g[1] for g in got]
        if any(s != self.signature for s in sigs):
            raise ValueError(
                f"{self.where}: the ranks' layers do not match (rank by rank: {sigs}); "
                "every rank needs the same layer configuration"
            )
        return [g[3] for g in got]

    def fail(self, error):
        """Join the exchange with an error, unless it already took place."""
        if not self.done:
            self.gather(None, error)


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation over the union of the batches of every process of
    a communicator (PyTorch's SyncBatchNorm, on CPU, over MPI).

    Input (N, C, *) of rank 2 to 5; each rank passes its own batch, of any
    size N (0 included).  In training, forward gives each rank its part of
    what BatchNorm would give on the concatenation of every rank's batch (in
    rank order), and backward its part of the input gradient; weight_grad and
    bias_grad are the gradients of the whole batch (the sum over ranks),
    the same bits on every rank, so they need no further reduction.  The
    running statistics follow the whole batch (unbiased variance from the
    total count; momentum=None is the cumulative average) and are the same
    bits on every rank.  Training needs more than one value per channel in
    the whole batch, or none: when every rank's batch is empty, every rank
    gets an empty output and the running statistics stay as they are
    (num_batches_tracked still counts the call), as BatchNorm's do.

    Each training forward and each training backward is one collective call
    (comm.allgather of a few small arrays): every rank of comm must make the
    same calls in the same order and mode.  Eval mode communicates nothing:
    running statistics, or with track_running_stats=False the local batch's
    statistics, and local weight_grad / bias_grad.

    Errors: every argument is checked locally, then the ranks exchange an
    ok/error flag with the statistics; if any rank failed, every rank raises
    (the failing rank its own error, the others a RuntimeError naming it) and
    no rank changed anything.

    comm: None for mpi4py's MPI.COMM_WORLD (mpi4py is imported then; install
    it with ``pip install "fastnorm[mpi]"``), an mpi4py communicator, or any
    object with the methods allgather(obj) (a list of every rank's obj, in
    rank order, the same on every rank), Get_rank() and Get_size().
    """

    _ndims = (2, 3, 4, 5)
    _layout = "(N, C, *)"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True, dtype=np.float32, comm=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         bias=bias, dtype=dtype)
        where = type(self).__name__
        self.comm = check_comm(world_comm(where) if comm is None else comm, where)

    def __deepcopy__(self, memo):
        # a communicator is a handle on a group of processes: shared, not copied
        memo.setdefault(id(self.comm), self.comm)
        new = type(self).__new__(type(self))
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    def _signature(self):
        return (self.num_features, self.dtype.str, self.eps, self.momentum,
                self.track_running_stats, self.weight is not None, self.bias is not None)

    @classmethod
    def convert_sync_batchnorm(cls, layers, comm=None):
        """SyncBatchNorm in place of every BatchNorm1d/2d/3d (PyTorch's
        SyncBatchNorm.convert_sync_batchnorm, on fastnorm's layers).

        layers: a BatchNorm layer, or a list, tuple or dict holding layers
        (nested containers too); a container comes back as a new one of the
        same type with each BatchNorm replaced and everything else (a
        SyncBatchNorm too) as it was.
        The new layer has the old one's configuration and mode and takes its
        arrays (weight, bias, running statistics, num_batches_tracked), shared
        as PyTorch's conversion shares them.  comm as in SyncBatchNorm.
        """
        if comm is None:
            comm = world_comm(f"{cls.__name__}.convert_sync_batchnorm")

        def convert(obj):
            if isinstance(obj, dict):
                return type(obj)((k, convert(v)) for k, v in obj.items())
            if isinstance(obj, (list, tuple)):
                items = [convert(v) for v in obj]
                return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
            if not isinstance(obj, _BatchNorm) or isinstance(obj, SyncBatchNorm):
                return obj
            new = cls(obj.num_features, obj.eps, obj.momentum, obj.affine,
                      obj.track_running_stats, bias=obj.bias is not None,
                      dtype=obj.dtype, comm=comm)
            for k in obj._param_names + obj._buffer_names:
                setattr(new, k, getattr(obj, k))
            new.training = obj.training
            return new
        return convert(layers)

    def _forward(self, x, out):
        if not self.training:
            return super()._forward(x, out)
        where = type(self).__name__
        ex = _Exchange(self.comm, where, "forward", self._signature())

        def moments(x3):
            C, n = x3.shape[1], x3.shape[0] * x3.shape[2]
            mean, var = np.zeros(C), np.zeros(C)
            if n:
                _kernels.batch_stats(kv(x3), mean, var)
            return merged_moments(where, ex.gather((n, mean, var)), C, x.shape)

        try:
            x = self._check_input(x, where)
            update = self.track_running_stats
            momentum = ck.momentum_value(self.momentum, where)
            nbt = self._next_count(update)
            y, saved = _bn.forward(where, x, self.running_mean, self.running_var,
                                   self.weight, self.bias, True, update, momentum,
                                   self.eps, out, nbt, moments=moments)
        except Exception as e:
            ex.fail(e)
            raise
        if update:
            self.num_batches_tracked[...] = nbt
        self._saved = saved
        self._saved_training = True
        return y

    def backward(self, grad_output, out=None):
        """Input gradient of the last forward call for grad_output = dL/dy.

        In training a collective call: stores weight_grad and bias_grad of
        the whole batch (summed over ranks).  In eval mode local.
        """
        if not self.training:
            return super().backward(grad_output, out)
        where = f"{type(self).__name__}.backward"
        ex = _Exchange(self.comm, where, "backward", (self.num_features, self.dtype.str))

        def reduce(sum_dy, sum_dyx, count):
            return summed(ex.gather((count, sum_dy, sum_dyx)), len(sum_dy))

        try:
            saved = self._saved_for_backward(where)
            dx, gw, gb = _bn.backward(where, grad_output, saved, self.weight,
                                      self.weight is not None, self.bias is not None,
                                      out, reduce=reduce)
        except Exception as e:
            ex.fail(e)
            raise
        self.weight_grad, self.bias_grad = gw, gb
        return dx


def merged_moments(where, parts, C, shape):
    """(mean, biased var, count) of the union of every rank's batch from the
    ranks' (count, mean, var), in rank order: a balanced tree of Chan merges
    (reduce_moments).  A rank's own (mean, var) is taken as it is when it is
    the only one with data, so one process gives BatchNorm's bits.  Count 0
    (with mean 0, var 1) when every rank's batch is empty.  shape: this
    rank's input shape, for the error message."""
    counts = [int(n) for n, _, _ in parts]
    total = sum(counts)
    if total == 0:
        return np.zeros(C), np.ones(C), 0
    if total == 1:
        raise ValueError(
            f"{where}: expected more than 1 value per channel when training, got "
            f"{total} over all {len(parts)} ranks (values per channel, rank by "
            f"rank: {counts}; this rank's input has shape {ck.shape_str(shape)})"
        )
    full = [(n, m, v) for n, m, v in parts if n]
    if len(full) == 1:
        _, mean, var = full[0]
        return mean, var, total
    m = reduce_moments(Moments(np.full(C, n, np.int64), mean, var * n)
                       for n, mean, var in full)
    return m.mean, m.m2 / total, total


def summed(parts, C):
    """(sum_dy, sum_dyx, count) summed over ranks, one rank after another."""
    sum_dy, sum_dyx, total = np.zeros(C), np.zeros(C), 0
    for n, a, b in parts:
        sum_dy = sum_dy + a
        sum_dyx = sum_dyx + b
        total += int(n)
    return sum_dy, sum_dyx, total
