"""The float64 reference twins (fastnorm/_reference.py), under the name the
tests import them by."""
from fastnorm._reference import *  # noqa: F401,F403
from fastnorm._reference import _axes, _bcast  # noqa: F401
