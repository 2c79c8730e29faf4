# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False, nonecheck=False
# The kernels of _kernels.pyx, compiled a third time with AVX-512 (F, VL, BW,
# DQ, BF16; see setup.py): the loops step over 16 float lanes (_storage.h,
# FN_VL) and bfloat16 rounds with VCVTNEPS2BF16.  fastnorm._native loads this
# copy when the CPU has those extensions.  Every reduction keeps the 8-lane
# accumulators of the other copies, so all three give bitwise identical
# results.
include "_kernels.pyx"
