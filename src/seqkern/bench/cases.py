"""The one definition of the benchmark grid, shared by ``python -m seqkern.bench``
and the pytest-benchmark suite in ``benchmarks/``.

A :class:`Case` is a kernel, a shape, a direction and a dtype. For each case,
:func:`make_runner` builds a zero-argument callable per implementation
(``seqkern``, ``reference`` = seqkern.reference in NumPy, ``torch`` when it is
importable), with all inputs prepared outside the timed call.

Directions: ``fwd`` is an inference forward (seqkern and the reference with
``return_cache=False``, PyTorch under ``torch.no_grad()``); ``fwd+bwd`` is a
training step: a forward that keeps what the backward needs, then the backward
to every input, initial state and weight.

The step suite (:func:`steps`) times one time step of the recurrent kernels
(``lstm_step_forward`` and the like against PyTorch's ``LSTMCell``, ``GRUCell``,
``RNNCell``) and one decoding step of attention (a query against a cache of keys):
what a decoding loop written in Python calls once per token.
"""

import importlib.util
from dataclasses import dataclass

import numpy as np

RECURRENT = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
IMPLS = ("seqkern", "reference", "torch")
# seqkern with the recurrent kernels' products forced onto one GEMM path
# (seqkern._step_gemm): what AUTO is measured against, on demand only.
PATH_IMPLS = ("seqkern-blas", "seqkern-packed")

# (B, T, I, H) for the recurrent kernels, from the issues.
RECURRENT_SHAPES = [(1, 100, 128, 128), (1, 1000, 64, 64), (32, 100, 256, 256), (64, 200, 512, 512)]
# (B, 1, I, H) for single steps (suite "step").
STEP_SHAPES = [(1, 1, 128, 128), (1, 1, 512, 512), (32, 1, 256, 256)]
# (B, H, T, D) for attention.
ATTENTION_SHAPES = [(8, 8, 256, 64), (4, 8, 1024, 64), (1, 8, 4096, 64)]
# (B, H, Tk, D) for one decoding step of attention (suite "step"): one new query
# against Tk cached keys and values, forward.
ATTENTION_STEP_SHAPES = [(1, 8, 1024, 64), (1, 8, 4096, 64), (8, 8, 1024, 64)]


@dataclass(frozen=True)
class Case:
    kernel: str            # "rnn", "lstm", "gru" or "attention"
    shape: tuple           # (B, T, I, H) recurrent; (B, H, T, D) attention (a step:
                           # (B, H, Tk, D), one query)
    direction: str = "fwd"  # "fwd" or "fwd+bwd"
    dtype: str = "float32"
    causal: bool = False   # attention only
    suite: str = "grid"    # "grid" (comparisons), "sweep" (the sequence-length study)
                           # or "step" (one time step: T = 1)

    @property
    def name(self):
        s = "x".join(map(str, self.shape))
        extra = " causal" if self.causal else ""
        kind = f"{self.kernel} step" if self.suite == "step" else self.kernel
        return f"{kind} {s}{extra} {self.direction} {self.dtype}"

    @property
    def legend(self):
        return "B,T,I,H" if self.kernel in RECURRENT else "B,H,T,D"

    def tokens(self):
        """Sequence positions processed per call (B * T)."""
        if self.kernel in RECURRENT:
            return self.shape[0] * self.shape[1]
        return self.shape[0] * (1 if self.suite == "step" else self.shape[2])

    def flops(self):
        """Floating-point operations of the matrix products (2 per multiply-add)."""
        if self.kernel in RECURRENT:
            B, T, I, H = self.shape
            fwd = 2.0 * B * T * GATES[self.kernel] * H * (I + H)
            # backward: dh_{t-1}, dW_hh, dW_ih and dx: twice the forward's products
            return fwd * (3 if self.direction == "fwd+bwd" else 1)
        B, H, T, D = self.shape
        if self.suite == "step":            # one query against T keys
            return 4.0 * B * H * T * D
        pairs = T * (T + 1) / 2 if self.causal else T * T
        fwd = 4.0 * B * H * pairs * D
        # backward: recompute S, then dV, dP, dQ, dK: 2.5x the forward's products
        return fwd * (3.5 if self.direction == "fwd+bwd" else 1)

    def as_dict(self):
        return dict(kernel=self.kernel, shape=list(self.shape), legend=self.legend,
                    direction=self.direction, dtype=self.dtype, causal=self.causal,
                    suite=self.suite, batch=self.shape[0], seq_len=self.seq_len())

    def seq_len(self):
        return self.shape[1] if self.kernel in RECURRENT else self.shape[2]


def torch_available():
    return importlib.util.find_spec("torch") is not None


def kernel_available(kernel):
    import seqkern

    name = "attention_forward" if kernel == "attention" else f"{kernel}_forward"
    return hasattr(seqkern, name)


# --quick: every RNN case of issue 2; for the other kernels one batch-1 and one
# batched case, chosen so that the whole table ends in under a minute on 2 cores.
QUICK = {
    "rnn": [(s, d) for s in RECURRENT_SHAPES for d in ("fwd", "fwd+bwd")],
    "lstm": [((1, 1000, 64, 64), "fwd"), ((1, 1000, 64, 64), "fwd+bwd"), ((32, 100, 256, 256), "fwd")],
    "gru": [((1, 1000, 64, 64), "fwd"), ((1, 1000, 64, 64), "fwd+bwd"), ((32, 100, 256, 256), "fwd")],
    "attention": [((8, 8, 256, 64), "fwd"), ((8, 8, 256, 64), "fwd+bwd")],
}


def grid(quick=False, kernels=None, dtypes=("float32",)):
    """The benchmark cases: the issues' shapes, forward and forward+backward.

    ``quick`` keeps the short list QUICK; the full grid has every shape of the
    issues, forward and forward+backward, and causal attention beside the plain one.
    """
    cases = []
    for kernel in kernels or RECURRENT + ("attention",):
        if not kernel_available(kernel):
            continue
        if quick:
            pairs = QUICK[kernel]
            causals = (False,)
        else:
            shapes = RECURRENT_SHAPES if kernel in RECURRENT else ATTENTION_SHAPES
            pairs = [(s, d) for s in shapes for d in ("fwd", "fwd+bwd")]
            causals = (False,) if kernel in RECURRENT else (False, True)
        for shape, direction in pairs:
            for causal in causals:
                for dtype in dtypes:
                    cases.append(Case(kernel, tuple(shape), direction, dtype, causal))
    return cases


SWEEP_LENGTHS = (64, 256, 1024, 4096)


def sweep(quick=False):
    """The sequence-length study behind the seed's claim: tokens/s and latency
    against T for the LSTM (sequential in T) and attention (parallel in T), for one
    sequence and for a batch, forward, float32.

    LSTM (B, T, 256, 256) with B in (1, 32); attention (B, 8 heads, T, 64) with
    B in (1, 4). ``quick`` stops at T = 1024.
    """
    lengths = SWEEP_LENGTHS[:3] if quick else SWEEP_LENGTHS
    cases = []
    if kernel_available("lstm"):
        for B in (1, 32):
            cases += [Case("lstm", (B, T, 256, 256), suite="sweep") for T in lengths]
    if kernel_available("attention"):
        for B in (1, 4):
            cases += [Case("attention", (B, 8, T, 64), suite="sweep") for T in lengths]
    return cases


def steps(kernels=None, dtypes=("float32",)):
    """One time step (suite "step"): of each recurrent kernel, forward and
    forward+backward, at STEP_SHAPES (batch 1 at H = 128 and 512, and a batch of
    32); of attention, one decoding step (a query against a cache of keys),
    forward, at ATTENTION_STEP_SHAPES."""
    cases = []
    for kernel in kernels or RECURRENT + ("attention",):
        if not kernel_available(kernel):
            continue
        if kernel in RECURRENT:
            pairs = [(s, d) for s in STEP_SHAPES for d in ("fwd", "fwd+bwd")]
        else:
            pairs = [(s, "fwd") for s in ATTENTION_STEP_SHAPES]
        for shape, direction in pairs:
            for dtype in dtypes:
                cases.append(Case(kernel, shape, direction, dtype, suite="step"))
    return cases


# ---------------------------------------------------------------------------
# Runners
# ---------------------------------------------------------------------------

def _recurrent_inputs(case, rng):
    B, T, I, H = case.shape
    G = GATES[case.kernel] * H
    dt = np.dtype(case.dtype)
    s = 1.0 / np.sqrt(H)
    return dict(
        x=rng.standard_normal((T, B, I)).astype(dt),
        h0=(rng.standard_normal((B, H)) * 0.5).astype(dt),
        c0=(rng.standard_normal((B, H)) * 0.5).astype(dt),
        W_ih=(rng.uniform(-s, s, (G, I))).astype(dt),
        W_hh=(rng.uniform(-s, s, (G, H))).astype(dt),
        b_ih=(rng.uniform(-s, s, G)).astype(dt),
        b_hh=(rng.uniform(-s, s, G)).astype(dt),
        d_out=rng.standard_normal((T, B, H)).astype(dt),
    )


def _numpy_recurrent(mod, kernel, a, direction):
    w = (a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"])
    fwd = getattr(mod, f"{kernel}_forward")
    bwd = getattr(mod, f"{kernel}_backward")
    states = (a["h0"], a["c0"]) if kernel == "lstm" else (a["h0"],)
    if direction == "fwd":
        return lambda: fwd(a["x"], *states, *w, return_cache=False)

    def step():
        res = fwd(a["x"], *states, *w)
        nones = (None,) * (len(res) - 2)          # no gradient for h_n (and c_n)
        return bwd(a["d_out"], *nones, res[-1])
    return step


def _torch_recurrent(kernel, a, direction, step=False):
    """PyTorch's nn.RNN / LSTM / GRU over the sequence, or with ``step`` its RNNCell /
    LSTMCell / GRUCell for one step (x[0], states (B, H)), holding ``a``'s weights."""
    import torch

    B, H = a["h0"].shape
    I = a["x"].shape[2]
    dt = torch.float64 if a["x"].dtype == np.float64 else torch.float32
    name = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[kernel] + ("Cell" if step else "")
    m = getattr(torch.nn, name)(I, H, dtype=dt)
    suffix = "" if step else "_l0"
    with torch.no_grad():
        for attr, key in (("weight_ih", "W_ih"), ("weight_hh", "W_hh"),
                          ("bias_ih", "b_ih"), ("bias_hh", "b_hh")):
            getattr(m, attr + suffix).copy_(torch.from_numpy(a[key]))
    first = (lambda v: v[0]) if step else (lambda v: v)      # a step: x[0], d_out[0]
    x = torch.from_numpy(first(a["x"]))
    d_out = torch.from_numpy(first(a["d_out"]))
    # initial states: (B, H) for a cell, (1, B, H) (one layer) for a sequence
    h0, c0 = (torch.from_numpy(a[k]) if step else torch.from_numpy(a[k])[None]
              for k in ("h0", "c0"))

    def state(grad):
        h = h0.clone().requires_grad_(grad)
        if kernel == "lstm":
            return (h, c0.clone().requires_grad_(grad))
        return h

    if direction == "fwd":
        def run():
            with torch.no_grad():
                return m(x, state(False))
        return run

    params = list(m.parameters())

    def train_step():
        for p in params:
            p.grad = None
        xg = x.clone().requires_grad_(True)
        res = m(xg, state(True))
        # (out, state) over a sequence; (h, c) from LSTMCell; h from RNNCell, GRUCell
        out = res if step and kernel != "lstm" else res[0]
        out.backward(d_out)
        return xg.grad
    return train_step


def _numpy_step(mod, kernel, a, direction):
    w = (a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"])
    fwd = getattr(mod, f"{kernel}_step_forward")
    bwd = getattr(mod, f"{kernel}_step_backward")
    x = a["x"][0]
    states = (a["h0"], a["c0"]) if kernel == "lstm" else (a["h0"],)
    if direction == "fwd":
        return lambda: fwd(x, *states, *w)
    dh = a["d_out"][0]

    def step():
        res = fwd(x, *states, *w)
        if kernel == "lstm":
            return bwd(dh, None, res[-1])
        return bwd(dh, res[-1])
    return step


def _attention_inputs(case, rng):
    B, H, T, D = case.shape
    Tq = 1 if case.suite == "step" else T
    dt = np.dtype(case.dtype)
    return {k: rng.standard_normal((B, H, Tq if k in ("q", "d_out") else T, D)).astype(dt)
            for k in ("q", "k", "v", "d_out")}


def _numpy_attention(mod, a, case):
    if case.direction == "fwd":
        return lambda: mod.attention_forward(a["q"], a["k"], a["v"], causal=case.causal,
                                             return_cache=False)

    def step():
        _, cache = mod.attention_forward(a["q"], a["k"], a["v"], causal=case.causal)
        return mod.attention_backward(a["d_out"], cache)
    return step


def _torch_attention(a, case):
    import torch
    import torch.nn.functional as F

    q, k, v, d_out = (torch.from_numpy(a[n]) for n in ("q", "k", "v", "d_out"))
    if case.direction == "fwd":
        def run():
            with torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v, is_causal=case.causal)
        return run

    def step():
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=case.causal)
        out.backward(d_out)
        return qg.grad
    return step


def make_runner(case, impl, seed=0):
    """A zero-argument callable running ``case`` with ``impl``; inputs are built here."""
    return _forcing_path(_make_runner(case, impl, seed), impl)


def _make_runner(case, impl, seed):
    rng = np.random.default_rng(seed)
    if impl == "torch" and not torch_available():
        raise RuntimeError("PyTorch is not installed")
    if case.kernel in RECURRENT and case.suite == "step":
        a = _recurrent_inputs(case, rng)
        if impl == "torch":
            return _torch_recurrent(case.kernel, a, case.direction, step=True)
        return _numpy_step(_module(impl), case.kernel, a, case.direction)
    if case.kernel in RECURRENT:
        a = _recurrent_inputs(case, rng)
        if impl == "torch":
            return _torch_recurrent(case.kernel, a, case.direction)
        mod = _module(impl)
        return _numpy_recurrent(mod, case.kernel, a, case.direction)
    a = _attention_inputs(case, rng)
    if impl == "torch":
        return _torch_attention(a, case)
    return _numpy_attention(_module(impl), a, case)


def _forcing_path(fn, impl):
    """fn, run with the products on the GEMM path ``impl`` names (seqkern-blas,
    seqkern-packed), or fn itself."""
    if impl not in PATH_IMPLS:
        return fn
    from seqkern._step_gemm import step_gemm

    mode = impl.split("-", 1)[1]

    def forced():
        with step_gemm(mode):
            return fn()
    return forced


def _module(impl):
    import seqkern
    import seqkern.reference

    if impl == "seqkern" or impl in PATH_IMPLS:
        return seqkern
    if impl == "reference":
        return seqkern.reference
    raise ValueError(f"impl must be one of {IMPLS + PATH_IMPLS}, got {impl!r}")
