"""The one module that talks to OpenMP, and what the build decided.

Kernels parallelise with ``prange(..., num_threads=n)``; this module only
reports whether OpenMP was compiled in and how many threads it offers, and
measures what handing work between two of its threads costs (handoff_ns).
Built without OpenMP, every kernel runs on one thread and the tests pass
the same.
"""

from cython.parallel cimport parallel, threadid
from libc.stdlib cimport free
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int sk_omp_max_threads(void) { return omp_get_max_threads(); }
    static int sk_omp_team_size(void) { return omp_get_num_threads(); }
    #else
    static int sk_omp_max_threads(void) { return 1; }
    static int sk_omp_team_size(void) { return 1; }
    #endif
    """
    int sk_omp_max_threads() noexcept nogil
    int sk_omp_team_size() noexcept nogil
    const char* SEQKERN_CFLAGS
    int SEQKERN_BUILT_WITH_OPENMP


cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

cdef extern from "_sync.h" nogil:
    ctypedef struct sk_flag:
        pass
    void sk_flag_set(sk_flag* f, long long v)
    void sk_flag_wait(sk_flag* f, long long v)


cdef void _ping_pong(sk_flag* fl, int rounds, double* seconds) noexcept nogil:
    """Two threads hand a counter back and forth ``rounds`` times through two
    flags (thread 0 times it); nothing if the team has fewer than two threads."""
    cdef int tid, r
    cdef timespec t0, t1
    with parallel(num_threads=2):
        tid = threadid()
        if sk_omp_team_size() == 2:
            if tid == 0:
                clock_gettime(CLOCK_MONOTONIC, &t0)
            for r in range(rounds):
                if tid == 0:
                    sk_flag_set(&fl[0], r)
                    sk_flag_wait(&fl[1], r)
                else:
                    sk_flag_wait(&fl[0], r)
                    sk_flag_set(&fl[1], r)
            if tid == 0:
                clock_gettime(CLOCK_MONOTONIC, &t1)
                seconds[0] = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec)


def handoff_ns(int rounds=20000):
    """Nanoseconds for two OpenMP threads to hand a step to each other and back
    through spin flags (_sync.h), the way the batch-1 LSTM forward on two threads
    hands each step across; None without two threads. On the 2-vCPU VM this was
    written on it moved, with where the host placed the vCPUs, between ~100 ns
    (the split (1,1000,128,128) forward then ran 1.55x faster than on one thread)
    and ~400 ns (1.2x slower)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    cdef sk_flag* fl = <sk_flag*>aligned_alloc(64, 128)
    cdef double seconds = -1.0
    if fl == NULL:
        raise MemoryError()
    try:
        sk_flag_set(&fl[0], -1)
        sk_flag_set(&fl[1], -1)
        with nogil:
            _ping_pong(fl, rounds, &seconds)
    finally:
        free(fl)
    return None if seconds < 0 else seconds / rounds * 1e9


def openmp_enabled():
    """True if the extensions were compiled with OpenMP."""
    return bool(SEQKERN_BUILT_WITH_OPENMP)


def omp_max_threads():
    """What the OpenMP runtime would use by default (1 without OpenMP)."""
    return sk_omp_max_threads()


def build_cflags():
    """The compiler flags the extensions were built with."""
    return SEQKERN_CFLAGS.decode()
