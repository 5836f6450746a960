"""python -m seqkern.bench: time every kernel against NumPy and PyTorch.

Prints one row per case, thread count and implementation as it finishes:
median time, tokens/s, GFLOP/s, the fraction of the GEMM peak measured in the
same run at that thread count, the speed-up against the NumPy reference and
PyTorch (when installed), and the parallel efficiency against the first thread
count. With --layers, also seqkern.nn's layers against PyTorch's modules and
against the same stacks run as a plain loop (seqkern-loop); "-" marks an
implementation that does not apply to a case.
"""

import argparse
import os
import subprocess
import sys
import time

from seqkern.bench import runner
from seqkern.bench.cases import (IMPLS, LAYER_IMPLS, LOOP_IMPL, PATH_IMPLS, RECURRENT, grid,
                                 layers, steps, sweep)


def _int_list(s):
    """Thread counts: positive, at most seqkern.MAX_THREADS, each once, in order."""
    from seqkern import MAX_THREADS

    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {s!r}")
    if not vals or min(vals) < 1 or max(vals) > MAX_THREADS:
        raise argparse.ArgumentTypeError(
            f"thread counts must be in [1, seqkern.MAX_THREADS = {MAX_THREADS}], got {s!r}")
    return list(dict.fromkeys(vals))


def _check_paths(p, args):
    """Before anything is timed: --json must be writable, --compare a run's JSON
    (returned: read now, before --json may write over the same file)."""
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json) or not os.path.isdir(folder) \
                or not os.access(folder, os.W_OK):
            p.error(f"--json {args.json}: not a file that can be written "
                    "(its folder must exist and be writable)")
    if args.compare:
        try:
            return runner.load_run(args.compare)
        except (OSError, ValueError) as e:
            p.error(f"--compare {args.compare}: {e}")
    return None


def _choices(allowed):
    def parse(s):
        vals = [v.strip() for v in s.split(",") if v.strip()]
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {s!r}")
        return vals
    return parse


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m seqkern.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--quick", action="store_true",
                   help="a small grid that ends in under a minute on 2 cores")
    p.add_argument("--threads", type=_int_list, default=None,
                   help="thread counts, e.g. 1,2,4 (at most seqkern.MAX_THREADS; default: 1, 2, "
                        "4, ... and the core count; "
                        "--quick: 1 and the core count)")
    p.add_argument("--kernels", type=_choices(RECURRENT + ("attention",)), default=None,
                   help="comma-separated subset of rnn,lstm,gru,attention")
    p.add_argument("--dtypes", type=_choices(("float32", "float64")), default=None,
                   help="float32 (default), float64, or both")
    p.add_argument("--impls", type=_choices(IMPLS + PATH_IMPLS + (LOOP_IMPL,)), default=None,
                   help="implementations to time (default: seqkern,reference,torch; for "
                        "--layers seqkern,seqkern-loop,torch; torch only when installed); "
                        "seqkern-blas and seqkern-packed force the recurrent kernels' products "
                        "onto OpenBLAS or the packed GEMM, and attention's tile products onto "
                        "OpenBLAS or its own micro-kernel, to compare with seqkern's own choice; "
                        "seqkern-loop runs seqkern.nn's stacks as a plain loop (--layers only)")
    p.add_argument("--sweep", action="store_true",
                   help="also run the sequence-length study (LSTM vs attention, tokens/s and "
                        "latency against T, seqkern only; --kernels does not apply)")
    p.add_argument("--steps", action="store_true",
                   help="also time single time steps of the recurrent kernels (rnn_step_forward "
                        "and the like against PyTorch's RNNCell, LSTMCell, GRUCell) and one "
                        "decoding step of attention (one query against a cache of keys)")
    p.add_argument("--layers", action="store_true",
                   help="also time seqkern.nn against PyTorch's modules: 2-layer bidirectional "
                        "LSTM and GRU, MultiheadAttention, and a training step of an LSTM "
                        "language model (embedding, LSTM, linear, cross-entropy, clipping, "
                        "Adam); --kernels picks the layers built on those kernels")
    p.add_argument("--no-grid", action="store_true",
                   help="skip the comparison grid (with --sweep, --steps or --layers)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed calls per implementation and case")
    p.add_argument("--json", metavar="PATH", help="write every measurement and the machine to PATH")
    p.add_argument("--compare", metavar="OLD.json", help="print the ratio of each case against an earlier --json run")
    p.add_argument("--plot", metavar="DIR", help="write PNG charts to DIR (needs matplotlib: seqkern[plot])")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="run N busy processes (one core each) beside the timed calls, as "
                        "another program on the machine would; the thread counts of a case "
                        "then take turns sample by sample, so that their ratio is side by side")
    p.add_argument("--isa", metavar="LEVELS",
                   help="run the whole benchmark once per instruction-set level (comma-separated, "
                        "or 'all': every level this build has and this CPU supports), each in "
                        "its own process under SEQKERN_MAX_ISA, with PyTorch (ATEN_CPU_CAPABILITY, "
                        "MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA) and, below the CPU's own "
                        "level, OpenBLAS (OPENBLAS_CORETYPE) capped to the same level; --json PATH "
                        "gets the level before its extension, --plot DIR a folder DIR/LEVEL")
    args = p.parse_args(argv)
    if args.busy < 0:
        p.error(f"--busy must be >= 0, got {args.busy}")
    if args.impls and LOOP_IMPL in args.impls and not args.layers:
        p.error(f"--impls {LOOP_IMPL} needs --layers (it runs seqkern.nn's stacks as a loop)")
    old_run = _check_paths(p, args)
    if args.isa:
        if os.environ.get(_CHILD):
            p.error("--isa inside a run of --isa")
        return _per_isa(p, args, argv)

    threads = args.threads
    if threads is None:
        all_t = runner.default_threads()
        threads = sorted({1, all_t[-1]}) if args.quick else all_t
    dtypes = args.dtypes or ["float32"]
    cases = [] if args.no_grid else grid(quick=args.quick, kernels=args.kernels, dtypes=dtypes)
    if args.steps:
        cases += steps(kernels=args.kernels, dtypes=dtypes)
    sweep_cases = sweep(quick=args.quick) if args.sweep else []
    layer_cases = layers(quick=args.quick, kernels=args.kernels, dtypes=dtypes) \
        if args.layers else []
    if not cases and not sweep_cases and not layer_cases:
        if args.no_grid and not (args.sweep or args.steps or args.layers):
            p.error("--no-grid leaves nothing to run: add --sweep, --steps or --layers")
        if args.layers and args.no_grid and not args.steps:
            p.error(f"--layers has cases for lstm, gru and attention, not for "
                    f"{', '.join(args.kernels)}")
        p.error("no case is selected")
    impls = args.impls or list(IMPLS)
    budget = args.budget if args.budget is not None else (0.05 if args.quick else 0.6)

    from seqkern._config import config

    c = config()
    print(f"seqkern {c['seqkern']} on {c['cpu']} ({c['cores']} cores), OpenMP "
          f"{'on' if c['openmp'] else 'off'}, kernels of level {c['isa_level']} ({c['isa']}: "
          f"{c['kernel_compiler_flags']})"
          + (f", {args.busy} busy process(es) beside the run" if args.busy else ""))
    t0 = time.perf_counter()
    handoff = [runner.handoff()]
    with runner.busy_processes(args.busy):
        results, peaks = (runner.run(cases, threads, impls=impls, budget_s=budget,
                                     busy=args.busy) if cases else ([], {}))
        if layer_cases:
            print("\nLayers (seqkern.nn): against PyTorch's modules holding the same weights, "
                  "and against the stacks run as a plain loop (seqkern-loop)")
            more, more_peaks = runner.run(layer_cases, threads,
                                          impls=args.impls or list(LAYER_IMPLS),
                                          budget_s=budget, busy=args.busy)
            results += more
            peaks.update(more_peaks)
        if sweep_cases:
            print("\nSequence-length study (seqkern only): an RNN parallelises only across the "
                  "batch and hidden units, attention across positions too")
            more, more_peaks = runner.run(sweep_cases, threads, impls=["seqkern"], budget_s=budget,
                                          busy=args.busy)
            results += more
            peaks.update(more_peaks)
    peak_txt = ", ".join(f"{d} {n} thr {g:.0f}" for (d, n), g in sorted(peaks.items()))
    print(f"\nGEMM peak GFLOP/s measured in this run (1024^3 in SciPy's BLAS): {peak_txt}")
    handoff.append(runner.handoff())
    if handoff[0] is not None:
        print("Handing a step between two threads and back (spin flags): "
              f"{handoff[0]:.0f} ns before the run, {handoff[1]:.0f} ns "
              "after")
    print(f"{len(results)} measurements in {time.perf_counter() - t0:.1f} s; "
          "medians of interleaved calls; fwd = inference, fwd+bwd = training step")
    if args.json:
        runner.write_json(args.json, results, peaks, argv, handoff)
        print(f"wrote {args.json}")
    if args.compare:
        runner.compare(args.compare, results, old=old_run)
    if args.plot:
        from seqkern.bench import plots

        for path in plots.write_all(results, args.plot):
            print(f"wrote {path}")
    return 0


_CHILD = "SEQKERN_BENCH_ISA_CHILD"       # set in the processes --isa starts

#: PyTorch's CPU capability (ATEN_CPU_CAPABILITY) matching each of seqkern's levels,
#: so that --isa compares the two at the same instruction set.
ATEN_CAPABILITY = {"sse2": "default", "avx2": "avx2", "avx512": "avx512"}

#: The rest of what a level caps, so that every implementation in a run of --isa
#: computes at that level, as on a CPU that has no more (at sse2 as near as they go:
#: MKL's floor is SSE4.2, oneDNN's SSE4.1): the GEMMs PyTorch calls (MKL, oneDNN) and
#: OpenBLAS's kernels (seqkern-blas, the products seqkern leaves to BLAS,
#: the NumPy reference). The coretype is set only below the CPU's own level (at its
#: own level OpenBLAS detects the CPU, unless the caller's environment says otherwise):
#: Haswell is OpenBLAS's AVX2 + FMA kernel set, Prescott its oldest x86-64 one.
LEVEL_ENV = {
    "sse2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41",
             "OPENBLAS_CORETYPE": "Prescott"},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell"},
    "avx512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}


def level_env(level, top, environ):
    """The environment of --isa's process for ``level``, ``top`` being the highest
    level this CPU and build have: environ with SEQKERN_MAX_ISA, PyTorch's capability
    and LEVEL_ENV's caps of that level (OPENBLAS_CORETYPE only below ``top``)."""
    env = dict(environ, **{_CHILD: "1"})
    if level not in ATEN_CAPABILITY:        # a native build's one level needs no cap
        return env
    env["SEQKERN_MAX_ISA"] = level
    env["ATEN_CPU_CAPABILITY"] = ATEN_CAPABILITY[level]
    caps = dict(LEVEL_ENV[level])
    if level == top:
        caps.pop("OPENBLAS_CORETYPE", None)
    env.update(caps)
    return env


def _per_isa(p, args, argv):
    """--isa: this command once per level, each in a process of its own (the level
    is chosen at import)."""
    from seqkern import _dispatch
    from seqkern._cpu import x86_level

    usable = [lv for lv in _dispatch.COMPILED
              if lv == _dispatch.COMPILED[0] or _dispatch._ORDER[lv] <= x86_level()]
    levels = usable if args.isa == "all" else [v.strip() for v in args.isa.split(",") if v.strip()]
    bad = [lv for lv in levels if lv not in usable]
    if bad or not levels:
        p.error(f"--isa: this build and CPU have {', '.join(usable)}; got {args.isa!r}")
    rest, skip = [], False
    for a in argv:                      # argv without --isa, --json, --plot and their values
        if skip:
            skip = False
        elif a in ("--isa", "--json", "--plot"):
            skip = True
        elif not a.startswith(("--isa=", "--json=", "--plot=")):
            rest.append(a)
    rc = 0
    for lv in levels:
        cmd = list(rest)
        if args.json:
            root, ext = os.path.splitext(args.json)
            cmd += ["--json", f"{root}.{lv}{ext}"]
        if args.plot:                   # each level's charts in a folder of its own
            cmd += ["--plot", os.path.join(args.plot, lv)]
        env = level_env(lv, usable[-1], os.environ)
        caps = " ".join(f"{k}={env.get(k, '(unset)')}" for k in
                        ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                         "OPENBLAS_CORETYPE"))
        print(f"\n=== level {lv} === {caps}", flush=True)
        rc |= subprocess.run([sys.executable, "-m", "seqkern.bench", *cmd], env=env).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
