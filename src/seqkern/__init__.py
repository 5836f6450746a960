"""seqkern: Cython-accelerated CPU kernels for recurrent networks and attention.

Every kernel has a plain-NumPy twin in :mod:`seqkern.reference` that it is
tested against. Threads: :func:`get_num_threads`, :func:`set_num_threads` (the
whole process) and the context manager :func:`threads` (the calling thread's
block). Memory: :func:`workspace_limit` and
:func:`free_workspace` (freed large arrays and kernel scratch kept for reuse).

The public names load on first use (PEP 562): ``import seqkern.reference``
needs none of the compiled modules, and ``import seqkern`` loads them only
when a kernel or a thread setting is first asked for.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:   # the names as type checkers see them; at run time: _PUBLIC
    from seqkern import attention, gru, lstm, nn, optim, reference, rnn
    from seqkern._config import show_config
    from seqkern._threads import MAX_THREADS, get_num_threads, set_num_threads, threads
    from seqkern._types import AttentionGrads, GRUGrads, LSTMGrads, RNNGrads
    from seqkern._workspace import clear as free_workspace, max_bytes as workspace_limit
    from seqkern.attention import attention_backward, attention_forward
    from seqkern.gru import gru_backward, gru_forward, gru_step_backward, gru_step_forward
    from seqkern.lstm import lstm_backward, lstm_forward, lstm_step_backward, lstm_step_forward
    from seqkern.rnn import rnn_backward, rnn_forward, rnn_step_backward, rnn_step_forward

#: Each public name: (the module that defines it, its name there).
_PUBLIC = {
    "show_config": ("_config", "show_config"),
    "MAX_THREADS": ("_threads", "MAX_THREADS"),
    "get_num_threads": ("_threads", "get_num_threads"),
    "set_num_threads": ("_threads", "set_num_threads"),
    "threads": ("_threads", "threads"),
    "workspace_limit": ("_workspace", "max_bytes"),
    "free_workspace": ("_workspace", "clear"),
    "RNNGrads": ("_types", "RNNGrads"),
    "rnn_forward": ("rnn", "rnn_forward"),
    "rnn_backward": ("rnn", "rnn_backward"),
    "rnn_step_forward": ("rnn", "rnn_step_forward"),
    "rnn_step_backward": ("rnn", "rnn_step_backward"),
    "LSTMGrads": ("_types", "LSTMGrads"),
    "lstm_forward": ("lstm", "lstm_forward"),
    "lstm_backward": ("lstm", "lstm_backward"),
    "lstm_step_forward": ("lstm", "lstm_step_forward"),
    "lstm_step_backward": ("lstm", "lstm_step_backward"),
    "GRUGrads": ("_types", "GRUGrads"),
    "gru_forward": ("gru", "gru_forward"),
    "gru_backward": ("gru", "gru_backward"),
    "gru_step_forward": ("gru", "gru_step_forward"),
    "gru_step_backward": ("gru", "gru_step_backward"),
    "AttentionGrads": ("_types", "AttentionGrads"),
    "attention_forward": ("attention", "attention_forward"),
    "attention_backward": ("attention", "attention_backward"),
}

#: Submodules reachable as attributes of the package without importing them first.
_SUBMODULES = ("reference", "nn", "optim", "rnn", "lstm", "gru", "attention")

__all__ = ["__version__", "reference", "nn", "optim", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        module, attr = _PUBLIC[name]
        value = getattr(importlib.import_module("seqkern." + module), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module("seqkern." + name)
    else:
        raise AttributeError(f"module 'seqkern' has no attribute {name!r}")
    globals()[name] = value     # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
