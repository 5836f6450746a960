"""Elman RNN: forward and backward through time, one step or a whole sequence.

PyTorch's layout and conventions (``torch.nn.RNN`` with one layer):

    h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),   act = tanh or relu

with W_ih (H, I), W_hh (H, H), b_ih (H,), b_hh (H,); either bias may be None.
Arrays are time-major, x (T, B, I), unless ``batch_first=True``, x (B, T, I).
All floating arrays of one call share one dtype, float32 or float64.

The kernels are in ``_rnn.pyx``; the same functions in plain NumPy are in
``seqkern.reference.rnn``. Results do not depend on the number of threads: the
work is split in blocks fixed by the problem size and the machine's core count
(``_threads.block_count``, a constant of the process), never by the thread count,
so 1 and N threads give bitwise-identical results.
"""

from typing import Literal, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from seqkern import _workspace
from seqkern._dispatch import kernel_module

_rnn = kernel_module("_rnn")
from seqkern._step_gemm import step_gemm_mode
from seqkern._threads import blas_single_thread, block_count, effective_num_threads
from seqkern._types import RNNGrads
from seqkern._recurrent import RNNArgs
from seqkern._validation import check_bool, check_cache

__all__ = [
    "RNNCache",
    "RNNStepCache",
    "RNNGrads",
    "rnn_forward",
    "rnn_backward",
    "rnn_step_forward",
    "rnn_step_backward",
]

class RNNCache:
    """What :func:`rnn_backward` needs from :func:`rnn_forward`.

    It holds references, not copies, to x, h0, the weights and ``out`` (which
    doubles as the saved hidden states): no bytes per token beyond ``out``
    itself. Do not modify those arrays in place between forward and backward.
    """

    __slots__ = ("args", "out")

    def __init__(self, args, out):
        self.args = args
        self.out = out        # (T, B, H), time-major


class RNNStepCache:
    """What :func:`rnn_step_backward` needs from :func:`rnn_step_forward`."""

    __slots__ = ("seq",)

    def __init__(self, seq):
        self.seq = seq


def _forward(a, return_cache):
    T, B, H = a.T, a.B, a.H
    if T and B and H:
        out = _workspace.empty((T, B, H), a.dtype)
        h_n = np.empty((B, H), a.dtype)
        with blas_single_thread():
            _rnn.forward(a.x, a.h0, a.W_ih, a.W_hh, a.bias(), a.lengths, out, h_n,
                         a.nonlinearity == "relu", effective_num_threads(), block_count(),
                         step_gemm_mode())
    else:
        out, h_n = np.zeros((T, B, H), a.dtype), a.h0.copy()
    cache = RNNCache(a, out) if return_cache else None
    return out, h_n, cache


Array = NDArray[np.floating]


def rnn_forward(x: ArrayLike, h0: Optional[ArrayLike], W_ih: ArrayLike, W_hh: ArrayLike,
                b_ih: Optional[ArrayLike] = None, b_hh: Optional[ArrayLike] = None, *,
                nonlinearity: Literal["tanh", "relu"] = "tanh",
                lengths: Optional[ArrayLike] = None, batch_first: bool = False,
                return_cache: bool = True) -> Tuple[Array, Array, Optional[RNNCache]]:
    """Run an Elman RNN over a whole sequence.

    Parameters
    ----------
    x : (T, B, I) array, or (B, T, I) with ``batch_first``
    h0 : (B, H) array, or None for zeros
    W_ih : (H, I);  W_hh : (H, H);  b_ih, b_hh : (H,) or None
    nonlinearity : "tanh" or "relu"
    lengths : (B,) integers in [0, T], or None for all T. Sequence b stops after
        lengths[b] steps: its later outputs are 0 and h_n[b] is its state after
        lengths[b] steps (PyTorch's packed sequences give the same results).
    return_cache : False keeps nothing for the backward (inference); cache is None.

    Returns
    -------
    out : (T, B, H) (or (B, T, H) with ``batch_first``), every h_t
    h_n : (B, H), the final states
    cache : RNNCache for :func:`rnn_backward`, or None
    """
    return_cache = check_bool("return_cache", return_cache)
    a = RNNArgs(x, h0, W_ih, W_hh, b_ih, b_hh, nonlinearity, lengths, batch_first)
    out, h_n, cache = _forward(a, return_cache)
    if a.batch_first:
        out = out.transpose(1, 0, 2)
    return out, h_n, cache


def _backward(cache, d_out, d_h_n):
    a, out = cache.args, cache.out
    T, B, I, H = a.T, a.B, a.I, a.H
    dt = a.dtype
    if T and B and H:
        dx = _workspace.empty((T, B, I), dt)
        dh0 = np.empty((B, H), dt)
        dW_ih = _workspace.empty((H, I), dt)
        dW_hh = _workspace.empty((H, H), dt)
        db = np.empty(H, dt)
        with blas_single_thread():
            _rnn.backward(a.x_for_grads(), d_out, d_h_n, a.live_rows(0, a.h0), out, a.W_ih,
                          a.W_hh, a.lengths, dx, dh0, dW_ih, dW_hh, db,
                          a.nonlinearity == "relu", effective_num_threads(), block_count(),
                          step_gemm_mode())
        a.zero_padding(dx)
    else:
        dx, dW_ih, dW_hh = np.zeros((T, B, I), dt), np.zeros((H, I), dt), np.zeros((H, H), dt)
        dh0 = np.zeros((B, H), dt) if d_h_n is None else d_h_n.copy()
        db = np.zeros(H, dt)
    return RNNGrads(
        dx, dh0, dW_ih, dW_hh,
        None if a.b_ih is None else db,
        None if a.b_hh is None else db.copy(),
    )


def rnn_backward(d_out: Optional[ArrayLike], d_h_n: Optional[ArrayLike],
                 cache: RNNCache) -> RNNGrads:
    """Backpropagate through time.

    Parameters
    ----------
    d_out : gradient of the loss with respect to ``out``, shaped like it, or None
    d_h_n : (B, H) gradient with respect to ``h_n``, or None
    cache : the RNNCache from :func:`rnn_forward`

    Returns
    -------
    RNNGrads(dx, dh0, dW_ih, dW_hh, db_ih, db_hh), dx shaped like x;
    db_ih / db_hh are None where that bias was None.
    """
    cache = check_cache(cache, RNNCache, "rnn_forward (with return_cache=True)")
    a = cache.args
    g_out = a.seq_grad("d_out", d_out)
    g_h_n = a.state_grad("d_h_n", d_h_n)
    g = _backward(cache, g_out, g_h_n)
    if a.batch_first:
        g = g._replace(dx=g.dx.transpose(1, 0, 2))
    return g


def rnn_step_forward(x: ArrayLike, h_prev: Optional[ArrayLike], W_ih: ArrayLike, W_hh: ArrayLike,
                     b_ih: Optional[ArrayLike] = None, b_hh: Optional[ArrayLike] = None, *,
                     nonlinearity: Literal["tanh", "relu"] = "tanh") -> Tuple[Array, RNNStepCache]:
    """One RNN step: x (B, I), h_prev (B, H) or None for zeros -> (h_next (B, H), cache)."""
    a = RNNArgs(x, h_prev, W_ih, W_hh, b_ih, b_hh, nonlinearity, None, False, x_ndim=2)
    out, _, seq = _forward(a, True)
    return out[0], RNNStepCache(seq)


def rnn_step_backward(dh_next: ArrayLike, cache: RNNStepCache) -> RNNGrads:
    """Backward of one step: dh_next (B, H) -> RNNGrads (dx (B, I), dh0 = gradient of h_prev)."""
    cache = check_cache(cache, RNNStepCache, "rnn_step_forward")
    a = cache.seq.args
    dh = a.state_grad("dh_next", dh_next, required=True)
    g = _backward(cache.seq, dh[None], None)
    return g._replace(dx=g.dx[0])
