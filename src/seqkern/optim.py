"""Optimisers with PyTorch's update rules and defaults: SGD, Adam, AdamW.

An optimiser holds matching lists of parameter and gradient arrays, given as
``layer.params`` and ``layer.grads`` (dicts; the keys of the two must match) or
lists of such dicts or of arrays, e.g.
``Adam([emb.params, lstm.params], [emb.grads, lstm.grads], lr=1e-3)``.
``step()`` updates the parameters in place from the gradients;
``zero_grad()`` sets the gradients to zero.
"""

import math

import numpy as np

from seqkern.nn import _basic
from seqkern.nn._basic import arrays_of, piece_buffer, pieces

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _pairs(params, grads):
    if isinstance(params, dict) != isinstance(grads, dict) or \
            (isinstance(params, dict) and list(params) != list(grads)):
        raise ValueError("params and grads must have the same structure (the same dict keys)")
    if isinstance(params, (list, tuple)) and isinstance(grads, (list, tuple)):
        if len(params) != len(grads):
            raise ValueError(f"params and grads must have the same length, got {len(params)} "
                             f"and {len(grads)}")
        for p, g in zip(params, grads):
            _pairs(p, g)
    p, g = arrays_of(params, "params"), arrays_of(grads, "grads")
    if len(p) != len(g):
        raise ValueError(f"params and grads must hold as many arrays, got {len(p)} and {len(g)}")
    for i, (a, b) in enumerate(zip(p, g)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"params[{i}] {a.shape} {a.dtype} and grads[{i}] {b.shape} "
                             f"{b.dtype} must have the same shape and dtype")
    return p, g


def _positive(name, value, zero_ok=True):
    value = float(value)
    if not (value >= 0 if zero_ok else value > 0) or math.isinf(value):
        raise ValueError(f"{name} must be {'>= 0' if zero_ok else '> 0'} and finite, got {value}")
    return value


class Optimizer:
    """Matching parameter and gradient arrays, and per-parameter state."""

    def __init__(self, params, grads, lr):
        self.params, self.grads = _pairs(params, grads)
        self.lr = _positive("lr", lr)
        self.state = [{} for _ in self.params]

    def zero_grad(self):
        """Set every gradient to zero (in place)."""
        for g in self.grads:
            g[...] = 0

    def step(self):
        """Update every parameter in place from its gradient."""
        for i, p in enumerate(self.params):     # before any update: all or nothing
            if not p.flags.writeable:
                raise ValueError(f"params[{i}] is read-only: the optimiser updates it in place")
        for p, g, s in zip(self.params, self.grads, self.state):
            self._update(p, g, s, p.dtype.type)


class SGD(Optimizer):
    """torch.optim.SGD: with d = g + weight_decay p,
    buf = d (first step), then momentum buf + (1 - dampening) d;
    d = d + momentum buf (nesterov) or buf (momentum > 0); p -= lr d."""

    def __init__(self, params, grads, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, grads, lr)
        self.momentum = _positive("momentum", momentum)
        self.dampening = float(dampening)
        if not math.isfinite(self.dampening):
            raise ValueError(f"dampening must be finite, got {self.dampening}")
        self.weight_decay = _positive("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")

    def _update(self, p, g, s, f):
        d = g + f(self.weight_decay) * p if self.weight_decay else g
        if self.momentum:
            buf = s.get("momentum_buffer")
            if buf is None:
                buf = s["momentum_buffer"] = d.copy()
            else:
                buf *= f(self.momentum)
                buf += f(1 - self.dampening) * d
            d = d + f(self.momentum) * buf if self.nesterov else buf
        p -= f(self.lr) * d


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient):
    g += weight_decay p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    (amsgrad: v replaced by the running maximum of v)."""

    decoupled = False

    def __init__(self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
        super().__init__(params, grads, lr)
        try:
            b1, b2 = (float(b) for b in betas)
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of numbers (beta1, beta2), got {betas!r}") \
                from None
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.betas = (b1, b2)
        self.eps = _positive("eps", eps)
        self.weight_decay = _positive("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)
        self._pieces = {}                # dtype -> (2, PIECE) scratch of the updates

    def _update(self, p, g, s, f):
        b1, b2 = self.betas
        if not s:
            s["step"] = 0
            s["exp_avg"] = np.zeros_like(p)
            s["exp_avg_sq"] = np.zeros_like(p)
            if self.amsgrad:
                s["max_exp_avg_sq"] = np.zeros_like(p)
        s["step"] += 1
        t = s["step"]
        if self.weight_decay and self.decoupled:
            p *= f(1 - self.lr * self.weight_decay)
        l2 = f(self.weight_decay) if self.weight_decay and not self.decoupled else None
        step_size = f(self.lr / (1 - b1 ** t))
        bias2 = f(math.sqrt(1 - b2 ** t))
        state = [s["exp_avg"], s["exp_avg_sq"]] + ([s["max_exp_avg_sq"]] if self.amsgrad else [])
        # Piece by piece (nn._basic.pieces), in place, through two scratch pieces:
        # the temporaries of one piece stay in cache from one pass to the next.
        for pp, gg, m, v, *vmax in pieces(p, g, *state):
            tmp, tmp2 = self._scratch(pp)
            if l2 is not None:                        # g + weight_decay p
                np.multiply(pp, l2, out=tmp2)
                gg = np.add(gg, tmp2, out=tmp2)
            np.subtract(gg, m, out=tmp)               # m += (1 - b1) (g - m): lerp, as PyTorch
            tmp *= f(1 - b1)
            m += tmp
            v *= f(b2)                                # v = b2 v + (1 - b2) g^2
            np.multiply(gg, gg, out=tmp)
            tmp *= f(1 - b2)
            v += tmp
            if vmax:
                v = np.maximum(vmax[0], v, out=vmax[0])
            np.sqrt(v, out=tmp)                       # denom = sqrt(v) / sqrt(1 - b2^t) + eps
            tmp /= bias2
            tmp += f(self.eps)
            np.divide(m, tmp, out=tmp)                # p -= lr / (1 - b1^t) m / denom
            tmp *= step_size
            pp -= tmp

    def _scratch(self, piece):
        """Two arrays shaped like ``piece``: views of scratch kept by the optimiser
        for pieces of PIECE elements or fewer, new arrays for a larger (whole) one."""
        if piece.dtype not in self._pieces:
            self._pieces[piece.dtype] = np.empty((2, _basic.PIECE), piece.dtype)
        return tuple(piece_buffer(b, piece) for b in self._pieces[piece.dtype])


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr weight_decay
    before the update; weight_decay defaults to 0.01."""

    decoupled = True

    def __init__(self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(params, grads, lr, betas, eps, weight_decay, amsgrad)
