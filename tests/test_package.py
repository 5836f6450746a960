"""Thread control, configuration and packaging promises."""

import os
import subprocess
import sys

import numpy as np
import pytest

import seqkern


def test_thread_count_api():
    n0 = seqkern.get_num_threads()
    assert n0 >= 1
    with seqkern.threads(1):
        assert seqkern.get_num_threads() == 1
        with seqkern.threads(3):
            assert seqkern.get_num_threads() == 3
        assert seqkern.get_num_threads() == 1
    assert seqkern.get_num_threads() == n0
    seqkern.set_num_threads(2)
    try:
        assert seqkern.get_num_threads() == 2
    finally:
        seqkern.set_num_threads(n0)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_bad_thread_counts(bad, exc):
    with pytest.raises(exc, match="n must be a positive integer"):
        seqkern.set_num_threads(bad)


def test_default_honours_omp_num_threads():
    code = "import seqkern; print(seqkern.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


@pytest.mark.parametrize("n", [None, 2, 3])
def test_blas_held_at_one_thread_inside_kernels_and_restored(n):
    """The guard holds the BLAS the kernels call at one thread and restores it;
    another BLAS in the process (NumPy's own OpenBLAS) it leaves alone."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from seqkern._threads import _blas_libraries, blas_single_thread

    held = {os.path.realpath(lc.filepath) for lc, _, _ in _blas_libraries()}
    assert held

    def counts():
        return {os.path.realpath(i["filepath"]): i["num_threads"]
                for i in threadpool_info() if i["user_api"] == "blas"}

    with threadpool_limits(limits=n, user_api="blas"):
        before = counts()
        assert held <= set(before)
        assert n is None or set(before.values()) == {n}
        with blas_single_thread():
            inside = counts()
            with blas_single_thread():          # nested: nothing more to do
                assert counts() == inside
            assert counts() == inside
        after = counts()
    assert {p: k for p, k in inside.items() if p in held} == {p: 1 for p in held}
    assert {p: k for p, k in inside.items() if p not in held} == \
        {p: k for p, k in before.items() if p not in held}
    assert after == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads ldd's output")
def test_guard_holds_the_blas_that_scipy_cython_blas_links():
    """_kernel_blas finds SciPy's BLAS by symbol addresses; ldd tells it apart
    independently: the library cython_blas is linked against."""
    import shutil

    import scipy.linalg.cython_blas as cython_blas
    from threadpoolctl import threadpool_info

    from seqkern._threads import _blas_libraries

    if shutil.which("ldd") is None:
        pytest.skip("no ldd")
    out = subprocess.run(["ldd", cython_blas.__file__], capture_output=True, text=True).stdout
    linked = {os.path.realpath(part) for line in out.splitlines() for part in line.split()
              if part.startswith("/")}
    loaded = {os.path.realpath(i["filepath"]) for i in threadpool_info() if i["user_api"] == "blas"}
    if not linked & loaded:
        pytest.skip("cython_blas links no BLAS that threadpoolctl lists (static or indirect)")
    assert {os.path.realpath(lc.filepath) for lc, _, _ in _blas_libraries()} == linked & loaded


def test_show_config(capsys):
    seqkern.show_config()
    text = capsys.readouterr().out
    assert seqkern.__version__ in text
    assert "-O3" in text
    assert "openmp:" in text and "blas:" in text and "threads:" in text
    assert "ffast-math" not in text and "finite-math" not in text


def test_kernels_release_the_gil():
    """The kernel gives up the GIL while it computes. With forced switches between
    Python threads turned off (a switch interval of 1000 s), the main thread can
    only run again when the worker releases the GIL; once the main thread holds it,
    the worker cannot return from the kernel call before the main thread lets go.
    So a main thread that runs while the call is unfinished proves the release; a
    kernel holding the GIL throughout lets it run only after the call, every time.
    (A call of some milliseconds leaves the main thread time to wake; a few tries
    absorb a machine too busy to wake it in time.)"""
    import sys
    import threading

    from seqkern.rnn import _rnn

    rng = np.random.default_rng(0)
    T, B, I, H = 20000, 4, 16, 64
    args = (rng.standard_normal((T, B, I)), np.zeros((B, H)), rng.standard_normal((H, I)) * 0.1,
            rng.standard_normal((H, H)) * 0.05, np.zeros(H), None,
            np.empty((T, B, H)), np.empty((B, H)), False, 1, 1, 0)
    seen = []
    for _ in range(5):
        state = {"finished": False}
        started = threading.Event()

        def worker():
            started.set()
            _rnn.forward(*args)         # the kernel itself: no Python code around it
            state["finished"] = True

        old = sys.getswitchinterval()
        sys.setswitchinterval(1000.0)
        try:
            t = threading.Thread(target=worker)
            t.start()
            started.wait()
            seen.append(state["finished"])
        finally:
            sys.setswitchinterval(old)
        t.join()
        assert state["finished"]
        if not seen[-1]:
            break
    assert not all(seen), f"the main thread ran only after the call, {len(seen)} times"


def test_handoff_between_two_threads():
    """The bench's probe of what handing a step between two threads costs: a
    positive time (two threads really alternated), or None without OpenMP."""
    from seqkern._openmp_helpers import handoff_ns, openmp_enabled

    ns = handoff_ns(2000)
    if openmp_enabled():
        assert ns is not None and ns > 1
    else:
        assert ns is None
    with pytest.raises(ValueError):
        handoff_ns(0)


def test_idle_openmp_threads_sleep_unless_the_user_chose():
    """seqkern has libgomp start with OMP_WAIT_POLICY=PASSIVE unless the user set
    OMP_WAIT_POLICY or GOMP_SPINCOUNT (libgomp's own report of its settings,
    OMP_DISPLAY_ENV, tells), and leaves the environment as it found it."""
    import os
    import subprocess
    import sys

    from seqkern._openmp_helpers import openmp_enabled

    code = "import os, seqkern; print(os.environ.get('OMP_WAIT_POLICY'))"
    for env, want_env, want_policy in [({}, None, "PASSIVE"),
                                       ({"OMP_WAIT_POLICY": "active"}, "active", "ACTIVE"),
                                       ({"GOMP_SPINCOUNT": "1000"}, None, None)]:
        e = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        e.update(env, OMP_DISPLAY_ENV="TRUE")
        r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(want_env)
        if openmp_enabled() and want_policy is not None:
            lines = [ln for ln in r.stderr.splitlines() if "OMP_WAIT_POLICY" in ln]
            assert lines and want_policy in lines[0], r.stderr
