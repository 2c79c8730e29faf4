"""Helpers shared by the tests."""
import numpy as np


def finite_differences(f, a, h=1e-6):
    """Central differences of the scalar f() with respect to each element of
    the array a, which f reads (a is perturbed in place and restored)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g
