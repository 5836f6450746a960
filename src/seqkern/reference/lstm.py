"""The LSTM in plain NumPy: the oracle for tests, the baseline for benchmarks.

Same functions and signatures as :mod:`seqkern.lstm`. Time-major inside:
x (T, B, I), h and c (B, H), gate pre-activations z (B, 4H) stacked i, f, g, o.
One line of backward per line of forward.
"""

import numpy as np

from seqkern._recurrent import LSTMArgs
from seqkern._types import LSTMGrads
from seqkern._validation import check_bool, check_cache


def _sigmoid(z):
    """1 / (1 + exp(-z)) without overflow: exp only ever sees -|z| <= 0."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


class RefLSTMCache:
    __slots__ = ("args", "hs", "cs", "gates")

    def __init__(self, args, hs, cs, gates):
        self.args = args
        self.hs = hs          # (T+1, B, H): hs[0] = h0, hs[t+1] = state after step t
        self.cs = cs          # (T+1, B, H): the same for the cell
        self.gates = gates    # (T, B, 4H): i, f, g, o after their activations


class RefLSTMStepCache:
    __slots__ = ("seq",)

    def __init__(self, seq):
        self.seq = seq


def _forward(a):
    T, B, H = a.T, a.B, a.H
    hs = np.zeros((T + 1, B, H), a.dtype)
    cs = np.zeros((T + 1, B, H), a.dtype)
    gates = np.zeros((T, B, 4 * H), a.dtype)
    out = np.zeros((T, B, H), a.dtype)
    hs[0], cs[0] = a.h0, a.c0
    for t in range(T):
        z = a.x[t] @ a.W_ih.T                           # (B, 4H) input projection
        if a.b_ih is not None:
            z = z + a.b_ih
        z = z + hs[t] @ a.W_hh.T                        # (B, 4H) recurrence
        if a.b_hh is not None:
            z = z + a.b_hh
        i = _sigmoid(z[:, :H])                          # (B, H) input gate
        f = _sigmoid(z[:, H:2 * H])                     # (B, H) forget gate
        g = np.tanh(z[:, 2 * H:3 * H])                  # (B, H) cell candidate
        o = _sigmoid(z[:, 3 * H:])                      # (B, H) output gate
        c = f * cs[t] + i * g                           # (B, H) new cell
        h = o * np.tanh(c)                              # (B, H) new hidden state
        gates[t] = np.concatenate([i, f, g, o], axis=1)
        if a.lengths is not None:                       # finished sequences keep their state
            live = (t < a.lengths)[:, None]
            h = np.where(live, h, hs[t])
            c = np.where(live, c, cs[t])
            out[t] = np.where(live, h, 0)
        else:
            out[t] = h
        hs[t + 1], cs[t + 1] = h, c
    return hs, cs, gates, out


def lstm_forward(x, h0, c0, W_ih, W_hh, b_ih=None, b_hh=None, *, lengths=None,
                 batch_first=False, return_cache=True):
    """NumPy reference of :func:`seqkern.lstm_forward` (same arguments and results)."""
    return_cache = check_bool("return_cache", return_cache)
    a = LSTMArgs(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, batch_first)
    hs, cs, gates, out = _forward(a)
    cache = RefLSTMCache(a, hs, cs, gates) if return_cache else None
    return ((out.transpose(1, 0, 2) if a.batch_first else out), hs[-1].copy(), cs[-1].copy(),
            cache)


def _backward(cache, d_out, d_h_n, d_c_n):
    a, hs, cs, gates = cache.args, cache.hs, cache.cs, cache.gates
    T, B, H = a.T, a.B, a.H
    dx = np.zeros_like(a.x)
    dW_ih = np.zeros_like(a.W_ih)
    xg = a.x_for_grads()                # padding steps zeroed if not finite
    dW_hh = np.zeros_like(a.W_hh)
    db = np.zeros(4 * H, a.dtype)
    dh = np.zeros((B, H), a.dtype) if d_h_n is None else d_h_n.copy()   # gradient reaching h_t
    dc = np.zeros((B, H), a.dtype) if d_c_n is None else d_c_n.copy()   # gradient reaching c_t
    for t in reversed(range(T)):
        i, f, g, o = (gates[t][:, k * H:(k + 1) * H] for k in range(4))
        c = cs[t + 1]
        gh = dh if d_out is None else dh + d_out[t]                   # out[t] = h_t
        tc = np.tanh(c)
        do = gh * tc                                                  # h = o * tanh(c)
        gc = dc + gh * o * (1 - tc * tc)                              # ... and through tanh(c)
        di = gc * g                                                   # c = f * c_prev + i * g
        df = gc * cs[t]
        dg = gc * i
        dc_prev = gc * f
        dz = np.concatenate([di * i * (1 - i),                        # backprop through sigmoid
                             df * f * (1 - f),
                             dg * (1 - g * g),                        # backprop through tanh
                             do * o * (1 - o)], axis=1)               # (B, 4H)
        if a.lengths is not None:
            live = (t < a.lengths)[:, None]
            dz = np.where(live, dz, 0)                                # finished: no step taken
        dx[t] = dz @ a.W_ih                                           # x_t W_ih^T
        dW_ih += dz.T @ xg[t]
        dW_hh += dz.T @ a.live_rows(t, hs[t])                         # h_{t-1} W_hh^T
        db += dz.sum(axis=0)                                          # + b_ih + b_hh
        dh_prev = dz @ a.W_hh
        if a.lengths is not None:
            dh_prev = np.where(live, dh_prev, dh)                     # h_t = h_{t-1}: pass through
            dc_prev = np.where(live, dc_prev, dc)                     # c_t = c_{t-1}: pass through
        dh, dc = dh_prev, dc_prev
    a.zero_padding(dx)                  # (0 * an Inf of W_ih is NaN)
    return LSTMGrads(dx, dh, dc, dW_ih, dW_hh,
                     None if a.b_ih is None else db,
                     None if a.b_hh is None else db.copy())


def lstm_backward(d_out, d_h_n, d_c_n, cache):
    """NumPy reference of :func:`seqkern.lstm_backward`."""
    c = check_cache(cache, RefLSTMCache, "seqkern.reference.lstm_forward (with return_cache=True)")
    a = c.args
    d_out = a.seq_grad("d_out", d_out)
    d_h_n = a.state_grad("d_h_n", d_h_n)
    d_c_n = a.state_grad("d_c_n", d_c_n)
    g = _backward(c, d_out, d_h_n, d_c_n)
    return g._replace(dx=g.dx.transpose(1, 0, 2)) if a.batch_first else g


def lstm_step_forward(x, h_prev, c_prev, W_ih, W_hh, b_ih=None, b_hh=None):
    """NumPy reference of :func:`seqkern.lstm_step_forward`."""
    a = LSTMArgs(x, h_prev, c_prev, W_ih, W_hh, b_ih, b_hh, None, False, x_ndim=2)
    hs, cs, gates, out = _forward(a)
    return hs[1].copy(), cs[1].copy(), RefLSTMStepCache(RefLSTMCache(a, hs, cs, gates))


def lstm_step_backward(dh_next, dc_next, cache):
    """NumPy reference of :func:`seqkern.lstm_step_backward`."""
    c = check_cache(cache, RefLSTMStepCache, "seqkern.reference.lstm_step_forward")
    a = c.seq.args
    dh_next = a.state_grad("dh_next", dh_next, required=True)
    dc_next = a.state_grad("dc_next", dc_next)
    g = _backward(c.seq, dh_next[None], None, dc_next)
    return g._replace(dx=g.dx[0])
