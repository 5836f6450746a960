"""The Elman RNN in plain NumPy: the oracle for tests, the baseline for benchmarks.

Same functions and signatures as :mod:`seqkern.rnn`. Time-major inside:
x (T, B, I), h (B, H). One line of backward per line of forward.
"""

import numpy as np

from seqkern._recurrent import RNNArgs
from seqkern._types import RNNGrads
from seqkern._validation import check_bool, check_cache


class RefRNNCache:
    __slots__ = ("args", "hs", "out")

    def __init__(self, args, hs, out):
        self.args = args
        self.hs = hs      # (T+1, B, H): hs[0] = h0, hs[t+1] = state after step t
        self.out = out    # (T, B, H)


class RefRNNStepCache:
    __slots__ = ("seq",)

    def __init__(self, seq):
        self.seq = seq


def _forward(a):
    T, B, H = a.T, a.B, a.H
    hs = np.zeros((T + 1, B, H), a.dtype)
    out = np.zeros((T, B, H), a.dtype)
    hs[0] = a.h0
    for t in range(T):
        z = a.x[t] @ a.W_ih.T                           # (B, H) input projection
        if a.b_ih is not None:
            z = z + a.b_ih
        z = z + hs[t] @ a.W_hh.T                        # (B, H) recurrence
        if a.b_hh is not None:
            z = z + a.b_hh
        h = np.tanh(z) if a.nonlinearity == "tanh" else np.where(z < 0, 0, z)
        if a.lengths is not None:                       # finished sequences keep their state
            live = (t < a.lengths)[:, None]
            h = np.where(live, h, hs[t])
            out[t] = np.where(live, h, 0)
        else:
            out[t] = h
        hs[t + 1] = h
    return hs, out


def rnn_forward(x, h0, W_ih, W_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh",
                lengths=None, batch_first=False, return_cache=True):
    """NumPy reference of :func:`seqkern.rnn_forward` (same arguments and results)."""
    return_cache = check_bool("return_cache", return_cache)
    a = RNNArgs(x, h0, W_ih, W_hh, b_ih, b_hh, nonlinearity, lengths, batch_first)
    hs, out = _forward(a)
    h_n = hs[-1].copy()
    cache = RefRNNCache(a, hs, out) if return_cache else None
    return (out.transpose(1, 0, 2) if a.batch_first else out), h_n, cache


def _backward(c, d_out, d_h_n):
    a, hs = c.args, c.hs
    T, B, H = a.T, a.B, a.H
    dx = np.zeros_like(a.x)
    dW_ih = np.zeros_like(a.W_ih)
    xg = a.x_for_grads()                # padding steps zeroed if not finite
    dW_hh = np.zeros_like(a.W_hh)
    db = np.zeros(H, a.dtype)
    dh = np.zeros((B, H), a.dtype) if d_h_n is None else d_h_n.copy()   # gradient reaching h_t
    for t in reversed(range(T)):
        g = dh if d_out is None else dh + d_out[t]                    # out[t] = h_t
        h = hs[t + 1]
        if a.nonlinearity == "tanh":
            dz = g * (1 - h * h)                                      # backprop through tanh
        else:
            dz = np.where(h > 0, g, 0)                                # backprop through relu
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
        dh = dh_prev
    a.zero_padding(dx)                  # (0 * an Inf of W_ih is NaN)
    return RNNGrads(dx, dh, dW_ih, dW_hh,
                    None if a.b_ih is None else db,
                    None if a.b_hh is None else db.copy())


def rnn_backward(d_out, d_h_n, cache):
    """NumPy reference of :func:`seqkern.rnn_backward`."""
    c = check_cache(cache, RefRNNCache, "seqkern.reference.rnn_forward (with return_cache=True)")
    a = c.args
    g = _backward(c, a.seq_grad("d_out", d_out), a.state_grad("d_h_n", d_h_n))
    return g._replace(dx=g.dx.transpose(1, 0, 2)) if a.batch_first else g


def rnn_step_forward(x, h_prev, W_ih, W_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh"):
    """NumPy reference of :func:`seqkern.rnn_step_forward`."""
    a = RNNArgs(x, h_prev, W_ih, W_hh, b_ih, b_hh, nonlinearity, None, False, x_ndim=2)
    hs, out = _forward(a)
    return out[0], RefRNNStepCache(RefRNNCache(a, hs, out))


def rnn_step_backward(dh_next, cache):
    """NumPy reference of :func:`seqkern.rnn_step_backward`."""
    c = check_cache(cache, RefRNNStepCache, "seqkern.reference.rnn_step_forward")
    a = c.seq.args
    dh_next = a.state_grad("dh_next", dh_next, required=True)
    g = _backward(c.seq, dh_next[None], None)
    return g._replace(dx=g.dx[0])
