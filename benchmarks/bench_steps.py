"""pytest-benchmark: one time step of each recurrent kernel (lstm_step_forward and
the like) against the NumPy reference and PyTorch's RNNCell, LSTMCell, GRUCell;
and one decoding step of attention (one query against a cache of keys) against
the reference and scaled_dot_product_attention. Each case's id starts with its
kernel ("-k lstm" selects the LSTM's).

Run: pytest benchmarks/bench_steps.py --benchmark-group-by=group
"""

from benchutil import parametrize, run_case


@parametrize(None, suite="step")
def test_step(benchmark, case, impl, n_threads):
    run_case(benchmark, case, impl, n_threads)
