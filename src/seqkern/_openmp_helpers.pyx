"""The one module that talks to OpenMP, and what the build decided.

Kernels parallelise with ``prange(..., num_threads=n)``; this module only
reports whether OpenMP was compiled in and how many threads it offers.
Built without OpenMP, every kernel runs on one thread and the tests pass
the same.
"""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int sk_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int sk_omp_max_threads(void) { return 1; }
    #endif
    """
    int sk_omp_max_threads() noexcept nogil
    const char* SEQKERN_CFLAGS
    int SEQKERN_BUILT_WITH_OPENMP


def openmp_enabled():
    """True if the extensions were compiled with OpenMP."""
    return bool(SEQKERN_BUILT_WITH_OPENMP)


def omp_max_threads():
    """What the OpenMP runtime would use by default (1 without OpenMP)."""
    return sk_omp_max_threads()


def build_cflags():
    """The compiler flags the extensions were built with."""
    return SEQKERN_CFLAGS.decode()
