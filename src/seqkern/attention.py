"""Batched multi-head attention, forward and backward, flash style (O(T) memory).

    out = softmax(scale * q @ k^T + float mask, masked) @ v      per (batch, head)

q (B, Hq, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv), out (B, Hq, Tq, Dv).
Hq must be a multiple of Hkv: query head h reads key/value head h // (Hq // Hkv)
(grouped-query attention; Hq == Hkv is ordinary multi-head attention).
All floating arrays of one call share one dtype, float32 or float64.

Masks, all optional and combinable:

- ``causal=True``: query i attends to keys j <= i + (Tk - Tq) (the last query
  sees every key, the convention for decoding with a key cache);
- ``mask``: boolean (True = may attend) or floating (added to the scores),
  broadcastable to (B, Hq, Tq, Tk); the broadcast is never materialised;
- ``key_lengths`` (B,): keys at or past ``key_lengths[b]`` are padding.

A key masked for a query row (by any of the three) never contributes to that
row, not even a NaN or Inf in its k or v, and a NaN or Inf in the row's q or
d_out never reaches that key's gradients; a finite float mask value, however
negative (finfo.min), weighs a key rather than masks it. A query row left with
no key to attend to gets an output of zeros and zero gradients, never NaN.

The kernels are in ``_attention.pyx``; the same functions in plain NumPy are in
``seqkern.reference.attention``. Results do not depend on the number of
threads: the work is split in tiles fixed by the problem size, so 1 and N
threads give bitwise-identical results. The GIL is released while they run.

Memory: O(T). The forward keeps the output and two numbers per query row (the
row's largest score and 1 / its softmax sum); the backward recomputes the
scores tile by tile. Scratch per thread is a few tiles; the backward may hold
up to 4 partial copies of dq when B * Hkv is small (``_attention.key_blocks``).
"""

from contextlib import nullcontext

from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from seqkern import _workspace
from seqkern._attention_args import AttentionArgs
from seqkern._dispatch import kernel_module
from seqkern._step_gemm import AUTO, BLAS, step_gemm_mode
from seqkern._threads import blas_single_thread, effective_num_threads
from seqkern._types import AttentionGrads
from seqkern._validation import check_bool, check_cache, check_shape, float_array

_attention = kernel_module("_attention")

__all__ = ["AttentionCache", "AttentionGrads", "attention_forward", "attention_backward"]


class AttentionCache:
    """What :func:`attention_backward` needs from :func:`attention_forward`.

    References, not copies, to the checked q, k, v (and mask), plus the output
    and two numbers per query row, ``stats`` (2, B, Hq, Tq): [0] the row's largest
    score m, [1] 1 / l with l = sum_j exp(S_ij - m) (both 0 for a row with no
    key), so that the backward gets P = exp(S - m) / l whatever the scores' size
    (m + log(l) loses log(l) to rounding when |m| is huge): O(T) memory. ``kernel`` holds (q, k, v, out) as the kernel sees them
    (the same arrays unless D or Dv needed zero-padding, see ``_pad``). Do not
    modify those arrays in place between forward and backward.
    """

    __slots__ = ("args", "kernel", "stats", "blas")

    def __init__(self, args, kernel, stats, blas):
        self.args = args
        self.kernel = kernel
        self.stats = stats
        self.blas = blas        # whether the forward's products ran on BLAS


#: Tile sizes (bq, bk) to force on the kernels (private, for tests): None lets
#: them choose (_attention.tile_sizes).
_tiles = None


def _products_on_blas():
    """Do the kernels' tile products run on BLAS? The instruction-set level's choice
    (_attention.BLAS_PRODUCTS) unless seqkern._step_gemm forces one."""
    mode = step_gemm_mode()
    return bool(_attention.BLAS_PRODUCTS) if mode == AUTO else mode == BLAS


def _blas_guard(blas):
    """BLAS held at one thread around a kernel call that uses it (see _threads)."""
    return blas_single_thread() if blas else nullcontext()


def _padded_width(n, dtype):
    """The kernel's products work on whole vectors: D and Dv are rounded up to a
    multiple of _attention.pad_multiple (at least one multiple, so D = 0 works)."""
    m = _attention.pad_multiple(dtype)
    return max(m, -(-n // m) * m)


def _pad(x, width):
    """``x`` with its last axis zero-padded to ``width`` (``x`` itself if it has
    that width already). Zero columns of q and k leave the scores unchanged; zero
    columns of v and d_out only add output and gradient columns that are cut off."""
    if x.shape[-1] == width:
        return x
    p = _workspace.zeros(x.shape[:-1] + (width,), x.dtype)
    p[..., :x.shape[-1]] = x
    return p


def _unpad(x, width):
    return x if x.shape[-1] == width else np.ascontiguousarray(x[..., :width])


def attention_forward(q: ArrayLike, k: ArrayLike, v: ArrayLike, *, causal: bool = False,
                      mask: Optional[ArrayLike] = None, key_lengths: Optional[ArrayLike] = None,
                      scale: Optional[float] = None, return_cache: bool = True
                      ) -> Tuple[NDArray[np.floating], Optional["AttentionCache"]]:
    """Multi-head attention forward.

    Parameters
    ----------
    q : (B, Hq, Tq, D);  k : (B, Hkv, Tk, D);  v : (B, Hkv, Tk, Dv);  Hq = G * Hkv
    causal : query i attends to keys j <= i + (Tk - Tq)
    mask : None, or boolean (True = may attend) or floating (added to the scores)
        array broadcastable to (B, Hq, Tq, Tk)
    key_lengths : None, or (B,) integers in [0, Tk]; keys at or past them are padding
    scale : the score scale, default 1 / sqrt(D)
    return_cache : False keeps nothing for the backward (inference); cache is None.

    Returns
    -------
    out : (B, Hq, Tq, Dv); zeros on a query row with no key to attend to
    cache : AttentionCache for :func:`attention_backward`, or None

    A key masked for a row (False in a boolean mask, -inf in a float mask, at or
    past key_lengths[b], or causally hidden) never contributes to that row, in the
    forward or the backward: not even a NaN or Inf in its k or v (nor does one in
    the row's q or d_out reach the key's gradients). A finite mask value, however
    negative, is not a mask: NaN and Inf at that key propagate as the math says.
    """
    return_cache = check_bool("return_cache", return_cache)
    a = AttentionArgs(q, k, v, causal, mask, key_lengths, scale)
    B, Hq, Tq, Tk, Dv = a.B, a.Hq, a.Tq, a.Tk, a.Dv
    Dp, Dvp = _padded_width(a.D, a.dtype), _padded_width(Dv, a.dtype)
    qk, kk, vk = _pad(a.q, Dp), _pad(a.k, Dp), _pad(a.v, Dvp)
    # BLAS skips a product whose alpha is 0 (C := beta C, as the reference BLAS
    # specifies), which would hide a NaN or Inf of q or k from 0 * (q . k): where
    # the scale is 0 in the call's dtype (a tiny one rounds to 0 in float32), the
    # products run on the kernel's own micro-kernel.
    blas = _products_on_blas() and a.dtype.type(a.scale) != 0
    if B and Hq and Tq and Tk and Dv:
        outk = _workspace.empty((B, Hq, Tq, Dvp), a.dtype)     # the kernel writes them all
        stats = np.empty((2, B, Hq, Tq), a.dtype)
        with _blas_guard(blas):
            _attention.forward(qk, kk, vk, outk, stats, a.scale, a.causal, a.key_lengths,
                               a.mask, a.mask_strides, blas, effective_num_threads(), _tiles)
    else:
        outk = _workspace.zeros((B, Hq, Tq, Dvp), a.dtype)
        stats = np.zeros((2, B, Hq, Tq), a.dtype)
    out = _unpad(outk, Dv)
    return out, (AttentionCache(a, (qk, kk, vk, outk), stats, blas) if return_cache else None)


def attention_backward(d_out: ArrayLike, cache: "AttentionCache") -> AttentionGrads:
    """Backward of :func:`attention_forward`.

    Parameters
    ----------
    d_out : (B, Hq, Tq, Dv), the gradient of the loss with respect to ``out``
    cache : the AttentionCache from :func:`attention_forward`

    Returns
    -------
    AttentionGrads(dq, dk, dv), shaped like q, k, v; rows of dq with no key to
    attend to are zeros.
    """
    cache = check_cache(cache, AttentionCache, "attention_forward (with return_cache=True)")
    a = cache.args
    B, Hq, Tq, Tk, D, Dv = a.B, a.Hq, a.Tq, a.Tk, a.D, a.Dv
    d_out = float_array("d_out", d_out, 4, a.dtype)
    check_shape("d_out", d_out, (B, Hq, Tq, Dv), "(B, Hq, Tq, Dv)")
    dt = a.dtype
    qk, kk, vk, outk = cache.kernel
    if B and Hq and Tq and Tk and Dv:
        dq = _workspace.empty(qk.shape, dt)       # the kernel writes every element
        dk = _workspace.empty(kk.shape, dt)
        dv = _workspace.empty(vk.shape, dt)
        # the forward's choice of products (the backward repeats its score products)
        with _blas_guard(cache.blas):
            _attention.backward(qk, kk, vk, outk, cache.stats, _pad(d_out, vk.shape[-1]),
                                dq, dk, dv, a.scale, a.causal, a.key_lengths, a.mask,
                                a.mask_strides, cache.blas, effective_num_threads(), _tiles)
    else:
        dq = np.zeros(qk.shape, dt)
        dk = np.zeros(kk.shape, dt)
        dv = np.zeros(vk.shape, dt)
    return AttentionGrads(_unpad(dq, D), _unpad(dk, D), _unpad(dv, Dv))
