"""LSTM: forward and backward through time, one step or a whole sequence.

PyTorch's layout and conventions (``torch.nn.LSTM`` with one layer), gates in
the order i, f, g, o:

    i = sigmoid(x W_ii^T + b_ii + h W_hi^T + b_hi)     f = sigmoid(... f rows ...)
    g = tanh(... g rows ...)                            o = sigmoid(... o rows ...)
    c' = f * c + i * g                                  h' = o * tanh(c')

with W_ih (4H, I), W_hh (4H, H), b_ih (4H,), b_hh (4H,) stacked i, f, g, o;
either bias may be None. Arrays are time-major, x (T, B, I), unless
``batch_first=True``, x (B, T, I). All floating arrays of one call share one
dtype, float32 or float64.

The kernels are in ``_lstm.pyx``; the same functions in plain NumPy are in
``seqkern.reference.lstm``. Results do not depend on the number of threads: the
work is split in blocks fixed by the problem size and the machine's core count,
so 1 and N threads give bitwise-identical results.
"""

from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from seqkern import _workspace
from seqkern._dispatch import kernel_module

_lstm = kernel_module("_lstm")
from seqkern._step_gemm import step_gemm_mode
from seqkern._threads import blas_single_thread, block_count, effective_num_threads
from seqkern._types import LSTMGrads
from seqkern._recurrent import LSTMArgs
from seqkern._validation import check_bool, check_cache

__all__ = [
    "LSTMCache",
    "LSTMStepCache",
    "LSTMGrads",
    "lstm_forward",
    "lstm_backward",
    "lstm_step_forward",
    "lstm_step_backward",
]


class LSTMCache:
    """What :func:`lstm_backward` needs from :func:`lstm_forward`.

    Per token (one time step of one sequence) it keeps the four gate activations
    i, f, g, o and the cell state c_t: 5 H values, i.e. ``20 H`` bytes in float32
    and ``40 H`` in float64, beside ``out`` (the hidden states, returned anyway and
    held by reference). The gates of a token are in the kernel's order (grouped by
    blocks of hidden units: _lstm.pyx, "Gate layout"). It holds references, not
    copies, to x, h0, c0 and the weights: do not modify those arrays in place
    between forward and backward.
    """

    __slots__ = ("args", "out", "gates", "cells")

    def __init__(self, args, out, gates, cells):
        self.args = args
        self.out = out        # (T, B, H), time-major: every h_t
        self.gates = gates    # (T, B, 4H): the gate activations, kernel's order
        self.cells = cells    # (T, B, H): every c_t


class LSTMStepCache:
    """What :func:`lstm_step_backward` needs from :func:`lstm_step_forward`."""

    __slots__ = ("seq",)

    def __init__(self, seq):
        self.seq = seq


def _forward(a, return_cache):
    T, B, H = a.T, a.B, a.H
    dt = a.dtype
    if not (T and B and H):               # (all empty)
        out = np.zeros((T, B, H), dt)
        gates, cells = np.zeros((T, B, 4 * H), dt), np.zeros((T, B, H), dt)
        h_n, c_n = a.h0.copy(), a.c0.copy()
    else:
        # the kernel writes every element of these; without a cache it keeps the
        # gates and cells in its own scratch
        out = _workspace.empty((T, B, H), dt)
        h_n, c_n = np.empty((B, H), dt), np.empty((B, H), dt)
        gates = _workspace.empty((T, B, 4 * H), dt) if return_cache else None
        cells = _workspace.empty((T, B, H), dt) if return_cache else None
        with blas_single_thread():
            _lstm.forward(a.x, a.h0, a.c0, a.W_ih, a.W_hh, a.bias(), a.lengths, out, h_n,
                          c_n, gates, cells, effective_num_threads(), block_count(),
                          step_gemm_mode())
    cache = LSTMCache(a, out, gates, cells) if return_cache else None
    return out, h_n, c_n, cache


Array = NDArray[np.floating]


def lstm_forward(x: ArrayLike, h0: Optional[ArrayLike], c0: Optional[ArrayLike],
                 W_ih: ArrayLike, W_hh: ArrayLike, b_ih: Optional[ArrayLike] = None,
                 b_hh: Optional[ArrayLike] = None, *, lengths: Optional[ArrayLike] = None,
                 batch_first: bool = False, return_cache: bool = True
                 ) -> Tuple[Array, Array, Array, Optional["LSTMCache"]]:
    """Run an LSTM over a whole sequence.

    Parameters
    ----------
    x : (T, B, I) array, or (B, T, I) with ``batch_first``
    h0, c0 : (B, H) arrays, or None for zeros
    W_ih : (4H, I);  W_hh : (4H, H);  b_ih, b_hh : (4H,) or None; rows i, f, g, o
    lengths : (B,) integers in [0, T], or None for all T. Sequence b stops after
        lengths[b] steps: its later outputs are 0 and h_n[b], c_n[b] are its
        states after lengths[b] steps (PyTorch's packed sequences give the same).
    return_cache : False keeps nothing for the backward (inference); cache is None.

    Returns
    -------
    out : (T, B, H) (or (B, T, H) with ``batch_first``), every h_t
    h_n, c_n : (B, H), the final states
    cache : LSTMCache for :func:`lstm_backward` (5 H values per token), or None
    """
    return_cache = check_bool("return_cache", return_cache)
    a = LSTMArgs(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, batch_first)
    out, h_n, c_n, cache = _forward(a, return_cache)
    if a.batch_first:
        out = out.transpose(1, 0, 2)
    return out, h_n, c_n, cache


def _backward(cache, d_out, d_h_n, d_c_n):
    a = cache.args
    T, B, I, H = a.T, a.B, a.I, a.H
    dt = a.dtype
    if T and B and H:
        # the kernel writes every element of these
        dx = _workspace.empty((T, B, I), dt)
        dh0, dc0 = np.empty((B, H), dt), np.empty((B, H), dt)
        dW_ih, dW_hh = _workspace.empty((4 * H, I), dt), _workspace.empty((4 * H, H), dt)
        db = np.empty(4 * H, dt)
        with blas_single_thread():
            _lstm.backward(a.x_for_grads(), d_out, d_h_n, d_c_n, a.live_rows(0, a.h0), a.c0,
                           a.W_ih, a.W_hh, a.lengths, cache.out, cache.gates, cache.cells, dx, dh0,
                           dc0, dW_ih, dW_hh, db, effective_num_threads(), block_count(),
                           step_gemm_mode())
        a.zero_padding(dx)
    else:
        dx = np.zeros((T, B, I), dt)
        dh0 = np.zeros((B, H), dt) if d_h_n is None else d_h_n.copy()
        dc0 = np.zeros((B, H), dt) if d_c_n is None else d_c_n.copy()
        dW_ih, dW_hh = np.zeros((4 * H, I), dt), np.zeros((4 * H, H), dt)
        db = np.zeros(4 * H, dt)
    return LSTMGrads(
        dx, dh0, dc0, dW_ih, dW_hh,
        None if a.b_ih is None else db,
        None if a.b_hh is None else db.copy(),
    )


def lstm_backward(d_out: Optional[ArrayLike], d_h_n: Optional[ArrayLike],
                  d_c_n: Optional[ArrayLike], cache: "LSTMCache") -> LSTMGrads:
    """Backpropagate through time.

    Parameters
    ----------
    d_out : gradient of the loss with respect to ``out``, shaped like it, or None
    d_h_n, d_c_n : (B, H) gradients with respect to ``h_n`` and ``c_n``, or None
    cache : the LSTMCache from :func:`lstm_forward`

    Returns
    -------
    LSTMGrads(dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh), dx shaped like x;
    db_ih / db_hh are None where that bias was None.

    The kernel walks back through time in chunks of max(2, 512 // B) steps (R
    rows of steps x batch) and adds each chunk's weight and input gradients as
    soon as its steps are done, so its scratch beyond the outputs is about
    R (4H + I + 2H) values, 64 R per thread and the weights packed once more,
    whatever the sequence length.
    """
    cache = check_cache(cache, LSTMCache, "lstm_forward (with return_cache=True)")
    a = cache.args
    d_out = a.seq_grad("d_out", d_out)
    d_h_n = a.state_grad("d_h_n", d_h_n)
    d_c_n = a.state_grad("d_c_n", d_c_n)
    g = _backward(cache, d_out, d_h_n, d_c_n)
    if a.batch_first:
        g = g._replace(dx=g.dx.transpose(1, 0, 2))
    return g


def lstm_step_forward(x: ArrayLike, h_prev: Optional[ArrayLike], c_prev: Optional[ArrayLike],
                      W_ih: ArrayLike, W_hh: ArrayLike, b_ih: Optional[ArrayLike] = None,
                      b_hh: Optional[ArrayLike] = None) -> Tuple[Array, Array, "LSTMStepCache"]:
    """One LSTM step: x (B, I), h_prev and c_prev (B, H) or None for zeros
    -> (h_next (B, H), c_next (B, H), cache)."""
    a = LSTMArgs(x, h_prev, c_prev, W_ih, W_hh, b_ih, b_hh, None, False, x_ndim=2)
    out, _, c_n, seq = _forward(a, True)
    return out[0], c_n, LSTMStepCache(seq)


def lstm_step_backward(dh_next: ArrayLike, dc_next: Optional[ArrayLike],
                       cache: "LSTMStepCache") -> LSTMGrads:
    """Backward of one step: dh_next (B, H), dc_next (B, H) or None -> LSTMGrads
    (dx (B, I), dh0 and dc0 = gradients of h_prev and c_prev)."""
    cache = check_cache(cache, LSTMStepCache, "lstm_step_forward")
    a = cache.seq.args
    dh = a.state_grad("dh_next", dh_next, required=True)
    dc_next = a.state_grad("dc_next", dc_next)
    g = _backward(cache.seq, dh[None], None, dc_next)
    return g._replace(dx=g.dx[0])
