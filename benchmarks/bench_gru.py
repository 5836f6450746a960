"""pytest-benchmark: the gru kernels against the NumPy reference and PyTorch.

Run: pytest benchmarks/bench_gru.py --benchmark-group-by=group
"""

from benchutil import parametrize, run_case


@parametrize("gru")
def test_gru(benchmark, case, impl, n_threads):
    run_case(benchmark, case, impl, n_threads)
