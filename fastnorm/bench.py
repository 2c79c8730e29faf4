"""fastnorm-bench: time fastnorm's layers against peer implementations.

Usage: ``fastnorm-bench [options]`` or ``python -m fastnorm.bench [options]``.

Methodology
-----------
* Every row (case, mode, thread count) builds one zero-argument callable per
  implementation: fastnorm itself and each peer (``numpy``: a plain vectorised
  NumPy version of the same operation, written here, float math in the input
  dtype, single-threaded; ``torch``: the matching ``torch.nn`` module on
  ``torch.from_numpy(x)``).  Each callable's result is checked against
  fastnorm's once (a mismatch is reported on stderr, not fatal).
* Each callable is warmed up a few times; the warm-up also sizes a batch of
  calls lasting about a tenth of ``--min-time``.  One *sample* runs batches
  until at least ``--min-time`` seconds have passed; its per-call time is
  elapsed / calls.  The garbage collector is off while sampling.
* Samples are interleaved: sample 1 of fastnorm, sample 1 of each peer,
  sample 2 of fastnorm, ... so that drift of the machine (clock, other load)
  hits every implementation alike.  A row reports the median of ``--repeat``
  samples; ``--json`` keeps every sample.
* Forward calls are timed as a user writes them, ``layer(x)``, which allocates
  its output; mode ``eval-out`` times ``layer(x, out=y)`` into a preallocated
  array (peers that cannot write into ``out`` show "-").  ``backward`` times
  ``layer.backward(g)`` after one training forward: the input gradient and,
  for a layer with weight and bias, their gradients (torch: ``autograd.grad``
  of the input and of the module's parameters on a retained graph, the same
  work: asked for the input alone, torch skips the parameter gradients).
* Threads: OpenMP threads for fastnorm via threadpoolctl, and
  ``torch.set_num_threads`` for torch, both set to the row's count.
* GB/s is fastnorm's effective bandwidth under a byte model counting passes
  over x (S = x.nbytes): eval forward 2S (read x, write y), train forward 3S
  (read x for the statistics, read it again to normalise, write y), backward
  5S (read x and dy for the sums, read x and dy again and write dx).
* The machine's memory bandwidth is measured first, at each thread count: the
  best of a few copies of ``--copy-mib`` MiB (one memcpy per OpenMP thread,
  large enough for streaming stores), counting bytes read plus written.
  Column ``floor`` is the fraction of that bandwidth a row reaches: the byte
  model's bytes / bandwidth (the time any implementation needs to move them)
  divided by fastnorm's median.  Above 1: the data stayed in cache.
* The layers are the catalogue's (fastnorm/_catalogue.py), with its default
  shapes.  A layer with no peer written here (SwitchableNorm, SyncBatchNorm
  on one process) is timed against its float64 NumPy twin
  (fastnorm/_reference.py, the data upcast) as the ``numpy`` peer.
* ``--dtype bfloat16`` or ``float16``: the data is 16-bit and every layer's
  parameters float32 (PyTorch's mixed type); ``torch`` runs the same 16-bit
  tensors, ``numpy`` computes on the float32 upcast (conversion not timed),
  ``onnxruntime`` runs float16 models only, and peer ``float32`` is
  fastnorm itself on the float32 upcast: the speed-up of 16-bit storage.
* ``onnxruntime`` (when it and the ``onnx`` package are installed) runs a
  one-node ONNX model of the layer (inference only: forward and eval rows)
  with ``intra_op_num_threads`` set to the row's thread count.
"""
import argparse
import gc
import json
import os
import platform
import sys
import textwrap
import time
from functools import partial
from importlib import metadata

import numpy as np
import threadpoolctl

import fastnorm
from fastnorm._bench_models import MODELS
from fastnorm._catalogue import CATALOGUE
from fastnorm._dtypes import as_dtype
from fastnorm._native import kernels as _kernels

PEERS = ("numpy", "torch", "onnxruntime", "float32")
BYTES_PER_S = {"train": 3, "eval": 2, "eval-out": 2, "backward": 5}
ALL_MODES = ("train", "eval", "eval-out", "forward", "backward")
BYTE_MODEL = ("GB/s: bytes fastnorm moves per call / its median, with S = x.nbytes: "
              "eval, eval-out and LocalResponseNorm forward 2S (read x, write y); train "
              "and other forward 3S (read x for the statistics, read x to normalise, "
              "write y); backward 5S (read x and dy for the sums, read them again and "
              "write dx); LocalResponseNorm backward 3S (read x and dy, write dx)")
WARMUP = 3
NOISY = 0.10


# --- Cases: one entry of LAYERS per layer; each builds its callables ---

class Bench:
    """A layer's benchmark: `_<impl>(mode, s, threads)` builds the callable of
    one implementation (None: it has no such mode)."""

    def build(self, impl, mode, s, threads):
        """A zero-argument callable running `mode` with `impl` at `threads`
        threads (fastnorm's and torch's are set around it by run_row), or None."""
        return getattr(self, "_" + impl)(mode, s, threads)

    def _float32(self, mode, s, threads):
        """fastnorm itself in float32 on the same values, for 16-bit rows (the
        speed-up of 16-bit storage): None for other dtypes."""
        if s["x"].dtype.itemsize != 2:
            return None
        if "float32" not in s:
            # the same parameters (float32 already: mixed) and values
            import copy
            s32 = {k: (copy.deepcopy(v) if k == "layer" else v) for k, v in s.items()
                   if k != "float32"}
            s32["x"], s32["g"] = s["x"].astype(np.float32), s["g"].astype(np.float32)
            s32["xn"], s32["gn"] = s32["x"], s32["g"]
            s["float32"] = s32
        return self._fastnorm(mode, s["float32"], threads)


def _torch_callable(layer, x, g, mode):
    """torch: the forward without autograd, or the gradients of a retained
    graph (backward): the input's and the parameters', as fastnorm's
    layer.backward computes both."""
    import torch
    x = _to_torch(x)
    if mode == "backward":
        x.requires_grad_(True)
        y = layer(x)
        wrt = (x,) + tuple(p for p in layer.parameters() if p.requires_grad)
        return partial(torch.autograd.grad, y, wrt, _to_torch(g), retain_graph=True)

    def forward():
        with torch.no_grad():
            return layer(x)
    return forward


def _rand(rng, shape, dtype):
    """Standard normal data of `dtype` (16-bit: drawn in float32, rounded)."""
    dt = np.dtype(dtype)
    if dt.itemsize == 2:
        return rng.standard_normal(shape, dtype=np.float32).astype(dt)
    return rng.standard_normal(shape, dtype=dt)


def _param_dtype(dtype):
    """Parameters of a benchmarked layer: float32 for 16-bit data (mixed, as
    PyTorch's CPU norms), else the data's dtype."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize == 2 else np.dtype(dtype)


def _np(a):
    """The array NumPy peers compute on: 16-bit data upcast to float32."""
    return a.astype(np.float32) if a.dtype.itemsize == 2 else a


def _to_torch(a):
    """A torch tensor of a's values and dtype (bfloat16 through its bits)."""
    import torch
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


class BatchNormBench(Bench):
    """Benchmarks of fastnorm.<title> (batch statistics over all dims but 1)."""

    modes = ("train", "eval", "eval-out", "backward")
    bytes_model = BYTES_PER_S

    def __init__(self, title, rank, defaults):
        self.title, self.rank = title, rank
        self.defaults = defaults            # ((shape, modes), ...)

    def accepts(self, shape):
        return len(shape) == self.rank

    def setup(self, shape, dtype, rng):
        """Inputs and per-channel state shared by all implementations."""
        C = shape[1]
        pdt = _param_dtype(dtype)
        s = {"x": _rand(rng, shape, dtype), "g": _rand(rng, shape, dtype),
             "w": (1 + 0.1 * rng.standard_normal(C)).astype(pdt),
             "b": (0.1 * rng.standard_normal(C)).astype(pdt),
             "rm": (0.1 * rng.standard_normal(C)).astype(pdt),
             "rv": rng.uniform(0.5, 1.5, C).astype(pdt),
             "eps": 1e-5, "momentum": 0.1}
        s["xn"], s["gn"] = _np(s["x"]), _np(s["g"])
        return s

    def _bcast(self, v):
        return v.reshape((1, -1) + (1,) * (self.rank - 2))

    def _fastnorm(self, mode, s, threads):
        x = s["x"]
        layer = getattr(fastnorm, self.title)(x.shape[1], eps=s["eps"],
                                              momentum=s["momentum"], dtype=s["w"].dtype)
        layer.weight[...], layer.bias[...] = s["w"], s["b"]
        layer.running_mean[...], layer.running_var[...] = s["rm"], s["rv"]
        if mode == "backward":
            layer.train()
            layer(x)
            return partial(layer.backward, s["g"])
        layer.train(mode == "train")
        if mode == "eval-out":
            return partial(layer, x, out=np.empty_like(x))
        return partial(layer, x)

    def _numpy(self, mode, s, threads):
        x, w, b, eps, m = s["xn"], s["w"], s["b"], s["eps"], s["momentum"]
        axes = tuple(i for i in range(x.ndim) if i != 1)
        n = x.size // x.shape[1]
        bc = self._bcast
        if mode == "train":
            rm, rv = s["rm"].copy(), s["rv"].copy()

            def train():
                mean = x.mean(axis=axes)
                var = x.var(axis=axes)
                scale = w / np.sqrt(var + eps)
                y = x * bc(scale) + bc(b - mean * scale)
                rm[...] = (1 - m) * rm + m * mean
                rv[...] = (1 - m) * rv + m * var * (n / max(n - 1, 1))
                return y
            return train
        if mode in ("eval", "eval-out"):
            out = np.empty_like(x) if mode == "eval-out" else None
            rm, rv = s["rm"], s["rv"]

            def evaluate():
                scale = w / np.sqrt(rv + eps)
                shift = b - rm * scale
                if out is None:
                    return x * bc(scale) + bc(shift)
                np.multiply(x, bc(scale), out=out)
                return np.add(out, bc(shift), out=out)
            return evaluate
        g = s["gn"]
        mean = bc(x.mean(axis=axes))                  # saved by the forward
        invstd = 1 / np.sqrt(bc(x.var(axis=axes)) + eps)

        def backward():
            xhat = (x - mean) * invstd
            gb = g.sum(axis=axes, keepdims=True)
            gw = (g * xhat).sum(axis=axes, keepdims=True)
            dx = (bc(w) * invstd / n) * (n * g - gb - xhat * gw)
            return dx, gw.ravel(), gb.ravel()
        return backward

    def _onnxruntime(self, mode, s, threads):
        if mode != "eval":
            return None                     # inference only, no out=
        return _ort_callable("BatchNormalization", s["x"],
                             {"w": s["w"], "b": s["b"], "rm": s["rm"], "rv": s["rv"]},
                             {"epsilon": s["eps"]}, 15, threads)

    def _torch(self, mode, s, threads):
        import torch
        if mode == "eval-out":
            return None                     # torch.nn modules have no out=
        x = s["x"]
        layer = getattr(torch.nn, self.title)(x.shape[1], eps=s["eps"],
                                              momentum=s["momentum"],
                                              dtype=getattr(torch, s["w"].dtype.name))
        with torch.no_grad():
            for p, k in ((layer.weight, "w"), (layer.bias, "b"),
                         (layer.running_mean, "rm"), (layer.running_var, "rv")):
                p.copy_(torch.from_numpy(s[k]))
        layer.train(mode != "eval")
        return _torch_callable(layer, s["x"], s["g"], mode)


def _ort_callable(op, x, inits, attrs, opset, threads):
    """A callable running a one-node ONNX model op(x, *inits) in ONNX Runtime
    at `threads` intra-op threads (no spinning between calls), or None when
    this ONNX Runtime cannot run it."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    if x.dtype.name == "bfloat16":
        return None                     # no bfloat16 kernels of these ops on CPU
    if x.dtype.itemsize == 2:           # float16 models: float16 initializers
        inits = {k: np.asarray(v).astype(x.dtype) for k, v in inits.items()}
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    node = helper.make_node(op, ["x"] + list(inits), ["y"], **attrs)
    graph = helper.make_graph(
        [node], "fastnorm_bench", [helper.make_tensor_value_info("x", elem, x.shape)],
        [helper.make_tensor_value_info("y", elem, x.shape)],
        [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3           # errors only
    for ir in (model.ir_version, 10, 9):
        model.ir_version = ir
        try:
            sess = ort.InferenceSession(model.SerializeToString(), so,
                                        providers=["CPUExecutionProvider"])
            break
        except Exception as e:  # noqa: BLE001 - any ORT failure: peer not run
            err = e
    else:
        print(f"note: onnxruntime cannot run {op} (opset {opset}, {x.dtype}): "
              f"{str(err).splitlines()[0][:120]}", file=sys.stderr)
        return None
    feed = {"x": x}
    return lambda: sess.run(None, feed)[0]


class RowsBench(Bench):
    """Layers that normalise rows of a 2-D view (samples x groups, or rows x
    trailing dims) and behave alike in training and eval: modes `forward`
    and `backward`.  `view(x)` gives the (R, M) rows the statistics run over
    and `cols` maps the per-channel/per-element weight onto them."""

    modes = ("forward", "backward")

    def __init__(self, title, accepts, defaults, make, torch_make, view, weight_of,
                 rms=False, bytes_model=(3, 5), ort=None):
        self.ort = ort          # layer -> (ONNX op, initializers, attributes, opset)
        self.title = title
        self.accepts = accepts
        self.defaults = defaults
        self._make, self._torch_make = make, torch_make
        self._view, self._weight_of = view, weight_of
        self.rms = rms
        self.bytes_model = dict(zip(self.modes, bytes_model))
        self.rank = None

    def setup(self, shape, dtype, rng):
        layer = self._make(shape, _param_dtype(dtype))
        s = {"x": _rand(rng, shape, dtype), "g": _rand(rng, shape, dtype), "layer": layer}
        s["xn"], s["gn"] = _np(s["x"]), _np(s["g"])
        if getattr(layer, "weight", None) is not None:
            layer.weight[...] = 1 + 0.1 * rng.standard_normal(layer.weight.shape)
        if getattr(layer, "bias", None) is not None:
            layer.bias[...] = 0.1 * rng.standard_normal(layer.bias.shape)
        return s

    def _fastnorm(self, mode, s, threads):
        layer, x = s["layer"], s["x"]
        if mode == "backward":
            layer(x)
            return partial(layer.backward, s["g"])
        return partial(layer, x)

    def _numpy(self, mode, s, threads):
        layer, x, g = s["layer"], s["xn"], s["gn"]
        eps = layer._eps("bench", s["x"].dtype) if hasattr(layer, "_eps") else layer.eps
        w = getattr(layer, "weight", None)
        b = getattr(layer, "bias", None)
        wv = self._weight_of(x, w) if w is not None else None
        bv = self._weight_of(x, b) if b is not None else None
        rows = self._view(x)
        m = rows.shape[1]

        def stats(r):
            if self.rms:
                return 0, 1 / np.sqrt((r * r).mean(axis=1, keepdims=True) + eps)
            mean = r.mean(axis=1, keepdims=True)
            return mean, 1 / np.sqrt(r.var(axis=1, keepdims=True) + eps)

        if mode == "forward":
            def forward():
                mean, inv = stats(self._view(x))
                y = ((self._view(x) - mean) * inv).reshape(x.shape)
                if wv is not None:
                    y = y * wv
                if bv is not None:
                    y = y + bv
                return y
            return forward
        mean, inv = stats(rows)                        # saved by the forward

        def backward():
            xhat = (rows - mean) * inv
            gw = (g if wv is None else g * wv).reshape(rows.shape)
            if self.rms:
                dx = inv * gw - xhat * (gw * xhat).mean(axis=1, keepdims=True) * inv
            else:
                dx = inv * (gw - gw.mean(axis=1, keepdims=True)
                            - xhat * (gw * xhat).mean(axis=1, keepdims=True))
            return dx.reshape(x.shape), (g * xhat.reshape(x.shape))
        return backward

    def _torch(self, mode, s, threads):
        import torch
        layer = self._torch_make(s["layer"])
        with torch.no_grad():
            for k in ("weight", "bias"):
                p = getattr(layer, k, None)
                if p is not None:
                    p.copy_(torch.from_numpy(np.asarray(getattr(s["layer"], k))))
        return _torch_callable(layer, s["x"], s["g"], mode)

    def _onnxruntime(self, mode, s, threads):
        if mode != "forward" or self.ort is None:
            return None
        op, inits, attrs, opset = self.ort(s["layer"])
        return _ort_callable(op, s["x"], inits, attrs, opset, threads)


class LRNBench(RowsBench):
    """LocalResponseNorm: a window over channels, no statistics."""

    def _numpy(self, mode, s, threads):
        if mode != "forward":
            return None
        layer, x = s["layer"], s["xn"]
        size, alpha, beta, k = layer.size, layer.alpha, layer.beta, layer.k
        C = x.shape[1]

        def forward():
            sq = x * x
            cs = np.cumsum(np.concatenate([np.zeros_like(sq[:, :1]), sq], axis=1), axis=1)
            lo = np.clip(np.arange(C) - size // 2, 0, C)
            hi = np.clip(np.arange(C) + (size - 1) // 2 + 1, 0, C)
            win = cs[:, hi] - cs[:, lo]
            return x * (k + alpha / size * win) ** -beta
        return forward


def _torch_like(name, args, kw):
    """A maker of torch.nn.<name>(*args(layer), **kw(layer)) for a fastnorm layer."""
    def make(layer):
        import torch
        return getattr(torch.nn, name)(*args(layer), **kw(layer))
    return make


def _channels(x, v):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _trailing(x, v):
    return v


class TwinBench(Bench):
    """A catalogue layer with no peers of its own here (SwitchableNorm,
    SyncBatchNorm on one process): fastnorm, and as the numpy peer the
    layer's float64 twin from fastnorm/_reference.py (the data upcast;
    forward rows only)."""

    bytes_model = {"train": 3, "eval": 2, "forward": 3, "backward": 5}

    def __init__(self, entry):
        self.entry, self.title, self.rank = entry, entry.name, None
        self.modes = ("train", "eval", "backward") if entry.stateful else ("forward",
                                                                          "backward")
        self.defaults = entry.bench

    def accepts(self, shape):
        return len(shape) in self.entry.ranks and len(shape) >= 2

    def setup(self, shape, dtype, rng):
        return {"x": _rand(rng, shape, dtype), "g": _rand(rng, shape, dtype),
                "layer": self.entry.layer(shape, _param_dtype(dtype), rng)}

    def _fastnorm(self, mode, s, threads):
        layer, x = s["layer"], s["x"]
        layer.train(mode != "eval")
        if mode == "backward":
            layer(x)
            return partial(layer.backward, s["g"])
        return partial(layer, x)

    def _numpy(self, mode, s, threads):
        if mode == "backward":
            return None
        import copy
        layer = copy.deepcopy(s["layer"])       # the twin reads its arrays as they are
        return partial(lambda: self.entry.reference(layer, s["x"], mode != "eval")[0])

    def _torch(self, mode, s, threads):
        return None

    def _onnxruntime(self, mode, s, threads):
        return None


# Peers of the layers that have them; the default shapes come from the
# catalogue (Entry.bench), and every other catalogue layer is a TwinBench.
_SPECS = {
    "BatchNorm1d": BatchNormBench("BatchNorm1d", 3, ()),
    "BatchNorm2d": BatchNormBench("BatchNorm2d", 4, ()),
    "BatchNorm3d": BatchNormBench("BatchNorm3d", 5, ()),
    "InstanceNorm2d": RowsBench(
        "InstanceNorm2d", lambda s: len(s) == 4, (),
        lambda s, dt: fastnorm.InstanceNorm2d(s[1], affine=True, dtype=dt),
        _torch_like("InstanceNorm2d", lambda l: (l.num_features,),
                    lambda l: dict(affine=True, dtype=_f64() if l.dtype.name == "float64" else None)),
        lambda x: x.reshape(x.shape[0] * x.shape[1], -1), _channels,
        ort=lambda l: ("InstanceNormalization", {"w": l.weight, "b": l.bias},
                       {"epsilon": l.eps}, 17)),
    "LayerNorm": RowsBench(
        "LayerNorm", lambda s: len(s) >= 2, (),
        lambda s, dt: fastnorm.LayerNorm(s[-1], dtype=dt),
        _torch_like("LayerNorm", lambda l: (l.normalized_shape,),
                    lambda l: dict(dtype=_f64() if l.dtype.name == "float64" else None)),
        lambda x: x.reshape(-1, x.shape[-1]), _trailing,
        ort=lambda l: ("LayerNormalization", {"w": l.weight, "b": l.bias},
                       {"axis": -len(l.normalized_shape), "epsilon": l.eps}, 17)),
    "GroupNorm": RowsBench(
        "GroupNorm", lambda s: len(s) >= 2 and s[1] % 32 == 0, (),
        lambda s, dt: fastnorm.GroupNorm(32, s[1], dtype=dt),
        _torch_like("GroupNorm", lambda l: (l.num_groups, l.num_channels),
                    lambda l: dict(dtype=_f64() if l.dtype.name == "float64" else None)),
        lambda x: x.reshape(x.shape[0] * 32, -1), _channels,
        ort=lambda l: ("GroupNormalization", {"w": l.weight, "b": l.bias},
                       {"num_groups": l.num_groups, "epsilon": l.eps}, 21)),
    "LocalResponseNorm": LRNBench(
        "LocalResponseNorm", lambda s: len(s) >= 3, (),
        lambda s, dt: fastnorm.LocalResponseNorm(5),
        _torch_like("LocalResponseNorm", lambda l: (l.size,), lambda l: {}),
        None, None, bytes_model=(2, 3),
        ort=lambda l: ("LRN", {}, {"size": l.size, "alpha": l.alpha, "beta": l.beta,
                                   "bias": l.k}, 13)),
    "RMSNorm": RowsBench(
        "RMSNorm", lambda s: len(s) >= 2, (),
        lambda s, dt: fastnorm.RMSNorm(s[-1], dtype=dt),
        _torch_like("RMSNorm", lambda l: (l.normalized_shape,),
                    lambda l: dict(dtype=_f64() if l.dtype.name == "float64" else None)),
        lambda x: x.reshape(-1, x.shape[-1]), _trailing, rms=True,
        ort=lambda l: ("RMSNormalization", {"w": l.weight},
                       {"axis": -len(l.normalized_shape), "epsilon": l._eps("bench")}, 23)),
}


def _layers():
    """One spec per catalogue layer, keyed by its lowercase name, in catalogue
    order; defaults from the catalogue."""
    out = {}
    for e in CATALOGUE:
        spec = _SPECS.get(e.name) or TwinBench(e)
        spec.defaults = e.bench
        out[e.name.lower()] = spec
    return out
LAYERS = _layers()


def _f64():
    import torch
    return torch.float64


# --- Environment ---

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _openmp_libs():
    keys = ("internal_api", "prefix", "filepath", "version", "num_threads")
    return [{k: i.get(k) for k in keys}
            for i in threadpoolctl.threadpool_info() if i.get("user_api") == "openmp"]


def _torch_status(compare):
    """(torch module or None, version or None, why it is not used or None)."""
    try:
        ver = metadata.version("torch")
    except metadata.PackageNotFoundError:
        ver = None
    if "torch" not in compare:
        return None, ver, "not compared"
    try:
        import torch
    except ImportError as e:
        return None, ver, "not installed" if ver is None else f"import failed: {e}"
    return torch, torch.__version__, None


def _ort_status(compare):
    """(onnxruntime version or None, why it is not used or None)."""
    try:
        ver = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        ver = None
    if "onnxruntime" not in compare:
        return ver, "not compared"
    if ver is None:
        return None, "not installed"
    try:
        import onnx  # noqa: F401 - builds the one-node models
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return ver, f"import failed: {e} (pip install onnx onnxruntime)"
    return ver, None


def measure_bandwidth(threads, mib, repeat=5):
    """{threads: bytes/s} of the best of `repeat` copies of `mib` MiB (read +
    written bytes), each thread memcpy-ing one contiguous part."""
    n = int(mib) << 20
    src = np.ones(n, np.uint8)          # touched: no page faults while timing
    dst = np.ones(n, np.uint8)
    bw = {}
    for t in threads:
        with threadpoolctl.threadpool_limits(limits=t, user_api="openmp"):
            _kernels.stream_copy(src, dst)
            best = min(_timed(_kernels.stream_copy, src, dst) for _ in range(repeat))
        bw[t] = 2 * n / best
    return bw


def _timed(fn, *a):
    t0 = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t0


def environment(compare):
    """Versions, CPU and threading facts; imports torch only if compared."""
    openmp = _openmp_libs()      # before torch: these are the ones fastnorm loaded
    torch, torch_version, torch_skip = _torch_status(compare)
    ort_version, ort_skip = _ort_status(compare)
    seen = {lib["filepath"] for lib in openmp}
    env = {
        "fastnorm": fastnorm.__version__,
        "numpy": np.__version__,
        "torch": torch_version,
        "torch_skipped": torch_skip,
        "onnxruntime": ort_version,
        "onnxruntime_skipped": ort_skip,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "fastnorm_openmp_build": bool(_kernels.openmp_enabled()),
        "fastnorm_max_threads": int(_kernels.max_threads()),
        "fastnorm_isa": _kernels.isa(),
        "openmp": openmp,
        "openmp_other": [lib for lib in _openmp_libs() if lib["filepath"] not in seen],
        "torch_threads": torch.get_num_threads() if torch else None,
    }
    return env, torch


def print_header(env, args, peers, out):
    def line(k, v):
        print(f"  {k:<11} {v}", file=out)
    print("fastnorm-bench", file=out)
    omp = "yes" if env["fastnorm_openmp_build"] else "NO (serial build)"
    line("fastnorm", f"{env['fastnorm']} (built with OpenMP: {omp}; "
                     f"max threads {env['fastnorm_max_threads']}; "
                     f"kernels {env['fastnorm_isa']})")
    line("numpy", env["numpy"])
    for peer in ("torch", "onnxruntime"):
        skip = env[peer + "_skipped"]
        line(peer, skip if env[peer] is None else
             env[peer] + (f" ({skip})" if skip else ""))
    line("python", f"{env['python']} ({env['platform']})")
    line("cpu", f"{env['cpu']}; {env['logical_cores']} logical cores")
    for lib in env["openmp"] or [None]:
        line("openmp", "none loaded" if lib is None else
             f"{lib['internal_api']} ({lib['prefix']}) {lib['filepath']}, "
             f"version {lib['version'] or 'n/a'}")
    for lib in env["openmp_other"]:
        line("openmp+", f"also loaded by torch: {lib['prefix']} {lib['filepath']}")
    skipped = [f"{p} ({env[p + '_skipped']}, skipped)" for p in ("torch", "onnxruntime")
               if p in args.compare and p not in peers]
    line("compare", ", ".join(list(peers) + skipped) or "none")
    line("settings", f"dtype {args.dtype}, threads {','.join(map(str, args.threads))}, "
                     f"repeat {args.repeat}, min-time {args.min_time:g} s")
    if env.get("bandwidth"):
        line("memory", "copy bandwidth " + ", ".join(
            f"{b / 1e9:.1f} GB/s at {t} thread{'s' if t > 1 else ''}"
            for t, b in env["bandwidth"].items()) + f" ({args.copy_mib} MiB memcpy)")
    print(file=out)


# --- Timing ---

def calibrate(fn, min_time):
    """Warm fn up; return the calls per batch (a batch lasts ~min_time / 10)."""
    best = float("inf")
    for _ in range(WARMUP):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return max(1, int(min_time / 10 / max(best, 1e-9)))


def sample(fn, batch, min_time):
    """One sample: run batches until min_time has passed; (s per call, calls)."""
    calls = 0
    t0 = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / calls, calls


def measure(fns, repeat, min_time):
    """Interleaved samples of each callable in `fns` (dict name -> fn)."""
    batches = {k: calibrate(f, min_time) for k, f in fns.items()}
    res = {k: {"samples_s": [], "calls": []} for k in fns}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            for k, f in fns.items():
                t, calls = sample(f, batches[k], min_time)
                res[k]["samples_s"].append(t)
                res[k]["calls"].append(calls)
    finally:
        if gc_was:
            gc.enable()
    for r in res.values():
        q25, med, q75 = np.percentile(r["samples_s"], [25, 50, 75])
        r["median_s"], r["iqr_s"] = float(med), float(q75 - q25)
    return res


def _result_array(r):
    """A result as a float64 array (torch tensors, 16-bit arrays)."""
    r = r[0] if isinstance(r, tuple) else r
    if hasattr(r, "detach"):
        r = r.detach().float() if str(r.dtype) == "torch.bfloat16" else r.detach()
        r = r.numpy()
    return np.asarray(r).astype(np.float64)


# tolerance of the agreement check, by data dtype
AGREE = {"float32": 1e-3, "float64": 1e-9, "float16": 1e-2, "bfloat16": 5e-2}


def check_agreement(fns, dtype):
    """Max abs difference of each peer's result from fastnorm's (one call each)."""
    ref = _result_array(fns["fastnorm"]())
    tol = AGREE[np.dtype(dtype).name]
    diffs = {}
    for k, f in fns.items():
        if k != "fastnorm":
            got = _result_array(f())
            diffs[k] = float(np.max(np.abs(got - ref)))
            if not np.allclose(got, ref, rtol=tol, atol=tol):
                print(f"warning: {k} differs from fastnorm (max abs diff "
                      f"{diffs[k]:.3g})", file=sys.stderr)
    return diffs


# --- CLI ---

def _csv(s):
    return list(dict.fromkeys(p.strip().lower() for p in s.split(",") if p.strip()))


def _shape(s):
    try:
        dims = tuple(int(d) for d in s.lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"bad shape {s!r}: expected e.g. 32x64x56x56")
    return dims


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="fastnorm-bench",
        description="Time fastnorm layers against NumPy, PyTorch and ONNX Runtime "
                    "peers (interleaved samples, medians), and against the machine's "
                    "memory bandwidth.",
        epilog=BYTE_MODEL + ". Speed-up vs PEER = PEER median / fastnorm median "
               "(>1: fastnorm is faster).")
    p.add_argument("--layers", type=_csv, default=list(LAYERS),
                   help=f"comma list of layers (known: {', '.join(LAYERS)}; default all)")
    p.add_argument("--shapes", type=lambda s: [_shape(x) for x in _csv(s)],
                   help="comma list of shapes like 32x64x56x56; replaces the "
                        "layers' default shapes")
    p.add_argument("--dtype", choices=("float32", "float64", "float16", "bfloat16"),
                   default="float32",
                   help="dtype of the data (default float32); 16-bit data runs with float32 "
                        "parameters (mixed, as PyTorch's CPU norms), its NumPy peer on the "
                        "float32 upcast, ONNX Runtime in float16 only")
    p.add_argument("--threads", type=_csv,
                   help="comma list of thread counts (default: OpenMP max threads, "
                        f"here {_kernels.max_threads()})")
    p.add_argument("--modes", type=_csv,
                   help="comma list of train, eval, backward (eval also times "
                        "eval-out, which may be named alone); default: all the case defines")
    p.add_argument("--compare", type=_csv, default=list(PEERS),
                   help="comma list of peers from numpy, torch, onnxruntime and float32 "
                        "(fastnorm on the float32 upcast, 16-bit --dtype only) (default: "
                        "all); a peer not installed is named in the header and skipped")
    p.add_argument("--repeat", type=int, default=15, help="samples per row (default 15)")
    p.add_argument("--min-time", type=float, default=0.01,
                   help="seconds a sample loops the call for at least (default 0.01)")
    p.add_argument("--copy-mib", type=int, default=512,
                   help="MiB per copy when measuring the memory bandwidth at start "
                        "(default 512; 0 skips it and the floor column)")
    p.add_argument("--json", metavar="FILE", help="write raw samples and environment")
    p.add_argument("--plot", metavar="FILE.png",
                   help="bar charts of speed-ups and floor fractions (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--models", nargs="?", const="all", metavar="LIST",
                   help="time the norm layers of published models end to end instead "
                        f"(eval; known: {', '.join(MODELS)}; no LIST: all) against torch "
                        "and onnxruntime")
    a = p.parse_args(argv)
    if a.models is not None:
        a.models = list(MODELS) if a.models == "all" else _csv(a.models)
        bad = [m for m in a.models if m not in MODELS]
        if bad:
            p.error(f"--models: unknown {', '.join(bad)} (choose from {', '.join(MODELS)})")
    for name, known in (("layers", LAYERS), ("compare", PEERS),
                        ("modes", ALL_MODES)):
        bad = [v for v in (getattr(a, name) or []) if v not in known]
        if bad:
            p.error(f"--{name}: unknown {', '.join(bad)} (choose from {', '.join(known)})")
    try:
        a.threads = [int(t) for t in a.threads] if a.threads else [_kernels.max_threads()]
    except ValueError:
        p.error("--threads: expected a comma list of integers")
    if min(a.threads) < 1 or a.repeat < 1 or a.min_time < 0 or a.copy_mib < 0:
        p.error("--threads and --repeat must be >= 1, --min-time and --copy-mib >= 0")
    if a.modes and "eval" in a.modes and "eval-out" not in a.modes:
        a.modes.append("eval-out")
    a.cases = plan(a, p)
    return a


def plan(a, p):
    """[(spec, shape, modes)] selected by --layers, --shapes and --modes."""
    cases = []
    for name in a.layers:
        spec = LAYERS[name]
        if a.shapes:
            chosen = [(s, spec.modes) for s in a.shapes if spec.accepts(s)]
        else:
            chosen = spec.defaults
        for shape, modes in chosen:
            modes = [m for m in modes if not a.modes or m in a.modes]
            if modes:
                cases.append((spec, shape, modes))
    for s in a.shapes or []:
        if not any(LAYERS[n].accepts(s) for n in a.layers):
            p.error(f"--shapes: {'x'.join(map(str, s))} fits none of the layers "
                    f"({', '.join(LAYERS[n].title for n in a.layers)})")
    if not cases:
        p.error("nothing to run for these --layers / --shapes / --modes")
    return cases


def _ms(r):
    """Median in ms; '*' marks a wide spread (IQR over NOISY of the median)."""
    ms = r["median_s"] * 1e3
    txt = f"{ms:.1f}" if ms >= 100 else f"{ms:.2f}" if ms >= 10 else \
        f"{ms:.3f}" if ms >= 1 else f"{ms:.4f}"
    return txt + ("*" if r["iqr_s"] > NOISY * r["median_s"] else " ")


class Table:
    """Fixed-width rows, printed as they are measured."""

    def __init__(self, case_width, peers, out):
        self.cols = [("case", case_width), ("mode", 8), ("thr", 3),
                     ("fastnorm ms", 11), ("GB/s", 6), ("floor", 5)]
        for peer in peers:
            self.cols += [(f"{peer} ms", max(9, len(peer) + 4)), (f"vs {peer}", 8)]
        self.peers, self.out = peers, out
        head = self._line([c for c, _ in self.cols])
        print(head + "\n" + "-" * len(head), file=out, flush=True)

    def _line(self, vals):
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w)
                         for i, (v, (_, w)) in enumerate(zip(vals, self.cols)))

    def row(self, name, mode, nthreads, nbytes, res, bandwidth):
        fn = res["fastnorm"]
        rate = nbytes / fn["median_s"]
        vals = [name, mode, str(nthreads), _ms(fn), f"{rate / 1e9:.1f}",
                f"{rate / bandwidth:.2f}" if bandwidth else "-"]
        for peer in self.peers:
            r = res.get(peer)
            vals += [_ms(r), f"{r['median_s'] / fn['median_s']:.2f}x"] if r else ["- ", "-"]
        print(self._line(vals), file=self.out, flush=True)


def run_row(spec, s, mode, nthreads, peers, args, torch):
    """Build and time every implementation of one row at nthreads threads."""
    with threadpoolctl.threadpool_limits(limits=nthreads, user_api="openmp"):
        if torch is not None:
            torch.set_num_threads(nthreads)
        fns = {"fastnorm": spec.build("fastnorm", mode, s, nthreads)}
        for peer in peers:
            try:
                fn = spec.build(peer, mode, s, nthreads)
                if fn is not None:
                    fn()                # a peer that cannot run this case: "-"
                    fns[peer] = fn
            except Exception as e:  # noqa: BLE001 - e.g. torch: an op without bfloat16
                print(f"note: {peer} cannot run {spec.title} {mode} in {s['x'].dtype}: "
                      f"{str(e).splitlines()[0][:120]}", file=sys.stderr)
        diffs = check_agreement(fns, s["x"].dtype)
        return measure(fns, args.repeat, args.min_time), diffs


def main(argv=None):
    import warnings
    # PyTorch: "Mismatch dtype between input and weight ... not fused" for
    # 16-bit data with float32 weights, its own mixed type: not our business
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
    args = parse_args(argv)
    env, torch = environment(args.compare)
    peers = [p for p in args.compare if not (p == "torch" and torch is None)
             and not (p == "onnxruntime" and env["onnxruntime_skipped"])
             and not (p == "float32" and as_dtype(args.dtype).itemsize != 2)]
    out = sys.stdout
    progress = sys.stderr.isatty() and not args.quiet
    if args.copy_mib > 0:
        if progress:
            sys.stderr.write(f"measuring memory bandwidth ({args.copy_mib} MiB copies) ...")
            sys.stderr.flush()
        env["bandwidth"] = measure_bandwidth(args.threads, args.copy_mib)
        if progress:
            sys.stderr.write("\r\033[K")
    print_header(env, args, peers, out)
    if not env["fastnorm_openmp_build"] and max(args.threads) > 1:
        print("note: fastnorm was built without OpenMP; its rows run on one thread\n",
              file=out)

    dtype = as_dtype(args.dtype)
    if args.models is not None:
        from fastnorm import _bench_models
        records = []
        _bench_models.run(args.models, args.threads, dtype, args.repeat, args.min_time,
                          [p for p in peers if p in ("torch", "onnxruntime")], out, records)
        if args.json:
            env_json = dict(env, bandwidth={str(k): v for k, v in
                                           (env.get("bandwidth") or {}).items()})
            with open(args.json, "w") as f:
                json.dump({"environment": env_json, "models": records}, f, indent=1)
            print(f"wrote {args.json}", file=out)
        return 0
    rows = [(spec, shape, mode, t) for spec, shape, modes in args.cases
            for mode in modes for t in args.threads]
    names = [f"{spec.title} {'x'.join(map(str, shape))}" for spec, shape, _, _ in rows]
    table = Table(max(map(len, names)), peers, out)
    bandwidth = env.get("bandwidth") or {}
    torch_threads = torch.get_num_threads() if torch else None
    rng = np.random.default_rng(0)
    records, key, s = [], None, None
    try:
        for i, ((spec, shape, mode, nthreads), name) in enumerate(zip(rows, names), 1):
            if progress:
                sys.stderr.write(f"\r\033[K[{i}/{len(rows)}] {name} {mode} t={nthreads} ...")
                sys.stderr.flush()
            if key != (name, shape):      # rows of one case are adjacent: one alive
                key, s = (name, shape), None
                s = spec.setup(shape, dtype, rng)
            res, diffs = run_row(spec, s, mode, nthreads, peers, args, torch)
            if progress:
                sys.stderr.write("\r\033[K")
            nbytes = spec.bytes_model[mode] * s["x"].nbytes
            bw = bandwidth.get(nthreads)
            table.row(name, mode, nthreads, nbytes, res, bw)
            records.append({"layer": spec.title, "shape": list(shape), "dtype": dtype.name,
                            "mode": mode, "threads": nthreads, "bytes_moved": nbytes,
                            "floor_fraction": nbytes / res["fastnorm"]["median_s"] / bw
                            if bw else None,
                            "results": res, "max_abs_diff_vs_fastnorm": diffs})
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)
    print(f"\nms: median per-call time of {args.repeat} interleaved samples; '*': "
          f"samples spread widely (IQR > {NOISY:.0%} of the median)\n"
          "vs PEER: PEER median / fastnorm median (>1: fastnorm is faster)\n"
          "floor: fraction of the measured copy bandwidth at the row's thread count "
          "(above 1: in cache)\n"
          + textwrap.fill(BYTE_MODEL, 100, subsequent_indent="  "), file=out)

    if args.json:
        settings = {k: getattr(args, k) for k in
                    ("layers", "dtype", "threads", "modes", "compare", "repeat", "min_time")}
        settings["peers_run"] = peers
        settings["copy_mib"] = args.copy_mib
        env_json = dict(env, bandwidth={str(k): v for k, v in bandwidth.items()})
        with open(args.json, "w") as f:
            json.dump({"environment": env_json, "settings": settings, "rows": records},
                      f, indent=1)
        print(f"wrote {args.json}", file=out)
    if args.plot:
        plot(records, peers, args.plot, out)
    return 0


def plot(records, peers, path, out):
    """Bars of the speed-up against each peer and of the floor fraction."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed; {path} not written "
              "(pip install matplotlib)", file=sys.stderr)
        return
    labels = [f"{r['layer']} {'x'.join(map(str, r['shape']))} {r['mode']} t{r['threads']}"
              for r in records]
    ys = np.arange(len(records))
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.32 * len(records) + 1.5), sharey=True)
    h = 0.8 / max(1, len(peers))
    for j, peer in enumerate(peers):
        sp = [r["results"][peer]["median_s"] / r["results"]["fastnorm"]["median_s"]
              if peer in r["results"] else 0.0 for r in records]
        axes[0].barh(ys + j * h, sp, height=h, label=f"vs {peer}")
    axes[0].axvline(1.0, color="k", lw=0.8)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("speed-up (peer median / fastnorm median)")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].barh(ys, [r["floor_fraction"] or 0.0 for r in records], height=0.6)
    axes[1].axvline(1.0, color="k", lw=0.8)
    axes[1].set_xlabel("fraction of the memory-bandwidth floor")
    axes[0].set_yticks(ys + 0.4 - h / 2)
    axes[0].set_yticklabels(labels, fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", file=out)


if __name__ == "__main__":
    sys.exit(main())
