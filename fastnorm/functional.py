"""Normalisation as plain functions, with torch.nn.functional's signatures.

Each forward function has a ``*_backward`` twin that takes the output gradient
and the forward's arguments and returns ``(grad_input, grad_weight,
grad_bias)``, with None for a parameter that was not given.
"""
import numpy as np

from . import _batch_norm as _bn
from . import _checks as ck
from . import _group_norm as _gn
from . import _layer_norm as _ln
from . import _lrn
from . import _switchable as _sn
from ._moments import Moments, merge_moments, moments, reduce_moments
from ._native import kernels as _kernels

__all__ = ["moments", "merge_moments", "reduce_moments", "Moments", "batch_norm", "batch_norm_backward", "instance_norm", "instance_norm_backward",
           "group_norm", "group_norm_backward", "layer_norm", "layer_norm_backward",
           "rms_norm", "rms_norm_backward", "local_response_norm",
           "local_response_norm_backward", "switchable_norm", "switchable_norm_backward"]


def _shape_tuple(normalized_shape):
    """normalized_shape as the fast path takes it: an int or a list as a
    tuple (anything else as it is: the fast path declines what is not a
    tuple of positive ints, and the general path explains)."""
    t = type(normalized_shape)
    if t is int:
        return (normalized_shape,)
    if t is list:
        return tuple(normalized_shape)
    return normalized_shape


def batch_norm(input, running_mean, running_var, weight=None, bias=None,
               training=False, momentum=0.1, eps=1e-5, *, out=None):
    """Batch normalisation over dim 1 of input (N, C, *).

    As torch.nn.functional.batch_norm: with training=True the batch's
    statistics normalise (biased variance) and, when running_mean /
    running_var are given, are folded into them in place
    (running = (1 - momentum) * running + momentum * batch, unbiased variance
    for running_var).  With training=False the running statistics normalise.
    momentum must be a number in [0, 1] here (the layers implement
    momentum=None).  ``out`` receives the result and may be ``input`` itself.
    """
    if type(momentum) is float and 0.0 <= momentum <= 1.0:
        # the common call in one kernel call, or None: _kernels_fast.pxi
        if not training:
            r = _kernels.batch_call(input, out, running_mean, running_var, weight, bias, eps,
                                    None, 2, 63, None)
        else:
            r = _kernels.batch_train_call(input, out, running_mean, running_var, weight,
                                          bias, eps, momentum, None, None, 2, 63, None)
        if r is not None:
            return r[0]
    where = "batch_norm"
    x = ck.check_rank(input, where, range(2, 64), layout="(N, C, *)")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(
            f"{where}: running_mean and running_var must be given when training=False"
        )
    momentum = ck.momentum_value(momentum, where, allow_none=False)
    y, _ = _bn.forward(where, x, running_mean, running_var, weight, bias,
                       batch_stats=bool(training), update=bool(training),
                       momentum=momentum, eps=eps, out=out)
    return y


def batch_norm_backward(grad_output, input, running_mean, running_var,
                        weight=None, bias=None, training=False, eps=1e-5):
    """Gradients of batch_norm(input, ...) called with the same arguments.

    Returns (grad_input, grad_weight, grad_bias): grad_weight is None when
    weight is None, grad_bias is None when bias is None.  With training=True
    the batch statistics are recomputed from input (one more pass over it;
    the result is bitwise that of the forward call) and the running
    statistics are neither used nor changed.
    """
    where = "batch_norm_backward"
    x = ck.check_rank(input, where, range(2, 64), layout="(N, C, *)")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(
            f"{where}: running_mean and running_var must be given when training=False"
        )
    C, dt = x.shape[1], x.dtype
    eps = ck.eps_value(eps, where)
    _, _, rm, rv = _bn.check_params(where, C, dt, weight, bias, running_mean, running_var,
                                    writable=False)
    batch = bool(training)
    x3 = ck.as_ncl(x)
    if x.size == 0:     # an empty batch: no statistics, zero gradients
        mean, invstd = np.zeros(C), np.ones(C)
    else:
        mean, _, invstd = _bn.statistics(where, x3, x.shape, rm, rv, batch, eps)
    saved = _bn.Saved(x3, x.shape, mean, invstd, batch, False)
    return _bn.backward(where, grad_output, saved, weight,
                        need_weight=weight is not None, need_bias=bias is not None)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5, *, out=None):
    """Instance normalisation of input (N, C, *), as torch.nn.functional.instance_norm.

    use_input_stats=True: statistics per (sample, channel) over the spatial
    dims (more than one spatial element needed); the batch averages of the
    instance means and unbiased variances are folded into running_mean /
    running_var in place when those are given.  use_input_stats=False: the
    running statistics normalise, as in eval-mode batch norm.
    """
    if type(momentum) is float and 0.0 <= momentum <= 1.0:
        # the common call in one kernel call, or None: _kernels_fast.pxi
        if not use_input_stats:
            r = _kernels.batch_call(input, out, running_mean, running_var, weight, bias, eps,
                                    None, 3, 63, None)
        elif running_mean is None and running_var is None:
            r = _kernels.groups_call(input, out, None, weight, bias, eps, None, 3, 63, None,
                                     None, None, True)
        else:
            r = None
        if r is not None:
            return r[0]
    where = "instance_norm"
    x = ck.check_rank(input, where, range(3, 64), layout="(N, C, *spatial)")
    if use_input_stats:
        if (running_mean is None) != (running_var is None):
            raise ValueError(f"{where}: give both running_mean and running_var, or neither")
        momentum = ck.momentum_value(momentum, where, allow_none=False)
        y, _ = _gn.instance_forward(where, x, running_mean, running_var, weight, bias,
                                    running_mean is not None, momentum, eps, out)
        return y
    if running_mean is None or running_var is None:
        raise ValueError(
            f"{where}: running_mean and running_var must be given when use_input_stats=False")
    y, _ = _bn.forward(where, x, running_mean, running_var, weight, bias,
                       batch_stats=False, update=False, momentum=0.0, eps=eps, out=out)
    return y


def instance_norm_backward(grad_output, input, running_mean=None, running_var=None,
                           weight=None, bias=None, use_input_stats=True, eps=1e-5):
    """Gradients of instance_norm(input, ...) called with the same arguments:
    (grad_input, grad_weight or None, grad_bias or None).  Running statistics
    are neither changed nor (with use_input_stats=True) used."""
    where = "instance_norm_backward"
    x = ck.check_rank(input, where, range(3, 64), layout="(N, C, *spatial)")
    if not use_input_stats:
        return batch_norm_backward(grad_output, x, running_mean, running_var, weight,
                                   bias, training=False, eps=eps)
    saved = _gn.saved_for_backward(where, x, x.shape[1], weight, bias, eps, instance=True)
    return _gn.backward(where, grad_output, saved, weight, weight is not None,
                        bias is not None)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, out=None):
    """Group normalisation of input (N, C, *), as torch.nn.functional.group_norm:
    statistics per (sample, group of C / num_groups channels), affine per channel."""
    # the common call in one kernel call, or None: _kernels_fast.pxi
    r = _kernels.groups_call(input, out, num_groups, weight, bias, eps, None, 2, 63, None,
                             None, None)
    if r is not None:
        return r[0]
    where = "group_norm"
    x = ck.check_rank(input, where, range(2, 64), layout="(N, C, *)")
    groups = ck.positive_int(num_groups, "num_groups", where)
    y, _ = _gn.group_forward(where, x, groups, weight, bias, eps, out)
    return y


def group_norm_backward(grad_output, input, num_groups, weight=None, bias=None, eps=1e-5):
    """Gradients of group_norm(input, ...) called with the same arguments:
    (grad_input, grad_weight or None, grad_bias or None)."""
    where = "group_norm_backward"
    x = ck.check_rank(input, where, range(2, 64), layout="(N, C, *)")
    groups = ck.positive_int(num_groups, "num_groups", where)
    saved = _gn.saved_for_backward(where, x, groups, weight, bias, eps, instance=False)
    return _gn.backward(where, grad_output, saved, weight, weight is not None,
                        bias is not None)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None):
    """Layer normalisation over the trailing normalized_shape dims of input, as
    torch.nn.functional.layer_norm; weight and bias have shape normalized_shape."""
    # the common call in one kernel call, or None: _kernels_fast.pxi
    r = _kernels.rows_call(input, out, _shape_tuple(normalized_shape), weight, bias, eps,
                           False, None)
    if r is not None:
        return r[0]
    where = "layer_norm"
    nshape = _ln.normalized_shape_value(normalized_shape, where)
    x = _ln.check_rows(where, input, nshape)
    y, _ = _ln.forward(where, x, nshape, weight, bias, ck.eps_value(eps, where), out,
                       rms=False)
    return y


def layer_norm_backward(grad_output, input, normalized_shape, weight=None, bias=None,
                        eps=1e-5):
    """Gradients of layer_norm(input, ...) called with the same arguments:
    (grad_input, grad_weight or None, grad_bias or None)."""
    where = "layer_norm_backward"
    nshape = _ln.normalized_shape_value(normalized_shape, where)
    x = _ln.check_rows(where, input, nshape)
    saved = _ln.statistics(where, x, nshape, weight, bias, ck.eps_value(eps, where),
                           rms=False)
    return _ln.backward(where, grad_output, saved, weight, nshape, weight is not None,
                        bias is not None)


def rms_norm(input, normalized_shape, weight=None, eps=None, *, out=None):
    """Root-mean-square normalisation over the trailing normalized_shape dims, as
    torch.nn.functional.rms_norm (eps=None: the dtype's machine epsilon)."""
    r = _kernels.rows_call(input, out, _shape_tuple(normalized_shape), weight, None, eps,
                           True, None)
    if r is not None:
        return r[0]
    where = "rms_norm"
    nshape = _ln.normalized_shape_value(normalized_shape, where)
    x = _ln.check_rows(where, input, nshape)
    y, _ = _ln.forward(where, x, nshape, weight, None, _ln.rms_eps(eps, x.dtype, where),
                       out, rms=True)
    return y


def rms_norm_backward(grad_output, input, normalized_shape, weight=None, eps=None):
    """Gradients of rms_norm(input, ...) called with the same arguments:
    (grad_input, grad_weight or None, None)."""
    where = "rms_norm_backward"
    nshape = _ln.normalized_shape_value(normalized_shape, where)
    x = _ln.check_rows(where, input, nshape)
    saved = _ln.statistics(where, x, nshape, weight, None,
                           _ln.rms_eps(eps, x.dtype, where), rms=True)
    return _ln.backward(where, grad_output, saved, weight, nshape, weight is not None, False)


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0, *, out=None):
    """Local response normalisation across channels of input (N, C, *), as
    torch.nn.functional.local_response_norm; ``out`` must not overlap input."""
    y = _kernels.lrn_call(input, out, size, alpha, beta, k)    # the common call, or None
    if y is not None:
        return y
    where = "local_response_norm"
    args = _lrn.check_args(size, alpha, beta, k, where)
    x = _lrn.check_input(input, where)
    return _lrn.forward(where, x, *args, out)[0]


def local_response_norm_backward(grad_output, input, size, alpha=1e-4, beta=0.75, k=1.0):
    """Input gradient of local_response_norm(input, ...) with the same arguments."""
    where = "local_response_norm_backward"
    args = _lrn.check_args(size, alpha, beta, k, where)
    x = _lrn.check_input(input, where)
    return _lrn.backward(where, grad_output, ck.as_ncl(x), x.shape, *args)


def switchable_norm(input, mean_weight, var_weight, running_mean=None, running_var=None,
                    weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
                    using_bn=True, *, out=None):
    """Switchable normalisation of input (N, C, *spatial): mean and variance
    mixed from the instance, layer and batch statistics with weights
    softmax(mean_weight), softmax(var_weight) (3 logits each; 2 with
    using_bn=False, no batch term).  training=True: batch statistics, folded
    into running_mean / running_var in place when given (momentum a number
    in [0, 1]); training=False: the running statistics are the batch term.
    See fastnorm.SwitchableNorm2d."""
    if not training:
        # the common eval call in one kernel call, or None: _kernels_switchable.pxi
        r = _kernels.switchable_call(input, out, mean_weight, var_weight, running_mean,
                                     running_var, weight, bias, eps, bool(using_bn), None, 3,
                                     63, None)
        if r is not None:
            return r[0]
    where = "switchable_norm"
    x = ck.check_rank(input, where, range(3, 64), layout="(N, C, *spatial)")
    momentum = ck.momentum_value(momentum, where, allow_none=False)
    update = bool(training) and using_bn and running_mean is not None
    if bool(training) and using_bn and (running_mean is None) != (running_var is None):
        raise ValueError(f"{where}: give both running_mean and running_var, or neither")
    y, _ = _sn.forward(where, x, mean_weight, var_weight, running_mean, running_var, weight,
                       bias, bool(training), bool(using_bn), update, momentum, eps, out)
    return y


def switchable_norm_backward(grad_output, input, mean_weight, var_weight, running_mean=None,
                             running_var=None, weight=None, bias=None, training=False,
                             eps=1e-5, using_bn=True):
    """Gradients of switchable_norm(input, ...) called with the same
    arguments: (grad_input, grad_weight or None, grad_bias or None,
    grad_mean_weight, grad_var_weight).  Running statistics are not changed."""
    where = "switchable_norm_backward"
    x = ck.check_rank(input, where, range(3, 64), layout="(N, C, *spatial)")
    saved, _, _, _ = _sn.statistics(where, x, mean_weight, var_weight, running_mean,
                                    running_var, weight, bias, bool(training),
                                    bool(using_bn), False, eps, None)
    return _sn.backward(where, grad_output, saved, weight, weight is not None,
                        bias is not None)
