"""Property tests (hypothesis): every kernel equals its NumPy reference on
arbitrary small shapes, lengths, masks and dtypes, forward and backward."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqkern
from seqkern import reference as ref

from helpers import assert_close, to64

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
dtypes = st.sampled_from([np.float32, np.float64])


def _recurrent_case(data, gates):
    T = data.draw(st.integers(0, 6), label="T")
    B = data.draw(st.integers(0, 4), label="B")
    I = data.draw(st.integers(1, 7), label="I")
    H = data.draw(st.integers(1, 9), label="H")
    dtype = data.draw(dtypes, label="dtype")
    bias = data.draw(st.booleans(), label="bias")
    use_lengths = data.draw(st.booleans(), label="lengths")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    s = 1 / np.sqrt(H)
    arrays = dict(
        x=rng.standard_normal((T, B, I)), h0=rng.standard_normal((B, H)) * 0.5,
        c0=rng.standard_normal((B, H)) * 0.5,
        W_ih=rng.uniform(-s, s, (gates * H, I)), W_hh=rng.uniform(-s, s, (gates * H, H)),
        b_ih=rng.uniform(-s, s, gates * H) if bias else None,
        b_hh=rng.uniform(-s, s, gates * H) if bias else None,
    )
    arrays = {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}
    lengths = rng.integers(0, T + 1, B) if use_lengths else None
    d_out = rng.standard_normal((T, B, H)).astype(dtype)
    d_h = rng.standard_normal((B, H)).astype(dtype)
    return arrays, lengths, d_out, d_h, dtype


@pytest.mark.parametrize("kernel", ["rnn", "lstm", "gru"])
@SETTINGS
@given(data=st.data())
def test_recurrent_kernels_match_reference(kernel, data):
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[kernel]
    a, lengths, d_out, d_h, dtype = _recurrent_case(data, gates)
    names = ["x", "h0", "c0"] if kernel == "lstm" else ["x", "h0"]
    args = [a[n] for n in names] + [a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"]]
    fwd, bwd = f"{kernel}_forward", f"{kernel}_backward"
    res = getattr(seqkern, fwd)(*args, lengths=lengths)
    rres = getattr(ref, fwd)(*to64(*args), lengths=lengths)
    for name, got, want in zip(("out", "h_n", "c_n"), res[:-1], rres[:-1]):
        assert_close(got, want, dtype, name)
    grads_in = [d_out, d_h] + ([d_h] if kernel == "lstm" else [])
    g = getattr(seqkern, bwd)(*grads_in, res[-1])
    rg = getattr(ref, bwd)(*to64(*grads_in), rres[-1])
    for field in rg._fields:
        assert_close(getattr(g, field), getattr(rg, field), dtype, field)


@SETTINGS
@given(data=st.data())
def test_attention_matches_reference(data):
    B = data.draw(st.integers(1, 2), label="B")
    Hkv = data.draw(st.integers(1, 2), label="Hkv")
    Hq = Hkv * data.draw(st.integers(1, 3), label="group")
    Tq = data.draw(st.integers(1, 40), label="Tq")
    Tk = data.draw(st.integers(1, 40), label="Tk")
    D = data.draw(st.integers(1, 20), label="D")
    Dv = data.draw(st.integers(1, 20), label="Dv")
    dtype = data.draw(dtypes, label="dtype")
    causal = data.draw(st.booleans(), label="causal")
    mask_kind = data.draw(st.sampled_from([None, "bool", "float"]), label="mask")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    q = rng.standard_normal((B, Hq, Tq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Tk, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, Tk, Dv)).astype(dtype)
    mask = None
    if mask_kind == "bool":
        mask = rng.random((1, Hq, Tq, Tk)) < 0.7          # broadcast over the batch
    elif mask_kind == "float":
        mask = rng.standard_normal((Tq, Tk)).astype(dtype)  # broadcast over batch and heads
    key_lengths = rng.integers(0, Tk + 1, B) if data.draw(st.booleans(), label="kl") else None
    kw = dict(causal=causal, mask=mask, key_lengths=key_lengths)
    out, cache = seqkern.attention_forward(q, k, v, **kw)
    rmask = mask.astype(np.float64) if mask_kind == "float" else mask
    rout, rcache = ref.attention_forward(*to64(q, k, v), causal=causal, mask=rmask,
                                         key_lengths=key_lengths)
    assert not np.isnan(out).any()
    assert_close(out, rout, dtype, "out")
    d_out = rng.standard_normal(out.shape).astype(dtype)
    g = seqkern.attention_backward(d_out, cache)
    rg = ref.attention_backward(d_out.astype(np.float64), rcache)
    for field in rg._fields:
        assert_close(getattr(g, field), getattr(rg, field), dtype, field)
