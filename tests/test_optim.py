"""seqkern.optim against the update rules written out in NumPy, and against
torch.optim when it is installed."""

import numpy as np
import pytest

from seqkern import nn, optim


def params_and_grads(rng, dtype=np.float64):
    p = {"w": rng.standard_normal((3, 4)).astype(dtype), "b": rng.standard_normal(4).astype(dtype)}
    return p, {k: np.zeros_like(v) for k, v in p.items()}


def gradient_sequence(rng, p, steps=4):
    return [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in p.items()}
            for _ in range(steps)]


def run(opt, grads, seq):
    for g in seq:
        for k in grads:
            grads[k][...] = g[k]
        opt.step()


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, weight_decay=0.1),
                                dict(momentum=0.5, dampening=0.3),
                                dict(momentum=0.9, nesterov=True)])
def test_sgd_rule(kw, rng):
    p, grads = params_and_grads(rng)
    seq = gradient_sequence(rng, p)
    expected = {k: v.copy() for k, v in p.items()}
    mu, wd, damp = kw.get("momentum", 0), kw.get("weight_decay", 0), kw.get("dampening", 0)
    buf = {}
    for g in seq:
        for k in expected:
            d = g[k] + wd * expected[k]
            if mu:
                buf[k] = d.copy() if k not in buf else mu * buf[k] + (1 - damp) * d
                d = d + mu * buf[k] if kw.get("nesterov") else buf[k]
            expected[k] = expected[k] - 0.1 * d
    run(optim.SGD(p, grads, lr=0.1, **kw), grads, seq)
    for k in p:
        np.testing.assert_allclose(p[k], expected[k], rtol=1e-13, atol=1e-15, err_msg=k)


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_rule(cls, amsgrad, dtype, rng):
    p, grads = params_and_grads(rng, dtype)
    seq = gradient_sequence(rng, p, 5)
    lr, (b1, b2), eps, wd = 0.01, (0.8, 0.99), 1e-6, 0.05
    expected = {k: v.astype(np.float64) for k, v in p.items()}
    m = {k: 0.0 for k in p}
    v = {k: 0.0 for k in p}
    vmax = {k: 0.0 for k in p}
    for t, g in enumerate(seq, 1):
        for k in expected:
            gk = g[k].astype(np.float64)
            if cls == "AdamW":
                expected[k] = expected[k] * (1 - lr * wd)
            else:
                gk = gk + wd * expected[k]
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk ** 2
            vmax[k] = np.maximum(vmax[k], v[k])
            vh = (vmax[k] if amsgrad else v[k]) / (1 - b2 ** t)
            expected[k] = expected[k] - lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(vh) + eps)
    opt = getattr(optim, cls)([p], [grads], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                              amsgrad=amsgrad)
    run(opt, grads, seq)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for k in p:
        assert p[k].dtype == dtype
        np.testing.assert_allclose(p[k], expected[k], err_msg=k, **tol)


@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1, amsgrad=True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_in_pieces_equals_whole_arrays(kw, dtype, monkeypatch, rng):
    """The update done piece by piece (pieces of 5 elements: several per array and
    a short last one) gives the bits of one piece per array, and a non-contiguous
    parameter (updated whole, in place) the same values."""
    from seqkern.nn import _basic

    p, grads = params_and_grads(rng, dtype)                # (3, 4) and (4,)
    whole = {k: v.copy() for k, v in p.items()}
    strided = {"w": np.asfortranarray(p["w"]), "b": p["b"][::-1].copy()[::-1]}
    assert not any(v.flags.c_contiguous for v in strided.values())
    seq = gradient_sequence(rng, p, 3)
    run(optim.Adam(whole, grads, lr=0.01, **kw), grads, seq)   # one piece per array
    monkeypatch.setattr(_basic, "PIECE", 5)
    run(optim.Adam(p, grads, lr=0.01, **kw), grads, seq)
    g_strided = {k: np.zeros_like(v) for k, v in strided.items()}
    run(optim.Adam(strided, g_strided, lr=0.01, **kw), g_strided, seq)
    for k in p:
        np.testing.assert_array_equal(p[k], whole[k], err_msg=k)
        np.testing.assert_array_equal(strided[k], whole[k], err_msg=k)


def test_defaults_and_errors(rng):
    p, g = params_and_grads(rng)
    assert optim.AdamW(p, g).weight_decay == 0.01 and optim.Adam(p, g).weight_decay == 0
    a = optim.Adam(p, g)
    assert (a.lr, a.betas, a.eps) == (1e-3, (0.9, 0.999), 1e-8)
    g["w"][...] = 1
    optim.SGD(p, g).zero_grad()
    assert not g["w"].any()
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.SGD(p, g, lr=-1)
    with pytest.raises(ValueError, match="betas must be in"):
        optim.Adam(p, g, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="same structure"):
        optim.Adam(p, {"w": g["w"], "c": g["b"]})
    with pytest.raises(ValueError, match="same shape and dtype"):
        optim.Adam([p["w"]], [g["b"]])
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(p, g, nesterov=True)
    for bad in ((0.9, 0.99, 0.9), 0.9, "ab"):
        with pytest.raises(TypeError, match=r"betas must be a pair of numbers"):
            optim.Adam(p, g, betas=bad)
    with pytest.raises(ValueError, match="dampening must be finite"):
        optim.SGD(p, g, dampening=np.nan)


@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_read_only_parameter_refused_before_any_update(cls, rng):
    p, g = params_and_grads(rng)
    g["w"][...] = 1
    g["b"][...] = 1
    p["b"].flags.writeable = False
    before = {k: v.copy() for k, v in p.items()}
    opt = getattr(optim, cls)(p, g, lr=0.1, **({"momentum": 0.9} if cls == "SGD" else {}))
    with pytest.raises(ValueError, match=r"params\[1\] is read-only"):
        opt.step()
    for k in p:                                 # nothing updated, no state advanced
        np.testing.assert_array_equal(p[k], before[k])
    assert all(not s for s in opt.state)


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01,
                                                  nesterov=True)),
                                     ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
                                     ("AdamW", dict(lr=0.01))])
def test_against_torch(name, kw, rng):
    torch = pytest.importorskip("torch")
    lstm = nn.LSTM(3, 4, dtype=np.float64, rng=rng)
    tparams = [torch.tensor(v.copy(), requires_grad=True) for v in lstm.params.values()]
    topt = getattr(torch.optim, name)(tparams, **kw)
    opt = getattr(optim, name)(lstm.params, lstm.grads, **kw)
    for g in gradient_sequence(rng, lstm.params, 4):
        for t, k in zip(tparams, lstm.params):
            t.grad = torch.tensor(g[k])
            lstm.grads[k][...] = g[k]
        topt.step()
        opt.step()
    for t, k in zip(tparams, lstm.params):
        np.testing.assert_allclose(lstm.params[k], t.detach().numpy(), rtol=1e-12, atol=1e-14,
                                   err_msg=k)


def test_language_model_training_steps_against_torch(rng):
    """Embedding, 2-layer LSTM (the wavefront: T = 9 is three chunks), linear,
    cross-entropy, clipping and Adam: three training steps, as in PyTorch."""
    torch = pytest.importorskip("torch")
    T, B, V, H = 9, 3, 7, 5
    torch.manual_seed(0)
    t_emb, t_lstm, t_fc = torch.nn.Embedding(V, H, padding_idx=0), torch.nn.LSTM(H, H, 2), \
        torch.nn.Linear(H, V)
    t_mods = [m.double() for m in (t_emb, t_lstm, t_fc)]
    emb = nn.Embedding(V, H, padding_idx=0, dtype=np.float64)
    lstm = nn.LSTM(H, H, num_layers=2, dtype=np.float64)
    fc = nn.Linear(H, V, dtype=np.float64)
    mods = (emb, lstm, fc)
    for m, tm in zip(mods, t_mods):
        m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    t_params = [p for tm in t_mods for p in tm.parameters()]
    t_opt = torch.optim.Adam(t_params, lr=0.01)
    opt = optim.Adam([m.params for m in mods], [m.grads for m in mods], lr=0.01)
    for _ in range(3):
        tokens = rng.integers(0, V, (T, B))
        targets = rng.integers(0, V, T * B)
        targets[::4] = -100
        t_opt.zero_grad()
        h, _ = t_lstm(t_emb(torch.tensor(tokens)))
        t_loss = torch.nn.functional.cross_entropy(t_fc(h).reshape(-1, V),
                                                   torch.tensor(targets))
        t_loss.backward()
        t_norm = torch.nn.utils.clip_grad_norm_(t_params, 0.5)
        t_opt.step()

        opt.zero_grad()
        e, ce = emb.forward(tokens)
        h, _, cl = lstm.forward(e)
        logits, cf = fc.forward(h)
        loss, d_logits = nn.cross_entropy(logits.reshape(-1, V), targets)
        d_e, _ = lstm.backward(fc.backward(d_logits.reshape(T, B, V), cf), None, cl)
        emb.backward(d_e, ce)
        norm = nn.clip_grad_norm_([m.grads for m in mods], 0.5)
        opt.step()
        np.testing.assert_allclose(loss, t_loss.item(), rtol=1e-10)
        np.testing.assert_allclose(norm, t_norm.item(), rtol=1e-10)
    for m, tm in zip(mods, t_mods):
        for k, v in tm.state_dict().items():
            np.testing.assert_allclose(m.params[k], v.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
