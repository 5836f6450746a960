"""Attention-specific tests: small tiles, mask forms, fully masked rows, key blocks,
the choice of products, huge and extreme scores, the rule that a masked key never
contributes (not even a NaN), NaN, the row path's dots, exp, and bad input. The
contract it shares with the other kernels (the reference, finite differences,
threads, layouts, empty sizes, return_cache) is in test_contract.py."""

import numpy as np
import pytest

import seqkern
from seqkern.attention import _attention
from seqkern import reference as ref
from seqkern._attention_args import AttentionArgs
from seqkern._step_gemm import step_gemm

from helpers import ATTENTION, DTYPES, assert_close, attention_kwargs as variant_kwargs


@pytest.fixture(autouse=True, params=ATTENTION, ids=str)
def products(request):
    """Every test runs twice: with the kernels' tile products on their own
    micro-kernel (_attention.h's sk_gemm) and on BLAS. Each instruction-set level
    runs one of the two (_attention.BLAS_PRODUCTS); both must be right."""
    with request.param.path():
        yield request.param.products


def make(rng, shape, dtype=np.float64):
    B, Hq, Hkv, Tq, Tk, D, Dv = shape
    q = rng.standard_normal((B, Hq, Tq, D))
    k = rng.standard_normal((B, Hkv, Tk, D))
    v = rng.standard_normal((B, Hkv, Tk, Dv))
    d_out = rng.standard_normal((B, Hq, Tq, Dv))
    return [a.astype(dtype) for a in (q, k, v, d_out)]


def run_both(args, dtype, **kw):
    """Kernel forward + backward on the dtype's arrays, reference in float64 on the same values."""
    q, k, v, d_out = args
    out, cache = seqkern.attention_forward(q, k, v, **kw)
    grads = seqkern.attention_backward(d_out, cache)
    q64, k64, v64, d64 = (a.astype(np.float64) for a in args)
    rout, rcache = ref.attention_forward(q64, k64, v64, **kw)
    rgrads = ref.attention_backward(d64, rcache)
    return (out, grads), (rout, rgrads)


@pytest.mark.parametrize("tiles", [(1, 1), (3, 5), (8, 16), (16, 8)])
@pytest.mark.parametrize("variant", ["plain", "all", "float_mask", "large"])
def test_small_tiles_match_reference(rng, monkeypatch, tiles, variant):
    """Many ragged tiles: the online softmax across key tiles, causal and length
    tile skipping, and query tiles that start past the diagonal. "large" scores
    (|s| up to ~100) make the running max jump between tiles and exp underflow."""
    monkeypatch.setattr(seqkern.attention, "_tiles", tiles)
    shape = (2, 4, 2, 23, 37, 6, 5)
    args = make(rng, shape)
    if variant == "large":
        args[0] = args[0] * 12
        args[1][:, :, ::3] *= 4                 # every third key much stronger
    kw = variant_kwargs(rng, variant, shape)
    (out, grads), (rout, rgrads) = run_both(args, np.float64, **kw)
    assert_close(out, rout, np.float64, "out")
    for name in ("dq", "dk", "dv"):
        assert_close(getattr(grads, name), getattr(rgrads, name), np.float64, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_and_mask_forms(rng, dtype):
    """A given scale, and masks of every rank, as lists, and as broadcast views."""
    shape = (2, 4, 2, 11, 19, 6, 3)
    B, Hq, Hkv, Tq, Tk, D, Dv = shape
    args = make(rng, shape, dtype)
    masks = [
        rng.random((Tq, Tk)) > 0.3,
        rng.random(Tk) > 0.3,
        (rng.random((B, Hq, Tq, 1)) > 0.3).tolist(),
        np.broadcast_to(rng.random((1, Hq, 1, Tk)) > 0.3, (B, Hq, Tq, Tk)),
        rng.standard_normal((B, Hq, Tq, Tk))[:, :, :, ::-1],        # non-contiguous
        rng.standard_normal((1, Tk)).astype(np.float32),             # other float dtype
    ]
    for mask in masks:
        (out, grads), (rout, rgrads) = run_both(args, dtype, mask=mask, scale=0.3, causal=True)
        assert_close(out, rout, dtype, "out")
        for name in ("dq", "dk", "dv"):
            assert_close(getattr(grads, name), getattr(rgrads, name), dtype, name)


def test_mask_broadcast_is_not_materialised(rng):
    q, k, v, _ = make(rng, (2, 4, 4, 64, 64, 8, 8))
    full = np.broadcast_to(rng.random((1, 4, 1, 64)) > 0.5, (2, 4, 64, 64))
    a = AttentionArgs(q, k, v, False, full, None, None)
    assert a.mask.shape == (1, 4, 1, 64)
    assert a.mask_strides == (0, 64, 0, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_fully_masked_rows_give_zeros(rng, dtype, impl):
    mod = seqkern if impl == "kernel" else ref
    shape = (3, 2, 2, 6, 4, 5, 3)
    B, Hq, Hkv, Tq, Tk, D, Dv = shape
    q, k, v, d_out = make(rng, shape, dtype)
    mask = np.ones((Tq, Tk), bool)
    mask[1] = False                                   # row 1 sees nothing
    fmask = np.zeros((B, 1, Tq, 1))
    fmask[1, :, 2] = -np.inf                          # batch 1, row 2: -inf everywhere
    for kw, empty in [
        (dict(key_lengths=[4, 0, 2]), (1, slice(None), slice(None))),
        (dict(mask=mask), (slice(None), slice(None), 1)),
        (dict(mask=fmask), (1, slice(None), 2)),
        (dict(causal=True), (slice(None), slice(None), slice(0, Tq - Tk))),  # Tq > Tk
    ]:
        out, cache = mod.attention_forward(q, k, v, **kw)
        g = mod.attention_backward(d_out, cache)
        for name, x in (("out", out), ("dq", g.dq), ("dk", g.dk), ("dv", g.dv)):
            assert not np.isnan(x).any(), f"{kw}: NaN in {name}"
        assert np.all(out[empty] == 0) and np.all(g.dq[empty] == 0), kw
        live = np.ones(out.shape[:3], bool)
        live[empty] = False
        assert np.all(np.abs(out[live]).sum(-1) > 0), kw   # the other rows are not zeroed


@pytest.mark.parametrize("causal", [False, True])
def test_backward_key_blocks_match_reference(rng, causal):
    """One kv head and one batch: the backward cuts the keys into blocks with
    their own dq parts (see _attention.key_blocks)."""
    shape = (1, 4, 1, 50, 300, 8, 8)
    args = make(rng, shape)
    bk = _attention.tile_sizes(50, 300, causal, backward=True)[1]
    assert _attention.key_blocks(1, 1, 300, bk) > 1
    (out, grads), (rout, rgrads) = run_both(args, np.float64, causal=causal,
                                            key_lengths=[290])
    for name in ("dq", "dk", "dv"):
        assert_close(getattr(grads, name), getattr(rgrads, name), np.float64, name)


@pytest.mark.parametrize("blas", [None, False, True])
def test_blas_held_only_where_blas_runs(rng, monkeypatch, blas):
    """The wrapper holds BLAS at one thread (see _threads) around the kernel calls
    exactly when their products run on BLAS: by default where this level's
    module says so (_attention.BLAS_PRODUCTS), or as forced."""
    from contextlib import contextmanager

    entered = []

    @contextmanager
    def counting():
        entered.append(1)
        yield

    monkeypatch.setattr(seqkern.attention, "blas_single_thread", counting)
    args = make(rng, (1, 2, 2, 20, 30, 8, 8))
    with step_gemm({None: "auto", True: "blas", False: "packed"}[blas]):
        (out, grads), (rout, rgrads) = run_both(args, np.float64, causal=True)
    holds = _attention.BLAS_PRODUCTS if blas is None else blas
    assert len(entered) == (2 if holds else 0)
    assert_close(out, rout, np.float64, "out")
    assert_close(grads.dq, rgrads.dq, np.float64, "dq")


@pytest.mark.parametrize("Tq", [300, 3])
def test_backward_follows_the_forwards_products(rng, Tq):
    """The backward recomputes the scores with the forward's products (on BLAS:
    the very calls the forward made), whatever is chosen when it runs."""
    shape = (1, 2, 1, Tq, 300, 16, 8)
    q, k, v, d_out = make(rng, shape)
    res = {}
    for fwd in (False, True):
        for bwd in (False, True):
            with step_gemm("blas" if fwd else "packed"):
                out, cache = seqkern.attention_forward(q * 1e18, k, v, causal=True)
            with step_gemm("blas" if bwd else "packed"):
                res[fwd, bwd] = seqkern.attention_backward(d_out, cache)
    for fwd in (False, True):
        for a, b in zip(res[fwd, fwd], res[fwd, not fwd]):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("Tq", [3, 6, 7, 12])
def test_inf_value_at_a_causally_masked_key(Tq):
    """Query tiles of few rows run row by row (_attention's ROW_QUERIES = 6), the
    others as tiles; both visit the keys of the whole tile and mask them, yet an Inf
    value at a key hidden from a row must not reach it (0 * Inf): only the last row,
    which sees the key, gets Inf, as in the reference."""
    q = np.ones((1, 1, Tq, 4))
    k = np.ones((1, 1, Tq, 4))
    v = np.ones((1, 1, Tq, 2))
    v[0, 0, Tq - 1, 0] = np.inf
    out, _ = seqkern.attention_forward(q, k, v, causal=True)
    rout, _ = ref.attention_forward(q, k, v, causal=True)
    for o in (out, rout):
        assert np.isinf(o[0, 0, -1, 0]) and np.isfinite(np.delete(o.ravel(), Tq * 2 - 2)).all()
    fin = np.isfinite(rout)
    assert_close(out[fin], rout[fin], np.float64, "out")


# Issue 17.1: scores so large that one ulp of them is >> 1 (a padding mask filled
# with a huge finite value, or huge q or scale). The backward must recompute the
# forward's probabilities exactly: P = exp(S - m) / l, never through m + log(l).
# (B, Hq, Hkv, Tq, Tk, D, Dv): the row path (Tq <= 6) and the tile path, with GQA.
EXTREME_SHAPES = [(2, 4, 2, 3, 9, 8, 8), (1, 2, 1, 5, 300, 16, 8), (2, 2, 1, 13, 29, 8, 8),
                  (1, 2, 2, 70, 300, 16, 16)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", EXTREME_SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_huge_finite_mask_matches_reference(rng, dtype, shape, causal):
    """The padding idiom: a float mask of finfo.min or -1e30 instead of -inf, whole
    rows of it and scattered keys; those rows attend to every key alike (as the
    reference), and the gradients must too."""
    B, Hq, Hkv, Tq, Tk, D, Dv = shape
    args = make(rng, shape, dtype)
    for fill in (np.finfo(dtype).min, -1e30):
        mask = np.zeros((B, 1, Tq, Tk), dtype)
        mask[:, :, 1::2] = fill                           # every other row padded
        mask[:, :, ::3, ::4] = fill                       # and some keys of the others
        (out, grads), (rout, rgrads) = run_both(args, dtype, mask=mask, causal=causal)
        assert_close(out, rout, dtype, f"{fill} out")
        for name in ("dq", "dk", "dv"):
            assert_close(getattr(grads, name), getattr(rgrads, name), dtype, f"{fill} {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Tq", [3, 13])                 # the row path and the tile path
def test_backward_uses_the_forwards_probabilities(rng, dtype, Tq):
    """With v = I the forward's output rows are its probabilities, and with one-hot
    rows of d_out, dv holds the backward's: they must agree to a few ulps (the
    backward differentiates the function the forward computed), for rows padded
    with finfo.min, -1e30 or -1e4. The last, in float32, is within rounding of the
    float64 reference either way (one ulp of its scores is ~1e-3), but rebuilding P
    from m + log(l) moved it by up to ~5e-4 more."""
    B, Hq, Hkv, Tk = 2, 4, 2, 11
    G = Hq // Hkv
    Dv = max(Tk, G * Tq)
    q = rng.standard_normal((B, Hq, Tq, 8)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Tk, 8)).astype(dtype)
    v = np.zeros((B, Hkv, Tk, Dv), dtype)
    v[:, :, np.arange(Tk), np.arange(Tk)] = 1
    d_out = np.zeros((B, Hq, Tq, Dv), dtype)
    for h in range(Hq):
        d_out[:, h, np.arange(Tq), (h % G) * Tq + np.arange(Tq)] = 1
    for fill in (np.finfo(dtype).min, -1e30, -1e4):
        mask = np.zeros((B, 1, Tq, Tk), dtype)
        mask[:, :, 1::2] = fill
        mask[:, :, ::3, ::4] = fill
        out, cache = seqkern.attention_forward(q, k, v, mask=mask)
        dv = seqkern.attention_backward(d_out, cache).dv
        p_fwd = out[..., :Tk]                                       # (B, Hq, Tq, Tk)
        p_bwd = np.stack([dv[:, h // G, :, (h % G) * Tq:(h % G + 1) * Tq].swapaxes(1, 2)
                          for h in range(Hq)], axis=1)
        rtol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(p_bwd, p_fwd, rtol=rtol, atol=0, err_msg=str(fill))


def test_huge_finite_mask_issue_example():
    q, k, v = (np.random.default_rng(0).standard_normal((1, 1, 3, 8)) for _ in range(3))
    m = np.zeros((3, 3))
    m[2] = np.finfo(np.float64).min
    (out, g), (rout, rg) = run_both([q, k, v, np.ones((1, 1, 3, 8))], np.float64, mask=m)
    assert_close(out, rout, np.float64, "out")
    for name in ("dq", "dk", "dv"):
        assert_close(getattr(g, name), getattr(rg, name), np.float64, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", EXTREME_SHAPES)
@pytest.mark.parametrize("how", ["q", "scale"])
def test_extreme_scores_match_reference(rng, dtype, shape, how):
    """q * 1e18, or scale = 1e300 (1e30 in float32): each row's softmax is one-hot,
    so dq = 0 and dv = the d_out of the rows that pick each key, as the reference
    gives. The backward must get the forward's scores and maximum exactly."""
    args = make(rng, shape, dtype)
    kw = {}
    if how == "q":
        args[0] = args[0] * dtype(1e18)
    else:
        kw["scale"] = 1e300 if dtype == np.float64 else 1e30
    for causal in (False, True):
        (out, grads), (rout, rgrads) = run_both(args, dtype, causal=causal, **kw)
        assert np.all(rgrads.dq == 0)                   # the reference's one-hot softmax
        assert_close(out, rout, dtype, "out")
        for name in ("dq", "dk", "dv"):
            assert_close(getattr(grads, name), getattr(rgrads, name), dtype, name)


# Issue 17.2: a masked key never contributes to a row, not even a NaN or Inf,
# however the mask is spelt (bool mask False, float mask -inf, key_lengths,
# causal); forward and backward. The placement of NaN is compared exactly.
NAN_SHAPES = [(2, 4, 2, 5, 40, 8, 8),           # the row path
              (2, 4, 2, 37, 53, 8, 8)]           # the tile path
NAN_SPELLINGS = ["bool_mask", "float_mask", "lengths", "causal"]


def _spelling_kwargs(rng, spelling, shape):
    B, Hq, Hkv, Tq, Tk, D, Dv = shape
    if spelling == "bool_mask":
        return dict(mask=rng.random((B, Hq, Tq, Tk)) > 0.3)
    if spelling == "float_mask":
        m = rng.standard_normal((1, Hq, Tq, Tk))
        m[rng.random(m.shape) < 0.3] = -np.inf
        return dict(mask=m)
    if spelling == "lengths":
        return dict(key_lengths=np.array([Tk - 3, Tk // 2]))
    return dict(causal=True)


def _visibility(shape, kw):
    """(B, Hq, Tq, Tk) boolean: True where row i sees key j (computed here, not by the
    reference, so that the reference is checked too)."""
    B, Hq, Hkv, Tq, Tk, D, Dv = shape
    vis = np.ones((B, Hq, Tq, Tk), bool)
    j = np.arange(Tk)
    if kw.get("causal"):
        vis &= j <= np.arange(Tq)[:, None] + (Tk - Tq)
    if "key_lengths" in kw:
        vis &= j < kw["key_lengths"][:, None, None, None]
    m = kw.get("mask")
    if m is not None:
        vis &= m if m.dtype == bool else m != -np.inf
    return vis


def _nan_sources(shape, vis):
    """(name, operand, index) of single non-finite elements: in v and k at a key
    hidden from some rows and seen by others (seen by all with key_lengths, where
    no key is both), in v at a key no row sees, and in q and d_out at a row with
    hidden keys."""
    B, Hq, Hkv, Tq, Tk, D, Dv = shape
    G = Hq // Hkv
    seen = vis.sum(axis=2)                               # (B, Hq, Tk): rows that see each key
    mixed = np.argwhere((seen > 0) & (seen < Tq))
    if not len(mixed):
        mixed = np.argwhere(seen > 0)
    b, h, j = mixed[len(mixed) // 2]
    out = [("v", "v", (b, h // G, j, 1)), ("k", "k", (b, h // G, j, 2))]
    hidden = np.argwhere(seen == 0)
    if len(hidden):
        b2, h2, j2 = hidden[len(hidden) // 2]
        out.append(("v hidden", "v", (b2, h2 // G, j2, 0)))
    rows = np.argwhere((~vis).any(-1) & vis.any(-1))      # rows with some keys hidden
    b3, h3, i3 = rows[len(rows) // 2]
    out += [("q", "q", (b3, h3, i3, 0)), ("d_out", "d_out", (b3, h3, i3, 1))]
    return out


def check_nan_rule(rng, dtype, shape, kw):
    """A NaN (or Inf) in q, k, v or d_out reaches exactly the outputs it feeds
    through keys that the row sees: kernel and reference alike, with NaN where the
    visibility says and nowhere else. (Where an Inf leads to Inf - Inf, NaN or Inf
    depends on the form of the arithmetic: e.g. Di = sum_j P_ij dP_ij in the
    reference, d_out_i . out_i in the kernel. So for an Inf the placement of
    non-finite values is compared; for a NaN, that of NaN.)"""
    B, Hq, Hkv, Tq, Tk, D, Dv = shape
    G = Hq // Hkv
    vis = _visibility(shape, kw)
    base = make(rng, shape, dtype)
    for name, which, idx in _nan_sources(shape, vis):
        for bad in (np.nan, np.inf):
            args = [x.copy() for x in base]
            args[["q", "k", "v", "d_out"].index(which)][idx] = bad
            with np.errstate(invalid="ignore", over="ignore"):
                (out, grads), (rout, rgrads) = run_both(args, dtype, **kw)
            label = f"{name}={bad}"
            got = dict(out=out, dq=grads.dq, dk=grads.dk, dv=grads.dv)
            want = dict(out=rout, dq=rgrads.dq, dk=rgrads.dk, dv=rgrads.dv)
            for key in got:
                where = np.isnan if bad is np.nan else np.isfinite
                np.testing.assert_array_equal(where(got[key]), where(want[key]),
                                              err_msg=f"{label}: {where.__name__} in {key}")
                fin = np.isfinite(want[key])
                assert_close(got[key][fin], want[key][fin], dtype, f"{label} {key}")
            if bad is np.nan:
                # the rule itself, for the reference as well: rows (and their keys)
                # that never see the NaN stay finite
                b, hk = idx[0], idx[1]
                if which in ("v", "k"):
                    j = idx[2]
                    sees = vis[b, hk * G:(hk + 1) * G, :, j]        # (G, Tq)
                    assert np.isnan(rout[b, hk * G:(hk + 1) * G]).any(-1).tolist() == \
                        sees.tolist(), label
                    assert not np.isnan(np.delete(rgrads.dv[b, hk], j, 0)).any() or \
                        which == "k", label
                else:
                    i = idx[2]
                    blind = ~vis[b, hk, i]                          # keys row i never sees
                    assert not np.isnan(rgrads.dk[b, hk // G, blind]).any(), label
                    assert not np.isnan(rgrads.dv[b, hk // G, blind]).any(), label
                    assert np.isnan(rgrads.dq[b, hk, i]).all(), label


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NAN_SHAPES)
@pytest.mark.parametrize("spelling", NAN_SPELLINGS)
def test_masked_keys_never_contribute(rng, dtype, shape, spelling):
    check_nan_rule(rng, dtype, shape, _spelling_kwargs(rng, spelling, shape))


@pytest.mark.parametrize("tiles", [None, (3, 5), (8, 16)])
def test_masked_keys_never_contribute_tiles(rng, monkeypatch, tiles):
    """The same over many query and key tiles (with (3, 5) every query tile is on
    the row path), and with the backward's keys cut into blocks (None: its default
    tiles, one kv head); every spelling at once."""
    if tiles is not None:
        monkeypatch.setattr(seqkern.attention, "_tiles", tiles)
    shape = (1, 4, 1, 23, 300, 8, 8) if tiles is None else (2, 4, 2, 23, 37, 6, 5)
    kw = dict(causal=True, key_lengths=np.array([shape[4] - 2] * shape[0]))
    kw.update(_spelling_kwargs(rng, "float_mask", shape))
    if tiles is None:
        bk = _attention.tile_sizes(shape[3], shape[4], True, backward=True)[1]
        assert _attention.key_blocks(shape[0], shape[2], shape[4], bk) > 1
    check_nan_rule(rng, np.float64, shape, kw)
    kw["mask"] = kw["mask"] != -np.inf
    check_nan_rule(rng, np.float32, shape, kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_nan_issue_examples(rng, dtype):
    """The issue's NaN in the last value of 600 keys: hidden by key_lengths or by a
    mask, no NaN anywhere; causal with Tq = Tk = 600, NaN in the last row only
    (not in the whole last query tile), forward and backward."""
    q, k, v, d_out = make(rng, (1, 1, 1, 600, 600, 8, 8), dtype)
    v[0, 0, 599, 0] = np.nan
    for kw in (dict(key_lengths=[599]), dict(mask=np.arange(600) < 599),
               dict(mask=np.where(np.arange(600) < 599, 0.0, -np.inf))):
        (out, g), (rout, rg) = run_both([q, k, v, d_out], dtype, **kw)
        for x in (out, rout) + tuple(g) + tuple(rg):
            assert not np.isnan(x).any(), kw
    (out, g), (rout, rg) = run_both([q, k, v, d_out], dtype, causal=True)
    for o in (out, rout):
        assert np.isnan(o[0, 0, :, 0]).tolist() == [False] * 599 + [True]
        assert not np.isnan(o[..., 1:]).any()
    for a, b in zip(g, rg):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert not np.isnan(g.dv[0, 0, :599]).any() and not np.isnan(g.dq[0, 0, :599]).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_dots(rng, dtype):
    """The decoding path's scores, s[j] = alpha K[j] . q: groups of a vector's
    lanes of keys summed by halving, the rest one by one, any width."""
    for nk in (0, 1, 7, 8, 15, 16, 17, 40, 64):
        for D in (0, 1, 5, 8, 16, 21, 32, 70):
            K = rng.standard_normal((nk, D)).astype(dtype)
            q = rng.standard_normal(D).astype(dtype)
            s = _attention.row_dots(K, q, dtype(0.5))
            assert s.dtype == dtype and s.shape == (nk,)
            assert_close(s, 0.5 * (K.astype(np.float64) @ q.astype(np.float64)), dtype,
                         f"nk={nk} D={D}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates(rng, dtype):
    shape = (1, 2, 1, 5, 7, 4, 3)
    q, k, v, d_out = make(rng, shape, dtype)
    q = q.copy()
    q[0, 1, 2, 0] = np.nan                # one query row
    out, cache = seqkern.attention_forward(q, k, v)
    g = seqkern.attention_backward(d_out, cache)
    assert np.isnan(out[0, 1, 2]).all()
    assert not np.isnan(out[0, 0]).any() and not np.isnan(np.delete(out[0, 1], 2, 0)).any()
    assert np.isnan(g.dq[0, 1, 2]).any() and np.isnan(g.dk).any() and np.isnan(g.dv).any()
    k2 = k.copy()
    k2[0, 0, 3, 1] = np.nan               # one key: every row that sees it
    out, _ = seqkern.attention_forward(q * 0 + 1, k2, v, causal=True)
    assert np.isnan(out[0, :, 1:]).all() and not np.isnan(out[0, :, 0]).any()
    v2 = v.copy()
    v2[0, 0, 0, 0] = np.inf * 0
    out, _ = seqkern.attention_forward(q[:, :, :1] * 0, k, v2)
    assert np.isnan(out[..., 0]).all()


@pytest.mark.parametrize("mode", ["auto", "blas", "packed"])
@pytest.mark.parametrize("scale,dtype", [(0.0, np.float64), (-0.0, np.float64),
                                         (1e-50, np.float32)])
def test_nan_propagates_at_scale_zero(mode, scale, dtype):
    """0 * (q . k) is NaN where q . k is Inf or NaN, on every path: BLAS, given
    alpha = 0, would not compute the product at all (the tiles are 64 x 64 here,
    not the row path). 1e-50 is 0 in float32."""
    rng = np.random.default_rng(5)
    q, k, v, d_out = make(rng, (1, 1, 1, 64, 64, 16, 8), dtype)
    k = k.copy()
    k[0, 0, 5, 0] = np.inf
    with step_gemm(mode):
        out, cache = seqkern.attention_forward(q, k, v, scale=scale)
        g = seqkern.attention_backward(d_out, cache)
    with np.errstate(invalid="ignore"):           # the reference's 0 * Inf
        rout, rcache = ref.attention_forward(q, k, v, scale=scale)
        rg = ref.attention_backward(d_out, rcache)
    assert np.isnan(rout).all()                   # every row sees the Inf key
    for a, r in ((out, rout), (g.dq, rg.dq), (g.dk, rg.dk), (g.dv, rg.dv)):
        assert np.array_equal(np.isnan(a), np.isnan(r))


def bad_calls(rng):
    q, k, v, _ = make(rng, (2, 4, 2, 3, 5, 6, 7))
    q32 = q.astype(np.float32)
    return [
        (dict(q=None), TypeError, "q must be"),
        (dict(q=q.astype(np.int64)), TypeError, "q must be a float32 or float64"),
        (dict(k=k.astype(np.float32)), TypeError, "k has dtype float32"),
        (dict(q=q32), TypeError, "k has dtype float64"),
        (dict(q=q[0]), ValueError, "q must have 4 dimensions"),
        (dict(k=k[:1]), ValueError, "k must have shape"),
        (dict(k=k[..., :5]), ValueError, "k must have shape"),
        (dict(v=v[:, :, :4]), ValueError, "v must have shape"),
        (dict(v=v[:, :1]), ValueError, "v must have shape"),
        (dict(k=np.concatenate([k, k[:, :1]], 1), v=np.concatenate([v, v[:, :1]], 1)),
         ValueError, "multiple of"),
        (dict(causal=1), TypeError, "causal must be True or False"),
        (dict(return_cache="yes"), TypeError, "return_cache must be"),
        (dict(scale="1"), TypeError, "scale must be a real number"),
        (dict(mask=np.ones((3, 4), bool)), ValueError, "mask of shape"),
        (dict(mask=np.ones((2, 2, 3, 5), bool)), ValueError, "mask of shape"),
        (dict(mask=np.ones((1, 1, 1, 3, 5), bool)), ValueError, "mask must broadcast"),
        (dict(mask=np.ones((3, 5), np.int32)), TypeError, "mask must be a boolean or floating"),
        (dict(key_lengths=[5]), ValueError, "key_lengths must have shape"),
        (dict(key_lengths=[5, 6]), ValueError, r"key_lengths must lie in \[0, Tk\]"),
        (dict(key_lengths=[-1, 2]), ValueError, r"key_lengths must lie in \[0, Tk\]"),
        (dict(key_lengths=[1.0, 2.0]), TypeError, "key_lengths must be an integer"),
    ], (q, k, v)


@pytest.mark.parametrize("impl", [seqkern, ref])
def test_bad_arguments_raise_clear_errors(rng, impl):
    calls, (q, k, v) = bad_calls(rng)
    for change, exc, match in calls:
        kw = dict(q=q, k=k, v=v)
        kw.update(change)
        with pytest.raises(exc, match=match):
            impl.attention_forward(**kw)


def test_bad_backward_arguments(rng):
    q, k, v, d_out = make(rng, (1, 2, 2, 3, 4, 5, 6))
    _, cache = seqkern.attention_forward(q, k, v)
    _, rcache = ref.attention_forward(q, k, v)
    x = rng.standard_normal((2, 1, 3))
    _, _, rnn_cache = seqkern.rnn_forward(x, None, rng.standard_normal((4, 3)),
                                          rng.standard_normal((4, 4)))
    for bad in (None, rcache, rnn_cache, (q, k, v)):
        with pytest.raises(TypeError, match="cache must be the cache returned by attention_forward"):
            seqkern.attention_backward(d_out, bad)
    with pytest.raises(TypeError, match="cache must be the cache returned by seqkern.reference"):
        ref.attention_backward(d_out, cache)
    for impl, c in ((seqkern, cache), (ref, rcache)):
        with pytest.raises(ValueError, match="d_out must have shape"):
            impl.attention_backward(d_out[..., :5], c)
        with pytest.raises(TypeError, match="d_out has dtype float32"):
            impl.attention_backward(d_out.astype(np.float32), c)
        with pytest.raises(TypeError, match="d_out must be"):
            impl.attention_backward(None, c)


def test_float_exp_accuracy():
    x = np.concatenate([np.linspace(-87.3, 88.0, 200001), [0.0, -1e-30, 1e-30, -0.5, 0.5]])
    x = x.astype(np.float32)
    got = np.empty_like(x)
    _attention._expf(x, got)
    exact = np.exp(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - exact) / ulp) <= 2.0
    assert got[x == 0][0] == 1.0
    special = np.array([-np.inf, -100.0, -87.34, np.nan], np.float32)
    out = np.empty_like(special)
    _attention._expf(special, out)
    assert out[0] == 0 and out[1] == 0 and out[2] == 0 and np.isnan(out[3])


