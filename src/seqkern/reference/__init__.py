"""Plain-NumPy references of every seqkern kernel.

The same functions and signatures as the kernels, written to be read: shapes in
comments, one line of backward per line of forward. They are the oracle the
tests check the kernels against and the baseline the benchmarks compare with.
"""

from seqkern._types import RNNGrads
from seqkern.reference.rnn import rnn_backward, rnn_forward, rnn_step_backward, rnn_step_forward
from seqkern._types import AttentionGrads
from seqkern.reference.attention import attention_backward, attention_forward

__all__ = [
    "RNNGrads",
    "rnn_forward",
    "rnn_backward",
    "rnn_step_forward",
    "rnn_step_backward",
    "AttentionGrads",
    "attention_forward",
    "attention_backward",
]
