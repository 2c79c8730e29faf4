"""fastnorm: fast, deterministic CPU normalisation layers on NumPy arrays.

Layers follow PyTorch's names, arguments and semantics; kernels are
OpenMP-parallel Cython whose results do not depend on the thread count.
Threads are OpenMP's: limit them with threadpoolctl.threadpool_limits or
OMP_NUM_THREADS.
"""
# Loading the extension at import links the OpenMP runtime, so
# threadpoolctl sees (and can limit) it as soon as fastnorm is imported.
from . import _native  # noqa: F401
from . import functional
from ._pool import pool as _output_pool
from ._modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d,
                       InstanceNorm2d, InstanceNorm3d, LayerNorm, LocalResponseNorm, RMSNorm,
                       SwitchableNorm1d, SwitchableNorm2d, SwitchableNorm3d)
from ._sync_batch_norm import SyncBatchNorm

from ._version import __version__
from ._config import show_config


def output_pool_info():
    """The output pool's state: a dict with limit and idle_bytes (bytes),
    idle_blocks, hits, misses and threshold (outputs of threshold bytes or
    more come from the pool)."""
    return _output_pool.info()


def set_output_pool_limit(nbytes):
    """Keep at most nbytes of idle output memory for reuse (0: no pool; the
    default is 256 MiB, or FASTNORM_POOL_MIB).  Idle blocks beyond it are
    freed now, oldest first."""
    _output_pool.set_limit(int(nbytes))


def release_output_pool():
    """Free every idle output block now; returns the number of bytes freed.
    Outputs still in use are not affected (they return to the pool when they
    die, up to the limit)."""
    return _output_pool.release()


__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d",
           "InstanceNorm3d", "GroupNorm", "LayerNorm", "RMSNorm", "LocalResponseNorm",
           "SwitchableNorm1d", "SwitchableNorm2d", "SwitchableNorm3d", "SyncBatchNorm",
           "functional", "output_pool_info", "set_output_pool_limit", "release_output_pool",
           "show_config", "__version__"]
