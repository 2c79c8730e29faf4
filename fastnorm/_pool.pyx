# cython: language_level=3, boundscheck=False, wraparound=False
"""Recycling of large output buffers.

A fresh array of more than a few MiB costs a page fault per page on its
first write (glibc maps each allocation above 32 MiB afresh; the kernel
zeroes every page it hands out): for a 128 MiB output that is several
milliseconds, as much as the normalisation itself.  fastnorm therefore takes
the outputs it allocates (forward results, input gradients) of
THRESHOLD bytes or more from this pool.

A block is a 1-D uint8 NumPy array (NumPy asks the kernel for huge pages for
large allocations).  The caller gets an ndarray viewing a `Block` object,
whose buffer is the block's memory; when the last view of the output dies,
the Block dies and its memory goes back to the pool, idle, for the next
output of the same rounded size.  Idle memory is capped (`limit` bytes, the
oldest idle blocks are freed first), and `release()` frees it all.  Nothing
is shared between two live outputs: a block is idle or owned by exactly one
Block.

The pool is used with the GIL held (Block deallocation holds it too).
"""
from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_FillInfo

import os
from collections import OrderedDict

import numpy as np

# outputs below this many bytes use np.empty (glibc reuses its heap for them)
THRESHOLD = 8 << 20
# block sizes are rounded up to this (the huge page size)
GRAIN = 2 << 20
DEFAULT_LIMIT_MIB = 256
LIMIT_ENV = "FASTNORM_POOL_MIB"


cdef class Block:
    """Owner of one pooled block while an output views it."""
    cdef object mem             # the uint8 ndarray holding the memory
    cdef char *ptr
    cdef Py_ssize_t nbytes
    cdef Pool pool

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.ptr, self.nbytes, 0, flags)

    def __dealloc__(self):
        if self.pool is not None and self.mem is not None:
            self.pool.give_back(self.mem)


cdef class Pool:
    cdef public Py_ssize_t limit     # most idle bytes kept
    cdef public Py_ssize_t idle_bytes
    cdef public Py_ssize_t hits, misses
    cdef object idle                 # OrderedDict: id -> (key, mem), oldest first
    cdef dict by_key                 # key -> list of ids

    def __init__(self, limit):
        self.limit = limit
        self.idle = OrderedDict()
        self.by_key = {}
        self.idle_bytes = self.hits = self.misses = 0

    cdef object take(self, Py_ssize_t key):
        ids = self.by_key.get(key)
        if ids:
            i = ids.pop()
            _, mem = self.idle.pop(i)
            self.idle_bytes -= key
            self.hits += 1
            return mem
        self.misses += 1
        return np.empty(key, np.uint8)

    cdef give_back(self, mem):
        cdef Py_ssize_t key = mem.shape[0]
        if key > self.limit:
            return                       # dropped: NumPy frees it
        while self.idle_bytes + key > self.limit:
            self._drop_oldest()
        i = id(mem)
        self.idle[i] = (key, mem)
        self.by_key.setdefault(key, []).append(i)
        self.idle_bytes += key

    cdef _drop_oldest(self):
        i, (key, mem) = self.idle.popitem(last=False)
        self.by_key[key].remove(i)
        self.idle_bytes -= key

    def release(self):
        """Free every idle block; returns the bytes freed."""
        freed = self.idle_bytes
        self.idle.clear()
        self.by_key.clear()
        self.idle_bytes = 0
        return freed

    def set_limit(self, Py_ssize_t limit):
        if limit < 0:
            raise ValueError(f"pool limit must be >= 0 bytes, got {limit}")
        self.limit = limit
        while self.idle_bytes > self.limit:
            self._drop_oldest()

    def empty(self, shape, dtype, Py_ssize_t threshold=-1):
        """An uninitialised C-contiguous array of shape and dtype; from the
        pool when it is THRESHOLD bytes (or `threshold`) or more and the pool
        may hold it."""
        dt = np.dtype(dtype)
        count = 1
        for s in shape:
            count *= s
        cdef Py_ssize_t nbytes = count * dt.itemsize
        if nbytes < (THRESHOLD if threshold < 0 else threshold) or self.limit == 0:
            return np.empty(shape, dt)
        cdef Py_ssize_t key = (nbytes + GRAIN - 1) // GRAIN * GRAIN
        mem = self.take(key)
        cdef Block b = Block.__new__(Block)
        cdef unsigned char[::1] view = mem
        b.ptr = <char *>&view[0]
        b.nbytes = nbytes
        b.mem = mem
        b.pool = self
        return np.frombuffer(b, dt, count).reshape(shape)

    def info(self):
        return dict(limit=self.limit, idle_bytes=self.idle_bytes, idle_blocks=len(self.idle),
                    hits=self.hits, misses=self.misses, threshold=THRESHOLD)


def _limit_from_env():
    v = os.environ.get(LIMIT_ENV, "").strip()
    if not v:
        return DEFAULT_LIMIT_MIB << 20
    try:
        mib = float(v)
    except ValueError:
        raise ValueError(f"fastnorm: {LIMIT_ENV} must be a number of MiB, got {v!r}") from None
    if not mib >= 0:
        raise ValueError(f"fastnorm: {LIMIT_ENV} must be >= 0, got {v!r}")
    return int(mib * (1 << 20))


pool = Pool(_limit_from_env())
empty = pool.empty

# a kernel's temporaries of this many bytes or more (freed before the call
# returns, so the next call of the same size takes the same block back):
# fresh ones of 1-8 MiB, from glibc, fault their pages in again on many
# calls (GroupNorm backward on a 64x4096 batch: 2.1 ms, 1.0 ms pooled)
SCRATCH_THRESHOLD = 1 << 20


def scratch(shape, dtype):
    """An uninitialised array for a temporary of a call (pool.empty with
    SCRATCH_THRESHOLD)."""
    return pool.empty(shape, dtype, SCRATCH_THRESHOLD)
