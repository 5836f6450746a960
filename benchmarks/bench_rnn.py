"""pytest-benchmark: the rnn kernels against the NumPy reference and PyTorch.

Run: pytest benchmarks/bench_rnn.py --benchmark-group-by=group
"""

from benchutil import parametrize, run_case


@parametrize("rnn")
def test_rnn(benchmark, case, impl, n_threads):
    run_case(benchmark, case, impl, n_threads)
