"""pytest-benchmark: the lstm kernels against the NumPy reference and PyTorch.

Run: pytest benchmarks/bench_lstm.py --benchmark-group-by=group
"""

from benchutil import parametrize, run_case


@parametrize("lstm")
def test_lstm(benchmark, case, impl, n_threads):
    run_case(benchmark, case, impl, n_threads)
