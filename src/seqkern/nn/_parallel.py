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

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
from threadpoolctl import ThreadpoolController

# (imported here, not on first use: a process forked while another thread was
# importing them would wait for ever on that import's lock in the child)
from seqkern import _openmp_helpers
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
        _wait_through_interrupts(fut)
        r1 = fut.result()    # f1's error raised (with f0's as its context) even when f0 raised
    return r0, r1


def _wait_through_interrupts(fut):
    """Wait until ``fut`` is done, even through a KeyboardInterrupt, raised after
    the wait: f1 writes into the layer's gradients, which must not change once
    run_pair's caller has its exception. A second KeyboardInterrupt stops the wait."""
    interrupted = None
    while True:
        try:
            wait([fut])
            break
        except KeyboardInterrupt as e:
            if interrupted is not None:
                raise
            interrupted = e
    if interrupted is not None:
        raise interrupted


_guard = None


def blas_one_thread():
    """Context manager: every BLAS library loaded held at one thread inside the
    block, then their counts restored: the kernels' library by the kernels' guard,
    the others by a guard of the same kind (_openmp_helpers.BlasGuard: re-entrant,
    shared by all Python threads, reset in a forked child) that enters the kernels'
    first, so that each library has one owner. Through the libraries' own C
    functions: threadpoolctl's setter changes OpenBLAS only from the first Python
    thread that ever called it."""
    global _guard
    if _guard is None:
        with _pool_lock:                            # (new in a forked child)
            if _guard is None:
                kernels = blas_single_thread()      # (finds the kernels' libraries)
                held = {get for _, get, _ in _blas_libraries() if get is not None}
                others = [c for c in map(_c_calls, ThreadpoolController().select(
                    user_api="blas").lib_controllers) if c[0] is not None and c[0] not in held]
                _guard = _openmp_helpers.new_guard(others, kernels)
    return _guard


def _after_fork_in_child():
    """The pool's worker thread did not come along to a forked child."""
    global _pool, _pool_lock
    _pool_lock = threading.Lock()
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
