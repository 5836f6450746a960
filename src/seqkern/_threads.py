"""Thread control: how many threads seqkern's kernels use, and BLAS's share.

- set_num_threads(n) sets the count for the whole process; threads(n) sets it
  for the calling Python thread only, inside its block (so blocks in several
  Python threads never undo each other). The default is the cores this process
  may run on, or OMP_NUM_THREADS. n above MAX_THREADS (4 per core) is refused
  with a ValueError; OMP_NUM_THREADS above it is clamped to it.
- A child forked from the process runs the kernels on one thread (libgomp's
  pool does not survive fork; the child would wait on it for ever), whatever
  its count says, as PyTorch's children do.

seqkern parallelises with its own OpenMP loops, in which every BLAS call must
run on one thread: two thread pools that fight over the cores (OpenMP's and
OpenBLAS's) were measured to slow each other several-fold. So every public
kernel that calls BLAS runs inside :func:`blas_single_thread`, and splits its
large products over its own threads itself.

The state behind both lives in _openmp_helpers, compiled, where no exception
(KeyboardInterrupt, a signal handler that raises) can land halfway through
changing it.
"""

import ctypes
import os


# Iterations an idle OpenMP thread spins before it sleeps (libgomp's
# GOMP_SPINCOUNT; one iteration is a pause instruction, tens of nanoseconds).
SPIN_COUNT = 3000


def _prefer_short_spins(environ=os.environ):
    """Unless the user chose (OMP_WAIT_POLICY or GOMP_SPINCOUNT set), have idle
    OpenMP threads spin for tens of microseconds, then sleep. libgomp's default
    spins for milliseconds on a core that another program, or the kernels' other
    threads, may need: with a busy process on the machine a 2-thread call can
    then take many times its 1-thread time. Not sleeping at once (OMP_WAIT_POLICY=
    PASSIVE): a thread that arrives at a step's barrier a little early would wait
    for a wake-up, and libgomp is shared with whatever else in the process loads
    it (PyTorch's wheels bring a libgomp of the same name, which then resolves to
    the one loaded first), whose many small parallel regions would each wake
    their threads. libgomp reads this once, when it loads: so here, before the
    first kernel module loads it, and taken back out right after (the finally:
    below), so that child processes see the environment as the user left it.
    Where a library loaded libgomp before seqkern (PyTorch imported first), its
    settings stand and this has no effect. Returns whether it set the variable."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
        return True
    return False


_set_policy = _prefer_short_spins()
try:
    from seqkern import _openmp_helpers  # noqa: E402  (loads libgomp: after the policy)
finally:
    if _set_policy:
        os.environ.pop("GOMP_SPINCOUNT", None)
from seqkern._openmp_helpers import (  # noqa: F401, E402  (the public ones are re-exported)
    MAX_THREADS,
    blas_guard_depth,
    effective_num_threads,
    get_num_threads,
    set_num_threads,
    threads,
)


def _default_num_threads():
    """OMP_NUM_THREADS when set to a positive integer, clamped to MAX_THREADS,
    else the cores this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
            if n >= 1:
                return min(n, MAX_THREADS)
        except ValueError:
            pass
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS))


_openmp_helpers.set_default_threads(_default_num_threads())

if hasattr(os, "register_at_fork"):
    # libgomp's threads stay in the parent: a child runs the kernels on one thread
    os.register_at_fork(after_in_child=_openmp_helpers.after_fork_in_child)


def block_count():
    """How many blocks a kernel cuts a parallel step into: the machine's core
    count, a constant of the process, never the thread count, so that results do
    not depend on how many threads run the blocks."""
    return _BLOCKS


_BLOCKS = max(1, os.cpu_count() or 1)


# --- BLAS's own thread pool -------------------------------------------------

_blas_libs = None


def _blas_libraries():
    """(threadpoolctl's controller, get, set) for each BLAS library the kernels
    call (found once: _kernel_blas); get and set are the addresses of the C
    functions that read and set its thread count (_c_calls), None where it has
    none seqkern knows (the guard then leaves it alone)."""
    global _blas_libs
    if _blas_libs is None:
        import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS, so that it is listed)
        from threadpoolctl import ThreadpoolController

        ctl = ThreadpoolController()
        libs = _kernel_blas([lc for lc in ctl.lib_controllers if lc.user_api == "blas"])
        found = [(lc,) + _c_calls(lc) for lc in libs]
        _openmp_helpers.set_blas_calls([(get, put, wide) for _, get, put, wide in found
                                        if get is not None])
        _blas_libs = [(lc, get, put) for lc, get, put, _ in found]
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


# internal_api: the names of the C functions that get and set its thread count,
# and whether those counts are 64-bit (threadpoolctl calls the same functions)
_COUNT_CALLS = {
    "openblas": ("openblas_get_num_threads", "openblas_set_num_threads", False),
    "mkl": ("MKL_Get_Max_Threads", "MKL_Set_Num_Threads", False),
    "blis": ("bli_thread_get_num_threads", "bli_thread_set_num_threads", True),
    "flexiblas": ("flexiblas_get_num_threads", "flexiblas_set_num_threads", False),
}


def _c_calls(lc):
    """(get address, set address, 64-bit counts) of a library's thread-count
    functions, as its build names them (SciPy's OpenBLAS: scipy_openblas_..., and
    ..64_ for 64-bit integers); (None, None, False) where there are none."""
    names = _COUNT_CALLS.get(lc.internal_api)
    if names is not None:
        get_name, set_name, wide = names
        for prefix in ("", "scipy_"):
            for suffix in ("", "64_", "_64"):
                get = _address(lc.dynlib, prefix + get_name + suffix)
                put = _address(lc.dynlib, prefix + set_name + suffix)
                if get is not None and put is not None:
                    return get, put, wide
    return None, None, False


def blas_single_thread():
    """Context manager: hold the BLAS library the kernels call (SciPy's; every one
    loaded where that cannot be told) at one thread, then restore.

    Re-entrant, shared by all Python threads (the first call in reads and sets
    each library's count through its C functions, the last one out restores it;
    see _openmp_helpers: no exception can land between those steps), and cheap.
    """
    if _blas_libs is None:
        _blas_libraries()
    return _openmp_helpers.blas_guard


def blas_info():
    """[(internal_api, version, filepath, num_threads)] for each BLAS the kernels call."""
    return [
        (lc.internal_api, lc.version, lc.filepath, lc.get_num_threads())
        for lc, _, _ in _blas_libraries()
    ]
