"""Build of fastnorm's extensions: fastnorm._kernels (with its AVX2 and AVX-512 copies) and fastnorm._pool.

OpenMP is used when the compiler accepts -fopenmp (checked by compiling and
linking a small program); otherwise the extension is built serial and a
warning says so.  Setting FASTNORM_DISABLE_OPENMP=1 forces the serial build.
The flags target any x86-64 CPU (no -march=native): the same build goes into a
wheel.  On x86-64 the same source is compiled a second time with -mavx2 -mf16c as
fastnorm._kernels_avx2, and a third time with AVX-512 (F, VL, BW, DQ, BF16) as
fastnorm._kernels_avx512; fastnorm._native loads the widest copy the CPU runs
(all copies round identically).  FASTNORM_DISABLE_AVX2=1 skips both SIMD
copies, FASTNORM_DISABLE_AVX512=1 the AVX-512 one.

FASTNORM_SANITIZE=address,undefined (any comma-separated list of GCC/Clang
sanitizers) builds every extension instrumented: -fsanitize=<list>
-fno-omit-frame-pointer -g -O1 (instead of -O3), plus, when "undefined" is in
the list, -fno-sanitize-recover=undefined (the first undefined-behaviour
report aborts) and -fno-wrapv (Python's own CFLAGS carry -fwrapv, which makes
signed overflow defined and so turns UBSan's check for it off); the
extensions are linked with -fsanitize=<list> too.  Python itself is not
instrumented: run such a build with the sanitizer runtime preloaded (see
.ci/run).  Unset, the build is unchanged.  FASTNORM_EXTRA_CFLAGS /
FASTNORM_EXTRA_LDFLAGS append flags.  A build directory last used with other
flags is rebuilt in full.  Normal builds carry no debug information (-g0
after Python's own -g): the wheel is a third of the size.

Next to the extensions the build writes fastnorm/_build_info.py (compiler,
flags, Cython version, OpenMP, kernel copies), which fastnorm.show_config()
reports.  It is a build product: not in git, not in the sdist.
"""
import glob
import os
import platform
import pprint
import re
import shutil
import subprocess
import sys
import tempfile
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OMP_TEST = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def compiler_has_openmp(compiler):
    """Compile and link a small OpenMP program with the build's compiler."""
    tmp = tempfile.mkdtemp(prefix="fastnorm-omp-")
    try:
        src = os.path.join(tmp, "omp_test.c")
        with open(src, "w") as f:
            f.write(OMP_TEST)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
        compiler.link_executable(objs, os.path.join(tmp, "omp_test"),
                                 extra_postargs=["-fopenmp"])
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


AVX2_TEST = r"""
#include <immintrin.h>
int main(void) {
    __m256d a = _mm256_set1_pd(1.0);
    __m256i b = _mm256_add_epi64(_mm256_set1_epi64x(1), _mm256_set1_epi64x(2));
    return (int)_mm256_cvtsd_f64(a) + _mm256_extract_epi32(b, 0) == 4 ? 0 : 1;
}
"""


AVX512_TEST = r"""
#include <immintrin.h>
int main(void) {
    __m512 a = _mm512_set1_ps(1.0f);
    __m256i h = (__m256i)_mm512_cvtneps_pbh(a);
    __mmask16 k = _mm512_testn_epi32_mask(_mm512_castps_si512(a), _mm512_set1_epi32(1));
    return _mm256_extract_epi16(h, 0) == 0x3f80 && k == 0xffff ? 0 : 1;
}
"""

AVX2_FLAGS = ["-mavx2", "-mf16c"]
# no -mfma use: contraction is off (-ffp-contract=off) and no FMA is called
AVX512_FLAGS = AVX2_FLAGS + ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq",
                             "-mavx512bf16"]


def compiler_has(compiler, code, flags):
    """Compile a small SIMD program with the build's compiler (x86-64 only)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    tmp = tempfile.mkdtemp(prefix="fastnorm-simd-")
    try:
        src = os.path.join(tmp, "simd_test.c")
        with open(src, "w") as f:
            f.write(code)
        compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SANITIZE_ENV = "FASTNORM_SANITIZE"


def sanitizer_flags():
    """(compile flags, link flags) for FASTNORM_SANITIZE; ([], []) when unset."""
    value = os.environ.get(SANITIZE_ENV, "").strip()
    if value in ("", "0"):
        return [], []
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names or not all(re.fullmatch(r"[a-z][a-z0-9-]*", n) for n in names):
        raise SystemExit(f"fastnorm: {SANITIZE_ENV} must be a comma-separated list of "
                         f"sanitizers such as 'address,undefined', got {value!r}")
    fsan = "-fsanitize=" + ",".join(names)
    cflags = [fsan, "-fno-omit-frame-pointer", "-g", "-O1"]
    if "undefined" in names:
        cflags += ["-fno-sanitize-recover=undefined", "-fno-wrapv"]
    return cflags, [fsan]


class BuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            # the extensions compile side by side (-j), one per core
            self.parallel = max(1, min(4, os.cpu_count() or 1))

    def build_extensions(self):
        use_omp = os.environ.get("FASTNORM_DISABLE_OPENMP", "") in ("", "0")
        if use_omp and not compiler_has_openmp(self.compiler):
            use_omp = False
            warnings.warn(
                "fastnorm: the compiler has no OpenMP support (-fopenmp failed); "
                "building a serial extension. Kernels will use one thread.",
                stacklevel=1,
            )
            print("WARNING: fastnorm is built WITHOUT OpenMP", file=sys.stderr)
        use_avx2 = (os.environ.get("FASTNORM_DISABLE_AVX2", "") in ("", "0")
                    and compiler_has(self.compiler, AVX2_TEST, AVX2_FLAGS))
        use_avx512 = (use_avx2 and os.environ.get("FASTNORM_DISABLE_AVX512", "") in ("", "0")
                      and compiler_has(self.compiler, AVX512_TEST, AVX512_FLAGS))
        skipped = [e for e in self.extensions
                   if (e.name.endswith("_avx2") and not use_avx2)
                   or (e.name.endswith("_avx512") and not use_avx512)]
        if skipped:
            self.extensions = [e for e in self.extensions if e not in skipped]
            for e in skipped:
                # an AVX2 copy left in the build directory by an earlier build
                # must not go into this one (fastnorm would load it)
                stale = self.get_ext_fullpath(e.name)
                if os.path.exists(stale):
                    os.remove(stale)
        san_c, san_l = sanitizer_flags()
        if san_c:
            print(f"fastnorm: sanitizer build: {' '.join(san_c)}", file=sys.stderr)
        extra_c = os.environ.get("FASTNORM_EXTRA_CFLAGS", "").split()
        extra_l = os.environ.get("FASTNORM_EXTRA_LDFLAGS", "").split()
        for ext in self.extensions:
            # -ffp-contract=off: no fused multiply-add behind our back, so
            # every SIMD path rounds exactly like the baseline one.
            ext.extra_compile_args = (["-O3", "-g0"] if not san_c else []) + [
                "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
                "-Wno-psabi"] + san_c + extra_c
            ext.extra_link_args = san_l + extra_l
            if ext.name.endswith("_avx2"):
                # AVX2 and F16C (float16 conversions)
                ext.extra_compile_args += AVX2_FLAGS
            elif ext.name.endswith("_avx512"):
                ext.extra_compile_args += AVX512_FLAGS
            if use_omp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        # A build directory last used with other flags (a sanitizer build, say)
        # is rebuilt in full, never reused: setuptools alone would keep its
        # up-to-date extensions whatever flags built them.
        flags = repr([(e.name, e.extra_compile_args, e.extra_link_args)
                      for e in self.extensions])
        stamp = os.path.join(self.build_temp, "fastnorm-build-flags.txt")
        try:
            with open(stamp) as f:
                same = f.read() == flags
        except OSError:
            same = False
        if not same:
            self.force = self.compiler.force = True
        super().build_extensions()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(flags)
        self.write_build_info(use_omp, san_c)

    def build_info_path(self):
        # setuptools builds into build_lib even for in-place builds, then
        # copies (copy_extensions_to_source)
        return os.path.join(self.build_lib, "fastnorm", "_build_info.py")

    def copy_extensions_to_source(self):
        """In-place and editable builds: the build info goes with the extensions."""
        super().copy_extensions_to_source()
        package_dir = self.get_finalized_command("build_py").get_package_dir("fastnorm")
        self.copy_file(self.build_info_path(), os.path.join(package_dir, "_build_info.py"),
                       level=self.verbose)

    def write_build_info(self, use_omp, san_c):
        """fastnorm/_build_info.py in the build directory, beside the built
        extensions (copied to the source tree by in-place/editable builds)."""
        import Cython

        cc = list(self.compiler.compiler_so)
        try:
            out = subprocess.run([cc[0], "--version"], capture_output=True, text=True,
                                 timeout=60)
            version = out.stdout.splitlines()[0].strip() if out.returncode == 0 else ""
        except (OSError, IndexError, subprocess.SubprocessError):
            version = ""
        info = dict(
            compiler=version or cc[0],
            compiler_command=cc,
            extensions={e.name: dict(compile_args=list(e.extra_compile_args),
                                     link_args=list(e.extra_link_args))
                        for e in self.extensions},
            cython=Cython.__version__,
            openmp=bool(use_omp),
            sanitizers=" ".join(f for f in san_c if f.startswith("-fsanitize=")),
            build_python=platform.python_version(),
            build_platform=f"{platform.system()}-{platform.machine()}",
        )
        path = self.build_info_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write('"""How this copy of fastnorm was built: written by setup.py at build '
                    'time."""\n')
            f.write(f"BUILD_INFO = {pprint.pformat(info, width=88, sort_dicts=False)}\n")


def extensions():
    from Cython.Build import cythonize
    import numpy

    # The per-call fast paths (_kernels_fast.pxi) read arrays through the
    # NumPy C API.  Built against NumPy 2 (pyproject's build requirement),
    # the extension runs on NumPy 1.24 and newer (NPY_TARGET_VERSION).
    exts = [
        Extension(
            name,
            sources=[f"fastnorm/{name.split('.')[-1]}.pyx"],
            depends=sorted(glob.glob("fastnorm/_kernels*.p*") + glob.glob("fastnorm/*.h")),
            include_dirs=["fastnorm", numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                           ("NPY_TARGET_VERSION", "NPY_1_24_API_VERSION")],
        )
        for name in ("fastnorm._kernels", "fastnorm._kernels_avx2", "fastnorm._kernels_avx512")
    ]
    exts.append(Extension("fastnorm._pool", sources=["fastnorm/_pool.pyx"]))
    return cythonize(exts, compiler_directives={"language_level": 3},
                     nthreads=min(4, os.cpu_count() or 1))


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
