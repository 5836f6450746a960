"""The Elman RNN kernels against seqkern.reference, finite differences, step-by-step
calls, thread counts, and bad input."""

import numpy as np
import pytest

import seqkern
from seqkern import reference as ref

from helpers import DTYPES, assert_close, assert_grads_close, to64

# (T, B, I, H): a single step, odd sizes, and batches whose time loop splits by
# rows (B >= 16 on a machine of 2 or more cores: blocks of 9 and 10 rows here).
SHAPES = [(1, 1, 3, 5), (7, 3, 5, 17), (13, 4, 9, 70), (40, 8, 16, 128), (9, 19, 6, 33)]


def make(rng, T, B, I, H, dtype=np.float64, bias=True):
    s = 1.0 / np.sqrt(H)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H)) * 0.5
    W_ih = rng.standard_normal((H, I)) * s
    W_hh = rng.standard_normal((H, H)) * s * 0.9
    b_ih = rng.standard_normal(H) * 0.1 if bias else None
    b_hh = rng.standard_normal(H) * 0.1 if bias else None
    return [None if a is None else a.astype(dtype) for a in (x, h0, W_ih, W_hh, b_ih, b_hh)]


def random_lengths(rng, B, T):
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0] = T                      # one full sequence
    if B > 1:
        lengths[-1] = 0                 # and one empty one
    return lengths


def run_both(args, dtype, **kw):
    """Kernel on the dtype's arrays, reference in float64 on the same values."""
    out, h_n, cache = seqkern.rnn_forward(*args, **kw)
    rout, rh_n, rcache = ref.rnn_forward(*to64(*args), **kw)
    return (out, h_n, cache), (rout, rh_n, rcache)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("variant", ["plain", "no_bias", "lengths", "batch_first"])
def test_forward_backward_match_reference(rng, dtype, shape, nonlinearity, variant):
    T, B, I, H = shape
    args = make(rng, T, B, I, H, dtype, bias=variant != "no_bias")
    kw = dict(nonlinearity=nonlinearity)
    if variant == "lengths":
        kw["lengths"] = random_lengths(rng, B, T)
    if variant == "batch_first":
        kw["batch_first"] = True
        args[0] = np.ascontiguousarray(args[0].transpose(1, 0, 2))
    (out, h_n, cache), (rout, rh_n, rcache) = run_both(args, dtype, **kw)
    assert out.dtype == dtype and h_n.dtype == dtype
    assert_close(out, rout, dtype, "out")
    assert_close(h_n, rh_n, dtype, "h_n")

    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_h_n = rng.standard_normal(h_n.shape).astype(dtype)
    g = seqkern.rnn_backward(d_out, d_h_n, cache)
    rg = ref.rnn_backward(*to64(d_out, d_h_n), rcache)
    assert isinstance(g, seqkern.RNNGrads)
    assert g.dx.shape == args[0].shape
    assert_grads_close(g, rg, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_with_missing_gradients(rng, dtype):
    args = make(rng, 6, 3, 4, 10, dtype)
    out, h_n, cache = seqkern.rnn_forward(*args)
    _, _, rcache = ref.rnn_forward(*to64(*args))
    d_out = rng.standard_normal(out.shape).astype(dtype)
    d_h_n = rng.standard_normal(h_n.shape).astype(dtype)
    for do, dh in [(None, d_h_n), (d_out, None), (None, None)]:
        g = seqkern.rnn_backward(do, dh, cache)
        rg = ref.rnn_backward(*to64(do, dh), rcache)
        assert_grads_close(g, rg, dtype)
    assert not np.any(seqkern.rnn_backward(None, None, cache).dW_hh)


def _loss_and_grads(fwd, bwd, args, kw, d_out, d_h_n):
    out, h_n, cache = fwd(*args, **kw)
    loss = np.sum(out * d_out) + np.sum(h_n * d_h_n)
    return loss, bwd(d_out, d_h_n, cache)


@pytest.mark.parametrize("impl", ["reference", "kernel"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_backward_matches_finite_differences(rng, impl, nonlinearity, with_lengths):
    mod = ref if impl == "reference" else seqkern
    T, B, I, H = 5, 3, 4, 6
    args = make(rng, T, B, I, H)
    kw = dict(nonlinearity=nonlinearity)
    if with_lengths:
        kw["lengths"] = np.array([5, 2, 0])
    d_out = rng.standard_normal((T, B, H))
    d_h_n = rng.standard_normal((B, H))
    _, grads = _loss_and_grads(mod.rnn_forward, mod.rnn_backward, args, kw, d_out, d_h_n)
    eps = 1e-6
    names = ["dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh"]
    for i, name in enumerate(names):
        p = args[i]
        num = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            lp, _ = _loss_and_grads(mod.rnn_forward, mod.rnn_backward, args, kw, d_out, d_h_n)
            p[idx] = old - eps
            lm, _ = _loss_and_grads(mod.rnn_forward, mod.rnn_backward, args, kw, d_out, d_h_n)
            p[idx] = old
            num[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(getattr(grads, name), num, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_step_loop_equals_sequence(rng, dtype, nonlinearity):
    T, B, I, H = 6, 3, 5, 12
    x, h0, W_ih, W_hh, b_ih, b_hh = make(rng, T, B, I, H, dtype)
    out, h_n, cache = seqkern.rnn_forward(x, h0, W_ih, W_hh, b_ih, b_hh, nonlinearity=nonlinearity)
    d_out = rng.standard_normal(out.shape).astype(dtype)
    g = seqkern.rnn_backward(d_out, None, cache)

    # One step serves B rows, the sequence T * B: their products may take different
    # GEMM paths (BLAS or the packed kernel), which round differently.
    h, caches = h0, []
    for t in range(T):
        h, c = seqkern.rnn_step_forward(x[t], h, W_ih, W_hh, b_ih, b_hh, nonlinearity=nonlinearity)
        assert_close(h, out[t], dtype, f"out[{t}]")
        caches.append(c)
    assert_close(h, h_n, dtype, "h_n")

    dh = np.zeros((B, H), dtype)
    acc = {k: 0 for k in ("dW_ih", "dW_hh", "db_ih", "db_hh")}
    for t in reversed(range(T)):
        gs = seqkern.rnn_step_backward(d_out[t] + dh, caches[t])
        assert_close(gs.dx, g.dx[t], dtype, f"dx[{t}]")
        dh = gs.dh0
        for k in acc:
            acc[k] = acc[k] + getattr(gs, k)
    assert_close(dh, g.dh0, dtype, "dh0")
    for k, v in acc.items():
        assert_close(v, getattr(g, k), dtype, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_matches_reference(rng, dtype):
    x, h0, W_ih, W_hh, b_ih, b_hh = make(rng, 1, 4, 6, 9, dtype)
    h, c = seqkern.rnn_step_forward(x[0], h0, W_ih, W_hh, b_ih, b_hh)
    rh, rc = ref.rnn_step_forward(*to64(x[0], h0, W_ih, W_hh, b_ih, b_hh))
    assert_close(h, rh, dtype, "h_next")
    dh = rng.standard_normal(h.shape).astype(dtype)
    assert_grads_close(seqkern.rnn_step_backward(dh, c), ref.rnn_step_backward(dh.astype(np.float64), rc), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
# The parallel paths: the steps split by hidden units (B H H >= 2^18), the time
# loop split by batch rows and the gradients' blocks in parallel (T B H H and the
# gradients >= 2^25 multiply-adds), and a shape too small for any of them.
@pytest.mark.parametrize("shape", [(20, 4, 8, 256), (30, 1, 8, 512), (50, 32, 8, 160),
                                   (5, 64, 33, 70)])
def test_one_thread_equals_two_threads_bitwise(monkeypatch, rng, dtype, shape):
    T, B, I, H = shape
    monkeypatch.setattr(seqkern.rnn, "block_count", lambda: 2)   # the blocks of 2 cores, anywhere
    args = make(rng, T, B, I, H, dtype)
    lengths = random_lengths(rng, B, T)
    results = []
    for n in (1, 2):
        with seqkern.threads(n):
            out, h_n, cache = seqkern.rnn_forward(*args, lengths=lengths)
            d_out = np.ones_like(out)
            g = seqkern.rnn_backward(d_out, h_n, cache)
        results.append((out, h_n) + tuple(g))
    for a, b in zip(*results):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_lengths_match_separate_truncated_sequences(rng):
    """Packed-sequence semantics, checked without the lengths code path: each
    sequence run alone for its own length gives the same outputs and state."""
    T, B, I, H = 9, 4, 3, 7
    x, h0, W_ih, W_hh, b_ih, b_hh = make(rng, T, B, I, H)
    lengths = np.array([9, 4, 0, 1])
    out, h_n, cache = seqkern.rnn_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths=lengths)
    d_out = rng.standard_normal(out.shape)
    d_h_n = rng.standard_normal(h_n.shape)
    g = seqkern.rnn_backward(d_out, d_h_n, cache)
    dW_hh = np.zeros_like(W_hh)
    for b, L in enumerate(lengths):
        ob, hb, cb = seqkern.rnn_forward(x[:L, b:b + 1], h0[b:b + 1], W_ih, W_hh, b_ih, b_hh)
        np.testing.assert_allclose(out[:L, b], ob[:, 0], rtol=1e-12, atol=1e-14)
        assert not np.any(out[L:, b])
        np.testing.assert_allclose(h_n[b], hb[0], rtol=1e-12, atol=1e-14)
        gb = seqkern.rnn_backward(d_out[:L, b:b + 1], d_h_n[b:b + 1], cb)
        np.testing.assert_allclose(g.dx[:L, b], gb.dx[:, 0], rtol=1e-10, atol=1e-12)
        assert not np.any(g.dx[L:, b])
        np.testing.assert_allclose(g.dh0[b], gb.dh0[0], rtol=1e-10, atol=1e-12)
        dW_hh += gb.dW_hh
    np.testing.assert_allclose(g.dW_hh, dW_hh, rtol=1e-10, atol=1e-12)


def test_return_cache_false(rng):
    args = make(rng, 5, 2, 3, 4)
    out, h_n, cache = seqkern.rnn_forward(*args)
    out2, h_n2, cache2 = seqkern.rnn_forward(*args, return_cache=False)
    assert cache2 is None
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(h_n, h_n2)


@pytest.mark.parametrize("T,B", [(0, 3), (4, 0), (0, 0)])
def test_empty(rng, T, B):
    I, H = 3, 5
    x = np.zeros((T, B, I))
    _, h0, W_ih, W_hh, b_ih, b_hh = make(rng, 1, B, I, H)
    out, h_n, cache = seqkern.rnn_forward(x, h0, W_ih, W_hh, b_ih, b_hh)
    assert out.shape == (T, B, H) and h_n.shape == (B, H)
    np.testing.assert_array_equal(h_n, h0)
    d_h_n = np.ones((B, H))
    g = seqkern.rnn_backward(np.zeros((T, B, H)), d_h_n, cache)
    assert g.dx.shape == (T, B, I) and g.dh0.shape == (B, H)
    np.testing.assert_array_equal(g.dh0, d_h_n)
    assert not np.any(g.dW_ih) and not np.any(g.dW_hh)


def test_inputs_not_modified_and_read_only_and_strided(rng):
    args = make(rng, 6, 3, 4, 8)
    lengths = np.array([6, 3, 1])
    expected = seqkern.rnn_forward(*args, lengths=lengths)
    copies = [a.copy() for a in args]
    # Non-contiguous views of the same values, marked read-only.
    views = []
    for a in args:
        big = np.zeros(a.shape + (2,))
        big[..., 0] = a
        v = big[..., 0]
        v.flags.writeable = False
        views.append(v)
    out, h_n, cache = seqkern.rnn_forward(*views, lengths=lengths)
    np.testing.assert_array_equal(out, expected[0])
    np.testing.assert_array_equal(h_n, expected[1])
    d_out = np.ones_like(out)
    d_out.flags.writeable = False
    g = seqkern.rnn_backward(d_out, None, cache)
    g_exp = seqkern.rnn_backward(np.ones_like(out), None, expected[2])
    for a, b in zip(g, g_exp):
        np.testing.assert_array_equal(a, b)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)
    assert np.all(d_out == 1)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_nan_propagates(rng, nonlinearity):
    T, B, I, H = 6, 3, 4, 8
    x, h0, W_ih, W_hh, b_ih, b_hh = make(rng, T, B, I, H)
    x[2, 1, 0] = np.nan
    out, h_n, cache = seqkern.rnn_forward(x, h0, W_ih, W_hh, b_ih, b_hh, nonlinearity=nonlinearity)
    assert np.all(np.isfinite(out[:2])) and np.all(np.isfinite(out[:, [0, 2]]))
    assert np.isnan(out[2, 1]).any() and np.isnan(h_n[1]).any()
    g = seqkern.rnn_backward(np.ones_like(out), None, cache)
    assert np.isnan(g.dW_ih).any()
    # Inf in the weights: no crash, no hang, the same as the reference.
    W_hh[0, 0] = np.inf
    out, h_n, _ = seqkern.rnn_forward(x, h0, W_ih, W_hh, b_ih, b_hh, nonlinearity=nonlinearity)
    with np.errstate(invalid="ignore", over="ignore"):
        rout, rh_n, _ = ref.rnn_forward(x, h0, W_ih, W_hh, b_ih, b_hh, nonlinearity=nonlinearity)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(rout))


def _bad_calls():
    rng = np.random.default_rng(0)
    x, h0, W_ih, W_hh, b_ih, b_hh = make(rng, 4, 2, 3, 5)
    ok = dict(x=x, h0=h0, W_ih=W_ih, W_hh=W_hh, b_ih=b_ih, b_hh=b_hh)

    def call(**over):
        kw = dict(ok)
        extra = {k: over.pop(k) for k in list(over) if k in ("nonlinearity", "lengths", "batch_first", "return_cache")}
        kw.update(over)
        return lambda: seqkern.rnn_forward(kw["x"], kw["h0"], kw["W_ih"], kw["W_hh"], kw["b_ih"], kw["b_hh"], **extra)

    return [
        ("x ndim", call(x=x[0]), ValueError, "x must have 3 dimensions"),
        ("x int", call(x=x.astype(np.int64)), TypeError, "x must be a float32 or float64"),
        ("x complex", call(x=x.astype(complex)), TypeError, "x must be a float32 or float64"),
        ("x float16", call(x=x.astype(np.float16)), TypeError, "x must be a float32 or float64"),
        ("x None", call(x=None), TypeError, "x must be"),
        ("mixed dtypes", call(W_hh=W_hh.astype(np.float32)), TypeError, "W_hh has dtype float32"),
        ("W_ih cols", call(W_ih=W_ih[:, :2]), ValueError, "W_ih must have shape (H, I)"),
        ("W_hh shape", call(W_hh=W_hh[:4]), ValueError, "W_hh must have shape (H, H)"),
        ("b_ih shape", call(b_ih=b_ih[:3]), ValueError, "b_ih must have shape (H,)"),
        ("b_hh ndim", call(b_hh=b_hh[None]), ValueError, "b_hh must have 1 dimensions"),
        ("h0 batch", call(h0=h0[:1]), ValueError, "h0 must have shape (B, H)"),
        ("nonlinearity", call(nonlinearity="sigmoid"), ValueError, "nonlinearity must be one of"),
        ("lengths range", call(lengths=[5, 1]), ValueError, "lengths must lie in [0, T]"),
        ("lengths negative", call(lengths=[-1, 1]), ValueError, "lengths must lie in [0, T]"),
        ("lengths shape", call(lengths=[1, 1, 1]), ValueError, "lengths must have shape (B,)"),
        ("lengths float", call(lengths=[1.0, 2.0]), TypeError, "lengths must be an integer"),
        ("batch_first", call(batch_first="yes"), TypeError, "batch_first must be True or False"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_arguments_raise_clear_errors(case):
    _, fn, exc, msg = case
    with pytest.raises(exc, match=_escape(msg)):
        fn()


def _escape(msg):
    import re
    return re.escape(msg)


def test_bad_backward_arguments(rng):
    args = make(rng, 4, 2, 3, 5)
    out, h_n, cache = seqkern.rnn_forward(*args)
    _, _, rcache = ref.rnn_forward(*args)
    with pytest.raises(TypeError, match="cache must be the cache returned by rnn_forward"):
        seqkern.rnn_backward(out, None, rcache)
    with pytest.raises(TypeError, match="cache must be the cache returned by rnn_forward"):
        seqkern.rnn_backward(out, None, None)
    _, step_cache = seqkern.rnn_step_forward(args[0][0], args[1], *args[2:])
    with pytest.raises(TypeError, match="cache must be the cache returned by rnn_forward"):
        seqkern.rnn_backward(out, None, step_cache)
    with pytest.raises(TypeError, match="cache must be the cache returned by rnn_step_forward"):
        seqkern.rnn_step_backward(h_n, cache)
    with pytest.raises(ValueError, match=_escape("d_out must have shape (T, B, H)")):
        seqkern.rnn_backward(out[:2], None, cache)
    with pytest.raises(TypeError, match="d_h_n has dtype float32"):
        seqkern.rnn_backward(None, h_n.astype(np.float32), cache)
    with pytest.raises(TypeError, match="dh_next must be"):
        seqkern.rnn_step_backward(None, step_cache)


def test_matches_torch_when_installed(rng):
    """PyTorch's nn.RNN layout and packed-sequence semantics (skipped without torch)."""
    torch = pytest.importorskip("torch")
    T, B, I, H = 7, 3, 4, 6
    x, h0, W_ih, W_hh, b_ih, b_hh = make(rng, T, B, I, H)
    lengths = np.array([7, 5, 2])
    m = torch.nn.RNN(I, H, nonlinearity="tanh", dtype=torch.float64)
    with torch.no_grad():
        for p, v in zip((m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0), (W_ih, W_hh, b_ih, b_hh)):
            p.copy_(torch.from_numpy(v))
    xt = torch.from_numpy(x).requires_grad_()
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(lengths), enforce_sorted=False)
    pout, th_n = m(packed, torch.from_numpy(h0)[None])
    tout, _ = torch.nn.utils.rnn.pad_packed_sequence(pout, total_length=T)
    out, h_n, cache = seqkern.rnn_forward(x, h0, W_ih, W_hh, b_ih, b_hh, lengths=lengths)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, th_n[0].detach().numpy(), rtol=1e-12, atol=1e-14)
    d_out = rng.standard_normal(out.shape)
    (tout * torch.from_numpy(d_out)).sum().backward()
    g = seqkern.rnn_backward(d_out, None, cache)
    np.testing.assert_allclose(g.dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.dW_hh, m.weight_hh_l0.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("I,H", [(0, 4), (4, 0), (1, 1)])
def test_degenerate_feature_sizes(rng, I, H):
    T, B = 3, 2
    x = rng.standard_normal((T, B, I))
    W_ih, W_hh, b_ih = rng.standard_normal((H, I)), rng.standard_normal((H, H)) * 0.5, rng.standard_normal(H)
    out, h_n, cache = seqkern.rnn_forward(x, None, W_ih, W_hh, b_ih, None)
    rout, rh_n, rcache = ref.rnn_forward(x, None, W_ih, W_hh, b_ih, None)
    assert_close(out, rout, np.float64, "out")
    d_out = rng.standard_normal(out.shape)
    assert_grads_close(seqkern.rnn_backward(d_out, None, cache), ref.rnn_backward(d_out, None, rcache), np.float64)
