"""The builds of the kernels (baseline x86-64, AVX2, AVX-512): which one loads,
and that they give bitwise identical results."""
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastnorm
from fastnorm import _kernels as baseline
from fastnorm import _native
from util import asan_loaded

X86 = platform.machine().lower() in ("x86_64", "amd64")
HAS_AVX2 = baseline.cpu_has_avx2()
HAS_AVX512 = baseline.cpu_has_avx512()
# the SIMD copies this CPU runs (each must have been built: see below)
SIMD_HERE = [isa for isa, ok in (("avx2", HAS_AVX2), ("avx512", HAS_AVX512)) if ok and X86]
# Every layer of the catalogue on its small shapes, and every kernel family
# on shapes with remainders after the vector widths, every storage dtype:
# train forward and backward, eval forward.
SCRIPT = r"""
import sys
import numpy as np
import fastnorm
from fastnorm._catalogue import CATALOGUE, BY_NAME
from fastnorm._native import kernels
rng = np.random.default_rng(3)
res = {"isa": np.array(kernels.isa())}
cases = [(e.name, e, s) for e in CATALOGUE for s in e.shapes] + [
    (n, BY_NAME[n], s) for n, s in [
        ("BatchNorm2d", (5, 6, 33, 35)), ("BatchNorm1d", (301, 70)),
        ("InstanceNorm2d", (3, 6, 47, 45)), ("LayerNorm", (37, 771)),
        ("LayerNorm", (3, 70001)), ("GroupNorm", (3, 12, 29, 31)),
        ("RMSNorm", (33, 1029)), ("LocalResponseNorm", (2, 9, 17, 19)),
        ("SwitchableNorm2d", (3, 6, 29, 31))]]
from fastnorm._catalogue import storage_dtypes
for dt in storage_dtypes():
    for name, entry, shape in cases:
        x = (rng.normal(size=shape) * 3 + 10).astype(dt)
        g = rng.normal(size=shape).astype(dt)
        layer = entry.layer(shape, dt, rng)
        key = f"{name}-{'x'.join(map(str, shape))}-{np.dtype(dt).name}"
        res[key + "-y"] = layer(x)
        res[key + "-dx"] = layer.backward(g)
        for p in ("weight_grad", "bias_grad", "running_mean", "running_var"):
            v = getattr(layer, p, None)
            if v is not None:
                res[key + "-" + p] = np.array(v)
        layer.eval()
        res[key + "-y-eval"] = layer(x)
np.savez(sys.argv[1], **res)
"""


def _outputs(tmp_path, isa):
    path = tmp_path / f"{isa}.npz"
    env = dict(os.environ, FASTNORM_ISA=isa)
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, check=True,
                   cwd=tmp_path, capture_output=True, text=True)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_widest_copy_is_built_and_chosen():
    if not SIMD_HERE:
        pytest.skip("not an x86-64 CPU with AVX2")
    if os.environ.get("FASTNORM_ISA", "auto") in ("auto", ""):
        assert _native.kernels.isa() == SIMD_HERE[-1], (
            f"this CPU runs the {SIMD_HERE[-1]} copy but fastnorm loaded "
            f"{_native.kernels.isa()} (copy not built?)")
    assert baseline.isa() == "baseline"


@pytest.mark.skipif(not SIMD_HERE, reason="needs an x86-64 CPU with AVX2")
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_simd_builds_agree_bitwise_with_baseline(tmp_path, isa):
    if isa not in SIMD_HERE:
        pytest.skip(f"this CPU does not run the {isa} copy")
    base = _outputs(tmp_path, "baseline")
    simd = _outputs(tmp_path, isa)
    assert str(base.pop("isa")) == "baseline" and str(simd.pop("isa")) == isa
    assert base.keys() == simd.keys() and len(base) > 60
    for k in base:
        np.testing.assert_array_equal(base[k], simd[k], err_msg=k, strict=True)


def test_bad_isa_request_is_refused(tmp_path):
    env = dict(os.environ, FASTNORM_ISA="avx10")
    out = subprocess.run([sys.executable, "-c", "import fastnorm"], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert ("FASTNORM_ISA must be 'auto', 'baseline', 'avx2' or 'avx512', got 'avx10'"
            in out.stderr)


def test_isa_the_cpu_lacks_is_refused(tmp_path):
    lacking = [isa for isa in ("avx2", "avx512") if isa not in SIMD_HERE]
    if not lacking:
        pytest.skip("this CPU runs every copy")
    env = dict(os.environ, FASTNORM_ISA=lacking[0])
    out = subprocess.run([sys.executable, "-c", "import fastnorm"], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert f"FASTNORM_ISA={lacking[0]} but this CPU lacks what that copy uses" in out.stderr


def test_import_names_the_chosen_copy():
    assert fastnorm._native.kernels.isa() in _native.ISAS


# CPU models of qemu-x86_64 without AVX, oldest first: qemu64 has SSE2 and
# SSE3 only (NumPy 2 needs x86-64-v2 and stops there), Nehalem adds SSSE3
# and SSE4.2 (x86-64-v2), still no AVX.
# qemu CPU model: the OpenBLAS core of the same generation.  NumPy's OpenBLAS
# is told which core it runs on: under qemu-user on an AMD EPYC host its own
# detection picks a core with instructions the emulated CPU lacks (SIGILL at
# import of NumPy 2.4 under -cpu Nehalem; fastnorm plays no part in it).
NO_AVX_CPUS = {"qemu64": "Prescott", "Nehalem": "Nehalem"}


def _qemu_or_skip():
    if asan_loaded():
        # the sanitized build needs its runtime preloaded, which qemu-user
        # cannot carry into the emulated process; this test is about CPUs
        pytest.skip("under AddressSanitizer (.ci/run's sanitizer step)")
    exe = shutil.which("qemu-x86_64")
    if exe is None or not X86:
        why = "qemu-x86_64 is not installed (Debian: qemu-user)" if X86 else "not x86-64"
        if os.environ.get("FASTNORM_REQUIRE_QEMU") == "1":
            pytest.fail(f"FASTNORM_REQUIRE_QEMU=1 but {why}")
        pytest.skip(why)
    return exe


def test_runs_on_a_cpu_without_avx(tmp_path):
    """Under qemu-x86_64 emulating a CPU without AVX, fastnorm loads its
    baseline kernels by itself (no FASTNORM_ISA) and every layer gives the
    bits the baseline copy gives on this CPU.  The oldest CPU model that
    this NumPy runs on is used: qemu64 (SSE2 and SSE3) where NumPy allows."""
    qemu = _qemu_or_skip()
    env = {k: v for k, v in os.environ.items() if k != "FASTNORM_ISA"}
    env["OMP_NUM_THREADS"] = "2"
    ran = None
    for cpu, core in NO_AVX_CPUS.items():
        env["OPENBLAS_CORETYPE"] = core
        out = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", "import numpy"],
                             env=env, cwd=tmp_path, capture_output=True, text=True)
        if out.returncode == 0:
            ran = cpu
            break
    assert ran is not None, f"NumPy imports under none of the qemu CPUs {list(NO_AVX_CPUS)}"
    path = tmp_path / "emulated.npz"
    subprocess.run([qemu, "-cpu", ran, sys.executable, "-c", SCRIPT, str(path)], env=env,
                   check=True, cwd=tmp_path, capture_output=True, text=True)
    with np.load(path) as f:
        emulated = {k: f[k] for k in f.files}
    check = subprocess.run(
        [qemu, "-cpu", ran, sys.executable, "-c",
         "from fastnorm import _kernels as k; print(k.cpu_has_avx2())"],
        env=env, cwd=tmp_path, check=True, capture_output=True, text=True)
    assert check.stdout.split() == ["False"], f"qemu -cpu {ran} reports AVX2"
    native = _outputs(tmp_path, "baseline")
    assert str(emulated.pop("isa")) == "baseline" and str(native.pop("isa")) == "baseline"
    assert emulated.keys() == native.keys() and len(native) > 60
    for k in native:
        np.testing.assert_array_equal(emulated[k], native[k], err_msg=f"{k} on qemu -cpu {ran}",
                                      strict=True)


def test_avx2_cpu_without_avx512_loads_the_avx2_copy(tmp_path):
    """Under qemu-x86_64 emulating an AVX2 CPU without AVX-512 (EPYC-Rome:
    AVX2, F16C), fastnorm chooses its AVX2 copy by itself, and the kernels
    run there."""
    qemu = _qemu_or_skip()
    if "avx2" not in SIMD_HERE:
        pytest.skip("the AVX2 copy is not built for this CPU")
    env = {k: v for k, v in os.environ.items() if k != "FASTNORM_ISA"}
    env["OPENBLAS_CORETYPE"] = "Zen"
    code = ("import numpy as np, fastnorm; from fastnorm._native import kernels; "
            "from fastnorm import _kernels as b; "
            "y = fastnorm.LayerNorm(40)(np.arange(80, dtype=np.float32).reshape(2, 40)); "
            "print(kernels.isa(), b.cpu_has_avx2(), b.cpu_has_avx512(), "
            "np.abs(y.mean(1)).max() < 1e-6)")
    out = subprocess.run([qemu, "-cpu", "EPYC-Rome", sys.executable, "-c", code], env=env,
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["avx2", "True", "False", "True"], out.stdout
