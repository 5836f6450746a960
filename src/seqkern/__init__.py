"""seqkern: Cython-accelerated CPU kernels for recurrent networks and attention.

Every kernel has a plain-NumPy twin in :mod:`seqkern.reference` that it is
tested against. Threads: :func:`get_num_threads`, :func:`set_num_threads` (the
whole process) and the context manager :func:`threads` (the calling thread's
block). Memory: :func:`workspace_limit` and
:func:`free_workspace` (freed large arrays and kernel scratch kept for reuse).
"""

__version__ = "0.1.0"

from seqkern._config import show_config
from seqkern._threads import MAX_THREADS, get_num_threads, set_num_threads, threads
from seqkern._types import AttentionGrads, GRUGrads, LSTMGrads, RNNGrads
from seqkern._workspace import clear as free_workspace, max_bytes as workspace_limit
from seqkern.attention import attention_backward, attention_forward
from seqkern.gru import gru_backward, gru_forward, gru_step_backward, gru_step_forward
from seqkern.lstm import lstm_backward, lstm_forward, lstm_step_backward, lstm_step_forward
from seqkern.rnn import rnn_backward, rnn_forward, rnn_step_backward, rnn_step_forward

from seqkern import reference  # noqa: E402  (plain-NumPy twins of every kernel)
from seqkern import nn, optim  # noqa: E402  (layers and optimisers on the kernels)

__all__ = [
    "__version__",
    "reference",
    "nn",
    "optim",
    "show_config",
    "MAX_THREADS",
    "get_num_threads",
    "set_num_threads",
    "threads",
    "workspace_limit",
    "free_workspace",
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
