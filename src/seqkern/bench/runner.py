"""Timing: medians of interleaved calls, the machine's GEMM peak, the table.

Implementations of one case are timed in alternation (one call of each in
turn, with a short pause between them), so that a slow moment of a shared
machine hits all of them alike and two thread pools (OpenMP's, OpenBLAS's,
PyTorch's) never spin against each other. Every figure is a median.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from functools import partial

import numpy as np

from seqkern.bench.cases import IMPLS, LOOP_IMPL, applies, make_runner, torch_available

# Between two implementations: long enough for the idle workers of one thread
# pool (libgomp's default spin lasts milliseconds) to stop competing with the next.
PAUSE_S = 0.02
# After NumPy's BLAS ran on several threads: OpenBLAS's idle workers spin for
# about a tenth of a second (measured: seqkern's 2-thread RNN forward ran 1.6x
# slower right after the reference than 0.3 s later).
PAUSE_AFTER_BLAS_S = 0.3


def pause(seconds):
    """Wait between two implementations' samples by spinning on this thread, not
    sleeping. Asleep, every core of the machine may go idle, and a machine whose
    cores all idled can take milliseconds to run two threads at full speed again
    (seen on a VM; docs/benchmarks.md): every multi-threaded
    sample would then start with a wake-up that a program calling its kernels back
    to back never pays. One busy core keeps the machine awake while the other
    implementation's idle workers stop spinning on the rest."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# One timed sample: back-to-back calls of one implementation filling about this
# long, so that a sample measures steady state, not a wake-up after the pause.
SAMPLE_S = 0.02


@contextmanager
def thread_count(n):
    """Run seqkern, NumPy's/SciPy's BLAS and PyTorch on ``n`` threads."""
    import seqkern
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    old_torch = torch.get_num_threads() if torch else None
    with ExitStack() as stack:
        stack.enter_context(threadpool_limits(limits=n, user_api="blas"))
        stack.enter_context(seqkern.threads(n))
        if torch:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch:
                torch.set_num_threads(old_torch)


def time_interleaved(fns, budget_s=0.3, min_repeats=3, max_repeats=30, pauses=None,
                     contexts=None):
    """{name: [seconds per call, ...]} for each callable in ``fns``.

    After one warm-up call each (two where one is shorter than 10 SAMPLE_S, the
    faster sizing the samples), the implementations take turns: each turn is
    one sample of back-to-back calls (enough to fill SAMPLE_S), then a pause
    (``pauses[name]``, default PAUSE_S). The number of samples fits ``budget_s``
    per implementation. ``contexts[name]``, if given, makes the context manager
    that each of that name's warm-ups and samples runs in, outside the timed
    calls (e.g. thread_count(n): one case on several thread counts in turn).
    """
    pauses = pauses or {}
    contexts = contexts or {}
    first = {}
    for name, fn in fns.items():
        with contexts.get(name, nullcontext)():
            t0 = time.perf_counter()
            fn()
            first[name] = time.perf_counter() - t0
            if first[name] < 10 * SAMPLE_S:
                # The samples are sized on the faster of two calls: a first call that
                # waits for a sleeping core (measured here: up to ~7 ms to start a
                # 2-thread region after a pause) would otherwise size every sample to
                # one call, and then every sample would measure such a wake-up.
                t0 = time.perf_counter()
                fn()
                first[name] = min(first[name], time.perf_counter() - t0)
        pause(pauses.get(name, PAUSE_S))
    calls = {name: max(1, int(SAMPLE_S / max(t, 1e-9))) for name, t in first.items()}
    sample = max((first[n] * calls[n] for n in fns), default=0.0)
    repeats = int(min(max_repeats, max(min_repeats, budget_s / max(sample, 1e-9))))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            n = calls[name]
            with contexts.get(name, nullcontext)():
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                times[name].append((time.perf_counter() - t0) / n)
            pause(pauses.get(name, PAUSE_S))
    return times


def gemm_peak(n_threads, dtype="float32", size=1024, repeats=7):
    """GFLOP/s of a (size x size) @ (size x size) GEMM in SciPy's BLAS on
    ``n_threads``: the best of ``repeats`` calls, since a peak is what the machine
    can do when nothing else gets in the way."""
    from scipy.linalg import blas

    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((size, size)).astype(dt))
    b = np.asfortranarray(rng.standard_normal((size, size)).astype(dt))
    fn = blas.sgemm if dt == np.float32 else blas.dgemm
    with thread_count(n_threads):
        fn(1.0, a, b)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(1.0, a, b)
            ts.append(time.perf_counter() - t0)
    return 2.0 * size ** 3 / min(ts) / 1e9


def handoff():
    """Median ns of 5 measurements of seqkern._openmp_helpers.handoff_ns (None
    without two OpenMP threads)."""
    from seqkern._openmp_helpers import handoff_ns

    ns = [handoff_ns() for _ in range(5)]
    return None if None in ns else statistics.median(ns)


def default_threads():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ts, n = [], 1
    while n < cores:
        ts.append(n)
        n *= 2
    ts.append(cores)
    return ts


@contextmanager
def busy_processes(n):
    """Within the block, ``n`` other processes each keep a core busy (a pure-Python
    loop), as another program on a user's machine would."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        if procs:
            time.sleep(0.2)                 # let them get going
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def run(cases, threads, impls=IMPLS, budget_s=0.3, out=None, progress=True, busy=0):
    """Measure every case at every thread count; print rows as they finish.
    ``busy``: the number of busy processes running beside the run (recorded);
    with busy processes, the thread counts of a case take turns sample by sample
    too (_time_in_turn), so that their ratio is side by side. An implementation
    that does not apply to a case (cases.applies) gets a row of "-" and a result
    whose timings and ratios are None.

    Returns the list of result dicts (one per case x threads x implementation).
    """
    from seqkern._dispatch import LEVEL

    out = out or sys.stdout
    impls = [i for i in impls if i != "torch" or torch_available()]
    if "torch" in impls:
        import torch  # noqa: F401  (so thread_count() sets its threads too)
    peaks = {}
    results = []
    header = _header()
    if progress:
        print(header, file=out)
        print("-" * len(header), file=out, flush=True)
    for case in cases:
        fns = {impl: make_runner(case, impl) for impl in impls if applies(case, impl)}
        base = {}
        by_threads = {}
        for group in ([threads] if busy else [[n] for n in threads]):
            for n in group:
                if (case.dtype, n) not in peaks:
                    peaks[case.dtype, n] = gemm_peak(n, case.dtype)
            by_threads.update(_time_in_turn(fns, group, budget_s))
        for n in threads:
            key = (case.dtype, n)
            times = by_threads[n]
            med = {impl: statistics.median(ts) for impl, ts in times.items()}
            if n == threads[0]:
                base = {impl: (n, m) for impl, m in med.items()}
            for impl in impls:
                if impl not in fns:
                    r = _skipped(case, impl, n, LEVEL, busy, peaks[key])
                    results.append(r)
                    if progress:
                        print(format_row(r), file=out, flush=True)
                    continue
                m = med[impl]
                n0, m0 = base[impl]
                r = dict(
                    case=case.name, **case.as_dict(), impl=impl, threads=n,
                    isa_level=LEVEL, busy_processes=busy,
                    median_s=m, times_s=times[impl], repeats=len(times[impl]),
                    tokens_per_s=case.tokens() / m, gflops=case.flops() / m / 1e9,
                    gemm_peak_gflops=peaks[key],
                    speedup_vs_reference=med["reference"] / m if "reference" in med else None,  # noqa: E501
                    speedup_vs_torch=med["torch"] / m if "torch" in med else None,
                    speedup_vs_blas=(med["seqkern-blas"] / m if "seqkern-blas" in med
                                     else None),
                    speedup_vs_loop=med[LOOP_IMPL] / m if LOOP_IMPL in med else None,
                    parallel_efficiency=(m0 / m) / (n / n0) if n != n0 else 1.0,
                )
                r["peak_fraction"] = r["gflops"] / r["gemm_peak_gflops"]
                results.append(r)
                if progress:
                    print(format_row(r), file=out, flush=True)
    return results, peaks


def _time_in_turn(fns, threads, budget_s):
    """{n: {impl: [seconds per call, ...]}}: every implementation at every thread
    count of ``threads`` in one time_interleaved, each sample on its own count
    (thread_count(n) around it), NumPy's BLAS given PAUSE_AFTER_BLAS_S after it ran
    on several threads. run() passes one count at a time, or, beside busy
    processes, all of them: there the scheduler's slices come in modes lasting
    longer than a sample, and timed one count after the other, a case's 1-thread
    and 2-thread samples can fall on different modes, and their ratio then
    measures the scheduler."""
    keyed = {(impl, n): fn for n in threads for impl, fn in fns.items()}
    pauses = {(impl, n): PAUSE_AFTER_BLAS_S for impl, n in keyed if impl == "reference" and n > 1}
    contexts = {(impl, n): partial(thread_count, n) for impl, n in keyed}
    times = time_interleaved(keyed, budget_s=budget_s, pauses=pauses, contexts=contexts)
    return {n: {impl: times[impl, n] for impl in fns} for n in threads}


def _skipped(case, impl, n, level, busy, peak):
    """The result of an implementation that does not apply to ``case``: None timings."""
    r = dict(case=case.name, **case.as_dict(), impl=impl, threads=n, isa_level=level,
             busy_processes=busy, skipped=True, gemm_peak_gflops=peak)
    for k in ("median_s", "times_s", "repeats", "tokens_per_s", "gflops", "speedup_vs_reference",
              "speedup_vs_torch", "speedup_vs_blas", "speedup_vs_loop", "parallel_efficiency",
              "peak_fraction"):
        r[k] = None
    return r


def _header():
    return (f"{'case':<40} {'impl':<14} {'thr':>3} {'median ms':>10} {'tokens/s':>10} "
            f"{'GFLOP/s':>8} {'%peak':>6} {'vs ref':>7} {'vs torch':>8} {'vs blas':>7} "
            f"{'vs loop':>7} {'par.eff':>7}")


def _fmt(x, spec, scale=1.0, suffix=""):
    """x * scale formatted, or "-" for None (an implementation that did not run)."""
    return "-" if x is None else f"{x * scale:{spec}}{suffix}"


def format_row(r):
    return (f"{r['case']:<40} {r['impl']:<14} {r['threads']:>3} "
            f"{_fmt(r['median_s'], '.3f', 1e3):>10} {_fmt(r['tokens_per_s'], '.3g'):>10} "
            f"{_fmt(r['gflops'], '.1f'):>8} {_fmt(r['peak_fraction'], '.0f', 100, '%'):>6} "
            f"{_fmt(r['speedup_vs_reference'], '.2f', suffix='x'):>7} "
            f"{_fmt(r['speedup_vs_torch'], '.2f', suffix='x'):>8} "
            f"{_fmt(r.get('speedup_vs_blas'), '.2f', suffix='x'):>7} "
            f"{_fmt(r.get('speedup_vs_loop'), '.2f', suffix='x'):>7} "
            f"{_fmt(r['parallel_efficiency'], '.2f'):>7}")


def write_json(path, results, peaks, argv, handoff_ns=None):
    from seqkern._config import config

    doc = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        command="python -m seqkern.bench " + " ".join(argv),
        machine=config(),
        torch=_torch_version(),
        # PyTorch's kernels' instruction set: the cap asked for (--isa sets it to
        # the run's level) and what PyTorch reports it runs (None without torch)
        aten_cpu_capability=os.environ.get("ATEN_CPU_CAPABILITY"),
        torch_cpu_capability=_torch_capability(),
        # the caps --isa sets (None: not set) and the BLAS libraries loaded, with the
        # kernel set ("architecture") each chose
        level_caps={k: os.environ.get(k) for k in ("MKL_ENABLE_INSTRUCTIONS",
                                                   "ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE")},
        blas=_blas_info(),
        gemm_peaks=[dict(dtype=d, threads=n, gflops=g) for (d, n), g in sorted(peaks.items())],
        handoff_ns_before_after=handoff_ns,
        results=results,
    )
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def _blas_info():
    from threadpoolctl import threadpool_info

    return [{k: info.get(k) for k in ("internal_api", "version", "architecture", "filepath")}
            for info in threadpool_info() if info.get("user_api") == "blas"]


def _torch_version():
    if not torch_available():
        return None
    import torch

    return torch.__version__


def _torch_capability():
    if not torch_available():
        return None
    import torch

    return torch.backends.cpu.get_cpu_capability()


def load_run(path):
    """The document an earlier --json run wrote; OSError if it cannot be read,
    ValueError if it is not such a document."""
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list) or not all(
            isinstance(r, dict) and {"case", "impl", "threads", "median_s"} <= r.keys()
            for r in doc["results"]):
        raise ValueError("not the JSON of a python -m seqkern.bench --json run")
    return doc


def compare(old_path, results, out=None, old=None):
    """Print old median / new median for every (case, impl, threads) in both runs
    (``old``: the document of old_path, if already read)."""
    out = out or sys.stdout
    old = load_run(old_path) if old is None else old
    before = {(r["case"], r["impl"], r["threads"]): r["median_s"] for r in old["results"]
              if r["median_s"] is not None}
    print(f"\nCompared with {old_path} ({old.get('date', '?')}): old median / new median "
          "(> 1: faster now)", file=out)
    print(f"{'case':<40} {'impl':<14} {'thr':>3} {'old ms':>10} {'new ms':>10} {'ratio':>7}", file=out)
    rows = []
    for r in results:
        key = (r["case"], r["impl"], r["threads"])
        if key in before and r["median_s"] is not None:
            ratio = before[key] / r["median_s"]
            rows.append((key, ratio))
            print(f"{r['case']:<40} {r['impl']:<14} {r['threads']:>3} {before[key] * 1e3:>10.3f} "
                  f"{r['median_s'] * 1e3:>10.3f} {ratio:>6.2f}x", file=out)
    if not rows:
        print("(no case in common)", file=out)
    return rows
