"""show_config(): what this build of seqkern is and what it runs on."""

import os
import platform
import sys


def config():
    """The build and runtime configuration as a dict (what show_config prints)."""
    import numpy as np
    import scipy

    from seqkern import __version__
    from seqkern._dispatch import info
    from seqkern._openmp_helpers import build_cflags, omp_max_threads, openmp_enabled
    from seqkern._threads import blas_info, effective_num_threads, get_num_threads

    import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS so it is listed)

    levels, level, isa, kernel_flags = info()
    return {
        "seqkern": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "compiler_flags": build_cflags(),
        "isa_levels_compiled": levels,
        "isa_level": level,
        "isa": isa,
        "kernel_compiler_flags": kernel_flags,
        "openmp": openmp_enabled(),
        "omp_max_threads": omp_max_threads(),
        "num_threads": get_num_threads(),
        "effective_num_threads": effective_num_threads(),
        "blas": [
            {"api": api, "version": ver, "path": path, "num_threads": n}
            for api, ver, path, n in blas_info()
        ],
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def show_config():
    """Print the version, compiler flags, OpenMP, the BLAS SciPy uses, and thread counts."""
    c = config()
    print(f"seqkern {c['seqkern']}  (python {c['python']}, numpy {c['numpy']}, scipy {c['scipy']})")
    print(f"platform:        {c['platform']}")
    print(f"cpu:             {c['cpu']} ({c['cores']} cores)")
    print(f"compiler flags:  {c['compiler_flags']}")
    print(f"kernels:         level {c['isa_level']} ({c['isa']}: {c['kernel_compiler_flags']}); "
          f"compiled: {', '.join(c['isa_levels_compiled'])}")
    print(f"openmp:          {'on' if c['openmp'] else 'off'} (runtime default {c['omp_max_threads']} threads)")
    print(f"threads:         {c['num_threads']} requested, {c['effective_num_threads']} used by kernels")
    for b in c["blas"]:
        print(f"blas:            {b['api']} {b['version']} ({b['num_threads']} threads) {b['path']}")
