"""seqkern.nn recurrent stacks against a composition of seqkern.reference calls
(one sequence at a time, the reverse direction on the sequence reversed), against
central finite differences, and against torch.nn when it is installed."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import seqkern
from seqkern import nn, reference as ref
from helpers import DTYPES, WAIT_CHILD, assert_close, numeric_grad
from seqkern.nn import _rnn

# The wavefront's sizes as shipped; the tests below run it on small problems, with
# chunks of at least 6 rows and as few as two chunks.
SHIPPED = (_rnn.WAVEFRONT_ROWS, _rnn.WAVEFRONT_CHUNKS)


@pytest.fixture(autouse=True)
def small_wavefront(monkeypatch):
    monkeypatch.setattr(_rnn, "WAVEFRONT_ROWS", 6)
    monkeypatch.setattr(_rnn, "WAVEFRONT_CHUNKS", 2)

KINDS = {"RNN": 1, "LSTM": 4, "GRU": 3}
F32_STACK = dict(rtol=1e-3, atol=1e-4)   # float32 stack vs float64 composition


def make(kind, dtype=np.float64, **kw):
    kw.setdefault("rng", np.random.default_rng(7))
    return getattr(nn, kind)(dtype=dtype, **kw)


def _ref_call(kind, x, state, W, nonlinearity):
    """One layer, one direction, one sequence: x (t, 1, I) -> (out, states, cache)."""
    if kind == "LSTM":
        out, h, c, cache = ref.lstm_forward(x, state[0], state[1], *W)
        return out, (h, c), cache
    if kind == "GRU":
        out, h, cache = ref.gru_forward(x, state[0], *W)
    else:
        out, h, cache = ref.rnn_forward(x, state[0], *W, nonlinearity=nonlinearity)
    return out, (h,), cache


def _ref_back(kind, d_out, d_states, cache):
    if kind == "LSTM":
        g = ref.lstm_backward(d_out, d_states[0], d_states[1], cache)
        return g.dx, (g.dh0, g.dc0), g[3:]
    fn = ref.gru_backward if kind == "GRU" else ref.rnn_backward
    g = fn(d_out, d_states[0], cache)
    return g.dx, (g.dh0,), g[2:]


def reference_stack(kind, params, x, hx, lengths, num_layers, D, masks, d_out, d_finals,
                    nonlinearity="tanh"):
    """Forward and backward of the stack, in float64, composed of seqkern.reference
    calls on one sequence at a time. x (T, B, I); hx: tuple of (L D, B, H);
    masks[l]: multiplies out_l (l < L - 1) or None; d_out (T, B, D H); d_finals
    like hx. Returns out, finals, dx, d_hx, grads (dict like params)."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    T, B, _ = x.shape
    H = p["weight_hh_l0"].shape[1]
    sfx = ("", "_reverse")
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    finals = [np.zeros((num_layers * D, B, H)) for _ in hx]
    inputs, caches = [x.astype(np.float64)], {}
    for l in range(num_layers):
        inp, out = inputs[-1], np.zeros((T, B, D * H))
        for d in range(D):
            W = [p.get(f"{n}_l{l}{sfx[d]}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            for b in range(B):
                n = lengths[b]
                s0 = tuple(s[l * D + d, b:b + 1].astype(np.float64) for s in hx)
                if n == 0:
                    for f, s in zip(finals, s0):
                        f[l * D + d, b] = s[0]
                    continue
                xs = inp[:n, b:b + 1] if d == 0 else inp[:n, b:b + 1][::-1]
                o, s_n, c = _ref_call(kind, xs, s0, W, nonlinearity)
                out[:n, b, d * H:(d + 1) * H] = (o if d == 0 else o[::-1])[:, 0]
                for f, s in zip(finals, s_n):
                    f[l * D + d, b] = s[0]
                caches[l, d, b] = c
        if masks[l + 1] is not None:
            out = out * masks[l + 1]
        inputs.append(out)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    d_hx = [np.zeros((num_layers * D, B, H)) for _ in hx]
    g_in = d_out.astype(np.float64)
    for l in reversed(range(num_layers)):
        if masks[l + 1] is not None:
            g_in = g_in * masks[l + 1]
        dx = np.zeros_like(inputs[l])
        for d in range(D):
            for b in range(B):
                n = lengths[b]
                ds = tuple(s[l * D + d, b:b + 1].astype(np.float64) for s in d_finals)
                if n == 0:
                    for g, s in zip(d_hx, ds):
                        g[l * D + d, b] = s[0]
                    continue
                do = g_in[:n, b:b + 1, d * H:(d + 1) * H]
                gx, ds0, gw = _ref_back(kind, do if d == 0 else do[::-1], ds, caches[l, d, b])
                dx[:n, b] += (gx if d == 0 else gx[::-1])[:, 0]
                for g, s in zip(d_hx, ds0):
                    g[l * D + d, b] = s[0]
                for name, gk in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), gw):
                    if gk is not None:
                        grads[f"{name}_l{l}{sfx[d]}"] += gk
        g_in = dx
    return inputs[-1], finals, g_in, d_hx, grads


def run_layer(m, x, hx, lengths, d_out, d_finals):
    """The layer's forward and backward with the stack's uniform tuples of states."""
    if isinstance(m, nn.LSTM):
        out, finals, cache = m.forward(x, hx, lengths=lengths)
        dx, d_hx = m.backward(d_out, d_finals, cache)
    else:
        out, h_n, cache = m.forward(x, None if hx is None else hx[0], lengths=lengths)
        finals = (h_n,)
        dx, dh0 = m.backward(d_out, None if d_finals is None else d_finals[0], cache)
        d_hx = (dh0,)
    return out, finals, dx, d_hx


def random_case(kind, dtype, rng, T=5, B=3, I=3, H=4, num_layers=2, D=2):
    n_states = 2 if kind == "LSTM" else 1
    x = rng.standard_normal((T, B, I)).astype(dtype)
    hx = tuple(rng.standard_normal((num_layers * D, B, H)).astype(dtype) for _ in range(n_states))
    d_out = rng.standard_normal((T, B, D * H)).astype(dtype)
    d_finals = tuple(rng.standard_normal((num_layers * D, B, H)).astype(dtype)
                     for _ in range(n_states))
    return x, hx, d_out, d_finals


CONFIGS = [
    dict(num_layers=1, bidirectional=False, lengths=None),
    dict(num_layers=2, bidirectional=True, lengths=None),
    dict(num_layers=2, bidirectional=True, lengths=[5, 0, 3]),
    dict(num_layers=3, bidirectional=False, lengths=[2, 5, 1]),       # wavefront, 3 chunks
    dict(num_layers=2, bidirectional=False, lengths=[13, 0, 6], T=13),  # wavefront, 7 chunks
    dict(num_layers=2, bidirectional=False, lengths=None, T=13, B=16),  # batch 16: layer by layer
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c['num_layers']}"
                         f"{'bi' if c['bidirectional'] else ''}{'len' if c['lengths'] else ''}")
def test_stack_matches_reference_composition(kind, dtype, config, rng):
    L, bi, lengths = config["num_layers"], config["bidirectional"], config["lengths"]
    D = 2 if bi else 1
    extra = dict(nonlinearity="relu") if kind == "RNN" else {}
    m = make(kind, dtype, input_size=3, hidden_size=4, num_layers=L, bidirectional=bi, **extra)
    x, hx, d_out, d_finals = random_case(kind, dtype, rng, T=config.get("T", 5),
                                         B=config.get("B", 3), num_layers=L, D=D)
    out, finals, dx, d_hx = run_layer(m, x, hx, lengths, d_out, d_finals)
    e_out, e_finals, e_dx, e_dhx, e_grads = reference_stack(
        kind, m.params, x, hx, lengths, L, D, [None] * (L + 1), d_out, d_finals,
        nonlinearity="relu" if kind == "RNN" else "tanh")
    check = (lambda a, e, name: assert_close(a, e, dtype, name)) if dtype == np.float64 else \
        (lambda a, e, name: np.testing.assert_allclose(a, e, err_msg=name, **F32_STACK))
    check(out, e_out, "out")
    for i, (a, e) in enumerate(zip(finals, e_finals)):
        check(a, e, f"final state {i}")
    check(dx, e_dx, "dx")
    for i, (a, e) in enumerate(zip(d_hx, e_dhx)):
        check(a, e, f"gradient of initial state {i}")
    for k in m.params:
        check(m.grads[k], e_grads[k], k)
        assert m.grads[k].dtype == dtype


def test_wavefront_below_a_batch_of_16(rng):
    """A one-direction stack runs as a wavefront over chunks of steps for B < 16,
    else layer after layer (whole sequences): by the batch, whatever the threads."""
    m = nn.LSTM(3, 4, num_layers=2, dtype=np.float64, rng=rng)
    for B, wavefront in ((_rnn.WAVEFRONT_BATCH - 1, True), (_rnn.WAVEFRONT_BATCH, False)):
        x = rng.standard_normal((9, B, 3))
        for n in (1, 2):
            with seqkern.threads(n):
                cache = m.forward(x)[2]
            assert (cache.chunks is not None) == wavefront, (B, n)


def test_wavefront_rule_as_shipped(rng, monkeypatch):
    """With the shipped sizes (not the small ones of this file's other tests): chunks
    of at least WAVEFRONT_ROWS rows, and a wavefront only over WAVEFRONT_CHUNKS or
    more of them, at any thread count."""
    monkeypatch.setattr(_rnn, "WAVEFRONT_ROWS", SHIPPED[0])
    monkeypatch.setattr(_rnn, "WAVEFRONT_CHUNKS", SHIPPED[1])
    rows, n_chunks = SHIPPED
    m = nn.GRU(2, 3, num_layers=2, dtype=np.float64, rng=rng)
    for B in (1, 5):
        C = -(-rows // B)                                   # steps of a chunk of `rows` rows
        for T, wavefront in ((n_chunks * C - 1, False), (n_chunks * C, True)):
            x = rng.standard_normal((T, B, 2))
            for n in (1, 2):
                with seqkern.threads(n):
                    cache = m.forward(x)[2]
                assert (cache.chunks is not None) == wavefront, (B, T, n)
                if wavefront:
                    assert len(cache.chunks) == n_chunks
                    assert min(t1 - t0 for t0, t1 in cache.chunks) * B >= rows


@pytest.mark.parametrize("kind", list(KINDS))
def test_batch_first_is_the_transpose(kind, rng):
    kw = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    tm, bf = make(kind, **kw), make(kind, batch_first=True, **kw)
    x, hx, d_out, d_finals = random_case(kind, np.float64, rng)
    out, finals, dx, d_hx = run_layer(tm, x, hx, [5, 2, 4], d_out, d_finals)
    out2, finals2, dx2, d_hx2 = run_layer(bf, x.transpose(1, 0, 2), hx, [5, 2, 4],
                                          d_out.transpose(1, 0, 2), d_finals)
    np.testing.assert_array_equal(out2, out.transpose(1, 0, 2))
    np.testing.assert_array_equal(dx2, dx.transpose(1, 0, 2))
    for a, b in zip(finals + d_hx, finals2 + d_hx2):
        np.testing.assert_array_equal(a, b)
    for k in tm.grads:
        np.testing.assert_array_equal(tm.grads[k], bf.grads[k])


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradients_accumulate_and_zero_grad(kind, rng):
    m = make(kind, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x, hx, d_out, d_finals = random_case(kind, np.float64, rng)
    run_layer(m, x, hx, None, d_out, d_finals)
    once = {k: v.copy() for k, v in m.grads.items()}
    run_layer(m, x, hx, None, d_out, d_finals)
    for k in once:
        np.testing.assert_allclose(m.grads[k], 2 * once[k], rtol=1e-12, atol=0, err_msg=k)
    m.zero_grad()
    assert all(not g.any() for g in m.grads.values())


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bidirectional", [True, False])
def test_finite_differences(kind, bidirectional, rng):
    """Every parameter and input of a 2-layer stack with lengths (one direction:
    the wavefront over two chunks of steps)."""
    L, D, T, lengths = 2, 2 if bidirectional else 1, 3 if bidirectional else 6, [3, 1]
    m = make(kind, input_size=2, hidden_size=2, num_layers=L, bidirectional=bidirectional)
    x, hx, d_out, d_finals = random_case(kind, np.float64, rng, T=T, B=2, I=2, H=2, D=D)

    def loss():
        out, finals, _, _ = run_layer_forward(m, x, hx, lengths)
        return np.sum(out * d_out) + sum(np.sum(f * g) for f, g in zip(finals, d_finals))

    _, _, dx, d_hx = run_layer(m, x, hx, lengths, d_out, d_finals)
    targets = [(k, m.params[k], m.grads[k]) for k in m.params] + [("x", x, dx)] + \
        [(f"hx[{i}]", h, g) for i, (h, g) in enumerate(zip(hx, d_hx))]
    for name, arr, grad in targets:
        np.testing.assert_allclose(grad, numeric_grad(loss, arr), rtol=1e-5, atol=1e-7,
                                   err_msg=name)


def run_layer_forward(m, x, hx, lengths):
    if isinstance(m, nn.LSTM):
        out, finals, cache = m.forward(x, hx, lengths=lengths)
    else:
        out, h_n, cache = m.forward(x, hx[0], lengths=lengths)
        finals = (h_n,)
    return out, finals, cache, None


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bidirectional", [True, False])
def test_dropout(kind, bidirectional, rng):
    D = 2 if bidirectional else 1
    kw = dict(input_size=3, hidden_size=4, num_layers=3, bidirectional=bidirectional)
    plain = make(kind, **kw)
    drop = make(kind, dropout=0.4, **kw)
    x, hx, d_out, d_finals = random_case(kind, np.float64, rng, T=9, num_layers=3, D=D)
    # eval mode: the identity
    drop.eval()
    out, finals, dx, d_hx = run_layer(plain, x, hx, None, d_out, d_finals)
    out2, finals2, dx2, d_hx2 = run_layer(drop, x, hx, None, d_out, d_finals)
    for u, v in zip((out, dx) + finals + d_hx, (out2, dx2) + finals2 + d_hx2):
        np.testing.assert_array_equal(u, v)
    for k in plain.grads:
        np.testing.assert_array_equal(plain.grads[k], drop.grads[k], err_msg=k)
    # train mode: masks (u >= p) / (1 - p), u ~ U[0, 1) (T, B, D H), drawn layer by layer
    drop.train()
    drop.zero_grad()
    draws = copy.deepcopy(drop.rng)
    masks = [None] + [(draws.random((9, 3, 4 * D)) >= 0.4) / 0.6 for _ in range(2)] + [None]
    out, finals, dx, d_hx = run_layer(drop, x, hx, [9, 2, 7], d_out, d_finals)
    e_out, e_finals, e_dx, e_dhx, e_grads = reference_stack(
        kind, drop.params, x, hx, [9, 2, 7], 3, D, masks, d_out, d_finals)
    assert_close(out, e_out, np.float64, "out")
    assert_close(dx, e_dx, np.float64, "dx")
    for k in drop.params:
        assert_close(drop.grads[k], e_grads[k], np.float64, k)
    assert 0 < (masks[1] == 0).mean() < 1


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bidirectional", [True, False])
def test_one_thread_equals_two(kind, bidirectional, rng):
    D = 2 if bidirectional else 1
    kw = dict(input_size=3, hidden_size=8, num_layers=3, bidirectional=bidirectional)
    a, b = make(kind, np.float32, **kw), make(kind, np.float32, **kw)
    x, hx, d_out, d_finals = random_case(kind, np.float32, rng, T=9, B=4, H=8, num_layers=3, D=D)
    with seqkern.threads(1):
        r1 = run_layer(a, x, hx, [9, 4, 0, 7], d_out, d_finals)
    with seqkern.threads(2):
        r2 = run_layer(b, x, hx, [9, 4, 0, 7], d_out, d_finals)
    np.testing.assert_array_equal(r1[0], r2[0])
    np.testing.assert_array_equal(r1[2], r2[2])
    for u, v in zip(r1[1] + r1[3], r2[1] + r2[3]):
        np.testing.assert_array_equal(u, v)
    for k in a.grads:
        np.testing.assert_array_equal(a.grads[k], b.grads[k], err_msg=k)


@pytest.mark.parametrize("kind", list(KINDS))
def test_parameters_and_init(kind):
    G = KINDS[kind]
    m = make(kind, np.float32, input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    expected = []
    for l in range(2):
        for s in ("", "_reverse"):
            I = 3 if l == 0 else 10
            expected += [(f"weight_ih_l{l}{s}", (G * 5, I)), (f"weight_hh_l{l}{s}", (G * 5, 5)),
                         (f"bias_ih_l{l}{s}", (G * 5,)), (f"bias_hh_l{l}{s}", (G * 5,))]
    assert [(k, v.shape) for k, v in m.params.items()] == expected
    assert all(v.dtype == np.float32 for v in m.params.values())
    bound = 1 / np.sqrt(5)
    assert all(np.abs(v).max() <= bound for v in m.params.values())
    same = make(kind, np.float32, input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    for k in m.params:
        np.testing.assert_array_equal(m.params[k], same.params[k])
    nobias = make(kind, input_size=3, hidden_size=5, bias=False)
    assert list(nobias.params) == ["weight_ih_l0", "weight_hh_l0"]


def test_state_dict_round_trip_and_errors(rng):
    a = make("GRU", input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    b = make("GRU", input_size=3, hidden_size=4, num_layers=2, bidirectional=True,
             rng=np.random.default_rng(99))
    ref_w = b.params["weight_hh_l1"]          # references stay valid after a load
    assert b.load_state_dict(a.state_dict()) == ([], [])
    assert ref_w is b.params["weight_hh_l1"]
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    sd = a.state_dict()
    sd["weight_ih_l0"][...] = 0             # a copy, not the parameters
    assert a.params["weight_ih_l0"].any()
    with pytest.raises(ValueError, match="missing keys.*bias_hh_l1_reverse"):
        b.load_state_dict({k: v for k, v in sd.items() if k != "bias_hh_l1_reverse"})
    with pytest.raises(ValueError, match="unexpected keys.*'extra'"):
        b.load_state_dict({**sd, "extra": np.zeros(1)})
    assert b.load_state_dict({**sd, "extra": np.zeros(1)}, strict=False) == ([], ["extra"])
    before = b.state_dict()
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l0'\] must have shape"):
        b.load_state_dict({**sd, "weight_ih_l1": np.ones_like(sd["weight_ih_l1"]),
                           "weight_hh_l0": np.zeros((4, 4))})
    for k in before:                        # nothing changed
        np.testing.assert_array_equal(before[k], b.params[k])
    # a value that cannot be cast, after keys that could: named, and nothing changed
    with pytest.raises(TypeError, match=r"state_dict\['bias_hh_l1_reverse'\] must hold real"):
        b.load_state_dict({**sd, "bias_hh_l1_reverse": np.full((12,), "x")})
    for k in before:
        np.testing.assert_array_equal(before[k], b.params[k])


def test_errors_name_the_argument(rng):
    m = make("LSTM", input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x = rng.standard_normal((5, 2, 3))
    with pytest.raises(ValueError, match=r"h0 must have shape \(num_layers \* D, B, H\)"):
        m.forward(x, (np.zeros((2, 2, 4)), np.zeros((4, 2, 4))))
    with pytest.raises(ValueError, match="c0 must have shape"):
        m.forward(x, (np.zeros((4, 2, 4)), np.zeros((4, 3, 4))))
    with pytest.raises(TypeError, match="hx must be a pair"):
        m.forward(x, np.zeros((4, 2, 4)))
    with pytest.raises(ValueError, match="x must have shape .* input_size = 3"):
        m.forward(rng.standard_normal((5, 2, 4)))
    with pytest.raises(TypeError, match="x must have the layer's dtype float64"):
        m.forward(x.astype(np.float32))
    with pytest.raises(ValueError, match="lengths"):
        m.forward(x, lengths=[6, 1])
    out, _, cache = m.forward(x)
    with pytest.raises(ValueError, match="d_out must have the shape of out"):
        m.backward(out[:, :1], None, cache)
    with pytest.raises(TypeError, match="cache must be the cache returned by"):
        m.backward(out, None, None)
    twin = make("LSTM", input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    with pytest.raises(TypeError, match="this LSTM's forward, got one returned by another LSTM"):
        twin.backward(out, None, cache)     # another stack's cache, even of the same shape
    with pytest.raises(TypeError, match="another LSTM"):
        copy.deepcopy(m).backward(out, None, cache)     # a copy's, too
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        nn.GRU(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        nn.GRU(3, 0)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        nn.GRU(3, 4, dtype=np.int32)


# -- against PyTorch, when it is installed ----------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("batch_first,bidirectional", [(False, True), (True, True), (False, False)])
def test_against_torch(kind, batch_first, bidirectional, rng):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    T, B, I, H, L, D = 6, 3, 3, 4, 2, 2 if bidirectional else 1
    tm = getattr(torch.nn, kind)(I, H, num_layers=L, bidirectional=bidirectional,
                                 batch_first=batch_first).double()
    m = make(kind, input_size=I, hidden_size=H, num_layers=L, bidirectional=bidirectional,
             batch_first=batch_first)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    lengths = np.array([6, 2, 4])
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    hx = tuple(rng.standard_normal((L * D, B, H)) for _ in range(2 if kind == "LSTM" else 1))
    xt = torch.tensor(x, requires_grad=True)
    hxt = tuple(torch.tensor(h, requires_grad=True) for h in hx)
    packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                  enforce_sorted=False)
    out_p, fin_t = tm(packed, hxt if kind == "LSTM" else hxt[0])
    out_t, _ = pad_packed_sequence(out_p, batch_first=batch_first, total_length=T)
    fin_t = fin_t if kind == "LSTM" else (fin_t,)
    d_out = rng.standard_normal(out_t.shape)
    d_fin = tuple(rng.standard_normal(h.shape) for h in hx)
    loss = (out_t * torch.tensor(d_out)).sum() + sum((f * torch.tensor(g)).sum()
                                                      for f, g in zip(fin_t, d_fin))
    loss.backward()
    out, finals, dx, d_hx = run_layer(m, x, hx, lengths, d_out, d_fin)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-9, atol=1e-12)
    for a, e in zip(finals, fin_t):
        np.testing.assert_allclose(a, e.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for a, e in zip(d_hx, hxt):
        np.testing.assert_allclose(a, e.grad.numpy(), rtol=1e-9, atol=1e-12)
    for k, p in tm.named_parameters():
        np.testing.assert_allclose(m.grads[k], p.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    # and back: our state dict loads into torch as it is
    m2 = make(kind, input_size=I, hidden_size=H, num_layers=L, bidirectional=bidirectional,
              rng=np.random.default_rng(3))
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m2.state_dict().items()})
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), m2.params[k])


# -- MultiheadAttention -------------------------------------------------------------------


def mha_reference(m, query, key, value, may_attend, d_out):
    """Projections in NumPy around seqkern.reference attention, float64, time-major
    inputs; may_attend (B, h, L, S) booleans. Returns out, (dq, dk, dv), grads."""
    p = {k: v.astype(np.float64) for k, v in m.params.items()}
    E, h = m.embed_dim, m.num_heads
    if "in_proj_weight" in p:
        Ws = np.split(p["in_proj_weight"], 3)
    else:
        Ws = [p[f"{n}_proj_weight"] for n in "qkv"]
    bs = np.split(p["in_proj_bias"], 3)
    xs = [np.asarray(a, np.float64).transpose(1, 0, 2) for a in (query, key, value)]  # (B, T, n)
    B = xs[0].shape[0]
    heads = [(x @ W.T + b).reshape(B, -1, h, E // h).transpose(0, 2, 1, 3)
             for x, W, b in zip(xs, Ws, bs)]
    o, cache = ref.attention_forward(*heads, mask=may_attend)
    o2 = o.transpose(0, 2, 1, 3).reshape(B, -1, E)
    out = o2 @ p["out_proj.weight"].T + p["out_proj.bias"]
    d2 = np.asarray(d_out, np.float64).transpose(1, 0, 2)
    grads = {"out_proj.weight": np.einsum("bte,btf->ef", d2, o2), "out_proj.bias": d2.sum((0, 1))}
    g = ref.attention_backward((d2 @ p["out_proj.weight"]).reshape(B, -1, h, E // h)
                               .transpose(0, 2, 1, 3), cache)
    dws, dbs, dxs = [], [], []
    for x, W, dy in zip(xs, Ws, g):
        dy = dy.transpose(0, 2, 1, 3).reshape(B, -1, E)
        dws.append(np.einsum("bte,btn->en", dy, x))
        dbs.append(dy.sum((0, 1)))
        dxs.append((dy @ W).transpose(1, 0, 2))
    if "in_proj_weight" in p:
        grads["in_proj_weight"] = np.concatenate(dws)
    else:
        grads.update({f"{n}_proj_weight": w for n, w in zip("qkv", dws)})
    grads["in_proj_bias"] = np.concatenate(dbs)
    return out.transpose(1, 0, 2), dxs, grads


def mha_case(rng, dtype, L=5, S=6, B=2, E=8, kdim=8, vdim=8):
    q = rng.standard_normal((L, B, E)).astype(dtype)
    k = rng.standard_normal((S, B, kdim)).astype(dtype)
    v = rng.standard_normal((S, B, vdim)).astype(dtype)
    return q, k, v, rng.standard_normal((L, B, E)).astype(dtype)


def mha(dtype=np.float64, E=8, h=2, **kw):
    m = nn.MultiheadAttention(E, h, dtype=dtype, rng=np.random.default_rng(5), **kw)
    for k in ("in_proj_bias", "out_proj.bias"):    # PyTorch starts them at zero; test them
        m.params[k][...] = np.random.default_rng(6).standard_normal(m.params[k].shape)
    return m


MASKS = {
    "none": lambda B, L, S: ({}, np.ones((B, 2, L, S), bool)),
    "padding at the end": lambda B, L, S: (
        dict(key_padding_mask=np.arange(S) >= np.array([[S], [2]])),
        np.broadcast_to((np.arange(S) < np.array([[S], [2]]))[:, None, None], (B, 2, L, S))),
    "padding anywhere + attn_mask": lambda B, L, S: (
        dict(key_padding_mask=np.array([[False] * (S - 1) + [True], [True] + [False] * (S - 1)]),
             attn_mask=np.eye(L, S, 1, dtype=bool)),
        np.broadcast_to((~np.array([[False] * (S - 1) + [True], [True] + [False] * (S - 1)]))
                        [:, None, None] & ~np.eye(L, S, 1, dtype=bool), (B, 2, L, S))),
    "causal": lambda B, L, S: (dict(is_causal=True),
                               np.broadcast_to(np.tri(L, S, dtype=bool), (B, 2, L, S))),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masks", list(MASKS))
@pytest.mark.parametrize("dims", [(8, 8, 6), (8, 5, 3)], ids=["packed", "kdim-vdim"])
def test_mha_matches_reference_composition(dtype, masks, dims, rng):
    E, kdim, vdim = dims
    L, S = (5, 5) if masks == "causal" else (5, 6)
    m = mha(dtype, E, kdim=kdim, vdim=vdim)
    q, k, v, d_out = mha_case(rng, dtype, L, S, 2, E, kdim, vdim)
    kw, may = MASKS[masks](2, L, S)
    out, cache = m.forward(q, k, v, **kw)
    dxs = m.backward(d_out, cache)
    e_out, e_dxs, e_grads = mha_reference(m, q, k, v, may, d_out)
    check = (lambda a, e, name: assert_close(a, e, dtype, name)) if dtype == np.float64 else \
        (lambda a, e, name: np.testing.assert_allclose(a, e, err_msg=name, **F32_STACK))
    check(out, e_out, "out")
    for name, a, e in zip(("d_query", "d_key", "d_value"), dxs, e_dxs):
        check(a, e, name)
    for key in m.params:
        check(m.grads[key], e_grads[key], key)


def test_mha_masks_float_and_bool_agree(rng):
    """A float mask of 0 / -inf means what the boolean one means; causal with L != S
    is PyTorch's (key j <= query i)."""
    m = mha()
    q, k, v, _ = mha_case(rng, np.float64, 4, 6)
    pad = np.array([[False, True, False, False, False, True], [False] * 5 + [True]])
    attn = np.tri(4, 6, dtype=bool)
    out_b, _ = m.forward(q, k, v, key_padding_mask=pad, attn_mask=~attn)
    out_f, _ = m.forward(q, k, v, key_padding_mask=np.where(pad, -np.inf, 0.0),
                         attn_mask=np.where(attn, 0.0, -np.inf))
    out_c, _ = m.forward(q, k, v, key_padding_mask=pad, is_causal=True)
    np.testing.assert_allclose(out_f, out_b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out_c, out_b, rtol=1e-12, atol=1e-12)


def test_mha_finite_differences(rng):
    m = mha(E=4, h=2, kdim=3, vdim=2)
    q, k, v, d_out = mha_case(rng, np.float64, 3, 4, 2, 4, 3, 2)
    pad = np.array([[False, False, True, False], [False] * 4])

    def loss():
        return np.sum(m.forward(q, k, v, key_padding_mask=pad)[0] * d_out)

    dxs = m.backward(d_out, m.forward(q, k, v, key_padding_mask=pad)[1])
    targets = [(n, m.params[n], m.grads[n]) for n in m.params] + \
        list(zip(("query", "key", "value"), (q, k, v), dxs))
    for name, arr, grad in targets:
        np.testing.assert_allclose(grad, numeric_grad(loss, arr), rtol=1e-5, atol=1e-8,
                                   err_msg=name)


def test_mha_batch_first_and_errors(rng):
    a, b = mha(), mha(batch_first=True)
    q, k, v, d_out = mha_case(rng, np.float64)
    out, cache = a.forward(q, k, v)
    out2, cache2 = b.forward(*(x.transpose(1, 0, 2) for x in (q, k, v)))
    # the projections see the rows in another order: close, not bitwise
    np.testing.assert_allclose(out2, out.transpose(1, 0, 2), rtol=1e-12, atol=1e-14)
    for x, y in zip(a.backward(d_out, cache), b.backward(d_out.transpose(1, 0, 2), cache2)):
        np.testing.assert_allclose(y, x.transpose(1, 0, 2), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        nn.MultiheadAttention(8, 3)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, S\)"):
        a.forward(q, k, v, key_padding_mask=np.zeros((2, 5), bool))
    with pytest.raises(ValueError, match="attn_mask must have shape"):
        a.forward(q, k, v, attn_mask=np.zeros((6, 5), bool))
    with pytest.raises(TypeError, match="attn_mask must be a boolean or floating"):
        a.forward(q, k, v, attn_mask=np.zeros((5, 6), int))
    with pytest.raises(ValueError, match="key must have a last axis of size 8"):
        a.forward(q, k[..., :3], v)
    with pytest.raises(TypeError, match="cache must be the cache returned by this Multi"):
        b.backward(d_out, cache)
    assert list(nn.MultiheadAttention(8, 2, kdim=4).params) == [
        "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
        "out_proj.weight", "out_proj.bias"]


@pytest.mark.parametrize("L,S,B", [(3, 0, 2), (0, 4, 2), (3, 4, 0)])
def test_mha_empty_sequences(L, S, B, rng):
    """No keys, no queries or no batch: forward and backward run, shapes hold, and
    with no key a query attends to nothing (zeros) and gets a zero gradient."""
    m = mha(E=8, h=2, kdim=5, vdim=3)
    q, k, v, d_out = mha_case(rng, np.float64, L, S, B, 8, 5, 3)
    out, cache = m.forward(q, k, v)
    assert out.shape == (L, B, 8)
    dq, dk, dv = m.backward(d_out, cache)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    if S == 0:
        assert not dq.any()
    assert all(np.isfinite(g).all() for g in m.grads.values())


@pytest.mark.parametrize("kdim", [None, 5])
def test_mha_against_torch(kdim, rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    E, h, L, S, B = 8, 2, 5, 6, 3
    tm = torch.nn.MultiheadAttention(E, h, kdim=kdim, vdim=kdim).double()
    m = nn.MultiheadAttention(E, h, kdim=kdim, vdim=kdim, dtype=np.float64)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    kd = kdim or E
    q, k, v, d_out = mha_case(rng, np.float64, L, S, B, E, kd, kd)
    pad = np.zeros((B, S), bool)
    pad[1, 4:] = True
    pad[2, 0] = True
    attn = ~np.tri(L, S, 1, dtype=bool)
    ts = [torch.tensor(x, requires_grad=True) for x in (q, k, v)]
    out_t, _ = tm(*ts, key_padding_mask=torch.tensor(pad), attn_mask=torch.tensor(attn),
                  need_weights=False)
    (out_t * torch.tensor(d_out)).sum().backward()
    out, cache = m.forward(q, k, v, key_padding_mask=pad, attn_mask=attn)
    dxs = m.backward(d_out, cache)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-9, atol=1e-12)
    for a, t in zip(dxs, ts):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-9, atol=1e-12)
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(m.grads[name], p.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    assert set(m.state_dict()) == set(tm.state_dict())


# -- Linear, Embedding, cross_entropy, clipping -------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(dtype, rng):
    m = nn.Linear(3, 4, dtype=dtype, rng=rng)
    assert m.params["weight"].shape == (4, 3) and m.params["bias"].shape == (4,)
    assert np.abs(m.params["weight"]).max() <= 1 / np.sqrt(3)
    x = rng.standard_normal((2, 5, 3)).astype(dtype)
    d_y = rng.standard_normal((2, 5, 4)).astype(dtype)
    y, cache = m.forward(x)
    W, b = m.params["weight"].astype(np.float64), m.params["bias"].astype(np.float64)
    assert_close(y, x.astype(np.float64) @ W.T + b, dtype, "y")
    for _ in range(2):                                    # gradients accumulate
        dx = m.backward(d_y, cache)
    assert_close(dx, d_y.astype(np.float64) @ W, dtype, "dx")
    assert_close(m.grads["weight"], 2 * np.einsum("bto,bti->oi", d_y.astype(np.float64), x),
                 dtype, "weight")
    assert_close(m.grads["bias"], 2 * d_y.astype(np.float64).sum((0, 1)), dtype, "bias")
    with pytest.raises(ValueError, match="x must have a last axis of size 3"):
        m.forward(x[..., :2])
    with pytest.raises(ValueError, match=r"d_y must have the shape of y, \(2, 5, 4\)"):
        m.backward(d_y.transpose(1, 0, 2), cache)     # as many rows, another layout


def test_embedding(rng):
    m = nn.Embedding(6, 3, padding_idx=-1, dtype=np.float64, rng=rng)
    assert m.padding_idx == 5 and not m.params["weight"][5].any()
    idx = np.array([[0, 5, 2], [2, 2, 5]])
    out, cache = m.forward(idx)
    np.testing.assert_array_equal(out, m.params["weight"][idx])
    d = rng.standard_normal((2, 3, 3))
    assert m.backward(d, cache) is None
    expected = np.zeros((6, 3))
    for (i, j), row in np.ndenumerate(idx):
        if row != 5:
            expected[row] += d[i, j]
    np.testing.assert_allclose(m.grads["weight"], expected, rtol=1e-14)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 6\)"):
        m.forward([6])
    with pytest.raises(TypeError, match="indices must be an integer array"):
        m.forward([0.5])
    with pytest.raises(ValueError, match="padding_idx"):
        nn.Embedding(6, 3, padding_idx=6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_embedding_backward_sums_repeated_indices(dtype, padding_idx, rng):
    """Repeated indices (every index several times, in any order), padding_idx and
    a non-contiguous d_out against a dense one-hot product; two backwards add up."""
    V, E = 7, 5
    m = nn.Embedding(V, E, padding_idx=padding_idx, dtype=dtype, rng=rng)
    idx = rng.integers(0, V, (4, 6, 3))
    idx[0, 0, :] = 6                                       # one index many times
    _, cache = m.forward(idx)
    d = rng.standard_normal((4, 6, 3, 2 * E)).astype(dtype)[..., ::2]   # (4, 6, 3, E), strided
    onehot = (idx.reshape(-1, 1) == np.arange(V)).astype(np.float64)    # (N, V)
    if padding_idx is not None:
        onehot[:, padding_idx] = 0
    expected = onehot.T @ d.reshape(-1, E).astype(np.float64)          # (V, E)
    m.backward(d, cache)
    assert m.grads["weight"].dtype == dtype
    assert_close(m.grads["weight"], expected, dtype, "weight")
    m.backward(d, cache)
    assert_close(m.grads["weight"], 2 * expected, dtype, "weight, twice")
    if padding_idx is not None:
        assert not m.grads["weight"][padding_idx].any()
    # nothing to add: no indices, or padding only
    m.zero_grad()
    nothing = [np.zeros((0, 2), int)] + ([] if padding_idx is None else [np.full((2, 2), 3)])
    for none in nothing:
        assert m.backward(np.ones(none.shape + (E,), dtype), m.forward(none)[1]) is None
    assert not m.grads["weight"].any()


def test_embedding_backward_propagates_nan(rng):
    m = nn.Embedding(4, 2, dtype=np.float64, rng=rng)
    _, cache = m.forward(np.array([1, 2, 1]))
    m.backward(np.array([[np.nan, 1.0], [2.0, 3.0], [1.0, np.inf]]), cache)
    g = m.grads["weight"]
    assert np.isnan(g[1, 0]) and g[1, 1] == np.inf and list(g[2]) == [2.0, 3.0]
    assert not g[[0, 3]].any()


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(dtype, reduction, rng):
    logits = (rng.standard_normal((6, 5)) * 3 + 1e4 * (np.arange(6) == 2)[:, None]).astype(dtype)
    targets = np.array([0, 4, 2, -100, 1, 3])
    loss, d = nn.cross_entropy(logits, targets, reduction=reduction)
    lp = _log_softmax(logits.astype(np.float64))
    valid = targets != -100
    per = np.where(valid, -lp[np.arange(6), np.where(valid, targets, 0)], 0)
    onehot = np.eye(5)[np.where(valid, targets, 0)] * valid[:, None]
    grad = (np.exp(lp) * valid[:, None] - onehot)
    if reduction == "mean":
        per, grad = per.sum() / valid.sum(), grad / valid.sum()
    elif reduction == "sum":
        per = per.sum()
    assert loss.dtype == dtype and d.dtype == dtype
    assert_close(loss, per, dtype, "loss")
    assert_close(d, grad, dtype, "d_logits")
    assert np.isfinite(loss).all()


def test_cross_entropy_gradient_nan_and_errors(rng):
    logits = rng.standard_normal((4, 3))
    targets = np.array([2, 0, 1, 1])
    _, d = nn.cross_entropy(logits, targets)
    num = numeric_grad(lambda: nn.cross_entropy(logits, targets)[0], logits)
    np.testing.assert_allclose(d, num, rtol=1e-6, atol=1e-9)
    bad = logits.copy()
    bad[1, 2] = np.nan
    loss, _ = nn.cross_entropy(bad, targets, reduction="none")
    assert np.isnan(loss[1]) and np.isfinite(loss[[0, 2, 3]]).all()
    loss, d = nn.cross_entropy(logits, np.full(4, -100))   # no row counted: as PyTorch,
    assert np.isnan(loss) and not d.any()                   # a NaN loss, a zero gradient
    for bad in (1.5, None, True):
        with pytest.raises(TypeError, match="ignore_index must be an integer"):
            nn.cross_entropy(logits, targets, ignore_index=bad)
    with pytest.raises(ValueError, match=r"targets must be in \[0, 3\)"):
        nn.cross_entropy(logits, [0, 3, 1, 1])
    with pytest.raises(ValueError, match=r"targets must have shape \(N,\)"):
        nn.cross_entropy(logits, [0, 1])
    with pytest.raises(ValueError, match="reduction must be one of"):
        nn.cross_entropy(logits, targets, reduction="avg")


def test_cross_entropy_against_torch(rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((7, 4)) * 5
    targets = np.array([0, 3, -1, 2, 1, -1, 3])
    lt = torch.tensor(logits, requires_grad=True)
    lt_loss = torch.nn.functional.cross_entropy(lt, torch.tensor(targets), ignore_index=-1)
    lt_loss.backward()
    loss, d = nn.cross_entropy(logits, targets, ignore_index=-1)
    np.testing.assert_allclose(loss, lt_loss.item(), rtol=1e-12)
    np.testing.assert_allclose(d, lt.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, np.inf])
def test_clip_grad_norm(norm_type, rng):
    grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5).astype(np.float32)}
    flat = np.concatenate([g.ravel().astype(np.float64) for g in grads.values()])
    total = np.linalg.norm(flat, norm_type)
    before = {k: v.copy() for k, v in grads.items()}
    assert nn.clip_grad_norm_(grads, 2 * total, norm_type) == pytest.approx(total, rel=1e-12)
    for k in grads:                                      # under the limit: unchanged
        np.testing.assert_array_equal(grads[k], before[k])
    assert nn.clip_grad_norm_([grads], total / 4, norm_type) == pytest.approx(total, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], before[k] / 4, rtol=1e-6)
        assert grads[k].dtype == before[k].dtype
    np.testing.assert_allclose(np.linalg.norm(np.concatenate(
        [g.ravel().astype(np.float64) for g in grads.values()]), norm_type), total / 4,
        rtol=1e-5)


def test_clip_grad_norm_in_pieces(monkeypatch, rng):
    """The 2-norm summed piece by piece (pieces of 7 elements: several per array, a
    short last one) and over a non-contiguous array (one piece) is the norm of all
    the elements."""
    from seqkern.nn import _basic

    monkeypatch.setattr(_basic, "PIECE", 7)
    grads = [rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((6, 3)).T,
             rng.standard_normal(3)]
    flat = np.concatenate([g.ravel().astype(np.float64) for g in grads])
    assert nn.clip_grad_norm_(grads, 1e9) == pytest.approx(np.linalg.norm(flat), rel=1e-12)


def test_clip_grad_norm_nonfinite_and_value():
    g = np.array([1.0, np.nan, 2.0])
    assert np.isnan(nn.clip_grad_norm_(g, 1.0))          # reported ...
    assert np.isnan(g).all()                              # ... and propagated, as PyTorch
    g = np.array([1.0, np.inf])
    with pytest.raises(RuntimeError, match="total norm .* inf"):
        nn.clip_grad_norm_(g, 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(g, [1.0, np.inf])      # untouched when it raises
    assert nn.clip_grad_norm_(g, 1.0) == np.inf
    g = {"w": np.array([[-3.0, 0.5], [np.nan, 2.0]], np.float32)}
    nn.clip_grad_value_(g, 1.0)
    np.testing.assert_array_equal(g["w"], np.array([[-1.0, 0.5], [np.nan, 1.0]], np.float32))
    with pytest.raises(TypeError, match="grads must"):
        nn.clip_grad_value_(3.0, 1.0)


# -- threads of the layers' own products ------------------------------------------------


def test_matmul_split_and_blas_counts_restored(rng):
    from threadpoolctl import threadpool_info
    from seqkern.nn import _parallel

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    a = rng.standard_normal((513, 256)).astype(np.float32)   # 513 * 256 * 256 >= 2^25
    b = rng.standard_normal((256, 256)).astype(np.float32)
    assert a.shape[0] * 256 * 256 >= _parallel.PAR_MIN_PRODUCT
    with seqkern.threads(1):
        one = _parallel.matmul(a, b)
    with seqkern.threads(2):
        two = _parallel.matmul(a, b.T.copy().T)             # and a non-contiguous operand
        with _parallel.blas_one_thread():                    # re-entrant
            assert all(i["num_threads"] == 1 for i in threadpool_info()
                       if i["user_api"] == "blas")
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(one, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before


def _blas_count_calls():
    """[(get, set)] ctypes calls of every BLAS library loaded that has known C
    thread-count functions (threadpoolctl's setter acts from one Python thread only)."""
    import ctypes
    from threadpoolctl import ThreadpoolController
    from seqkern._threads import _c_calls

    calls = []
    for lc in ThreadpoolController().select(user_api="blas").lib_controllers:
        get, put, wide = _c_calls(lc)
        if get is not None:
            n = ctypes.c_int64 if wide else ctypes.c_int
            calls.append((ctypes.CFUNCTYPE(n)(get), ctypes.CFUNCTYPE(None, n)(put)))
    return calls


def test_blas_held_at_one_thread_in_every_thread():
    """The layers' guard holds every BLAS library at one thread whichever Python
    thread enters it: threadpoolctl's setter, which it used, changes OpenBLAS only
    from the first thread that ever called it, and silently does nothing from the
    others. Counts set to 2 first, so that the check means something on a one-core
    machine too; restored after."""
    import threading
    from seqkern.nn import _parallel

    calls = _blas_count_calls()
    assert calls
    before = [get() for get, _ in calls]
    for _, put in calls:
        put(2)
    try:
        nn.Linear(4, 4, rng=0).forward(np.ones((2, 4), np.float32))    # the main thread first
        seen = []

        def other():
            with _parallel.blas_one_thread():
                seen.append([get() for get, _ in calls])
            seen.append([get() for get, _ in calls])
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert seen == [[1] * len(calls), [2] * len(calls)]
    finally:
        for (_, put), n in zip(calls, before):
            put(n)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_forked_inside_the_guard_gets_the_counts_back():
    """A child forked inside the guard (by the thread that entered it, or while
    another thread is inside it) starts with BLAS's counts as they were outside any
    block, and the guard still holds them at one thread in its own blocks; the
    parent's block ends as usual."""
    from seqkern.nn import _parallel

    calls = _blas_count_calls()
    before = [get() for get, _ in calls]
    for _, put in calls:
        put(2)
    try:
        with _parallel.blas_one_thread():
            pid = os.fork()
            if pid == 0:
                status = 1
                try:
                    outside = [get() for get, _ in calls]
                    with _parallel.blas_one_thread():
                        inside = [get() for get, _ in calls]
                    after = [get() for get, _ in calls]
                    ok = outside == after == [2] * len(calls) and inside == [1] * len(calls)
                    status = 0 if ok else 1
                finally:
                    os._exit(status)
            assert [get() for get, _ in calls] == [1] * len(calls)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [get() for get, _ in calls] == [2] * len(calls)
    finally:
        for (_, put), n in zip(calls, before):
            put(n)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_forked_while_a_thread_runs_layers():
    """A child forked while another thread is inside the layers' BLAS guard (or
    holds its lock) runs the layers: the guard's lock and depth start afresh in the
    child (it used to wait for ever on the lock)."""
    code = WAIT_CHILD + """
import os, sys, threading, time
import numpy as np
from seqkern import nn
lin = nn.Linear(4, 4, rng=0, dtype=np.float64)
x = np.ones((2, 4))
want = lin.forward(x)[0]
stop = threading.Event()
def loop():
    while not stop.is_set():
        lin.forward(x)
t = threading.Thread(target=loop)
t.start()
bad = 0
for i in range(20):
    if bad:
        break
    pid = os.fork()
    if pid == 0:
        ok = np.array_equal(lin.forward(x)[0], want)
        os._exit(0 if ok else 1)
    bad += wait_child(pid) != 0
stop.set()
t.join()
print("bad children", bad)
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(seqkern.__path__[0]),
                                                     env.get("PYTHONPATH")) if p)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env=env)
    assert "bad children 0" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bidirectional", [True, False])
def test_inference_forward_keeps_no_cache(kind, bidirectional, rng):
    m = make(kind, input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    x, hx, _, _ = random_case(kind, np.float64, rng, T=9, D=2 if bidirectional else 1)
    hx = hx if kind == "LSTM" else hx[0]
    out, finals, cache = m.forward(x, hx, lengths=[9, 3, 0])
    out2, finals2, none = m.forward(x, hx, lengths=[9, 3, 0], return_cache=False)
    assert none is None and cache is not None
    np.testing.assert_allclose(out2, out, rtol=1e-12, atol=1e-14)
    for a, b in zip(np.atleast_3d(finals2), np.atleast_3d(finals)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="with return_cache=True"):
        m.backward(out, None, none)
