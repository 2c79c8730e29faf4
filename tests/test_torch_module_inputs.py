"""Parity with PyTorch on its own module tests' inputs.

PyTorch's ModuleInfo database (torch.testing._internal.common_modules) lists,
for each of its norm modules, the constructor arguments and inputs its own
module tests exercise: empty batches, no-batch-dim inputs, tracking
InstanceNorm, cumulative averages, no bias...  Each is run here through the
fastnorm layer of the same name and arguments and through torch, in float64,
in training and in eval mode: two forwards (running statistics updated
twice), then a backward; outputs, input and parameter gradients, running
statistics and num_batches_tracked must agree (state_dicts key for key).
The error inputs of the same database (bad eps, channels not divisible into
groups) must raise the same exception type with a message that matches.
"""
import numpy as np
import pytest

import fastnorm

NAMES = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d",
         "InstanceNorm3d", "GroupNorm", "LayerNorm", "RMSNorm", "LocalResponseNorm"]
TOL = dict(rtol=1e-9, atol=1e-11)


@pytest.fixture(scope="module")
def module_db(torch):
    from torch.testing._internal.common_modules import module_db

    infos = {m.module_cls.__name__: m for m in module_db if m.module_cls.__name__ in NAMES}
    assert sorted(infos) == sorted(NAMES)
    return infos


def _make(torch, info, ctor):
    """The torch module and the fastnorm layer of the same arguments, with
    the same random parameters and running statistics."""
    name = info.module_cls.__name__
    tm = info.module_cls(*ctor.args, **ctor.kwargs).to(torch.float64)
    kw = dict(ctor.kwargs)
    if name != "LocalResponseNorm":
        kw["dtype"] = np.float64
    fl = getattr(fastnorm, name)(*ctor.args, **kw)
    gen = torch.Generator().manual_seed(len(name))
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.5)
        for k, b in tm.named_buffers():
            if k == "running_mean":
                b.copy_(torch.randn(b.shape, generator=gen, dtype=torch.float64))
            elif k == "running_var":
                b.copy_(torch.rand(b.shape, generator=gen, dtype=torch.float64) + 0.5)
    fl.load_state_dict(tm.state_dict())
    return tm, fl


def _cases(torch, module_db):
    out = []
    for name in NAMES:
        info = module_db[name]
        for training in (True, False):
            inputs = info.module_inputs_func(info, device="cpu", dtype=torch.float64,
                                             requires_grad=True, training=training)
            for i, mi in enumerate(inputs):
                out.append((name, training, i, mi))
    return out


def test_module_inputs_match_torch(torch, module_db):
    cases = _cases(torch, module_db)
    assert any(mi.desc == "zero_batch" for _, _, _, mi in cases)
    gen = torch.Generator().manual_seed(0)
    for name, training, i, mi in cases:
        what = f"{name} {mi.desc or i} training={training}"
        tm, fl = _make(torch, module_db[name], mi.constructor_input)
        tm.train(training)
        fl.train(training)
        (x,) = mi.forward_input.args
        assert not mi.forward_input.kwargs, what
        x = x.detach()
        for step in range(2):
            xt = (x * (step + 1) + step).requires_grad_()
            xn = xt.detach().numpy().copy()
            yt = tm(xt)
            y = fl(xn)
            np.testing.assert_allclose(y, yt.detach().numpy(), **TOL, err_msg=what)
            g = torch.randn(yt.shape, generator=gen, dtype=torch.float64)
            yt.backward(g)
            dx = fl.backward(g.numpy())
            np.testing.assert_allclose(dx, xt.grad.numpy(), **TOL, err_msg=f"{what} dx")
            for p in ("weight", "bias"):
                tp = getattr(tm, p, None)
                if tp is not None and tp.grad is not None:
                    np.testing.assert_allclose(getattr(fl, p + "_grad"), tp.grad.numpy(),
                                               **TOL, err_msg=f"{what} {p}_grad")
                    tp.grad = None
            tsd, fsd = tm.state_dict(), fl.state_dict()
            assert list(tsd) == list(fsd), what
            for k, v in tsd.items():
                if k == "num_batches_tracked":
                    assert int(fsd[k]) == int(v), (what, step, int(fsd[k]), int(v))
                else:
                    np.testing.assert_allclose(fsd[k], v.numpy(), **TOL,
                                               err_msg=f"{what} {k} step {step}")


def test_module_error_inputs_raise_like_torch(torch, module_db):
    import re

    seen = 0
    for name in NAMES:
        info = module_db[name]
        if info.module_error_inputs_func is None:
            continue
        for e in info.module_error_inputs_func(info, device="cpu", dtype=torch.float64,
                                               requires_grad=False, training=True):
            ctor = e.module_error_input.constructor_input
            fwd = e.module_error_input.forward_input
            kw = dict(ctor.kwargs)
            kw["dtype"] = np.float64
            with pytest.raises(e.error_type) as info_exc:
                layer = getattr(fastnorm, name)(*ctor.args, **kw)
                layer(fwd.args[0].detach().numpy())     # fastnorm may refuse earlier
            assert re.search(e.error_regex, str(info_exc.value)), (name, str(info_exc.value))
            seen += 1
    assert seen >= 4
