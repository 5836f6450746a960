"""Which GEMM the kernels use (private: for tests and benchmarks): for the
recurrent kernels' products with the weights (the per-step h_{t-1} @ W_hh^T and
dz_t @ W_hh, the input projection x @ W_ih^T and the input gradient dz @ W_ih),
and for attention's tile products.

AUTO lets each kernel choose by its measured rule (see _rnn.pyx, _lstm.pyx, _gru.pyx,
and _attention.BLAS_PRODUCTS); BLAS forces OpenBLAS's GEMM (but attention at a scale
that is 0 in its dtype, which BLAS would not multiply at all: attention.py); PACKED
forces the kernels' own: _packed_gemm.h on the weights packed once per call (at batch
1 the LSTM's step product then interleaved with the next steps' projection), and
attention's micro-kernel (_attention.h's sk_gemm). The results of each choice do not depend on
the thread count.
"""

from contextlib import contextmanager

AUTO, BLAS, PACKED = 0, 1, 2
_MODES = {"auto": AUTO, "blas": BLAS, "packed": PACKED}
_mode = AUTO


def step_gemm_mode():
    """The current choice as the integer the kernels take."""
    return _mode


@contextmanager
def step_gemm(mode):
    """Within the block, use ``mode`` ("auto", "blas" or "packed") for per-step products."""
    global _mode
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
    old, _mode = _mode, _MODES[mode]
    try:
        yield
    finally:
        _mode = old
