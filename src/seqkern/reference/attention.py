"""Multi-head attention in plain NumPy: the oracle for tests, the baseline for benchmarks.

Same functions and signatures as :mod:`seqkern.attention`. It materialises the
(B, Hq, Tq, Tk) scores and probabilities, so it needs O(T^2) memory.
Legend: B batch, Hq query heads, Hkv key/value heads (G = Hq // Hkv), Tq
queries, Tk keys, D query/key width, Dv value width.

A key masked for a row never contributes to it, not even a NaN or Inf (as in the
kernels): every product sums over the visible keys only (_sum_visible).
"""

import numpy as np

from seqkern._attention_args import AttentionArgs
from seqkern._types import AttentionGrads
from seqkern._validation import check_bool, check_cache, check_shape, float_array


class RefAttentionCache:
    __slots__ = ("args", "P", "vis")

    def __init__(self, args, P, vis):
        self.args = args
        self.P = P        # (B, Hq, Tq, Tk) attention probabilities (0 where masked)
        self.vis = vis    # (B, Hq, Tq, Tk)-broadcastable: True where query i sees key j


def _visible(a):
    """(B, Hq, Tq, Tk)-broadcastable boolean: True where query i may attend to key j
    (not causally hidden, before key_lengths, not False in a boolean mask nor -inf
    in a float mask)."""
    Tq, Tk = a.Tq, a.Tk
    ok = np.ones((1, 1, Tq, Tk), bool)
    if a.causal:
        i = np.arange(Tq)[:, None]
        j = np.arange(Tk)[None, :]
        ok = ok & (j <= i + (Tk - Tq))                           # (1, 1, Tq, Tk)
    if a.key_lengths is not None:
        ok = ok & (np.arange(Tk) < a.key_lengths[:, None, None, None])   # (B, 1, Tq, Tk)
    if a.mask_kind == "bool":
        ok = ok & a.mask.astype(bool)                            # compact, broadcasts
    elif a.mask_kind == "float":
        ok = ok & (a.mask != -np.inf)
    return ok


def _finite(x):
    """Whether x holds no NaN or Inf: its sum is NaN or Inf if it does (and if a sum
    of finite values overflows, the callers take their slower exact path)."""
    return bool(np.isfinite(x.sum()))


def _sum_visible(x, y, vis):
    """sum_j x[..., i, j] y[..., j, :] over the keys j that row i sees (vis) only:
    a masked key contributes nothing, not even a NaN or Inf in x or y (where
    x @ y would add 0 * NaN = NaN). x is 0 wherever vis is False unless it holds
    NaN, so with finite operands x @ y is exact."""
    if _finite(x) and _finite(y):
        return x @ y
    with np.errstate(invalid="ignore"):                          # 0 * Inf, then dropped
        return np.where(vis[..., None], x[..., None] * y[..., None, :, :], 0).sum(axis=-2)


def _repeat_kv(x, G):
    """(B, Hkv, Tk, .) -> (B, Hq, Tk, .): key/value head h // G for query head h."""
    return np.repeat(x, G, axis=1)


def attention_forward(q, k, v, *, causal=False, mask=None, key_lengths=None, scale=None,
                      return_cache=True):
    """NumPy reference of :func:`seqkern.attention_forward` (same arguments and results)."""
    return_cache = check_bool("return_cache", return_cache)
    a = AttentionArgs(q, k, v, causal, mask, key_lengths, scale)
    G = a.Hq // a.Hkv if a.Hkv else 1
    k = _repeat_kv(a.k, G)                                       # (B, Hq, Tk, D)
    v = _repeat_kv(a.v, G)                                       # (B, Hq, Tk, Dv)
    s = a.scale * (a.q @ k.swapaxes(-1, -2))                     # (B, Hq, Tq, Tk) scores
    if a.mask_kind == "float":
        s = s + a.mask                                           # additive mask
    vis = _visible(a)
    s = np.where(vis, s, -np.inf)                                # masked: -inf, by selection
    m = s.max(axis=-1, keepdims=True) if a.Tk else np.zeros(s.shape[:3] + (1,), a.dtype)
    m = np.where(m == -np.inf, 0, m)                             # fully masked row: any finite shift
    e = np.exp(s - m)                                            # (B, Hq, Tq, Tk), 0 where masked
    l = e.sum(axis=-1, keepdims=True)                            # (B, Hq, Tq, 1)
    empty = l == 0                                               # no key to attend to
    P = np.where(empty, 0, e / np.where(empty, 1, l))            # softmax; NaN stays NaN
    P = P.astype(a.dtype, copy=False)
    vis = vis & ~empty                                           # a row with no key sees none
    out = _sum_visible(P, v, vis)                                # (B, Hq, Tq, Dv)
    return out, (RefAttentionCache(a, P, vis) if return_cache else None)


def attention_backward(d_out, cache):
    """NumPy reference of :func:`seqkern.attention_backward`."""
    c = check_cache(cache, RefAttentionCache,
                    "seqkern.reference.attention_forward (with return_cache=True)")
    a, P, vis = c.args, c.P, c.vis
    B, Hq, Hkv, Tq, Tk, Dv = a.B, a.Hq, a.Hkv, a.Tq, a.Tk, a.Dv
    d_out = float_array("d_out", d_out, 4, a.dtype)
    check_shape("d_out", d_out, (B, Hq, Tq, Dv), "(B, Hq, Tq, Dv)")
    G = Hq // Hkv if Hkv else 1
    k = _repeat_kv(a.k, G)                                       # (B, Hq, Tk, D)
    v = _repeat_kv(a.v, G)                                       # (B, Hq, Tk, Dv)
    visT = vis.swapaxes(-1, -2)
    dv = _sum_visible(P.swapaxes(-1, -2), d_out, visT)           # out = P v
    dP = d_out @ v.swapaxes(-1, -2)                              # (B, Hq, Tq, Tk)
    if not _finite(dP):
        dP = np.where(vis, dP, 0)                                # a masked key's NaN: not in Di
    Di = (dP * P).sum(axis=-1, keepdims=True)
    dS = P * (dP - Di)                                           # backprop through softmax
    dq = a.scale * _sum_visible(dS, k, vis)                      # s = scale q k^T
    dk = a.scale * _sum_visible(dS.swapaxes(-1, -2), a.q, visT)  # (B, Hq, Tk, D)
    # sum the G query heads that share each key/value head
    dk = dk.reshape(B, Hkv, G, Tk, a.D).sum(axis=2)
    dv = dv.reshape(B, Hkv, G, Tk, Dv).sum(axis=2)
    return AttentionGrads(dq.astype(a.dtype, copy=False), dk.astype(a.dtype, copy=False),
                          dv.astype(a.dtype, copy=False))
