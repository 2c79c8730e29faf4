"""The compiled kernels fastnorm uses: one of up to three builds of _kernels.pyx.

``fastnorm._kernels`` is compiled for any x86-64 CPU; ``fastnorm._kernels_avx2``
is the same source compiled with -mavx2 -mf16c (256-bit vectors) and
``fastnorm._kernels_avx512`` with AVX-512 F/VL/BW/DQ/BF16 (512-bit vectors,
bfloat16 rounding in one instruction).  At import the widest copy that was
built and that the CPU runs is chosen.  All copies round identically (explicit
vector lanes combined in a fixed order, no fused multiply-add), so the choice
changes speed, never results.

The environment variable FASTNORM_ISA=baseline forces the baseline copy;
FASTNORM_ISA=avx2 or avx512 requires that copy (ImportError if it cannot run
here).
"""
import importlib
import os

from . import _kernels as _baseline
from . import _pool

ISA_ENV = "FASTNORM_ISA"
ISAS = ("baseline", "avx2", "avx512")       # narrowest first


def _runs_here(isa):
    return {"baseline": True, "avx2": _baseline.cpu_has_avx2(),
            "avx512": _baseline.cpu_has_avx512()}[isa]


# every copy loaded so far, configured for the per-call fast paths
_loaded = []
_bfloat16 = []      # the bfloat16 dtype, once fastnorm._dtypes has met it


def _configure(mod):
    """A copy's fast paths: the output pool for large outputs, and bfloat16
    when it is known (each copy is a module of its own, with its own state)."""
    if mod not in _loaded:
        mod.set_output_allocator(_pool.empty, _pool.THRESHOLD)
        for dt in _bfloat16:
            mod.register_bfloat16(dt)
        _loaded.append(mod)
    return mod


def register_bfloat16(dtype):
    """Called by fastnorm._dtypes when it first recognises bfloat16."""
    if not _bfloat16:
        _bfloat16.append(dtype)
        for mod in _loaded:
            mod.register_bfloat16(dtype)


def _load(isa):
    """The copy for isa, or None when it was not built (non-x86 platform, a
    compiler without the flags, FASTNORM_DISABLE_*)."""
    if isa == "baseline":
        return _configure(_baseline)
    try:
        return _configure(importlib.import_module(f"fastnorm._kernels_{isa}"))
    except ImportError:
        return None


def _choose():
    want = os.environ.get(ISA_ENV, "").strip().lower() or "auto"
    if want not in ("auto",) + ISAS:
        raise ImportError(f"fastnorm: {ISA_ENV} must be 'auto', 'baseline', 'avx2' or "
                          f"'avx512', got {want!r}")
    if want != "auto":
        if not _runs_here(want):
            raise ImportError(f"fastnorm: {ISA_ENV}={want} but this CPU lacks what that "
                              f"copy uses")
        mod = _load(want)
        if mod is None:
            raise ImportError(f"fastnorm: {ISA_ENV}={want} but fastnorm was built without "
                              f"its {want} kernels")
        return mod
    for isa in reversed(ISAS):
        mod = _load(isa) if _runs_here(isa) else None
        if mod is not None:
            return mod
    return _load("baseline")


kernels = _choose()
