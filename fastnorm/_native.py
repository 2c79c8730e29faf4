"""The compiled kernels fastnorm uses: one of two builds of _kernels.pyx.

``fastnorm._kernels`` is compiled for any x86-64 CPU; ``fastnorm._kernels_avx2``
is the same source compiled with -mavx2 (256-bit vectors).  At import the AVX2
copy is chosen when it was built and the CPU supports AVX2.  Both copies round
identically (explicit vector lanes combined in a fixed order, no fused
multiply-add), so the choice changes speed, never results.

The environment variable FASTNORM_ISA=baseline forces the baseline copy;
FASTNORM_ISA=avx2 requires the AVX2 copy (ImportError if it cannot run here).
"""
import os

from . import _kernels as _baseline

ISA_ENV = "FASTNORM_ISA"


def _load_avx2():
    try:
        from . import _kernels_avx2
    except ImportError:  # not built (non-x86 platform or compiler without -mavx2)
        return None
    return _kernels_avx2


def _choose():
    want = os.environ.get(ISA_ENV, "").strip().lower() or "auto"
    if want not in ("auto", "baseline", "avx2"):
        raise ImportError(f"fastnorm: {ISA_ENV} must be 'auto', 'baseline' or 'avx2', "
                          f"got {want!r}")
    if want == "baseline":
        return _baseline
    avx2 = _load_avx2() if _baseline.cpu_has_avx2() else None
    if avx2 is None and want == "avx2":
        why = ("this CPU has no AVX2" if not _baseline.cpu_has_avx2()
               else "fastnorm was built without its AVX2 kernels")
        raise ImportError(f"fastnorm: {ISA_ENV}=avx2 but {why}")
    return avx2 if avx2 is not None else _baseline


kernels = _choose()
