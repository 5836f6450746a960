"""Stacked, bidirectional recurrent layers: nn.RNN, nn.LSTM, nn.GRU.

PyTorch's modules, on seqkern's one-layer kernels. Axis legend: T steps, B
batch, I input features, H hidden units, L layers, D directions (2 when
bidirectional, else 1), G gates (1 RNN, 4 LSTM, 3 GRU).

Layer l reads x_l (T, B, I_l), I_0 = input_size and I_l = D H above, and
writes out_l (T, B, D H), the forward direction's h_t in [..., :H] and the
reverse direction's in [..., H:]. The reverse direction runs the kernel on
each sequence reversed within its own length (step t of sequence b reads
x[lengths[b] - 1 - t, b]), as PyTorch's packed sequences do; padding steps stay
where they are and are zeros in every output. In training mode, out_l of every
layer but the last is multiplied by a dropout mask, (u >= p) / (1 - p) with
u ~ U[0, 1) of shape (T, B, D H) drawn from ``layer.rng``, layer by layer.

Threads (_parallel.run_pair): the two directions of a layer are independent; with two or
more threads they run at once, on two Python threads (the kernels release the
GIL), each kernel on half of the calling thread's count (seqkern.threads). A
one-direction stack of two or more layers over a batch of fewer than
WAVEFRONT_BATCH sequences, long enough for WAVEFRONT_CHUNKS chunks of at least
WAVEFRONT_ROWS rows, runs as a wavefront over chunks of steps (_chunks: about
T / 8 steps, fixed by T and B): layer l's chunk k beside layer l - 1's chunk
k + 1, the input projection of each chunk one GEMM inside the kernel; the
backward walks the same diagonals in reverse. Only whole kernel calls are
overlapped (no lock per step), so a descheduled thread costs at most one
chunk's wait. A larger batch runs layer after layer, one kernel call each over
the whole sequence: there every call splits its own time loop by blocks of
batch rows over the threads. Results do not depend on the thread count: the
kernels' do not, and neither the chunks nor the choice depend on it.
"""

import math

import numpy as np

from seqkern._validation import check_bool, check_choice, lengths_array
from seqkern.gru import gru_backward, gru_forward
from seqkern.lstm import lstm_backward, lstm_forward
from seqkern.nn._module import Module, cache_error, check_size, make_rng, uniform
from seqkern.nn._parallel import run_pair
from seqkern.rnn import rnn_backward, rnn_forward

__all__ = ["RNN", "LSTM", "GRU"]

class _Flip:
    """Reverses each sequence within its own length along the time axis:
    a (T, B, ...) -> a', a'[t, b] = a[lengths[b] - 1 - t, b] for t < lengths[b],
    a[t, b] past it. Its own inverse."""

    def __init__(self, lengths, T, B):
        if lengths is None or np.all(lengths == T):
            self.index = None
        else:
            t = np.arange(T)[:, None]
            self.index = (np.where(t < lengths, lengths - 1 - t, t), np.arange(B))  # (T, B)

    def __call__(self, a):
        if a is None:
            return None
        if self.index is None:
            return np.ascontiguousarray(a[::-1])
        return a[self.index]


# From this batch on a one-direction stack runs layer after layer, not as a
# wavefront: a kernel splits its time loop by blocks of at least MIN_ROWS = 8 batch
# rows (_step.pxd's row_blocks), so from 2 * 8 rows on one call per layer keeps two
# threads busy by itself, and the chunks' extra calls (each projecting and packing
# the weights again) would only add work.
WAVEFRONT_BATCH = 16
# A chunk is at least WAVEFRONT_ROWS rows (steps x batch; the last may be shorter, the
# rest of T): each chunk is a kernel
# call that packs the weights again and starts its products afresh, which a short
# chunk does not repay. And a stack runs as a wavefront only over at least
# WAVEFRONT_CHUNKS chunks: with K chunks, L layers take K + L - 1 diagonals against
# K L calls in turn, which for fewer chunks does not repay the chunks' calls.
WAVEFRONT_ROWS = 128
WAVEFRONT_CHUNKS = 3


def _chunk_steps(T, B):
    """Steps per chunk of the wavefront: about T / 8 (8 chunks: two layers on two
    threads then overlap for 8 of 9 diagonals), at least WAVEFRONT_ROWS / B. Fixed
    by T and B alone, so the arithmetic does not depend on the thread count."""
    return max(-(-WAVEFRONT_ROWS // B), -(-T // 8))


def _wavefront(D, L, T, B):
    """Does a stack of L layers, D directions, over (T, B) run as a wavefront?"""
    return D == 1 and L > 1 and B < WAVEFRONT_BATCH and T >= WAVEFRONT_CHUNKS * _chunk_steps(T, B)


def _chunks(T, B):
    C = _chunk_steps(T, B)
    return [(t0, min(T, t0 + C)) for t0 in range(0, T, C)]


def _chunk_lengths(lengths, t0, t1):
    """The steps of each sequence inside steps [t0, t1)."""
    return None if lengths is None else np.clip(lengths - t0, 0, t1 - t0)


def _run_diagonal(task, items):
    """task(*item) for every item: those of even and odd positions at once on two
    threads (run_pair) when there are two or more."""
    if len(items) == 1:
        task(*items[0])
    else:
        run_pair(lambda: [task(*i) for i in items[0::2]],
                 lambda: [task(*i) for i in items[1::2]])


class _StackCache:
    """What backward needs from forward: per layer, per direction, the kernel's
    cache; per layer, the dropout mask applied to its input (or None)."""

    __slots__ = ("layer", "T", "B", "flip", "kernel", "masks", "chunks", "batch_first")

    def __init__(self, layer, T, B, flip, batch_first):
        self.layer = layer   # the stack whose forward made it (only its backward takes it)
        self.T, self.B, self.flip, self.batch_first = T, B, flip, batch_first
        self.kernel = []     # [layer][direction] kernel cache, or [layer][chunk]
        self.masks = []      # [layer] (T, B, I_l) mask applied to x_l, or None
        self.chunks = None   # [(t0, t1)] of the wavefront, or None: whole sequences


class _Recurrent(Module):
    """The stack shared by RNN, LSTM and GRU; subclasses give the gates and the
    kernel calls on tuples of states ((h,), or (h, c) for the LSTM)."""

    GATES = 1
    N_STATES = 1

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = H = check_size("hidden_size", hidden_size)
        self.num_layers = check_size("num_layers", num_layers)
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) \
                or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        self.dropout = float(dropout)
        self.rng = make_rng(rng)
        D = 2 if bidirectional else 1
        bound = 1 / math.sqrt(H)
        for layer in range(self.num_layers):
            I_l = self.input_size if layer == 0 else D * H
            for suffix in self._suffixes():
                key = f"l{layer}{suffix}"
                self._add_param(f"weight_ih_{key}",
                                uniform(self.rng, bound, (self.GATES * H, I_l), self.dtype))
                self._add_param(f"weight_hh_{key}",
                                uniform(self.rng, bound, (self.GATES * H, H), self.dtype))
                if self.bias:
                    self._add_param(f"bias_ih_{key}",
                                    uniform(self.rng, bound, (self.GATES * H,), self.dtype))
                    self._add_param(f"bias_hh_{key}",
                                    uniform(self.rng, bound, (self.GATES * H,), self.dtype))

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def _weights(self, layer, d):
        key = f"l{layer}{self._suffixes()[d]}"
        p = self.params
        return (key, p[f"weight_ih_{key}"], p[f"weight_hh_{key}"],
                p.get(f"bias_ih_{key}"), p.get(f"bias_hh_{key}"))

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                f"dtype={self.dtype.name})")

    # -- arguments ------------------------------------------------------------------

    def _input(self, x):
        """x as (T, B, I), time-major and C-contiguous."""
        x = np.asarray(x)
        if x.dtype != self.dtype:
            raise TypeError(f"x must have the layer's dtype {self.dtype}, got {x.dtype}")
        if x.ndim != 3 or x.shape[2] != self.input_size:
            legend = "(B, T, I)" if self.batch_first else "(T, B, I)"
            raise ValueError(f"x must have shape {legend} with I = input_size = "
                             f"{self.input_size}, got {x.shape}")
        return np.ascontiguousarray(x.transpose(1, 0, 2) if self.batch_first else x)

    def _states(self, name, s, B, required=False):
        """s as a C-contiguous (L D, B, H) array, or None."""
        if s is None:
            if required:
                raise ValueError(f"{name} must be given")
            return None
        s = np.asarray(s)
        if s.dtype != self.dtype:
            raise TypeError(f"{name} must have the layer's dtype {self.dtype}, got {s.dtype}")
        shape = (self.num_layers * (2 if self.bidirectional else 1), B, self.hidden_size)
        if s.shape != shape:
            raise ValueError(f"{name} must have shape (num_layers * D, B, H) = {shape}, "
                             f"got {s.shape}")
        return np.ascontiguousarray(s)

    def _seq_grad(self, d_out, T, B):
        """d_out as (T, B, D H) time-major, or None."""
        if d_out is None:
            return None
        d_out = np.asarray(d_out)
        if d_out.dtype != self.dtype:
            raise TypeError(f"d_out must have the layer's dtype {self.dtype}, got {d_out.dtype}")
        DH = (2 if self.bidirectional else 1) * self.hidden_size
        shape = (B, T, DH) if self.batch_first else (T, B, DH)
        if d_out.shape != shape:
            raise ValueError(f"d_out must have the shape of out, {shape}, got {d_out.shape}")
        return np.ascontiguousarray(d_out.transpose(1, 0, 2) if self.batch_first else d_out)

    # -- forward and backward on tuples of states -------------------------------------

    def _dropout_masks(self, shape):
        """[None, mask of layer 1's input, ..., of layer L-1's]: (u >= p) / (1 - p),
        u ~ U[0, 1) of ``shape`` (T, B, D H) from self.rng, layer by layer; all
        None in evaluation mode or without dropout."""
        masks = [None] * self.num_layers
        if self.training and self.dropout:
            for layer in range(1, self.num_layers):
                keep = self.rng.random(shape) >= self.dropout
                masks[layer] = keep.astype(self.dtype) / self.dtype.type(1 - self.dropout) \
                    if self.dropout < 1 else np.zeros(shape, self.dtype)
        return masks

    def _add_grads(self, layer, d, dW_ih, dW_hh, db_ih, db_hh):
        key = self._weights(layer, d)[0]
        g = self.grads
        g[f"weight_ih_{key}"] += dW_ih
        g[f"weight_hh_{key}"] += dW_hh
        if self.bias:
            g[f"bias_ih_{key}"] += db_ih
            g[f"bias_hh_{key}"] += db_hh

    def _forward(self, x, hx, lengths, return_cache):
        """x (T, B, I) or (B, T, I); hx: tuple of N_STATES (L D, B, H) arrays or
        Nones -> (out, tuple of (L D, B, H) final states, cache or None)."""
        return_cache = check_bool("return_cache", return_cache)
        x = self._input(x)
        T, B, _ = x.shape
        H, D = self.hidden_size, 2 if self.bidirectional else 1
        hx = tuple(self._states(n, s, B) for n, s in zip(("h0", "c0"), hx))
        lengths = lengths_array(lengths, B, T)
        cache = _StackCache(self, T, B, _Flip(lengths, T, B), self.batch_first)
        cache.masks = self._dropout_masks((T, B, D * H))
        finals = tuple(np.empty((self.num_layers * D, B, H), self.dtype) for _ in hx)
        if _wavefront(D, self.num_layers, T, B):
            out = self._forward_wavefront(x, hx, lengths, return_cache, cache, finals)
        else:
            out = self._forward_layers(x, hx, lengths, return_cache, cache, finals)
        if self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, finals, (cache if return_cache else None)

    def _forward_layers(self, x, hx, lengths, return_cache, cache, finals):
        """Layer after layer, the two directions of each at once."""
        D = 2 if self.bidirectional else 1
        flip, inp = cache.flip, x
        for layer in range(self.num_layers):
            if cache.masks[layer] is not None:
                inp = inp * cache.masks[layer]

            def run(d, inp=inp, layer=layer):
                _, W_ih, W_hh, b_ih, b_hh = self._weights(layer, d)
                s0 = tuple(None if s is None else s[layer * D + d] for s in hx)
                xd = inp if d == 0 else flip(inp)
                out, s_n, kc = self._kernel_forward(xd, s0, W_ih, W_hh, b_ih, b_hh, lengths,
                                                    return_cache)
                return (out if d == 0 else flip(out)), s_n, kc
            runs = run_pair(lambda: run(0), lambda: run(1)) if D == 2 else (run(0),)
            for d, (_, s_n, _) in enumerate(runs):
                for f, s in zip(finals, s_n):
                    f[layer * D + d] = s
            cache.kernel.append([kc for _, _, kc in runs])
            inp = runs[0][0] if D == 1 else np.concatenate([r[0] for r in runs], axis=2)
        return inp

    def _forward_wavefront(self, x, hx, lengths, return_cache, cache, finals):
        """One direction, L layers: chunks of steps in diagonals. Layer l's chunk k
        runs once its chunk k - 1 (the state) and layer l - 1's chunk k (the
        input, one GEMM inside the kernel) are done: in diagonal s = l + k, whose
        chunks run at once (on two threads, split between them)."""
        T, B, _ = x.shape
        L, H = self.num_layers, self.hidden_size
        bounds = _chunks(T, B)
        K = len(bounds)
        outs = [np.empty((T, B, H), self.dtype) for _ in range(L)]   # every layer's out_l
        states = [tuple(None if s is None else s[layer] for s in hx) for layer in range(L)]
        kernel = [[None] * K for _ in range(L)]

        def task(layer, k):
            t0, t1 = bounds[k]
            inp = x[t0:t1] if layer == 0 else outs[layer - 1][t0:t1]
            mask = cache.masks[layer]
            inp = np.ascontiguousarray(inp if mask is None else inp * mask[t0:t1])
            _, W_ih, W_hh, b_ih, b_hh = self._weights(layer, 0)
            out, states[layer], kernel[layer][k] = self._kernel_forward(
                inp, states[layer], W_ih, W_hh, b_ih, b_hh, _chunk_lengths(lengths, t0, t1),
                return_cache)
            outs[layer][t0:t1] = out

        for s in range(K + L - 1):
            _run_diagonal(task, [(layer, s - layer) for layer in range(L) if 0 <= s - layer < K])
        for layer in range(L):
            for f, st in zip(finals, states[layer]):
                f[layer] = st
        cache.kernel, cache.chunks = kernel, bounds
        return outs[-1]

    def _backward(self, d_out, d_finals, cache):
        """d_out like out or None; d_finals: tuple of N_STATES (L D, B, H) or Nones
        -> (dx like x, tuple of N_STATES (L D, B, H) gradients of hx). Adds the
        parameters' gradients into self.grads."""
        if not isinstance(cache, _StackCache) or cache.layer is not self:
            raise TypeError(cache_error(self, cache, "(with return_cache=True)"))
        T, B = cache.T, cache.B
        H, D = self.hidden_size, 2 if self.bidirectional else 1
        d_in = self._seq_grad(d_out, T, B)
        d_finals = tuple(self._states(n, s, B) for n, s in zip(("d_h_n", "d_c_n"), d_finals))
        d_init = tuple(np.zeros((self.num_layers * D, B, H), self.dtype) for _ in d_finals)
        if cache.chunks is None:
            dx = self._backward_layers(d_in, d_finals, d_init, cache)
        else:
            dx = self._backward_wavefront(d_in, d_finals, d_init, cache)
        if cache.batch_first:
            dx = dx.transpose(1, 0, 2)
        return dx, d_init

    def _backward_layers(self, d_in, d_finals, d_init, cache):
        H, D, flip = self.hidden_size, 2 if self.bidirectional else 1, cache.flip
        for layer in reversed(range(self.num_layers)):
            def run(d, d_in=d_in, layer=layer):
                dd = None if d_in is None else np.ascontiguousarray(d_in[..., d * H:(d + 1) * H])
                if d == 1:
                    dd = flip(dd)
                ds = tuple(None if s is None else s[layer * D + d] for s in d_finals)
                dx, ds0, *dW = self._kernel_backward(dd, ds, cache.kernel[layer][d])
                self._add_grads(layer, d, *dW)
                return (dx if d == 0 else flip(dx)), ds0
            runs = run_pair(lambda: run(0), lambda: run(1)) if D == 2 else (run(0),)
            for d, (_, ds0) in enumerate(runs):
                for g, s in zip(d_init, ds0):
                    g[layer * D + d] = s
            dx = runs[0][0] if D == 1 else runs[0][0] + runs[1][0]
            mask = cache.masks[layer]
            d_in = dx if mask is None else dx * mask
        return d_in

    def _backward_wavefront(self, d_out, d_finals, d_init, cache):
        """The forward's diagonals in reverse: layer l's chunk k once its chunk
        k + 1 (the state's gradient) and layer l + 1's chunk k (its output's) are done."""
        T, B, bounds = cache.T, cache.B, cache.chunks
        L, K = self.num_layers, len(bounds)
        # d_outs[l]: gradient reaching out_l (T, B, H), written chunk by chunk by layer l + 1
        d_outs = [np.empty((T, B, self.hidden_size), self.dtype) for _ in range(L - 1)]
        d_outs.append(d_out)
        dx0 = np.empty((T, B, self.input_size), self.dtype)
        d_states = [tuple(None if s is None else s[layer] for s in d_finals) for layer in range(L)]

        def task(layer, k):
            t0, t1 = bounds[k]
            dd = None if d_outs[layer] is None else np.ascontiguousarray(d_outs[layer][t0:t1])
            dx, d_states[layer], *dW = self._kernel_backward(dd, d_states[layer],
                                                             cache.kernel[layer][k])
            self._add_grads(layer, 0, *dW)
            mask = cache.masks[layer]
            target = dx0 if layer == 0 else d_outs[layer - 1]
            target[t0:t1] = dx if mask is None else dx * mask[t0:t1]

        for s in range(K + L - 1):
            _run_diagonal(task, [(layer, K - 1 - (s - (L - 1 - layer))) for layer in range(L)
                                 if 0 <= K - 1 - (s - (L - 1 - layer)) < K])
        for layer in range(L):
            for g, st in zip(d_init, d_states[layer]):
                g[layer] = st
        return dx0


class RNN(_Recurrent):
    """Elman RNN stack, ``torch.nn.RNN``'s arguments, parameters and results.

    RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32, rng=None)

    Parameters (``params`` / ``grads`` keys, k = layer, suffix "" or "_reverse"):
    weight_ih_l{k} (H, I_k), weight_hh_l{k} (H, H), bias_ih_l{k} (H,),
    bias_hh_l{k} (H,); I_0 = input_size, I_k = D H above; all U(-1/sqrt(H),
    1/sqrt(H)) from ``rng`` (a numpy Generator, a seed or None), in that order.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32,
                 rng=None):
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, rng)

    def _kernel_forward(self, x, s0, W_ih, W_hh, b_ih, b_hh, lengths, return_cache):
        out, h_n, kc = rnn_forward(x, s0[0], W_ih, W_hh, b_ih, b_hh,
                                   nonlinearity=self.nonlinearity, lengths=lengths,
                                   return_cache=return_cache)
        return out, (h_n,), kc

    def _kernel_backward(self, d_out, ds, kc):
        g = rnn_backward(d_out, ds[0], kc)
        return g.dx, (g.dh0,), g.dW_ih, g.dW_hh, g.db_ih, g.db_hh

    def forward(self, x, hx=None, *, lengths=None, return_cache=True):
        """x (T, B, I) (or (B, T, I) with ``batch_first``), hx (L D, B, H) or None
        for zeros, lengths (B,) integers in [0, T] or None
        -> (out (T, B, D H) (or (B, T, D H)), h_n (L D, B, H), cache); with
        return_cache=False (inference) nothing is kept and cache is None."""
        out, (h_n,), cache = self._forward(x, (hx,), lengths, return_cache)
        return out, h_n, cache

    def backward(self, d_out, d_h_n, cache):
        """d_out like out or None, d_h_n (L D, B, H) or None, cache from forward
        -> (dx like x, dh0 (L D, B, H)); adds the parameters' gradients into grads."""
        dx, (dh0,) = self._backward(d_out, (d_h_n,), cache)
        return dx, dh0


class GRU(_Recurrent):
    """GRU stack, ``torch.nn.GRU``'s arguments, parameters and results.

    GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, dtype=np.float32, rng=None)

    Parameters as :class:`RNN`'s with 3H rows (r, z, n) in place of H.
    """

    GATES = 3

    def _kernel_forward(self, x, s0, W_ih, W_hh, b_ih, b_hh, lengths, return_cache):
        out, h_n, kc = gru_forward(x, s0[0], W_ih, W_hh, b_ih, b_hh, lengths=lengths,
                                   return_cache=return_cache)
        return out, (h_n,), kc

    def _kernel_backward(self, d_out, ds, kc):
        g = gru_backward(d_out, ds[0], kc)
        return g.dx, (g.dh0,), g.dW_ih, g.dW_hh, g.db_ih, g.db_hh

    forward = RNN.forward
    backward = RNN.backward


class LSTM(_Recurrent):
    """LSTM stack, ``torch.nn.LSTM``'s arguments, parameters and results (no proj_size).

    LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, dtype=np.float32, rng=None)

    Parameters as :class:`RNN`'s with 4H rows (i, f, g, o) in place of H.
    """

    GATES = 4
    N_STATES = 2

    def _kernel_forward(self, x, s0, W_ih, W_hh, b_ih, b_hh, lengths, return_cache):
        out, h_n, c_n, kc = lstm_forward(x, s0[0], s0[1], W_ih, W_hh, b_ih, b_hh,
                                         lengths=lengths, return_cache=return_cache)
        return out, (h_n, c_n), kc

    def _kernel_backward(self, d_out, ds, kc):
        g = lstm_backward(d_out, ds[0], ds[1], kc)
        return g.dx, (g.dh0, g.dc0), g.dW_ih, g.dW_hh, g.db_ih, g.db_hh

    @staticmethod
    def _pair(name, hx):
        if hx is None:
            return None, None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{name} must be a pair (h, c) or None, got {type(hx).__name__}")
        return tuple(hx)

    def forward(self, x, hx=None, *, lengths=None, return_cache=True):
        """x (T, B, I) (or (B, T, I) with ``batch_first``), hx = (h0, c0), each
        (L D, B, H) or None for zeros, lengths (B,) integers in [0, T] or None
        -> (out (T, B, D H) (or (B, T, D H)), (h_n, c_n) each (L D, B, H), cache);
        with return_cache=False (inference) nothing is kept and cache is None."""
        out, finals, cache = self._forward(x, self._pair("hx", hx), lengths, return_cache)
        return out, finals, cache

    def backward(self, d_out, d_hc_n, cache):
        """d_out like out or None, d_hc_n = (d_h_n, d_c_n), each (L D, B, H) or
        None, or None; cache from forward -> (dx like x, (dh0, dc0) each
        (L D, B, H)); adds the parameters' gradients into grads."""
        dx, d_init = self._backward(d_out, self._pair("d_hc_n", d_hc_n), cache)
        return dx, d_init
