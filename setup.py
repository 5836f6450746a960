"""Build seqkern's Cython extensions.

Environment variables read at build time:

SEQKERN_NO_OPENMP=1   build without OpenMP (every kernel then runs on one thread).
SEQKERN_PORTABLE=1    do not tune for the building machine's CPU (for wheels that
                      travel); the default is ``-march=native``, since a source install
                      is built where it runs.

The build prints what it decided. Generated C files go to ``build/cython`` and never
into the source tree or the wheel. No flag that changes the meaning of NaN or Inf
(``-ffast-math``, ``-ffinite-math-only``) is ever used.
"""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join("src", "seqkern")


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiler():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def _compiles(flags, code="int main(void){return 0;}\n", link_flags=()):
    """True if the C compiler builds and links ``code`` with ``flags``."""
    tmp = tempfile.mkdtemp(prefix="seqkern-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        cmd = _compiler() + list(flags) + [src, "-o", os.path.join(tmp, "probe")] + list(link_flags)
        res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return res.returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;
}
"""


def _decide_flags():
    compile_args = ["-O3", "-fno-math-errno", "-Wno-unused-function"]
    link_args = []
    notes = []

    if _env_flag("SEQKERN_PORTABLE"):
        notes.append("portable build (SEQKERN_PORTABLE=1): no -march=native")
    elif _compiles(["-march=native"]):
        compile_args.append("-march=native")
        notes.append("tuned for this CPU: -march=native (set SEQKERN_PORTABLE=1 for a portable build)")
    else:
        notes.append("the compiler does not accept -march=native: generic code")

    if _env_flag("SEQKERN_NO_OPENMP"):
        openmp = False
        notes.append("OpenMP disabled by SEQKERN_NO_OPENMP=1")
    elif _compiles(["-fopenmp"], OPENMP_PROBE, ["-fopenmp"]):
        openmp = True
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
        notes.append("OpenMP found: -fopenmp in compile and link flags")
    else:
        openmp = False
        notes.append("OpenMP not available from this compiler: kernels will run on one thread")
    return compile_args, link_args, openmp, notes


def extensions():
    compile_args, link_args, openmp, notes = _decide_flags()
    print("seqkern build: " + "; ".join(notes), file=sys.stderr)
    print("seqkern build: compile flags " + " ".join(compile_args), file=sys.stderr)
    macros = [
        ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
        ("SEQKERN_CFLAGS", '"%s"' % " ".join(compile_args)),
        ("SEQKERN_BUILT_WITH_OPENMP", "1" if openmp else "0"),
    ]
    # Every extension recompiles when a C header changes (they include each other).
    headers = sorted(glob.glob(os.path.join(SRC, "*.h")))
    exts = []
    for pyx in sorted(glob.glob(os.path.join(SRC, "_*.pyx"))):
        name = "seqkern." + os.path.splitext(os.path.basename(pyx))[0]
        exts.append(
            Extension(
                name,
                [pyx],
                include_dirs=[np.get_include(), SRC],
                depends=headers,
                define_macros=macros,
                extra_compile_args=compile_args,
                extra_link_args=link_args,
            )
        )
    return cythonize(
        exts,
        build_dir=os.path.join("build", "cython"),
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
        nthreads=int(os.environ.get("SEQKERN_CYTHON_JOBS", "0")) or None,
    )


setup(ext_modules=extensions())
