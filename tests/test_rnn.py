"""The Elman RNN against PyTorch's nn.RNN (when installed). The contract it shares
with the other kernels (the reference, finite differences, steps, threads, errors,
NaN, layouts) is in test_contract.py."""

import numpy as np
import pytest

import seqkern

from helpers import RNN_TANH


def test_matches_torch_when_installed(rng):
    """PyTorch's nn.RNN layout and packed-sequence semantics (skipped without torch)."""
    torch = pytest.importorskip("torch")
    T, B, I, H = 7, 3, 4, 6
    x, h0, W_ih, W_hh, b_ih, b_hh = RNN_TANH.args(rng, T, B, I, H)
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
