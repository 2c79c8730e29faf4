"""Per-call cost of every layer and functional on a tiny input, against
np.add on the same array, PyTorch's module and PyTorch's functional.

    python bench/per_call.py [--repeat 15] [--min-time 0.02] [--dtype float32]

Each row times, interleaved (fastnorm.bench.measure, medians): np.add(x, x),
the fastnorm layer's eval call, the fastnorm functional, torch's module
(eval, no_grad) and torch's functional on the same values, one thread.
`x add` is the fastnorm time over np.add's (issue target: <= 2.5);
`vs torch` torch's time over fastnorm's (> 1: fastnorm faster).
"""
import argparse
import sys

import numpy as np
import threadpoolctl

import fastnorm
import fastnorm.functional as F
from fastnorm._dtypes import as_dtype
from fastnorm.bench import _to_torch, measure


def cases(dt, rng):
    """(name, x, fastnorm layer, fastnorm functional, torch module, torch functional)."""
    import torch
    import torch.nn.functional as T

    def arr(*shape):
        return rng.standard_normal(shape, dtype=np.float32).astype(dt)
    f32 = np.float32
    x4, xn, x2, x3 = arr(1, 16, 8, 8), arr(1, 16), arr(1, 768), arr(1, 1, 4096)
    rm, rv, w16, b16 = np.zeros(16, f32), np.ones(16, f32), np.ones(16, f32), np.zeros(16, f32)
    w768, b768, w4096 = np.ones(768, f32), np.zeros(768, f32), np.ones(4096, f32)
    t = {k: torch.from_numpy(v) for k, v in dict(rm=rm, rv=rv, w16=w16, b16=b16, w768=w768,
                                                  b768=b768, w4096=w4096).items()}
    out = [
        ("BatchNorm2d 1x16x8x8", x4, fastnorm.BatchNorm2d(16).eval(),
         lambda x: F.batch_norm(x, rm, rv, w16, b16), torch.nn.BatchNorm2d(16).eval(),
         lambda x: T.batch_norm(x, t["rm"], t["rv"], t["w16"], t["b16"])),
        ("BatchNorm1d 1x16", xn, fastnorm.BatchNorm1d(16).eval(),
         lambda x: F.batch_norm(x, rm, rv, w16, b16), torch.nn.BatchNorm1d(16).eval(),
         lambda x: T.batch_norm(x, t["rm"], t["rv"], t["w16"], t["b16"])),
        ("InstanceNorm2d 1x16x8x8", x4, fastnorm.InstanceNorm2d(16).eval(),
         lambda x: F.instance_norm(x), torch.nn.InstanceNorm2d(16).eval(),
         lambda x: T.instance_norm(x)),
        ("GroupNorm(4) 1x16x8x8", x4, fastnorm.GroupNorm(4, 16).eval(),
         lambda x: F.group_norm(x, 4, w16, b16), torch.nn.GroupNorm(4, 16).eval(),
         lambda x: T.group_norm(x, 4, t["w16"], t["b16"])),
        ("LayerNorm 1x768", x2, fastnorm.LayerNorm(768).eval(),
         lambda x: F.layer_norm(x, (768,), w768, b768), torch.nn.LayerNorm(768).eval(),
         lambda x: T.layer_norm(x, (768,), t["w768"], t["b768"])),
        ("RMSNorm 1x1x4096", x3, fastnorm.RMSNorm(4096).eval(),
         lambda x: F.rms_norm(x, (4096,), w4096), torch.nn.RMSNorm(4096).eval(),
         lambda x: T.rms_norm(x, (4096,), t["w4096"])),
        ("LocalResponseNorm 1x16x8x8", x4, fastnorm.LocalResponseNorm(5).eval(),
         lambda x: F.local_response_norm(x, 5), torch.nn.LocalResponseNorm(5).eval(),
         lambda x: T.local_response_norm(x, 5)),
        ("SwitchableNorm2d 1x16x8x8", x4, fastnorm.SwitchableNorm2d(16).eval(), None, None,
         None),
    ]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--min-time", type=float, default=0.02)
    p.add_argument("--dtype", default="float32")
    a = p.parse_args(argv)
    import torch
    dt = as_dtype(a.dtype)
    rng = np.random.default_rng(0)
    print(f"fastnorm {fastnorm.__version__}, torch {torch.__version__}, numpy "
          f"{np.__version__}; {a.dtype}; one thread; medians of {a.repeat} interleaved "
          "samples, microseconds per call")
    cols = (f"{'case':<28} {'np.add':>7} {'layer':>7} {'x add':>6} {'functional':>10} "
            f"{'x add':>6} {'torch module':>12} {'vs torch':>8} {'torch F':>8} {'vs F':>6}")
    print(cols + "\n" + "-" * len(cols))
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows(dt, rng, a)
    finally:
        torch.set_num_threads(was)
    print("\nx add: fastnorm time / np.add time; vs torch: torch module / fastnorm layer; "
          "vs F: torch functional / fastnorm functional")
    print("\nTraining: the layer's eval call, its training forward and its backward "
          "(layer.backward after a training forward: the input's and the parameters' "
          "gradients), against torch's module in training mode (forward recording "
          "autograd; backward: torch.autograd.grad of the input and the parameters)")
    cols = (f"{'case':<28} {'eval':>7} {'train':>7} {'x eval':>6} {'backward':>8} "
            f"{'x eval':>6} {'torch train':>11} {'vs torch':>8} {'torch bwd':>9} "
            f"{'vs torch':>8}")
    print(cols + "\n" + "-" * len(cols))
    torch.set_num_threads(1)
    try:
        training_rows(dt, np.random.default_rng(0), a)
    finally:
        torch.set_num_threads(was)
    print("\nx eval: time / the eval call's (issue target: <= 3); vs torch: torch / "
          "fastnorm (> 1: fastnorm faster)")
    return 0


def training_rows(dt, rng, a):
    import copy

    import torch
    from fastnorm.bench import _torch_callable
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        for name, x, layer, _, tmod, _ in cases(dt, rng):
            if x.shape == (1, 16):      # batch statistics need more than one value
                name = name.replace("1x16", "64x16")
                x = rng.standard_normal((64, 16), dtype=np.float32).astype(x.dtype)
            ev, tr = copy.deepcopy(layer).eval(), copy.deepcopy(layer).train()
            g = rng.standard_normal(x.shape, dtype=np.float32).astype(x.dtype)
            tr(x)
            fns = {"eval": lambda: ev(x), "train": lambda: tr(x),
                   "bwd": lambda: tr.backward(g)}
            if tmod is not None:
                tmod = copy.deepcopy(tmod).train()
                tx = _to_torch(x).clone().requires_grad_(True)
                try:
                    tmod(tx)
                    fns["ttrain"] = lambda: tmod(tx)
                    fns["tbwd"] = _torch_callable(tmod, x, g, "backward")
                    fns["tbwd"]()
                except Exception:  # noqa: BLE001  (no 16-bit kernel: "-")
                    fns.pop("ttrain", None)
                    fns.pop("tbwd", None)
            r = {k: v["median_s"] * 1e6 for k, v in measure(fns, a.repeat, a.min_time).items()}

            def col(k, w):
                return f"{r[k]:>{w}.2f}" if k in r else f"{'-':>{w}}"

            def ratio(num, den, w):
                if num not in r or den not in r:
                    return f"{'-':>{w}}"
                return f"{r[num] / r[den]:>{w - 1}.2f}x"
            print(f"{name:<28} {col('eval', 7)} {col('train', 7)} {ratio('train', 'eval', 6)} "
                  f"{col('bwd', 8)} {ratio('bwd', 'eval', 6)} {col('ttrain', 11)} "
                  f"{ratio('ttrain', 'train', 8)} {col('tbwd', 9)} {ratio('tbwd', 'bwd', 8)}")


def rows(dt, rng, a):
    import torch
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        for name, x, layer, func, tmod, tfunc in cases(dt, rng):
            tx = _to_torch(x)
            fns = {"add": lambda x=x: np.add(x, x), "layer": lambda: layer(x)}
            if func is not None:
                fns["func"] = lambda: func(x)
            if tmod is not None:
                def tm(tmod=tmod, tx=tx):
                    with torch.no_grad():
                        return tmod(tx)
                for k, f in (("tmod", tm), ("tfunc", lambda tx=tx, tfunc=tfunc: tfunc(tx))):
                    try:
                        f()     # torch may lack a 16-bit kernel: "-"
                        fns[k] = f
                    except Exception:  # noqa: BLE001
                        pass
            r = {k: v["median_s"] * 1e6 for k, v in measure(fns, a.repeat, a.min_time).items()}

            def col(k, w):
                return f"{r[k]:>{w}.2f}" if k in r else f"{'-':>{w}}"

            def ratio(v, w):
                return f"{v:>{w - 1}.2f}x" if v is not None else f"{'-':>{w}}"
            print(f"{name:<28} {col('add', 7)} {col('layer', 7)} "
                  f"{ratio(r['layer'] / r['add'], 6)} {col('func', 10)} "
                  f"{ratio(r['func'] / r['add'] if 'func' in r else None, 6)} "
                  f"{col('tmod', 12)} {ratio(r['tmod'] / r['layer'] if 'tmod' in r else None, 8)} "
                  f"{col('tfunc', 8)} "
                  f"{ratio(r['tfunc'] / r['func'] if 'tfunc' in r else None, 6)}")


if __name__ == "__main__":
    sys.exit(main())
