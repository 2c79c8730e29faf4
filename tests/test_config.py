"""fastnorm.show_config() and the version: what a bug report needs."""
import importlib.metadata
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import threadpoolctl
from threadpoolctl import threadpool_limits

import fastnorm
from fastnorm._native import kernels


def test_version_has_one_source():
    from fastnorm._version import __version__

    assert fastnorm.__version__ == __version__
    assert importlib.metadata.version("fastnorm") == __version__
    assert fastnorm.show_config("dicts")["fastnorm"]["version"] == __version__


def test_dicts_describe_this_process():
    info = fastnorm.show_config(mode="dicts")
    assert info["fastnorm"]["path"] == os.path.dirname(os.path.abspath(fastnorm.__file__))
    assert info["dependencies"]["numpy"] == np.__version__
    assert info["dependencies"]["threadpoolctl"] == threadpoolctl.__version__
    simd = info["simd"]
    assert simd["in_use"] == kernels.isa() and simd["in_use"] in simd["compiled"]
    assert simd["cpu_has_avx2"] == bool(kernels.cpu_has_avx2())
    assert "baseline" in simd["compiled"]
    b = info["build"]
    # installed by setup.py: the build recorded itself
    assert b["compiler"] != "not recorded" and b["cython"] != "not recorded"
    assert "-ffp-contract=off" in b["compile_args"]
    assert simd["cpu_has_avx512"] == bool(kernels.cpu_has_avx512())
    if "avx2" in simd["compiled"]:
        assert "-mavx2" in b["avx2_compile_args"]
        assert "-mavx2" not in b["compile_args"]
        assert "-mavx512f" not in b["avx2_compile_args"]
    if "avx512" in simd["compiled"]:
        assert "-mavx512bf16" in b["avx512_compile_args"]
    assert b["openmp"] == bool(kernels.openmp_enabled())
    with threadpool_limits(limits=1, user_api="openmp"):
        assert fastnorm.show_config("dicts")["threads"]["max_threads"] == 1


def test_openmp_runtime_is_the_one_threadpoolctl_controls():
    omp = fastnorm.show_config("dicts")["openmp"]
    if not kernels.openmp_enabled():
        assert not omp["enabled"] and omp["path"] is None
        pytest.skip("a serial build has no OpenMP runtime")
    path = omp["path"]
    assert path and os.path.exists(path), omp
    libs = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "openmp"]
    assert os.path.realpath(path) in {os.path.realpath(i["filepath"]) for i in libs}
    assert omp["runtime"] in {i["prefix"] for i in libs}
    # the wheel step of .ci/run installs the auditwheel-repaired wheel and
    # sets this: the runtime must be the copy inside the wheel
    if os.environ.get("FASTNORM_EXPECT_BUNDLED_OPENMP") == "1":
        libdir = os.path.join(os.path.dirname(os.path.dirname(fastnorm.__file__)),
                              "fastnorm.libs")
        assert omp["bundled"] and os.path.dirname(path) == libdir, (path, libdir)


def test_stdout_names_each_part(capsys):
    assert fastnorm.show_config() is None
    out = capsys.readouterr().out
    info = fastnorm.show_config("dicts")
    for want in (rf"^fastnorm +{re.escape(fastnorm.__version__)} at ",
                 rf"^numpy +{re.escape(np.__version__)}$",
                 rf"^compiler +{re.escape(info['build']['compiler'])}$",
                 r"^compile flags +.*-ffp-contract=off", rf"^simd in use +{kernels.isa()} ",
                 rf"^threads +{kernels.max_threads()} for this thread",
                 r"^fork +the OpenMP pool is reset before each fork\(\), children keep"):
        assert re.search(want, out, re.M), (want, out)
    if kernels.openmp_enabled():
        assert info["openmp"]["path"] in out


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be 'stdout' or 'dicts', got 'json'"):
        fastnorm.show_config("json")


def test_forced_baseline_is_reported(tmp_path):
    code = "import fastnorm; s = fastnorm.show_config('dicts')['simd']; print(s['in_use'], s['FASTNORM_ISA'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, FASTNORM_ISA="baseline"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["baseline", "baseline"]
