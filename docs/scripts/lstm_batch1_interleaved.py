"""The batch-1 LSTM on the interleaved path (the projection of later steps inside each
step's product, gemv_side; forced with step_gemm("packed")) against AUTO's choice, on one
thread at whatever level SEQKERN_MAX_ISA gives: medians of 200 calls, forward and
forward+backward, float32 and float64, the faster of two rounds."""
import time

import numpy as np

import seqkern
from seqkern._step_gemm import step_gemm

seqkern.set_num_threads(1)


def median_us(f, n=200):
    for _ in range(10):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e6


for T, B, I, H in [(100, 1, 128, 128), (1000, 1, 64, 64), (150, 1, 256, 256)]:
    for dt in (np.float32, np.float64):
        rng = np.random.default_rng(0)
        k = 1 / np.sqrt(H)
        x = rng.standard_normal((T, B, I)).astype(dt)
        h0 = np.zeros((B, H), dt)
        W_ih = rng.uniform(-k, k, (4 * H, I)).astype(dt)
        W_hh = rng.uniform(-k, k, (4 * H, H)).astype(dt)
        b = rng.uniform(-k, k, 4 * H).astype(dt)
        d_out = rng.standard_normal((T, B, H)).astype(dt)

        def fwd():
            seqkern.lstm_forward(x, h0, h0, W_ih, W_hh, b, b)

        def fwd_bwd():
            cache = seqkern.lstm_forward(x, h0, h0, W_ih, W_hh, b, b)[3]
            seqkern.lstm_backward(d_out, None, None, cache)

        t = {}
        for name, f in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            for mode in ("auto", "packed") * 2:
                with step_gemm(mode):
                    t[name, mode] = min(t.get((name, mode), np.inf), median_us(f))
        print((T, B, I, H), np.dtype(dt).name,
              " ".join(f"{n} {m} {v:.0f} us" for (n, m), v in t.items()),
              " interleaved/AUTO speed: fwd %.2f, fwd+bwd %.2f"
              % (t["fwd", "auto"] / t["fwd", "packed"], t["fwd+bwd", "auto"] / t["fwd+bwd", "packed"]))
