"""pytest-benchmark: the attention kernels against the NumPy reference and PyTorch.

Run: pytest benchmarks/bench_attention.py --benchmark-group-by=group
"""

from benchutil import parametrize, run_case


@parametrize("attention")
def test_attention(benchmark, case, impl, n_threads):
    run_case(benchmark, case, impl, n_threads)
