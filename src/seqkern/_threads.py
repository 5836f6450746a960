"""Thread control: how many threads seqkern's kernels use, and BLAS's share.

seqkern parallelises with its own OpenMP loops, in which every BLAS call must
run on one thread: two thread pools that fight over the cores (OpenMP's and
OpenBLAS's) were measured to slow each other several-fold. So every public
kernel that calls BLAS runs inside :func:`blas_single_thread`, and splits its
large products over its own threads itself.
"""

import ctypes
import os
import threading
from contextlib import contextmanager

from seqkern._openmp_helpers import openmp_enabled


def _default_num_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
            if n >= 1:
                return n
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_num_threads = _default_num_threads()


def get_num_threads():
    """The number of threads seqkern's kernels use (default: the cores this
    process may run on, or ``OMP_NUM_THREADS`` when it is set)."""
    return _num_threads


def set_num_threads(n):
    """Set the number of threads seqkern's kernels use, for the whole process."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"n must be a positive integer, got {type(n).__name__}")
    n = int(n.__index__())
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    _num_threads = n


@contextmanager
def threads(n):
    """Context manager: run the enclosed kernels on ``n`` threads, then restore."""
    old = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(old)


def effective_num_threads():
    """Threads a kernel really uses: get_num_threads(), or 1 without OpenMP."""
    return _num_threads if openmp_enabled() else 1


def block_count():
    """How many blocks a kernel cuts a parallel step into: the machine's core
    count, a constant of the process, never the thread count, so that results do
    not depend on how many threads run the blocks."""
    return _BLOCKS


_BLOCKS = max(1, os.cpu_count() or 1)


# --- BLAS's own thread pool -------------------------------------------------

_blas_lock = threading.Lock()
_blas_libs = None
_blas_depth = 0
_blas_saved: list = []


def _blas_libraries():
    """(threadpoolctl's controller, get, set) for each BLAS library the kernels
    call (found once: _kernel_blas; get and set its thread count: _direct_calls)."""
    global _blas_libs
    if _blas_libs is None:
        from threadpoolctl import ThreadpoolController

        ctl = ThreadpoolController()
        libs = _kernel_blas([lc for lc in ctl.lib_controllers if lc.user_api == "blas"])
        _blas_libs = [(lc,) + _direct_calls(lc) for lc in libs]
    return _blas_libs


# Names under which scipy.linalg.cython_blas may import sgemm, by build.
_SGEMM_NAMES = ("scipy_sgemm_", "sgemm_", "scipy_sgemm_64_", "sgemm_64_", "sgemm64_", "sgemm")


def _kernel_blas(libs):
    """Of the BLAS libraries loaded, those the kernels call: they reach BLAS only
    through SciPy's cython_blas, so the one whose sgemm that module resolves to
    (NumPy's wheels bring a second OpenBLAS, which no kernel calls: holding it
    too cost ~1 us a call). All of them where that cannot be told."""
    import scipy.linalg.cython_blas as cython_blas

    try:
        module = ctypes.CDLL(cython_blas.__file__)
    except OSError:
        return libs
    for name in _SGEMM_NAMES:
        f = getattr(module, name, None)     # looked up through the module's dependencies
        if f is None:
            continue
        address = ctypes.cast(f, ctypes.c_void_p).value
        found = [lc for lc in libs if _address(lc.dynlib, name) == address]
        if found:
            return found
    return libs


def _address(dynlib, name):
    f = getattr(dynlib, name, None)
    return None if f is None else ctypes.cast(f, ctypes.c_void_p).value


def _direct_calls(lc):
    """(get, set) of a library's thread count: for OpenBLAS on its own threads (as
    NumPy's and SciPy's wheels ship it) its two C functions themselves, called
    through ctypes (~0.2 us each, against ~1 us through threadpoolctl: the guard
    around a single step's kernel took ~6 us of its ~25); else the controller's
    methods."""
    if lc.internal_api == "openblas" and getattr(lc, "threading_layer", None) == "pthreads":
        for prefix in ("", "scipy_"):
            for suffix in ("", "64_", "_64"):
                get = getattr(lc.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
                put = getattr(lc.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, get.argtypes = ctypes.c_int, []
                    put.restype, put.argtypes = None, [ctypes.c_int]
                    return get, put
    return lc.get_num_threads, lc.set_num_threads


class _BlasSingleThread:
    """See blas_single_thread."""

    __slots__ = ()

    def __enter__(self):
        global _blas_depth, _blas_saved
        with _blas_lock:
            if _blas_depth == 0:
                saved = []
                for _, get, put in _blas_libraries():
                    n = get()
                    if n != 1:
                        put(1)
                        saved.append((put, n))
                _blas_saved = saved
            _blas_depth += 1
        return self

    def __exit__(self, *exc):
        global _blas_depth, _blas_saved
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for put, n in _blas_saved:
                    put(n)
                _blas_saved = []
        return False


_BLAS_SINGLE_THREAD = _BlasSingleThread()


def blas_single_thread():
    """Context manager: hold the BLAS library the kernels call (SciPy's; every one
    loaded where that cannot be told) at one thread, then restore.

    Re-entrant and cheap: the first entry reads and sets each library's count
    (a few C calls), nested entries do nothing.
    """
    return _BLAS_SINGLE_THREAD


def blas_info():
    """[(internal_api, version, filepath, num_threads)] for each BLAS the kernels call."""
    return [
        (lc.internal_api, lc.version, lc.filepath, lc.get_num_threads())
        for lc, _, _ in _blas_libraries()
    ]
