"""GRU: forward and backward through time, one step or a whole sequence.

PyTorch's layout and conventions (``torch.nn.GRU`` with one layer), gate order r, z, n:

    r  = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
    z  = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n  = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
    h' = (1 - z) * n + z * h

with W_ih (3H, I), W_hh (3H, H), b_ih (3H,), b_hh (3H,) (rows stacked r, z, n);
either bias may be None. Arrays are time-major, x (T, B, I), unless
``batch_first=True``, x (B, T, I). All floating arrays of one call share one
dtype, float32 or float64.

The kernels are in ``_gru.pyx``; the same functions in plain NumPy are in
``seqkern.reference.gru``. Results do not depend on the number of threads: the
work is split in blocks fixed by the problem size and the machine's core count,
never by the thread count, so 1 and N threads give bitwise-identical results.
"""

from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from seqkern import _workspace
from seqkern._dispatch import kernel_module

_gru = kernel_module("_gru")
from seqkern._threads import blas_single_thread, block_count, effective_num_threads
from seqkern._types import GRUGrads
from seqkern._recurrent import GRUArgs
from seqkern._step_gemm import step_gemm_mode
from seqkern._validation import check_bool, check_cache

__all__ = [
    "GRUCache",
    "GRUStepCache",
    "GRUGrads",
    "gru_forward",
    "gru_backward",
    "gru_step_forward",
    "gru_step_backward",
]




class GRUCache:
    """What :func:`gru_backward` needs from :func:`gru_forward`.

    Per token (one time step of one sequence) it keeps the gates r, z, n and
    h W_hn^T + b_hn: 4H numbers, i.e. 16H bytes in float32 and 32H in float64.
    Beyond that it holds references, not copies, to x, h0, the weights and
    ``out`` (which doubles as the saved hidden states). Do not modify those arrays
    in place between forward and backward.
    """

    __slots__ = ("args", "out", "gates", "hn")

    def __init__(self, args, out, gates, hn):
        self.args = args
        self.out = out        # (T, B, H), time-major
        self.gates = gates    # (T, B, 3H) r, z, n, in the kernel's grouped layout (_gru.pyx)
        self.hn = hn          # (T, B, H)


class GRUStepCache:
    """What :func:`gru_step_backward` needs from :func:`gru_step_forward`."""

    __slots__ = ("seq",)

    def __init__(self, seq):
        self.seq = seq


def _forward(a, return_cache):
    T, B, H = a.T, a.B, a.H
    dt = a.dtype
    if not (T and B and H):
        out = np.zeros((T, B, H), dt)
        cache = GRUCache(a, out, np.zeros((T, B, 3 * H), dt),
                         np.zeros((T, B, H), dt)) if return_cache else None
        return out, a.h0.copy(), cache
    out = _workspace.empty((T, B, H), dt)
    h_n = np.empty((B, H), dt)
    gates = _workspace.empty((T, B, 3 * H), dt) if return_cache else None
    hn = _workspace.empty((T, B, H), dt) if return_cache else None
    with blas_single_thread():
        _gru.forward(a.x, a.h0, a.W_ih, a.W_hh, a.b_ih, a.b_hh, a.lengths, gates, hn, out, h_n,
                     effective_num_threads(), block_count(), step_gemm_mode())
    cache = GRUCache(a, out, gates, hn) if return_cache else None
    return out, h_n, cache


Array = NDArray[np.floating]


def gru_forward(x: ArrayLike, h0: Optional[ArrayLike], W_ih: ArrayLike, W_hh: ArrayLike,
                b_ih: Optional[ArrayLike] = None, b_hh: Optional[ArrayLike] = None, *,
                lengths: Optional[ArrayLike] = None, batch_first: bool = False,
                return_cache: bool = True) -> Tuple[Array, Array, Optional["GRUCache"]]:
    """Run a GRU over a whole sequence.

    Parameters
    ----------
    x : (T, B, I) array, or (B, T, I) with ``batch_first``
    h0 : (B, H) array, or None for zeros
    W_ih : (3H, I);  W_hh : (3H, H);  b_ih, b_hh : (3H,) or None
    lengths : (B,) integers in [0, T], or None for all T. Sequence b stops after
        lengths[b] steps: its later outputs are 0 and h_n[b] is its state after
        lengths[b] steps (PyTorch's packed sequences give the same results).
    return_cache : False keeps nothing for the backward (inference); cache is None.

    Returns
    -------
    out : (T, B, H) (or (B, T, H) with ``batch_first``), every h_t
    h_n : (B, H), the final states
    cache : GRUCache for :func:`gru_backward` (16H bytes per token in float32,
        32H in float64), or None
    """
    return_cache = check_bool("return_cache", return_cache)
    a = GRUArgs(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, batch_first)
    out, h_n, cache = _forward(a, return_cache)
    if a.batch_first:
        out = out.transpose(1, 0, 2)
    return out, h_n, cache


def _backward(c, d_out, d_h_n):
    a = c.args
    T, B, I, H = a.T, a.B, a.I, a.H
    dt = a.dtype
    if T and B and H:
        dx = _workspace.empty((T, B, I), dt)
        dh0 = np.empty((B, H), dt)
        dW_ih = _workspace.empty((3 * H, I), dt)
        dW_hh = _workspace.empty((3 * H, H), dt)
        db_ih = np.empty(3 * H, dt)
        db_hh = np.empty(3 * H, dt)
        with blas_single_thread():
            _gru.backward(a.x_for_grads(), d_out, d_h_n, a.live_rows(0, a.h0), c.out, a.W_ih,
                          a.W_hh, c.gates, c.hn, a.lengths, dx, dh0, dW_ih, dW_hh, db_ih, db_hh,
                          effective_num_threads(), block_count(), step_gemm_mode())
        a.zero_padding(dx)
    else:
        dx = np.zeros((T, B, I), dt)
        dh0 = np.zeros((B, H), dt) if d_h_n is None else d_h_n.copy()
        dW_ih = np.zeros((3 * H, I), dt)
        dW_hh = np.zeros((3 * H, H), dt)
        db_ih = np.zeros(3 * H, dt)
        db_hh = np.zeros(3 * H, dt)
    return GRUGrads(
        dx, dh0, dW_ih, dW_hh,
        None if a.b_ih is None else db_ih,
        None if a.b_hh is None else db_hh,
    )


def gru_backward(d_out: Optional[ArrayLike], d_h_n: Optional[ArrayLike],
                 cache: "GRUCache") -> GRUGrads:
    """Backpropagate through time.

    Parameters
    ----------
    d_out : gradient of the loss with respect to ``out``, shaped like it, or None
    d_h_n : (B, H) gradient with respect to ``h_n``, or None
    cache : the GRUCache from :func:`gru_forward`

    Returns
    -------
    GRUGrads(dx, dh0, dW_ih, dW_hh, db_ih, db_hh), dx shaped like x;
    db_ih / db_hh are None where that bias was None.
    """
    cache = check_cache(cache, GRUCache, "gru_forward (with return_cache=True)")
    a = cache.args
    d_out = a.seq_grad("d_out", d_out)
    d_h_n = a.state_grad("d_h_n", d_h_n)
    g = _backward(cache, d_out, d_h_n)
    if a.batch_first:
        g = g._replace(dx=g.dx.transpose(1, 0, 2))
    return g


def gru_step_forward(x: ArrayLike, h_prev: Optional[ArrayLike], W_ih: ArrayLike, W_hh: ArrayLike,
                     b_ih: Optional[ArrayLike] = None, b_hh: Optional[ArrayLike] = None
                     ) -> Tuple[Array, "GRUStepCache"]:
    """One GRU step: x (B, I), h_prev (B, H) or None for zeros -> (h_next (B, H), cache)."""
    a = GRUArgs(x, h_prev, W_ih, W_hh, b_ih, b_hh, None, False, x_ndim=2)
    out, _, seq = _forward(a, True)
    return out[0], GRUStepCache(seq)


def gru_step_backward(dh_next: ArrayLike, cache: "GRUStepCache") -> GRUGrads:
    """Backward of one step: dh_next (B, H) -> GRUGrads (dx (B, I), dh0 = gradient of h_prev)."""
    cache = check_cache(cache, GRUStepCache, "gru_step_forward")
    a = cache.seq.args
    dh = a.state_grad("dh_next", dh_next, required=True)
    g = _backward(cache.seq, dh[None], None)
    return g._replace(dx=g.dx[0])
