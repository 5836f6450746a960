"""seqkern.nn: layers with PyTorch's names, shapes and conventions, on the kernels.

Every layer keeps its parameters in ``params`` and their gradients in
``grads`` (dicts keyed by PyTorch's ``state_dict`` names), has
``forward(...) -> (outputs..., cache)`` and ``backward(d_outputs..., cache) ->
d_inputs``; backward ADDS into ``grads`` and ``zero_grad()`` clears them.
``state_dict()`` / ``load_state_dict(d, strict=True)`` take and give PyTorch's
keys and shapes. No autograd: the caches are explicit values.
"""

from seqkern.nn._module import Module
from seqkern.nn._rnn import GRU, LSTM, RNN
from seqkern.nn._attention import MultiheadAttention
from seqkern.nn._basic import Embedding, Linear, clip_grad_norm_, clip_grad_value_, cross_entropy

__all__ = ["Module", "RNN", "LSTM", "GRU", "MultiheadAttention", "Linear", "Embedding",
           "cross_entropy", "clip_grad_norm_", "clip_grad_value_"]
