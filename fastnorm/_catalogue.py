"""The catalogue of fastnorm's layers: one entry per public layer class.

Every cross-cutting test suite (layouts, non-finite values, determinism,
ISA copies, concurrency, fork, the output pool, large outputs, properties,
bad input, memory) and fastnorm-bench's layer list read this one table, so
a new layer is covered everywhere by being listed here once;
tests/test_catalogue.py fails when a public layer or functional is missing.

An entry names, for its layer:
  - the class and the configuration the suites use (`make`: channels from
    the input shape, every optional part switched on: affine, tracked
    running statistics);
  - its functional pair and backward (`functional`, `functional_backward`:
    the same computation from the layer's arrays);
  - its float64 reference twin in fastnorm/_reference.py (`reference`,
    `reference_backward`, None where the tests use other means);
  - the ranks of input it accepts, small shapes (`shapes`), shapes just off
    the kernels' boundaries (`boundary`), one large shape (`large`: both
    threads busy, an output from the pool), its modes;
  - which values a statistic covers (`scope`: "channel" for BatchNorm,
    "instance", "group", "row", "window" for LocalResponseNorm, "mixed" for
    SwitchableNorm), and its fastnorm-bench defaults.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from . import _reference as ref
from . import functional as F
from ._modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d,
                       InstanceNorm2d, InstanceNorm3d, LayerNorm, LocalResponseNorm, RMSNorm,
                       SwitchableNorm1d, SwitchableNorm2d, SwitchableNorm3d)
from ._sync_batch_norm import SyncBatchNorm

ONE_PASS = 512 * 1024       # bytes of a slice the one-pass kernels take (_checks.FUSE_BYTES)


class LocalComm:
    """A communicator of one process for SyncBatchNorm (allgather of one)."""

    def allgather(self, obj):
        return [obj]

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1


def groups_for(C):
    """The GroupNorm group count the catalogue uses for C channels: groups
    of 2 channels when C is even (both one-channel and several-channel
    groups are covered elsewhere), else 1 group."""
    return C // 2 if C % 2 == 0 else 1


@dataclass(frozen=True)
class Entry:
    cls: type               # the public layer class
    make: object            # make(shape, dtype) -> layer for inputs of that shape
    functional: str         # fastnorm.functional name; None: no functional
    ranks: tuple            # accepted (batched) input ranks
    shapes: tuple           # small input shapes, every rank at least once
    boundary: tuple         # shapes just off unit / block / one-pass boundaries,
                            # each of 2 ** 16 elements or more (two threads)
    large: tuple            # >= 8 MiB float32, >= 2 ** 18 elements
    modes: tuple            # ("train", "eval") or ("train",): eval is the same
    scope: str              # what a statistic covers (see the module note)
    bench: tuple = ()       # fastnorm-bench defaults: ((shape, modes), ...)
    params: tuple = field(default=("weight", "bias"))   # learnable arrays

    @property
    def name(self):
        return self.cls.__name__

    @property
    def stateful(self):
        """Has running statistics that training calls update."""
        return "eval" in self.modes

    def layer(self, shape, dtype, rng=None):
        """make(shape, dtype) with non-default parameters and running
        statistics (from rng, default seed 0)."""
        rng = np.random.default_rng(0) if rng is None else rng
        layer = self.make(shape, dtype)
        for k in ("weight", "bias", "mean_weight", "var_weight", "running_mean"):
            a = getattr(layer, k, None)
            if a is not None:
                a[...] = (rng.uniform(0.5, 2, a.shape) if k == "weight"
                          else rng.normal(size=a.shape))
        if getattr(layer, "running_var", None) is not None:
            layer.running_var[...] = rng.uniform(0.5, 2, layer.running_var.shape)
        return layer

    # -- the functional pair, from a layer's arrays --------------------------

    def _fargs(self, layer, training):
        """(positional, keyword) arguments of the functional after the input;
        running statistics as copies (the caller may pass its own)."""
        n = self.functional
        copy = (lambda a: None if a is None else np.array(a, copy=True))
        if n == "batch_norm":
            return ((copy(layer.running_mean), copy(layer.running_var), layer.weight,
                     layer.bias),
                    dict(training=training, eps=layer.eps, momentum=layer.momentum))
        if n == "instance_norm":
            stats = training or not layer.track_running_stats
            return ((copy(layer.running_mean), copy(layer.running_var), layer.weight,
                     layer.bias),
                    dict(use_input_stats=stats, eps=layer.eps, momentum=layer.momentum))
        if n == "group_norm":
            return (layer.num_groups, layer.weight, layer.bias), dict(eps=layer.eps)
        if n == "layer_norm":
            return (layer.normalized_shape, layer.weight, layer.bias), dict(eps=layer.eps)
        if n == "rms_norm":
            return (layer.normalized_shape, layer.weight), dict(eps=layer.eps)
        if n == "local_response_norm":
            return (layer.size,), dict(alpha=layer.alpha, beta=layer.beta, k=layer.k)
        if n == "switchable_norm":
            return ((layer.mean_weight, layer.var_weight, copy(layer.running_mean),
                     copy(layer.running_var), layer.weight, layer.bias),
                    dict(training=training, eps=layer.eps, using_bn=layer.using_bn,
                         momentum=layer.momentum))
        raise ValueError(f"{self.name} has no functional")

    def functional_call(self, layer, x, training=True, out=None):
        """fastnorm.functional's forward with the layer's arrays (running
        statistics copied, not changed)."""
        args, kw = self._fargs(layer, training)
        return getattr(F, self.functional)(x, *args, **kw, out=out)

    def functional_backward(self, layer, x, g, training=True):
        """The functional's backward with the layer's arrays: a tuple of
        gradients (input first)."""
        args, kw = self._fargs(layer, training)
        kw.pop("momentum", None)
        res = getattr(F, self.functional + "_backward")(g, x, *args, **kw)
        return res if isinstance(res, tuple) else (res,)

    # -- the float64 twins ---------------------------------------------------

    def reference(self, layer, x, training=True):
        """float64 output of a forward of `layer` in that mode, from the
        twin in _reference.py, and the running statistics it leaves
        (None without them): (y, running_mean, running_var)."""
        n, f64 = self.functional, (lambda a: None if a is None else np.asarray(a, np.float64))
        nbt = (None if getattr(layer, "num_batches_tracked", None) is None
               else int(layer.num_batches_tracked) + 1)
        if n == "batch_norm":
            batch = training or layer.running_mean is None
            y, rm, rv, _, _ = ref.batch_norm(x, f64(layer.running_mean), f64(layer.running_var),
                                             layer.weight, layer.bias, batch,
                                             layer.momentum, layer.eps, nbt)
            return y, (rm if training else f64(layer.running_mean)), \
                (rv if training else f64(layer.running_var))
        if n == "instance_norm":
            stats = training or not layer.track_running_stats
            xb = x[None] if x.ndim == layer._unbatched_ndim else x
            y, rm, rv = ref.instance_norm(xb, f64(layer.running_mean), f64(layer.running_var),
                                          layer.weight, layer.bias, stats, layer.momentum,
                                          layer.eps, nbt)
            return (y[0] if xb is not x else y), rm, rv
        if n == "group_norm":
            return ref.group_norm(x, layer.num_groups, layer.weight, layer.bias,
                                  layer.eps)[0], None, None
        if n in ("layer_norm", "rms_norm"):
            eps = layer._eps("reference", np.asarray(x).dtype)
            return ref.layer_norm(x, layer.normalized_shape, layer.weight,
                                  getattr(layer, "bias", None), eps,
                                  rms=n == "rms_norm"), None, None
        if n == "local_response_norm":
            return ref.local_response_norm(x, layer.size, layer.alpha, layer.beta,
                                           layer.k)[0], None, None
        if n == "switchable_norm":
            y, rm, rv = ref.switchable_norm(x, layer.mean_weight, layer.var_weight,
                                            layer.weight, layer.bias, layer.eps, training,
                                            f64(layer.running_mean), f64(layer.running_var),
                                            layer.using_bn, layer.momentum, nbt)
            return y, (rm if training else f64(layer.running_mean)), \
                (rv if training else f64(layer.running_var))
        raise ValueError(self.name)

    def reference_backward(self, layer, x, g, training=True):
        """float64 (dx, dweight, dbias) of sum(g * layer(x)) in that mode, or
        None where no twin exists (SwitchableNorm: tests/test_switchable.py
        uses finite differences and PyTorch autograd)."""
        n = self.functional
        if n == "batch_norm":
            batch = training or layer.running_mean is None
            if batch:
                _, _, _, mean, var = ref.batch_norm(x, training=True)
            else:
                mean, var = layer.running_mean, layer.running_var
            return ref.batch_norm_backward(g, x, mean, var, layer.weight, batch, layer.eps)
        if n == "instance_norm":
            stats = training or not layer.track_running_stats
            xb = x[None] if x.ndim == layer._unbatched_ndim else x
            gb = g[None] if xb is not x else g
            if stats:
                dx, dw, db = ref.group_norm_backward(gb, xb, xb.shape[1], layer.weight,
                                                     layer.eps)
            else:
                dx, dw, db = ref.batch_norm_backward(gb, xb, layer.running_mean,
                                                     layer.running_var, layer.weight,
                                                     False, layer.eps)
            return (dx[0] if xb is not x else dx), dw, db
        if n == "group_norm":
            return ref.group_norm_backward(g, x, layer.num_groups, layer.weight, layer.eps)
        if n in ("layer_norm", "rms_norm"):
            return ref.layer_norm_backward(g, x, layer.normalized_shape, layer.weight,
                                           layer._eps("reference", np.asarray(x).dtype),
                                           rms=n == "rms_norm")
        if n == "local_response_norm":
            return ref.local_response_norm_backward(g, x, layer.size, layer.alpha,
                                                    layer.beta, layer.k), None, None
        return None


def _bn(cls, ranks, shapes, boundary, large, bench=()):
    return Entry(cls, lambda s, dt: cls(s[1], dtype=dt), "batch_norm", ranks, shapes,
                 boundary, large, ("train", "eval"), "channel", bench)


def _in(cls, ranks, shapes, boundary, large, bench=()):
    return Entry(cls,
                 lambda s, dt: cls(s[1] if len(s) in ranks else s[0], affine=True,
                                   track_running_stats=True, dtype=dt),
                 "instance_norm", ranks, shapes, boundary, large, ("train", "eval"), "instance",
                 bench)


def _sw(cls, ranks, shapes, boundary, large, bench=()):
    return Entry(cls, lambda s, dt: cls(s[1], dtype=dt), "switchable_norm", ranks,
                 shapes, boundary, large, ("train", "eval"), "mixed", bench,
                 params=("weight", "bias", "mean_weight", "var_weight"))


_n1 = ONE_PASS // 4         # float32 elements of a one-pass slice

CATALOGUE = (
    _bn(BatchNorm1d, (2, 3), ((6, 5), (4, 5, 7)),
        ((97, 3, 1000), (9, 3, 4095), (9, 3, 4096), (9, 3, 4097), (5, 3, 8193), (1001, 70),
         (3, 300, 257), (257, 600), (33, 1100, 7), (300, 40, 31), (300, 40, 32)),
        (8, 64, 4096)),
    _bn(BatchNorm2d, (4,), ((2, 3, 5, 7),),
        ((3, 5, 101, 47), (1, 3, 512, 512), (300, 40, 31, 1)),
        (8, 64, 64, 64),
        bench=(((32, 64, 56, 56), ("train", "eval", "eval-out", "backward")),
               ((1, 64, 112, 112), ("eval", "eval-out")),
               ((1, 16, 8, 8), ("eval", "eval-out")))),
    _bn(BatchNorm3d, (5,), ((2, 3, 2, 3, 4),), ((2, 4, 9, 31, 33),), (4, 16, 16, 64, 64)),
    _in(InstanceNorm1d, (3,), ((3, 4, 9), (4, 9)),
        ((9, 3, 4095), (9, 3, 4097), (1, 3, _n1 + 1), (3, 300, 257)), (8, 64, 4096)),
    _in(InstanceNorm2d, (4,), ((2, 3, 5, 7), (3, 5, 7)), ((6, 5, 63, 65), (1, 2, 363, 363)),
        (8, 256, 32, 32), bench=(((8, 256, 64, 64), ("forward", "backward")),)),
    _in(InstanceNorm3d, (5,), ((2, 3, 2, 3, 4), (3, 2, 3, 4)), ((4, 3, 9, 31, 33),),
        (4, 16, 16, 64, 64)),
    Entry(GroupNorm, lambda s, dt: GroupNorm(groups_for(s[1]), s[1], dtype=dt), "group_norm",
          tuple(range(2, 64)), ((3, 4), (2, 6, 5), (2, 4, 3, 5), (2, 4, 2, 3, 4)),
          ((5, 8, 4097), (12, 6, 31, 33), (1, 2, _n1 // 2 + 3), (9, 32, 257)),
          (16, 256, 32, 32), ("train",), "group",
          bench=(((16, 256, 32, 32), ("forward", "backward")),)),
    Entry(LayerNorm, lambda s, dt: LayerNorm(s[-1:], dtype=dt), "layer_norm",
          tuple(range(1, 64)), ((7,), (3, 7), (2, 3, 96)),
          ((63, 2049), (65, 1023), (129, 4097), (3, _n1 + 7)), (8192, 256), ("train",), "row",
          bench=(((8192, 768), ("forward", "backward")),)),
    Entry(RMSNorm, lambda s, dt: RMSNorm(s[-1:], dtype=dt), "rms_norm", tuple(range(1, 64)),
          ((7,), (3, 7), (2, 3, 96)), ((127, 769), (2, 3, 4097 * 3), (3, _n1 + 7)),
          (8192, 256), ("train",), "row", params=("weight",),
          bench=(((8192, 4096), ("forward", "backward")),)),
    Entry(LocalResponseNorm, lambda s, dt: LocalResponseNorm(3, alpha=0.5, k=0.5),
          "local_response_norm", tuple(range(3, 65)), ((2, 5, 7), (2, 6, 3, 5)),
          ((3, 97, 331), (2, 7, 33, 333)), (8, 64, 64, 64), ("train",), "window", params=(),
          bench=(((32, 96, 55, 55), ("forward", "backward")),)),
    _sw(SwitchableNorm1d, (3,), ((3, 4, 9),), ((9, 8, 4097),), (8, 64, 4096)),
    _sw(SwitchableNorm2d, (4,), ((2, 3, 5, 7),), ((4, 6, 63, 65),), (8, 64, 64, 64),
        bench=(((8, 64, 56, 56), ("train", "eval", "backward")),)),
    _sw(SwitchableNorm3d, (5,), ((2, 3, 2, 3, 4),), ((2, 4, 9, 31, 33),), (4, 16, 16, 64, 64)),
    Entry(SyncBatchNorm, lambda s, dt: SyncBatchNorm(s[1], dtype=dt, comm=LocalComm()),
          "batch_norm", (2, 3, 4, 5), ((6, 5), (2, 3, 5, 7)), ((9, 3, 4097), (3, 5, 101, 47)),
          (8, 64, 64, 64), ("train", "eval"), "channel"),
)

# fastnorm.functional's public names that are no layer's pair: the moments
# API (tests/test_moments.py)
OTHER_FUNCTIONS = ("moments", "merge_moments", "reduce_moments", "Moments")

BY_NAME = {e.name: e for e in CATALOGUE}


def storage_dtypes():
    """Every storage dtype: float32, float64, float16, and bfloat16 when
    ml_dtypes is installed."""
    out = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)]
    try:
        import ml_dtypes
    except ImportError:
        return out
    return out + [np.dtype(ml_dtypes.bfloat16)]


def cases(which="shapes", dtypes=(np.float32, np.float64)):
    """(entry, shape, dtype) for every entry, one of its shape lists, dtypes."""
    return [(e, s, dt) for e in CATALOGUE for s in getattr(e, which) for dt in dtypes]


def case_id(entry, shape, dtype=None):
    return f"{entry.name}-{'x'.join(map(str, shape))}" + (
        f"-{np.dtype(dtype).name}" if dtype is not None else "")


def nbytes(shape, dtype=np.float32):
    return math.prod(shape) * np.dtype(dtype).itemsize
