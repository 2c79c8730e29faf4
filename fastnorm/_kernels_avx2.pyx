# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False, nonecheck=False
# The kernels of _kernels.pyx, compiled a second time with -mavx2 (see
# setup.py); fastnorm._native loads this copy when the CPU has AVX2.  The
# source is the same and every reduction has a fixed lane order with no
# fused multiply-add, so both copies give bitwise identical results.
include "_kernels.pyx"
