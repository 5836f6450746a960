"""Elman RNN: forward and backward through time, one step or a whole sequence.

PyTorch's layout and conventions (``torch.nn.RNN`` with one layer):

    h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),   act = tanh or relu

with W_ih (H, I), W_hh (H, H), b_ih (H,), b_hh (H,); either bias may be None.
Arrays are time-major, x (T, B, I), unless ``batch_first=True``, x (B, T, I).
All floating arrays of one call share one dtype, float32 or float64.

The kernels are in ``_rnn.pyx``; the same functions in plain NumPy are in
``seqkern.reference.rnn``. Results do not depend on the number of threads: the
work is split in blocks fixed by the problem size, so 1 and N threads give
bitwise-identical results.
"""

from typing import Literal, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from seqkern import _rnn
from seqkern._step_gemm import step_gemm_mode
from seqkern._threads import blas_single_thread, block_count, effective_num_threads
from seqkern._types import RNNGrads
from seqkern._validation import (
    check_bool,
    check_cache,
    check_choice,
    check_shape,
    float_array,
    lengths_array,
    optional_float_array,
)

__all__ = [
    "RNNCache",
    "RNNStepCache",
    "RNNGrads",
    "rnn_forward",
    "rnn_backward",
    "rnn_step_forward",
    "rnn_step_backward",
]

NONLINEARITIES = ("tanh", "relu")


class RNNArgs:
    """Checked, time-major, C-contiguous arguments of an RNN call (shared by the
    kernel wrappers and the references so that both reject the same inputs)."""

    __slots__ = ("x", "h0", "W_ih", "W_hh", "b_ih", "b_hh", "nonlinearity", "lengths",
                 "batch_first", "T", "B", "I", "H", "dtype")

    def __init__(self, x, h0, W_ih, W_hh, b_ih, b_hh, nonlinearity, lengths, batch_first,
                 x_ndim=3):
        self.batch_first = check_bool("batch_first", batch_first)
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        x = float_array("x", x, x_ndim)
        if x_ndim == 2:           # one step: x (B, I)
            x = x[None]
        elif self.batch_first:    # (B, T, I) -> (T, B, I)
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        self.x = x
        self.dtype = dt = x.dtype
        self.T, self.B, self.I = T, B, I = x.shape
        self.W_ih = float_array("W_ih", W_ih, 2, dt)
        H = self.H = self.W_ih.shape[0]
        check_shape("W_ih", self.W_ih, (H, I), f"(H, I) = ({H}, {I})")
        self.W_hh = float_array("W_hh", W_hh, 2, dt)
        check_shape("W_hh", self.W_hh, (H, H), "(H, H)")
        self.b_ih = optional_float_array("b_ih", b_ih, 1, dt)
        if self.b_ih is not None:
            check_shape("b_ih", self.b_ih, (H,), "(H,)")
        self.b_hh = optional_float_array("b_hh", b_hh, 1, dt)
        if self.b_hh is not None:
            check_shape("b_hh", self.b_hh, (H,), "(H,)")
        name = "h_prev" if x_ndim == 2 else "h0"
        if h0 is None:
            self.h0 = np.zeros((B, H), dt)
        else:
            self.h0 = float_array(name, h0, 2, dt)
            check_shape(name, self.h0, (B, H), "(B, H)")
        self.lengths = lengths_array(lengths, B, T)

    def bias(self):
        """b_ih + b_hh (zeros where both are None), shape (H,)."""
        b = np.zeros(self.H, self.dtype)
        if self.b_ih is not None:
            b += self.b_ih
        if self.b_hh is not None:
            b += self.b_hh
        return b


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
    out = np.zeros((T, B, H), a.dtype)
    h_n = a.h0.copy()
    if T and B and H:
        with blas_single_thread():
            _rnn.forward(a.x, a.h0, a.W_ih, a.W_hh, a.bias(), a.lengths, out, h_n,
                         a.nonlinearity == "relu", effective_num_threads(), block_count(),
                         step_gemm_mode())
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


def _grad_array(name, g, expected, legend, dtype):
    if g is None:
        return None
    g = float_array(name, g, len(expected), dtype)
    check_shape(name, g, expected, legend)
    return g


def _backward(cache, d_out, d_h_n):
    a, out = cache.args, cache.out
    T, B, I, H = a.T, a.B, a.I, a.H
    dt = a.dtype
    dx = np.zeros((T, B, I), dt)
    dh0 = np.zeros((B, H), dt) if d_h_n is None else d_h_n.copy()
    dW_ih = np.zeros((H, I), dt)
    dW_hh = np.zeros((H, H), dt)
    db = np.zeros(H, dt)
    if T and B and H:
        dz = np.empty((T, B, H), dt)
        with blas_single_thread():
            _rnn.backward(a.x, d_out, d_h_n, a.h0, out, a.W_ih, a.W_hh, a.lengths,
                          dz, dx, dh0, dW_ih, dW_hh, db,
                          a.nonlinearity == "relu", effective_num_threads(), block_count(),
                          step_gemm_mode())
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
    T, B, H = a.T, a.B, a.H
    g_out = None
    if d_out is not None:
        if a.batch_first:
            g_out = _grad_array("d_out", d_out, (B, T, H), "(B, T, H)", a.dtype)
            g_out = np.ascontiguousarray(g_out.transpose(1, 0, 2))
        else:
            g_out = _grad_array("d_out", d_out, (T, B, H), "(T, B, H)", a.dtype)
    g_h_n = _grad_array("d_h_n", d_h_n, (B, H), "(B, H)", a.dtype)
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
    if dh_next is None:
        raise TypeError("dh_next must be a float32 or float64 array, got None")
    dh = float_array("dh_next", dh_next, 2, a.dtype)
    check_shape("dh_next", dh, (a.B, a.H), "(B, H)")
    g = _backward(cache.seq, dh[None], None)
    return g._replace(dx=g.dx[0])
