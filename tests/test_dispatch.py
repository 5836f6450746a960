"""The instruction-set levels: which compiled kernels run (seqkern._dispatch)."""

import ast
import os
import subprocess
import sys

import pytest

import seqkern
from seqkern import _dispatch
from seqkern._cpu import x86_level

RANK = _dispatch._ORDER


def _run(code, **env):
    e = dict(os.environ)
    e.pop("SEQKERN_MAX_ISA", None)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True,
                          text=True, timeout=120)


def test_every_kernel_module_is_of_the_chosen_level():
    for name in ("_activations", "_attention", "_gru", "_lstm", "_packed_gemm", "_rnn"):
        m = _dispatch.kernel_module(name)
        assert m.LEVEL == _dispatch.LEVEL, name
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
    """x86_level() against the flags Linux reports (where it does)."""
    level = x86_level()
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
