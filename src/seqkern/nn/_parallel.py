"""How the layers use threads: two tasks at once (run_pair), BLAS at one thread
around the layers' own NumPy products (blas_one_thread), and large products
split by rows over two threads (matmul).

The layers follow the kernels' rule (seqkern._threads): seqkern's threads do the
parallel work, and every BLAS call runs on one thread. A NumPy product on a
multi-threaded BLAS right after a kernel call has to wake BLAS's own worker
threads, which another program (or seqkern's idle OpenMP threads) may be holding
the cores from; and NumPy's BLAS is not always the library the kernels' guard
holds (NumPy and SciPy wheels each bring their own), so the layers hold every
BLAS library threadpoolctl finds.
"""

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
from threadpoolctl import ThreadpoolController

# (imported here, not on first use: a process forked while another thread was
# importing them would wait for ever on that import's lock in the child)
from seqkern._threads import (_blas_libraries, _c_calls, blas_single_thread,
                              effective_num_threads, threads)

_pool = None
_pool_lock = threading.Lock()


def _run_threads(n, fn):
    with threads(n):
        return fn()


def run_pair(f0, f1):
    """(f0(), f1()): at once on two Python threads, each with half of the calling
    thread's kernel threads, when it has two or more; else one after the other.
    The kernels and NumPy's products release the GIL."""
    global _pool
    n = effective_num_threads()
    if n < 2:
        return f0(), f1()
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqkern-nn")
    half = n // 2
    fut = _pool.submit(_run_threads, n - half, f1)
    try:
        with threads(half):
            r0 = f0()
    finally:
        r1 = fut.result()    # waited for (and its error raised) even when f0 raised
    return r0, r1


_blas_libs = None
_blas_depth = 0
_blas_saved = []
_blas_lock = threading.Lock()


def _libraries():
    """[(get, set)] of every BLAS library loaded but the kernels' (which the kernels'
    guard holds): its C functions that read and set its thread count, called
    directly (threadpoolctl's setter lets only the first Python thread that calls
    it change OpenBLAS: from any other it did nothing); a library with no such
    functions seqkern knows, through threadpoolctl."""
    kernels = {get for _, get, _ in _blas_libraries() if get is not None}
    libs = []
    for lc in ThreadpoolController().select(user_api="blas").lib_controllers:
        get, put, wide = _c_calls(lc)
        if get is not None and get in kernels:
            continue
        if get is None:
            libs.append((lambda lc=lc: lc.num_threads, lc.set_num_threads))
            continue
        n = ctypes.c_int64 if wide else ctypes.c_int
        libs.append((ctypes.CFUNCTYPE(n)(get), ctypes.CFUNCTYPE(None, n)(put)))
    return libs


@contextmanager
def blas_one_thread():
    """Hold every BLAS library loaded at one thread inside the block, then restore
    their counts: the kernels' library through the kernels' own guard (one owner per
    library, so that neither guard restores a count while the other's block still
    runs), the others here. Re-entrant and shared by all Python threads (a depth
    count: the first in sets, the last out restores)."""
    global _blas_libs, _blas_depth, _blas_saved
    with blas_single_thread():
        with _blas_lock:
            if _blas_libs is None:
                _blas_libs = _libraries()
            if _blas_depth == 0:
                _blas_saved = [(put, get()) for get, put in _blas_libs]
                for put, n in _blas_saved:
                    if n != 1:
                        put(1)
            _blas_depth += 1
        try:
            yield
        finally:
            with _blas_lock:
                if _blas_depth > 0:         # 0: a child forked inside this block
                    _blas_depth -= 1
                    if _blas_depth == 0:
                        _restore()


def _restore():
    for put, n in _blas_saved:
        if n != 1:
            put(n)


def _after_fork_in_child():
    """A child forked while another thread was inside blas_one_thread (or held its
    lock, which the child would wait on for ever): the lock is new, the blocks of
    the parent's threads do not exist here, so BLAS gets its counts back; and the
    pool's worker thread did not come along."""
    global _blas_lock, _blas_depth, _pool, _pool_lock
    _blas_lock = threading.Lock()
    _pool_lock = threading.Lock()
    _pool = None
    if _blas_depth > 0:
        _blas_depth = 0
        _restore()


if hasattr(os, "register_at_fork"):
    # the lock held across fork, so that the child never starts between a count's
    # change and the depth's
    os.register_at_fork(before=lambda: _blas_lock.acquire(),
                        after_in_parent=lambda: _blas_lock.release(),
                        after_in_child=_after_fork_in_child)


PAR_MIN_PRODUCT = 1 << 25   # multiply-adds below which a product stays on one thread


def matmul(a, b):
    """a (M, K) @ b (K, N) -> (M, N), inside blas_one_thread. With two or more
    threads and at least PAR_MIN_PRODUCT multiply-adds, the two halves of the rows
    at once (run_pair)."""
    M, K = a.shape
    N = b.shape[1]
    with blas_one_thread():
        if effective_num_threads() < 2 or M < 2 or M * K * N < PAR_MIN_PRODUCT:
            return a @ b
        out = np.empty((M, N), np.result_type(a, b))
        h = M // 2
        run_pair(lambda: np.matmul(a[:h], b, out=out[:h]),
                 lambda: np.matmul(a[h:], b, out=out[h:]))
        return out
