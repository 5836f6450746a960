"""The one module that talks to OpenMP, what the build decided, and the thread
state every kernel call reads.

Kernels parallelise with ``prange(..., num_threads=n)``; this module reports
whether OpenMP was compiled in and how many threads it offers, measures what
handing work between two of its threads costs (handoff_ns), and keeps the
thread count and the BLAS guard's state (see "Thread state" below; seqkern's
_threads is their public face). Built without OpenMP, every kernel runs on one
thread and the tests pass the same.
"""

import operator
import os
import threading

from cython.parallel cimport parallel, threadid
from libc.stdint cimport int64_t
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
    through spin flags (_sync.h): what a split of each time step between two
    threads would pay per step; None without two threads."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if _forked:                     # no second thread in a forked child: see after_fork_in_child
        return None
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


# ---------------------------------------------------------------------------
# Thread state
#
# The thread count the kernels use (the process's default, or the calling
# thread's innermost threads(n) block) and the BLAS guard (blas_guard) change
# only inside the functions below, which run no Python code between their
# steps: an asynchronous exception (KeyboardInterrupt, a signal handler that
# raises) lands before or after one of them, never inside, so a block entered
# is always left whole and the guard's depth returns to 0. The GIL is their
# lock: nothing in them releases it.
# ---------------------------------------------------------------------------

# A few times the machine's cores: enough to oversubscribe on purpose, far from
# what libgomp fails to start (100000 threads crashed inside GOMP_parallel).
MAX_THREADS = 4 * (os.cpu_count() or 1)

cdef int _default_threads = 1
cdef bint _forked = False       # in a child forked from a seqkern process


class _Local(threading.local):
    stack = ()                  # this thread's threads(n) counts, innermost last (a list once used)


_local = _Local()


def checked_count(n):
    """``n`` as an int in [1, MAX_THREADS]; TypeError or ValueError naming n."""
    if isinstance(n, bool):
        raise TypeError(f"n must be a positive integer, got {type(n).__name__}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be a positive integer, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    if n > MAX_THREADS:
        raise ValueError(f"n must be a positive integer at most MAX_THREADS = {MAX_THREADS} "
                         f"(4 per core), got {n}")
    return n


def get_num_threads():
    """The number of threads seqkern's kernels use in the calling thread: its
    innermost ``threads(n)`` block's n, else the process's count (default: the
    cores this process may run on, or ``OMP_NUM_THREADS`` when set, at most
    MAX_THREADS)."""
    s = _local.stack
    return s[len(s) - 1] if s else _default_threads


def set_num_threads(n):
    """Set the number of threads seqkern's kernels use, for the whole process
    (a thread inside a ``threads(n)`` block keeps its block's n until it leaves
    it). 1 <= n <= MAX_THREADS (4 per core), else ValueError; TypeError for a
    non-integer. In a child forked from this process the kernels run on one
    thread whatever this says (see effective_num_threads)."""
    global _default_threads
    _default_threads = checked_count(n)


cdef class threads:
    """Context manager: the kernels the calling thread runs inside the block use
    ``n`` threads; other Python threads are not affected, and leaving the block
    restores what the calling thread had. Blocks nest; n is checked as
    set_num_threads checks it, when the object is made."""

    cdef readonly int n

    def __init__(self, n):
        self.n = checked_count(n)

    def __enter__(self):
        s = _local.stack
        if type(s) is not list:
            s = []
            _local.stack = s
        s.append(self.n)
        return self

    def __exit__(self, *exc):
        s = _local.stack
        if s:
            s.pop()
        return False


def effective_num_threads():
    """Threads a kernel called from this thread really uses: get_num_threads(),
    or 1 without OpenMP, and 1 in a child forked from a seqkern process."""
    if _forked or not SEQKERN_BUILT_WITH_OPENMP:
        return 1
    s = _local.stack
    return s[len(s) - 1] if s else _default_threads


def set_default_threads(int n):
    """The process's count at import (_threads has checked it)."""
    global _default_threads
    _default_threads = n


# A BLAS guard: holds a set of BLAS libraries at one thread while any call is
# inside it (a depth count over all Python threads), through the libraries' own C
# functions (get: int (void), set: void (int); BLIS takes and returns 64-bit
# counts), and restores their counts when the last call leaves. Entering and
# leaving hold the GIL from start to end (no Python call in between), so no other
# Python thread, and no fork, can come between a count's change and the depth's.
# blas_guard holds the libraries the kernels call; a guard made with ``inner``
# enters that one first and leaves it last (the layers' guard of the other
# libraries: one owner per library).

ctypedef int (*get_int_fn)() noexcept nogil
ctypedef void (*set_int_fn)(int) noexcept nogil
ctypedef int64_t (*get_wide_fn)() noexcept nogil
ctypedef void (*set_wide_fn)(int64_t) noexcept nogil

cdef enum:
    MAX_BLAS = 8


cdef class BlasGuard:
    """See seqkern._threads.blas_single_thread and seqkern.nn._parallel.blas_one_thread."""

    cdef int n                          # libraries held; -1 until set_calls
    cdef void* get[MAX_BLAS]
    cdef void* put[MAX_BLAS]
    cdef bint wide[MAX_BLAS]
    cdef int64_t saved[MAX_BLAS]        # count to restore on leaving
    cdef bint changed[MAX_BLAS]         # set to 1 on entering: restore saved
    cdef Py_ssize_t depth
    cdef BlasGuard inner

    def __cinit__(self, BlasGuard inner=None):
        self.n = -1
        self.depth = 0
        self.inner = inner

    def set_calls(self, calls):
        """The libraries the guard holds, once: [(get address, set address, wide)]
        (wide: the counts are 64-bit). Later calls change nothing."""
        cdef int i, n
        if self.n >= 0:
            return
        n = min(len(calls), MAX_BLAS)
        for i in range(n):
            self.get[i] = <void*><size_t>calls[i][0]
            self.put[i] = <void*><size_t>calls[i][1]
            self.wide[i] = bool(calls[i][2])
            self.changed[i] = False
        self.n = n

    @property
    def calls_set(self):
        return self.n >= 0

    @property
    def current_depth(self):
        """How many calls are inside the guard now (tests)."""
        return self.depth

    cdef int64_t _get(self, int i) noexcept:
        if self.wide[i]:
            return (<get_wide_fn>self.get[i])()
        return (<get_int_fn>self.get[i])()

    cdef void _set(self, int i, int64_t n) noexcept:
        if self.wide[i]:
            (<set_wide_fn>self.put[i])(n)
        else:
            (<set_int_fn>self.put[i])(<int>n)

    cdef void enter(self) noexcept:
        cdef int i
        cdef int64_t n
        if self.inner is not None:
            self.inner.enter()
        if self.depth == 0:
            for i in range(self.n):
                n = self._get(i)
                self.saved[i] = n
                self.changed[i] = n != 1
                if n != 1:
                    self._set(i, 1)
        self.depth += 1

    cdef void leave(self) noexcept:
        self.leave_own()
        if self.inner is not None:
            self.inner.leave()

    cdef void leave_own(self) noexcept:
        cdef int i
        if self.depth == 0:             # a child forked inside the block
            return
        self.depth -= 1
        if self.depth == 0:
            for i in range(self.n):
                if self.changed[i]:
                    self._set(i, self.saved[i])
                    self.changed[i] = False

    cdef void after_fork(self) noexcept:
        """The parent's calls inside the guard do not exist in the child: its depth
        goes back to 0 and the libraries get their counts back (an inner guard
        resets itself: every guard is in _guards)."""
        if self.depth > 0:
            self.depth = 1
            self.leave_own()

    def __enter__(self):
        self.enter()
        return self

    def __exit__(self, *exc):
        self.leave()
        return False


blas_guard = BlasGuard()
_guards = [blas_guard]              # every guard, for after_fork_in_child


def new_guard(calls, BlasGuard inner=None):
    """A guard of its own over ``calls`` (see BlasGuard.set_calls), entering
    ``inner`` first; reset in a forked child like blas_guard."""
    g = BlasGuard(inner)
    g.set_calls(calls)
    _guards.append(g)
    return g


def blas_calls_set():
    """Whether the kernels' guard has its libraries."""
    return (<BlasGuard>blas_guard).n >= 0


def set_blas_calls(calls):
    """The libraries the kernels' guard holds, once (BlasGuard.set_calls)."""
    blas_guard.set_calls(calls)


def blas_guard_depth():
    """How many kernel calls are inside the kernels' BLAS guard now (tests)."""
    return (<BlasGuard>blas_guard).depth


def after_fork_in_child():
    """In a child just forked: libgomp's thread pool did not come along (its
    threads exist only in the parent; a parallel region waiting for them never
    ends), so the kernels run on one thread from now on, and the count reads 1
    (inside a threads() block the child was forked in, get_num_threads() reads
    that block's count, but the kernels still run on one thread);
    the parent's calls inside the BLAS guards do not exist here: their depths go
    back to 0 and BLAS gets its counts back."""
    global _forked, _default_threads
    cdef BlasGuard g
    _forked = True
    _default_threads = 1
    for g in _guards:
        g.after_fork()
