"""Memory layouts: every layer and every functional gives, for a transposed,
sliced, reversed, Fortran-ordered, byte-swapped or unaligned argument, exactly
the bits it gives for contiguous copies of the same values, and never writes
to an argument it only reads.

fastnorm reads an argument its kernels cannot take directly through a
contiguous native-order copy (README: "Byte-swapped float arrays are accepted
(converted to native order)"), and the kernels' arithmetic depends only on
the shape ("Neither the units nor the merge order depend on the number of
threads"), so bitwise equality is the claim tested: no tolerance anywhere.
So that a broken fastnorm cannot pass by being consistently wrong, each test
also checks the contiguous call against tests/reference.py.

Every laid-out argument is a view into a base buffer (`Laid`); the base must
be unchanged byte for byte after the call, the gaps of a sliced view
included.  Running statistics updated in place must end up holding exactly
what contiguous copies receive, with nothing else in their base written.
"""
import dataclasses
import zlib

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastnorm
import fastnorm.functional as F
import reference as ref

DTYPES = [np.float32, np.float64]

# ---------------------------------------------------------------------------
# Layouts.  Each maker turns a contiguous array `a` into (base, view_of), where
# view_of(base) is a view with a's shape and values in that layout.


def _transposed(a):
    # Channels last for (N, C, *): contiguous in a permuted shape, transposed
    # back.  (A 2-D array's transpose is its Fortran order.)
    perm = (0,) + tuple(range(2, a.ndim)) + (1,) if a.ndim > 2 else (1, 0)
    inv = tuple(int(i) for i in np.argsort(perm))
    return np.ascontiguousarray(a.transpose(perm)), lambda b: b.transpose(inv)


def _sliced(a):
    # Every other element of the last axis.  The gaps hold NaN: a kernel that
    # read them would give other bits.
    base = np.full(a.shape[:-1] + (2 * a.shape[-1],), np.nan, a.dtype)
    base[..., ::2] = a
    return base, lambda b: b[..., ::2]


def _flipped(a):
    return np.ascontiguousarray(a[..., ::-1]), lambda b: b[..., ::-1]


def _reversed_batch(a):
    return np.ascontiguousarray(a[::-1]), lambda b: b[::-1]


def _fortran(a):
    return np.asfortranarray(a), lambda b: b


def _byteswapped(a):
    # '>f4' / '>f8' on a little-endian machine (the other order elsewhere).
    return a.astype(a.dtype.newbyteorder("S")), lambda b: b


def _unaligned(a):
    # The data at an odd byte offset into a uint8 buffer.
    base = np.full(a.nbytes + 1, 0xA5, np.uint8)

    def view_of(b):
        return b[1:].view(a.dtype).reshape(a.shape)

    view_of(base)[...] = a
    return base, view_of


MAKERS = {"transposed": _transposed, "sliced": _sliced, "flipped": _flipped,
          "reversed_batch": _reversed_batch, "fortran": _fortran,
          "byteswapped": _byteswapped, "unaligned": _unaligned}
LAYOUTS = list(MAKERS)
# A 1-D array transposed or in Fortran order is contiguous, and reversed is flipped.
LAYOUTS_1D = ["sliced", "flipped", "byteswapped", "unaligned"]


def _is_laid_out(v, layout):
    if layout == "byteswapped":
        return v.dtype.kind == "f" and not v.dtype.isnative
    if layout == "unaligned":
        return not v.flags.aligned
    return not v.flags.c_contiguous


class Laid:
    """A copy of the contiguous array `a` in `layout`, viewing a base buffer."""

    def __init__(self, a, layout):
        self.base, self.view_of = MAKERS[layout](a)
        self.view = self.view_of(self.base)
        self.before = self.base.tobytes()
        # Meaningful only if the view really is in that layout and holds a's values.
        assert _is_laid_out(self.view, layout), (layout, self.view.flags, self.view.dtype)
        assert self.view.shape == a.shape
        assert self.view.astype(a.dtype).tobytes() == a.tobytes()

    def assert_unchanged(self, what):
        assert self.base.tobytes() == self.before, f"{what} was written to"

    def assert_updated_to(self, expected, what):
        """The view holds exactly `expected`; the rest of the base is as it was."""
        want = np.frombuffer(self.before, self.base.dtype).reshape(self.base.shape).copy()
        self.view_of(want)[...] = expected
        assert self.view.astype(expected.dtype).tobytes() == expected.tobytes(), \
            f"{what} does not hold what contiguous copies receive"
        assert self.base.tobytes() == want.tobytes(), f"{what}: memory around it was written"


def assert_same_bits(got, want):
    assert got.keys() == want.keys()
    for k, w in want.items():
        g = got[k]
        if w is None:
            assert g is None, k
            continue
        assert isinstance(g, np.ndarray), k
        assert (g.shape, g.dtype) == (w.shape, w.dtype), k
        if g.tobytes() != w.tobytes():
            bits = f"u{w.itemsize}"
            diff = np.flatnonzero(np.ravel(g).view(bits) != np.ravel(w).view(bits))
            raise AssertionError(
                f"{k}: not bitwise identical to the call on contiguous copies; "
                f"{diff.size} of {w.size} elements differ, first at flat indices "
                f"{diff[:3].tolist()}: got {np.ravel(g)[diff[:3]]}, want {np.ravel(w)[diff[:3]]}")


# ---------------------------------------------------------------------------
# Cases.  A Spec names an operation and its options; run() calls fastnorm
# (a layer, or the functional pair forward + backward) and reference()
# computes the same in float64 from tests/reference.py.


@dataclasses.dataclass
class Spec:
    """A layer (api="layer", class cls) or a functional forward + backward
    pair, its options and the shape of its input."""

    id: str
    op: str                     # bn, in, gn, ln, rms, lrn
    shape: tuple
    api: str = "functional"     # or "layer"
    cls: str = None             # the layer's class
    train: bool = True          # layer mode / training / use_input_stats
    stats: bool = False         # running statistics given (layers: tracked)
    affine: bool = True
    momentum: float = 0.1
    groups: int = None          # gn
    nshape: tuple = None        # ln, rms: normalized_shape
    size: int = 3               # lrn

    @property
    def unbatched(self):
        """An InstanceNorm{k}d layer fed (C, *spatial): rank k + 1."""
        return (self.api == "layer" and self.op == "in"
                and len(self.shape) == int(self.cls[-2]) + 1)

    @property
    def pshape(self):
        if self.op in ("ln", "rms"):
            return self.nshape
        return (self.shape[0 if self.unbatched else 1],)

    @property
    def has(self):
        """The argument names of this case: arrays that may be laid out."""
        names = ["x", "g"]
        if self.affine and self.op != "lrn":
            names += ["weight"] if self.op == "rms" else ["weight", "bias"]
        if self.stats:
            names += ["running_mean", "running_var"]
        return names

    @property
    def updates_stats(self):
        return self.stats and self.train and self.op in ("bn", "in")

    def make(self, dtype):
        rng = np.random.default_rng(zlib.crc32(self.id.encode()))
        a = {"x": (rng.normal(size=self.shape) * 2 + 3).astype(dtype),
             "g": rng.normal(size=self.shape).astype(dtype),
             "weight": rng.uniform(0.5, 2, self.pshape).astype(dtype),
             "bias": rng.normal(size=self.pshape).astype(dtype),
             "running_mean": rng.normal(size=self.pshape).astype(dtype),
             "running_var": rng.uniform(0.5, 2, self.pshape).astype(dtype)}
        return {k: a[k] for k in self.has}

    # -- fastnorm ---------------------------------------------------------

    def run(self, a):
        return self._run_layer(a) if self.api == "layer" else self._run_functional(a)

    def _run_layer(self, a):
        dt = a["x"].dtype.newbyteorder("=")
        if self.op in ("bn", "in"):
            kw = dict(affine=self.affine, momentum=self.momentum)
            if self.op == "in":
                kw["track_running_stats"] = self.stats
            elif not self.stats:
                kw["track_running_stats"] = False
            layer = getattr(fastnorm, self.cls)(self.pshape[0], dtype=dt, **kw)
        elif self.op == "gn":
            layer = fastnorm.GroupNorm(self.groups, self.shape[1], affine=self.affine, dtype=dt)
        elif self.op == "ln":
            layer = fastnorm.LayerNorm(self.nshape, elementwise_affine=self.affine, dtype=dt)
        elif self.op == "rms":
            layer = fastnorm.RMSNorm(self.nshape, elementwise_affine=self.affine, dtype=dt)
        else:
            layer = fastnorm.LocalResponseNorm(self.size, alpha=0.2, beta=0.7, k=1.5)
        for k in ("weight", "bias", "running_mean", "running_var"):
            if k in a:
                getattr(layer, k)[...] = a[k]
        layer.train(self.train)
        res = {"y": layer(a["x"]), "dx": layer.backward(a["g"])}
        if self.op != "lrn":
            res.update(dw=layer.weight_grad, db=layer.bias_grad)
        if self.stats:
            res.update(running_mean=layer.running_mean.copy(),
                       running_var=layer.running_var.copy(),
                       nbt=layer.num_batches_tracked.copy())
        return res

    def _run_functional(self, a):
        x, g = a["x"], a["g"]
        w, b = a.get("weight"), a.get("bias")
        rm, rv = a.get("running_mean"), a.get("running_var")
        if self.op == "bn":
            y = F.batch_norm(x, rm, rv, w, b, training=self.train, momentum=self.momentum)
            grads = F.batch_norm_backward(g, x, rm, rv, w, b, training=self.train)
        elif self.op == "in":
            y = F.instance_norm(x, rm, rv, w, b, use_input_stats=self.train,
                                momentum=self.momentum)
            grads = F.instance_norm_backward(g, x, rm, rv, w, b, use_input_stats=self.train)
        elif self.op == "gn":
            y = F.group_norm(x, self.groups, w, b)
            grads = F.group_norm_backward(g, x, self.groups, w, b)
        elif self.op == "ln":
            y = F.layer_norm(x, self.nshape, w, b)
            grads = F.layer_norm_backward(g, x, self.nshape, w, b)
        elif self.op == "rms":
            y = F.rms_norm(x, self.nshape, w)
            grads = F.rms_norm_backward(g, x, self.nshape, w)
        else:
            y = F.local_response_norm(x, self.size, alpha=0.2, beta=0.7, k=1.5)
            grads = (F.local_response_norm_backward(g, x, self.size, alpha=0.2, beta=0.7,
                                                    k=1.5),)
        res = dict(zip(("y", "dx", "dw", "db"), (y, *grads)))
        if self.updates_stats:
            # The arrays passed were updated in place: their new values, native.
            res.update(running_mean=np.array(rm, dtype=x.dtype.newbyteorder("=")),
                       running_var=np.array(rv, dtype=x.dtype.newbyteorder("=")))
        return res

    # -- float64 reference --------------------------------------------------

    def reference(self, a):
        x, g = a["x"], a["g"]
        w, b = a.get("weight"), a.get("bias")
        rm, rv = a.get("running_mean"), a.get("running_var")
        if self.unbatched:
            x, g = x[None], g[None]
        out = {}
        if self.op == "bn" or (self.op == "in" and self.stats and not self.train):
            batch = self.train or not self.stats
            y, nrm, nrv, mean, var = ref.batch_norm(x, rm, rv, w, b, training=batch,
                                                    momentum=self.momentum,
                                                    num_batches_tracked=1)
            dx = ref.batch_norm_backward(g, x, mean, var, w, training=batch)[0]
            if self.op == "bn" and self.updates_stats:
                out.update(running_mean=nrm, running_var=nrv)
        elif self.op == "in":
            y, nrm, nrv = ref.instance_norm(x, rm, rv, w, b, momentum=self.momentum,
                                            num_batches_tracked=1)
            dx = ref.group_norm_backward(g, x, x.shape[1], w)[0]
            if self.stats:
                out.update(running_mean=nrm, running_var=nrv)
        elif self.op == "gn":
            y = ref.group_norm(x, self.groups, w, b)[0]
            dx = ref.group_norm_backward(g, x, self.groups, w)[0]
        elif self.op in ("ln", "rms"):
            rms = self.op == "rms"
            eps = float(np.finfo(x.dtype).eps) if rms else 1e-5
            y = ref.layer_norm(x, self.nshape, w, b, eps=eps, rms=rms)
            dx = ref.layer_norm_backward(g, x, self.nshape, w, eps=eps, rms=rms)[0]
        else:
            y = ref.local_response_norm(x, self.size, alpha=0.2, beta=0.7, k=1.5)[0]
            dx = ref.local_response_norm_backward(g, x, self.size, alpha=0.2, beta=0.7, k=1.5)
        if self.unbatched:
            y, dx = y[0], dx[0]
        out.update(y=y, dx=dx)
        return out

    def check_against_reference(self, a, res):
        """The contiguous call is right (so that no stub passes the tests)."""
        dtype = a["x"].dtype
        tol = 2e-4 if dtype == np.float32 else 1e-9
        for k, want in _reference(self, dtype).items():
            atol = tol * (1 + np.abs(want).max())
            if not (np.abs(res[k] - want) <= atol + tol * np.abs(want)).all():
                np.testing.assert_allclose(res[k], want, rtol=tol, atol=atol, err_msg=k)


_REFERENCE = {}


def _reference(spec, dtype):
    """spec.reference of spec.make(dtype), computed once per spec and dtype."""
    key = (spec.id, spec.api, np.dtype(dtype).str)
    if key not in _REFERENCE:
        _REFERENCE[key] = spec.reference(spec.make(dtype))
    return _REFERENCE[key]


def L(id, op, cls, shape, **kw):
    return Spec(id, op, shape, api="layer", cls=cls, **kw)


LAYER_SPECS = [
    L("BatchNorm1d-NC-train", "bn", "BatchNorm1d", (9, 4), stats=True),
    L("BatchNorm1d-NC-eval", "bn", "BatchNorm1d", (9, 4), stats=True, train=False),
    L("BatchNorm1d-NCL-train", "bn", "BatchNorm1d", (5, 4, 67), stats=True),
    L("BatchNorm1d-NCL-eval", "bn", "BatchNorm1d", (5, 4, 67), stats=True, train=False),
    L("BatchNorm2d-train", "bn", "BatchNorm2d", (3, 4, 9, 13), stats=True),
    L("BatchNorm2d-train-momentum-None", "bn", "BatchNorm2d", (3, 4, 9, 13), stats=True,
      momentum=None),
    L("BatchNorm2d-train-no-affine", "bn", "BatchNorm2d", (3, 4, 9, 13), stats=True,
      affine=False),
    L("BatchNorm2d-eval", "bn", "BatchNorm2d", (3, 4, 9, 13), stats=True, train=False),
    L("BatchNorm2d-eval-untracked", "bn", "BatchNorm2d", (3, 4, 9, 13), train=False),
    L("BatchNorm3d-train", "bn", "BatchNorm3d", (2, 3, 4, 5, 6), stats=True),
    L("BatchNorm3d-eval", "bn", "BatchNorm3d", (2, 3, 4, 5, 6), stats=True, train=False),
    L("InstanceNorm1d-train", "in", "InstanceNorm1d", (3, 4, 67)),
    L("InstanceNorm1d-tracked-train", "in", "InstanceNorm1d", (3, 4, 67), stats=True),
    L("InstanceNorm1d-tracked-eval", "in", "InstanceNorm1d", (3, 4, 67), stats=True,
      train=False),
    L("InstanceNorm2d-train-no-affine", "in", "InstanceNorm2d", (3, 4, 9, 13), affine=False),
    L("InstanceNorm2d-tracked-train", "in", "InstanceNorm2d", (3, 4, 9, 13), stats=True),
    L("InstanceNorm2d-tracked-eval", "in", "InstanceNorm2d", (3, 4, 9, 13), stats=True,
      train=False),
    L("InstanceNorm2d-unbatched-tracked-train", "in", "InstanceNorm2d", (4, 9, 13),
      stats=True),
    L("InstanceNorm3d-tracked-train", "in", "InstanceNorm3d", (2, 3, 4, 5, 6), stats=True),
    L("InstanceNorm3d-tracked-eval", "in", "InstanceNorm3d", (2, 3, 4, 5, 6), stats=True,
      train=False),
    L("GroupNorm", "gn", "GroupNorm", (3, 6, 5, 7), groups=2),
    L("GroupNorm-NC", "gn", "GroupNorm", (5, 6), groups=3),
    L("LayerNorm", "ln", "LayerNorm", (3, 4, 5, 7), nshape=(5, 7)),
    L("LayerNorm-no-affine", "ln", "LayerNorm", (3, 4, 67), nshape=(67,), affine=False),
    L("RMSNorm", "rms", "RMSNorm", (3, 4, 67), nshape=(67,)),
    L("RMSNorm-2d", "rms", "RMSNorm", (3, 4, 5, 7), nshape=(5, 7)),
    L("LocalResponseNorm", "lrn", "LocalResponseNorm", (3, 6, 5, 7)),
    L("LocalResponseNorm-even-window", "lrn", "LocalResponseNorm", (2, 7, 67), size=4),
]

# Slices over 512 KiB take the two-pass kernels: the "-long" cases.
FUNCTIONAL_SPECS = [
    Spec("batch_norm-train", "bn", (3, 4, 67), stats=True),
    Spec("batch_norm-NC-train", "bn", (9, 4), stats=True),
    Spec("batch_norm-eval", "bn", (3, 4, 67), stats=True, train=False),
    Spec("instance_norm", "in", (3, 4, 9, 13)),
    Spec("instance_norm-tracked", "in", (3, 4, 9, 13), stats=True),
    Spec("instance_norm-running-stats", "in", (3, 4, 67), stats=True, train=False),
    Spec("instance_norm-long", "in", (2, 2, 140_000), stats=True),
    Spec("group_norm", "gn", (3, 6, 5, 7), groups=2),
    Spec("group_norm-long", "gn", (2, 2, 70_000), groups=1),
    Spec("layer_norm", "ln", (3, 4, 5, 7), nshape=(5, 7)),
    Spec("layer_norm-long", "ln", (2, 140_000), nshape=(140_000,)),
    Spec("rms_norm", "rms", (3, 4, 67), nshape=(67,)),
    Spec("rms_norm-long", "rms", (2, 140_000), nshape=(140_000,)),
    Spec("local_response_norm", "lrn", (3, 6, 5, 7)),
    Spec("local_response_norm-even-window", "lrn", (2, 7, 67), size=4),
]


def _copies(a):
    return {k: v.copy() for k, v in a.items()}


def _check(spec, dtype, keys, layout):
    a = spec.make(dtype)
    ref_args = _copies(a)
    want = spec.run(ref_args)
    spec.check_against_reference(a, want)
    laid = {k: Laid(a[k], layout) for k in keys}
    args = {**_copies(a), **{k: v.view for k, v in laid.items()}}
    got = spec.run(args)
    assert_same_bits(got, want)
    for k, v in laid.items():
        if spec.updates_stats and spec.api == "functional" and k.startswith("running_"):
            v.assert_updated_to(ref_args[k], k)
        else:
            v.assert_unchanged(k)


def _check_each(spec, combos):
    """_check every (dtype, role, keys, layout) of combos; fail with the list
    of those that fail (each with its error), not only the first."""
    failures = []
    for dtype, role, keys, layout in combos:
        try:
            _check(spec, dtype, keys, layout)
        except Exception as e:      # an assertion, or fastnorm raising on the layout
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            failures.append(f"{np.dtype(dtype)} {role} {layout}: {type(e).__name__}: {msg}")
    if failures:
        pytest.fail(f"{len(failures)} of {len(combos)} calls fail (compared with the same "
                    "call on contiguous copies):\n  " + "\n  ".join(failures), pytrace=False)


ROLES = {"input": ("x",), "grad_output": ("g",), "parameters": ("weight", "bias"),
         "running_stats": ("running_mean", "running_var")}

# ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spec", LAYER_SPECS, ids=lambda s: s.id)
def test_layer(spec, layout):
    """Output, input gradient, weight/bias gradients, running statistics and
    num_batches_tracked of a layer fed a laid-out input (or output gradient),
    float32 and float64, are bitwise those of contiguous copies; the
    argument is left untouched."""
    _check_each(spec, [(dt, role, ROLES[role], layout)
                       for dt in DTYPES for role in ("input", "grad_output")])


def _functional_params():
    out = []
    for s in FUNCTIONAL_SPECS:
        roles = ["input", "grad_output"]
        if "weight" in s.has:
            roles.append("parameters")
        if s.stats:
            roles.append("running_stats")
        for role in roles:
            one_d = role in ("parameters", "running_stats") and len(s.pshape) == 1
            for layout in LAYOUTS_1D if one_d else LAYOUTS:
                out.append(pytest.param(s, role, layout, id=f"{s.id}-{role}-{layout}"))
    return out


@pytest.mark.parametrize("spec,role,layout", _functional_params())
def test_functional(spec, role, layout):
    """A functional forward + backward with laid-out arguments (input, output
    gradient, weight and bias, or running statistics) gives the bits of the
    call on contiguous copies; arguments only read are untouched, running
    statistics updated in place receive exactly the contiguous copies' values."""
    keys = tuple(k for k in ROLES[role] if k in spec.has)
    if spec.id.endswith("-long"):
        # There for the two-pass kernels: float32 only, one thread (the bits do
        # not depend on it: tests/test_threads.py; two-thread calls on a busy
        # two-core machine can spin for milliseconds).
        with threadpool_limits(1, user_api="openmp"):
            _check_each(spec, [(np.float32, role, keys, layout)])
    else:
        _check_each(spec, [(dt, role, keys, layout) for dt in DTYPES])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cls", ["BatchNorm2d", "InstanceNorm2d"])
def test_running_stats_over_several_steps(cls, layout):
    """Running statistics after three training steps (momentum=None:
    cumulative average) on laid-out inputs are bitwise those after the same
    steps on contiguous copies, and so is the eval output that uses them."""
    rng = np.random.default_rng(3)
    xs = [(rng.normal(size=(3, 4, 9, 13)) * (i + 1) + i).astype(np.float32) for i in range(4)]
    kw = {"track_running_stats": True} if cls.startswith("Instance") else {}
    a = getattr(fastnorm, cls)(4, momentum=None, **kw)
    b = getattr(fastnorm, cls)(4, momentum=None, **kw)
    for x in xs[:3]:
        a(x.copy())
        laid = Laid(x, layout)
        b(laid.view)
        laid.assert_unchanged("input")
    assert int(a.num_batches_tracked) == 3
    np.testing.assert_allclose(a.running_mean, np.mean([x.mean(axis=(0, 2, 3)) for x in xs[:3]],
                                                       axis=0), rtol=1e-5)
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert getattr(a, k).tobytes() == getattr(b, k).tobytes(), k
    laid = Laid(xs[3], layout)
    assert a.eval()(xs[3].copy()).tobytes() == b.eval()(laid.view).tobytes()


# ---------------------------------------------------------------------------
# Every layer of the catalogue (fastnorm/_catalogue.py), as it configures it,
# on its small shapes: an input or output gradient in any layout gives the
# bits of contiguous copies, in each mode, and is left untouched.

from fastnorm import _catalogue as cat  # noqa: E402

CAT_CASES = [(e, s) for e in cat.CATALOGUE for s in e.shapes]


def _catalogue_run(entry, shape, dtype, x, g):
    layer = entry.layer(shape, dtype, np.random.default_rng(7))
    res = {}
    for mode in entry.modes:
        layer.train(mode == "train")
        res[f"{mode} y"] = np.array(layer(x))
        res[f"{mode} dx"] = np.array(layer.backward(g))
        for k in ("weight_grad", "bias_grad", "mean_weight_grad", "var_weight_grad",
                  "running_mean", "running_var", "num_batches_tracked"):
            v = getattr(layer, k, None)
            res[f"{mode} {k}"] = None if v is None else np.array(v, copy=True)
    return res


@pytest.mark.parametrize("entry,shape", CAT_CASES, ids=[cat.case_id(*c) for c in CAT_CASES])
def test_catalogue_layer(entry, shape):
    """Every catalogue layer, every layout of its input and of its output
    gradient, float32 and float64: bitwise the call on contiguous copies."""
    failures = []
    for dtype in cat.storage_dtypes():
        rng = np.random.default_rng(1)
        x = (rng.normal(size=shape) * 2 + 3).astype(dtype)
        g = rng.normal(size=shape).astype(dtype)
        want = _catalogue_run(entry, shape, dtype, x.copy(), g.copy())
        for role in ("x", "g"):
            for layout in (LAYOUTS if len(shape) > 1 else LAYOUTS_1D):
                if layout == "byteswapped" and np.dtype(dtype).kind != "f":
                    continue            # bfloat16 has no byte-swapped form
                laid = Laid(x if role == "x" else g, layout)
                args = (laid.view, g.copy()) if role == "x" else (x.copy(), laid.view)
                try:
                    assert_same_bits(_catalogue_run(entry, shape, dtype, *args), want)
                    laid.assert_unchanged(role)
                except Exception as e:      # an assertion, or fastnorm raising
                    failures.append(f"{np.dtype(dtype)} {role} {layout}: "
                                    f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    if failures:
        pytest.fail("\n  ".join([f"{len(failures)} calls differ:"] + failures), pytrace=False)
