"""fastnorm.show_config(): what a bug report needs to know about this copy."""
import importlib.util
import os
import platform
import sys

from ._version import __version__

MODES = ("stdout", "dicts")


def _openmp_path(address):
    """The file mapped at `address` in this process (/proc/self/maps), or None."""
    if not address:
        return None
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                if lo <= address < hi and len(parts) == 6:
                    return parts[5].strip() or None
    except (OSError, ValueError):
        pass
    return None


def _openmp(kernels):
    """The OpenMP runtime fastnorm's kernels call, and any other loaded ones."""
    import threadpoolctl

    libs = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "openmp"]
    if not kernels.openmp_enabled():
        return dict(enabled=False, path=None, runtime=None, version=None,
                    others=[i["filepath"] for i in libs])
    path = _openmp_path(kernels.openmp_address())
    real = os.path.realpath(path) if path else None
    own = [i for i in libs if real and os.path.realpath(i["filepath"]) == real]
    others = [i["filepath"] for i in libs if i not in own]
    lib = own[0] if own else {}
    return dict(enabled=True, path=path, runtime=lib.get("prefix"),
                version=lib.get("version"), num_threads=lib.get("num_threads"),
                bundled=bool(path) and os.path.basename(os.path.dirname(path)) == "fastnorm.libs",
                others=others)


def config():
    """show_config's information as nested dicts of strings, numbers and lists."""
    import numpy
    import threadpoolctl

    from . import _pool
    from ._native import ISA_ENV, kernels

    try:
        from ._build_info import BUILD_INFO as build
    except ImportError:     # a build by other means than setup.py
        build = {}
    exts = build.get("extensions", {})
    cc = build.get("compiler_command", [])[1:]      # the flags Python's build adds
    base = exts.get("fastnorm._kernels", {}).get("compile_args")
    avx2 = exts.get("fastnorm._kernels_avx2", {}).get("compile_args")
    avx512 = exts.get("fastnorm._kernels_avx512", {}).get("compile_args")
    base = cc + base if base else None
    avx2 = cc + avx2 if avx2 else None
    avx512 = cc + avx512 if avx512 else None
    compiled = ["baseline"] + [isa for isa in ("avx2", "avx512")
                               if importlib.util.find_spec(f"fastnorm._kernels_{isa}")]
    return {
        "fastnorm": {"version": __version__, "path": os.path.dirname(os.path.abspath(__file__))},
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable,
                   "platform": f"{platform.system()} {platform.release()} {platform.machine()}"},
        "dependencies": {"numpy": numpy.__version__,
                         "threadpoolctl": threadpoolctl.__version__},
        "build": {"compiler": build.get("compiler", "not recorded"),
                  "compile_args": " ".join(base) if base else "not recorded",
                  "avx2_compile_args": " ".join(avx2) if avx2 else None,
                  "avx512_compile_args": " ".join(avx512) if avx512 else None,
                  "cython": build.get("cython", "not recorded"),
                  "openmp": build.get("openmp", bool(kernels.openmp_enabled())),
                  "sanitizers": build.get("sanitizers") or "none",
                  "python": build.get("build_python", "not recorded"),
                  "platform": build.get("build_platform", "not recorded")},
        "openmp": _openmp(kernels),
        "simd": {"compiled": compiled, "in_use": kernels.isa(),
                 "cpu_has_avx2": bool(kernels.cpu_has_avx2()),
                 "cpu_has_avx512": bool(kernels.cpu_has_avx512()),
                 ISA_ENV: os.environ.get(ISA_ENV) or "auto"},
        "threads": {"max_threads": kernels.max_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "fork": kernels.fork_state(),
        "output_pool": _pool.pool.info(),
    }


def show_config(mode="stdout"):
    """What a bug report needs: fastnorm's version and location, Python and
    numpy, how the extension was built (compiler, flags, Cython, OpenMP), the
    OpenMP runtime it calls and its path, the SIMD copies of the kernels
    compiled in and the one in use, the thread count of the calling thread,
    how fork() treats the kernels.

    mode="stdout" prints it; mode="dicts" returns it as nested dicts.
    """
    if mode not in MODES:
        raise ValueError(f"show_config: mode must be 'stdout' or 'dicts', got {mode!r}")
    info = config()
    if mode == "dicts":
        return info
    omp = info["openmp"]
    if omp["enabled"]:
        where = omp["path"] or "path not found"
        runtime = (f"{omp['runtime'] or 'unknown'} {omp['version'] or ''}".strip()
                   + f" at {where}" + (" (bundled in the wheel)" if omp.get("bundled") else ""))
    else:
        runtime = "none: built without OpenMP (kernels run on one thread)"
    b, s, t = info["build"], info["simd"], info["threads"]
    rows = [
        ("fastnorm", f"{info['fastnorm']['version']} at {info['fastnorm']['path']}"),
        ("python", f"{info['python']['version']} ({info['python']['implementation']}) "
                   f"{info['python']['executable']}"),
        ("platform", info["python"]["platform"]),
        ("numpy", info["dependencies"]["numpy"]),
        ("threadpoolctl", info["dependencies"]["threadpoolctl"]),
        ("compiler", b["compiler"]),
        ("compile flags", b["compile_args"]),
    ]
    if b["avx2_compile_args"]:
        rows.append(("avx2 copy flags", b["avx2_compile_args"]))
    if b["avx512_compile_args"]:
        rows.append(("avx512 copy flags", b["avx512_compile_args"]))
    rows += [
        ("cython", b["cython"]),
        ("built for", f"Python {b['python']} on {b['platform']}; sanitizers: {b['sanitizers']}"),
        ("openmp", runtime),
    ]
    for other in omp["others"]:
        rows.append(("openmp (other)", f"also loaded in this process: {other}"))
    rows += [
        ("simd compiled", ", ".join(s["compiled"])),
        ("simd in use", f"{s['in_use']} (FASTNORM_ISA={s['FASTNORM_ISA']}; CPU has AVX2: "
                        f"{'yes' if s['cpu_has_avx2'] else 'no'}, AVX-512 (F VL BW DQ BF16): "
                        f"{'yes' if s['cpu_has_avx512'] else 'no'})"),
        ("threads", f"{t['max_threads']} for this thread (OMP_NUM_THREADS="
                    f"{t['OMP_NUM_THREADS'] or 'unset'}; threadpoolctl limits apply)"),
        ("fork", "this process is a forked child whose OpenMP pool could not be reset: "
                 "every kernel runs on 1 thread" if info["fork"]["serial"] else
                 "the OpenMP pool is reset before each fork(), children keep their "
                 f"threads ({info['fork']['pauses']} resets in this process)"),
        ("output pool", ", ".join(f"{k}={v}" for k, v in info["output_pool"].items())),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return None
