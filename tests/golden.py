"""Golden results: the bits of every layer and functional, to keep across a
reshaping of the code that must not change them.

    python tests/golden.py record PATH     # before the change (a JSON of digests)
    python tests/golden.py compare PATH    # after it: every array bitwise

Run both with the same FASTNORM_ISA (or each ISA in turn) and any thread
count (results do not depend on it).  Not part of the suite: the golden file
belongs to one build on one machine; the suite's own tests (thread and ISA
invariance, references) hold across machines.

Cases: every layer in float32 and float64, training then eval, forward twice
(running statistics advance) and backward, on shapes just off the kernels'
boundaries (units of 4096, blocks, 512 KiB one-pass slices, rows mode, tiles)
and around the work per thread; the eval fast path and out= (in place and
apart); strided and large-offset inputs; non-finite values; every functional
and its backward; moments.
"""
import hashlib
import json
import sys

import numpy as np

import fastnorm
import fastnorm.functional as F

ONE_PASS = 512 * 1024
DTYPES = (np.float32, np.float64)


def _util_rank():
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from util import OneRank
    return OneRank()


def _fill(layer, rng):
    for k in ("weight", "bias"):
        a = getattr(layer, k, None)
        if a is not None:
            a[...] = rng.uniform(0.5, 2, a.shape) if k == "weight" else rng.normal(size=a.shape)
    for k in ("mean_weight", "var_weight"):
        a = getattr(layer, k, None)
        if a is not None:
            a[...] = rng.normal(size=a.shape)
    return layer


def layer_cases():
    """(name, factory(dt), shape) of every layer case."""
    out = []
    bn = {2: fastnorm.BatchNorm1d, 3: fastnorm.BatchNorm1d, 4: fastnorm.BatchNorm2d,
          5: fastnorm.BatchNorm3d}
    inorm = {3: fastnorm.InstanceNorm1d, 4: fastnorm.InstanceNorm2d, 5: fastnorm.InstanceNorm3d}
    sw = {3: fastnorm.SwitchableNorm1d, 4: fastnorm.SwitchableNorm2d, 5: fastnorm.SwitchableNorm3d}
    for shape in [(97, 3, 1000), (9, 3, 4095), (9, 3, 4097), (5, 3, 8193), (1, 3, 1 << 18),
                  (1001, 70), (3, 300, 257), (2, 4, 9, 31, 33), (3, 5, 101, 47), (257, 600),
                  (33, 1100, 7), (300, 40, 31), (300, 40, 32), (1, 16, 8, 8), (1, 64, 112, 112),
                  (4, 3), (2, 3, 1)]:
        for mom in (0.1, None):
            out.append((f"BatchNorm m={mom}", lambda dt, s=shape, m=mom: bn[len(s)](
                s[1], momentum=m, dtype=dt), shape))
    out.append(("BatchNorm noaffine", lambda dt: fastnorm.BatchNorm2d(5, affine=False, dtype=dt),
                (3, 5, 7, 9)))
    out.append(("BatchNorm untracked", lambda dt: fastnorm.BatchNorm2d(
        5, track_running_stats=False, dtype=dt), (3, 5, 7, 9)))
    out.append(("SyncBatchNorm", lambda dt: fastnorm.SyncBatchNorm(
        5, dtype=dt, comm=_util_rank()), (3, 5, 7, 9)))
    for L in (4095, 4097, 8193, ONE_PASS // 4 - 1, ONE_PASS // 4 + 1, ONE_PASS // 8 + 1, 257):
        n = 1 if L > 10000 else 9
        out.append(("InstanceNorm", lambda dt, L=L: fastnorm.InstanceNorm1d(
            3, affine=True, track_running_stats=True, momentum=None, dtype=dt), (n, 3, L)))
    out.append(("InstanceNorm 2d", lambda dt: fastnorm.InstanceNorm2d(
        6, affine=True, track_running_stats=True, dtype=dt), (3, 6, 17, 19)))
    out.append(("InstanceNorm 3d", lambda dt: fastnorm.InstanceNorm3d(4, dtype=dt), (2, 4, 5, 6, 7)))
    out.append(("InstanceNorm unbatched", lambda dt: fastnorm.InstanceNorm2d(4, dtype=dt), (4, 9, 11)))
    for groups, shape in [(4, (5, 8, 4097)), (3, (12, 6, 31, 33)), (1, (1, 2, ONE_PASS // 8 + 3)),
                          (1, (1, 2, ONE_PASS // 4 + 3)), (16, (9, 32, 257)), (32, (16, 256, 32, 32)),
                          (2, (4, 6))]:
        out.append((f"GroupNorm g={groups}", lambda dt, g=groups, s=shape: fastnorm.GroupNorm(
            g, s[1], dtype=dt), shape))
    out.append(("GroupNorm noaffine", lambda dt: fastnorm.GroupNorm(2, 6, affine=False, dtype=dt),
                (3, 6, 50)))
    for k, shape in [(1, (63, 2049)), (1, (65, 1023)), (1, (129, 4097)), (2, (33, 3, 701)),
                     (1, (3, ONE_PASS // 4 + 7)), (1, (3, ONE_PASS // 8 + 7)), (1, (1, 96)),
                     (1, (64, 96)), (1, (8192, 768))]:
        out.append((f"LayerNorm k={k}", lambda dt, k=k, s=shape: fastnorm.LayerNorm(
            s[-k:], dtype=dt), shape))
        out.append((f"RMSNorm k={k}", lambda dt, k=k, s=shape: fastnorm.RMSNorm(
            s[-k:], dtype=dt), shape))
    out.append(("LayerNorm noaffine", lambda dt: fastnorm.LayerNorm(
        33, elementwise_affine=False, dtype=dt), (40, 33)))
    out.append(("LayerNorm nobias", lambda dt: fastnorm.LayerNorm(33, bias=False, dtype=dt), (40, 33)))
    out.append(("RMSNorm eps", lambda dt: fastnorm.RMSNorm(33, eps=1e-3, dtype=dt), (40, 33)))
    for size, shape in [(5, (3, 97, 331)), (4, (2, 7, 33, 333)), (1, (2, 5, 40)), (9, (2, 5, 40))]:
        out.append((f"LocalResponseNorm s={size}", lambda dt, n=size: fastnorm.LocalResponseNorm(
            n, alpha=0.5, k=0.5), shape))
    for shape in [(9, 8, 4097), (4, 6, 9, 11), (2, 4, 3, 5, 7)]:
        out.append(("SwitchableNorm", lambda dt, s=shape: sw[len(s)](s[1], dtype=dt), shape))
    out.append(("SwitchableNorm nobn", lambda dt: fastnorm.SwitchableNorm2d(
        6, using_bn=False, dtype=dt), (4, 6, 9, 11)))
    return out


def _inputs(shape, dt, seed, kind):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * 2 + 50
    if kind == "offset":
        x = x + 1e4
    x = x.astype(dt)
    g = rng.normal(size=shape).astype(dt)
    if kind == "nonfinite" and x.size > 4:
        x.flat[1] = np.nan
        x.flat[x.size // 2] = np.inf
        g.flat[3] = -np.inf
    if kind == "strided":
        x = np.asfortranarray(x)[..., ::-1] if x.ndim > 1 else x
    return x, g


def _lrn(layer):
    return isinstance(layer, fastnorm.LocalResponseNorm)


def run_layer(name, make, shape, dt, kind):
    rng = np.random.default_rng(3)
    layer = _fill(make(dt), rng)
    x, g = _inputs(shape, dt, len(name) + len(shape), kind)
    res = {}
    modes = (True, False) if hasattr(layer, "track_running_stats") else (True,)
    for mode in modes:
        layer.train(mode)
        for step in range(2):
            xs = x if step == 0 else np.ascontiguousarray(x) * dt(1.5)
            res[f"{mode}/{step}/y"] = np.array(layer(xs), copy=True)
        res[f"{mode}/dx"] = np.array(layer.backward(g), copy=True)
        if not _lrn(layer):
            for k in ("weight_grad", "bias_grad", "mean_weight_grad", "var_weight_grad",
                      "running_mean", "running_var", "num_batches_tracked"):
                v = getattr(layer, k, None)
                if v is not None:
                    res[f"{mode}/{k}"] = np.array(v, copy=True)
        if not _lrn(layer):
            xc = np.ascontiguousarray(x)
            out = np.empty_like(xc)
            res[f"{mode}/out"] = np.array(layer(xc, out=out), copy=True)
            inplace = xc.copy()
            layer(inplace, out=inplace)
            res[f"{mode}/inplace"] = inplace
    return res


def functional_cases(dt):
    rng = np.random.default_rng(9)
    x = (rng.normal(size=(9, 8, 4097)) + 3).astype(dt)
    g = rng.normal(size=x.shape).astype(dt)
    w, b = rng.uniform(0.5, 2, 8).astype(dt), rng.normal(size=8).astype(dt)
    rm, rv = rng.normal(size=8).astype(dt), rng.uniform(0.5, 2, 8).astype(dt)
    wl, bl = rng.uniform(0.5, 2, 4097).astype(dt), rng.normal(size=4097).astype(dt)
    res = {}
    for training in (True, False):
        a, c = rm.copy(), rv.copy()
        res[f"bn{training}/y"] = F.batch_norm(x, a, c, w, b, training=training, momentum=0.3)
        res[f"bn{training}/rm"], res[f"bn{training}/rv"] = a, c
        for i, v in enumerate(F.batch_norm_backward(g, x, rm, rv, w, b, training=training)):
            res[f"bn{training}/g{i}"] = v
    a, c = rm.copy(), rv.copy()
    res["in/y"] = F.instance_norm(x, a, c, w, b, momentum=0.2)
    res["in/rm"], res["in/rv"] = a, c
    for i, v in enumerate(F.instance_norm_backward(g, x, None, None, w, b)):
        res[f"in/g{i}"] = v
    res["in-eval/y"] = F.instance_norm(x, rm, rv, w, b, use_input_stats=False)
    res["gn/y"] = F.group_norm(x, 4, w, b)
    for i, v in enumerate(F.group_norm_backward(g, x, 4, w, b)):
        res[f"gn/g{i}"] = v
    res["ln/y"] = F.layer_norm(x, (4097,), wl, bl)
    for i, v in enumerate(F.layer_norm_backward(g, x, (4097,), wl, bl)):
        res[f"ln/g{i}"] = v
    res["rms/y"] = F.rms_norm(x, (4097,), wl)
    for i, v in enumerate(F.rms_norm_backward(g, x, (4097,), wl)):
        res[f"rms/g{i}"] = v
    res["lrn/y"] = F.local_response_norm(x, 3)
    res["lrn/g"] = F.local_response_norm_backward(g, x, 3)
    m = F.moments(x, axes=(0, 2))
    res["mom/count"], res["mom/mean"], res["mom/m2"] = (np.asarray(m.count), m.mean, m.m2)
    return {k: v for k, v in res.items() if v is not None}


def collect():
    out = {}
    for dt in DTYPES:
        dn = np.dtype(dt).name
        for i, (name, make, shape) in enumerate(layer_cases()):
            for kind in ("plain", "offset", "strided", "nonfinite"):
                if kind != "plain" and np.prod(shape) > 300000:
                    continue
                for k, v in run_layer(name, make, shape, dt, kind).items():
                    out[f"{dn}/{i}:{name}/{'x'.join(map(str, shape))}/{kind}/{k}"] = v
        for k, v in functional_cases(dt).items():
            out[f"{dn}/functional/{k}"] = np.asarray(v)
    return out


def digest(a):
    """sha256 of an array's dtype, shape and bits; NaNs made one canonical
    NaN first (their sign and payload are unspecified)."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        a = np.where(np.isnan(a), np.array(np.nan, a.dtype), a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def main(argv):
    what, path = argv[1], argv[2]
    got = {k: digest(v) for k, v in collect().items()}
    if what == "record":
        with open(path, "w") as f:
            json.dump(got, f, indent=0, sort_keys=True)
        print(f"recorded {len(got)} digests to {path}")
        return 0
    with open(path) as f:
        want = json.load(f)
    missing = sorted(set(want) ^ set(got))
    bad = [k for k in want if k in got and want[k] != got[k]]
    for k in missing[:20]:
        print("missing on one side:", k)
    for k in bad[:40]:
        print("differs:", k)
    print(f"{len(want)} arrays: {len(bad)} differ, {len(missing)} missing")
    return 1 if bad or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
