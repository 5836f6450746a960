"""pytest-benchmark: every kernel of the grid (rnn, lstm, gru, attention) against
the NumPy reference and PyTorch, one group per case and thread count.

Run: pytest benchmarks/bench_grid.py --benchmark-group-by=group
(-k lstm for one kernel).
"""

from benchutil import parametrize, run_case


@parametrize(None)
def test_grid(benchmark, case, impl, n_threads):
    run_case(benchmark, case, impl, n_threads)
