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
    assert cache.z.nbytes + cache.cs.nbytes == T * B * 5 * H * 4


def test_reference_sigmoid_is_stable():
    from seqkern.reference.lstm import _sigmoid
    z = np.array([-1e4, -50.0, 0.0, 50.0, 1e4, np.nan])
    with np.errstate(over="raise", divide="raise", invalid="ignore"):
        s = _sigmoid(z)
    np.testing.assert_allclose(s[:5], [0, 1 / (1 + np.exp(50)), 0.5, 1 / (1 + np.exp(-50)), 1],
                               rtol=1e-15, atol=0)
    assert np.isnan(s[5])


def _force_packed(monkeypatch):
    """Run the products on the packed GEMM, and a batch-1 call on its interleaved
    path, where the split lives (AUTO takes that path in AVX-512 modules only)."""
    import seqkern._step_gemm

    monkeypatch.setattr(seqkern._step_gemm, "_mode", seqkern._step_gemm.PACKED)


@pytest.mark.parametrize("mode, T, holds", [("blas", 20, True), ("packed", 20, False),
                                             ("auto", 2, True), ("auto", 20, None)])
def test_blas_held_only_where_blas_runs(monkeypatch, mode, T, holds):
    """The wrapper holds BLAS at one thread (a few us of ctypes calls) only around
    calls whose products run on BLAS; the packed path calls none, and must still
    match the reference. AUTO packs from 16 rows on, in modules built for AVX-512
    or AVX2 + FMA."""
    from contextlib import contextmanager

    import seqkern.lstm as lstm_mod
    from seqkern._step_gemm import step_gemm

    if holds is None:
        holds = lstm_mod._lstm.ISA not in ("avx512", "avx2")

    entered = []

    @contextmanager
    def counting():
        entered.append(1)
        yield

    monkeypatch.setattr(lstm_mod, "blas_single_thread", counting)
    rng = np.random.default_rng(5)
    B, I, H = 1, 6, 16
    x = rng.standard_normal((T, B, I))
    W_ih = rng.standard_normal((4 * H, I)) * 0.3
    W_hh = rng.standard_normal((4 * H, H)) * 0.3
    with step_gemm(mode):
        out, h_n, c_n, cache = seqkern.lstm_forward(x, None, None, W_ih, W_hh)
        g = seqkern.lstm_backward(np.ones_like(out), None, None, cache)
    assert len(entered) == (2 if holds else 0)
    r_out, _, _, r_cache = ref.lstm_forward(x, None, None, W_ih, W_hh)
    np.testing.assert_allclose(out, r_out, rtol=1e-10, atol=1e-12)
    r_g = ref.lstm_backward(np.ones_like(out), None, None, r_cache)
    np.testing.assert_allclose(g.dW_hh, r_g.dW_hh, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype,H", [(np.float32, 128), (np.float64, 64), (np.float64, 128)])
@pytest.mark.parametrize("T,I,length,join,stop", [
    (100, 8, None, 0, -1), (100, 8, None, 48, -1), (40, 70, 33, 16, -1), (21, 3, None, 0, -1),
    (21, 3, None, 16, -1), (37, 16, 0, 0, -1), (33, 16, 16, 32, -1),
    (300, 256, None, 16, -1),                        # projection first where T I 4H >= 2^25
    (530, 4, 520, 0, -1),                            # two backward chunks (18, 512 steps)
    (100, 8, None, 0, 48), (90, 5, 70, 16, 64)])     # back to one thread
def test_batch_1_step_split_between_threads(monkeypatch, request, dtype, H, T, I, length,
                                            join, stop):
    """On 2 threads the batch-1 steps split in halves of the units (each half of a
    gate whole panels: with AVX-512, H a multiple of 128 in float32, of 64 in float64), the
    second thread joining at a chunk boundary: the same bits as on 1 thread, with
    and without a cache, with lengths; the backward's gradient jobs after each
    chunk of steps are shared between the two threads. Here the first thread waits for the second
    (wait_for_helper) at step ``join``, so that the split surely runs from there,
    after the first thread ran the steps before it alone; and where the handoff is
    deemed too slow, back to the first thread alone from a chunk boundary."""
    import seqkern.lstm as lstm_mod

    splits = []
    forward = lstm_mod._lstm.forward

    def recording(*a):
        splits.append(forward(*a))
        return splits[-1]

    monkeypatch.setattr(lstm_mod._lstm, "forward", recording)
    _force_packed(monkeypatch)
    args = make(T, 1, I, H, dtype)
    lengths = None if length is None else np.array([length])
    # the split surely runs from `join` (however slow the handoff); max_wait < 0:
    # the first thread goes on alone after the second split chunk (at `stop`).
    # Where OpenMP gives no second thread, the steps never split.
    from seqkern._openmp_helpers import handoff_ns, openmp_enabled
    if not (openmp_enabled() and handoff_ns(10) is not None):
        join = stop = -1
    lstm_mod._lstm.wait_for_helper(10 ** 6, max(join, 0), 1e12 if stop < 0 else -1.0, False,
                                   max_slower=None)
    request.addfinalizer(lambda: lstm_mod._lstm.wait_for_helper(0))
    d_out = np.random.default_rng(3).standard_normal((T, 1, H)).astype(dtype)

    def run():
        out, h_n, c_n, cache = seqkern.lstm_forward(*args, lengths=lengths)
        o2, h2, c2, _ = seqkern.lstm_forward(*args, lengths=lengths, return_cache=False)
        g = seqkern.lstm_backward(d_out, h_n, c_n, cache)
        return (out, h_n, c_n, o2, h2, c2) + tuple(g)

    with seqkern.threads(1):
        want = run()
    assert splits == [(-1, -1)] * 2                # 1 thread: never split
    with seqkern.threads(2):
        got = run()
    for a, b in zip(want, got):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert splits[2:] == [(join, stop)] * 2        # 2 threads: split from `join` to `stop`
    np.testing.assert_array_equal(want[0], want[3])
    r_out = ref.lstm_forward(*map(f64, args), lengths=lengths)[0]
    assert_close("out", want[0], r_out, dtype)


def test_weights_not_copied_where_the_layout_is_theirs():
    """With one unit block the kernel's gate layout is PyTorch's: the cache then
    refers to W_ih, W_hh (no copy, never written); with several it holds them
    repacked. The backward matches the reference either way."""
    from seqkern.lstm import _lstm

    # (T, B, I, H, one block?): at H = 256 a single step of a single row only
    for T, B, I, H, expected in [(20, 1, 6, 16, True), (3, 64, 8, 256, False),
                                 (1, 1, 8, 256, True), (2, 1, 8, 256, False),
                                 (1, 2, 8, 256, False)]:
        args = make(T, B, I, H, np.float32)
        W_ih, W_hh = args[3].copy(), args[4].copy()
        out, h_n, c_n, cache = seqkern.lstm_forward(*args)
        one_block = _lstm.unit_block(T, B, H) == H
        assert one_block == expected
        assert (cache.Wih_p is args[3] and cache.Whh_p is args[4]) == one_block
        g = seqkern.lstm_backward(np.ones_like(out), None, None, cache)
        np.testing.assert_array_equal(args[3], W_ih)
        np.testing.assert_array_equal(args[4], W_hh)
        r_out, _, _, r_cache = ref.lstm_forward(*map(f64, args))
        r_g = ref.lstm_backward(np.ones(out.shape), None, None, r_cache)
        assert_close("dW_hh", g.dW_hh, r_g.dW_hh, np.float32)


@pytest.fixture
def two_threads_split(monkeypatch, request):
    """(the _lstm module, the list of (split, stop) steps forward() returns, call by
    call) for tests of the batch-1 split; skips without two OpenMP threads, and
    restores the kernel's own split rules afterwards."""
    import seqkern.lstm as lstm_mod
    from seqkern._openmp_helpers import handoff_ns, openmp_enabled

    if not (openmp_enabled() and handoff_ns(10) is not None):
        pytest.skip("needs two OpenMP threads")
    splits = []
    forward = lstm_mod._lstm.forward
    monkeypatch.setattr(lstm_mod._lstm, "forward",
                        lambda *a: splits.append(forward(*a)) or splits[-1])
    _force_packed(monkeypatch)
    request.addfinalizer(lambda: lstm_mod._lstm.wait_for_helper(0))
    return lstm_mod._lstm, splits


def test_batch_1_split_backs_off(two_threads_split):
    """A call that went back to one thread makes the next 1, then 2, 4 .. calls run
    alone from the start (no second thread at all); a call split to its end
    resets that. Results bitwise equal throughout."""
    _lstm, splits = two_threads_split
    args = make(100, 1, 8, 128, np.float32)
    with seqkern.threads(1):
        want = seqkern.lstm_forward(*args)[0]
    splits.clear()
    _lstm.wait_for_helper(10 ** 6, 0, -1.0, max_slower=None)  # back at 48
    with seqkern.threads(2):
        for _ in range(7):
            np.testing.assert_array_equal(seqkern.lstm_forward(*args)[0], want)
        assert splits == [(0, 48), (-1, -1), (0, 48), (-1, -1), (-1, -1), (0, 48), (-1, -1)]
        assert _lstm.backoff_state() == (3, 4)
        _lstm.wait_for_helper(10 ** 6, 0, 1e12, max_slower=None)  # to the end
        seqkern.lstm_forward(*args)
        assert splits[-1] == (0, -1) and _lstm.backoff_state() == (0, 0)


def test_batch_1_split_judged_against_alone(two_threads_split):
    """The lead also stops splitting where the split chunks take over max_slower
    times as long as chunks alone: it measures that on the first chunk of a call
    (run alone for it) where it has no figure for these sizes or the figure is 32
    calls old; judged from the third split chunk on over all but the first (the
    second thread's caches are cold then). Results bitwise equal throughout,
    forward and backward."""
    _lstm, splits = two_threads_split
    args = make(100, 1, 8, 128, np.float32)
    d_out = np.random.default_rng(4).standard_normal((100, 1, 128)).astype(np.float32)

    def run():
        out, h_n, c_n, cache = seqkern.lstm_forward(*args)
        return (out, h_n, c_n) + tuple(seqkern.lstm_backward(d_out, None, None, cache))

    with seqkern.threads(1):
        want = run()
    splits.clear()
    with seqkern.threads(2):
        # never slower: measured alone on the first chunk, then split to the end
        _lstm.wait_for_helper(10 ** 6, 0, 1e12, False, max_slower=1e12)
        for _ in range(34):
            for a, b in zip(want, run()):
                np.testing.assert_array_equal(a, b)
        assert splits == [(16, -1)] + [(0, -1)] * 32 + [(16, -1)]   # measured again
        # always slower: alone again after the third split chunk (the first is
        # not judged, and then two are)
        splits.clear()
        _lstm.wait_for_helper(10 ** 6, 0, 1e12, False, max_slower=-1.0)
        for _ in range(2):
            for a, b in zip(want, run()):
                np.testing.assert_array_equal(a, b)
        assert splits == [(16, 64), (0, 48)]


def test_batch_1_backward_shares_gradient_jobs(two_threads_split):
    """Where the batch-1 backward steps split, each chunk's gradient jobs are shared
    by the two threads through a job counter: every job runs exactly once (whichever
    thread takes it: under load the first may take them all), and the gradients are
    bitwise those of one thread."""
    _lstm = two_threads_split[0]
    T, I, H = 530, 8, 128
    args = make(T, 1, I, H, np.float32)
    d_out = np.random.default_rng(4).standard_normal((T, 1, H)).astype(np.float32)
    with seqkern.threads(1):
        cache = seqkern.lstm_forward(*args)[3]
        want = seqkern.lstm_backward(d_out, None, None, cache)
    _lstm.wait_for_helper(10 ** 6, 0, 1e12, False, max_slower=None)   # split to the end
    # per chunk: 4 gates x 2 blocks of 64 units of dW, and the dx the steps left
    jobs = 2 * (8 + 1)
    with seqkern.threads(2):
        cache = seqkern.lstm_forward(*args)[3]
        _lstm.tail_jobs()
        for _ in range(3):
            got = seqkern.lstm_backward(d_out, None, None, cache)
            for a, b in zip(want, got):
                np.testing.assert_array_equal(a, b)
        lead, helper = _lstm.tail_jobs()
        assert lead + helper == 3 * jobs


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


@pytest.mark.parametrize("T,join,stop,length", [(100, 0, -1, None), (529, 32, -1, 300),
                                                (70, 16, 64, None)])
def test_batch_1_backward_dx_inside_split_steps(two_threads_split, T, join, stop, length):
    """Where the batch-1 backward steps split, each half computes its half's columns
    of dx inside the steps: right against the reference (float64), the same bits
    as on one thread, with the split from a later step, a length shorter than T,
    and the lead going on alone (stop)."""
    _lstm = two_threads_split[0]
    _lstm.wait_for_helper(10 ** 6, join, 1e12 if stop < 0 else -1.0, False, max_slower=None)
    _backward_1_and_2_threads_vs_reference(T, 20, 64,
                                           None if length is None else np.array([length]))


@pytest.mark.parametrize("dtype,H", [(np.float32, 128), (np.float64, 64)])
@pytest.mark.parametrize("T,I,length", [(100, 70, None), (100, 70, 37), (17, 3, None),
                                        (530, 20, None), (300, 256, None)])
def test_batch_1_split_packs_each_half_on_its_thread(two_threads_split, dtype, H, T, I,
                                                     length):
    """Split steps start with each half of the packed weights (and of the first
    chunk's projection) written by the thread that reads it in the steps, or all
    of it by the first thread where the second comes too late: the same bits as on
    one thread either way, forward and backward (whose packing runs in its first
    chunk's region: T = 530 has two). Where the whole projection runs first
    (T I 4H >= 2^25), the forward packs before its region."""
    _lstm = two_threads_split[0]
    _lstm.wait_for_helper(10 ** 6, 0, 1e12, False, max_slower=None)
    args = make(T, 1, I, H, dtype, seed=T + I)
    lengths = None if length is None else np.array([length])
    d_out = np.random.default_rng(T).standard_normal((T, 1, H)).astype(dtype)

    def run(who):                                   # -> results, who packed fwd, bwd
        _lstm.prep_by(who)
        out, h_n, c_n, cache = seqkern.lstm_forward(*args, lengths=lengths)
        fwd = _lstm.prep_by(who)
        g = seqkern.lstm_backward(d_out, None, None, cache)
        return (out, h_n, c_n) + tuple(g), fwd, _lstm.prep_by(who)

    with seqkern.threads(1):
        want, fwd, bwd = run(-1)
    assert (fwd, bwd) == (0, 0)                     # 1 thread: no split, packed first
    projection_first = T * I * 4 * H >= 2 ** 25
    try:
        for who in (0, 1):                          # 0: the first thread packs all
            with seqkern.threads(2):
                got, fwd, bwd = run(who)
            assert (fwd, bwd) == (0 if projection_first else who + 1, who + 1)
            for a, b in zip(want, got):
                if a is not None:
                    np.testing.assert_array_equal(a, b)
    finally:
        _lstm.prep_by(-1)
    r_out = ref.lstm_forward(*map(f64, args), lengths=lengths)[0]
    assert_close("out", want[0], r_out, dtype)
