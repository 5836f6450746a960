"""The contract every kernel keeps, written once and run over the kernels (RNN tanh
and relu, LSTM, GRU; attention with its products on its own micro-kernel and on
BLAS, where the property applies): results match seqkern.reference in float32 and
float64, backward passes match central differences, step calls match the whole
sequence, 1 thread gives the bits of 2, bad arguments are named, NaN propagates,
any layout is accepted and nothing is modified, empty shapes, return_cache=False,
None gradients. Kernel-specific tests live in test_{rnn,lstm,gru,attention}.py."""

import itertools

import numpy as np
import pytest

import seqkern
from seqkern import reference as ref
from seqkern._step_gemm import step_gemm

from helpers import (ATTENTION, DTYPES, GRU, IMPLS, KERNELS, LSTM, RECURRENT, RNN_TANH,
                     assert_all_equal, assert_close, assert_grads_close, escape,
                     lengths_with_ends, numeric_grad, to64)


@pytest.fixture
def kernel(request):
    """The kernel spec, with its products chosen for the test."""
    with request.param.path():
        yield request.param


def over(kernels, *extra):
    """Parametrise ``kernel`` (and the names in ``extra``, per kernel: a function
    of the kernel giving a list of values) over ``kernels``."""
    names = ["kernel"] + [name for name, _ in extra]
    cases = [(k,) + rest for k in kernels
             for rest in itertools.product(*(values(k) for _, values in extra))]
    ids = ["-".join(v[0] if isinstance(v, tuple) and isinstance(v[0], str) else str(v)
                    for v in c) for c in cases]
    if not extra:
        cases = [k for k, in cases]
    return pytest.mark.parametrize(",".join(names), cases, ids=ids, indirect=["kernel"])


impls = pytest.mark.parametrize("impl", ["kernel", "reference"])


def impls_of(kernel):
    """Both implementations; the reference once for attention (the products
    chosen are the kernel's)."""
    return ["kernel"] if kernel is ATTENTION[1] else ["kernel", "reference"]


dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])


# --- the reference, in float32 and float64 ---------------------------------------

@over(KERNELS, ("shape", lambda k: k.shapes), ("variant", lambda k: k.variants))
@dtypes
def test_matches_reference(rng, kernel, shape, variant, dtype):
    args, kw = kernel.inputs(rng, shape, dtype, variant)
    outs, cache = kernel.forward(seqkern, args, **kw)
    routs, rcache = kernel.forward(ref, to64(*args), **kw)
    for name, o, r in zip(kernel.out_names, outs, routs, strict=True):
        assert o.dtype == dtype, name
        assert_close(o, r, dtype, name)
    d_outs = kernel.upstream(rng, outs)
    g = kernel.backward(seqkern, d_outs, cache)
    rg = kernel.backward(ref, to64(*d_outs), rcache)
    assert all(a is None or a.dtype == dtype for a in g)
    assert_grads_close(g, rg, dtype)
    if not kernel.recurrent:
        assert np.isfinite(outs[0]).all()
        return
    assert isinstance(g, kernel.grads_type) and g.dx.shape == args[0].shape
    batch_first = kw.get("batch_first", False)
    tm = (lambda a: a.transpose(1, 0, 2)) if batch_first else (lambda a: a)
    if "lengths" in variant:
        # the semantics, independent of the reference: outputs 0 after the end;
        # length 0 keeps the initial states and passes their gradients through; a
        # sequence of all T steps gives the bits of a call without lengths
        out, states, dx = tm(outs[0]), outs[1:], tm(g.dx)
        lengths = kw["lengths"]
        for b, L in enumerate(lengths):
            assert not np.any(out[L:, b]) and not np.any(dx[L:, b])
        zero = lengths == 0
        d_states = [getattr(g, "d" + s) for s in kernel.states]
        for s0, s_n, d_s0, d_s_n in zip(args[1:], states, d_states, d_outs[1:]):
            np.testing.assert_array_equal(s_n[zero], s0[zero])
            np.testing.assert_array_equal(d_s0[zero], d_s_n[zero])
        full = lengths == args[0].shape[1 if batch_first else 0]
        all_T = kernel.forward(seqkern, args, batch_first=batch_first)[0]
        np.testing.assert_array_equal(out[:, full], tm(all_T[0])[:, full])
        for s_n, s_all in zip(states, all_T[1:]):
            np.testing.assert_array_equal(s_n[full], s_all[full])
    if batch_first:
        # the same bits as the time-major call, kernel and reference alike
        tm_args = [np.ascontiguousarray(tm(args[0]))] + args[1:]
        d_tm = [tm(d_outs[0])] + d_outs[1:]
        for mod, res, grads in ((seqkern, outs, g), (ref, routs, rg)):
            cast = to64 if mod is ref else (lambda *a: list(a))
            t_outs, t_cache = kernel.forward(mod, cast(*tm_args), **{**kw, "batch_first": False})
            t_g = kernel.backward(mod, cast(*d_tm), t_cache)
            assert_all_equal([tm(res[0])] + list(res[1:]), t_outs, kernel.out_names)
            assert_all_equal([tm(grads.dx)] + list(grads[1:]), t_g, kernel.grad_names)


@over(RECURRENT)
@impls
@dtypes
def test_step_matches_reference(rng, kernel, impl, dtype):
    """One step call, with given and with None (zero) previous states."""
    x, states, weights = kernel.split(kernel.args(rng, 1, 4, 6, 9, dtype))
    for prev in (states, [None] * len(states)):
        nxt, c = kernel.step_forward(IMPLS[impl], x[0], prev, weights)
        rnxt, rc = kernel.step_forward(ref, to64(x[0])[0], to64(*prev), to64(*weights))
        for name, a, b in zip(kernel.states, nxt, rnxt):
            assert_close(a, b, dtype, name)
        d = kernel.upstream(rng, nxt)
        assert_grads_close(kernel.step_backward(IMPLS[impl], d, c),
                           kernel.step_backward(ref, to64(*d), rc), dtype)


# --- central finite differences (float64) ------------------------------------------

FD_SHAPE = (4, 3, 3, 4)            # (T, B, I, H)
FD_LENGTHS = np.array([4, 2, 0])
FD_ATTENTION_SHAPE = (2, 4, 2, 3, 5, 3, 2)


def _fd_case(rng, kernel, variant):
    if kernel.recurrent:
        args = kernel.args(rng, *FD_SHAPE)
        return args, dict(lengths=FD_LENGTHS) if variant == "lengths" else {}
    args, kw = kernel.inputs(rng, FD_ATTENTION_SHAPE, np.float64, variant)
    if variant == "all":
        kw["key_lengths"] = np.array([5, 2])     # keep rows with keys: nonzero gradients
    return args, kw


# the recurrent kernels and references; attention's reference (its kernel is
# held to the reference in float64 by test_matches_reference)
FD_CASES = ([(k, v, i) for k in RECURRENT for v in ("plain", "lengths") for i in IMPLS]
            + [(ATTENTION[0], v, "reference") for v in ("plain", "all", "float_mask")])


@pytest.mark.parametrize("kernel,variant,impl", FD_CASES, indirect=["kernel"],
                         ids=["-".join(map(str, c)) for c in FD_CASES])
def test_backward_matches_finite_differences(rng, kernel, variant, impl):
    mod = IMPLS[impl]
    args, kw = _fd_case(rng, kernel, variant)
    outs, _ = kernel.forward(ref, args, **kw)
    d_outs = kernel.upstream(rng, outs)
    _, grads = kernel.loss_and_grads(mod, args, kw, d_outs)
    for name, a in zip(kernel.grad_names, args):
        if a is None:
            continue
        num = numeric_grad(lambda: kernel.loss_and_grads(mod, args, kw, d_outs)[0], a)
        assert np.abs(num).max() > 1e-3, f"{name}: the check would be vacuous"
        assert_close(getattr(grads, name), num, np.float64, name, "finite_differences")


# --- step calls against the whole sequence -------------------------------------------

@over(RECURRENT, ("shape", lambda k: [(6, 3, 5, 12),
                                       (4, 17, 5, 20),     # the sequence splits by batch rows
                                       # ... or (the LSTM, B 4H H >= PAR_MIN_STEP) by units
                                       (3, 1, 6, 730 if k.name == "lstm" else 256)]))
@impls
@dtypes
def test_step_loop_equals_sequence(rng, kernel, shape, impl, dtype):
    """One step serves B rows, the sequence T * B: their products may take different
    GEMM paths (BLAS or the packed kernel), which round differently."""
    mod = IMPLS[impl]
    T, B, I, H = shape
    args = kernel.args(rng, T, B, I, H, dtype)
    x, states, weights = kernel.split(args)
    outs, cache = kernel.forward(mod, args)
    d_outs = kernel.upstream(rng, outs)
    g = kernel.backward(mod, d_outs, cache)

    caches = []
    for t in range(T):
        states, c = kernel.step_forward(mod, x[t], states, weights)
        assert_close(states[0], outs[0][t], dtype, f"out[{t}]", "step")
        caches.append(c)
    for name, s, s_n in zip(kernel.states, states, outs[1:]):
        assert_close(s, s_n, dtype, name + " last", "step")

    d_states = list(d_outs[1:])
    acc = {k: 0 for k in ("dW_ih", "dW_hh", "db_ih", "db_hh")}
    for t in reversed(range(T)):
        d_states[0] = d_states[0] + d_outs[0][t]
        gs = kernel.step_backward(mod, d_states, caches[t])
        assert_close(gs.dx, g.dx[t], dtype, f"dx[{t}]", "step")
        d_states = [getattr(gs, "d" + s) for s in kernel.states]
        for k in acc:
            acc[k] = acc[k] + getattr(gs, k)
    for s, d in zip(kernel.states, d_states):
        assert_close(d, getattr(g, "d" + s), dtype, "d" + s, "step")
    for k, v in acc.items():
        assert_close(v, getattr(g, k), dtype, k, "step")


# --- threads ---------------------------------------------------------------------------

def _thread_lengths(kernel, rng, shape):
    """Lengths 0, 1, .. across the batch, the last sequence of all T steps; at batch
    1 both without lengths and with [T]."""
    if not kernel.recurrent:
        return [dict(causal=True, mask=rng.random(shape[3:5]) > 0.1,
                     key_lengths=[300, 150, 290])]
    T, B = shape[:2]
    lengths = np.arange(B) % (T + 1)
    lengths[-1] = T
    return [dict(lengths=lengths)] + ([{}] if B == 1 else [])


def _run_threads(kernel, args, d_outs, n, **kw):
    """On n threads: the outputs of a forward with a cache, those of one without,
    and the gradients."""
    with seqkern.threads(n):
        outs, cache = kernel.forward(seqkern, args, **kw)
        outs_nc, none = kernel.forward(seqkern, args, return_cache=False, **kw)
        g = kernel.backward(seqkern, d_outs, cache)
    assert none is None
    return list(outs) + list(outs_nc) + list(g)


def _names(kernel):
    """The names of what _run_threads returns."""
    return kernel.out_names + tuple(n + " (no cache)" for n in kernel.out_names) + kernel.grad_names


@over(KERNELS, ("shape", lambda k: k.thread_shapes))
@dtypes
def test_one_thread_equals_two_threads_bitwise(rng, monkeypatch, kernel, shape, dtype):
    _same_bits_on(2, rng, monkeypatch, kernel, shape, dtype)


def _same_bits_on(n, rng, monkeypatch, kernel, shape, dtype):
    """On the blocks of a 2-core machine, n threads give bitwise what 1 gives."""
    kernel.two_core_blocks(monkeypatch)
    args, _ = kernel.inputs(rng, shape, dtype)
    for kw in _thread_lengths(kernel, rng, shape):
        outs, _ = kernel.forward(seqkern, args, return_cache=False, **kw)
        d_outs = kernel.upstream(rng, outs)
        one, many = (_run_threads(kernel, args, d_outs, m, **kw) for m in (1, n))
        assert_all_equal(many, one, _names(kernel))


@pytest.mark.parametrize("kernel,shape", [(LSTM, (256, 16, 32, 128)), (GRU, (64, 16, 256, 128))],
                         ids=["lstm", "gru"])
@dtypes
def test_more_threads_than_row_blocks_bitwise(rng, monkeypatch, kernel, shape, dtype):
    """4 threads on the blocks of a 2-core machine: the batch splits into 2 blocks of
    rows, while the input projection (T B I G >= PAR_MIN_GEMM, in 4 or more blocks)
    can use all 4 threads, so the forward projects ahead of the steps rather than
    inside the 2 row blocks: the same bits as on 1 thread."""
    _same_bits_on(4, rng, monkeypatch, kernel, shape, dtype)


@over(RECURRENT, ("shape", lambda k: k.gemm_shapes))
@pytest.mark.parametrize("mode", ["blas", "packed"])
@dtypes
def test_each_step_product(rng, kernel, shape, mode, dtype):
    """The products with the weights forced onto OpenBLAS or onto the packed GEMM:
    the reference, the same bits on 1 and 2 threads, and without a cache. The bias
    comes as b_ih alone in float32, as both in float64."""
    T, B, I, H = shape
    args = kernel.args(rng, T, B, I, H, dtype)
    if dtype == np.float32:
        args[-1] = None
    lengths = np.minimum(np.arange(B) + T - 2, T)
    routs, rcache = kernel.forward(ref, to64(*args), lengths=lengths)
    d_outs = [d.astype(dtype) for d in kernel.upstream(rng, routs)]
    with step_gemm(mode):
        one, two = (_run_threads(kernel, args, d_outs, n, lengths=lengths) for n in (1, 2))
    assert_all_equal(two, one, _names(kernel))
    n = len(routs)
    for res in (one, two):
        assert_all_equal(res[n:2 * n], res[:n], kernel.out_names)
    for name, a, b in zip(kernel.out_names, one[:n], routs):
        assert_close(a, b, dtype, name, steps=T)
    rg = kernel.backward(ref, to64(*d_outs), rcache)
    assert_grads_close(kernel.grads_type(*one[2 * n:]), rg, dtype, steps=T)


# --- return_cache=False, None gradients, initial states, the cache -----------------------

@over(KERNELS, ("shape", lambda k: k.no_cache_shapes))
@pytest.mark.parametrize("n_threads", [1, 2])
@dtypes
def test_return_cache_false(rng, kernel, shape, n_threads, dtype):
    """The same bits without a cache, with lengths; the reference too."""
    args, _ = kernel.inputs(rng, shape, dtype)
    if kernel.recurrent:
        kw = dict(lengths=np.arange(shape[1]) % (shape[0] + 1))
    else:
        kw = dict(causal=True)
    with seqkern.threads(n_threads):
        outs, cache = kernel.forward(seqkern, args, return_cache=False, **kw)
        outs2, cache2 = kernel.forward(seqkern, args, **kw)
    assert cache is None and cache2 is not None
    assert_all_equal(outs, outs2, kernel.out_names)
    routs, rcache = kernel.forward(ref, to64(*args), return_cache=False, **kw)
    assert rcache is None
    for name, a, b in zip(kernel.out_names, outs, routs):
        assert_close(a, b, dtype, name)


@over(RECURRENT)
@dtypes
def test_none_gradients(rng, kernel, dtype):
    """Every output's gradient may be None (zeros); all None gives zero gradients."""
    args = kernel.args(rng, 6, 3, 4, 10, dtype)
    outs, cache = kernel.forward(seqkern, args)
    _, rcache = kernel.forward(ref, to64(*args))
    d_outs = kernel.upstream(rng, outs)
    for keep in itertools.product((False, True), repeat=len(d_outs)):
        d = [a if k else None for a, k in zip(d_outs, keep)]
        assert_grads_close(kernel.backward(seqkern, d, cache),
                           kernel.backward(ref, to64(*d), rcache), dtype)
    g = kernel.backward(seqkern, [None] * len(d_outs), cache)
    assert all(not np.any(a) for a in g)


@over(RECURRENT)
@impls
def test_initial_states_none_are_zeros(rng, kernel, impl):
    mod = IMPLS[impl]
    args = kernel.args(rng, 4, 3, 2, 5)
    x, states, weights = kernel.split(args)
    none = kernel.forward(mod, [x] + [None] * len(states) + weights)[0]
    zeros = kernel.forward(mod, [x] + [np.zeros_like(s) for s in states] + weights)[0]
    assert_all_equal(none, zeros, kernel.out_names)
    assert np.any(none[0] != kernel.forward(mod, args)[0][0])


@over(KERNELS)
def test_backward_twice_same_result(rng, kernel):
    """The backward leaves the cache as it found it."""
    shape = (4, 3, 2, 5) if kernel.recurrent else (2, 4, 2, 9, 12, 5, 6)
    args, kw = kernel.inputs(rng, shape, np.float64)
    outs, cache = kernel.forward(seqkern, args, **kw)
    d_outs = kernel.upstream(rng, outs)
    g1 = kernel.backward(seqkern, d_outs, cache)
    g2 = kernel.backward(seqkern, d_outs, cache)
    assert_all_equal(g1, g2, kernel.grad_names)


@over(RECURRENT)
def test_lengths_equal_separate_sequences(rng, kernel):
    """Packed-sequence semantics, checked without the lengths code path: each
    sequence run alone for its own length gives the same outputs, states and
    gradients; a length of 0 keeps the initial states."""
    T, B, I, H = 9, 4, 3, 7
    args = kernel.args(rng, T, B, I, H)
    x, states, weights = kernel.split(args)
    lengths = np.array([9, 4, 0, 1])
    outs, cache = kernel.forward(seqkern, args, lengths=lengths)
    d_outs = kernel.upstream(rng, outs)
    g = kernel.backward(seqkern, d_outs, cache)
    acc = {k: 0 for k in ("dW_ih", "dW_hh", "db_ih", "db_hh")}
    for b, L in enumerate(lengths):
        one = slice(b, b + 1)
        ob, cb = kernel.forward(seqkern, [x[:L, one]] + [s[one] for s in states] + weights)
        assert not np.any(outs[0][L:, b]) and not np.any(g.dx[L:, b])
        assert_close(outs[0][:L, b], ob[0][:, 0], np.float64, "out", "lengths")
        for name, s_n, sb in zip(kernel.out_names[1:], outs[1:], ob[1:]):
            assert_close(s_n[b], sb[0], np.float64, name, "lengths")
            if L == 0:
                np.testing.assert_array_equal(s_n[b], sb[0])
        gb = kernel.backward(seqkern, [d_outs[0][:L, one]] + [d[one] for d in d_outs[1:]], cb)
        assert_close(g.dx[:L, b], gb.dx[:, 0], np.float64, "dx", "lengths_grad")
        for s in kernel.states:
            assert_close(getattr(g, "d" + s)[b], getattr(gb, "d" + s)[0], np.float64,
                         "d" + s, "lengths_grad")
        for k in acc:
            acc[k] = acc[k] + getattr(gb, k)
    for k, v in acc.items():
        assert_close(getattr(g, k), v, np.float64, k, "lengths_grad")


# --- NaN and Inf ------------------------------------------------------------------------

@over(RECURRENT)
@impls
@dtypes
def test_nan_propagates(rng, kernel, impl, dtype):
    """A NaN in x[1, 0] reaches every later output and the final states of sequence
    0 and the weight gradients; other sequences and earlier steps stay finite. An
    Inf in the weights gives NaN where the reference does."""
    mod = IMPLS[impl]
    T, B, I, H = 4, 3, 2, 5
    args = kernel.args(rng, T, B, I, H, dtype)
    args[0][1, 0, 0] = np.nan
    outs, cache = kernel.forward(mod, args)
    out, states = outs[0], outs[1:]
    assert np.all(np.isfinite(out[0])), "before the NaN"
    assert np.all(np.isnan(out[1:, 0])) and all(np.all(np.isnan(s[0])) for s in states)
    assert np.all(np.isfinite(out[:, 1:])) and all(np.all(np.isfinite(s[1:])) for s in states)
    d_outs = kernel.upstream(rng, outs)
    g = kernel.backward(mod, d_outs, cache)
    assert np.any(np.isnan(g.dW_ih)) and np.any(np.isnan(g.dW_hh))
    assert np.all(np.isfinite(g.dx[:, 1:]))
    if kernel.kw.get("nonlinearity") != "relu":     # relu's slope at NaN is 0
        assert np.all(np.isnan(g.dx[1, 0])) and np.any(np.isnan(g.dh0[0]))
    with np.errstate(invalid="ignore"):
        routs, rcache = kernel.forward(ref, to64(*args))
        rg = kernel.backward(ref, to64(*d_outs), rcache)
    for name, a, b in zip(kernel.out_names + kernel.grad_names, list(outs) + list(g),
                          list(routs) + list(rg)):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
    # Inf in the weights: no crash, no hang, NaN where the reference has it
    args[0][1, 0, 0] = 0
    args[-3][0, 0] = np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        outs, _ = kernel.forward(mod, args)
        routs, _ = kernel.forward(ref, to64(*args))
    for name, a, b in zip(kernel.out_names, outs, routs):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)


@over(RECURRENT)
@impls
@dtypes
def test_padding_is_never_read(rng, kernel, impl, dtype):
    """Whatever x holds past each sequence's length (padding: NaN, Inf) changes no
    output and no gradient, as with PyTorch's packed sequences: the same results,
    bit for bit, as zeros there (dW_ih sums dz_t^T x_t over every step, dz_t = 0 past
    the length: not 0 * NaN)."""
    mod = IMPLS[impl]
    T, B, I, H = 6, 3, 2, 5
    lengths = np.array([6, 2, 0])
    args = kernel.args(rng, T, B, I, H, dtype)
    d_outs, res = None, []
    for fill in (0, np.nan, np.inf):
        x = args[0].copy()
        x[2:, 1] = fill
        x[:, 2] = -fill
        with np.errstate(invalid="ignore", over="ignore"):   # the reference's padding steps
            outs, cache = kernel.forward(mod, [x] + args[1:], lengths=lengths)
            if d_outs is None:
                d_outs = kernel.upstream(rng, outs)
            res.append(list(outs) + list(kernel.backward(mod, d_outs, cache)))
    assert all(np.isfinite(a).all() for a in res[0])
    for r in res[1:]:
        assert_all_equal(r, res[0], kernel.out_names + kernel.grad_names)


# --- layouts: non-contiguous, read-only, inputs not modified ---------------------------

def _strided_read_only(a):
    """``a``'s values in a read-only view with a step of 2 along the last axis."""
    if a is None:
        return None
    big = np.zeros(a.shape + (2,), a.dtype)
    big[..., 0] = a
    v = big[..., 0]
    v.flags.writeable = False
    return v


def _fortran_read_only(a):
    if a is None:
        return None
    a = np.asfortranarray(a)
    a.flags.writeable = False
    return a


@over(KERNELS, ("shape", lambda k: [(6, 3, 4, 8), (4, 5, 3, 70)] if k.recurrent
                else [(2, 4, 2, 9, 12, 5, 6)]))
@pytest.mark.parametrize("layout", ["strided", "fortran"])
@dtypes
def test_layouts_and_inputs_not_modified(rng, kernel, shape, layout, dtype):
    """Non-contiguous read-only views of every argument give the bits of contiguous
    ones (kernel; the reference within rounding), forward, backward and steps, and
    no argument is modified."""
    change = _strided_read_only if layout == "strided" else _fortran_read_only
    args, _ = kernel.inputs(rng, shape, dtype)
    if kernel.recurrent:
        kw = dict(lengths=lengths_with_ends(rng, shape[1], shape[0]))
    else:
        kw = dict(causal=True, mask=rng.random(shape[3:5]) > 0.2, key_lengths=np.array([12, 7]))
    outs, cache = kernel.forward(seqkern, args, **kw)
    d_outs = kernel.upstream(rng, outs)
    want = list(outs) + list(kernel.backward(seqkern, d_outs, cache))
    views = [change(a) for a in args]
    d_views = [change(d) for d in d_outs]
    kw_views = {k: change(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    copies = [None if a is None else a.copy() for a in views + d_views]
    kw_copies = {k: np.copy(v) for k, v in kw.items()}
    names = kernel.out_names + kernel.grad_names
    for mod in (seqkern, ref):
        outs, cache = kernel.forward(mod, views, **kw_views)
        got = list(outs) + list(kernel.backward(mod, d_views, cache))
        if mod is seqkern:
            assert_all_equal(got, want, names)
        else:
            for name, a, b in zip(names, got, want):
                assert_close(b, a, dtype, name)
        if kernel.recurrent:
            x, states, weights = kernel.split(views)
            nxt, c = kernel.step_forward(mod, x[0], states, weights)
            kernel.step_backward(mod, [change(np.ones_like(s)) for s in nxt], c)
    assert_all_equal(views + d_views, copies, ["arg"] * len(copies))
    for k, v in kw_copies.items():
        np.testing.assert_array_equal(kw_views[k], v, err_msg=k)


# --- empty and degenerate shapes ------------------------------------------------------

EMPTY_RECURRENT = [(0, 3, 3, 5), (4, 0, 3, 5), (0, 0, 3, 5), (4, 3, 3, 0), (3, 2, 0, 4),
                   (40, 1, 0, 5),      # batch 1: past the first 16 steps
                   (3, 2, 4, 1), (3, 2, 1, 1)]
EMPTY_ATTENTION = [dict(B=0), dict(Hq=0, Hkv=0), dict(Tq=0), dict(Tk=0), dict(D=0),
                   dict(Dv=0)]


def _attention_shape(sizes):
    s = dict(B=2, Hq=2, Hkv=1, Tq=3, Tk=4, D=5, Dv=6)
    s.update(sizes)
    return tuple(s[n] for n in ("B", "Hq", "Hkv", "Tq", "Tk", "D", "Dv"))


@over(KERNELS, ("shape", lambda k: EMPTY_RECURRENT if k.recurrent
                else [_attention_shape(s) for s in EMPTY_ATTENTION]))
def test_empty_shapes(rng, kernel, shape):
    for impl in impls_of(kernel):
        for dtype in DTYPES:
            _check_empty(rng, kernel, shape, IMPLS[impl], dtype)


def _check_empty(rng, kernel, shape, mod, dtype):
    """Zero sizes give results of the right shapes, equal to the reference; no steps
    keep the initial states and pass their gradients through, with zero weight
    gradients. (I = 0: the recurrence alone; H = 1, I = 1: the smallest sizes.)"""
    args, kw = kernel.inputs(rng, shape, dtype)
    if not kernel.recurrent:
        kw = dict(causal=True)
    elif shape[0] and shape[1]:         # steps to run: from zero states, one bias
        x, states, weights = kernel.split(args)
        args = [x] + [None] * len(states) + weights[:3] + [None]
    outs, cache = kernel.forward(mod, args, **kw)
    d_outs = kernel.upstream(rng, outs)
    g = kernel.backward(mod, d_outs, cache)
    routs, rcache = kernel.forward(ref, to64(*args), **kw)
    rg = kernel.backward(ref, to64(*d_outs), rcache)
    tag = f"{mod.__name__} {np.dtype(dtype)}"
    for name, a, b in zip(kernel.out_names, outs, routs):
        assert a.dtype == dtype, f"{tag} {name}"
        assert_close(a, b, dtype, f"{tag} {name}")
    for name, a, grad, r in zip(kernel.grad_names, args, g, rg):
        assert a is None or grad.shape == a.shape, f"{tag} {name}"
        assert_close(grad, r, dtype, f"{tag} {name}")
    if kernel.recurrent and shape[0] * shape[1] == 0:
        for s0, s_n, d_s_n, s in zip(args[1:], outs[1:], d_outs[1:], kernel.states):
            np.testing.assert_array_equal(s_n, s0, err_msg=tag)
            np.testing.assert_array_equal(getattr(g, "d" + s), d_s_n, err_msg=tag)
        assert not np.any(g.dW_ih) and not np.any(g.dW_hh) and not np.any(g.db_hh), tag


# --- bad arguments: TypeError or ValueError naming the argument --------------------------

def _bad_forward_calls(kernel):
    """(label, arguments, keyword arguments, exception, message) of bad forward
    calls, from a good call of (T, B, I, H) = (3, 2, 4, 5)."""
    good = kernel.args(np.random.default_rng(0), 3, 2, 4, 5)
    names = ["x", *kernel.states, "W_ih", "W_hh", "b_ih", "b_hh"]
    g = "" if kernel.gates == 1 else str(kernel.gates)
    at = dict(zip(names, range(len(names))))

    def change(name, value):
        args = list(good)
        args[at[name]] = value
        return args

    x, W_ih, W_hh, b_ih, b_hh = (good[at[n]] for n in ("x", "W_ih", "W_hh", "b_ih", "b_hh"))
    kind = "must be a float32 or float64"
    cases = [
        ("x ndim", change("x", x[0]), {}, ValueError, "x must have 3 dimensions"),
        ("x int", change("x", x.astype(np.int64)), {}, TypeError, f"x {kind}"),
        ("x complex", change("x", x.astype(complex)), {}, TypeError, f"x {kind}"),
        ("x float16", change("x", x.astype(np.float16)), {}, TypeError, f"x {kind}"),
        ("x str", change("x", "abc"), {}, TypeError, f"x {kind}"),
        ("x None", change("x", None), {}, TypeError, f"x {kind}"),
        ("W_ih None", change("W_ih", None), {}, TypeError, f"W_ih {kind}"),
        ("W_ih rows", change("W_ih", W_ih[:-1]), {}, ValueError, f"W_ih must have shape ({g}H, I)"),
        ("W_ih gate", change("W_ih", W_ih[:-5]), {}, ValueError, f"W_ih must have shape ({g}H, I)"),
        ("W_ih cols", change("W_ih", W_ih[:, :-1]), {}, ValueError, f"W_ih must have shape ({g}H, I)"),
        ("W_hh cols", change("W_hh", W_hh[:, :-1]), {}, ValueError, f"W_hh must have shape ({g}H, H)"),
        ("W_hh rows", change("W_hh", W_hh[:-1]), {}, ValueError, f"W_hh must have shape ({g}H, H)"),
        ("b_ih shape", change("b_ih", b_ih[:-1]), {}, ValueError, f"b_ih must have shape ({g}H,)"),
        ("b_ih ndim", change("b_ih", b_ih[None]), {}, ValueError, "b_ih must have 1 dimensions"),
        ("b_hh shape", change("b_hh", b_hh[:-2]), {}, ValueError, f"b_hh must have shape ({g}H,)"),
        ("b_hh ndim", change("b_hh", b_hh[:, None]), {}, ValueError, "b_hh must have 1 dimensions"),
    ]
    if kernel.gates > 1:
        cases.append(("W_hh.T", change("W_hh", W_hh.T), {}, ValueError,
                      f"W_hh must have shape ({g}H, H)"))
    for name in names[1:]:         # x sets the dtype: every other array must share it
        a = good[at[name]]
        cases += [(f"{name} float32", change(name, a.astype(np.float32)), {}, TypeError,
                   f"{name} has dtype float32"),
                  (f"{name} int32", change(name, a.astype(np.int32)), {}, TypeError,
                   f"{name} {kind}")]
    for name in kernel.states:
        s = good[at[name]]
        cases += [(f"{name} batch", change(name, s[:1]), {}, ValueError,
                   f"{name} must have shape (B, H)"),
                  (f"{name} units", change(name, s[:, :-1]), {}, ValueError,
                   f"{name} must have shape (B, H)"),
                  (f"{name} ndim", change(name, s[None]), {}, ValueError,
                   f"{name} must have 2 dimensions")]
    kw_cases = [
        ("lengths range", dict(lengths=[1, 4]), ValueError, "lengths must lie in [0, T]"),
        ("lengths negative", dict(lengths=[-1, 2]), ValueError, "lengths must lie in [0, T]"),
        ("lengths shape", dict(lengths=[1, 2, 3]), ValueError, "lengths must have shape (B,)"),
        ("lengths float", dict(lengths=[1.0, 2.0]), TypeError, "lengths must be an integer"),
        ("lengths bool", dict(lengths=[True, False]), TypeError, "lengths must be an integer"),
        ("batch_first str", dict(batch_first="yes"), TypeError, "batch_first must be True or False"),
        ("batch_first int", dict(batch_first=1), TypeError, "batch_first must be True or False"),
        ("return_cache str", dict(return_cache="yes"), TypeError, "return_cache must be True or False"),
        ("return_cache None", dict(return_cache=None), TypeError, "return_cache must be True or False"),
    ]
    if kernel.name == "rnn":
        kw_cases.append(("nonlinearity", dict(nonlinearity="sigmoid"), ValueError,
                         "nonlinearity must be one of"))
    cases += [(label, good, kw, exc, msg) for label, kw, exc, msg in kw_cases]
    return cases


def _raises(exc, msg, label, fn, *args, **kw):
    """``fn(*args, **kw)`` raises ``exc`` with ``msg`` in its message."""
    try:
        fn(*args, **kw)
    except exc as e:
        assert msg in str(e), f"{label}: {e}"
    else:
        pytest.fail(f"{label}: no {exc.__name__}")


# (the RNN's tanh and relu share one argument check: relu stands for both)
@over(RECURRENT[1:])
@impls
def test_bad_forward_arguments_named(kernel, impl):
    forward = getattr(IMPLS[impl], f"{kernel.name}_forward")
    for label, args, kw, exc, msg in _bad_forward_calls(kernel):
        _raises(exc, msg, label, forward, *args, **{**kernel.kw, **kw})


@over(RECURRENT[1:])
@impls
def test_bad_backward_and_step_arguments_named(rng, kernel, impl):
    mod = IMPLS[impl]
    other = ref if mod is seqkern else seqkern
    name = kernel.name
    producer = ("" if mod is seqkern else "seqkern.reference.") + name
    args = kernel.args(rng, 3, 2, 4, 5)
    x, states, weights = kernel.split(args)
    outs, cache = kernel.forward(mod, args)
    d_outs = [np.ones_like(o) for o in outs]
    backward = getattr(mod, f"{name}_backward")

    def bad(i, value):
        d = list(d_outs)
        d[i] = value
        return d

    for i, (dname, legend) in enumerate([("d_out", "(T, B, H)"), ("d_h_n", "(B, H)"),
                                         ("d_c_n", "(B, H)")][:len(outs)]):
        d = d_outs[i]
        for value, exc, msg in [(d[..., :-1], ValueError, f"{dname} must have shape {legend}"),
                                (d[None], ValueError, f"{dname} must have {d.ndim} dimensions"),
                                (d.astype(np.float32), TypeError, f"{dname} has dtype float32"),
                                (d.astype(np.int64), TypeError, f"{dname} must be a float32"),
                                (d.astype(np.complex64), TypeError, f"{dname} must be a float32")]:
            with pytest.raises(exc, match=escape(msg)):
                backward(*bad(i, value), cache)
    if len(outs[0]) != outs[0].shape[1]:
        with pytest.raises(ValueError, match="d_out must have shape"):
            backward(*bad(0, d_outs[0].transpose(1, 0, 2)), cache)
    # caches from elsewhere
    other_kernel = GRU if kernel is not GRU else RNN_TANH
    other_cache = other_kernel.forward(mod, other_kernel.args(rng, 3, 2, 4, 5))[1]
    _, step_cache = kernel.step_forward(mod, x[0], states, weights)
    for c in (None, kernel.forward(mod, args, return_cache=False)[1], step_cache, other_cache,
              kernel.forward(other, args)[1], "cache", 3):
        with pytest.raises(TypeError, match=escape(f"cache must be the cache returned by "
                                                   f"{producer}_forward")):
            backward(*d_outs, c)
    # step calls
    step_backward = getattr(mod, f"{name}_step_backward")
    nxt, _ = kernel.step_forward(mod, x[0], states, weights)
    d_next = [np.ones_like(s) for s in nxt]
    rest = d_next[1:]
    for value, exc in [(None, TypeError), (d_next[0][:, :-1], ValueError),
                       (d_next[0].astype(np.float32), TypeError), ("abc", TypeError)]:
        with pytest.raises(exc, match="dh_next"):
            step_backward(value, *rest, step_cache)
    if len(nxt) > 1:
        with pytest.raises(ValueError, match="dc_next"):
            step_backward(d_next[0], d_next[1][:, :-1], step_cache)
    for c in (cache, other_cache, None):
        with pytest.raises(TypeError, match=escape(f"cache must be the cache returned by "
                                                   f"{producer}_step_forward")):
            step_backward(*d_next, c)
    step_forward = getattr(mod, f"{name}_step_forward")
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        step_forward(x, *states, *weights, **kernel.kw)
    for i, s in enumerate(kernel.states):
        prev = s[0] + "_prev"
        bad_states = list(states)
        bad_states[i] = states[i][:1]
        with pytest.raises(ValueError, match=escape(f"{prev} must have shape (B, H)")):
            step_forward(x[0], *bad_states, *weights, **kernel.kw)
    with pytest.raises(TypeError, match="W_hh has dtype float32"):
        step_forward(x[0], *states, weights[0], weights[1].astype(np.float32), *weights[2:],
                     **kernel.kw)
