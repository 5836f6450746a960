"""Runners of the layer cases (suite "layers", ``python -m seqkern.bench --layers``):
seqkern.nn against PyTorch's modules, holding the same weights and inputs.

Kernels (the cases themselves, their shapes and FLOP counts are in
:mod:`seqkern.bench.cases`):

- "nn.LSTM", "nn.GRU": a 2-layer bidirectional stack, shape (B, T, I, H); input
  x (T, B, I), gradient of out (T, B, 2H); fwd+bwd returns dx.
- "nn.MHA": self-attention, MultiheadAttention(E, heads) on x (T, B, E) as query,
  key and value, shape (B, T, E, heads); fwd+bwd returns dx (the sum of the
  three inputs' gradients, as PyTorch accumulates them into x.grad).
- "nn.LM-step": one training step of a 2-layer LSTM language model, shape
  (B, T, V, H): Embedding(V, H), LSTM(H, H, 2), Linear(H, V), cross-entropy
  over the T B next tokens, clip_grad_norm_(1.0), Adam; returns the loss. Every
  call takes a step, so the parameters change from call to call.

Implementations: "seqkern"; "seqkern-loop", the same layers with a stack run as
a plain loop (layer after layer over whole sequences, the two directions of a
layer one after the other, each kernel on all the threads: what the overlap of
directions and layers gains; not for nn.MHA); "torch", PyTorch's modules loaded
with seqkern's state dict. seqkern-blas and seqkern-packed (cases.PATH_IMPLS)
are "seqkern" run under a forced GEMM path (cases._forcing_path).
"""

from unittest import mock

import numpy as np


def _inputs(kernel, shape, dtype, seed):
    """(seqkern modules, inputs) of a case, drawn from one seeded Generator."""
    from seqkern import nn

    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if kernel == "nn.LM-step":
        B, T, V, H = shape
        mods = dict(emb=nn.Embedding(V, H, dtype=dt, rng=rng),
                    lstm=nn.LSTM(H, H, num_layers=2, dtype=dt, rng=rng),
                    fc=nn.Linear(H, V, dtype=dt, rng=rng))
        return mods, dict(tokens=rng.integers(0, V, (T, B)),      # (T, B) inputs
                          targets=rng.integers(0, V, (T * B,)))   # (T B,) next tokens
    if kernel == "nn.MHA":
        B, T, E, heads = shape
        mods = dict(m=nn.MultiheadAttention(E, heads, dtype=dt, rng=rng))
        out_features = E
    elif kernel in ("nn.LSTM", "nn.GRU"):
        B, T, E, H = shape
        mods = dict(m=getattr(nn, kernel[3:])(E, H, num_layers=2, bidirectional=True,
                                              dtype=dt, rng=rng))
        out_features = 2 * H
    else:
        raise ValueError(f"unknown layer case {kernel!r}")
    return mods, dict(x=rng.standard_normal((T, B, E)).astype(dt),
                      d_out=rng.standard_normal((T, B, out_features)).astype(dt))


def _sequential(f0, f1):
    return f0(), f1()


def _as_loop(fn):
    """fn with seqkern.nn's stacks run as a plain loop: no two directions at once
    (run_pair one after the other) and one chunk per sequence (no wavefront)."""
    from seqkern.nn import _rnn

    def looped():
        with mock.patch.object(_rnn, "run_pair", _sequential), \
                mock.patch.object(_rnn, "_wavefront", lambda *sizes: False):
            return fn()
    return looped


def seqkern_runner(kernel, shape, direction, dtype, seed=0, loop=False):
    """A zero-argument callable running the case on seqkern.nn (``loop``: stacks as
    a plain loop)."""
    from seqkern import nn, optim

    mods, a = _inputs(kernel, shape, dtype, seed)
    if kernel == "nn.LM-step":
        emb, lstm, fc = mods["emb"], mods["lstm"], mods["fc"]
        layers = (emb, lstm, fc)
        opt = optim.Adam([m.params for m in layers], [m.grads for m in layers])
        tokens, targets = a["tokens"], a["targets"]
        T, B = tokens.shape

        def step():
            opt.zero_grad()
            e, ce = emb.forward(tokens)
            h, _, cl = lstm.forward(e)
            logits, cf = fc.forward(h)
            loss, d_logits = nn.cross_entropy(logits.reshape(T * B, -1), targets)
            d_h = fc.backward(d_logits.reshape(T, B, -1), cf)
            d_e, _ = lstm.backward(d_h, None, cl)
            emb.backward(d_e, ce)
            nn.clip_grad_norm_([m.grads for m in layers], 1.0)
            opt.step()
            return loss
        return _as_loop(step) if loop else step
    m, x, d = mods["m"], a["x"], a["d_out"]
    if kernel == "nn.MHA":
        if loop:
            raise ValueError("nn.MHA has no loop variant")
        if direction == "fwd":
            return lambda: m.forward(x, x, x)[0]

        def attend():
            dq, dk, dv = m.backward(d, m.forward(x, x, x)[1])
            return dq + dk + dv
        return attend

    def fwd():
        return m.forward(x, return_cache=False)[0]

    def fwd_bwd():
        _, _, cache = m.forward(x)
        return m.backward(d, None, cache)[0]

    fn = fwd if direction == "fwd" else fwd_bwd
    return _as_loop(fn) if loop else fn


def torch_runner(kernel, shape, direction, dtype, seed=0):
    """A zero-argument callable running the case on PyTorch's modules, loaded with
    the state dicts of seqkern's (the same seed: the same weights and inputs)."""
    import torch

    mods, a = _inputs(kernel, shape, dtype, seed)
    dt = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32

    def like(sk, m):
        m.load_state_dict({k: torch.from_numpy(v) for k, v in sk.state_dict().items()})
        return m

    if kernel == "nn.LM-step":
        B, T, V, H = shape
        emb = like(mods["emb"], torch.nn.Embedding(V, H, dtype=dt))
        lstm = like(mods["lstm"], torch.nn.LSTM(H, H, 2, dtype=dt))
        fc = like(mods["fc"], torch.nn.Linear(H, V, dtype=dt))
        params = [p for m in (emb, lstm, fc) for p in m.parameters()]
        opt = torch.optim.Adam(params)
        tokens, targets = torch.from_numpy(a["tokens"]), torch.from_numpy(a["targets"])

        def step():
            opt.zero_grad()
            h, _ = lstm(emb(tokens))
            loss = torch.nn.functional.cross_entropy(fc(h).reshape(T * B, V), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            return loss
        return step
    if kernel == "nn.MHA":
        B, T, E, heads = shape
        m = like(mods["m"], torch.nn.MultiheadAttention(E, heads, dtype=dt))

        def run(x):
            return m(x, x, x, need_weights=False)[0]
    else:
        B, T, I, H = shape
        m = like(mods["m"], getattr(torch.nn, kernel[3:])(I, H, num_layers=2,
                                                           bidirectional=True, dtype=dt))

        def run(x):
            return m(x)[0]
    x, d = torch.from_numpy(a["x"]), torch.from_numpy(a["d_out"])
    if direction == "fwd":
        def fwd():
            with torch.no_grad():
                return run(x)
        return fwd

    def fwd_bwd():
        xg = x.clone().requires_grad_(True)
        run(xg).backward(d)
        return xg.grad
    return fwd_bwd
