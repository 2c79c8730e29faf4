import os
import sys

import numpy as np
import pytest

# tests/ holds helper modules (reference.py, util.py) imported by name.
sys.path.insert(0, os.path.dirname(__file__))

try:
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None)
    settings.register_profile("dev", max_examples=100, deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # pragma: no cover
    pass


def pytest_report_header(config):
    import fastnorm
    from fastnorm._native import kernels as _kernels

    try:
        import torch
        tv = torch.__version__
    except ImportError:
        tv = "not installed"
    return (f"fastnorm {fastnorm.__version__} from {os.path.dirname(fastnorm.__file__)}; "
            f"openmp={_kernels.openmp_enabled()} max_threads={_kernels.max_threads()}; "
            f"numpy {np.__version__}; torch {tv}")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def torch():
    """PyTorch when installed; FASTNORM_REQUIRE_TORCH=1 (set by CI) makes its
    absence a failure instead of a skip."""
    try:
        import torch as t
    except ImportError:
        if os.environ.get("FASTNORM_REQUIRE_TORCH") == "1":
            pytest.fail("FASTNORM_REQUIRE_TORCH=1 but torch is not installed")
        pytest.skip("torch is not installed")
    return t
