"""pytest-benchmark face of seqkern.bench: the same cases, one group per case
and thread count, so that each group compares the implementations."""

import pytest

from seqkern.bench.cases import (IMPLS, LAYER_IMPLS, applies, grid, layers, make_runner, steps,
                                 torch_available)
from seqkern.bench.runner import default_threads, thread_count

THREADS = sorted({1, default_threads()[-1]})


def cases_for(kernel, suite="grid"):
    kernels = None if kernel is None else [kernel]
    if suite == "layers":               # the layer cases are float32
        cases = layers(kernels=kernels)
    else:
        make = steps if suite == "step" else grid
        cases = make(kernels=kernels, dtypes=("float32", "float64"))
    return [pytest.param(c, id=c.name.replace(" ", "-")) for c in cases]


def parametrize(kernel, suite="grid"):
    """Decorator: parametrize a benchmark over case x implementation x threads
    (the cases of ``suite``, "grid", "step" or "layers", for ``kernel``, or None:
    every one)."""
    def deco(fn):
        fn = pytest.mark.parametrize("n_threads", THREADS, ids=lambda n: f"{n}thr")(fn)
        fn = pytest.mark.parametrize("impl", LAYER_IMPLS if suite == "layers" else IMPLS)(fn)
        return pytest.mark.parametrize("case", cases_for(kernel, suite))(fn)
    return deco


def run_case(benchmark, case, impl, n_threads):
    if impl == "torch" and not torch_available():
        pytest.skip("PyTorch is not installed")
    if not applies(case, impl):
        pytest.skip(f"{impl} does not run {case.name}")
    fn = make_runner(case, impl)
    benchmark.group = f"{case.name} threads={n_threads}"
    benchmark.extra_info.update(case.as_dict(), impl=impl, threads=n_threads,
                                flops=case.flops(), tokens=case.tokens())
    with thread_count(n_threads):
        result = benchmark(fn)
    assert result is not None
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        median = stats.stats.median
        benchmark.extra_info["median_s"] = median
        benchmark.extra_info["gflops"] = case.flops() / median / 1e9
        benchmark.extra_info["tokens_per_s"] = case.tokens() / median
    return result
