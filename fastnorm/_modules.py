"""Normalisation layers with PyTorch's names, arguments and semantics."""

import numpy as np

from . import _batch_norm as _bn
from . import _group_norm as _gn
from . import _layer_norm as _ln
from . import _lrn
from . import _switchable as _sn
from . import _checks as ck
from . import _forksafe
from ._dtypes import param_dtypes, storage_name
from ._native import kernels as _kernels




def _momentum_ok(m):
    """A momentum the general path accepts (it checks it in every mode): the
    fast paths, which do not use it, run only then."""
    return m is None or (type(m) is float and 0.0 <= m <= 1.0)


class Module:
    """Train/eval switch and state_dict plumbing shared by fastnorm layers.

    Subclasses list their state in _param_names (learnable) and _buffer_names
    (running state); each attribute is a NumPy array or None.
    """

    _param_names = ()
    _buffer_names = ()

    def train(self, mode=True):
        """Set training mode (True) or eval mode (False); returns the layer."""
        if not isinstance(mode, bool):
            raise TypeError(f"{type(self).__name__}.train: mode must be a bool, got {mode!r}")
        self.training = mode
        return self

    def eval(self):
        """Set eval mode; returns the layer."""
        return self.train(False)

    def __call__(self, x, out=None):
        return self.forward(x, out=out)

    def _last_forward(self, where):
        """What the last forward call saved, or a clear error if there was none."""
        if self._saved is None:
            raise RuntimeError(f"{where}: no forward call to take gradients of; call the layer first")
        return self._saved

    def _check_dtype(self, x, where):
        """Input and layer (parameters) share one dtype, or the input is
        16-bit and the layer float32 (mixed, as PyTorch's CPU norms): no
        silent conversion otherwise."""
        if x.dtype != self.dtype and self.dtype not in param_dtypes(x.dtype):
            mixed = (" (a float32 layer also takes bfloat16 and float16 input)"
                     if self.dtype == np.float32 else "")
            raise TypeError(
                f"{where}: input has dtype {x.dtype} but the layer's dtype is "
                f"{self.dtype}{mixed}; convert the input or build the layer with "
                f"dtype={x.dtype.name!r}")

    def state_dict(self):
        """PyTorch's keys; copies of the arrays (num_batches_tracked: int64 0-d)."""
        sd = {}
        for name in self._param_names + self._buffer_names:
            v = getattr(self, name)
            if v is not None:
                sd[name] = np.array(v, copy=True)
        return sd

    def load_state_dict(self, state_dict, strict=True):
        """Copy a state_dict (arrays or PyTorch tensors) into this layer.

        Values are cast to the layer's dtype.  Keys that the layer does not
        have, missing keys (strict=True) and wrong shapes raise; nothing is
        changed unless everything fits.  A missing num_batches_tracked is
        taken as 0, as PyTorch does for state_dicts without version data.
        Returns (missing_keys, unexpected_keys), as lists.
        """
        where = f"{type(self).__name__}.load_state_dict"
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"{where}: expected a mapping, got {type(state_dict).__name__}")
        own = [n for n in self._param_names + self._buffer_names if getattr(self, n) is not None]
        keys = list(state_dict.keys())
        missing = [k for k in own if k not in state_dict and k != "num_batches_tracked"]
        unexpected = [k for k in keys if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(
                f"{where}: state_dict does not match the layer: missing keys "
                f"{missing}, unexpected keys {unexpected} (expected {own})"
            )
        staged = {}
        for k in own:
            if k not in state_dict:
                continue
            cur = getattr(self, k)
            v = state_dict[k]
            try:
                arr = np.asarray(v)
            except Exception:
                arr = ck._tensor_to_numpy(v, k, where)
            if arr.shape != cur.shape:
                raise ValueError(
                    f"{where}: {k} has shape {ck.shape_str(arr.shape)}, the layer "
                    f"expects {ck.shape_str(cur.shape)}"
                )
            real = arr.dtype.kind in ("f", "i", "u") or storage_name(arr.dtype) is not None
            if not (real or arr.dtype.kind == "b") or (k != "num_batches_tracked" and not real):
                raise TypeError(f"{where}: {k} has dtype {arr.dtype}, expected a real number array")
            staged[k] = arr
        if "num_batches_tracked" in own and "num_batches_tracked" not in staged:
            staged["num_batches_tracked"] = np.zeros((), np.int64)
        for k, arr in staged.items():
            getattr(self, k)[...] = arr
        return missing, unexpected


class _Affine(Module):
    """A layer with an optional learnable weight and bias of one shape."""

    _param_names = ("weight", "bias")

    def _init_params(self, shape, dtype, weight, bias):
        self.weight = np.ones(shape, dtype) if weight else None
        self.bias = np.zeros(shape, dtype) if (weight and bias) else None
        self.training = True
        self.weight_grad = None
        self.bias_grad = None
        self._saved = None

    def reset_parameters(self):
        if self.weight is not None:
            self.weight[...] = 1
        if self.bias is not None:
            self.bias[...] = 0


class _NormBase(_Affine):
    """Per-channel affine parameters and running statistics (BatchNorm,
    InstanceNorm): PyTorch's constructor and state."""

    _ndims = ()
    _unbatched_ndim = None      # rank of an unbatched (C, *) input, if accepted
    _layout = ""
    _param_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, num_features, eps, momentum, affine, track_running_stats,
                 bias, dtype):
        where = type(self).__name__
        self.num_features = ck.positive_int(num_features, "num_features", where)
        self.eps = ck.eps_value(eps, where)
        self.momentum = ck.momentum_value(momentum, where)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.dtype = ck.float_dtype(dtype, where)
        C, dt = self.num_features, self.dtype
        self._init_params(C, dt, self.affine, bias)
        if self.track_running_stats:
            self.running_mean = np.zeros(C, dt)
            self.running_var = np.ones(C, dt)
            self.num_batches_tracked = np.zeros((), np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._saved_training = None
        # serialises the calls that update the running statistics (read the
        # count, run the kernel that folds the batch in, write the count);
        # taken across fork() (_forksafe)
        self._update_lock = _forksafe.update_lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_update_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._update_lock = _forksafe.update_lock()

    def forward(self, x, out=None):
        """Normalise x; `out` (optional) receives y and may be x itself.

        Calls that update the running statistics (training mode with
        track_running_stats) are serialised on a per-layer lock, so calls
        from several threads lose no update; others run concurrently."""
        if self.training and self.track_running_stats:
            with self._update_lock:
                return self._forward(x, out)
        return self._forward(x, out)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        super().reset_parameters()

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def _check_input(self, x, where):
        x = ck.check_rank(x, where, self._ndims, layout=self._layout)
        self._check_dtype(x, where)
        cdim = 0 if x.ndim == self._unbatched_ndim else 1
        if x.shape[cdim] != self.num_features:
            raise ValueError(
                f"{where}: expected input with {self.num_features} channels (dim "
                f"{cdim}), got {x.shape[cdim]} channels in input of shape "
                f"{ck.shape_str(x.shape)}"
            )
        return x

    def _next_count(self, update):
        return int(self.num_batches_tracked) + 1 if update else None

    def _saved_for_backward(self, where):
        saved = self._last_forward(where)
        if self._saved_training != self.training:
            was = "training" if self._saved_training else "eval"
            now = "training" if self.training else "eval"
            raise RuntimeError(
                f"{where}: the last forward ran in {was} mode but the layer is now in "
                f"{now} mode; run forward again in the mode to differentiate"
            )
        return saved


class _BatchNorm(_NormBase):
    _ndims = (2, 3, 4, 5)
    _layout = "(N, C, *)"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         bias, dtype)

    def _forward(self, x, out):
        m = self.momentum       # _momentum_ok, inlined on this hottest path
        if not self.training and (m is None or (type(m) is float and 0.0 <= m <= 1.0)):
            # the common eval call in one kernel call (validation included),
            # or None: _kernels_fast.pxi says what it takes
            nd = self._ndims
            r = _kernels.batch_call(x, out, self.running_mean, self.running_var,
                                    self.weight, self.bias, self.eps, self.dtype, nd[0],
                                    nd[-1], self.num_features)
            if r is not None:
                y, self._saved = r
                self._saved_training = False
                return y
        elif self.training and (m is None or (type(m) is float and 0.0 <= m <= 1.0)):
            # the common training call likewise: batch statistics, running
            # statistics and num_batches_tracked updated in one kernel call
            nd = self._ndims
            r = _kernels.batch_train_call(x, out, self.running_mean, self.running_var,
                                          self.weight, self.bias, self.eps, m,
                                          self.num_batches_tracked, self.dtype, nd[0],
                                          nd[-1], self.num_features)
            if r is not None:
                y, self._saved = r
                self._saved_training = True
                return y
        where = type(self).__name__
        x = self._check_input(x, where)
        batch_stats = self.training or self.running_mean is None
        update = self.training and self.track_running_stats
        momentum = ck.momentum_value(self.momentum, where)
        nbt = self._next_count(update)
        y, saved = _bn.forward(where, x, self.running_mean, self.running_var,
                               self.weight, self.bias, batch_stats, update,
                               momentum, self.eps, out, nbt)
        if update:
            self.num_batches_tracked[...] = nbt
        self._saved = saved
        self._saved_training = self.training
        return y

    def backward(self, grad_output, out=None):
        """Input gradient of the last forward call for grad_output = dL/dy.

        Stores layer.weight_grad and layer.bias_grad (None without them).
        May be called several times after one forward.  ``out`` optionally
        receives the input gradient.
        """
        where = f"{type(self).__name__}.backward"
        saved = self._saved_for_backward(where)
        need_w, need_b = self.weight is not None, self.bias is not None
        # the common call in one kernel call, or None: _kernels_fast.pxi
        r = (_kernels.batch_bwd_call(grad_output, saved, self.weight, need_w, need_b)
             if out is None else None)
        if r is None:
            r = _bn.backward(where, grad_output, saved, self.weight, need_w, need_b, out)
        dx, self.weight_grad, self.bias_grad = r
        return dx


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over (N, C) or (N, C, L) input."""
    _ndims = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, C, H, W) input."""
    _ndims = (4,)
    _layout = "(N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    """Batch normalisation over (N, C, D, H, W) input."""
    _ndims = (5,)
    _layout = "(N, C, D, H, W)"


class _InstanceNorm(_NormBase):
    """Instance normalisation: statistics per (sample, channel) over the
    spatial dims.  Accepts unbatched input (C, *spatial) like PyTorch.

    With track_running_stats=True, num_batches_tracked stays 0 under a
    numeric momentum, as in PyTorch.  momentum=None (which PyTorch takes as
    momentum 0, leaving the running statistics at their initial values) is
    here the cumulative average over num_batches_tracked, as in BatchNorm:
    then num_batches_tracked counts the training calls on a non-empty batch
    (N > 0 and a non-empty plane) made with momentum=None.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, *, bias=True, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         bias, dtype)

    def _forward(self, x, out):
        if _momentum_ok(self.momentum):
            # the common batched call in one kernel call (a training call's
            # update of the running statistics included), or None:
            # _kernels_fast.pxi says what it takes
            nd, C = self._ndims[-1], self.num_features
            if self.training and self.track_running_stats:
                r = _kernels.groups_call(x, out, None, self.weight, self.bias, self.eps,
                                         self.dtype, nd, nd, C, self.running_mean,
                                         self.running_var, True, True, self.momentum,
                                         self.num_batches_tracked)
            elif self.training or not self.track_running_stats:
                r = _kernels.groups_call(x, out, None, self.weight, self.bias, self.eps,
                                         self.dtype, nd, nd, C, self.running_mean,
                                         self.running_var, True)
            else:
                r = _kernels.batch_call(x, out, self.running_mean, self.running_var,
                                        self.weight, self.bias, self.eps, self.dtype, nd,
                                        nd, C)
            if r is not None:
                y, saved = r
                self._saved = (saved, False)
                self._saved_training = self.training
                return y
        where = type(self).__name__
        x = self._check_input(x, where)
        unbatched = x.ndim == self._unbatched_ndim
        xb = x[None] if unbatched else x
        ob = out
        if unbatched and isinstance(out, np.ndarray) and out.shape == x.shape:
            ob = out[None]
        instance_stats = self.training or not self.track_running_stats
        update = self.training and self.track_running_stats
        momentum = ck.momentum_value(self.momentum, where)
        if instance_stats:
            counts = update and momentum is None and xb.size > 0
            nbt = self._next_count(counts)
            y, saved = _gn.instance_forward(where, xb, self.running_mean,
                                            self.running_var, self.weight, self.bias,
                                            update, momentum, self.eps, ob, nbt)
            if counts:
                self.num_batches_tracked[...] = nbt
        else:
            y, saved = _bn.forward(where, xb, self.running_mean, self.running_var,
                                   self.weight, self.bias, False, False, momentum,
                                   self.eps, ob)
        self._saved = (saved, unbatched)
        self._saved_training = self.training
        if unbatched:
            return y[0] if out is None else out     # out itself, not a view of it
        return y

    def backward(self, grad_output):
        """Input gradient of the last forward call; stores weight_grad, bias_grad."""
        where = f"{type(self).__name__}.backward"
        saved, unbatched = self._saved_for_backward(where)
        need_w, need_b = self.weight is not None, self.bias is not None
        if type(saved) is tuple:
            # a fast path's forward (groups_call: G last, or batch_call): the
            # common backward in one kernel call, or None
            call = _kernels.batch_bwd_call if type(saved[4]) is bool else _kernels.groups_bwd_call
            r = call(grad_output, saved, self.weight, need_w, need_b)
            if r is not None:
                dx, self.weight_grad, self.bias_grad = r
                return dx
        g = grad_output
        if unbatched:  # the forward added the batch dim: check against the caller's shape
            g = ck.grad_output(grad_output, saved.shape[1:], saved.x3.dtype, where)[None]
        if type(saved) is tuple:        # a fast path's: groups_call (G last) or batch_call
            saved = (_bn.saved_eval(saved) if type(saved[4]) is bool
                     else _gn.saved_groups(saved))
        if isinstance(saved, _gn.SavedGroups):
            dx, gw, gb = _gn.backward(where, g, saved, self.weight, need_w, need_b)
        else:
            dx, gw, gb = _bn.backward(where, g, saved, self.weight, need_w, need_b)
        self.weight_grad, self.bias_grad = gw, gb
        return dx[0] if unbatched else dx


class InstanceNorm1d(_InstanceNorm):
    """Instance normalisation over (N, C, L) or unbatched (C, L) input."""
    _ndims = (2, 3)
    _unbatched_ndim = 2
    _layout = "(N, C, L) or (C, L)"


class InstanceNorm2d(_InstanceNorm):
    """Instance normalisation over (N, C, H, W) or unbatched (C, H, W) input."""
    _ndims = (3, 4)
    _unbatched_ndim = 3
    _layout = "(N, C, H, W) or (C, H, W)"


class InstanceNorm3d(_InstanceNorm):
    """Instance normalisation over (N, C, D, H, W) or unbatched (C, D, H, W) input."""
    _ndims = (4, 5)
    _unbatched_ndim = 4
    _layout = "(N, C, D, H, W) or (C, D, H, W)"


class GroupNorm(_Affine):
    """Group normalisation: statistics per (sample, group of channels) over the
    group's channels and all spatial dims; affine per channel.  Input (N, C, *)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, bias=True,
                 dtype=np.float32):
        where = type(self).__name__
        self.num_groups = ck.positive_int(num_groups, "num_groups", where)
        self.num_channels = ck.positive_int(num_channels, "num_channels", where)
        if self.num_channels % self.num_groups:
            raise ValueError(
                f"{where}: num_channels ({self.num_channels}) must be divisible by "
                f"num_groups ({self.num_groups})"
            )
        self.eps = ck.eps_value(eps, where)
        self.affine = bool(affine)
        self.dtype = ck.float_dtype(dtype, where)
        self._init_params(self.num_channels, self.dtype, self.affine, bias)

    def __repr__(self):
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, bias={self.bias is not None})")

    def forward(self, x, out=None):
        """Normalise x (same in training and eval); `out` may be x itself."""
        # the common call in one kernel call, or None: _kernels_fast.pxi
        r = _kernels.groups_call(x, out, self.num_groups, self.weight, self.bias, self.eps,
                                 self.dtype, 2, 63, self.num_channels, None, None)
        if r is not None:
            y, self._saved = r
            return y
        where = type(self).__name__
        ck.positive_int(self.num_groups, "num_groups", where)
        x = ck.check_rank(x, where, range(2, 64), layout="(N, C, *)")
        self._check_dtype(x, where)
        if x.shape[1] != self.num_channels:
            raise ValueError(
                f"{where}: expected input with {self.num_channels} channels (dim 1), "
                f"got {x.shape[1]} channels in input of shape {ck.shape_str(x.shape)}"
            )
        y, self._saved = _gn.group_forward(where, x, self.num_groups, self.weight,
                                           self.bias, self.eps, out)
        return y

    def backward(self, grad_output):
        """Input gradient of the last forward call; stores weight_grad, bias_grad."""
        where = "GroupNorm.backward"
        saved = self._last_forward(where)
        need_w, need_b = self.weight is not None, self.bias is not None
        # the common call in one kernel call, or None: _kernels_fast.pxi
        r = _kernels.groups_bwd_call(grad_output, saved, self.weight, need_w, need_b)
        if r is None:
            r = _gn.backward(where, grad_output, saved, self.weight, need_w, need_b)
        dx, self.weight_grad, self.bias_grad = r
        return dx


class _RowNorm(_Affine):
    """Shared by LayerNorm and RMSNorm: per-element weight (and bias) over the
    trailing normalized_shape dims of the input."""

    _rms = False

    def _init_rows(self, normalized_shape, elementwise_affine, bias, dtype):
        where = type(self).__name__
        self.normalized_shape = _ln.normalized_shape_value(normalized_shape, where)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = ck.float_dtype(dtype, where)
        self._init_params(self.normalized_shape, self.dtype, self.elementwise_affine, bias)

    def _eps(self, where, dtype=None):
        return ck.eps_value(self.eps, where)

    def forward(self, x, out=None):
        """Normalise x over its trailing dims (same in training and eval)."""
        # the common call in one kernel call (validation included), or None:
        # _kernels_fast.pxi says what it takes
        r = _kernels.rows_call(x, out, self.normalized_shape, self.weight, self.bias,
                               self.eps, self._rms, self.dtype)
        if r is not None:
            y, self._saved = r
            return y
        where = type(self).__name__
        x = _ln.check_rows(where, x, self.normalized_shape)
        self._check_dtype(x, where)
        y, self._saved = _ln.forward(where, x, self.normalized_shape, self.weight,
                                     self.bias, self._eps(where, x.dtype), out, self._rms)
        return y

    def backward(self, grad_output):
        """Input gradient of the last forward call; stores weight_grad, bias_grad."""
        where = f"{type(self).__name__}.backward"
        saved = self._last_forward(where)
        need_w, need_b = self.weight is not None, self.bias is not None
        # the common call in one kernel call, or None: _kernels_fast.pxi
        r = _kernels.rows_bwd_call(grad_output, saved, self.weight, need_w, need_b)
        if r is None:
            r = _ln.backward(where, grad_output, saved, self.weight, self.normalized_shape,
                             need_w, need_b)
        dx, self.weight_grad, self.bias_grad = r
        return dx


class LayerNorm(_RowNorm):
    """Layer normalisation over the trailing `normalized_shape` dims."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *,
                 dtype=np.float32):
        self.eps = ck.eps_value(eps, type(self).__name__)
        self._init_rows(normalized_shape, elementwise_affine, bias, dtype)

    def __repr__(self):
        return (f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None})")


class RMSNorm(_RowNorm):
    """Root-mean-square normalisation over the trailing `normalized_shape` dims;
    eps=None is the machine epsilon of the input's dtype, as in PyTorch."""

    _rms = True
    _param_names = ("weight",)

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, *,
                 dtype=np.float32):
        if eps is not None:
            eps = ck.eps_value(eps, type(self).__name__)
        self.eps = eps
        self._init_rows(normalized_shape, elementwise_affine, False, dtype)

    def _eps(self, where, dtype=None):
        """eps, or for eps=None the machine epsilon of the input's dtype
        (default: the layer's)."""
        return _ln.rms_eps(self.eps, self.dtype if dtype is None else dtype, where)

    def __repr__(self):
        return (f"RMSNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine})")


class LocalResponseNorm(Module):
    """Local response normalisation across channels of (N, C, *) input:
    y = x / (k + alpha / size * sum of x**2 over channels
    [c - size // 2, c + (size - 1) // 2], zero-padded)**beta.
    No parameters; same in training and eval."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        self.size, self.alpha, self.beta, self.k = _lrn.check_args(
            size, alpha, beta, k, "LocalResponseNorm")
        self.training = True
        self._saved = None

    def __repr__(self):
        return f"LocalResponseNorm({self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k})"

    def _args(self, where):
        return _lrn.check_args(self.size, self.alpha, self.beta, self.k, where)

    def forward(self, x, out=None):
        """Normalise x; `out` (optional) must not overlap x."""
        # the common call in one kernel call, or None: _kernels_fast.pxi
        y = _kernels.lrn_call(x, out, self.size, self.alpha, self.beta, self.k)
        if y is not None:
            self._saved = (x, None, (self.size, self.alpha, self.beta, self.k))
            return y
        where = "LocalResponseNorm"
        args = self._args(where)
        x = _lrn.check_input(x, where)
        y, x3 = _lrn.forward(where, x, *args, out)
        self._saved = (x3, x.shape, args)
        return y

    def backward(self, grad_output):
        """Input gradient of the last forward call."""
        where = "LocalResponseNorm.backward"
        x3, shape, args = self._last_forward(where)
        if shape is None:       # the fast path's: the input as the caller gave it
            x3, shape = ck.as_ncl(x3), x3.shape
        return _lrn.backward(where, grad_output, x3, shape, *args)


class _SwitchableNorm(_NormBase):
    """Switchable normalisation (Luo et al. 2018, "Differentiable
    Learning-to-Normalize via Switchable Normalization"): the mean and the
    variance that normalise are mixtures of the instance, layer and batch
    statistics with weights softmax(mean_weight) and softmax(var_weight),
    learnable like weight and bias.  The batch statistics are tracked in
    running_mean / running_var (momentum as BatchNorm's, None = cumulative
    average) and replace the batch term in eval mode; the instance and layer
    terms always come from the input.  using_bn=False mixes instance and
    layer statistics only (no running statistics).  Variances are biased
    (1/count) to normalise, unbiased for running_var.

    backward(grad_output) returns the input gradient and stores weight_grad,
    bias_grad, mean_weight_grad and var_weight_grad.
    """

    _param_names = ("weight", "bias", "mean_weight", "var_weight")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, using_bn=True, *,
                 dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, bool(using_bn), True, dtype)
        self.using_bn = bool(using_bn)
        terms = 3 if self.using_bn else 2
        self.mean_weight = np.ones(terms, self.dtype)
        self.var_weight = np.ones(terms, self.dtype)
        self.mean_weight_grad = None
        self.var_weight_grad = None

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, using_bn={self.using_bn}")

    def reset_parameters(self):
        super().reset_parameters()
        self.mean_weight[...] = 1
        self.var_weight[...] = 1

    def _forward(self, x, out):
        if not self.training:
            # the common eval call in one kernel call, or None:
            # _kernels_switchable.pxi says what it takes
            r = _kernels.switchable_call(x, out, self.mean_weight, self.var_weight,
                                         self.running_mean, self.running_var, self.weight,
                                         self.bias, self.eps, self.using_bn, self.dtype,
                                         self._ndims[0], self._ndims[-1], self.num_features)
            if r is not None:
                y, self._saved = r
                self._saved_training = False
                return y
        where = type(self).__name__
        x = self._check_input(x, where)
        update = self.training and self.using_bn
        momentum = ck.momentum_value(self.momentum, where)
        nbt = self._next_count(update)
        y, saved = _sn.forward(where, x, self.mean_weight, self.var_weight,
                               self.running_mean, self.running_var, self.weight, self.bias,
                               self.training, self.using_bn, update, momentum, self.eps,
                               out, nbt)
        if update:
            self.num_batches_tracked[...] = nbt
        self._saved = saved
        self._saved_training = self.training
        return y

    def backward(self, grad_output):
        """Input gradient of the last forward call; stores weight_grad,
        bias_grad, mean_weight_grad and var_weight_grad."""
        where = f"{type(self).__name__}.backward"
        saved = self._saved_for_backward(where)
        if type(saved) is tuple:        # the eval fast path's (switchable_call)
            saved = _sn.saved_fast(saved)
        dx, gw, gb, gm, gv = _sn.backward(where, grad_output, saved, self.weight,
                                          self.weight is not None, self.bias is not None)
        self.weight_grad, self.bias_grad = gw, gb
        self.mean_weight_grad, self.var_weight_grad = gm, gv
        return dx


class SwitchableNorm1d(_SwitchableNorm):
    """Switchable normalisation over (N, C, L) input."""
    _ndims = (3,)
    _layout = "(N, C, L)"


class SwitchableNorm2d(_SwitchableNorm):
    """Switchable normalisation over (N, C, H, W) input."""
    _ndims = (4,)
    _layout = "(N, C, H, W)"


class SwitchableNorm3d(_SwitchableNorm):
    """Switchable normalisation over (N, C, D, H, W) input."""
    _ndims = (5,)
    _layout = "(N, C, D, H, W)"
