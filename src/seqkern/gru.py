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
work is split in blocks fixed by the problem size, so 1 and N threads give
bitwise-identical results.
"""

from functools import lru_cache

from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from seqkern import _workspace
from seqkern._dispatch import kernel_module

_gru = kernel_module("_gru")
from seqkern._threads import blas_single_thread, effective_num_threads
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


_CHUNK_ROWS = 512
_BWD_CHUNK_ROWS = 1024
_FUSED = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


@lru_cache(maxsize=64)
def _gate_order(H, width):
    """Row permutation of the packed gate layout (see _gru.pyx): packed row k is
    row order[k] of PyTorch's (r; z; n) stacking. None when it is the identity."""
    if width >= H:
        return None
    parts = []
    for c0 in range(0, H, width):
        c1 = min(c0 + width, H)
        for gate in range(3):
            parts.append(np.arange(gate * H + c0, gate * H + c1))
    order = np.concatenate(parts)
    order.setflags(write=False)
    return order


def _pack(a, order):
    return a if order is None else a[order]


def _transposed(W_hh, wanted, T, B, packed):
    """W_hh^T (H, 3H) for the kernel's step products on OpenBLAS where ``wanted``
    (the forward's at B = 1, the backward's at B > 1), else None: packed products
    and calls of few steps (_gru.few_steps) use W_hh itself."""
    if not wanted or packed & _gru.PK_STEP or _gru.few_steps(T, B):
        return None
    W_hh_T = _workspace.empty(W_hh.shape[::-1], W_hh.dtype)
    _gru.transpose(W_hh, W_hh_T)
    return W_hh_T


def _unpack(a, order):
    if order is None:
        return a
    out = np.empty_like(a)
    out[order] = a
    return out


class GRUCache:
    """What :func:`gru_backward` needs from :func:`gru_forward`.

    Per token (one time step of one sequence) it keeps the gates r, z, n and
    h W_hn^T + b_hn: 4H numbers, i.e. 16H bytes in float32 and 32H in float64.
    Beyond that it holds references, not copies, to x, h0 and ``out`` (which
    doubles as the saved hidden states), and the weights: reordered into blocks of
    units (O(H(I+H)), once per call), or W_ih and W_hh themselves where that is
    their layout (a call of few steps, or a small H). Do not modify those arrays
    in place between forward and backward.
    """

    __slots__ = ("args", "out", "W_ih", "W_hh", "gates", "hn", "width")

    def __init__(self, args, out, W_ih, W_hh, gates, hn, width):
        self.args = args
        self.out = out        # (T, B, H), time-major
        self.W_ih = W_ih      # (3H, I) packed
        self.W_hh = W_hh      # (3H, H) packed
        self.gates = gates    # (T, B, 3H) packed r, z, n
        self.hn = hn          # (T, B, H)
        self.width = width    # unit-block width of the packing


class GRUStepCache:
    """What :func:`gru_step_backward` needs from :func:`gru_step_forward`."""

    __slots__ = ("seq",)

    def __init__(self, seq):
        self.seq = seq


def _forward(a, return_cache):
    T, B, H = a.T, a.B, a.H
    dt = a.dtype
    out = _workspace.zeros((T, B, H), dt)
    h_n = a.h0.copy()
    if not (T and B and H):
        cache = GRUCache(a, out, None, None, np.zeros((T, B, 3 * H), dt),
                         np.zeros((T, B, H), dt), H) if return_cache else None
        return out, h_n, cache
    # packed: the weight products on _packed_gemm.h (see _gru.pyx); otherwise
    # OpenBLAS, and batch 1 runs its steps as vector @ W_hh^T (see _gru_cell.h)
    # unless the call has few steps (_gru.few_steps: OpenBLAS's GEMV on W_hh)
    packed = _gru.packed_products(T, B, H, step_gemm_mode(), False)
    width = _gru.unit_block(T, B, H, packed & _gru.PK_STEP)
    order = _gate_order(H, width)
    bias = np.zeros(3 * H, dt) if a.b_ih is None else a.b_ih.copy()
    b_hn = np.zeros(H, dt)
    if a.b_hh is not None:
        bias[:2 * H] += a.b_hh[:2 * H]     # b_hr, b_hz fold into the input projection
        b_hn[:] = a.b_hh[2 * H:]           # b_hn sits inside r * (...): kept apart
    W_ih = _pack(a.W_ih, order)
    W_hh = _pack(a.W_hh, order)
    W_hh_T = _transposed(W_hh, B == 1, T, B, packed)
    # Without a cache the steps run in chunks of about _CHUNK_ROWS rows (T*B), so
    # the gate buffer stays small (see _gru.forward).
    Tc = T if return_cache else min(T, max(1, _CHUNK_ROWS // B))
    gates = _workspace.empty((Tc, B, 3 * H), dt)
    hn = _workspace.empty((T if return_cache else 1, B, H), dt)
    gh = np.empty((B, 3 * H), dt)
    with blas_single_thread():
        _gru.forward(a.x, a.h0, W_ih, W_hh, W_hh_T, _pack(bias, order), b_hn, a.lengths,
                     gates, hn, gh, out, h_n, width, effective_num_threads(), packed)
    cache = GRUCache(a, out, W_ih, W_hh, gates, hn, width) if return_cache else None
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
    dx = _workspace.zeros((T, B, I), dt)
    dh0 = np.zeros((B, H), dt) if d_h_n is None else d_h_n.copy()
    dW_ih = _workspace.zeros((3 * H, I), dt)
    dW_hh = _workspace.zeros((3 * H, H), dt)
    db_ih = np.zeros(3 * H, dt)
    db_hh = np.zeros(3 * H, dt)
    if T and B and H:
        order = _gate_order(H, c.width)
        # the backward runs in chunks of about _BWD_CHUNK_ROWS rows (see _gru.backward)
        Tc = min(T, max(2, _BWD_CHUNK_ROWS // B))
        dgi = _workspace.empty((Tc, B, 3 * H), dt)
        dgh = _workspace.empty((Tc, B, 3 * H), dt)
        packed = _gru.packed_products(T, B, H, step_gemm_mode(), True)
        W_hh_T = _transposed(c.W_hh, B > 1, T, B, packed)
        with blas_single_thread():
            # d_out may be None: pick the fused specialisation by dtype, not by argument
            _gru.backward[_FUSED[dt]](d_out, a.x, a.h0, c.out, c.W_ih, c.W_hh, W_hh_T, c.gates,
                                      c.hn, a.lengths, dgi, dgh, dx, dh0, dW_ih, dW_hh,
                                      db_ih, db_hh, c.width, effective_num_threads(), packed)
        dW_ih, dW_hh = _unpack(dW_ih, order), _unpack(dW_hh, order)
        db_ih, db_hh = _unpack(db_ih, order), _unpack(db_hh, order)
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
