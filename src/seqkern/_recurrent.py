"""Argument handling shared by the recurrent kernels (RNN, LSTM, GRU) and their
NumPy references, so that all of them accept and reject exactly the same inputs.
Pure Python: ``seqkern.reference`` imports it without the compiled modules.

Shapes, with G gates stacked in PyTorch's order (RNN: 1; LSTM: 4, i f g o;
GRU: 3, r z n): x (T, B, I) (or (B, T, I) with batch_first), each state (B, H),
W_ih (G*H, I), W_hh (G*H, H), b_ih and b_hh (G*H,) or None.
"""

from typing import Tuple

import numpy as np

from seqkern._validation import (
    MAX_SIZE,
    check_bool,
    check_choice,
    check_shape,
    check_sizes,
    float_array,
    lengths_array,
    optional_float_array,
)


class RecurrentArgs:
    """Checked, time-major, C-contiguous arguments of one recurrent call.

    Subclasses set GATES (rows of W_ih per hidden unit), ORDER (how the gates
    are stacked, for messages) and STATES (the names of the initial states).
    ``states`` are the caller's initial states in that order, None for zeros.
    ``x_ndim=2`` is a single step: x (B, I), states named h_prev / c_prev.
    """

    GATES = 1
    ORDER = ""
    STATES: Tuple[str, ...] = ("h",)

    def __init__(self, x, states, W_ih, W_hh, b_ih, b_hh, lengths, batch_first, x_ndim=3):
        self.batch_first = check_bool("batch_first", batch_first)
        x = float_array("x", x, x_ndim, check=lambda shape: self._check_sizes(shape, x_ndim))
        self.dtype = dt = x.dtype
        self.W_hh = float_array("W_hh", W_hh, 2, dt)
        H = self.H = self.W_hh.shape[1]
        G = self.G = self.GATES * H
        T, B, I = self._check_sizes(x.shape, x_ndim, G)
        if x_ndim == 2:
            x = x[None]
        elif self.batch_first:    # (B, T, I) -> (T, B, I)
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        self.x = x
        self.T, self.B, self.I = T, B, I
        # (each legend spelt only for the message: the checks run on every call)
        if self.W_hh.shape != (G, H):
            check_shape("W_hh", self.W_hh, (G, H), self._legend("H, H"))
        self.W_ih = float_array("W_ih", W_ih, 2, dt)
        if self.W_ih.shape != (G, I):
            check_shape("W_ih", self.W_ih, (G, I), self._legend("H, I") + f" with H = {H}, I = {I}")
        self.b_ih = optional_float_array("b_ih", b_ih, 1, dt)
        if self.b_ih is not None and self.b_ih.shape != (G,):
            check_shape("b_ih", self.b_ih, (G,), self._legend("H,", stacked=False))
        self.b_hh = optional_float_array("b_hh", b_hh, 1, dt)
        if self.b_hh is not None and self.b_hh.shape != (G,):
            check_shape("b_hh", self.b_hh, (G,), self._legend("H,", stacked=False))
        suffix = "_prev" if x_ndim == 2 else "0"
        for name, s in zip(self.STATES, states):
            setattr(self, name + "0", self._state(name + suffix, s, B, H, dt))
        self.lengths = lengths_array(lengths, B, T)

    def _check_sizes(self, shape, x_ndim, G=0):
        """(T, B, I) of x's shape; before any copy or output, a ValueError for sizes
        the kernels' C int cannot hold (G: the rows of W_hh, once known)."""
        if x_ndim == 2:           # one step: x (B, I)
            (B, I), T = shape, 1
        elif self.batch_first:
            B, T, I = shape
        else:
            T, B, I = shape
        if T * B > MAX_SIZE or T > MAX_SIZE or B > MAX_SIZE or I > MAX_SIZE or G > MAX_SIZE:
            check_sizes(("T (time steps of x)", T), ("B (batch of x)", B),
                        ("T * B (rows of x)", T * B), ("I (features of x)", I),
                        (f"{self._legend('H', stacked=False)[1:-1]} (rows of W_hh)", G))
        return T, B, I

    @classmethod
    def _legend(cls, dims, stacked=True):
        """A weight's shape spelt for a message: "(4H, I) stacked i, f, g, o"."""
        g = "" if cls.GATES == 1 else str(cls.GATES)
        order = f" stacked {cls.ORDER}" if stacked and cls.ORDER else ""
        return f"({g}{dims}){order}"

    @staticmethod
    def _state(name, s, B, H, dt):
        if s is None:
            return np.zeros((B, H), dt)
        s = float_array(name, s, 2, dt)
        check_shape(name, s, (B, H), "(B, H)")
        return s

    def bias(self):
        """b_ih + b_hh (zeros where both are None), shape (G*H,), a new array."""
        if self.b_ih is not None and self.b_hh is not None:
            return self.b_ih + self.b_hh
        b = self.b_ih if self.b_hh is None else self.b_hh
        return np.zeros(self.G, self.dtype) if b is None else b.copy()

    def _padding(self):
        """(T, B) booleans, True at the steps past each sequence's length; None where
        there are none."""
        L = self.lengths
        if L is None or not self.T * self.B or L.min() >= self.T:
            return None
        return np.arange(self.T)[:, None] >= L

    def x_for_grads(self):
        """x as the backward reads it for dW_ih = sum_t dz_t^T x_t: the steps past each
        sequence's length have dz_t = 0 and their x (padding) must add nothing, not even
        0 * NaN, as with PyTorch's packed sequences; where such a step holds a NaN or
        an Inf, a copy of x with those steps zeroed, else x itself."""
        pad = self._padding()
        if pad is None or not self.x.size or np.isfinite(self.x[pad]).all():
            return self.x
        x = self.x.copy()
        x[pad] = 0
        return x

    def live_rows(self, t, h):
        """h (B, ...) with the rows of the sequences that take no step t zeroed (a new
        array; h itself without lengths): in a product with their dz_t, which is 0,
        they must add nothing, not even 0 * NaN. The h_{t-1} of dW_hh = sum_t dz_t^T
        h_{t-1}: the references' at every step, the kernels' h0 (t = 0: the sequences
        of length 0, whose h0 no step reads)."""
        if self.lengths is None:
            return h
        return np.where((t < self.lengths)[:, None], h, 0)

    def zero_padding(self, dx):
        """dx (T, B, I), the gradient of x, with the steps past each sequence's length
        set to 0 in place, and returned: no step read x there (PyTorch's packed
        sequences give 0), though dz_t @ W_ih with dz_t = 0 is NaN where W_ih holds
        an Inf or a NaN."""
        pad = self._padding()
        if pad is not None:
            dx[pad] = 0
        return dx

    def seq_grad(self, name, g):
        """A gradient shaped like ``out`` ((T, B, H), or (B, T, H) with batch_first)
        as a time-major C-contiguous array, or None."""
        if g is None:
            return None
        T, B, H = self.T, self.B, self.H
        if self.batch_first:
            g = grad_array(name, g, (B, T, H), "(B, T, H)", self.dtype)
            return np.ascontiguousarray(g.transpose(1, 0, 2))
        return grad_array(name, g, (T, B, H), "(T, B, H)", self.dtype)

    def state_grad(self, name, g, required=False):
        """A gradient shaped like a state, (B, H), or None (TypeError if required)."""
        if g is None and required:
            raise TypeError(f"{name} must be a float32 or float64 array, got None")
        return grad_array(name, g, (self.B, self.H), "(B, H)", self.dtype)


class RNNArgs(RecurrentArgs):
    """Checked, time-major, C-contiguous arguments of an RNN call."""

    NONLINEARITIES = ("tanh", "relu")

    def __init__(self, x, h0, W_ih, W_hh, b_ih, b_hh, nonlinearity, lengths, batch_first,
                 x_ndim=3):
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, self.NONLINEARITIES)
        super().__init__(x, (h0,), W_ih, W_hh, b_ih, b_hh, lengths, batch_first, x_ndim)


class LSTMArgs(RecurrentArgs):
    """Checked, time-major, C-contiguous arguments of an LSTM call."""

    GATES = 4
    ORDER = "i, f, g, o"
    STATES = ("h", "c")

    def __init__(self, x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths, batch_first, x_ndim=3):
        super().__init__(x, (h0, c0), W_ih, W_hh, b_ih, b_hh, lengths, batch_first, x_ndim)


class GRUArgs(RecurrentArgs):
    """Checked, time-major, C-contiguous arguments of a GRU call."""

    GATES = 3
    ORDER = "r, z, n"

    def __init__(self, x, h0, W_ih, W_hh, b_ih, b_hh, lengths, batch_first, x_ndim=3):
        super().__init__(x, (h0,), W_ih, W_hh, b_ih, b_hh, lengths, batch_first, x_ndim)


def grad_array(name, g, expected, legend, dtype):
    """An incoming gradient of shape ``expected`` and the call's dtype, or None."""
    if g is None:
        return None
    g = float_array(name, g, len(expected), dtype)
    check_shape(name, g, expected, legend)
    return g
