"""Build seqkern's Cython extensions.

Environment variables read at build time:

SEQKERN_NO_OPENMP=1   build without OpenMP (every kernel then runs on one thread).
SEQKERN_PORTABLE=1    a build that travels (what a wheel is): the kernel modules are
                      compiled once per instruction-set level (x86-64: sse2, avx2 =
                      x86-64-v3, avx512 = x86-64-v4; elsewhere: generic) and
                      seqkern._dispatch picks the best one the CPU supports at import.
                      The default is one ``-march=native`` level, since a source
                      install is built where it runs.

The build prints what it decided. Generated C files go to ``build/cython`` and never
into the source tree or the wheel. No flag that changes the meaning of NaN or Inf
(``-ffast-math``, ``-ffinite-math-only``) is ever used.
"""

import glob
import hashlib
import os
import platform
import runpy
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


# Modules whose code depends on the instruction set: compiled once per level. The
# lowest level keeps the plain name (seqkern._rnn), the others get a suffix
# (seqkern._rnn_avx2); seqkern._dispatch imports the right one. The list lives in
# the package (read here without importing it).
KERNEL_MODULES = runpy.run_path(os.path.join(HERE, SRC, "_kernels.py"))["KERNEL_MODULES"]

# x86-64's levels: the psABI's microarchitecture levels, lowest first.
X86_LEVELS = (("sse2", ["-march=x86-64", "-mtune=generic"]), ("avx2", ["-march=x86-64-v3"]),
              ("avx512", ["-march=x86-64-v4"]))


def _levels(notes):
    """[(name, flags)] of the instruction-set levels to compile, lowest first."""
    if _env_flag("SEQKERN_PORTABLE"):
        if platform.machine().lower() in ("x86_64", "amd64"):
            levels = [(n, f) for n, f in X86_LEVELS if _compiles(f)]
        else:
            levels = [("generic", [])]
        notes.append("portable build (SEQKERN_PORTABLE=1): kernels for "
                     + ", ".join(n for n, _ in levels) + ", chosen at import")
        return levels
    if _compiles(["-march=native"]):
        notes.append("tuned for this CPU: -march=native (set SEQKERN_PORTABLE=1 for a portable build)")
        return [("native", ["-march=native"])]
    notes.append("the compiler does not accept -march=native: generic code")
    return [("generic", [])]


def _decide_flags():
    # -fno-math-errno and -fno-trapping-math change no value (NaN and Inf
    # included): libm's errno and the floating-point exception flags are never
    # read. The second lets GCC vectorise the selects in _mathfun.h.
    compile_args = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-Wno-unused-function"]
    link_args = []
    notes = []
    levels = _levels(notes)

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
    return compile_args, link_args, openmp, levels, notes


def _level_source(pyx, suffix):
    """The .pyx to compile for a level: the source itself, or (suffix) a copy of it
    under build/ that Cython compiles as the module seqkern.<name><suffix>."""
    if not suffix:
        return pyx
    name = os.path.splitext(os.path.basename(pyx))[0]
    dst = os.path.join("build", "isa", name + suffix + ".pyx")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.exists(dst) or os.path.getmtime(dst) != os.path.getmtime(pyx):
        shutil.copy2(pyx, dst)      # keeps the mtime: Cython's rebuild check stays right
    return dst


def _build_id_header(config):
    """Write build/generated/_build_id.h, defining SEQKERN_BUILD_ID: a hash of
    this build's configuration (its levels and flags, OpenMP, the Python ABI),
    which every kernel module reports as BUILD_ID. seqkern._dispatch ignores a
    level module whose ID is not the baseline's: one left over in the source tree
    from an earlier build of other levels or flags. The file is rewritten only
    when the configuration changes; every extension depends on it, so such a
    change recompiles all of them, even where their sources are unchanged.
    Returns (the header's directory, its path)."""
    text = repr((config, sysconfig.get_config_var("EXT_SUFFIX")))
    build_id = hashlib.sha256(text.encode()).hexdigest()[:16]
    folder = os.path.join("build", "generated")
    path = os.path.join(folder, "_build_id.h")
    content = ("/* Generated by setup.py: the configuration of the build the kernel modules\n"
               " * belong to (see _build_info.pxi). */\n"
               f'#define SEQKERN_BUILD_ID "{build_id}"\n')
    os.makedirs(folder, exist_ok=True)
    try:
        with open(path) as f:
            unchanged = f.read() == content
    except OSError:
        unchanged = False
    if not unchanged:
        with open(path, "w") as f:
            f.write(content)
    print(f"seqkern build: build ID {build_id}", file=sys.stderr)
    return folder, path


def extensions():
    compile_args, link_args, openmp, levels, notes = _decide_flags()
    print("seqkern build: " + "; ".join(notes), file=sys.stderr)
    print("seqkern build: compile flags " + " ".join(compile_args), file=sys.stderr)
    # Every extension recompiles when a C header changes (they include each other)
    # or the build's configuration does (its ID's header).
    id_dir, id_header = _build_id_header((levels, compile_args, link_args, openmp,
                                          KERNEL_MODULES))
    headers = sorted(glob.glob(os.path.join(SRC, "*.h"))) + [id_header]
    exts = []
    for pyx in sorted(glob.glob(os.path.join(SRC, "_*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        # ISA-neutral modules are built once, at the lowest level's flags.
        for i, (level, level_flags) in enumerate(levels if name in KERNEL_MODULES else levels[:1]):
            suffix = "_" + level if i else ""
            flags = compile_args + level_flags
            exts.append(
                Extension(
                    "seqkern." + name + suffix,
                    [_level_source(pyx, suffix)],
                    include_dirs=[np.get_include(), SRC, id_dir],
                    depends=headers,
                    define_macros=[
                        ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                        ("SEQKERN_CFLAGS", '"%s"' % " ".join(flags)),
                        ("SEQKERN_LEVEL", '"%s"' % level),
                        ("SEQKERN_BUILT_WITH_OPENMP", "1" if openmp else "0"),
                    ],
                    extra_compile_args=flags,
                    extra_link_args=link_args,
                )
            )
    print("seqkern build: levels " + ", ".join(f"{n} ({' '.join(f) or 'baseline'})" for n, f in levels),
          file=sys.stderr)
    return cythonize(
        exts,
        build_dir=os.path.join("build", "cython"),
        include_path=["src", SRC],
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
