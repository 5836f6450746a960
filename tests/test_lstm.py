"""LSTM kernels against their NumPy reference, the reference against finite
differences, and the contract of the public functions (errors, threads, NaN,
saturation, inputs left untouched). No PyTorch needed."""

import warnings

import numpy as np
import pytest

import seqkern
from seqkern import reference as ref
from seqkern import rnn_forward

# Kernel in float32 vs reference in float64: float32 rounding over a few dozen
# steps; kernel vs reference both in float64: summation order only.
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
GRAD_NAMES = ("dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh")


def make(T, B, I, H, dtype=np.float64, bias=True, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    s = scale / np.sqrt(max(H, 1))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    W_ih = rng.uniform(-s, s, (4 * H, I)).astype(dtype)
    W_hh = rng.uniform(-s, s, (4 * H, H)).astype(dtype)
    b_ih = rng.uniform(-s, s, 4 * H).astype(dtype) if bias else None
    b_hh = rng.uniform(-s, s, 4 * H).astype(dtype) if bias else None
    return x, h0, c0, W_ih, W_hh, b_ih, b_hh


def f64(a):
    return None if a is None else np.asarray(a, np.float64)


def assert_close(name, got, want, dtype):
    assert (got is None) == (want is None), name
    if got is None:
        return
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    np.testing.assert_allclose(got, want, **TOL[dtype], err_msg=f"{name}: max |diff| {err:.3g}")


SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (1, 3, 4, 5),
    (7, 1, 3, 9),
    (5, 4, 6, 33),
    (4, 2, 5, 130),    # several unit blocks at B=2? (size decides), odd H
    (1, 1, 5, 260),    # a single step: one block where two steps would split
    (3, 16, 8, 70),    # blocks of 64 with a ragged last block
    (6, 9, 20, 200),
    (30, 10, 12, 70),  # T*B = 300: the packed weight gradients sum over 2 K blocks
    (33, 1, 16, 33),   # batch 1, packed: the projection runs inside the steps ...
    (40, 1, 70, 3),    # ... also where it is more work than the step's product
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_forward_backward_vs_reference(dtype, shape, bias, with_lengths):
    T, B, I, H = shape
    args = make(T, B, I, H, dtype, bias=bias, seed=T * 1000 + H)
    rng = np.random.default_rng(1)
    lengths = None
    if with_lengths:
        lengths = rng.integers(0, T + 1, B)
        lengths[0] = T                 # one full sequence ...
        if B > 1:
            lengths[1] = 0             # ... and one empty one
    out, h_n, c_n, cache = seqkern.lstm_forward(*args, lengths=lengths)
    r_out, r_h, r_c, r_cache = ref.lstm_forward(*map(f64, args), lengths=lengths)
    assert out.dtype == h_n.dtype == c_n.dtype == dtype
    for name, got, want in [("out", out, r_out), ("h_n", h_n, r_h), ("c_n", c_n, r_c)]:
        assert_close(name, got, want, dtype)
    if lengths is not None:
        for b, L in enumerate(lengths):
            assert np.all(out[L:, b] == 0)
    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_h = rng.standard_normal(h_n.shape).astype(dtype)
    d_c = rng.standard_normal(c_n.shape).astype(dtype)
    g = seqkern.lstm_backward(d_out, d_h, d_c, cache)
    rg = ref.lstm_backward(f64(d_out), f64(d_h), f64(d_c), r_cache)
    assert isinstance(g, seqkern.LSTMGrads)
    for name, a, b in zip(GRAD_NAMES, g, rg):
        assert a is None or a.dtype == dtype
        assert_close(name, a, b, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_none(dtype):
    args = make(4, 3, 5, 6, dtype)
    *_, cache = seqkern.lstm_forward(*args)
    *_, r_cache = ref.lstm_forward(*map(f64, args))
    rng = np.random.default_rng(2)
    d_c = rng.standard_normal((3, 6)).astype(dtype)
    for grads in [(None, None, None), (None, None, d_c), (None, d_c, None)]:
        g = seqkern.lstm_backward(*grads, cache)
        rg = ref.lstm_backward(*map(f64, grads), r_cache)
        for name, a, b in zip(GRAD_NAMES, g, rg):
            assert_close(name, a, b, dtype)
    g = seqkern.lstm_backward(None, None, None, cache)
    assert all(np.all(a == 0) for a in g)


def test_batch_first_matches_time_major():
    x, h0, c0, *W = make(5, 3, 4, 7)
    out, h_n, c_n, cache = seqkern.lstm_forward(x, h0, c0, *W, lengths=[5, 2, 0])
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))
    outb, hb, cb, cacheb = seqkern.lstm_forward(xb, h0, c0, *W, lengths=[5, 2, 0],
                                                batch_first=True)
    assert outb.shape == (3, 5, 7)
    np.testing.assert_array_equal(outb, out.transpose(1, 0, 2))
    np.testing.assert_array_equal(hb, h_n)
    np.testing.assert_array_equal(cb, c_n)
    d_out = np.random.default_rng(3).standard_normal(out.shape)
    g = seqkern.lstm_backward(d_out, None, None, cache)
    gb = seqkern.lstm_backward(d_out.transpose(1, 0, 2), None, None, cacheb)
    assert gb.dx.shape == xb.shape
    np.testing.assert_array_equal(gb.dx, g.dx.transpose(1, 0, 2))
    np.testing.assert_array_equal(gb.dW_hh, g.dW_hh)
    rb = ref.lstm_backward(d_out.transpose(1, 0, 2), None, None,
                           ref.lstm_forward(xb, h0, c0, *W, lengths=[5, 2, 0], batch_first=True)[3])
    assert_close("dx", gb.dx, rb.dx, np.float64)


def test_lengths_equal_truncated_sequences():
    """A sequence of length L gives the same h_n, c_n and gradients as running
    that sequence alone for L steps (what PyTorch's packed sequences compute)."""
    T, B, I, H = 6, 3, 4, 5
    x, h0, c0, *W = make(T, B, I, H)
    lengths = np.array([6, 3, 0])
    out, h_n, c_n, cache = seqkern.lstm_forward(x, h0, c0, *W, lengths=lengths)
    d_out = np.random.default_rng(4).standard_normal(out.shape)
    g = seqkern.lstm_backward(d_out, None, None, cache)
    for b, L in enumerate(lengths):
        o1, h1, c1, k1 = seqkern.lstm_forward(x[:L, b:b + 1], h0[b:b + 1], c0[b:b + 1], *W)
        np.testing.assert_allclose(h_n[b], h1[0], rtol=1e-12)
        np.testing.assert_allclose(c_n[b], c1[0], rtol=1e-12)
        np.testing.assert_allclose(out[:L, b], o1[:, 0], rtol=1e-12)
        g1 = seqkern.lstm_backward(d_out[:L, b:b + 1], None, None, k1)
        np.testing.assert_allclose(g.dx[:L, b], g1.dx[:, 0], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(g.dh0[b], g1.dh0[0], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(g.dc0[b], g1.dc0[0], rtol=1e-10, atol=1e-14)
    if lengths.min() == 0:
        b = int(np.argmin(lengths))
        np.testing.assert_array_equal(h_n[b], h0[b])
        np.testing.assert_array_equal(c_n[b], c0[b])


def _central_diff(f, a, eps=1e-6):
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("lengths", [None, [3, 1]])
def test_reference_backward_vs_finite_differences(lengths):
    T, B, I, H = 3, 2, 3, 4
    x, h0, c0, W_ih, W_hh, b_ih, b_hh = make(T, B, I, H, scale=2.0)
    rng = np.random.default_rng(5)
    w_out = rng.standard_normal((T, B, H))
    w_h = rng.standard_normal((B, H))
    w_c = rng.standard_normal((B, H))

    def loss():
        out, h_n, c_n, _ = ref.lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths=lengths)
        return np.sum(out * w_out) + np.sum(h_n * w_h) + np.sum(c_n * w_c)

    *_, cache = ref.lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, lengths=lengths)
    g = ref.lstm_backward(w_out, w_h, w_c, cache)
    for name, arr in [("dx", x), ("dh0", h0), ("dc0", c0), ("dW_ih", W_ih), ("dW_hh", W_hh),
                      ("db_ih", b_ih), ("db_hh", b_hh)]:
        num = _central_diff(loss, arr)
        np.testing.assert_allclose(getattr(g, name), num, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 3, 4, 6),
                                   (4, 17, 5, 20),     # the sequence splits by batch rows
                                   (3, 1, 6, 256)])    # ... by unit blocks (one step: one block)
def test_step_loop_equals_sequence(dtype, shape):
    T, B, I, H = shape
    x, h0, c0, *W = make(T, B, I, H, dtype)
    out, h_n, c_n, cache = seqkern.lstm_forward(x, h0, c0, *W)
    rng = np.random.default_rng(6)
    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_h = rng.standard_normal(h_n.shape).astype(dtype)
    d_c = rng.standard_normal(c_n.shape).astype(dtype)
    g = seqkern.lstm_backward(d_out, d_h, d_c, cache)
    tol = TOL[dtype]
    for mod in (seqkern, ref):
        h, c, caches = h0, c0, []
        for t in range(T):
            h, c, k = mod.lstm_step_forward(x[t], h, c, *W)
            np.testing.assert_allclose(h, out[t], **tol)
            caches.append(k)
        np.testing.assert_allclose(c, c_n, **tol)
        dh, dc = d_h, d_c
        acc = {n: 0 for n in ("dW_ih", "dW_hh", "db_ih", "db_hh")}
        for t in reversed(range(T)):
            gs = mod.lstm_step_backward(dh + d_out[t], dc, caches[t])
            np.testing.assert_allclose(gs.dx, g.dx[t], **tol)
            dh, dc = gs.dh0, gs.dc0
            for n in acc:
                acc[n] = acc[n] + getattr(gs, n)
        np.testing.assert_allclose(dh, g.dh0, **tol)
        np.testing.assert_allclose(dc, g.dc0, **tol)
        for n in acc:
            np.testing.assert_allclose(acc[n], getattr(g, n), **tol)


def test_step_backward_dc_next_none():
    x, h0, c0, *W = make(1, 2, 3, 4)
    h, c, k = seqkern.lstm_step_forward(x[0], h0, c0, *W)
    rh, rc, rk = ref.lstm_step_forward(x[0], h0, c0, *W)
    dh = np.ones_like(h)
    for a, b in zip(seqkern.lstm_step_backward(dh, None, k), ref.lstm_step_backward(dh, None, rk)):
        assert_close("step", a, b, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 1, 8, 200), (5, 8, 16, 130), (3, 33, 9, 70),
                                   (1, 1, 8, 260),     # a single step: one block
                                   (20, 17, 9, 70),    # T*B = 340: weight gradients in 2 K blocks
                                   # big enough for parallel loops outside the steps
                                   # (PAR_MIN_GEMM): a chunk's gradient jobs ...
                                   (10, 64, 64, 256),
                                   # ... and the projection of a one-block step
                                   (2048, 1, 64, 64)])
def test_threads_bitwise_identical(dtype, shape):
    T, B, I, H = shape
    args = make(T, B, I, H, dtype)
    # lengths 0 .. T across the batch; one sequence runs its T steps (not length 0)
    lengths = np.arange(B) % (T + 1) if B > 1 else None
    res = []
    for n in (1, 2):
        with seqkern.threads(n):
            out, h_n, c_n, cache = seqkern.lstm_forward(*args, lengths=lengths)
            d_out = np.random.default_rng(7).standard_normal(out.shape).astype(dtype)
            g = seqkern.lstm_backward(d_out, h_n, c_n, cache)
            res.append((out, h_n, c_n) + tuple(g))
    for a, b in zip(*res):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [300, 2100])
def test_threads_bitwise_identical_batch_1(dtype, T):
    """Batch 1: the packed path projects inside the steps; at T = 2100 the
    projection is large enough (T I 4H >= PAR_MIN_GEMM, several ROW_BLOCKs) to run
    first, in parallel, on 2 threads, and inside the steps on 1: the same bits."""
    args = make(T, 1, 512, 64, dtype)
    res = []
    for n in (1, 2):
        with seqkern.threads(n):
            out, h_n, c_n, cache = seqkern.lstm_forward(*args)
            o2, _, _, _ = seqkern.lstm_forward(*args, return_cache=False)
            np.testing.assert_array_equal(o2, out)
            g = seqkern.lstm_backward(np.ones_like(out), None, None, cache)
            res.append((out, h_n, c_n) + tuple(g))
    for a, b in zip(*res):
        assert np.array_equal(a, b)
    want = ref.lstm_forward(*map(f64, args))
    assert_close("out", res[0][0], want[0], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates(dtype):
    T, B, I, H = 4, 2, 3, 5
    x, h0, c0, *W = make(T, B, I, H, dtype)
    x[1, 0, 0] = np.nan
    out, h_n, c_n, cache = seqkern.lstm_forward(x, h0, c0, *W)
    assert np.all(np.isfinite(out[0]))
    assert np.all(np.isnan(out[1:, 0])) and np.all(np.isnan(h_n[0])) and np.all(np.isnan(c_n[0]))
    assert np.all(np.isfinite(out[:, 1]))              # the other sequence is unaffected
    g = seqkern.lstm_backward(np.ones_like(out), None, None, cache)
    assert np.isnan(g.dW_ih).any() and np.isnan(g.dx[1, 0]).all()
    assert np.all(np.isfinite(g.dx[:, 1]))
    rout = ref.lstm_forward(x, h0, c0, *W)[0]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(rout))


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
    np.testing.assert_allclose(out, rout, **TOL[dtype])
    np.testing.assert_allclose(c_n, rc, rtol=TOL[dtype]["rtol"], atol=1e-3)


def test_inputs_not_modified_and_read_only_accepted():
    T, B, I, H = 4, 3, 5, 6
    args = make(T, B, I, H)
    copies = [a.copy() for a in args]
    for a in args:
        a.flags.writeable = False
    d_out = np.ones((T, B, H))
    d_out.flags.writeable = False
    d_h = np.ones((B, H))
    d_h.flags.writeable = False
    for mod in (seqkern, ref):
        out, h_n, c_n, cache = mod.lstm_forward(*args, lengths=np.array([4, 0, 2]))
        mod.lstm_backward(d_out, d_h, d_h, cache)
        h, c, k = mod.lstm_step_forward(args[0][0], args[1], args[2], *args[3:])
        mod.lstm_step_backward(d_h, d_h, k)
    for a, b in zip(args, copies):
        np.testing.assert_array_equal(a, b)
    assert np.all(d_out == 1) and np.all(d_h == 1)


def test_non_contiguous_inputs():
    T, B, I, H = 4, 3, 5, 6
    x, h0, c0, W_ih, W_hh, b_ih, b_hh = make(T, B, I, H)
    xf = np.asfortranarray(x)
    W_ihT = np.ascontiguousarray(W_ih.T).T       # a transposed view
    strided_b = np.repeat(b_ih, 2)[::2]
    got = seqkern.lstm_forward(xf, h0[:, ::1], c0, W_ihT, W_hh, strided_b, b_hh)
    want = ref.lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh)
    for a, b in zip(got[:3], want[:3]):
        assert_close("out", a, b, np.float64)


@pytest.mark.parametrize("shape", [(5, 2, 3, 4),
                                   # several unit blocks: without a cache the gates
                                   # live in a buffer of one chunk of steps (3 here)
                                   (20, 17, 9, 70)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_return_cache_false_and_cache_bytes(shape, n_threads):
    T, B, I, H = shape
    args = make(T, B, I, H, np.float32)
    lengths = np.arange(B) % (T + 1)
    with seqkern.threads(n_threads):
        out, h_n, c_n, cache = seqkern.lstm_forward(*args, lengths=lengths, return_cache=False)
        assert cache is None
        o2, h2, c2, cache2 = seqkern.lstm_forward(*args, lengths=lengths)
    np.testing.assert_array_equal(out, o2)
    np.testing.assert_array_equal(h_n, h2)
    np.testing.assert_array_equal(c_n, c2)
    # the documented 5 H values per token (gates and cell), beside out
    assert cache2.gates.nbytes + cache2.cells.nbytes == T * B * 5 * H * 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T,B,H,I", [(0, 3, 4, 2), (3, 0, 4, 2), (0, 0, 4, 2), (3, 2, 0, 2), (3, 2, 4, 0),
                                     (40, 1, 5, 0)])   # batch 1, packed: past the first 16 steps
def test_empty_shapes(dtype, T, B, H, I):
    x, h0, c0, *W = make(T, B, I, H, dtype)
    for mod in (seqkern, ref):
        out, h_n, c_n, cache = mod.lstm_forward(x, h0, c0, *W)
        assert out.shape == (T, B, H) and out.dtype == dtype
        assert h_n.shape == c_n.shape == (B, H)
        g = mod.lstm_backward(np.ones_like(out), None, None, cache)
        assert g.dx.shape == (T, B, I) and g.dW_ih.shape == (4 * H, I)
        assert g.dW_hh.shape == (4 * H, H) and g.db_ih.shape == (4 * H,)
        if T == 0:
            np.testing.assert_array_equal(h_n, h0)
            np.testing.assert_array_equal(c_n, c0)
    if T and B and H:       # I = 0: the recurrence alone
        got = seqkern.lstm_forward(x, h0, c0, *W)
        want = ref.lstm_forward(x, h0, c0, *W)
        for a, b in zip(got[:3], want[:3]):
            assert_close("out", a, b, dtype)


# --- errors ------------------------------------------------------------------

def _good():
    return dict(zip(("x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh"), make(3, 2, 4, 5)))


BAD = [
    ("x", np.ones((3, 2)), ValueError),
    ("x", np.ones((3, 2, 4), np.int64), TypeError),
    ("x", np.ones((3, 2, 4), np.complex128), TypeError),
    ("x", np.ones((3, 2, 4), np.float16), TypeError),
    ("x", None, TypeError),
    ("x", "abc", TypeError),
    ("h0", np.ones((2, 6)), ValueError),
    ("h0", np.ones((2, 5), np.float32), TypeError),
    ("c0", np.ones((3, 5)), ValueError),
    ("c0", np.ones((2, 5), np.int32), TypeError),
    ("W_ih", np.ones((19, 4)), ValueError),
    ("W_ih", np.ones((20, 3)), ValueError),
    ("W_ih", np.ones((20, 4), np.float32), TypeError),
    ("W_hh", np.ones((20, 4)), ValueError),
    ("W_hh", np.ones((5, 5)), ValueError),
    ("b_ih", np.ones(5), ValueError),
    ("b_hh", np.ones((20, 1)), ValueError),
    ("b_hh", np.ones(20, np.float32), TypeError),
]


@pytest.mark.parametrize("mod", [seqkern, ref], ids=["kernel", "reference"])
@pytest.mark.parametrize("name,value,exc", BAD, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD)])
def test_bad_arguments_named(mod, name, value, exc):
    kw = _good()
    kw[name] = value
    with pytest.raises(exc, match=name):
        mod.lstm_forward(**kw)


@pytest.mark.parametrize("mod", [seqkern, ref], ids=["kernel", "reference"])
def test_bad_lengths_and_flags(mod):
    kw = _good()
    for lengths, exc in [([1, 4], ValueError), ([-1, 2], ValueError), ([1, 2, 3], ValueError),
                         ([1.0, 2.0], TypeError), ([True, False], TypeError)]:
        with pytest.raises(exc, match="lengths"):
            mod.lstm_forward(**kw, lengths=lengths)
    with pytest.raises(TypeError, match="batch_first"):
        mod.lstm_forward(**kw, batch_first=1)
    with pytest.raises(TypeError, match="return_cache"):
        mod.lstm_forward(**kw, return_cache="yes")


@pytest.mark.parametrize("mod", [seqkern, ref], ids=["kernel", "reference"])
def test_bad_backward_arguments(mod):
    kw = _good()
    out, h_n, c_n, cache = mod.lstm_forward(**kw)
    with pytest.raises(ValueError, match="d_out"):
        mod.lstm_backward(np.ones((3, 2, 4)), None, None, cache)
    with pytest.raises(TypeError, match="d_out"):
        mod.lstm_backward(np.ones((3, 2, 5), np.float32), None, None, cache)
    with pytest.raises(ValueError, match="d_h_n"):
        mod.lstm_backward(None, np.ones((2, 4)), None, cache)
    with pytest.raises(ValueError, match="d_c_n"):
        mod.lstm_backward(None, None, np.ones((5,)), cache)
    with pytest.raises(TypeError, match="d_c_n"):
        mod.lstm_backward(None, None, np.ones((2, 5), np.int64), cache)
    # caches from elsewhere
    rnn_cache = rnn_forward(kw["x"], None, np.ones((5, 4)), np.ones((5, 5)))[2]
    h, c, step_cache = mod.lstm_step_forward(kw["x"][0], None, None, kw["W_ih"], kw["W_hh"])
    other = ref if mod is seqkern else seqkern
    other_cache = other.lstm_forward(**kw)[3]
    for bad in (None, rnn_cache, step_cache, other_cache, "cache"):
        with pytest.raises(TypeError, match="cache"):
            mod.lstm_backward(None, None, None, bad)
    for bad in (cache, rnn_cache, None):
        with pytest.raises(TypeError, match="cache"):
            mod.lstm_step_backward(np.ones((2, 5)), None, bad)
    with pytest.raises(TypeError, match="dh_next"):
        mod.lstm_step_backward(None, None, step_cache)
    with pytest.raises(ValueError, match="dc_next"):
        mod.lstm_step_backward(np.ones((2, 5)), np.ones((2, 4)), step_cache)
    with pytest.raises(ValueError, match="x"):
        mod.lstm_step_forward(kw["x"], None, None, kw["W_ih"], kw["W_hh"])
    with pytest.raises(ValueError, match="c_prev"):
        mod.lstm_step_forward(kw["x"][0], None, np.ones((3, 5)), kw["W_ih"], kw["W_hh"])


def test_backward_twice_same_result():
    args = make(4, 3, 2, 5)
    out, h_n, c_n, cache = seqkern.lstm_forward(*args)
    g1 = seqkern.lstm_backward(np.ones_like(out), None, None, cache)
    g2 = seqkern.lstm_backward(np.ones_like(out), None, None, cache)
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)


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
    """At batch 1 the steps compute dx as they go, 16 rows at a time, the rows of
    the last whole group and a partial one after the steps: every row right
    (float64 against the reference), for lengths around the groups of 16 and the
    512-step chunks, and input sizes with a ragged last vector column; the same
    bits on 2 threads."""
    _backward_1_and_2_threads_vs_reference(T, I, 24)


def _backward_1_and_2_threads_vs_reference(T, I, H, lengths=None):
    """A batch-1 backward (float64) on 1 and on 2 threads: against the reference,
    and bitwise the one against the other."""
    args = make(T, 1, I, H, np.float64, seed=T + I)
    d_out = np.random.default_rng(T).standard_normal((T, 1, H))
    _, _, _, r_cache = ref.lstm_forward(*args, lengths=lengths)
    want = ref.lstm_backward(d_out, None, None, r_cache)
    got = []
    for n in (1, 2):
        with seqkern.threads(n):
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
@pytest.mark.parametrize("shape,length", [((6, 1, 10, 256), 4), ((30, 1, 5, 320), None),
                                          ((5, 2, 7, 200), 0), ((4, 9, 5, 130), 3)])
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
