"""Plain-NumPy references of every seqkern kernel.

The same functions and signatures as the kernels, written to be read: shapes in
comments, one line of backward per line of forward. They are the oracle the
tests check the kernels against and the baseline the benchmarks compare with.
"""

from seqkern._types import AttentionGrads, GRUGrads, LSTMGrads, RNNGrads
from seqkern.reference.attention import attention_backward, attention_forward
from seqkern.reference.gru import gru_backward, gru_forward, gru_step_backward, gru_step_forward
from seqkern.reference.lstm import lstm_backward, lstm_forward, lstm_step_backward, lstm_step_forward
from seqkern.reference.rnn import rnn_backward, rnn_forward, rnn_step_backward, rnn_step_forward

__all__ = [
    "RNNGrads",
    "rnn_forward",
    "rnn_backward",
    "rnn_step_forward",
    "rnn_step_backward",
    "LSTMGrads",
    "lstm_forward",
    "lstm_backward",
    "lstm_step_forward",
    "lstm_step_backward",
    "GRUGrads",
    "gru_forward",
    "gru_backward",
    "gru_step_forward",
    "gru_step_backward",
    "AttentionGrads",
    "attention_forward",
    "attention_backward",
]
