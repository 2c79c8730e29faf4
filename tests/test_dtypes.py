"""The storage types are listed once per layer of the code: the C loops
(FN_STORAGE_TYPES in _storage.h), the Cython fused type (_kernels.pyx) and
the Python table (fastnorm/_dtypes.py).  They must agree, in every kernel
copy that can run here."""
import importlib

import numpy as np
import pytest

from fastnorm import _dtypes
from fastnorm._native import kernels


def _copies():
    out = [importlib.import_module("fastnorm._kernels")]
    for isa, runs in (("avx2", kernels.cpu_has_avx2()), ("avx512", kernels.cpu_has_avx512())):
        if runs:
            try:
                out.append(importlib.import_module(f"fastnorm._kernels_{isa}"))
            except ImportError:
                pass
    return out


@pytest.mark.parametrize("k", _copies(), ids=lambda k: k.isa())
def test_c_cython_and_python_lists_agree(k):
    assert k.storage_types() == [suf for suf, _ in _dtypes.STORAGE.values()]
    # the Cython fused type has a specialisation for every Python storage dtype
    for name in _dtypes.STORAGE:
        x = np.arange(12, dtype=_dtypes.as_dtype(name)).reshape(2, 3, 2)
        mean, var = np.empty(3), np.empty(3)
        k.batch_stats(_dtypes.kernel_view(x), mean, var)
        np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(0, 2)))
    with pytest.raises((TypeError, ValueError)):
        k.batch_stats(np.ones((2, 3, 2), np.int32), np.empty(3), np.empty(3))


def test_compute_dtypes():
    for name, (_, compute) in _dtypes.STORAGE.items():
        assert _dtypes.compute_dtype(_dtypes.as_dtype(name)) == np.dtype(compute)
        assert np.dtype(compute).itemsize >= _dtypes.as_dtype(name).itemsize
