"""fastnorm: fast, deterministic CPU normalisation layers on NumPy arrays.

Layers follow PyTorch's names, arguments and semantics; kernels are
OpenMP-parallel Cython whose results do not depend on the thread count.
Threads are OpenMP's: limit them with threadpoolctl.threadpool_limits or
OMP_NUM_THREADS.
"""
from importlib.metadata import PackageNotFoundError, version as _version

# Loading the extension at import links the OpenMP runtime, so
# threadpoolctl sees (and can limit) it as soon as fastnorm is imported.
from . import _native  # noqa: F401
from . import functional
from ._modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d,
                       InstanceNorm2d, InstanceNorm3d, LayerNorm, LocalResponseNorm, RMSNorm)

try:
    __version__ = _version("fastnorm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d",
           "InstanceNorm3d", "GroupNorm", "LayerNorm", "RMSNorm", "LocalResponseNorm",
           "functional", "__version__"]
