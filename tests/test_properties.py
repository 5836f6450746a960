"""Property tests (hypothesis): every kernel equals its NumPy reference on
arbitrary small shapes, lengths, masks and dtypes, forward and backward."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqkern
from seqkern import reference as ref

from helpers import RECURRENT, assert_close, assert_grads_close, to64

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
dtypes = st.sampled_from([np.float32, np.float64])


@pytest.mark.parametrize("kernel", RECURRENT, ids=str)
@SETTINGS
@given(data=st.data())
def test_recurrent_kernels_match_reference(kernel, data):
    T = data.draw(st.integers(0, 6), label="T")
    B = data.draw(st.integers(0, 4), label="B")
    I = data.draw(st.integers(1, 7), label="I")
    H = data.draw(st.integers(1, 9), label="H")
    dtype = data.draw(dtypes, label="dtype")
    bias = data.draw(st.booleans(), label="bias")
    use_lengths = data.draw(st.booleans(), label="lengths")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    args = kernel.args(rng, T, B, I, H, dtype, bias)
    kw = dict(lengths=rng.integers(0, T + 1, B)) if use_lengths else {}
    outs, cache = kernel.forward(seqkern, args, **kw)
    routs, rcache = kernel.forward(ref, to64(*args), **kw)
    for name, got, want in zip(kernel.out_names, outs, routs):
        assert_close(got, want, dtype, name)
    d_outs = kernel.upstream(rng, outs)
    assert_grads_close(kernel.backward(seqkern, d_outs, cache),
                       kernel.backward(ref, to64(*d_outs), rcache), dtype)


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
    assert_grads_close(g, rg, dtype)
