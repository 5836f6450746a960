"""GRU kernels against the NumPy reference, and the reference against finite differences.

Axis legend: T = time, B = batch, I = input features, H = hidden units.
Failures print the largest difference per tensor, so they say where it went wrong.
"""

import warnings

import numpy as np
import pytest

import seqkern
import seqkern.reference as ref
from seqkern import gru_backward, gru_forward, gru_step_backward, gru_step_forward

# float32 kernel vs float64 reference: the kernel's error is a few float32 ulps
# accumulated over T steps; float64 kernel vs float64 reference: rounding only.
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}
GRAD_NAMES = ("dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh")


def make(T, B, I, H, dtype=np.float64, bias=True, seed=0, scale=1.0):
    """x (T, B, I), h0 (B, H), W_ih (3H, I), W_hh (3H, H), b_ih, b_hh (3H,)."""
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(max(H, 1))
    args = [
        rng.standard_normal((T, B, I)) * scale,
        rng.standard_normal((B, H)),
        rng.uniform(-s, s, (3 * H, I)) * 2,
        rng.uniform(-s, s, (3 * H, H)) * 2,
        rng.uniform(-1, 1, 3 * H) if bias else None,
        rng.uniform(-1, 1, 3 * H) if bias else None,
    ]
    return [None if a is None else a.astype(dtype) for a in args]


def upstream(T, B, H, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype)


def assert_close(name, got, want, dtype):
    if want is None:
        assert got is None, f"{name}: expected None"
        return
    assert got is not None, f"{name}: got None"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert got.dtype == np.dtype(dtype), f"{name}: dtype {got.dtype} != {np.dtype(dtype)}"
    tol = TOL[dtype]
    err = np.max(np.abs(got - want), initial=0)
    lim = tol["atol"] + tol["rtol"] * np.max(np.abs(want), initial=0)
    assert err <= lim, f"{name}: max |diff| {err:.3g} > {lim:.3g}"


def assert_grads_close(g, r, dtype):
    for name, a, b in zip(GRAD_NAMES, g, r):
        assert_close(name, a, b, dtype)


def ref64(args):
    return [None if a is None else np.asarray(a, np.float64) for a in args]


SHAPES = [  # (T, B, I, H)
    (1, 1, 3, 2),
    (5, 3, 4, 7),
    (7, 1, 6, 33),
    (4, 16, 8, 70),     # large enough to split a step in unit blocks
    (3, 9, 5, 131),     # odd H, ragged last block
    (2, 3, 4, 7),       # few rows (T < 4, T*B < 16): no W_hh^T in the backward at B > 1
    (1, 1, 5, 300),     # a single step: one block where more steps would split
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_backward_vs_reference(shape, dtype, bias):
    T, B, I, H = shape
    args = make(T, B, I, H, dtype, bias)
    d_out, d_h_n = upstream(T, B, H, dtype)
    out, h_n, cache = gru_forward(*args)
    g = gru_backward(d_out, d_h_n, cache)
    r_out, r_h_n, r_cache = ref.gru_forward(*ref64(args))
    r = ref.gru_backward(d_out.astype(np.float64), d_h_n.astype(np.float64), r_cache)
    assert_close("out", out, r_out, dtype)
    assert_close("h_n", h_n, r_h_n, dtype)
    assert_grads_close(g, r, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 5, 4, 9), (5, 12, 6, 130)])
def test_lengths(shape, dtype):
    T, B, I, H = shape
    args = make(T, B, I, H, dtype)
    lengths = np.arange(B) % (T + 1)       # includes 0 and T
    lengths[-1] = T
    d_out, d_h_n = upstream(T, B, H, dtype)
    out, h_n, cache = gru_forward(*args, lengths=lengths)
    g = gru_backward(d_out, d_h_n, cache)
    r_out, r_h_n, r_cache = ref.gru_forward(*ref64(args), lengths=lengths)
    r = ref.gru_backward(d_out.astype(np.float64), d_h_n.astype(np.float64), r_cache)
    assert_close("out", out, r_out, dtype)
    assert_close("h_n", h_n, r_h_n, dtype)
    assert_grads_close(g, r, dtype)
    # semantics, independent of the reference: outputs 0 after the end, length 0
    # keeps h0, full length equals a run without lengths
    for b, L in enumerate(lengths):
        assert np.all(out[L:, b] == 0)
    zero = lengths == 0
    np.testing.assert_array_equal(h_n[zero], args[1][zero])
    np.testing.assert_array_equal(g.dh0[zero], d_h_n[zero])
    assert np.all(g.dx[:, zero] == 0)
    full = lengths == T
    out_all, h_all, _ = gru_forward(*args)
    np.testing.assert_array_equal(out[:, full], out_all[:, full])
    np.testing.assert_array_equal(h_n[full], h_all[full])


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


def test_lengths_match_separate_runs():
    """Sequence b with lengths[b] = L behaves like running x[:L, b] alone."""
    T, B, I, H = 6, 4, 3, 5
    args = make(T, B, I, H)
    lengths = np.array([6, 2, 0, 4])
    out, h_n, _ = gru_forward(*args, lengths=lengths)
    x, h0 = args[0], args[1]
    for b, L in enumerate(lengths):
        if L == 0:
            continue
        o_b, h_b, _ = ref.gru_forward(x[:L, b:b + 1], h0[b:b + 1], *args[2:])
        np.testing.assert_allclose(out[:L, b], o_b[:, 0], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(h_n[b], h_b[0], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_first(dtype):
    T, B, I, H = 5, 3, 4, 6
    args = make(T, B, I, H, dtype)
    x_bf = np.ascontiguousarray(args[0].transpose(1, 0, 2))
    d_out, d_h_n = upstream(T, B, H, dtype)
    out, h_n, cache = gru_forward(x_bf, *args[1:], batch_first=True)
    g = gru_backward(d_out.transpose(1, 0, 2), d_h_n, cache)
    r_out, r_h_n, r_cache = ref.gru_forward(*args)
    r = ref.gru_backward(d_out, d_h_n, r_cache)
    assert out.shape == (B, T, H) and g.dx.shape == (B, T, I)
    assert_close("out", out, r_out.transpose(1, 0, 2), dtype)
    assert_close("h_n", h_n, r_h_n, dtype)
    assert_grads_close(g._replace(dx=g.dx.transpose(1, 0, 2)), r, dtype)
    # the reference's batch_first too
    rb_out, _, rb_cache = ref.gru_forward(x_bf, *args[1:], batch_first=True)
    np.testing.assert_array_equal(rb_out, r_out.transpose(1, 0, 2))
    rb = ref.gru_backward(d_out.transpose(1, 0, 2), d_h_n, rb_cache)
    np.testing.assert_array_equal(rb.dx, r.dx.transpose(1, 0, 2))


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


# --- the reference against central finite differences -----------------------

def _loss(args, d_out, d_h_n, lengths):
    out, h_n, _ = ref.gru_forward(*args, lengths=lengths, return_cache=False)
    return np.sum(out * d_out) + np.sum(h_n * d_h_n)


@pytest.mark.parametrize("lengths", [None, np.array([3, 0, 1])])
def test_reference_backward_finite_differences(lengths):
    T, B, I, H = 3, 3, 2, 3
    args = make(T, B, I, H, scale=0.7)
    d_out, d_h_n = upstream(T, B, H, np.float64)
    _, _, cache = ref.gru_forward(*args, lengths=lengths)
    g = ref.gru_backward(d_out, d_h_n, cache)
    grads = [g.dx, g.dh0, g.dW_ih, g.dW_hh, g.db_ih, g.db_hh]
    eps = 1e-6
    for k, (name, analytic) in enumerate(zip(GRAD_NAMES, grads)):
        numeric = np.zeros_like(args[k])
        for idx in np.ndindex(args[k].shape):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[k][idx] += eps
            minus[k][idx] -= eps
            numeric[idx] = (_loss(plus, d_out, d_h_n, lengths)
                            - _loss(minus, d_out, d_h_n, lengths)) / (2 * eps)
        err = np.max(np.abs(numeric - analytic))
        assert err < 1e-7, f"{name}: max |numeric - analytic| = {err:.3g}"


# --- step calls -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("module", ["kernel", "reference"])
def test_step_loop_equals_sequence(dtype, module):
    m = seqkern if module == "kernel" else ref
    T, B, I, H = 4, 3, 5, 6
    x, h0, W_ih, W_hh, b_ih, b_hh = make(T, B, I, H, dtype)
    d_out, d_h_n = upstream(T, B, H, dtype)
    out, h_n, cache = m.gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh)
    g = m.gru_backward(d_out, d_h_n, cache)

    h, caches, outs = h0, [], []
    for t in range(T):
        h, c = m.gru_step_forward(x[t], h, W_ih, W_hh, b_ih, b_hh)
        outs.append(h)
        caches.append(c)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.stack(outs), out, **tol)
    np.testing.assert_allclose(h, h_n, **tol)

    dh = d_h_n
    acc = {k: 0 for k in ("dW_ih", "dW_hh", "db_ih", "db_hh")}
    dxs = [None] * T
    for t in reversed(range(T)):
        s = m.gru_step_backward(dh + d_out[t], caches[t])
        dxs[t] = s.dx
        dh = s.dh0
        for k in acc:
            acc[k] = acc[k] + getattr(s, k)
    np.testing.assert_allclose(np.stack(dxs), g.dx, **tol)
    np.testing.assert_allclose(dh, g.dh0, **tol)
    for k in acc:
        np.testing.assert_allclose(acc[k], getattr(g, k), **tol)


def test_step_vs_reference_and_none_h():
    x, h, W_ih, W_hh, b_ih, b_hh = make(1, 4, 3, 5)
    dh = np.random.default_rng(3).standard_normal((4, 5))
    for h_prev in (h, None):
        got, c = gru_step_forward(x[0], h_prev, W_ih, W_hh, b_ih, b_hh)
        want, rc = ref.gru_step_forward(x[0], h_prev, W_ih, W_hh, b_ih, b_hh)
        assert_close("h_next", got, want, np.float64)
        assert_grads_close(gru_step_backward(dh, c), ref.gru_step_backward(dh, rc), np.float64)


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


# --- threads --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# the last shape is large enough for the GEMMs outside the time loop to go parallel
@pytest.mark.parametrize("shape", [(20, 16, 8, 70), (3, 40, 300, 130), (4, 1, 4, 300),
                                   (20, 64, 256, 80),
                                   # blocks of batch rows (B >= 16), uneven (17), and
                                   # two backward chunks (40 x 32 rows)
                                   (9, 17, 5, 40), (40, 32, 6, 33),
                                   # few rows: one block, no W_hh^T
                                   (1, 1, 4, 300), (3, 5, 8, 70)])
def test_threads_bitwise(shape, dtype):
    T, B, I, H = shape
    args = make(T, B, I, H, dtype)
    # lengths 0 .. T across the batch; one sequence runs its T steps (not length 0)
    lengths = np.arange(B) % (T + 1) if B > 1 else None
    d_out, d_h_n = upstream(T, B, H, dtype)
    res = []
    for n in (1, 2):
        with seqkern.threads(n):
            out, h_n, cache = gru_forward(*args, lengths=lengths)
            g = gru_backward(d_out, d_h_n, cache)
        res.append((out, h_n) + tuple(g))
    for name, a, b in zip(("out", "h_n") + GRAD_NAMES, *res):
        assert np.array_equal(a, b), f"{name} differs between 1 and 2 threads"


# --- inference, empties, dtypes, layouts ----------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_return_cache_false(dtype):
    args = make(5, 16, 8, 70, dtype)
    out, h_n, cache = gru_forward(*args)
    out2, h_n2, cache2 = gru_forward(*args, return_cache=False)
    assert cache2 is None
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(h_n, h_n2)
    r_out, r_h_n, r_cache = ref.gru_forward(*args, return_cache=False)
    assert r_cache is None
    assert_close("out", out2, r_out, dtype)


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


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (4, 0, 4, 5), (4, 3, 4, 0), (3, 2, 0, 4)])
@pytest.mark.parametrize("module", ["kernel", "reference"])
def test_empty(shape, module):
    m = seqkern if module == "kernel" else ref
    T, B, I, H = shape
    args = make(T, B, I, H)
    out, h_n, cache = m.gru_forward(*args)
    assert out.shape == (T, B, H) and h_n.shape == (B, H)
    r_out, r_h_n, _ = ref.gru_forward(*args)
    np.testing.assert_allclose(out, r_out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, r_h_n, rtol=1e-12, atol=1e-14)
    if T == 0:
        np.testing.assert_array_equal(h_n, args[1])
    d_out, d_h_n = upstream(T, B, H, np.float64)
    g = m.gru_backward(d_out, d_h_n, cache)
    shapes = [(T, B, I), (B, H), (3 * H, I), (3 * H, H), (3 * H,), (3 * H,)]
    for name, a, s in zip(GRAD_NAMES, g, shapes):
        assert a.shape == s, f"{name}: {a.shape} != {s}"
    if T == 0:
        np.testing.assert_array_equal(g.dh0, d_h_n)
        assert not np.any(g.dW_ih) and not np.any(g.db_hh)


def test_h0_none_is_zeros():
    x, h0, W_ih, W_hh, b_ih, b_hh = make(4, 3, 2, 5)
    zeros = np.zeros_like(h0)
    for m in (seqkern, ref):
        out, h_n, _ = m.gru_forward(x, None, W_ih, W_hh, b_ih, b_hh)
        out0, h_n0, _ = m.gru_forward(x, zeros, W_ih, W_hh, b_ih, b_hh)
        np.testing.assert_array_equal(out, out0)
        np.testing.assert_array_equal(h_n, h_n0)
    assert np.any(out != gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh)[0])


def test_none_gradients():
    T, B, I, H = 4, 3, 2, 5
    args = make(T, B, I, H)
    d_out, d_h_n = upstream(T, B, H, np.float64)
    _, _, cache = gru_forward(*args)
    _, _, r_cache = ref.gru_forward(*args)
    for do, dh in ((d_out, None), (None, d_h_n), (None, None)):
        assert_grads_close(gru_backward(do, dh, cache), ref.gru_backward(do, dh, r_cache),
                           np.float64)
    g = gru_backward(None, None, cache)
    assert all(not np.any(a) for a in g)


def test_non_contiguous_and_read_only_inputs_not_modified():
    T, B, I, H = 5, 4, 3, 6
    args = make(T, B, I, H)
    d_out, d_h_n = upstream(T, B, H, np.float64)
    want_out, want_h, r_cache = ref.gru_forward(*args)
    want_g = ref.gru_backward(d_out, d_h_n, r_cache)
    # Fortran order, strided views, read-only flags
    nc = [np.asfortranarray(args[0]), args[1][:, ::-1][:, ::-1], np.asfortranarray(args[2]),
          np.repeat(args[3], 2, axis=1)[:, ::2], args[4][::1], args[5].copy()]
    for a in nc:
        a.setflags(write=False)
    dnc = np.asfortranarray(d_out)
    dnc.setflags(write=False)
    d_h_n.setflags(write=False)
    before = [a.copy() for a in nc] + [dnc.copy(), d_h_n.copy()]
    for m in (seqkern, ref):
        out, h_n, cache = m.gru_forward(*nc)
        g = m.gru_backward(dnc, d_h_n, cache)
        assert_close("out", out, want_out, np.float64)
        assert_close("h_n", h_n, want_h, np.float64)
        assert_grads_close(g, want_g, np.float64)
    for a, b in zip(nc + [dnc, d_h_n], before):
        np.testing.assert_array_equal(a, b)


def test_inputs_not_modified_with_lengths_and_step():
    args = make(4, 5, 3, 70)
    before = [a.copy() for a in args]
    _, _, cache = gru_forward(*args, lengths=np.array([4, 0, 2, 1, 3]))
    d_out, d_h_n = upstream(4, 5, 70, np.float64)
    dbefore = (d_out.copy(), d_h_n.copy())
    gru_backward(d_out, d_h_n, cache)
    h, c = gru_step_forward(args[0][0], args[1], *args[2:])
    gru_step_backward(d_h_n, c)
    for a, b in zip(list(args) + [d_out, d_h_n], before + list(dbefore)):
        np.testing.assert_array_equal(a, b)


# --- NaN and saturation ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates(dtype):
    T, B, I, H = 4, 3, 2, 5
    args = make(T, B, I, H, dtype)
    args[0][1, 0, 0] = np.nan              # step 1 of sequence 0
    for m in (seqkern, ref):
        out, h_n, cache = m.gru_forward(*args)
        assert np.all(np.isfinite(out[0])), "before the NaN"
        assert np.all(np.isnan(out[1:, 0])) and np.all(np.isnan(h_n[0]))
        assert np.all(np.isfinite(out[:, 1:])), "other sequences stay finite"
        g = m.gru_backward(*upstream(T, B, H, dtype), cache)
        assert np.any(np.isnan(g.dW_ih)) and np.any(np.isnan(g.dW_hh))
        assert np.any(np.isnan(g.dx[:, 0])) and np.any(np.isnan(g.dh0[0]))


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


# --- errors ---------------------------------------------------------------------

def _good():
    return make(3, 2, 4, 5)


def _bad_forward_calls():
    x, h0, W_ih, W_hh, b_ih, b_hh = _good()
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    yield "x", TypeError, lambda f: f(x.astype(np.int64), h0, W_ih, W_hh)
    yield "x", TypeError, lambda f: f(x.astype(np.complex128), h0, W_ih, W_hh)
    yield "x", TypeError, lambda f: f(x.astype(np.float16), h0, W_ih, W_hh)
    yield "x", TypeError, lambda f: f(None, h0, W_ih, W_hh)
    yield "x", ValueError, lambda f: f(x[0], h0, W_ih, W_hh)
    yield "h0", TypeError, lambda f: f(x, f32(h0), W_ih, W_hh)
    yield "h0", ValueError, lambda f: f(x, h0[:, :-1], W_ih, W_hh)
    yield "h0", ValueError, lambda f: f(x, h0[None], W_ih, W_hh)
    yield "W_ih", ValueError, lambda f: f(x, h0, W_ih[:-1], W_hh)
    yield "W_ih", ValueError, lambda f: f(x, h0, W_ih[:-3], W_hh)
    yield "W_ih", ValueError, lambda f: f(x, h0, W_ih[:, :-1], W_hh)
    yield "W_ih", TypeError, lambda f: f(x, h0, f32(W_ih), W_hh)
    yield "W_ih", TypeError, lambda f: f(x, h0, None, W_hh)
    yield "W_hh", ValueError, lambda f: f(x, h0, W_ih, W_hh[:, :-1])
    yield "W_hh", ValueError, lambda f: f(x, h0, W_ih, W_hh.T)
    yield "W_hh", TypeError, lambda f: f(x, h0, W_ih, W_hh.astype(np.int32))
    yield "b_ih", ValueError, lambda f: f(x, h0, W_ih, W_hh, b_ih[:-1], b_hh)
    yield "b_ih", ValueError, lambda f: f(x, h0, W_ih, W_hh, b_ih[None], b_hh)
    yield "b_hh", ValueError, lambda f: f(x, h0, W_ih, W_hh, b_ih, b_hh[:5])
    yield "b_hh", TypeError, lambda f: f(x, h0, W_ih, W_hh, b_ih, f32(b_hh))
    yield "lengths", ValueError, lambda f: f(x, h0, W_ih, W_hh, lengths=[1, 4])
    yield "lengths", ValueError, lambda f: f(x, h0, W_ih, W_hh, lengths=[-1, 2])
    yield "lengths", ValueError, lambda f: f(x, h0, W_ih, W_hh, lengths=[1, 2, 3])
    yield "lengths", TypeError, lambda f: f(x, h0, W_ih, W_hh, lengths=[1.0, 2.0])
    yield "lengths", TypeError, lambda f: f(x, h0, W_ih, W_hh, lengths=[True, False])
    yield "batch_first", TypeError, lambda f: f(x, h0, W_ih, W_hh, batch_first="yes")
    yield "return_cache", TypeError, lambda f: f(x, h0, W_ih, W_hh, return_cache=None)


@pytest.mark.parametrize("module", ["kernel", "reference"])
def test_forward_errors(module):
    f = gru_forward if module == "kernel" else ref.gru_forward
    n = 0
    for name, exc, call in _bad_forward_calls():
        with pytest.raises(exc, match=name):
            call(f)
        n += 1
    assert n == 27


@pytest.mark.parametrize("module", ["kernel", "reference"])
def test_backward_errors(module):
    m = seqkern if module == "kernel" else ref
    x, h0, W_ih, W_hh, b_ih, b_hh = _good()
    T, B, H = 3, 2, 5
    _, _, cache = m.gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh)
    d_out, d_h_n = upstream(T, B, H, np.float64)
    with pytest.raises(ValueError, match="d_out"):
        m.gru_backward(d_out[:, :, :-1], d_h_n, cache)
    with pytest.raises(ValueError, match="d_out"):
        m.gru_backward(d_out.transpose(1, 0, 2), d_h_n, cache)
    with pytest.raises(TypeError, match="d_out"):
        m.gru_backward(d_out.astype(np.float32), d_h_n, cache)
    with pytest.raises(TypeError, match="d_out"):
        m.gru_backward(d_out.astype(np.int64), d_h_n, cache)
    with pytest.raises(ValueError, match="d_h_n"):
        m.gru_backward(d_out, d_h_n[:1], cache)
    with pytest.raises(TypeError, match="d_h_n"):
        m.gru_backward(d_out, d_h_n.astype(np.complex64), cache)
    # caches from elsewhere
    _, _, no_cache = m.gru_forward(x, h0, W_ih, W_hh, return_cache=False)
    _, step_cache = m.gru_step_forward(x[0], h0, W_ih, W_hh)
    rnn_m = seqkern if module == "kernel" else ref
    _, _, rnn_cache = rnn_m.rnn_forward(x, h0, W_ih[:H], W_hh[:H, :])
    other = ref if module == "kernel" else seqkern
    _, _, other_cache = other.gru_forward(x, h0, W_ih, W_hh)
    for bad in (no_cache, step_cache, rnn_cache, other_cache, "cache", 3):
        with pytest.raises(TypeError, match="cache"):
            m.gru_backward(d_out, d_h_n, bad)
    # step backward
    _, c = m.gru_step_forward(x[0], h0, W_ih, W_hh)
    with pytest.raises(TypeError, match="dh_next"):
        m.gru_step_backward(None, c)
    with pytest.raises(ValueError, match="dh_next"):
        m.gru_step_backward(d_h_n[:, :-1], c)
    with pytest.raises(TypeError, match="dh_next"):
        m.gru_step_backward(d_h_n.astype(np.float32), c)
    for bad in (cache, rnn_cache, None):
        with pytest.raises(TypeError, match="cache"):
            m.gru_step_backward(d_h_n, bad)
    # step forward
    with pytest.raises(ValueError, match="x"):
        m.gru_step_forward(x, h0, W_ih, W_hh)
    with pytest.raises(ValueError, match="h_prev"):
        m.gru_step_forward(x[0], h0[:1], W_ih, W_hh)
    with pytest.raises(TypeError, match="W_hh"):
        m.gru_step_forward(x[0], h0, W_ih, W_hh.astype(np.float32))
