"""Non-finite values: a NaN, +inf or -inf in the input or in the output
gradient propagates as it does in PyTorch, reaches only what depends on it,
and is handled the same at 1 and 2 threads.

* test_matches_torch_layer / _functional (need PyTorch): output, input
  gradient, weight/bias gradients and running statistics against PyTorch on
  the same data: NaN, +inf and -inf at exactly the same positions, finite
  values close (one exception, see GROUPED_DIFFERENTLY).
* Without PyTorch:
  - test_only_dependents_affected: everything that cannot depend on the
    value is bitwise what it is with a finite value there (the other
    channels of a BatchNorm, the other slices of an InstanceNorm /
    GroupNorm / LayerNorm / RMSNorm, the channels outside a
    LocalResponseNorm window), and what does depend on it is not finite;
  - test_running_stats_of_the_channel, test_single_inf_gradient_sums,
    test_rms_norm_row_with_an_infinity: the values that IEEE arithmetic
    fixes (and PyTorch gives) in those cases;
  - test_threads_same_bits: large inputs (both threads busy) with several
    non-finite values give the same bits at 1 and 2 threads;
  - test_every_call_returns: a child process runs every layer and
    functional on non-finite data and must exit normally in time (no
    crash, no hang).
* For every layer of the catalogue, as it configures it (SwitchableNorm and
  SyncBatchNorm included): test_catalogue_only_reach_affected (the output
  outside the value's reach bitwise unchanged, the value visible, no NumPy
  warning) and test_catalogue_threads_same_bits (its large shape).
"""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastnorm
import fastnorm.functional as F
from fastnorm._native import kernels as _kernels

DTYPES = [np.float32, np.float64]
VALUES = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}
LRN_ARGS = dict(alpha=0.5, beta=0.75, k=1.0)


@dataclasses.dataclass
class Spec:
    """One layer configuration (or functional call) and where a value goes."""

    id: str
    op: str                      # bn, in, gn, ln, rms, lrn
    cls: str                     # fastnorm / torch.nn class name
    shape: tuple
    train: bool = True
    groups: int = None
    nshape: tuple = None
    size: int = 3

    @property
    def C(self):
        return self.shape[1]

    @property
    def pshape(self):
        return self.nshape if self.op in ("ln", "rms") else (self.C,)

    @property
    def running(self):
        return self.op in ("bn", "in")

    @property
    def batch_stats(self):
        """Statistics from the data itself (not from running statistics)."""
        return self.op not in ("bn", "in") or self.train

    def at(self):
        """Where the non-finite value goes: sample 1, channel 1, mid-plane."""
        return (1, 1) + tuple(s // 2 for s in self.shape[2:])

    def params(self, dtype, rng):
        p = {}
        if self.op == "lrn":
            return p
        p["weight"] = rng.uniform(0.5, 2, self.pshape).astype(dtype)
        p["weight"].flat[::3] *= -1     # some negative weights: signs of inf matter
        if self.op != "rms":
            p["bias"] = rng.normal(size=self.pshape).astype(dtype)
        if self.running:
            p["running_mean"] = rng.normal(size=self.C).astype(dtype)
            p["running_var"] = rng.uniform(0.5, 2, self.C).astype(dtype)
        return p

    # -- fastnorm --------------------------------------------------------

    def fastnorm_layer(self, dtype, p):
        if self.op == "bn":
            layer = getattr(fastnorm, self.cls)(self.C, dtype=dtype)
        elif self.op == "in":
            layer = getattr(fastnorm, self.cls)(self.C, affine=True, track_running_stats=True,
                                                dtype=dtype)
        elif self.op == "gn":
            layer = fastnorm.GroupNorm(self.groups, self.C, dtype=dtype)
        elif self.op == "ln":
            layer = fastnorm.LayerNorm(self.nshape, dtype=dtype)
        elif self.op == "rms":
            layer = fastnorm.RMSNorm(self.nshape, dtype=dtype)
        else:
            layer = fastnorm.LocalResponseNorm(self.size, **LRN_ARGS)
        for k, v in p.items():
            getattr(layer, k)[...] = v
        return layer.train(self.train)

    def run_layer(self, x, g, p):
        layer = self.fastnorm_layer(x.dtype, p)
        res = {"y": layer(x), "dx": layer.backward(g)}
        if self.op != "lrn":
            res["dw"] = layer.weight_grad
            if self.op != "rms":
                res["db"] = layer.bias_grad
        if self.running:
            res["running_mean"] = layer.running_mean
            res["running_var"] = layer.running_var
        return res

    def run_functional(self, x, g, p):
        p = {k: v.copy() for k, v in p.items()}
        w, b = p.get("weight"), p.get("bias")
        rm, rv = p.get("running_mean"), p.get("running_var")
        if self.op == "bn":
            y = F.batch_norm(x, rm, rv, w, b, training=self.train)
            grads = F.batch_norm_backward(g, x, rm, rv, w, b, training=self.train)
        elif self.op == "in":
            y = F.instance_norm(x, rm, rv, w, b, use_input_stats=self.train)
            grads = F.instance_norm_backward(g, x, rm, rv, w, b, use_input_stats=self.train)
        elif self.op == "gn":
            y = F.group_norm(x, self.groups, w, b)
            grads = F.group_norm_backward(g, x, self.groups, w, b)
        elif self.op == "ln":
            y = F.layer_norm(x, self.nshape, w, b)
            grads = F.layer_norm_backward(g, x, self.nshape, w, b)
        elif self.op == "rms":
            y = F.rms_norm(x, self.nshape, w)
            grads = F.rms_norm_backward(g, x, self.nshape, w)[:2]
        else:
            y = F.local_response_norm(x, self.size, **LRN_ARGS)
            grads = (F.local_response_norm_backward(g, x, self.size, **LRN_ARGS),)
        res = dict(zip(("y", "dx", "dw", "db"), (y, *grads)))
        if self.running:
            res.update(running_mean=rm, running_var=rv)
        return res

    # -- PyTorch -----------------------------------------------------------

    def run_torch(self, torch, x, g, p, functional):
        tdt = torch.float32 if x.dtype == np.float32 else torch.float64
        t = {k: torch.from_numpy(v.copy()) for k, v in p.items()}
        for k in ("weight", "bias"):
            if k in t:
                t[k].requires_grad_()
        xt = torch.from_numpy(x.copy()).requires_grad_()
        nn, tf = torch.nn, torch.nn.functional
        if functional:
            w, b = t.get("weight"), t.get("bias")
            rm, rv = t.get("running_mean"), t.get("running_var")
            if self.op == "bn":
                yt = tf.batch_norm(xt, rm, rv, w, b, training=self.train)
            elif self.op == "in":
                yt = tf.instance_norm(xt, rm, rv, w, b, use_input_stats=self.train)
            elif self.op == "gn":
                yt = tf.group_norm(xt, self.groups, w, b)
            elif self.op == "ln":
                yt = tf.layer_norm(xt, self.nshape, w, b)
            elif self.op == "rms":
                yt = tf.rms_norm(xt, self.nshape, w)
            else:
                yt = tf.local_response_norm(xt, self.size, **LRN_ARGS)
        else:
            if self.op == "bn":
                m = getattr(nn, self.cls)(self.C, dtype=tdt)
            elif self.op == "in":
                m = getattr(nn, self.cls)(self.C, affine=True, track_running_stats=True,
                                          dtype=tdt)
            elif self.op == "gn":
                m = nn.GroupNorm(self.groups, self.C, dtype=tdt)
            elif self.op == "ln":
                m = nn.LayerNorm(self.nshape, dtype=tdt)
            elif self.op == "rms":
                m = nn.RMSNorm(self.nshape, dtype=tdt)
            else:
                m = nn.LocalResponseNorm(self.size, **LRN_ARGS)
            with torch.no_grad():
                for k, v in t.items():
                    getattr(m, k).copy_(v)
            m.train(self.train)
            t = {k: getattr(m, k) for k in t}
            yt = m(xt)
        yt.backward(torch.from_numpy(g.copy()))
        res = {"y": yt.detach().numpy(), "dx": xt.grad.numpy()}
        if "weight" in t:
            res["dw"] = t["weight"].grad.numpy()
        if "bias" in t:
            res["db"] = t["bias"].grad.numpy()
        if self.running:
            res.update(running_mean=t["running_mean"].detach().numpy(),
                       running_var=t["running_var"].detach().numpy())
        return res

    # -- what a value at self.at() can reach ----------------------------------

    def reach(self, where):
        """Boolean masks (y, dx) of the elements that depend on the value
        put at self.at() of the input (where="input") or of the output
        gradient (where="grad"); the rest must not change."""
        p = self.at()
        n, c = p[:2]
        point = np.zeros(self.shape, bool)
        point[p] = True
        stat = np.zeros(self.shape, bool)      # what shares statistics with p
        if self.op == "bn":
            stat[:, c] = True
        elif self.op == "in":
            stat[n, c] = True
        elif self.op == "gn":
            cg = self.C // self.groups
            stat[n, (c // cg) * cg:(c // cg + 1) * cg] = True
        elif self.op in ("ln", "rms"):
            lead = len(self.shape) - len(self.nshape)
            stat[p[:lead]] = True
        if self.op == "lrn":
            s = self.size
            y = np.zeros(self.shape, bool)
            dx = np.zeros(self.shape, bool)
            lo, hi = c - (s - 1) // 2, c + s // 2           # outputs whose window holds c
            y[(n, slice(max(lo, 0), hi + 1)) + p[2:]] = True
            if where == "input":   # through those outputs' windows
                dx[(n, slice(max(c - s + 1, 0), c + s)) + p[2:]] = True
            else:                  # the inputs in c's window
                dx[(n, slice(max(c - s // 2, 0), c + (s - 1) // 2 + 1)) + p[2:]] = True
            return (y if where == "input" else np.zeros(self.shape, bool)), dx
        if not self.batch_stats:   # running statistics: elementwise
            if where == "input":
                return point, np.zeros(self.shape, bool)    # dx = g * scale
            return np.zeros(self.shape, bool), point
        return (stat if where == "input" else np.zeros(self.shape, bool)), stat


def _bn(cls, shape, train=True):
    return Spec(f"{cls}-{'x'.join(map(str, shape))}-{'train' if train else 'eval'}", "bn",
                cls, shape, train)


def _in(cls, shape, train=True):
    return Spec(f"{cls}-{'x'.join(map(str, shape))}-{'train' if train else 'eval'}", "in",
                cls, shape, train)


SPECS = [
    _bn("BatchNorm1d", (6, 4)), _bn("BatchNorm1d", (6, 4), False),
    _bn("BatchNorm1d", (4, 3, 10)), _bn("BatchNorm1d", (4, 3, 10), False),
    _bn("BatchNorm2d", (4, 3, 5, 6)), _bn("BatchNorm2d", (4, 3, 5, 6), False),
    _bn("BatchNorm3d", (2, 3, 3, 4, 5)), _bn("BatchNorm3d", (2, 3, 3, 4, 5), False),
    _in("InstanceNorm1d", (3, 4, 10)), _in("InstanceNorm1d", (3, 4, 10), False),
    _in("InstanceNorm2d", (3, 4, 5, 6)), _in("InstanceNorm2d", (3, 4, 5, 6), False),
    _in("InstanceNorm3d", (2, 3, 3, 4, 5)), _in("InstanceNorm3d", (2, 3, 3, 4, 5), False),
    Spec("GroupNorm-3x6x5x4", "gn", "GroupNorm", (3, 6, 5, 4), groups=2),
    Spec("GroupNorm-3x6", "gn", "GroupNorm", (3, 6), groups=3),
    Spec("LayerNorm-3x6x5x4", "ln", "LayerNorm", (3, 6, 5, 4), nshape=(5, 4)),
    Spec("LayerNorm-3x6x7", "ln", "LayerNorm", (3, 6, 7), nshape=(7,)),
    Spec("RMSNorm-3x6x5x4", "rms", "RMSNorm", (3, 6, 5, 4), nshape=(5, 4)),
    Spec("RMSNorm-3x6x7", "rms", "RMSNorm", (3, 6, 7), nshape=(7,)),
    Spec("LocalResponseNorm3-2x7x5x4", "lrn", "LocalResponseNorm", (2, 7, 5, 4), size=3),
    Spec("LocalResponseNorm4-2x7x6", "lrn", "LocalResponseNorm", (2, 7, 6), size=4),
]
# The functionals: one configuration per function and mode.
FUNCTIONAL_SPECS = [s for s in SPECS if s.id in (
    "BatchNorm2d-4x3x5x6-train", "BatchNorm2d-4x3x5x6-eval", "BatchNorm1d-6x4-train",
    "InstanceNorm2d-3x4x5x6-train", "InstanceNorm1d-3x4x10-eval", "GroupNorm-3x6x5x4",
    "LayerNorm-3x6x7", "RMSNorm-3x6x5x4", "LocalResponseNorm4-2x7x6")]


def _data(spec, dtype, where, value):
    """Input, output gradient and parameters of `spec`; `value` (None: keep
    the finite one) at spec.at() of the input or (where="grad") the gradient."""
    rng = np.random.default_rng(len(spec.id))
    x = (rng.normal(size=spec.shape) * 2 + 1).astype(dtype)
    g = rng.normal(size=spec.shape).astype(dtype)
    p = spec.params(dtype, rng)
    if value is not None:
        (x if where == "input" else g)[spec.at()] = value
    return x, g, p


def torch_mismatches(got, want, name, dtype, classes=True):
    """What differs between fastnorm's `got` and PyTorch's `want`: NaN, +inf
    and -inf at different positions (classes=False: only the non-finite
    positions), or finite values not close.  A list of messages."""
    got = np.asarray(got)
    if got.shape != want.shape:
        return [f"{name}: shape {got.shape}, PyTorch {want.shape}"]
    out = []
    masks = ((("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)) if classes
             else (("non-finite", lambda a: ~np.isfinite(a)),))
    for kind, mask in masks:
        bad = np.argwhere(mask(got) != mask(want))
        if len(bad):
            at = [tuple(map(int, i)) for i in bad[:3]]
            out.append(f"{name}: {kind} at {len(bad)} places PyTorch does not agree with, "
                       f"e.g. {at}: fastnorm {[got[i].item() for i in at]}, "
                       f"PyTorch {[want[i].item() for i in at]}")
    fin = np.isfinite(want) & np.isfinite(got)
    if fin.any():
        tol = 1e-4 if dtype == np.float32 else 1e-9
        atol = tol * (1 + np.abs(want[fin]).max())
        far = np.abs(got[fin].astype(np.float64) - want[fin]) > atol + tol * np.abs(want[fin])
        if far.any():
            out.append(f"{name}: {far.sum()} finite values not close to PyTorch's")
    return out


# PyTorch's CPU GroupNorm and LayerNorm backward kernels compute the input
# gradient from uncentred sums (c1 * dy + c2 * x + c3), fastnorm from centred
# ones (a * dy - b * (x - mean) - k): algebraically equal, but where an
# infinite output gradient makes two of the terms infinite, one grouping
# gives inf - inf = NaN where the other gives +-inf.  For an infinite output
# gradient these two are held to the same non-finite positions only (their
# outputs and everything else stay exact).  The weight and bias gradients,
# which one infinite term decides, are held to the exact +-inf without
# PyTorch in test_single_inf_gradient_sums.
GROUPED_DIFFERENTLY = ("gn", "ln")


def _compare_with_torch(torch, spec, dtype, where, value, functional):
    x, g, p = _data(spec, dtype, where, VALUES[value])
    x0, g0 = x.copy(), g.copy()
    run = spec.run_functional if functional else spec.run_layer
    got = run(x, g, p)
    want = spec.run_torch(torch, x, g, p, functional)
    assert got.keys() == want.keys()
    assert x.tobytes() == x0.tobytes() and g.tobytes() == g0.tobytes(), "input modified"
    classes = not (where == "grad" and value != "nan" and spec.op in GROUPED_DIFFERENTLY)
    problems = [m for k in want for m in torch_mismatches(got[k], want[k], k, dtype,
                                                          classes or k == "y")]
    if problems:
        raise AssertionError("\n  ".join(problems))
    # The value went somewhere: this is not a comparison of two finite runs.
    assert not all(np.isfinite(v).all() for v in want.values())


CASES = [(w, v) for w in ("input", "grad") for v in VALUES]


@pytest.fixture
def torch1(torch):
    """PyTorch on one thread (its results do not depend on it, and its
    spinning pool slows these small calls on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(n)


def each(check, combos):
    """check(**combo) for every combo (a dict); fail listing every combo
    that fails with its message, not only the first."""
    failures = []
    for combo in combos:
        try:
            check(**combo)
        except Exception as e:      # an assertion, or fastnorm raising
            what = " ".join(str(np.dtype(v)) if k == "dtype" else str(v)
                            for k, v in combo.items())
            # the message, without pytest's rewritten "assert ..." lines
            lines = [ln for ln in str(e).splitlines() if not ln.startswith(("assert ", " +"))]
            failures.append(f"[{what}] {type(e).__name__}: " + "\n".join(lines[:8]))
    if failures:
        pytest.fail(f"{len(failures)} of {len(combos)} fail:\n" + "\n".join(failures),
                    pytrace=False)


def dtypes():
    """The combos of `each` for float32 and float64."""
    return [dict(dtype=dt) for dt in DTYPES]


CASE_IDS = [f"{w}-{v}" for w, v in CASES]


@pytest.mark.parametrize("where,value", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_matches_torch_layer(torch1, spec, where, value):
    """The layer against its torch.nn twin, float32 and float64."""
    each(lambda dtype: _compare_with_torch(torch1, spec, dtype, where, value, False),
         dtypes())


@pytest.mark.parametrize("where,value", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("spec", FUNCTIONAL_SPECS, ids=lambda s: s.id)
def test_matches_torch_functional(torch1, spec, where, value):
    """The functional pair against torch.nn.functional and autograd."""
    each(lambda dtype: _compare_with_torch(torch1, spec, dtype, where, value, True),
         dtypes())


@pytest.mark.parametrize("where,value", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_only_dependents_affected(spec, where, value):
    each(lambda dtype: _only_dependents_affected(spec, dtype, where, value), dtypes())


def _only_dependents_affected(spec, dtype, where, value):
    """Outside what can depend on the value (Spec.reach) the output and input
    gradient are bitwise those of the same call with a finite value there;
    per-channel gradients and running statistics of the other channels too.
    Inside, the value shows: what it reaches is not all finite."""
    clean = spec.run_layer(*_data(spec, dtype, where, None))
    dirty = spec.run_layer(*_data(spec, dtype, where, VALUES[value]))
    y_reach, dx_reach = spec.reach(where)
    for k, reach in (("y", y_reach), ("dx", dx_reach)):
        assert dirty[k][~reach].tobytes() == clean[k][~reach].tobytes(), \
            f"{k} changed outside what depends on the value"
        if reach.any():
            assert not np.isfinite(dirty[k][reach]).all(), f"{k}: the value vanished"
        if k == "y" and spec.batch_stats and spec.op in ("bn", "in", "gn", "ln") \
                and reach.any():
            # Mean and variance of the slice are not finite: all of it is NaN.
            assert np.isnan(dirty[k][reach]).all(), f"{k}: the slice is not all NaN"
    if spec.op in ("bn", "in"):
        other = np.arange(spec.C) != spec.at()[1]
        for k in ("dw", "db", "running_mean", "running_var"):
            assert dirty[k][other].tobytes() == clean[k][other].tobytes(), k


def _xhat_sign(spec, x, p):
    """Sign of the normalised input at p, from the statistics in float64."""
    x = x.astype(np.float64)
    n, c = spec.at()[:2]
    if spec.op in ("bn", "in") and not spec.train:
        centre = p["running_mean"][c]
    elif spec.op == "bn":
        centre = x[:, c].mean()
    elif spec.op == "in":
        centre = x[n, c].mean()
    elif spec.op == "gn":
        cg = spec.C // spec.groups
        centre = x[n, (c // cg) * cg:(c // cg + 1) * cg].mean()
    elif spec.op == "ln":
        centre = x[spec.at()[:len(spec.shape) - len(spec.nshape)]].mean()
    else:
        centre = 0.0
    return np.sign(x[spec.at()] - centre)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.op != "lrn"], ids=lambda s: s.id)
def test_single_inf_gradient_sums(spec):
    each(lambda dtype, value: _single_inf_gradient_sums(spec, dtype, value),
         [dict(dtype=dt, value=v) for dt in DTYPES for v in ("inf", "-inf")])


def _single_inf_gradient_sums(spec, dtype, value):
    """One infinite output gradient, finite input: the parameter gradients
    that sum it are that infinity (bias) or it times the sign of the
    normalised input (weight), never NaN: one infinite term and finite
    others have a definite sum.  In eval mode with running statistics the
    input gradient is the output gradient scaled, so +-inf at that element."""
    x, g, p = _data(spec, dtype, "grad", VALUES[value])
    res = spec.run_layer(x, g, p)
    at = spec.at()
    k = at[1] if spec.op in ("bn", "in", "gn") else at[len(spec.shape) - len(spec.nshape):]
    want_dw = VALUES[value] * _xhat_sign(spec, x, p)
    assert res["dw"][k] == want_dw, f"weight_grad {res['dw'][k]}, expected {want_dw}"
    if "db" in res:
        assert res["db"][k] == VALUES[value], f"bias_grad {res['db'][k]}, expected {value}"
    for name in ("dw", "db"):
        if name in res:
            others = np.ones(res[name].shape, bool)
            others[k] = False
            assert np.isfinite(res[name][others]).all(), name
    if not spec.batch_stats:
        want_dx = VALUES[value] * np.sign(p["weight"][at[1]])
        assert res["dx"][at] == want_dx, f"input gradient {res['dx'][at]}, expected {want_dx}"
        elsewhere = np.ones(x.shape, bool)
        elsewhere[at] = False
        assert np.isfinite(res["dx"][elsewhere]).all()


@pytest.mark.parametrize("spec", [s for s in SPECS if s.running and s.train], ids=lambda s: s.id)
def test_running_stats_of_the_channel(spec):
    each(lambda dtype, value: _running_stats_of_the_channel(spec, dtype, value),
         [dict(dtype=dt, value=v) for dt in DTYPES for v in VALUES])


def _running_stats_of_the_channel(spec, dtype, value):
    """Training with a non-finite value in channel c: the batch mean of c is
    that value (NaN: NaN; +-inf alone: +-inf) and its variance NaN, so
    running_mean[c] and running_var[c] become those (after momentum), as in
    PyTorch; the other channels' running statistics stay finite."""
    x, g, p = _data(spec, dtype, "input", VALUES[value])
    res = spec.run_layer(x, g, p)
    c = spec.at()[1]
    rm, rv = res["running_mean"], res["running_var"]
    if value == "nan":
        assert np.isnan(rm[c]), f"running_mean[{c}] = {rm[c]}, expected NaN"
    else:
        assert rm[c] == VALUES[value], f"running_mean[{c}] = {rm[c]}, expected {value}"
    assert np.isnan(rv[c]), f"running_var[{c}] = {rv[c]}, expected NaN"
    assert np.isfinite(np.delete(rm, c)).all() and np.isfinite(np.delete(rv, c)).all()


@pytest.mark.parametrize("api", ["layer", "functional"])
def test_rms_norm_row_with_an_infinity(api):
    each(lambda dtype, value: _rms_norm_row_with_an_infinity(api, dtype, value),
         [dict(dtype=dt, value=v) for dt in DTYPES for v in ("inf", "-inf")])


def _rms_norm_row_with_an_infinity(api, dtype, value):
    """A row of RMSNorm holding one +-inf has an infinite mean square: the
    other elements normalise to +-0 and the infinite one to NaN (inf * 0),
    as x * rsqrt(mean(x**2) + eps) gives in PyTorch; other rows are finite."""
    spec = next(s for s in SPECS if s.op == "rms")
    x, g, p = _data(spec, dtype, "input", VALUES[value])
    res = (spec.run_layer if api == "layer" else spec.run_functional)(x, g, p)
    row = spec.at()[:2]
    y = res["y"]
    expect = np.zeros(spec.nshape)
    expect[spec.at()[2:]] = np.nan
    got = y[row]
    same = (np.isnan(got) == np.isnan(expect)).all() and (got[~np.isnan(expect)] == 0).all()
    assert same, (f"the row holding {value}: {np.isnan(got).sum()} NaN of {got.size}, "
                  f"expected zeros and one NaN (at the {value}); got {got.ravel()[:6]}...")
    others = np.ones(y.shape, bool)
    others[row] = False
    assert np.isfinite(y[others]).all()


# ---------------------------------------------------------------------------
# Threads.  Shapes of more than 65536 elements, so that both threads work;
# the "-long" ones take the two-pass (slice over 512 KiB) kernels.

THREAD_SPECS = [
    Spec("BatchNorm2d-train", "bn", "BatchNorm2d", (4, 3, 80, 80)),
    Spec("BatchNorm2d-eval", "bn", "BatchNorm2d", (4, 3, 80, 80), train=False),
    Spec("BatchNorm1d-rows", "bn", "BatchNorm1d", (1001, 70)),
    Spec("BatchNorm3d-train", "bn", "BatchNorm3d", (2, 3, 8, 40, 40)),
    Spec("InstanceNorm2d-train", "in", "InstanceNorm2d", (4, 8, 48, 48)),
    Spec("InstanceNorm2d-eval", "in", "InstanceNorm2d", (4, 8, 48, 48), train=False),
    Spec("InstanceNorm1d-long", "in", "InstanceNorm1d", (1, 2, 140_000)),
    Spec("GroupNorm", "gn", "GroupNorm", (4, 16, 33, 33), groups=4),
    Spec("GroupNorm-long", "gn", "GroupNorm", (1, 2, 140_000), groups=1),
    Spec("LayerNorm", "ln", "LayerNorm", (300, 256), nshape=(256,)),
    Spec("LayerNorm-long", "ln", "LayerNorm", (2, 140_000), nshape=(140_000,)),
    Spec("RMSNorm", "rms", "RMSNorm", (300, 256), nshape=(256,)),
    Spec("RMSNorm-long", "rms", "RMSNorm", (2, 140_000), nshape=(140_000,)),
    Spec("LocalResponseNorm", "lrn", "LocalResponseNorm", (4, 16, 33, 33), size=5),
]


def _thread_data(spec, dtype):
    """Data with NaN, +inf and -inf in the input (one slice holding both
    infinities) and NaN and inf in the output gradient, spread out."""
    rng = np.random.default_rng(11)
    x = (rng.normal(size=spec.shape) * 2 + 1).astype(dtype)
    g = rng.normal(size=spec.shape).astype(dtype)
    n = x.size
    xf, gf = x.reshape(-1), g.reshape(-1)
    xf[n // 7] = np.nan
    xf[n // 3] = np.inf
    xf[n // 2] = -np.inf
    xf[n // 2 + 2] = np.inf
    xf[n - 5] = -np.inf
    gf[n // 5] = np.nan
    gf[(3 * n) // 4] = np.inf
    gf[n - 1] = -np.inf
    return x, g, spec.params(dtype, rng)


def _all_results(spec, dtype, threads):
    x, g, p = _thread_data(spec, dtype)
    with threadpool_limits(threads, user_api="openmp"):
        res = spec.run_layer(x, g, p)
        used = _kernels.threads_used()
        res.update({"f_" + k: v for k, v in spec.run_functional(x, g, p).items()})
    return res, used


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", THREAD_SPECS, ids=lambda s: s.id)
def test_threads_same_bits(spec, dtype):
    """Every result (layer and functional: output, gradients, running
    statistics), NaN and inf included, has the same bits at 1 and 2 threads."""
    one, used1 = _all_results(spec, dtype, 1)
    two, used2 = _all_results(spec, dtype, 2)
    assert used1 == 1
    if _kernels.openmp_enabled():
        assert used2 == 2, "the two-thread run used one thread: the test proves nothing"
    assert not np.isfinite(one["y"]).all() and not np.isfinite(one["dx"]).all()
    assert one.keys() == two.keys()
    for k in one:
        assert _bits(one[k]) == _bits(two[k]), f"{k} differs between 1 and 2 threads"


def _bits(a):
    """The bytes of a with every NaN made the same NaN: positions of NaNs must
    match, their sign and payload are unspecified (README, Numerics).  NumPy's
    vector and scalar loops give NaN op NaN different signs, and which loop an
    element takes depends on the array's address."""
    a = np.asarray(a)
    return np.where(np.isnan(a), np.array(np.nan, a.dtype), a).tobytes()


# ---------------------------------------------------------------------------
# No crash, no hang: a child process calls everything on non-finite data.

def _smoke():
    """Every layer and functional of SPECS (float32 and float64) and of
    THREAD_SPECS, forward and backward, with NaN / +inf / -inf in the input
    or the output gradient, at 2 threads.  Prints the number of calls made."""
    calls = 0
    with threadpool_limits(2, user_api="openmp"):
        for spec in SPECS:
            for dtype in DTYPES:
                for where, value in CASES:
                    x, g, p = _data(spec, dtype, where, VALUES[value])
                    for run in (spec.run_layer, spec.run_functional):
                        res = run(x, g, p)
                        assert res["y"].shape == res["dx"].shape == x.shape
                        # the value shows where it went in
                        assert not np.isfinite(res["y" if where == "input" else "dx"]).all()
                        calls += 1
        for spec in THREAD_SPECS:     # the large shapes: float32 is enough here
            for dtype in (np.float32,):
                x, g, p = _thread_data(spec, dtype)
                for run in (spec.run_layer, spec.run_functional):
                    res = run(x, g, p)
                    assert res["dx"].shape == x.shape and not np.isfinite(res["y"]).all()
                    calls += 1
    print(json.dumps({"calls": calls}))


def test_every_call_returns(tmp_path):
    """No crash (the child would die by a signal) and no hang (it would
    time out): every call on non-finite data returns."""
    here = os.path.dirname(os.path.abspath(__file__))
    # the child imports this module and the fastnorm this process uses
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastnorm.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, package_root, env.get("PYTHONPATH")) if p)
    code = "import test_nonfinite; test_nonfinite._smoke()"
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("calls on non-finite data did not return within 300 s")
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{proc.stderr[-3000:]}"
    calls = json.loads(proc.stdout.strip().splitlines()[-1])["calls"]
    assert calls == 2 * (len(DTYPES) * len(SPECS) * len(CASES) + len(THREAD_SPECS))


# ---------------------------------------------------------------------------
# Every layer of the catalogue (fastnorm/_catalogue.py), as it configures it:
# SwitchableNorm and SyncBatchNorm included.  A value at one input element
# changes only the outputs its statistics reach (the entry's scope), raises
# no NumPy warning, and gives the same bits at 1 and 2 threads.

import warnings  # noqa: E402

from fastnorm import _catalogue as cat  # noqa: E402

CAT_SHAPES = [(e, s) for e in cat.CATALOGUE for s in e.shapes if len(s) in e.ranks
              and len(s) >= 2]


def _reach(entry, layer, shape, at, training):
    """Mask of the outputs that can depend on the input element at `at`."""
    m = np.zeros(shape, bool)
    n, c = at[0], at[1]
    running = not training and getattr(layer, "running_mean", None) is not None
    scope = entry.scope
    if scope in ("channel", "instance") and running:
        m[at] = True                        # eval with running statistics: elementwise
    elif scope == "channel":
        m[:, c] = True
    elif scope == "instance":
        m[n, c] = True
    elif scope == "group":
        cg = shape[1] // layer.num_groups
        m[n, (c // cg) * cg:(c // cg + 1) * cg] = True
    elif scope == "row":
        m[at[:-1]] = True
    elif scope == "window":
        lo, hi = c - (layer.size - 1) // 2, c + layer.size // 2
        m[(n, slice(max(lo, 0), hi + 1)) + tuple(at[2:])] = True
    elif scope == "mixed":
        m[n] = True                         # instance and layer statistics
        if training and layer.using_bn:
            m[:, c] = True                  # batch statistics
    else:
        raise AssertionError(scope)
    return m


def _cat_run(entry, shape, dtype, x, g, training):
    layer = entry.layer(shape, dtype, np.random.default_rng(5))
    layer.train(training)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # no NumPy warning on non-finite data
        y = layer(x)
        dx = layer.backward(g)
    return layer, y, dx


@pytest.mark.parametrize("value", list(VALUES))
@pytest.mark.parametrize("entry,shape", CAT_SHAPES, ids=[cat.case_id(*c) for c in CAT_SHAPES])
def test_catalogue_only_reach_affected(entry, shape, value):
    for dtype in cat.storage_dtypes():
        for mode in entry.modes:
            training = mode == "train"
            rng = np.random.default_rng(2)
            x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
            g = rng.normal(size=shape).astype(dtype)
            at = (min(1, shape[0] - 1), 1) + tuple(s // 2 for s in shape[2:])
            layer, clean, _ = _cat_run(entry, shape, dtype, x, g, training)
            dirty_x = x.copy()
            dirty_x[at] = VALUES[value]
            layer, dirty, dx = _cat_run(entry, shape, dtype, dirty_x, g, training)
            reach = _reach(entry, layer, shape, at, training)
            what = f"{np.dtype(dtype)} {mode} {value}"
            assert dirty[~reach].tobytes() == clean[~reach].tobytes(), \
                f"{what}: output changed outside what depends on the value"
            assert not np.isfinite(dirty[at]), f"{what}: the value vanished"
            assert dx.shape == shape


@pytest.mark.parametrize("dtype", cat.storage_dtypes(), ids=lambda d: d.name)
@pytest.mark.parametrize("entry", cat.CATALOGUE, ids=lambda e: e.name)
def test_catalogue_threads_same_bits(entry, dtype):
    """The large shape with non-finite values in the input and the output
    gradient: every result has the same bits (NaN positions included) at
    1 and 2 threads, in each mode."""
    shape = entry.large
    rng = np.random.default_rng(4)
    x = rng.normal(size=shape).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    n = x.size
    x.flat[[n // 7, n // 3, n // 2]] = [np.nan, np.inf, -np.inf]
    g.flat[[n // 5, (3 * n) // 4]] = [np.nan, -np.inf]
    runs = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="openmp"):
            res = []
            for mode in entry.modes:
                layer, y, dx = _cat_run(entry, shape, dtype, x, g, mode == "train")
                res += [y, dx] + [np.array(getattr(layer, k)) for k in
                                  ("weight_grad", "bias_grad", "running_mean", "running_var")
                                  if getattr(layer, k, None) is not None]
            runs.append(res)
    assert not np.isfinite(runs[0][0]).all()
    for i, (a, b) in enumerate(zip(*runs)):
        assert _bits(a) == _bits(b), f"result {i} differs between 1 and 2 threads"
