"""GRU-specific tests: PyTorch's formula, the chunks of the backward and of a call
without a cache, the weights of few steps, saturation and the reference's sigmoid.
The contract it shares with the other kernels (the reference, finite differences,
steps, threads, errors, NaN, layouts) is in test_contract.py.

Axis legend: T = time, B = batch, I = input features, H = hidden units.
Failures print the largest difference per tensor, so they say where it went wrong.
"""

import warnings

import numpy as np
import pytest

import seqkern
import seqkern.reference as ref
from seqkern import gru_backward, gru_forward, gru_step_forward

import helpers
from helpers import GRU

GRAD_NAMES = GRU.grad_names


def make(T, B, I, H, dtype=np.float64, bias=True, seed=0, scale=1.0):
    """x (T, B, I), h0 (B, H), W_ih (3H, I), W_hh (3H, H), b_ih, b_hh (3H,)."""
    return GRU.args(np.random.default_rng(seed), T, B, I, H, dtype, bias, scale)


def upstream(T, B, H, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype)


def assert_close(name, got, want, dtype):
    if got is not None:
        assert got.dtype == np.dtype(dtype), f"{name}: dtype {got.dtype} != {np.dtype(dtype)}"
    helpers.assert_close(got, want, dtype, name)


def assert_grads_close(g, r, dtype):
    for name, a, b in zip(GRAD_NAMES, g, r):
        assert_close(name, a, b, dtype)


def ref64(args):
    return [None if a is None else np.asarray(a, np.float64) for a in args]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_in_chunks(dtype):
    """The backward runs in chunks of ~1024 rows of T*B, at least 2 steps: with B = 700, 2
    steps, so T = 5 gives three chunks, the first one (in time order) partial."""
    T, B, I, H = 5, 700, 2, 3
    args = make(T, B, I, H, dtype)
    lengths = np.arange(B) % (T + 1)
    d_out, d_h_n = upstream(T, B, H, dtype)
    res = []
    for n in (1, 2):
        with seqkern.threads(n):
            out, h_n, cache = gru_forward(*args, lengths=lengths)
            g = gru_backward(d_out, d_h_n, cache)
        res.append(g)
    _, _, r_cache = ref.gru_forward(*ref64(args), lengths=lengths)
    r = ref.gru_backward(d_out.astype(np.float64), d_h_n.astype(np.float64), r_cache)
    assert_grads_close(res[0], r, dtype)
    for name, a, b in zip(GRAD_NAMES, *res):
        assert np.array_equal(a, b), f"{name} differs between 1 and 2 threads"


def test_formula_one_step():
    """One step written out from the formulas in PyTorch's documentation."""
    T, B, I, H = 1, 2, 3, 4
    x, h, W_ih, W_hh, b_ih, b_hh = make(T, B, I, H)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    gi = x[0] @ W_ih.T + b_ih
    gh = h @ W_hh.T + b_hh
    r = sig(gi[:, :H] + gh[:, :H])
    z = sig(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    want = (1 - z) * n + z * h
    for fn in (gru_step_forward, ref.gru_step_forward):
        got, _ = fn(x[0], h, W_ih, W_hh, b_ih, b_hh)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_few_steps_and_longer_calls_match_reference():
    """A call of few steps and rows keeps the weights as given (one block of units,
    no W_hh^T); a longer call at the same sizes groups them into unit blocks. Both
    match the reference."""
    for T, B in [(1, 1), (3, 4), (4, 4)]:
        x, h, W_ih, W_hh, b_ih, b_hh = make(T, B, 6, 300)
        out, h_n, cache = gru_forward(x, h, W_ih, W_hh, b_ih, b_hh)
        r_out, _, r_cache = ref.gru_forward(x, h, W_ih, W_hh, b_ih, b_hh)
        assert_close("out", out, r_out, np.float64)
        d_out = np.random.default_rng(4).standard_normal(out.shape)
        assert_grads_close(gru_backward(d_out, None, cache),
                           ref.gru_backward(d_out, None, r_cache), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_return_cache_false_in_chunks(dtype):
    """Without a cache the kernel runs the steps in chunks of ~512 rows of T*B
    (here 5 steps of B = 100): several chunks, the last one partial, with lengths."""
    T, B, I, H = 12, 100, 3, 5
    args = make(T, B, I, H, dtype)
    lengths = np.arange(B) % (T + 1)
    for lens in (None, lengths):
        out, h_n, cache = gru_forward(*args, lengths=lens, return_cache=False)
        assert cache is None
        r_out, r_h_n, _ = ref.gru_forward(*ref64(args), lengths=lens)
        assert_close("out", out, r_out, dtype)
        assert_close("h_n", h_n, r_h_n, dtype)
        with seqkern.threads(2):
            out2, h_n2, _ = gru_forward(*args, lengths=lens, return_cache=False)
        assert np.array_equal(out, out2) and np.array_equal(h_n, h_n2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturation_finite_without_warnings(dtype):
    T, B, I, H = 5, 4, 3, 70
    args = make(T, B, I, H, dtype, scale=1e4)
    d_out, d_h_n = upstream(T, B, H, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise", under="ignore"):
            for m in (seqkern, ref):
                out, h_n, cache = m.gru_forward(*args)
                g = m.gru_backward(d_out, d_h_n, cache)
                assert np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1 + np.abs(args[1]).max())
                for name, a in zip(GRAD_NAMES, g):
                    assert np.all(np.isfinite(a)), name
    r_out, _, _ = ref.gru_forward(*ref64(args))
    k_out, _, _ = gru_forward(*args)
    # both sides saturate the same gates: the outputs agree closely
    np.testing.assert_allclose(k_out, r_out, rtol=1e-3, atol=1e-3)


def test_reference_sigmoid_stable():
    from seqkern.reference.gru import sigmoid
    with np.errstate(all="raise", under="ignore"):
        v = sigmoid(np.array([-1e4, -40.0, 0.0, 40.0, 1e4, np.nan]))
    assert v[0] == 0 and v[2] == 0.5 and v[4] == 1 and np.isnan(v[5])
    np.testing.assert_allclose(v[1], np.exp(-40.0) / (1 + np.exp(-40.0)), rtol=1e-14)
