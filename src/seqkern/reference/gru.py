"""The GRU in plain NumPy: the oracle for tests, the baseline for benchmarks.

Same functions and signatures as :mod:`seqkern.gru`. Time-major inside:
x (T, B, I), h (B, H); gate rows of W_ih (3H, I), W_hh (3H, H) in PyTorch's
order r, z, n. One line of backward per line of forward:

    r  = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
    z  = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
    hn = h W_hn^T + b_hn
    n  = tanh(x W_in^T + b_in + r * hn)
    h' = (1 - z) * n + z * h
"""

import numpy as np

from seqkern._recurrent import GRUArgs
from seqkern._types import GRUGrads
from seqkern._validation import check_bool, check_cache


def sigmoid(a):
    """1 / (1 + exp(-a)) without overflow: exp only ever sees -|a|."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


class RefGRUCache:
    __slots__ = ("args", "hs", "r", "z", "n", "hn")

    def __init__(self, args, hs, r, z, n, hn):
        self.args = args
        self.hs = hs                  # (T+1, B, H): hs[0] = h0, hs[t+1] = state after step t
        self.r, self.z, self.n = r, z, n   # (T, B, H) gates
        self.hn = hn                  # (T, B, H) h_{t-1} W_hn^T + b_hn


class RefGRUStepCache:
    __slots__ = ("seq",)

    def __init__(self, seq):
        self.seq = seq


def _forward(a):
    T, B, H = a.T, a.B, a.H
    dt = a.dtype
    hs = np.zeros((T + 1, B, H), dt)
    out = np.zeros((T, B, H), dt)
    r, z, n, hn = (np.zeros((T, B, H), dt) for _ in range(4))
    hs[0] = a.h0
    for t in range(T):
        h = hs[t]                                               # (B, H)
        gi = a.x[t] @ a.W_ih.T                                  # (B, 3H) input projection
        if a.b_ih is not None:
            gi = gi + a.b_ih
        gh = h @ a.W_hh.T                                       # (B, 3H) recurrence
        if a.b_hh is not None:
            gh = gh + a.b_hh
        r[t] = sigmoid(gi[:, :H] + gh[:, :H])                   # reset gate
        z[t] = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])         # update gate
        hn[t] = gh[:, 2 * H:]                                   # h W_hn^T + b_hn
        n[t] = np.tanh(gi[:, 2 * H:] + r[t] * hn[t])            # candidate
        h_new = (1 - z[t]) * n[t] + z[t] * h                    # (B, H)
        if a.lengths is not None:                               # finished sequences keep their state
            live = (t < a.lengths)[:, None]
            h_new = np.where(live, h_new, h)
            out[t] = np.where(live, h_new, 0)
        else:
            out[t] = h_new
        hs[t + 1] = h_new
    return hs, out, r, z, n, hn


def gru_forward(x, h0, W_ih, W_hh, b_ih=None, b_hh=None, *, lengths=None,
                batch_first=False, return_cache=True):
    """NumPy reference of :func:`seqkern.gru_forward` (same arguments and results)."""
    return_cache = check_bool("return_cache", return_cache)
    a = GRUArgs(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, batch_first)
    hs, out, r, z, n, hn = _forward(a)
    h_n = hs[-1].copy()
    cache = RefGRUCache(a, hs, r, z, n, hn) if return_cache else None
    return (out.transpose(1, 0, 2) if a.batch_first else out), h_n, cache


def _backward(c, d_out, d_h_n):
    a, hs = c.args, c.hs
    T, B, H = a.T, a.B, a.H
    dx = np.zeros_like(a.x)
    dW_ih = np.zeros_like(a.W_ih)
    xg = a.x_for_grads()                # padding steps zeroed if not finite
    dW_hh = np.zeros_like(a.W_hh)
    db_ih = np.zeros(3 * H, a.dtype)
    db_hh = np.zeros(3 * H, a.dtype)
    dh = np.zeros((B, H), a.dtype) if d_h_n is None else d_h_n.copy()    # gradient reaching h_t
    for t in reversed(range(T)):
        h, r, z, n, hn = hs[t], c.r[t], c.z[t], c.n[t], c.hn[t]
        g = dh if d_out is None else dh + d_out[t]                     # out[t] = h_t
        dn = g * (1 - z)                                               # h' = (1 - z) * n ...
        dz = g * (h - n)                                               # ... + z * h
        dan = dn * (1 - n * n)                                         # backprop through tanh
        dr = dan * hn                                                  # r * hn
        dhn = dan * r                                                  # r * hn
        dar = dr * r * (1 - r)                                         # backprop through sigmoid (r)
        daz = dz * z * (1 - z)                                         # backprop through sigmoid (z)
        dgi = np.concatenate([dar, daz, dan], axis=1)                  # (B, 3H) d(x W_ih^T + b_ih)
        dgh = np.concatenate([dar, daz, dhn], axis=1)                  # (B, 3H) d(h W_hh^T + b_hh)
        if a.lengths is not None:
            live = (t < a.lengths)[:, None]
            dgi = np.where(live, dgi, 0)                               # finished: no step taken
            dgh = np.where(live, dgh, 0)
        dx[t] = dgi @ a.W_ih                                           # x W_ih^T
        dW_ih += dgi.T @ xg[t]
        db_ih += dgi.sum(axis=0)                                       # + b_ih
        dW_hh += dgh.T @ a.live_rows(t, h)                             # h W_hh^T
        db_hh += dgh.sum(axis=0)                                       # + b_hh
        dh_prev = dgh @ a.W_hh + g * z                                 # through W_hh and z * h
        if a.lengths is not None:
            dh_prev = np.where(live, dh_prev, dh)                      # h_t = h_{t-1}: pass through
        dh = dh_prev
    a.zero_padding(dx)                  # (0 * an Inf of W_ih is NaN)
    return GRUGrads(dx, dh, dW_ih, dW_hh,
                    None if a.b_ih is None else db_ih,
                    None if a.b_hh is None else db_hh)


def gru_backward(d_out, d_h_n, cache):
    """NumPy reference of :func:`seqkern.gru_backward`."""
    c = check_cache(cache, RefGRUCache, "seqkern.reference.gru_forward (with return_cache=True)")
    a = c.args
    g = _backward(c, a.seq_grad("d_out", d_out), a.state_grad("d_h_n", d_h_n))
    return g._replace(dx=g.dx.transpose(1, 0, 2)) if a.batch_first else g


def gru_step_forward(x, h_prev, W_ih, W_hh, b_ih=None, b_hh=None):
    """NumPy reference of :func:`seqkern.gru_step_forward`."""
    a = GRUArgs(x, h_prev, W_ih, W_hh, b_ih, b_hh, None, False, x_ndim=2)
    hs, out, r, z, n, hn = _forward(a)
    return out[0], RefGRUStepCache(RefGRUCache(a, hs, r, z, n, hn))


def gru_step_backward(dh_next, cache):
    """NumPy reference of :func:`seqkern.gru_step_backward`."""
    c = check_cache(cache, RefGRUStepCache, "seqkern.reference.gru_step_forward")
    a = c.seq.args
    dh_next = a.state_grad("dh_next", dh_next, required=True)
    g = _backward(c.seq, dh_next[None], None)
    return g._replace(dx=g.dx[0])
