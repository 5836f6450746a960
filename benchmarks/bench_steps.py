"""pytest-benchmark: one time step of each recurrent kernel (lstm_step_forward and
the like) against the NumPy reference and PyTorch's RNNCell, LSTMCell, GRUCell;
and one decoding step of attention (one query against a cache of keys) against
the reference and scaled_dot_product_attention.

Run: pytest benchmarks/bench_steps.py --benchmark-group-by=group
"""

from benchutil import parametrize, run_case


@parametrize("rnn", suite="step")
def test_rnn_step(benchmark, case, impl, n_threads):
    run_case(benchmark, case, impl, n_threads)


@parametrize("lstm", suite="step")
def test_lstm_step(benchmark, case, impl, n_threads):
    run_case(benchmark, case, impl, n_threads)


@parametrize("gru", suite="step")
def test_gru_step(benchmark, case, impl, n_threads):
    run_case(benchmark, case, impl, n_threads)


@parametrize("attention", suite="step")
def test_attention_step(benchmark, case, impl, n_threads):
    run_case(benchmark, case, impl, n_threads)
