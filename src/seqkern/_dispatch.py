"""Which compiled kernels run: the best instruction-set level this CPU supports.

setup.py compiles the kernel modules (_rnn, _lstm, _gru, _attention,
_packed_gemm, _activations) once per level. A source install has one level,
"native" (``-march=native``). A portable build (``SEQKERN_PORTABLE=1``, what a
wheel is) has, on x86-64, "sse2" (the baseline, under the plain module names),
"avx2" (x86-64-v3) and "avx512" (x86-64-v4), as modules with that suffix
(``seqkern._rnn_avx2``); elsewhere one "generic" level.

At import the highest level the CPU supports is chosen, capped by the
environment variable ``SEQKERN_MAX_ISA`` (sse2, avx2 or avx512; read once, at
import), as oneDNN's ONEDNN_MAX_CPU_ISA caps its kernels: every level can so be
tested and measured on one machine. ``seqkern.show_config()`` prints what was
compiled and what was chosen.

Every kernel module reports the build it belongs to (BUILD_ID, a hash of the
build's configuration: setup.py). A chosen level whose modules are not of the
baseline's build (left in the source tree by an earlier build of other levels
or flags) is dropped with a RuntimeWarning naming the files, and the next level
down is chosen.
"""

import importlib
import importlib.util
import os
import warnings

from seqkern import _threads  # noqa: F401  (sets libgomp's wait policy before a kernel module loads it)
from seqkern._cpu import x86_level
from seqkern._kernels import KERNEL_MODULES

#: The ISA levels, lowest first, with the x86-64 level each needs (0: any CPU).
_ORDER = {"generic": 0, "sse2": 1, "avx2": 3, "avx512": 4}
#: The instruction sets a module may report (_simd.h), mapped to a level.
_ISA_RANK = {"generic": 0, "neon": 0, "sse2": 1, "avx": 2, "avx2": 3, "avx512": 4}


def _max_isa():
    """SEQKERN_MAX_ISA as a rank (None: not set)."""
    cap = os.environ.get("SEQKERN_MAX_ISA", "").strip().lower()
    if not cap:
        return None
    if cap not in _ORDER:
        raise ValueError(f"SEQKERN_MAX_ISA must be one of {', '.join(_ORDER)}, got {cap!r}")
    return _ORDER[cap]


def _compiled():
    """The levels found, lowest first, and the baseline module (seqkern._rnn)."""
    base = importlib.import_module("seqkern._rnn")
    levels = [base.LEVEL]
    if base.LEVEL == "sse2":            # a portable build's baseline: the others beside it
        levels += [lv for lv in ("avx2", "avx512")
                   if all(importlib.util.find_spec(f"seqkern.{m}_{lv}") is not None
                          for m in KERNEL_MODULES)]
    return levels, base


def choose(compiled, cpu_level, cap):
    """The level to run: the highest of ``compiled`` (lowest first; its first is
    always runnable) that the CPU's x86-64 level and the cap (a rank of _ORDER, or
    None) allow."""
    chosen = compiled[0]
    for lv in compiled[1:]:
        if _ORDER[lv] <= cpu_level and (cap is None or _ORDER[lv] <= cap):
            chosen = lv
    return chosen


def _not_of_build(level, build_id, load=importlib.import_module):
    """The kernel modules of ``level`` that are not of the build ``build_id``, as
    (file or module name, why) pairs: empty where the level is whole."""
    bad = []
    for name in KERNEL_MODULES:
        full = f"seqkern.{name}_{level}"
        try:
            m = load(full)
        except (ImportError, TypeError, ValueError) as e:   # (Cython: a changed C API)
            bad.append((full, f"fails to import: {e}"))
            continue
        got = getattr(m, "BUILD_ID", None)
        if got != build_id:
            bad.append((getattr(m, "__file__", full), f"build {got}"))
    return bad


def _choose(compiled, base, cpu_level, cap, load=importlib.import_module):
    """(the levels usable, the level chosen): ``compiled`` less any chosen level
    whose modules are not of the baseline module ``base``'s build."""
    compiled = list(compiled)
    build_id = getattr(base, "BUILD_ID", None)
    while True:
        chosen = choose(compiled, cpu_level, cap)
        bad = [] if chosen == compiled[0] else _not_of_build(chosen, build_id, load)
        if not bad:
            break
        warnings.warn(f"seqkern: the {chosen} kernels are not of this build ({build_id}, "
                      f"{base.__file__}) and are ignored: "
                      + "; ".join(f"{f} ({why})" for f, why in bad)
                      + ". Delete them or rebuild with SEQKERN_PORTABLE=1.", RuntimeWarning)
        compiled.remove(chosen)
    if cap is not None and chosen == compiled[0] and _ISA_RANK.get(base.ISA, 0) > cap:
        if compiled[0] == "native":
            how = "build with SEQKERN_PORTABLE=1 for kernels of each level"
        else:                           # a portable build: its lowest level is the floor
            how = "it has none lower: that level runs"
        warnings.warn(f"SEQKERN_MAX_ISA caps the instruction set below what this build's "
                      f"kernels use ({base.ISA}, level {compiled[0]}); {how}", RuntimeWarning)
    return compiled, chosen


#: The levels of this build, lowest first (less any found to be of another build
#: when chosen), and the level chosen.
COMPILED, LEVEL = _choose(*_compiled(), x86_level(), _max_isa())
_SUFFIX = "" if LEVEL == COMPILED[0] else "_" + LEVEL


def kernel_module(name):
    """The module ``name`` (one of the kernel modules, e.g. "_lstm") of the chosen level."""
    if name not in KERNEL_MODULES:
        raise ValueError(f"name must be one of {', '.join(KERNEL_MODULES)}, got {name!r}")
    return importlib.import_module("seqkern." + name + _SUFFIX)


def info():
    """(levels compiled, level chosen, its instruction set, its compiler flags)."""
    m = kernel_module("_rnn")
    return COMPILED, LEVEL, m.ISA, m.CFLAGS
