"""pytest-benchmark: seqkern.nn against PyTorch's modules and against the same
stacks run as a plain loop (suite "layers" of seqkern.bench: 2-layer
bidirectional LSTM and GRU, MultiheadAttention, one training step of an LSTM
language model; cases and runners in seqkern/bench/cases.py and layers.py).

Run: pytest benchmarks/bench_nn.py --benchmark-group-by=group
or, for the side-by-side table (interleaved medians, ratios, parallel efficiency):
python benchmarks/bench_nn.py [ARGS], which is python -m seqkern.bench --layers --no-grid [ARGS].
"""

import sys

from benchutil import parametrize, run_case


@parametrize(None, suite="layers")
def test_layer(benchmark, case, impl, n_threads):
    run_case(benchmark, case, impl, n_threads)


if __name__ == "__main__":
    from seqkern.bench.__main__ import main

    sys.exit(main(["--layers", "--no-grid", *sys.argv[1:]]))
