"""The tasks and models the training experiments share (memory, gradients,
clipping), on seqkern.nn and seqkern.optim.

Tasks, generated on the fly from a numpy Generator (time-major, float32):

- the adding problem (Hochreiter & Schmidhuber 1997): x (T, B, 2), a value in
  U(0, 1) and a marker at each step, two steps marked (one in each half); the
  target is the sum of the two marked values, read at the last step. Always
  answering the mean, 1, gives the chance MSE 1/6.
- the copy-memory task (Arjovsky et al. 2016): 10 symbols from 1..8, T - 1
  blanks (0), a delimiter (9), 10 blanks; the answer is blanks everywhere but
  the last 10 steps, which repeat the 10 symbols. Inputs one-hot (T + 20, B,
  10). Blanks everywhere then a uniform guess gives the chance cross-entropy
  10 log 8 / (T + 20).

Models map x (T, B, I) to y (T, B, O): a one-layer RNN / LSTM / GRU and a
linear read-out of its states, or a single causal self-attention layer (a
linear input embedding plus learned position embeddings, multi-head
attention with a residual connection, a linear read-out; for the adding
problem, one query at the last step).
"""

import math

import numpy as np

from seqkern import nn, optim

ADDING_CHANCE = 1.0 / 6.0
COPY_SYMBOLS, COPY_LEN = 8, 10


def copy_chance(T):
    """Cross-entropy per step of blanks, then a uniform guess of the 10 symbols."""
    return COPY_LEN * math.log(COPY_SYMBOLS) / (T + 2 * COPY_LEN)


def adding_batch(T, B, rng):
    """x (T, B, 2) float32, y (B,) float32: the sum of the two marked values."""
    x = np.zeros((T, B, 2), np.float32)
    x[:, :, 0] = rng.random((T, B))
    half = max(T // 2, 1)
    first = rng.integers(0, half, B)
    second = rng.integers(half, T, B) if T > 1 else first
    second = np.where(second == first, (first + 1) % T, second)
    cols = np.arange(B)
    x[first, cols, 1] = 1
    x[second, cols, 1] = 1
    y = x[first, cols, 0] + x[second, cols, 0]
    return x, y.astype(np.float32)


def copy_batch(T, B, rng):
    """x (T + 20, B, 10) float32 one-hot, targets (T + 20, B) int64."""
    L = T + 2 * COPY_LEN
    ids = np.zeros((L, B), np.int64)
    sym = rng.integers(1, COPY_SYMBOLS + 1, (COPY_LEN, B))
    ids[:COPY_LEN] = sym
    ids[COPY_LEN + T - 1] = COPY_SYMBOLS + 1          # the delimiter
    targets = np.zeros((L, B), np.int64)
    targets[-COPY_LEN:] = sym
    x = np.eye(COPY_SYMBOLS + 2, dtype=np.float32)[ids]
    return x, targets


class Task:
    """A task at length T: ``batch(B, rng) -> (x, target)``, ``loss(y, target) ->
    (loss, dy)`` where y (T', B, O) is the model's output, ``chance``."""

    def __init__(self, name, T):
        if name not in ("adding", "copy"):
            raise ValueError(f"task must be 'adding' or 'copy', got {name!r}")
        self.name, self.T = name, T
        self.in_size, self.out_size = (2, 1) if name == "adding" else (10, COPY_SYMBOLS + 1)
        self.chance = ADDING_CHANCE if name == "adding" else copy_chance(T)
        self.steps = T if name == "adding" else T + 2 * COPY_LEN

    def batch(self, B, rng):
        return (adding_batch if self.name == "adding" else copy_batch)(self.T, B, rng)

    def loss(self, y, target):
        """Mean loss and its gradient dy, shaped like y (for the adding problem,
        only y's last step counts)."""
        dy = np.zeros_like(y)
        if self.name == "adding":
            err = y[-1, :, 0] - target                   # (B,) the last step's guess
            dy[-1, :, 0] = 2 * err / err.size
            return float(np.mean(err * err)), dy
        L, B, C = y.shape
        loss, d = nn.cross_entropy(y.reshape(L * B, C), target.reshape(L * B))
        return float(loss), d.reshape(L, B, C)


class Recurrent:
    """x (T, B, I) -> RNN / LSTM / GRU (one layer, hidden H) -> Linear -> y (T, B, O)."""

    def __init__(self, kind, in_size, hidden, out_size, rng, radius=None, dtype=np.float32):
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.kind = kind
        self.rec = cls(in_size, hidden, dtype=dtype, rng=rng)
        self.head = nn.Linear(hidden, out_size, dtype=dtype, rng=rng)
        self.layers = [self.rec, self.head]
        if radius is not None:
            set_radius(self.rec.params["weight_hh_l0"], radius)

    def forward(self, x):
        out, _, c_rec = self.rec.forward(x)
        y, c_head = self.head.forward(out)
        return y, (c_rec, c_head)

    def backward(self, dy, cache):
        c_rec, c_head = cache
        d_out = self.head.backward(dy, c_head)
        self.rec.backward(d_out, None, c_rec)


class Attention:
    """x (T, B, I) -> Linear + position embedding -> self-attention with a
    residual -> Linear -> y (T, B, O); causal, or with ``last_only`` one query
    at the last step (y (1, B, O)), for a task scored there."""

    def __init__(self, in_size, width, out_size, max_len, rng, heads=2, last_only=False,
                 dtype=np.float32):
        self.kind = "attention"
        self.last_only = last_only
        self.inp = nn.Linear(in_size, width, dtype=dtype, rng=rng)
        self.pos = nn.Embedding(max_len, width, dtype=dtype, rng=rng)
        self.att = nn.MultiheadAttention(width, heads, dtype=dtype, rng=rng)
        self.head = nn.Linear(width, out_size, dtype=dtype, rng=rng)
        self.pos.params["weight"] *= 0.1
        self.layers = [self.inp, self.pos, self.att, self.head]

    def forward(self, x):
        T = x.shape[0]
        e, c_inp = self.inp.forward(x)
        p, c_pos = self.pos.forward(np.arange(T))
        h = e + p[:, None, :]                                  # (T, B, E)
        q = h[-1:] if self.last_only else h
        a, c_att = self.att.forward(q, h, h, is_causal=not self.last_only)
        y, c_head = self.head.forward(q + a)
        return y, (c_inp, c_pos, c_att, c_head)

    def backward(self, dy, cache):
        c_inp, c_pos, c_att, c_head = cache
        d_qa = self.head.backward(dy, c_head)                  # d(q + a)
        dq, dk, dv = self.att.backward(d_qa, c_att)
        d_h = dk + dv
        d_h[-dq.shape[0]:] += d_qa + dq                        # q is h, or its last step
        self.pos.backward(d_h.sum(axis=1), c_pos)
        self.inp.backward(d_h, c_inp)


def set_radius(W, radius):
    """Scale the square matrix W in place to spectral radius ``radius``."""
    rho = np.max(np.abs(np.linalg.eigvals(W.astype(np.float64))))
    W *= W.dtype.type(radius / rho)


def make_model(kind, task, hidden, rng, radius=None, dtype=np.float32):
    """The model ``kind`` (rnn, lstm, gru or attention) of width ``hidden`` for ``task``."""
    if kind == "attention":
        return Attention(task.in_size, hidden, task.out_size, task.steps, rng,
                         last_only=task.name == "adding", dtype=dtype)
    return Recurrent(kind, task.in_size, hidden, task.out_size, rng, radius, dtype)


def params_grads(model):
    return [l.params for l in model.layers], [l.grads for l in model.layers]


def evaluate(model, task, rng, n=512):
    """Mean loss on n fresh sequences."""
    x, t = task.batch(n, rng)
    y, _ = model.forward(x)
    return task.loss(y, t)[0]


def train(model, task, steps, batch, rng, lr=1e-3, clip=None, optimizer="adam",
          on_step=None):
    """Train ``model`` on ``task`` for ``steps`` batches. Returns (losses, grad
    norms before clipping), each a list of floats, one per step; a step whose
    loss is not finite ends training (the rest of both lists is NaN)."""
    params, grads = params_grads(model)
    opt = (optim.Adam(params, grads, lr=lr) if optimizer == "adam"
           else optim.SGD(params, grads, lr=lr))
    losses, norms = [], []
    for step in range(steps):
        x, t = task.batch(batch, rng)
        opt.zero_grad()
        y, cache = model.forward(x)
        loss, dy = task.loss(y, t)
        if not math.isfinite(loss):
            losses += [math.nan] * (steps - step)
            norms += [math.nan] * (steps - step)
            break
        model.backward(dy, cache)
        norm = nn.clip_grad_norm_(grads, clip) if clip else nn.clip_grad_norm_(grads, math.inf)
        opt.step()
        losses.append(loss)
        norms.append(norm)
        if on_step is not None:
            on_step()
    return losses, norms
