"""The instruction-set levels: which compiled kernels run (seqkern._dispatch)."""

import ast
import importlib
import os
import platform
import subprocess
import sys

import warnings
from types import SimpleNamespace

import pytest

import seqkern
from seqkern import _dispatch
from seqkern._cpu import x86_level
from seqkern._kernels import KERNEL_MODULES

RANK = _dispatch._ORDER


def _run(code, **env):
    e = dict(os.environ)
    e.pop("SEQKERN_MAX_ISA", None)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True,
                          text=True, timeout=120)


def test_every_kernel_module_is_of_the_chosen_level():
    base = importlib.import_module("seqkern._rnn")      # the baseline, whatever runs
    for name in KERNEL_MODULES:
        m = _dispatch.kernel_module(name)
        assert m.LEVEL == _dispatch.LEVEL, name
        assert m.BUILD_ID == base.BUILD_ID, name
    for mod in (seqkern.rnn, seqkern.lstm, seqkern.gru, seqkern.attention):
        kernels = [v for k, v in vars(mod).items() if k in ("_rnn", "_lstm", "_gru", "_attention")]
        assert kernels and all(k.LEVEL == _dispatch.LEVEL for k in kernels), mod.__name__
    with pytest.raises(ValueError, match="name"):
        _dispatch.kernel_module("_workspace")


def test_choice_rule():
    """The highest compiled level that both the CPU and the cap allow; the first
    (baseline) whatever they say. AVX-512 kernels run only on a CPU that reports
    AVX-512 (x86-64 level 4)."""
    portable = ["sse2", "avx2", "avx512"]
    assert _dispatch.choose(portable, 4, None) == "avx512"
    assert _dispatch.choose(portable, 3, None) == "avx2"
    assert _dispatch.choose(portable, 1, None) == "sse2"
    assert _dispatch.choose(portable, 0, None) == "sse2"
    assert _dispatch.choose(portable, 4, RANK["avx2"]) == "avx2"
    assert _dispatch.choose(portable, 4, RANK["sse2"]) == "sse2"
    assert _dispatch.choose(portable, 3, RANK["avx512"]) == "avx2"
    assert _dispatch.choose(["native"], 4, RANK["sse2"]) == "native"
    assert _dispatch.choose(["generic"], 0, None) == "generic"


@pytest.mark.parametrize("cap", ["sse2", "avx2", "avx512"])
def test_max_isa_caps_the_level(cap):
    r = _run("import seqkern._dispatch as d, seqkern._cpu as c, warnings;"
             "print(d.COMPILED, d.LEVEL, d.kernel_module('_lstm').ISA, c.x86_level())",
             SEQKERN_MAX_ISA=cap)
    assert r.returncode == 0, r.stderr
    compiled = ast.literal_eval(r.stdout[:r.stdout.index("]") + 1])
    level, isa, cpu = r.stdout[r.stdout.index("]") + 1:].split()
    if compiled == ["native"]:
        assert level == "native"
        if _dispatch._ISA_RANK.get(isa, 0) > RANK[cap]:
            assert "SEQKERN_MAX_ISA" in r.stderr        # warned: cannot be honoured
        return
    allowed = [lv for lv in compiled if RANK[lv] <= min(RANK[cap], int(cpu))] or compiled[:1]
    assert level == allowed[-1]
    assert _dispatch._ISA_RANK.get(isa, 0) <= max(RANK[cap], RANK[compiled[0]])


def test_max_isa_rejects_unknown_names():
    r = _run("import seqkern; seqkern.rnn_forward", SEQKERN_MAX_ISA="avx9000")
    assert r.returncode != 0
    assert "ValueError" in r.stderr and "SEQKERN_MAX_ISA" in r.stderr


def test_cpu_level_agrees_with_cpuinfo():
    """x86_level() against the flags Linux reports (where it does). Elsewhere it is 0,
    whatever /proc/cpuinfo says: under QEMU's user-mode emulation an aarch64 process
    reads the x86 host's file, flags and all."""
    level = x86_level()
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        assert level == 0
        return
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None:
        assert level in (0, 1, 3, 4)
        return
    v3 = all(f in flags for f in ("avx2", "fma", "bmi2", "f16c"))
    v4 = v3 and all(f in flags for f in ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"))
    assert level == (4 if v4 else 3 if v3 else 1)


def test_show_config_names_the_level(capsys):
    seqkern.show_config()
    out = capsys.readouterr().out
    assert f"level {_dispatch.LEVEL}" in out


def _fake_modules(ids):
    """A loader of fake kernel modules: ``ids`` maps a module's name to its
    BUILD_ID, or to an exception its import raises; any other has "b1"."""
    loaded = []

    def load(name):
        loaded.append(name)
        got = ids.get(name, "b1")
        if isinstance(got, Exception):
            raise got
        m = SimpleNamespace(__file__=f"/site/{name.split('.')[1]}.so")
        if got is not None:
            m.BUILD_ID = got
        return m

    return load, loaded


BASE = SimpleNamespace(BUILD_ID="b1", ISA="sse2", __file__="/site/_rnn.so")
PORTABLE = ["sse2", "avx2", "avx512"]


def test_cap_below_the_lowest_level_says_what_runs():
    """A cap below the build's lowest level (SEQKERN_MAX_ISA=generic on x86) runs
    that level with a warning: a native build's says a portable one has every level,
    a portable build's (already that) says its lowest level runs."""
    load, _ = _fake_modules({})
    native = SimpleNamespace(BUILD_ID="b1", ISA="avx512", __file__="/site/_rnn.so")
    with pytest.warns(RuntimeWarning, match="build with SEQKERN_PORTABLE=1"):
        assert _dispatch._choose(["native"], native, 4, RANK["avx2"], load) == \
            (["native"], "native")
    with pytest.warns(RuntimeWarning, match="it has none lower: that level runs") as w:
        assert _dispatch._choose(PORTABLE, BASE, 4, 0, load) == (PORTABLE, "sse2")
    assert "SEQKERN_PORTABLE" not in str(w[0].message)


def test_levels_of_another_build_are_ignored():
    """A chosen level with a module of another build (or none, or one that fails
    to import) is dropped with a warning naming that file, and the next level
    down is chosen; a whole level is taken silently, and a level above the cap
    is not even loaded."""
    for stale in ("old", None, ImportError("undefined symbol")):
        load, _ = _fake_modules({"seqkern._gru_avx512": stale})
        with pytest.warns(RuntimeWarning, match="avx512 kernels are not of this build") as w:
            compiled, level = _dispatch._choose(PORTABLE, BASE, 4, None, load)
        assert (compiled, level) == (["sse2", "avx2"], "avx2")
        assert len(w) == 1 and "_gru_avx512" in str(w[0].message)
        assert "_lstm_avx512" not in str(w[0].message)

    load, _ = _fake_modules({"seqkern._rnn_avx512": "old", "seqkern._attention_avx2": "old"})
    with pytest.warns(RuntimeWarning) as w:
        assert _dispatch._choose(PORTABLE, BASE, 4, None, load) == (["sse2"], "sse2")
    assert len(w) == 2 and "/site/_rnn_avx512.so" in str(w[0].message)
    assert "/site/_attention_avx2.so" in str(w[1].message)

    load, loaded = _fake_modules({"seqkern._gru_avx512": "old"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch._choose(PORTABLE, BASE, 4, RANK["avx2"], load) == (PORTABLE, "avx2")
        assert _dispatch._choose(PORTABLE, BASE, 3, None, load) == (PORTABLE, "avx2")
        assert _dispatch._choose(["native"], BASE, 4, None, load) == (["native"], "native")
    assert sorted(set(loaded)) == sorted(f"seqkern.{m}_avx2" for m in KERNEL_MODULES)


def test_a_stale_level_module_on_disk_is_ignored(tmp_path):
    """The package as built, with one module of the chosen level replaced by one
    of another build: the import warns naming its file and takes the level below."""
    if _dispatch.LEVEL == _dispatch.COMPILED[0]:
        pytest.skip("the baseline level runs: no level module to replace")
    src = os.path.dirname(seqkern.__file__)
    pkg = tmp_path / "seqkern"
    pkg.mkdir()
    stale = f"_gru_{_dispatch.LEVEL}"
    for entry in os.listdir(src):
        if entry != "__pycache__" and not entry.startswith(stale + "."):
            os.symlink(os.path.join(src, entry), pkg / entry)
    (pkg / (stale + ".py")).write_text(f"LEVEL = {_dispatch.LEVEL!r}\nBUILD_ID = 'another'\n")
    r = _run("import seqkern._dispatch as d; print(d.LEVEL)", PYTHONPATH=str(tmp_path),
             SEQKERN_MAX_ISA=os.environ.get("SEQKERN_MAX_ISA", _dispatch.LEVEL))
    assert r.returncode == 0, r.stderr
    lower = _dispatch.COMPILED[_dispatch.COMPILED.index(_dispatch.LEVEL) - 1]
    assert r.stdout.split() == [lower]
    assert "RuntimeWarning" in r.stderr and str(pkg / (stale + ".py")) in r.stderr
