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

The layer suite (:func:`layers`) times seqkern.nn against PyTorch's modules:
stacked bidirectional LSTM and GRU, MultiheadAttention and one training step of
an LSTM language model (runners in :mod:`seqkern.bench.layers`). An
implementation that does not apply to a case (:func:`applies`: the NumPy
reference to a layer, the plain-loop variant to a kernel or to attention) is
skipped for that case.
"""

import importlib.util
from dataclasses import dataclass

import numpy as np

from seqkern.bench import layers as _layers

RECURRENT = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
IMPLS = ("seqkern", "reference", "torch")
# seqkern with its products forced onto one GEMM path: the recurrent kernels'
# products with the weights (seqkern._step_gemm) and attention's tile products
# (OpenBLAS, or its own micro-kernel for "packed"): what the automatic choice is
# measured against, on demand only.
PATH_IMPLS = ("seqkern-blas", "seqkern-packed")
# seqkern.nn's stacks as a plain loop (suite "layers" only; seqkern.bench.layers).
LOOP_IMPL = "seqkern-loop"
LAYER_IMPLS = ("seqkern", LOOP_IMPL, "torch")

# (B, T, I, H) for the recurrent kernels, from the issues.
RECURRENT_SHAPES = [(1, 100, 128, 128), (1, 1000, 64, 64), (32, 100, 256, 256), (64, 200, 512, 512)]
# (B, 1, I, H) for single steps (suite "step").
STEP_SHAPES = [(1, 1, 128, 128), (1, 1, 512, 512), (32, 1, 256, 256)]
# (B, H, T, D) for attention.
ATTENTION_SHAPES = [(8, 8, 256, 64), (4, 8, 1024, 64), (1, 8, 4096, 64)]
# (B, H, Tk, D) for one decoding step of attention (suite "step"): one new query
# against Tk cached keys and values, forward.
ATTENTION_STEP_SHAPES = [(1, 8, 1024, 64), (1, 8, 4096, 64), (8, 8, 1024, 64)]

# Suite "layers" (issue 18): seqkern.nn against PyTorch's modules.
# nn.LSTM, nn.GRU: 2 layers, bidirectional, (B, T, I, H); nn.MHA: self-attention,
# (B, T, E, heads); nn.LM-step: a training step of a 2-layer LSTM language model,
# (B, T, V, H) (fwd+bwd only: forward, backward, clipping and Adam).
STACK_LAYERS = ("nn.LSTM", "nn.GRU")
LAYER_KERNELS = STACK_LAYERS + ("nn.MHA", "nn.LM-step")
STACK_SHAPES = [(1, 150, 256, 256), (32, 100, 256, 256)]
MHA_SHAPES = [(8, 256, 512, 8)]
LM_SHAPES = [(32, 64, 96, 256)]
# the grid's kernel names (--kernels) selecting each layer case
LAYER_OF_KERNEL = {"lstm": ("nn.LSTM", "nn.LM-step"), "gru": ("nn.GRU",), "attention": ("nn.MHA",)}


@dataclass(frozen=True)
class Case:
    kernel: str            # "rnn", "lstm", "gru", "attention", or one of LAYER_KERNELS
    shape: tuple           # (B, T, I, H) recurrent; (B, H, T, D) attention (a step:
                           # (B, H, Tk, D), one query); layers: see LAYER_KERNELS
    direction: str = "fwd"  # "fwd" or "fwd+bwd"
    dtype: str = "float32"
    causal: bool = False   # attention only
    suite: str = "grid"    # "grid" (comparisons), "sweep" (the sequence-length study),
                           # "step" (one time step: T = 1) or "layers" (seqkern.nn)

    @property
    def name(self):
        s = "x".join(map(str, self.shape))
        extra = " causal" if self.causal else ""
        kind = f"{self.kernel} step" if self.suite == "step" else self.kernel
        return f"{kind} {s}{extra} {self.direction} {self.dtype}"

    @property
    def legend(self):
        return {"nn.MHA": "B,T,E,heads", "nn.LM-step": "B,T,V,H"}.get(
            self.kernel, "B,T,I,H" if self.kernel in RECURRENT + STACK_LAYERS else "B,H,T,D")

    def tokens(self):
        """Sequence positions processed per call (B * T)."""
        if self.kernel in RECURRENT + LAYER_KERNELS:
            return self.shape[0] * self.shape[1]
        return self.shape[0] * (1 if self.suite == "step" else self.shape[2])

    def flops(self):
        """Floating-point operations of the matrix products (2 per multiply-add)."""
        if self.kernel in LAYER_KERNELS:
            return self._layer_flops()
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

    def _layer_flops(self):
        bwd = self.direction == "fwd+bwd"
        if self.kernel in STACK_LAYERS:
            # 2 layers x 2 directions, each a kernel of 2 B T G H (I_l + H) flops
            # (x W_ih^T and h W_hh^T); layer 0 reads I, layer 1 both directions' 2H.
            # Backward: 2x the forward's products (as the kernels').
            B, T, I, H = self.shape
            G = GATES[self.kernel[3:].lower()]
            fwd = 2 * sum(2.0 * B * T * G * H * (I_l + H) for I_l in (I, 2 * H))
            return fwd * (3 if bwd else 1)
        if self.kernel == "nn.MHA":
            # the four projections (q, k, v, out: 2 B T E^2 each) and the attention
            # products (q k^T and p v, 2 B T^2 E each over the heads); backward: 2x
            # the projections' products, 2.5x the attention's (as the kernel's).
            B, T, E, _ = self.shape
            proj, att = 8.0 * B * T * E * E, 4.0 * B * T * T * E
            return proj * 3 + att * 3.5 if bwd else proj + att
        # nn.LM-step, forward + backward: x3 of the forward's products, the LSTM's
        # 2 layers of 2 B T 4H (H + H) and the output Linear's 2 B T H V (embedding,
        # cross-entropy, clipping and Adam have no products).
        B, T, V, H = self.shape
        return 3 * (2 * 2.0 * B * T * 4 * H * (H + H) + 2.0 * B * T * H * V)

    def as_dict(self):
        return dict(kernel=self.kernel, shape=list(self.shape), legend=self.legend,
                    direction=self.direction, dtype=self.dtype, causal=self.causal,
                    suite=self.suite, batch=self.shape[0], seq_len=self.seq_len())

    def seq_len(self):
        return self.shape[1] if self.kernel in RECURRENT + LAYER_KERNELS else self.shape[2]


def torch_available():
    return importlib.util.find_spec("torch") is not None


def kernel_available(kernel):
    import seqkern

    name = "attention_forward" if kernel == "attention" else f"{kernel}_forward"
    return hasattr(seqkern, name)


def applies(case, impl):
    """Whether ``impl`` runs ``case``: no NumPy reference for a layer, the plain
    loop only for a layer with a recurrent stack, no forced GEMM path for nn.MHA
    (it has no recurrent product)."""
    if case.suite == "layers":
        if impl == "reference":
            return False
        return case.kernel != "nn.MHA" or impl not in PATH_IMPLS + (LOOP_IMPL,)
    return impl != LOOP_IMPL


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


# --quick: the batch-1 stacks, attention's forward and the LM step.
QUICK_LAYERS = {"nn.LSTM": [((1, 150, 256, 256), "fwd"), ((1, 150, 256, 256), "fwd+bwd")],
                "nn.GRU": [((1, 150, 256, 256), "fwd"), ((1, 150, 256, 256), "fwd+bwd")],
                "nn.MHA": [((8, 256, 512, 8), "fwd")],
                "nn.LM-step": [((32, 64, 96, 256), "fwd+bwd")]}


def layers(quick=False, kernels=None, dtypes=("float32",)):
    """Suite "layers": seqkern.nn against PyTorch's modules (issue 18), forward and
    forward+backward; ``kernels`` (the grid's names) picks the layers built on
    them (LAYER_OF_KERNEL: lstm -> nn.LSTM and nn.LM-step, gru -> nn.GRU,
    attention -> nn.MHA, rnn -> none); ``quick`` keeps QUICK_LAYERS."""
    chosen = LAYER_KERNELS if kernels is None else \
        [k for k in LAYER_KERNELS if any(k in LAYER_OF_KERNEL.get(g, ()) for g in kernels)]
    cases = []
    for kernel in chosen:
        if quick:
            pairs = QUICK_LAYERS[kernel]
        elif kernel == "nn.LM-step":
            pairs = [(s, "fwd+bwd") for s in LM_SHAPES]
        else:
            shapes = MHA_SHAPES if kernel == "nn.MHA" else STACK_SHAPES
            pairs = [(s, d) for s in shapes for d in ("fwd", "fwd+bwd")]
        for shape, direction in pairs:
            for dtype in dtypes:
                cases.append(Case(kernel, tuple(shape), direction, dtype, suite="layers"))
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
    if not applies(case, impl):
        raise ValueError(f"{impl} does not run {case.name}")
    if case.suite == "layers":
        if impl == "torch":
            return _layers.torch_runner(case.kernel, case.shape, case.direction, case.dtype, seed)
        return _layers.seqkern_runner(case.kernel, case.shape, case.direction, case.dtype, seed,
                                      loop=impl == LOOP_IMPL)
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
    seqkern-packed: see PATH_IMPLS), or fn itself."""
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
    raise ValueError(f"impl must be one of {IMPLS + PATH_IMPLS + (LOOP_IMPL,)}, got {impl!r}")
