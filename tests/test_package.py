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


def test_idle_openmp_threads_spin_briefly_unless_the_user_chose():
    """seqkern has libgomp start with GOMP_SPINCOUNT=SPIN_COUNT unless the user set
    OMP_WAIT_POLICY or GOMP_SPINCOUNT (libgomp's own report of its settings,
    OMP_DISPLAY_ENV=VERBOSE, tells), and leaves the environment as it found it:
    whether the kernels load through the package's names or a wrapper module
    directly."""
    import os
    import subprocess
    import sys

    from seqkern._openmp_helpers import openmp_enabled
    from seqkern._threads import SPIN_COUNT

    show = "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    via_package = "import os, seqkern; seqkern.rnn_forward; " + show
    via_module = "import os, seqkern.attention; " + show
    for code, env, want_env, want in [
            (via_package, {}, "None None", ("GOMP_SPINCOUNT", f"'{SPIN_COUNT}'")),
            (via_module, {}, "None None", ("GOMP_SPINCOUNT", f"'{SPIN_COUNT}'")),
            (via_package, {"OMP_WAIT_POLICY": "active"}, "active None", ("OMP_WAIT_POLICY", "'ACTIVE'")),
            (via_package, {"GOMP_SPINCOUNT": "1000"}, "None 1000", ("GOMP_SPINCOUNT", "'1000'"))]:
        e = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        e.update(env, OMP_DISPLAY_ENV="VERBOSE")
        r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == want_env
        if openmp_enabled():
            name, value = want
            lines = [ln for ln in r.stderr.splitlines() if ln.strip().startswith(name + " ")]
            assert lines and lines[0].strip().endswith(value), r.stderr


# --- the package's names load on first use; the references stand alone ------

# Every seqkern module compiled to a shared library refuses to import (run first
# in a subprocess): what a machine without the built extension sees.
_HIDE_COMPILED = """
import importlib.machinery, sys

class HideCompiled:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("seqkern."):
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and str(spec.origin).endswith(
                    tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                raise ImportError(f"{name} is compiled (hidden by the test)")
        return None

sys.meta_path.insert(0, HideCompiled())
"""

# The four references forward and backward on small float64 inputs; each result
# saved to the .npz named by argv[1].
_RUN_REFERENCES = """
import sys
import numpy as np
from seqkern import reference as ref

rng = np.random.default_rng(0)
T, B, I, H = 3, 2, 4, 5
x = rng.standard_normal((T, B, I))
out = {}
for name, G in (("rnn", 1), ("lstm", 4), ("gru", 3)):
    W = (rng.standard_normal((G * H, I)), rng.standard_normal((G * H, H)),
         rng.standard_normal(G * H), rng.standard_normal(G * H))
    d_out, d_h = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    if name == "lstm":
        o, h, c, cache = ref.lstm_forward(x, None, None, *W)
        g = ref.lstm_backward(d_out, d_h, rng.standard_normal((B, H)), cache)
    else:
        o, h, cache = getattr(ref, name + "_forward")(x, None, *W)
        g = getattr(ref, name + "_backward")(d_out, d_h, cache)
    out[name + "_out"] = o
    out.update({f"{name}_{k}": v for k, v in g._asdict().items() if v is not None})
q, k, v = (rng.standard_normal((1, 2, 3, 4)) for _ in range(3))
o, cache = ref.attention_forward(q, k, v, causal=True)
g = ref.attention_backward(rng.standard_normal(o.shape), cache)
out["attention_out"] = o
out.update({"attention_" + n: a for n, a in g._asdict().items()})
try:
    ref.rnn_forward(x, None, np.zeros((H, I + 1)), np.zeros((H, H)))
except ValueError as e:
    assert "W_ih" in str(e), e
else:
    raise AssertionError("a W_ih of the wrong shape was accepted")
np.savez(sys.argv[1], **out)
"""


def _python(code, *args):
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)


def test_reference_runs_without_the_compiled_modules(tmp_path):
    """``seqkern.reference`` imports and runs with every compiled seqkern module
    hidden, loading none of them, and computes what it computes with them."""
    check = """
for name in ("seqkern._rnn", "seqkern._workspace"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise AssertionError(name + " was not hidden")
"""
    loaded = """
import importlib.machinery
compiled = [m for m, mod in sys.modules.items() if m.startswith("seqkern")
            and str(getattr(mod, "__file__", "")).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))]
assert not compiled, compiled
"""
    path = tmp_path / "hidden.npz"
    r = _python(_HIDE_COMPILED + check + _RUN_REFERENCES + loaded, str(path))
    assert r.returncode == 0, r.stderr
    # the same with the kernels loaded beside them
    r = _python("import seqkern; seqkern.rnn_forward, seqkern.attention_forward\n"
                + _RUN_REFERENCES, str(tmp_path / "normal.npz"))
    assert r.returncode == 0, r.stderr
    hidden, normal = np.load(path), np.load(tmp_path / "normal.npz")
    assert sorted(hidden.files) == sorted(normal.files)
    assert {f"{k}_{n}" for k in ("rnn", "lstm", "gru") for n in ("out", "dx", "dh0", "dW_hh")} \
        | {"lstm_dc0", "attention_out", "attention_dq", "attention_dk", "attention_dv"} \
        <= set(hidden.files)
    for name in hidden.files:
        np.testing.assert_array_equal(hidden[name], normal[name], err_msg=name)
        assert np.isfinite(hidden[name]).all(), name


def test_type_checkers_see_the_names_the_package_loads():
    """The imports seqkern/__init__.py shows type checkers name each public
    name's module and attribute as the lazy loader does, and every submodule."""
    import ast

    tree = ast.parse(open(seqkern.__file__).read())
    block = next(n for n in tree.body if isinstance(n, ast.If)
                 and getattr(n.test, "id", None) == "TYPE_CHECKING")
    seen, modules = {}, set()
    for imp in block.body:
        for alias in imp.names:
            if imp.module == "seqkern":
                modules.add(alias.name)
            else:
                seen[alias.asname or alias.name] = (imp.module[len("seqkern."):], alias.name)
    assert seen == seqkern._PUBLIC
    assert modules == set(seqkern._SUBMODULES)


def test_package_names_load_on_first_use():
    """``import seqkern`` loads no compiled module; each public name (and the
    submodules it used to import) loads on first use; ``dir`` and ``__all__`` list
    them all, and ``from seqkern import *`` binds every one."""
    code = """
import sys
import seqkern
assert not [m for m in sys.modules if m.startswith("seqkern.")], sorted(sys.modules)
import numpy as np
out, h_n, cache = seqkern.rnn_forward(np.ones((2, 1, 3)), None, np.ones((4, 3)), np.zeros((4, 4)))
assert out.shape == (2, 1, 4) and np.allclose(out, np.tanh(3.0))
assert "seqkern._rnn" in sys.modules and seqkern.rnn.rnn_forward is seqkern.rnn_forward
from seqkern import rnn_backward, reference
assert rnn_backward is seqkern.rnn.rnn_backward and reference is seqkern.reference
assert seqkern.lstm.lstm_forward is seqkern.lstm_forward
assert seqkern.gru.gru_forward is seqkern.gru_forward
assert seqkern.attention.attention_forward is seqkern.attention_forward
assert seqkern.workspace_limit is seqkern._workspace.max_bytes
assert seqkern.free_workspace is seqkern._workspace.clear
assert seqkern.get_num_threads() >= 1
assert set(seqkern.__all__) <= set(dir(seqkern)), set(seqkern.__all__) - set(dir(seqkern))
assert all(hasattr(seqkern, n) for n in seqkern.__all__)
ns = {}
exec("from seqkern import *", ns)
assert set(seqkern.__all__) <= set(ns)
try:
    seqkern.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
else:
    raise AssertionError("seqkern.no_such_name did not raise AttributeError")
"""
    r = _python(code)
    assert r.returncode == 0, r.stderr
