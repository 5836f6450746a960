"""LSTM-specific tests: dc_next None, saturation, the cache's size, the reference's
sigmoid, and the batch-1 paths and their two-thread split. The contract it shares
with the other kernels (the reference, finite differences, steps, threads, errors,
NaN, layouts) is in test_contract.py. No PyTorch needed."""

import warnings

import numpy as np
import pytest

import seqkern
from seqkern import reference as ref

import helpers
from helpers import LSTM, tol

GRAD_NAMES = LSTM.grad_names


def make(T, B, I, H, dtype=np.float64, bias=True, seed=0):
    """x (T, B, I), h0, c0 (B, H), W_ih (4H, I), W_hh (4H, H), b_ih, b_hh (4H,)."""
    return tuple(LSTM.args(np.random.default_rng(seed), T, B, I, H, dtype, bias))


def f64(a):
    return None if a is None else np.asarray(a, np.float64)


def assert_close(name, got, want, dtype):
    helpers.assert_close(got, want, dtype, name)


def test_step_backward_dc_next_none():
    x, h0, c0, *W = make(1, 2, 3, 4)
    h, c, k = seqkern.lstm_step_forward(x[0], h0, c0, *W)
    rh, rc, rk = ref.lstm_step_forward(x[0], h0, c0, *W)
    dh = np.ones_like(h)
    for a, b in zip(seqkern.lstm_step_backward(dh, None, k), ref.lstm_step_backward(dh, None, rk)):
        assert_close("step", a, b, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturation_is_finite_without_warnings(dtype):
    T, B, I, H = 6, 3, 4, 5
    x, h0, c0, *W = make(T, B, I, H, dtype)
    x = (x * 1e4).astype(dtype)
    W = [w * 10 for w in W]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            for mod in (seqkern, ref):
                out, h_n, c_n, cache = mod.lstm_forward(x, h0, c0, *W)
                g = mod.lstm_backward(np.ones_like(out), np.ones_like(h_n), np.ones_like(c_n), cache)
                assert np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1)
                assert np.all(np.isfinite(c_n))
                for a in g:
                    assert np.all(np.isfinite(a))
    # saturated gates are exactly 0 or 1: the kernel agrees with the reference
    rout, rh, rc, _ = ref.lstm_forward(*map(f64, (x, h0, c0, *W)))
    np.testing.assert_allclose(out, rout, **tol(dtype))
    np.testing.assert_allclose(c_n, rc, rtol=tol(dtype)["rtol"], atol=1e-3)


@pytest.mark.parametrize("shape", [(5, 2, 3, 4), (20, 17, 9, 70)])
def test_cache_holds_5H_values_per_token(shape):
    """The documented 5 H values per token (gates and cell), beside out."""
    T, B, I, H = shape
    cache = seqkern.lstm_forward(*make(T, B, I, H, np.float32))[3]
    assert cache.gates.nbytes + cache.cells.nbytes == T * B * 5 * H * 4


def test_reference_sigmoid_is_stable():
    from seqkern.reference.lstm import _sigmoid
    z = np.array([-1e4, -50.0, 0.0, 50.0, 1e4, np.nan])
    with np.errstate(over="raise", divide="raise", invalid="ignore"):
        s = _sigmoid(z)
    np.testing.assert_allclose(s[:5], [0, 1 / (1 + np.exp(50)), 0.5, 1 / (1 + np.exp(-50)), 1],
                               rtol=1e-15, atol=0)
    assert np.isnan(s[5])


@pytest.mark.parametrize("T", [15, 16, 17, 32, 47, 529])
@pytest.mark.parametrize("I", [1, 20, 130])
def test_batch_1_backward_dx_inside_the_steps(T, I):
    """At batch 1 on the interleaved path (forced: step_gemm("packed")) the steps
    compute dx as they go, SIDE_ROWS rows at a time (16 with 32 vector registers, 8
    with 16), the rows of the last whole group and a partial one after the steps:
    every row right (float64 against the reference), for lengths around the groups
    of 16 and the 512-step chunks, and input sizes with a ragged last vector column;
    the same bits on 2 threads."""
    _backward_1_and_2_threads_vs_reference(T, I, 24)


@pytest.mark.parametrize("shape", [(300, 1, 512, 64), (2100, 1, 512, 64), (2049, 1, 512, 64),
                                   (40, 1, 0, 5)])
def test_batch_1_interleaved_threads_bitwise(shape):
    """The interleaved batch-1 path (forced) with a projection large enough (T I 4H
    >= 2^25) to run first, in parallel, on 2 threads, and inside the steps on 1: the
    same bits either way (each element one k-ordered chain), with a last block of
    one row in blocks of ROW_BLOCK at T = 2049 (the one-row kernel would round
    unlike the side product); and I = 0, the recurrence alone past the first 16
    steps. Against the reference too."""
    T, B, I, H = shape
    args = make(T, B, I, H, np.float32, seed=T)
    got = _threads_1_and_2(args, None, "packed")
    want = ref.lstm_forward(*map(f64, args))
    for name, a, b in zip(("out", "h_n", "c_n"), got, want):
        assert_close(name, a, b, np.float32)


def _backward_1_and_2_threads_vs_reference(T, I, H, lengths=None):
    """A batch-1 backward (float64) on 1 and on 2 threads, on the interleaved path
    (forced): against the reference, and bitwise the one against the other."""
    from seqkern._step_gemm import step_gemm

    args = make(T, 1, I, H, np.float64, seed=T + I)
    d_out = np.random.default_rng(T).standard_normal((T, 1, H))
    _, _, _, r_cache = ref.lstm_forward(*args, lengths=lengths)
    want = ref.lstm_backward(d_out, None, None, r_cache)
    got = []
    for n in (1, 2):
        with seqkern.threads(n), step_gemm("packed"):
            cache = seqkern.lstm_forward(*args, lengths=lengths)[3]
            got.append(seqkern.lstm_backward(d_out, None, None, cache))
    for g in got:
        for name, a, b in zip(GRAD_NAMES, g, want):
            assert_close(name, a, b, np.float64)
    for a, b in zip(got[0], got[1]):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def _threads_1_and_2(args, lengths, mode):
    """Forward (with and without a cache) and backward on 1 and on 2 threads, with
    the products on ``mode`` (seqkern._step_gemm): the results of each, which must
    be the same bits."""
    from seqkern._step_gemm import step_gemm

    T, B, H = args[0].shape[0], args[0].shape[1], args[4].shape[1]
    d_out = np.random.default_rng(8).standard_normal((T, B, H)).astype(args[0].dtype)
    res = []
    for n in (1, 2):
        with seqkern.threads(n), step_gemm(mode):
            out, h_n, c_n, cache = seqkern.lstm_forward(*args, lengths=lengths)
            o2, h2, c2, _ = seqkern.lstm_forward(*args, lengths=lengths, return_cache=False)
            g = seqkern.lstm_backward(d_out, h_n, c_n, cache)
            res.append((out, h_n, c_n, o2, h2, c2) + tuple(g))
    for a, b in zip(*res):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    return res[0]


@pytest.mark.parametrize("mode", ["blas", "packed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [16, 17, 32])
def test_threads_bitwise_batch_rows(mode, dtype, B):
    """From 2 * MIN_ROWS rows on (and 2 cores) the time loop splits by blocks of
    batch rows, each thread running its rows through every step: the same bits on
    1 and 2 threads, with lengths 0 .. T, forward and backward (two backward
    chunks at B = 16: 32 steps each), and against the reference."""
    T, I, H = 40, 9, 24
    args = make(T, B, I, H, dtype, seed=B)
    lengths = np.arange(B) * 7 % (T + 1)
    got = _threads_1_and_2(args, lengths, mode)
    want = ref.lstm_forward(*map(f64, args), lengths=lengths)
    for name, a, b in zip(("out", "h_n", "c_n"), got, want):
        assert_close(name, a, b, dtype)


@pytest.mark.parametrize("mode", ["blas", "packed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,length", [((6, 1, 10, 768), 4), ((12, 1, 5, 736), None),
                                          ((5, 2, 7, 520), 0), ((4, 9, 5, 256), 3)])
def test_threads_bitwise_unit_blocks(mode, dtype, shape, length):
    """With few rows and a big step (B 4H H >= PAR_MIN_STEP) each step splits by
    blocks of hidden units (the weights regrouped by block), the threads meeting
    at every step: the same bits on 1 and 2 threads, with a length shorter than T
    (and 0 where B > 1), and against the reference."""
    T, B, I, H = shape
    args = make(T, B, I, H, dtype, seed=H)
    lengths = None if length is None else np.array([T] + [length] * (B - 1) if B > 1
                                                   else [length])
    got = _threads_1_and_2(args, lengths, mode)
    want_f = ref.lstm_forward(*map(f64, args), lengths=lengths)
    for name, a, b in zip(("out", "h_n", "c_n"), got, want_f):
        assert_close(name, a, b, dtype)
    d_out = np.random.default_rng(8).standard_normal((T, B, H))
    want_g = ref.lstm_backward(d_out, f64(got[1]), f64(got[2]), want_f[3])
    for name, a, b in zip(GRAD_NAMES, got[6:], want_g):
        assert_close(name, a, b, dtype)
