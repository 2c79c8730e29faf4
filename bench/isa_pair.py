"""Paired timing of two kernel copies (ISA builds) in one process.

    python bench/isa_pair.py                      # the two widest copies this CPU runs
    python bench/isa_pair.py --pair baseline,avx2 --dtypes float32,bfloat16
    python bench/isa_pair.py --threads 1 --repeat 31

Every fastnorm module that calls the kernels holds them as ``_kernels``; this
script rebinds that name to one copy, then the other, call after call, on the
same arrays (so the two copies see the same cache and the same machine
state), and prints per case the median time of each copy and the median of
the paired ratios (A's time over B's: > 1 means B is faster).  The copies give
the same bits (tests/test_isa.py), so only the time can differ.  It answers
whether a wider copy pays; it is not part of fastnorm-bench because a user
never chooses between copies.

Cases: every default case of fastnorm-bench (the catalogue's bench shapes and
modes), in each storage dtype asked for; 16-bit data go to a float32 layer
(mixed type), as fastnorm-bench --dtype does.
"""
import argparse
import statistics
import sys
import time

import numpy as np

import fastnorm
from fastnorm import _catalogue, _native
from fastnorm._dtypes import as_dtype


def copies_here():
    out = {}
    for isa in _native.ISAS:
        if _native._runs_here(isa):
            mod = _native._load(isa)
            if mod is not None:
                out[isa] = mod
    return out


def holders():
    """The fastnorm modules whose ``_kernels`` is the chosen copy (import
    fastnorm has imported every one)."""
    return [m for n, m in sys.modules.items()
            if n.startswith("fastnorm.") and getattr(m, "_kernels", None) is _native.kernels]


def bind(mods, kernels):
    for m in mods:
        m._kernels = kernels


def make_call(entry, shape, mode, dtype, rng):
    layer = entry.make(shape, np.float32 if dtype.itemsize == 2 else dtype)
    x = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    if mode == "eval" or mode == "eval-out":
        layer.eval()
        if mode == "eval":
            return lambda: layer(x)
        y = layer(x)
        return lambda: layer(x, out=y)
    layer.train()
    if mode in ("train", "forward"):
        return lambda: layer(x)
    if mode == "backward":
        layer(x)
        g = rng.standard_normal(shape).astype(np.float32).astype(dtype)
        return lambda: layer.backward(g)
    raise ValueError(mode)


def paired(fn, mods, ka, kb, repeat):
    ta, tb = [], []
    for k in (ka, kb, ka, kb):      # warm both
        bind(mods, k)
        fn()
    for i in range(repeat):
        order = (ka, kb) if i % 2 == 0 else (kb, ka)
        for k in order:
            bind(mods, k)
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            (ta if k is ka else tb).append(dt)
    ratios = [a / b for a, b in zip(ta, tb)]
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def main(argv=None):
    here = copies_here()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", default=None,
                   help=f"A,B among the copies this CPU runs ({','.join(here)}); "
                        "default: the two widest")
    p.add_argument("--dtypes", default="float32,bfloat16,float16")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=21)
    p.add_argument("--layers", default=None, help="comma-separated catalogue names")
    args = p.parse_args(argv)
    names = list(here)
    if args.pair is None:
        if len(names) < 2:
            sys.exit("isa_pair: this CPU runs only one kernel copy: " + ",".join(names))
        a, b = names[-2], names[-1]
    else:
        a, b = args.pair.split(",")
        for isa in (a, b):
            if isa not in here:
                sys.exit(f"isa_pair: copy {isa!r} is not built or this CPU cannot run it "
                         f"(here: {','.join(names)})")
    from threadpoolctl import threadpool_limits
    mods = holders()
    chosen = _native.kernels
    rng = np.random.default_rng(0)
    layers = set(args.layers.split(",")) if args.layers else None
    print(f"fastnorm {fastnorm.__version__}: {a} vs {b}, medians of {args.repeat} "
          f"alternating calls; ratio = median of paired {a}/{b} (> 1: {b} faster)")
    print(f"{'case':30s} {'dtype':9s} {'mode':9s} {'thr':>3s} {a + ' ms':>12s} "
          f"{b + ' ms':>12s} {'ratio':>7s}")
    try:
        for dname in args.dtypes.split(","):
            dt = as_dtype(dname)
            for entry in _catalogue.CATALOGUE:
                if layers is not None and entry.name not in layers:
                    continue
                for shape, modes in entry.bench:
                    for mode in modes:
                        fn = make_call(entry, shape, mode, dt, rng)
                        for thr in map(int, args.threads.split(",")):
                            with threadpool_limits(thr):
                                ma, mb, r = paired(fn, mods, here[a], here[b], args.repeat)
                            case = f"{entry.name} {'x'.join(map(str, shape))}"
                            print(f"{case:30s} {dname:9s} {mode:9s} {thr:3d} {ma * 1e3:12.4f} "
                                  f"{mb * 1e3:12.4f} {r:7.3f}", flush=True)
    finally:
        bind(mods, chosen)


if __name__ == "__main__":
    main()
