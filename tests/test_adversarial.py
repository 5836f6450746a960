"""Adversarial probes of every public function, kept as tests (issue 17, item 6).

Categories: bad arguments; memory layouts (non-contiguous, negative strides,
Fortran order, read-only, unaligned, memory maps); zero sizes; NaN and Inf in
inputs, weights and states; saturated activations; sizes past the kernels' int
limits (on zero-page memory maps: no real memory); threads, interrupts, fork
and thread counts. A probe that could crash or hang runs in a subprocess with a
timeout. Attention's masked keys and extreme scores are tested in
test_attention.py; here it gets bad arguments, layouts, zero sizes and huge sizes.
"""

import os
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqkern
from seqkern import reference as ref

from helpers import DTYPES, WAIT_CHILD, tol

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
SRC = os.path.dirname(os.path.dirname(os.path.abspath(seqkern.__file__)))


def run_python(code, timeout, env=None, args=()):
    """Run ``code`` in a fresh interpreter that imports this seqkern; returns
    the CompletedProcess (pytest fails the test on a timeout)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


# ---------------------------------------------------------------------------
# Argument builders shared by the categories
# ---------------------------------------------------------------------------

def recurrent_args(kind, dtype, T=4, B=3, I=5, H=6, seed=0):
    """Positional arguments of ``{kind}_forward``: x, the states, W_ih, W_hh, b_ih, b_hh
    (states nonzero, so that an Inf weight meets no exact zero)."""
    rng = np.random.default_rng(seed)
    G = GATES[kind] * H
    n_states = 2 if kind == "lstm" else 1
    arrays = [rng.standard_normal((T, B, I))]
    arrays += [rng.standard_normal((B, H)) * 0.5 for _ in range(n_states)]
    arrays += [rng.standard_normal((G, I)) * 0.4, rng.standard_normal((G, H)) * 0.4,
               rng.standard_normal(G) * 0.1, rng.standard_normal(G) * 0.1]
    return [a.astype(dtype) for a in arrays]


def arg_names(kind):
    states = ["h0", "c0"] if kind == "lstm" else ["h0"]
    return ["x"] + states + ["W_ih", "W_hh", "b_ih", "b_hh"]


def run_recurrent(mod, kind, args, change=None, **kw):
    """Forward, then backward with all-ones gradients of every output (passed
    through ``change``, a layout, if given): the outputs followed by every
    gradient that is not None."""
    res = getattr(mod, f"{kind}_forward")(*args, **kw)
    outs, cache = list(res[:-1]), res[-1]
    d = [np.ones_like(o) if change is None else change(np.ones_like(o)) for o in outs]
    grads = getattr(mod, f"{kind}_backward")(*d, cache)
    return outs + [g for g in grads if g is not None]


def attention_args(dtype, B=2, Hq=4, Hkv=2, Tq=5, Tk=7, D=6, Dv=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype)
            for s in [(B, Hq, Tq, D), (B, Hkv, Tk, D), (B, Hkv, Tk, Dv)]]


def run_attention(mod, args, change=None, **kw):
    out, cache = mod.attention_forward(*args, **kw)
    d_out = np.ones_like(out) if change is None else change(np.ones_like(out))
    return [out] + list(mod.attention_backward(d_out, cache))


def names(exc_info, name):
    """Whether the exception's message names ``name`` (as a word of its own)."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", str(exc_info.value)) is not None


def close(actual, expected, dtype, rtol=None, atol=None):
    rtol = rtol if rtol is not None else tol(dtype)["rtol"]
    atol = atol if atol is not None else tol(dtype)["atol"]
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"result {i}: shape {a.shape} != {e.shape}"
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"result {i}")


# ---------------------------------------------------------------------------
# 1. Bad arguments: TypeError for a wrong kind or dtype, ValueError for a wrong
#    shape or value, and the message names the argument
# ---------------------------------------------------------------------------

def _bad_array_values(shape, dtype):
    """(label, value, exception) for an array argument of ``shape``."""
    other = np.float32 if dtype == np.float64 else np.float64
    cases = [
        ("str", "abc", TypeError),
        ("str-list", [["a", "b"]], TypeError),
        ("ragged", [[1.0], [1.0, 2.0]], (TypeError, ValueError)),
        ("object", np.array([None, 1.0], dtype=object), TypeError),
        ("int", np.ones(shape, np.int64), TypeError),
        ("bool", np.ones(shape, bool), TypeError),
        ("complex", np.ones(shape, np.complex128), TypeError),
        ("float16", np.ones(shape, np.float16), TypeError),
        ("big-endian", np.ones(shape, np.dtype(dtype).newbyteorder(">")), TypeError),
        ("other-float", np.ones(shape, other), TypeError),
        ("scalar", 1.0, ValueError),
        ("extra-axis", np.ones((1,) + shape, dtype), ValueError),
    ]
    for axis in range(len(shape)):
        s = list(shape)
        s[axis] += 1
        cases.append((f"axis{axis}+1", np.ones(s, dtype), ValueError))
    return cases


def _recurrent_bad_cases():
    dtype = np.float64
    for kind in GATES:
        good = recurrent_args(kind, dtype)
        for i, name in enumerate(arg_names(kind)):
            shape = good[i].shape
            values = _bad_array_values(shape, dtype)
            if name == "x":           # x defines T, B, I and the dtype: only kind and rank are its
                values = [v for v in values
                          if not v[0].startswith("axis") and v[0] != "other-float"]
            if name == "W_hh":        # W_hh defines H: a wrong row count is its own
                values = [v for v in values if v[0] != "axis1+1"]
            if name in ("x", "W_ih", "W_hh"):
                values.append(("None", None, TypeError))
            for label, value, exc in values:
                args = list(good)
                args[i] = value
                yield kind, f"{kind}_forward-{name}-{label}", name, args, {}, exc
        kw_cases = [
            ("batch_first", "yes", TypeError), ("batch_first", 1, TypeError),
            ("batch_first", None, TypeError), ("return_cache", "no", TypeError),
            ("lengths", [1.5, 2.0, 1.0], TypeError), ("lengths", [True] * 3, TypeError),
            ("lengths", ["a"] * 3, TypeError), ("lengths", [1, 2], ValueError),
            ("lengths", [[1, 2, 3]], ValueError), ("lengths", [1, -1, 2], ValueError),
            ("lengths", [1, 5, 2], ValueError),
        ]
        if kind == "rnn":
            kw_cases += [("nonlinearity", "sigmoid", ValueError),
                         ("nonlinearity", None, ValueError), ("nonlinearity", 1, ValueError)]
        for name, value, exc in kw_cases:
            yield kind, f"{kind}_forward-{name}={value!r}", name, good, {name: value}, exc


@pytest.mark.parametrize("mod", [seqkern, ref], ids=["kernel", "reference"])
@pytest.mark.parametrize("kind,label,name,args,kw,exc", list(_recurrent_bad_cases()),
                         ids=[c[1] for c in _recurrent_bad_cases()])
def test_recurrent_forward_rejects(mod, kind, label, name, args, kw, exc):
    with pytest.raises(exc) as info:
        getattr(mod, f"{kind}_forward")(*args, **kw)
    assert names(info, name), str(info.value)


@pytest.mark.parametrize("mod", [seqkern, ref], ids=["kernel", "reference"])
@pytest.mark.parametrize("kind", list(GATES))
def test_recurrent_backward_and_steps_reject(mod, kind):
    dtype = np.float64
    fwd = getattr(mod, f"{kind}_forward")
    bwd = getattr(mod, f"{kind}_backward")
    args = recurrent_args(kind, dtype)
    res = fwd(*args)
    outs, cache = list(res[:-1]), res[-1]
    grads = [np.ones_like(o) for o in outs]
    other = "gru" if kind != "gru" else "rnn"
    other_cache = getattr(mod, f"{other}_forward")(*recurrent_args(other, dtype))[-1]
    n = len(grads)
    checks = [(i, "cache", v, TypeError) for i, v in [(n, None), (n, "cache"), (n, other_cache)]]
    for i, name in enumerate(["d_out", "d_h_n", "d_c_n"][:n]):
        checks += [(i, name, np.ones(grads[i].shape, np.float32), TypeError),
                   (i, name, "abc", TypeError),
                   (i, name, np.ones(grads[i].shape[:-1] + (7,)), ValueError),
                   (i, name, np.ones((1,) + grads[i].shape), ValueError)]
    for i, name, value, exc in checks:
        call = grads + [cache]
        call[i] = value
        with pytest.raises(exc) as info:
            bwd(*call)
        assert names(info, name), (name, str(info.value))
    with pytest.raises(TypeError, match="cache"):
        bwd(*grads, fwd(*args, return_cache=False)[-1])

    # the step functions
    step_args = [args[0][0]] + [s for s in args[1:len(arg_names(kind)) - 4]] + args[-4:]
    sfwd = getattr(mod, f"{kind}_step_forward")
    sbwd = getattr(mod, f"{kind}_step_backward")
    state_names = ["h_prev", "c_prev"] if kind == "lstm" else ["h_prev"]
    for i, name in enumerate(["x"] + state_names):
        for value, exc in [(args[0], ValueError), ("abc", TypeError),
                           (np.ones(step_args[i].shape, np.float32), TypeError)][:3 if i else 2]:
            bad = list(step_args)
            bad[i] = value
            with pytest.raises(exc) as info:
                sfwd(*bad)
            assert names(info, name), (name, str(info.value))
    res = sfwd(*step_args)
    scache = res[-1]
    dh = np.ones_like(res[0])
    extra = [None] if kind == "lstm" else []
    for value, exc in [(None, TypeError), (np.ones((3, 7)), ValueError), ("abc", TypeError)]:
        with pytest.raises(exc, match="dh_next"):
            sbwd(value, *extra, scache)
    with pytest.raises(TypeError, match="cache"):
        sbwd(dh, *extra, cache)                 # a sequence's cache, not a step's


def _attention_bad_cases():
    dtype = np.float64
    good = attention_args(dtype)
    for i, name in enumerate(["q", "k", "v"]):
        bad_values = _bad_array_values(good[i].shape, dtype) + [("None", None, TypeError)]
        for label, value, exc in bad_values:
            if name == "q" and (label.startswith("axis") or label == "other-float"):
                continue                  # q defines B, Hq, Tq, D and the dtype
            if name == "v" and label == "axis3+1":
                continue                  # v defines Dv
            if name == "k" and label in ("axis1+1",):
                continue                  # Hkv = 3 does not divide Hq = 4: names Hq and Hkv
            args = list(good)
            args[i] = value
            yield f"{name}-{label}", name, args, {}, exc
    for name, value, exc in [
        ("causal", "yes", TypeError), ("causal", None, TypeError),
        ("return_cache", 1, TypeError),
        ("mask", np.ones((5, 7), np.int64), TypeError), ("mask", "abc", TypeError),
        ("mask", np.ones((5, 8), bool), ValueError),
        ("mask", np.ones((1, 1, 1, 1, 1), bool), ValueError),
        ("key_lengths", [1.5, 2.0], TypeError), ("key_lengths", [1, 2, 3], ValueError),
        ("key_lengths", [1, 8], ValueError), ("key_lengths", [-1, 2], ValueError),
        ("scale", "1", TypeError), ("scale", True, TypeError), ("scale", 1j, TypeError),
    ]:
        yield f"{name}={value!r}"[:40], name, good, {name: value}, exc


@pytest.mark.parametrize("mod", [seqkern, ref], ids=["kernel", "reference"])
@pytest.mark.parametrize("label,name,args,kw,exc", list(_attention_bad_cases()),
                         ids=[c[0] for c in _attention_bad_cases()])
def test_attention_forward_rejects(mod, label, name, args, kw, exc):
    with pytest.raises(exc) as info:
        mod.attention_forward(*args, **kw)
    assert names(info, name), str(info.value)


@pytest.mark.parametrize("mod", [seqkern, ref], ids=["kernel", "reference"])
def test_attention_backward_rejects(mod):
    args = attention_args(np.float64)
    out, cache = mod.attention_forward(*args)
    for value, exc in [(None, TypeError), ("abc", TypeError), (out.astype(np.float32), TypeError),
                       (np.ones(out.shape[:-1] + (4,)), ValueError), (out[0], ValueError)]:
        with pytest.raises(exc, match="d_out"):
            mod.attention_backward(value, cache)
    rnn_cache = mod.rnn_forward(*recurrent_args("rnn", np.float64))[-1]
    for value in [None, "cache", rnn_cache, mod.attention_forward(*args, return_cache=False)[1]]:
        with pytest.raises(TypeError, match="cache"):
            mod.attention_backward(out, value)


@pytest.mark.parametrize("bad,exc", [
    (0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError),
    (None, TypeError), (np.float64(2), TypeError), (10**6, ValueError), (2**31, ValueError),
    (2**64, ValueError),
])
def test_thread_counts_rejected(bad, exc):
    n0 = seqkern.get_num_threads()
    try:
        for f in (seqkern.set_num_threads, seqkern.threads):
            with pytest.raises(exc, match=r"\bn\b"):
                f(bad)
        assert seqkern.get_num_threads() == n0
    finally:                                  # whatever happened, later tests get n0
        seqkern.set_num_threads(n0)


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), ("1", TypeError),
                                     (True, TypeError), (None, None), (2**64, ValueError),
                                     (2**70, ValueError)])
def test_workspace_limit_rejects(bad, exc):
    old = seqkern.workspace_limit()
    try:
        if exc is None:                       # None only reads the limit
            assert seqkern.workspace_limit(bad) == old
        else:
            with pytest.raises(exc, match="limit"):
                seqkern.workspace_limit(bad)
            assert seqkern.workspace_limit() == old
    finally:
        seqkern.workspace_limit(old)


# ---------------------------------------------------------------------------
# 2. Layouts: any strides, order, writeability or file backing gives the results
#    of the same values in a C-contiguous array
# ---------------------------------------------------------------------------

def _strided(a):
    """``a``'s values in a view with a step of 2 along the last axis."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
    big[..., 1::2] = a
    return big[..., 1::2]


def _negative(a):
    """``a``'s values in a view with negative strides along every axis."""
    flipped = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
    return flipped[(slice(None, None, -1),) * a.ndim]


def _readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def _offset(a):
    """``a``'s values one element past the start of a larger array (aligned to
    the element, not to a vector or a cache line)."""
    big = np.zeros(a.size + 1, a.dtype)
    view = big[1:].reshape(a.shape)
    view[...] = a
    return view


LAYOUTS = {
    "strided": _strided,
    "negative": _negative,
    "fortran": np.asfortranarray,
    "readonly": _readonly,
    "offset": _offset,
}


def _memmapped(tmp_path):
    counter = [0]

    def to_memmap(a):
        counter[0] += 1
        path = tmp_path / f"a{counter[0]}.bin"
        a.tofile(path)
        return np.memmap(path, a.dtype, "r", shape=a.shape)
    return to_memmap


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS) + ["memmap"])
@pytest.mark.parametrize("kind", list(GATES) + ["attention"])
def test_layouts_give_contiguous_results(kind, layout, dtype, tmp_path):
    change = _memmapped(tmp_path) if layout == "memmap" else LAYOUTS[layout]
    tight = dict(rtol=1e-5 if dtype == np.float32 else 1e-12, atol=0)
    if kind == "attention":
        args = attention_args(dtype)
        mask = np.random.default_rng(1).random((5, 7)) < 0.8
        expected = run_attention(seqkern, args, mask=mask)
        got = run_attention(seqkern, [change(a) for a in args], change, mask=change(mask))
        close(got, expected, dtype, **tight)
        return
    args = recurrent_args(kind, dtype)
    expected = run_recurrent(seqkern, kind, args)
    changed = [change(a) for a in args]
    assert all(np.array_equal(a, b) for a, b in zip(args, changed))
    close(run_recurrent(seqkern, kind, changed, change), expected, dtype, **tight)
    # batch_first from a transposed (non-contiguous) view of the same x
    xb = change(np.ascontiguousarray(args[0].transpose(1, 0, 2)))
    got = run_recurrent(seqkern, kind, [xb] + changed[1:], change, batch_first=True)
    n_outs = 3 if kind == "lstm" else 2       # out, h_n (, c_n); then dx
    got[0] = got[0].transpose(1, 0, 2)
    got[n_outs] = got[n_outs].transpose(1, 0, 2)
    close(got, expected, dtype, **tight)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_mix_of_layouts(data):
    """Each argument in a layout of its own (hypothesis), small and empty sizes."""
    kind = data.draw(st.sampled_from(list(GATES)), label="kind")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    T, B, I, H = (data.draw(st.integers(lo, hi), label=name)
                  for name, lo, hi in [("T", 0, 5), ("B", 0, 4), ("I", 0, 6), ("H", 1, 7)])
    args = recurrent_args(kind, dtype, T, B, I, H)
    layouts = list(LAYOUTS) + ["as is"]
    changed = []
    for a, name in zip(args, arg_names(kind)):
        layout = data.draw(st.sampled_from(layouts), label=name)
        changed.append(a if layout == "as is" else LAYOUTS[layout](a))
    close(run_recurrent(seqkern, kind, changed), run_recurrent(seqkern, kind, args), dtype,
          rtol=1e-5 if dtype == np.float32 else 1e-12, atol=0)


def test_unaligned_arrays_in_a_subprocess():
    """Arrays whose data start at an odd byte offset (the kernels' C code reads
    through float* / double*, which C requires aligned): same results as aligned."""
    code = """
    import numpy as np
    import seqkern

    def unaligned(a):
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = np.frombuffer(buf.data, np.uint8, a.nbytes, offset=1).view(a.dtype).reshape(a.shape)
        u[...] = a
        assert not u.flags.aligned
        return u

    def run(kind, args):
        res = getattr(seqkern, kind + "_forward")(*args)
        outs, cache = list(res[:-1]), res[-1]
        g = getattr(seqkern, kind + "_backward")(*[unaligned(np.ones_like(o)) for o in outs], cache)
        return outs + [a for a in g if a is not None]

    for dt in (np.float32, np.float64):
        rng = np.random.default_rng(0)
        tol = 1e-5 if dt == np.float32 else 1e-12
        for kind, G in (("rnn", 1), ("lstm", 4), ("gru", 3)):
            T, B, I, H = 20, 3, 37, 70
            args = [rng.standard_normal((T, B, I))]
            args += [rng.standard_normal((B, H))] * (2 if kind == "lstm" else 1)
            args += [rng.standard_normal((G * H, I)) * 0.2, rng.standard_normal((G * H, H)) * 0.2,
                     rng.standard_normal(G * H), rng.standard_normal(G * H)]
            args = [a.astype(dt) for a in args]
            for e, g in zip(run(kind, args), run(kind, [unaligned(a) for a in args])):
                np.testing.assert_allclose(g, e, rtol=tol, atol=0)
        q, k, v = (rng.standard_normal(s).astype(dt)
                   for s in [(2, 2, 33, 16), (2, 2, 40, 16), (2, 2, 40, 5)])
        out, cache = seqkern.attention_forward(q, k, v, causal=True)
        uout, ucache = seqkern.attention_forward(unaligned(q), unaligned(k), unaligned(v),
                                                 causal=True)
        np.testing.assert_allclose(uout, out, rtol=tol, atol=0)
        for e, g in zip(seqkern.attention_backward(np.ones_like(out), cache),
                        seqkern.attention_backward(unaligned(np.ones_like(out)), ucache)):
            np.testing.assert_allclose(g, e, rtol=tol, atol=0)
    print("ok")
    """
    p = run_python(code, timeout=120)
    assert p.returncode == 0 and "ok" in p.stdout, p.stdout + p.stderr


# ---------------------------------------------------------------------------
# 3. Zero sizes: every axis of size 0, forward and backward, as the reference
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(GATES))
@pytest.mark.parametrize("T,B,I,H", [(0, 3, 5, 6), (4, 0, 5, 6), (4, 3, 0, 6), (4, 3, 5, 0),
                                     (0, 0, 0, 0), (1, 1, 0, 1)])
def test_recurrent_zero_sizes(kind, dtype, T, B, I, H):
    args = recurrent_args(kind, dtype, T, B, I, H)
    got = run_recurrent(seqkern, kind, args, lengths=np.zeros(B, np.int64) if B else None)
    close(got, run_recurrent(ref, kind, args, lengths=np.zeros(B, np.int64) if B else None), dtype)
    close(run_recurrent(seqkern, kind, args), run_recurrent(ref, kind, args), dtype)
    step = [args[0][0] if T else np.zeros((B, I), dtype)] + args[1:]
    results = []
    for mod in (seqkern, ref):
        res = getattr(mod, f"{kind}_step_forward")(*step)
        extra = [np.ones_like(res[1])] if kind == "lstm" else []
        grads = getattr(mod, f"{kind}_step_backward")(np.ones_like(res[0]), *extra, res[-1])
        results.append(list(res[:-1]) + [g for g in grads if g is not None])
    close(*results, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [dict(B=0), dict(Hq=0, Hkv=0), dict(Hq=0), dict(Tq=0),
                                   dict(Tk=0), dict(D=0), dict(Dv=0), dict(Tq=0, Tk=0)])
def test_attention_zero_sizes(dtype, sizes):
    args = attention_args(dtype, **sizes)
    for causal in (False, True):
        close(run_attention(seqkern, args, causal=causal),
              run_attention(ref, args, causal=causal), dtype)


# ---------------------------------------------------------------------------
# 4. NaN and Inf in inputs, weights and states propagate as in the reference
# ---------------------------------------------------------------------------

def assert_same_nonfinite(got, want, dtype, where):
    """Each got[j] is NaN, +Inf, -Inf or finite exactly where want[j] is (the
    reference, in float64), the finite ones close."""
    for j, (g, w) in enumerate(zip(got, want)):
        at = f"{where}: result {j}"
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=at + " NaN")
        np.testing.assert_array_equal(np.isposinf(g), np.isposinf(w), err_msg=at + " +Inf")
        np.testing.assert_array_equal(np.isneginf(g), np.isneginf(w), err_msg=at + " -Inf")
        fin = np.isfinite(w)
        close([g[fin]], [w[fin].astype(g.dtype)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", list(GATES))
def test_nonfinite_placement(kind, value, dtype):
    """One NaN or Inf in each argument in turn: the kernel's outputs and
    gradients are NaN, +Inf, -Inf or finite exactly where the reference's are
    (the reference runs in float64 on the same values), finite ones close."""
    base = recurrent_args(kind, dtype)
    for i, name in enumerate(arg_names(kind)):
        args = [a.copy() for a in base]
        args[i][(1,) * args[i].ndim] = value
        got = run_recurrent(seqkern, kind, args)
        with np.errstate(all="ignore"):
            want = run_recurrent(ref, kind, [a.astype(np.float64) for a in args])
        assert_same_nonfinite(got, want, dtype, f"{name}={value}")


@pytest.mark.parametrize("mode", ["auto", "blas", "packed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(GATES))
def test_nonfinite_weights_reach_no_gradient_through_padding(kind, dtype, mode):
    """With lengths, an Inf in W_hh or W_ih: the steps past a sequence's length take
    no product with them (0 * Inf would be NaN), so the gradients are NaN, Inf or
    finite where the reference's are (which keeps such a row's carry, as PyTorch's
    packed sequences do), and dx is 0 there. The kernels made every gradient NaN
    (the carry of ended rows took 0 * Inf) and dx NaN at the padding."""
    from seqkern._step_gemm import step_gemm

    # one step taken (or none): the Inf saturates that step's gates, so the
    # gradients there are finite, and the other steps are padding; batch 1 takes
    # the kernels' one-row paths (the LSTM's interleaved one where packed)
    T = 4
    for name, lengths in (("W_ih", [1, 0, 1]), ("W_hh", [1, 0, 1]), ("W_hh", [1])):
        lengths = np.array(lengths)
        args = recurrent_args(kind, dtype, T=T, B=len(lengths), I=3, H=4, seed=1)
        i = arg_names(kind).index(name)
        args[i][0, 1] = np.inf
        with step_gemm(mode):
            got = run_recurrent(seqkern, kind, args, lengths=lengths)
        with np.errstate(all="ignore"):
            want = run_recurrent(ref, kind, [a.astype(np.float64) for a in args],
                                 lengths=lengths)
        n_out = 3 if kind == "lstm" else 2
        dx, want_dx = got[n_out], want[n_out]
        pad = np.arange(T)[:, None] >= lengths
        assert (dx[pad] == 0).all() and (want_dx[pad] == 0).all(), name
        n_states = 2 if kind == "lstm" else 1
        weights = np.concatenate([w.ravel() for w in want[n_out + 1 + n_states:]])
        assert np.isfinite(weights).any(), name      # (the kernels' were all NaN)
        assert_same_nonfinite(got, want, dtype, f"{name}=inf, lengths {lengths}")


@pytest.mark.parametrize("mode", ["auto", "blas", "packed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(GATES))
def test_nonfinite_state_of_an_empty_sequence_reaches_no_weight_gradient(kind, dtype, mode):
    """A sequence of length 0 takes no step: its h0 (here NaN, or Inf) meets no weight,
    so the weight gradients stay finite, as in the reference, and its dh0 is d_h_n's;
    the kernels and the reference made dW_hh NaN through 0 * NaN in dz_0^T h0."""
    from seqkern._step_gemm import step_gemm

    for value, lengths in ((np.nan, [3, 0, 2]), (np.inf, [0])):
        args = recurrent_args(kind, dtype, T=3, B=len(lengths), I=3, H=4, seed=2)
        args[1][list(lengths).index(0), 1] = value               # h0 of the empty sequence
        with step_gemm(mode):
            got = run_recurrent(seqkern, kind, args, lengths=np.array(lengths))
        with np.errstate(all="ignore"):
            want = run_recurrent(ref, kind, [a.astype(np.float64) for a in args],
                                 lengths=np.array(lengths))
        n_grads = 7 if kind == "lstm" else 6         # dx, the states', the weights', the biases'
        assert_same_nonfinite(got[-n_grads:], want[-n_grads:], dtype,
                              f"h0 = {value}, lengths {lengths}, gradients")
        n_states = 2 if kind == "lstm" else 1
        weights = want[-n_grads + 1 + n_states:]
        assert np.isfinite(np.concatenate([w.ravel() for w in weights])).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_infinite_state_gives_nan_as_the_reference(dtype):
    """h0[0, 0] = inf: the reset gate's sigmoid(-inf) must be exactly 0, so that
    r * (h W_hn^T) is 0 * inf = NaN as in the reference (and PyTorch); with
    sigmoid(-inf) ~ 3e-308 the kernel's outputs were finite (+-1) from step 1."""
    rng = np.random.default_rng(3)
    T, B, I, H = 3, 2, 4, 5
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    h0[0, 0] = np.inf
    W_ih = (rng.standard_normal((3 * H, I)) * 0.5).astype(dtype)
    W_hh = (rng.standard_normal((3 * H, H)) * 0.5).astype(dtype)
    out, h_n, _ = seqkern.gru_forward(x, h0, W_ih, W_hh)
    with np.errstate(invalid="ignore"):
        r_out, r_h_n, _ = ref.gru_forward(x.astype(np.float64), h0.astype(np.float64),
                                          W_ih.astype(np.float64), W_hh.astype(np.float64))
    assert np.isnan(r_out[:, 0]).any()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(r_out))
    np.testing.assert_array_equal(np.isnan(h_n), np.isnan(r_h_n))


# ---------------------------------------------------------------------------
# 5. Saturation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_saturated_gates_give_exactly_zero_gradients(kind, dtype):
    """Inputs near the top of the dtype's range saturate every gate: sigmoid is
    exactly 0 or 1 and tanh exactly +-1, so every gradient that passes through a
    gate's derivative (dx and the weight and bias gradients) is exactly 0, as in
    the reference (sigmoid(-1e300) ~ 3e-308 made dW_ih ~ 2.6e-7)."""
    huge = 1e300 if dtype == np.float64 else 1e30
    rng = np.random.default_rng(4)
    T, B, I, H = 3, 2, 4, 5
    args = recurrent_args(kind, dtype, T, B, I, H, seed=4)
    args[0] = (np.sign(rng.standard_normal((T, B, I))) * huge).astype(dtype)
    args[-4] = args[-4] / I                   # |x W_ih^T| stays below the dtype's max
    results = {}
    for name, mod, a in [("kernel", seqkern, args),
                         ("reference", ref, [a.astype(np.float64) for a in args])]:
        res = getattr(mod, f"{kind}_forward")(*a)
        outs, cache = list(res[:-1]), res[-1]
        grads = getattr(mod, f"{kind}_backward")(*[np.ones_like(o) for o in outs], cache)
        results[name] = outs, grads
    (outs, grads), (r_outs, r_grads) = results["kernel"], results["reference"]
    close(outs, r_outs, dtype)
    for field in ("dx", "dW_ih", "dW_hh", "db_ih", "db_hh"):
        np.testing.assert_array_equal(getattr(r_grads, field), 0, err_msg="reference " + field)
        np.testing.assert_array_equal(getattr(grads, field), 0, err_msg=field)
    close([grads.dh0], [r_grads.dh0], dtype)          # through z h (GRU) and W_hh: not 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(GATES))
def test_large_weights_saturate_as_the_reference(kind, dtype):
    args = recurrent_args(kind, dtype, T=6, seed=5)
    args[-4] = args[-4] * 60
    args[-3] = args[-3] * 60
    close(run_recurrent(seqkern, kind, args),
          run_recurrent(ref, kind, [a.astype(np.float64) for a in args]), dtype,
          rtol=1e-3 if dtype == np.float32 else 1e-8, atol=1e-3 if dtype == np.float32 else 1e-9)


# ---------------------------------------------------------------------------
# 6. Sizes past the kernels' int limit, on zero-page memory maps
# ---------------------------------------------------------------------------

# Inside a probe: zeros(*shape), float32 zeros as read-only maps of sparse files in
# ``folder`` (no memory, no disk, and not counted against RLIMIT_DATA), and
# outcome(call), what a call did, as a string.
SPARSE_ZEROS = """

# The machine would not map an input that large (seen under QEMU's user-mode
# emulation, whose own bookkeeping of a guest's maps counts against RLIMIT_DATA).
class Unmappable(Exception):
    pass


def outcome(call):
    # what call() did: "returned", "unmappable: ...", or "<its error>: <message>"
    try:
        call()
        return "returned"
    except Unmappable as e:
        return f"unmappable: {e}"
    except BaseException as e:
        return f"{type(e).__name__}: {e}"


def zeros(*shape):
    path = os.path.join(folder, f"{len(os.listdir(folder))}.bin")
    with open(path, "wb") as f:
        f.truncate(max(int(np.prod(shape, dtype=object)) * 4, 1))
    try:
        return np.memmap(path, np.float32, "r", shape=shape)
    except OSError as e:
        raise Unmappable(f"{shape}: {e}") from e
"""

HUGE_PROBE = """
import json, os, resource, sys
import numpy as np

# Real allocations of that size fail with MemoryError instead of taking the
# machine's memory (read-only file maps do not count against RLIMIT_DATA).
resource.setrlimit(resource.RLIMIT_DATA, (6 << 30, 6 << 30))

import seqkern
from seqkern import reference as ref

folder = sys.argv[1]
BIG = 2**31 + 8
f32 = np.float32

""" + SPARSE_ZEROS + """

def small(*shape):
    return np.zeros(shape, f32)


def stride0(*shape):
    return np.lib.stride_tricks.as_strided(np.zeros(1, f32), shape, (0,) * len(shape))


cases = {
    "rnn I": lambda: seqkern.rnn_forward(zeros(1, 1, BIG), None, zeros(1, BIG), small(1, 1)),
    "rnn I 2**32": lambda: seqkern.rnn_forward(zeros(1, 1, 2**32 + 8), None, zeros(1, 2**32 + 8),
                                               small(1, 1)),
    "rnn B": lambda: seqkern.rnn_forward(zeros(1, BIG, 1), None, small(1, 1), small(1, 1)),
    "rnn T * B": lambda: seqkern.rnn_forward(zeros(2**16, 2**15 + 8, 1), None, small(1, 1),
                                             small(1, 1)),
    "rnn B batch_first": lambda: seqkern.rnn_forward(zeros(BIG, 1, 1), None, small(1, 1),
                                                     small(1, 1), batch_first=True),
    "rnn step I": lambda: seqkern.rnn_step_forward(zeros(1, BIG), None, zeros(1, BIG), small(1, 1)),
    "rnn stride-0 I": lambda: seqkern.rnn_forward(stride0(1, 1, BIG), None, stride0(1, BIG),
                                                  small(1, 1)),
    # a stride-0 view is copied (made contiguous) only after T * B is checked: the
    # copy (16 GiB) would fail with MemoryError under the limit above
    "rnn stride-0 T * B": lambda: seqkern.rnn_forward(stride0(2**17, 2**15 + 8, 1), None,
                                                      small(1, 1), small(1, 1)),
    "gru stride-0 T * B batch_first": lambda: seqkern.gru_forward(
        stride0(2**15 + 8, 2**17, 1), None, small(3, 1), small(3, 1), batch_first=True),
    "reference rnn I": lambda: ref.rnn_forward(zeros(1, 1, BIG), None, zeros(1, BIG), small(1, 1)),
    "lstm I": lambda: seqkern.lstm_forward(zeros(1, 1, BIG), None, None, zeros(4, BIG),
                                           small(4, 1)),
    "lstm B": lambda: seqkern.lstm_forward(zeros(1, BIG, 1), None, None, small(4, 1), small(4, 1)),
    "lstm step I": lambda: seqkern.lstm_step_forward(zeros(1, BIG), None, None, zeros(4, BIG),
                                                     small(4, 1)),
    "lstm T * B": lambda: seqkern.lstm_forward(zeros(2**16, 2**15 + 8, 1), None, None,
                                               small(4, 1), small(4, 1)),
    "gru I": lambda: seqkern.gru_forward(zeros(1, 1, BIG), None, zeros(3, BIG), small(3, 1)),
    "gru B": lambda: seqkern.gru_forward(zeros(1, BIG, 1), None, small(3, 1), small(3, 1)),
    "gru T * B": lambda: seqkern.gru_forward(zeros(2**16, 2**15 + 8, 1), None, small(3, 1),
                                             small(3, 1)),
    "gru step I": lambda: seqkern.gru_step_forward(zeros(1, BIG), None, zeros(3, BIG), small(3, 1)),
    "gru 3H": lambda: seqkern.gru_forward(small(1, 1, 1), None, stride0(3 * (2**29 + 1), 1),
                                          stride0(3 * (2**29 + 1), 2**29 + 1)),
    "attention D": lambda: seqkern.attention_forward(zeros(1, 1, 1, BIG), zeros(1, 1, 1, BIG),
                                                     small(1, 1, 1, 1)),
    "attention Dv": lambda: seqkern.attention_forward(small(1, 1, 1, 1), small(1, 1, 1, 1),
                                                      zeros(1, 1, 1, BIG)),
    "attention Tk": lambda: seqkern.attention_forward(small(1, 1, 1, 1), zeros(1, 1, BIG, 1),
                                                      zeros(1, 1, BIG, 1)),
    "attention Tq": lambda: seqkern.attention_forward(zeros(1, 1, BIG, 1), small(1, 1, 1, 1),
                                                      small(1, 1, 1, 1)),
    "attention B": lambda: seqkern.attention_forward(zeros(BIG, 1, 1, 1), zeros(BIG, 1, 1, 1),
                                                     zeros(BIG, 1, 1, 1)),
    "attention Hq": lambda: seqkern.attention_forward(zeros(1, BIG, 1, 1), small(1, 1, 1, 1),
                                                      small(1, 1, 1, 1)),
    "reference attention D": lambda: ref.attention_forward(zeros(1, 1, 1, BIG),
                                                           zeros(1, 1, 1, BIG), small(1, 1, 1, 1)),
}
results = {name: outcome(call) for name, call in cases.items()}
print(json.dumps(results))
"""

# case -> how its message must start: the size, named
HUGE_NAMES = {
    "rnn I": "I (features of x)", "rnn I 2**32": "I (features of x)",
    "rnn B": "B (batch of x)", "rnn T * B": "T * B (rows of x)",
    "rnn B batch_first": "B (batch of x)", "rnn step I": "I (features of x)",
    "rnn stride-0 I": "x.shape[2]", "reference rnn I": "I (features of x)",
    "rnn stride-0 T * B": "T * B (rows of x)",
    "gru stride-0 T * B batch_first": "T * B (rows of x)",
    "lstm I": "I (features of x)", "lstm B": "B (batch of x)", "lstm step I": "I (features of x)",
    "lstm T * B": "T * B (rows of x)", "gru I": "I (features of x)", "gru B": "B (batch of x)",
    "gru T * B": "T * B (rows of x)", "gru step I": "I (features of x)",
    "gru 3H": "W_hh.shape[0]", "attention D": "D + Dv", "attention Dv": "D + Dv",
    "attention Tk": "Tk = k.shape[2]", "attention Tq": "Tq = q.shape[2]",
    "attention B": "B = q.shape[0]", "attention Hq": "Hq = q.shape[1]",
    "reference attention D": "D + Dv",
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sparse files and RLIMIT_DATA")
def test_sizes_past_the_int_limit_are_refused(tmp_path):
    """Every size that reaches a C int in the kernels (I, B, T * B, 3H, D, Tq, ...)
    past the limit is refused with a ValueError naming it and the limit, before
    anything is allocated or run (it was cut to 32 bits: rnn_forward returned 0
    where tanh(1) is right, or OpenBLAS rejected a negative size)."""
    import json

    p = run_python(HUGE_PROBE, timeout=120, args=[str(tmp_path)])
    assert p.returncode == 0, p.stdout + p.stderr
    results = json.loads(p.stdout.strip().splitlines()[-1])
    bad, unmappable = {}, sorted(c for c, msg in results.items() if msg.startswith("unmappable"))
    for case, name in HUGE_NAMES.items():
        msg = results[case]
        if case not in unmappable and not (msg.startswith(f"ValueError: {name} = ")
                                           and "the kernels' limit" in msg):
            bad[case] = msg
    assert not bad, bad
    if unmappable:
        pytest.skip(f"the other {len(HUGE_NAMES) - len(unmappable)} cases were refused as they "
                    f"should; these could not map their inputs here: {unmappable}")


SCRATCH_PROBE = """
import json, os, resource, sys
import numpy as np

folder = sys.argv[1]
f32 = np.float32
""" + SPARSE_ZEROS + """

import seqkern
from seqkern import _workspace, reference as ref
from seqkern._step_gemm import step_gemm


def data_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmData:"))


# Room for 1 GiB more than the process holds: each case's weights are sparse maps
# (ROOM * 0.4 to 0.75 each), and what the kernel packs or regroups of them, on top
# of the outputs, does not fit.
ROOM = 1 << 30
resource.setrlimit(resource.RLIMIT_DATA,
                   (data_bytes() + ROOM, resource.getrlimit(resource.RLIMIT_DATA)[1]))
try:
    np.empty(ROOM + (256 << 20), np.uint8)
    print(json.dumps({"skip": "RLIMIT_DATA is not enforced here"}))
    sys.exit(0)
except MemoryError:
    pass

results = {}


def check(name, call):
    results[name] = outcome(call)
    _workspace.clear()
    try:                        # nothing of the failed call's scratch is left
        np.empty(ROOM - (300 << 20), np.uint8)
        results[name + " room"] = True
    except MemoryError:
        results[name + " room"] = False


def states(kind):
    return (None, None) if kind == "lstm" else (None,)


# the forward: packing W_ih and W_hh (ROOM * 0.75 each) does not fit
for kind, G, H in (("rnn", 1, 14000), ("lstm", 4, 7000), ("gru", 3, 8000)):
    fwd = getattr(seqkern, f"{kind}_forward")

    def forward(fwd=fwd, kind=kind, G=G, H=H):
        with step_gemm("packed"):
            fwd(np.ones((16, 1, H), f32), *states(kind), zeros(G * H, H), zeros(G * H, H))
    check(f"{kind}_forward", forward)

# the backward: its output dW_hh and its copies of W_hh (ROOM * 0.4-0.55 each) do not fit
for kind, G, H in (("rnn", 1, 12000), ("lstm", 4, 5000)):
    fwd, bwd = getattr(seqkern, f"{kind}_forward"), getattr(seqkern, f"{kind}_backward")
    x, W_ih = np.ones((16, 1, 16), f32), np.zeros((G * H, 16), f32)
    try:
        with step_gemm("blas"):
            cache = fwd(x, *states(kind), W_ih, zeros(G * H, H))[-1]
    except Unmappable as e:
        results[f"{kind}_backward"] = f"unmappable: {e}"
        continue
    _workspace.clear()
    d_states = (None,) * len(states(kind))

    def backward(bwd=bwd, cache=cache, H=H, d_states=d_states):
        with step_gemm("packed"):
            bwd(np.ones((16, 1, H), f32), *d_states, cache)
    check(f"{kind}_backward", backward)
    del cache

# then small calls in the same process are right
rng = np.random.default_rng(0)
for kind, G in (("rnn", 1), ("lstm", 4), ("gru", 3)):
    h, k = 5, 0.4
    args = [rng.uniform(-k, k, s).astype(f32) for s in ((7, 2, 3), (G * h, 3), (G * h, h))]
    s0 = [np.zeros((2, h), f32)] * len(states(kind))
    with step_gemm("packed"):
        got = getattr(seqkern, f"{kind}_forward")(args[0], *s0, *args[1:])[0]
    want = getattr(ref, f"{kind}_forward")(args[0], *s0, *args[1:])[0]
    results[kind + " after"] = float(np.abs(got - want).max())
print(json.dumps(results))
"""

SCRATCH_CASES = ("rnn_forward", "lstm_forward", "gru_forward", "rnn_backward", "lstm_backward")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sparse files and RLIMIT_DATA")
def test_kernels_out_of_scratch_raise_memory_error(tmp_path):
    """A recurrent kernel that cannot allocate its scratch (the weights packed or
    regrouped, without the GIL) raises MemoryError naming the call, frees what it
    had allocated, and the process goes on: the next calls are right."""
    import json

    p = run_python(SCRATCH_PROBE, timeout=300, args=[str(tmp_path)])
    assert p.returncode == 0, p.stdout + p.stderr
    results = json.loads(p.stdout.strip().splitlines()[-1])
    if "skip" in results:
        pytest.skip(results["skip"])
    unmappable = sorted(c for c in SCRATCH_CASES if results[c].startswith("unmappable"))
    for case in SCRATCH_CASES:
        if case not in unmappable:
            assert results[case] == f"MemoryError: {case}: no memory for the kernel's scratch"
            assert results[case + " room"], (case, "scratch left allocated")
    for kind in ("rnn", "lstm", "gru"):
        assert results[kind + " after"] < 1e-5, results
    if unmappable:
        pytest.skip(f"the other cases raised as they should; these could not map their "
                    f"inputs here: {unmappable}")


# ---------------------------------------------------------------------------
# 7. Threads, interrupts, fork and thread counts
# ---------------------------------------------------------------------------

def test_threads_context_is_per_thread():
    """Two overlapping blocks in two Python threads (the issue's 1 -> threads(2)
    -> threads(3)): each thread sees its own count, and after both exit every
    thread sees what it saw before (it saw 2 after both had exited)."""
    n0 = seqkern.get_num_threads()
    inside, after = {}, {}
    both_in = threading.Barrier(2)
    a_out = threading.Event()

    def worker(name, n, wait_for=None):
        with seqkern.threads(n):
            both_in.wait(timeout=10)
            inside[name] = seqkern.get_num_threads()
            if wait_for is not None:
                wait_for.wait(timeout=10)
        after[name] = seqkern.get_num_threads()
        if wait_for is None:
            a_out.set()

    with seqkern.threads(1):
        ta = threading.Thread(target=worker, args=("a", 2))
        tb = threading.Thread(target=worker, args=("b", 3, a_out))
        ta.start()
        tb.start()
        ta.join(timeout=20)
        tb.join(timeout=20)
        assert seqkern.get_num_threads() == 1
    assert inside == {"a": 2, "b": 3}
    assert after == {"a": n0, "b": n0}
    assert seqkern.get_num_threads() == n0


def test_concurrent_calls_from_python_threads():
    """Kernels called at once from several Python threads, each at its own
    thread count, give what they give alone (results do not depend on threads)."""
    rng = np.random.default_rng(6)
    jobs = []
    for kind in GATES:
        args = recurrent_args(kind, np.float32, T=30, B=4, I=16, H=64, seed=7)
        jobs.append((lambda kind=kind, args=args: run_recurrent(seqkern, kind, args)))
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in [(2, 4, 40, 16), (2, 2, 50, 16),
                                                                   (2, 2, 50, 8)])
    jobs.append(lambda: run_attention(seqkern, [q, k, v], causal=True))
    with seqkern.threads(1):
        expected = [job() for job in jobs]
    results, errors = {}, []

    def worker(i, n):
        try:
            with seqkern.threads(n):
                for _ in range(3):
                    got = jobs[i]()
                    assert all(np.array_equal(g, e) for g, e in zip(got, expected[i]))
            results[i] = True
        except BaseException as e:       # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i, 1 + i % 2)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(results) == len(jobs)


INTERRUPT_PROBE = """
import random, signal
import numpy as np
from threadpoolctl import threadpool_limits
import seqkern
from seqkern import _threads

class Tick(Exception):
    pass

armed = False

def handler(signum, frame):
    if armed:                  # only inside the calls below: never in this loop's own code
        raise Tick

signal.signal(signal.SIGALRM, handler)
rng = np.random.default_rng(0)
def arrays(*shapes):
    return [rng.standard_normal(s).astype(np.float32) * 0.3 for s in shapes]
rnn = arrays((3, 2, 8), (2, 8), (8, 8), (8, 8))
gru = arrays((3, 2, 8), (2, 8), (24, 8), (24, 8))
lstm = arrays((3, 2, 8), (2, 8), (2, 8), (32, 8), (32, 8))     # T*B < 16: held BLAS
attn = arrays((1, 2, 3, 8), (1, 2, 4, 8), (1, 2, 4, 8))

def calls():
    with seqkern.threads(1):
        out, _, cache = seqkern.rnn_forward(*rnn)
        seqkern.rnn_backward(out, None, cache)
    out, _, cache = seqkern.gru_forward(*gru)
    seqkern.gru_backward(out, None, cache)
    with seqkern.threads(2):
        out, _, _, cache = seqkern.lstm_forward(*lstm)
        seqkern.lstm_backward(out, None, None, cache)
        seqkern.attention_forward(*attn)

limiter = threadpool_limits(limits=2, user_api="blas")
n0 = seqkern.get_num_threads()
before = [n for *_, n in _threads.blas_info()]
calls()
hits = 0
random.seed(0)
for i in range(4000):
    try:
        armed = True
        signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-6, 3e-4))
        calls()
        armed = False
    except Tick:
        armed = False
        hits += 1
signal.setitimer(signal.ITIMER_REAL, 0)
armed = False
after = [n for *_, n in _threads.blas_info()]
print("hits", hits, "blas", before, after, "threads", n0, seqkern.get_num_threads(),
      "depth", _threads.blas_guard_depth())
assert hits > 500, hits
assert after == before, (before, after)
assert seqkern.get_num_threads() == n0
assert _threads.blas_guard_depth() == 0
with _threads.blas_single_thread():
    assert [n for *_, n in _threads.blas_info()] == [1] * len(before)
assert [n for *_, n in _threads.blas_info()] == before
print("ok")
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="needs setitimer")
def test_interrupts_leave_no_thread_state_behind():
    """Thousands of exceptions raised by a signal handler at random points of
    kernel calls (inside threads(n) blocks and the BLAS guard): afterwards the
    guard's depth is 0, BLAS has its thread count back and get_num_threads() is
    what it was (the depth used to stay above 0, leaving BLAS at one thread)."""
    p = run_python(INTERRUPT_PROBE, timeout=120)
    assert p.returncode == 0 and "ok" in p.stdout, p.stdout + p.stderr


KERNEL_CALLS = """
import numpy as np
import seqkern

def run_all():
    # every kernel, forward and backward, at sizes that run parallel regions
    rng = np.random.default_rng(0)
    T, B, I, H = 6, 4, 32, 128
    for kind, G in (("rnn", 1), ("lstm", 4), ("gru", 3)):
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        W = [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in [(G * H, I), (G * H, H)]]
        states = [None] * (2 if kind == "lstm" else 1)
        res = getattr(seqkern, kind + "_forward")(x, *states, *W)
        getattr(seqkern, kind + "_backward")(res[0], *[None] * len(states), res[-1])
        step = getattr(seqkern, kind + "_step_forward")(x[0], *states, *W)
        getattr(seqkern, kind + "_step_backward")(step[0], *[None] * (len(states) - 1), step[-1])
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in [(2, 4, 64, 32), (2, 4, 96, 32),
                                                                   (2, 4, 96, 32)])
    out, cache = seqkern.attention_forward(q, k, v, causal=True)
    seqkern.attention_backward(out, cache)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kernels_run_in_a_child_forked_after_threaded_calls():
    """After calls on several threads, a forked child runs every kernel (on one
    thread: libgomp's pool does not survive fork; the child used to hang)."""
    code = KERNEL_CALLS + WAIT_CHILD + """
import os, sys, time, traceback

with seqkern.threads(2):
    run_all()
pid = os.fork()
if pid == 0:
    status = 1
    try:
        assert seqkern.get_num_threads() == 1, seqkern.get_num_threads()
        run_all()
        with seqkern.threads(2):          # asked for, but the child stays on one thread
            run_all()
        seqkern.set_num_threads(3)
        run_all()
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status)
code = wait_child(pid, 30)
print("child hung" if code is None else f"child exit code {code}")
run_all()                                   # and the parent goes on
print("parent ok")
"""
    p = run_python(code, timeout=90)
    assert "child exit code 0" in p.stdout and "parent ok" in p.stdout, p.stdout + p.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forks_while_a_thread_takes_and_frees_workspace_memory():
    """200 forks while another thread takes and frees workspace arrays (the lists'
    spin lock, taken by kernels without the GIL and by these calls with it): no
    fork hangs the parent, and every child allocates from the workspace and exits.
    (A lock held across fork deadlocked the parent: the forking thread waited for
    the GIL, held by a thread spinning on that lock.)"""
    code = WAIT_CHILD + """
import os, threading, time
import numpy as np
from seqkern import _workspace

stop = False


def churn():
    while not stop:
        a = _workspace.empty((1 << 15,), np.float32)      # 128 KiB: from the lists
        del a


threading.Thread(target=churn, daemon=True).start()
bad = 0
for i in range(200):
    pid = os.fork()
    if pid == 0:
        a = _workspace.empty((1 << 15,), np.float32)
        a[:] = 1
        del a
        os._exit(0)
    bad += wait_child(pid) != 0
stop = True
print("bad children", bad)
"""
    p = run_python(code, timeout=120)
    assert "bad children 0" in p.stdout, p.stdout + p.stderr


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_kill"), reason="needs pthread_kill")
def test_interrupted_pair_waits_for_its_other_half():
    """A KeyboardInterrupt while run_pair waits for its second task (a bidirectional
    layer's reverse direction, which adds into the layer's gradients) reaches the
    caller only once that task has finished, so the gradients change no more after
    the caller has the exception (the reverse direction went on writing them)."""
    import signal
    import time

    from seqkern._threads import effective_num_threads
    from seqkern.nn._parallel import run_pair

    with seqkern.threads(2):
        if effective_num_threads() < 2:
            pytest.skip("one kernel thread (no OpenMP): run_pair runs its tasks in turn")
    started, release, done = threading.Event(), threading.Event(), []
    main = threading.main_thread().ident

    def second():
        started.set()
        release.wait(timeout=30)
        done.append(True)

    def interrupter():
        started.wait(timeout=30)
        time.sleep(0.05)                 # run_pair is waiting for `second` by now
        signal.pthread_kill(main, signal.SIGINT)
        time.sleep(0.2)
        release.set()

    assert threading.current_thread() is threading.main_thread()
    # (a process started in the background may ignore SIGINT)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        th = threading.Thread(target=interrupter)
        th.start()
        with seqkern.threads(2), pytest.raises(KeyboardInterrupt):
            run_pair(lambda: None, second)
        assert done == [True]
        th.join()
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("env_value", ["100000", str(2**31), str(2**64)])
def test_huge_omp_num_threads_is_clamped(env_value):
    """OMP_NUM_THREADS far past the machine is clamped to seqkern's maximum
    (100000 segfaulted inside GOMP_parallel; 2**31 raised OverflowError at the
    first call)."""
    code = KERNEL_CALLS + """
from seqkern._threads import MAX_THREADS
assert seqkern.get_num_threads() == MAX_THREADS, (seqkern.get_num_threads(), MAX_THREADS)
run_all()
print("ok")
"""
    p = run_python(code, timeout=120, env=dict(os.environ, OMP_NUM_THREADS=env_value))
    assert p.returncode == 0 and "ok" in p.stdout, p.stdout + p.stderr[-3000:]
