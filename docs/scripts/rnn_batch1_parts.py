"""Where the time of a batch-1 RNN forward goes, on one thread at whatever level
SEQKERN_MAX_ISA gives (float64; argv[1] to change): the whole call at (T, I, H) =
(100, 128, 128) against the reference, the recurrence alone (I = 1), tanh against ReLU
(the activation's share of a step), and the input projection's GEMM alone on the packed
kernel and on NumPy's BLAS. Medians of 300 calls, the fastest of three rounds."""
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import seqkern
from seqkern import reference as ref
from seqkern._dispatch import kernel_module

pg = kernel_module("_packed_gemm")
seqkern.set_num_threads(1)
threadpool_limits(1)
dt = np.dtype(sys.argv[1] if len(sys.argv) > 1 else "float64")


def median_us(f, n=300):
    for _ in range(20):
        f()
    best = np.inf
    for _ in range(3):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        best = min(best, np.median(ts) * 1e6)
    return best


T, H = 100, 128
rng = np.random.default_rng(0)
k = 1 / np.sqrt(H)
for I in (128, 1):
    x = rng.standard_normal((T, 1, I)).astype(dt)
    h0 = np.zeros((1, H), dt)
    W_ih = rng.uniform(-k, k, (H, I)).astype(dt)
    W_hh = rng.uniform(-k, k, (H, H)).astype(dt)
    b = rng.uniform(-k, k, H).astype(dt)
    for nl in ("tanh", "relu"):
        us = median_us(lambda: seqkern.rnn_forward(x, h0, W_ih, W_hh, b, b, nonlinearity=nl))
        print(f"rnn_forward (T, B, I, H) = ({T}, 1, {I}, {H}) {nl}: {us:.1f} us, {us / T:.3f} us a step")
    if I > 1:
        us = median_us(lambda: ref.rnn_forward(x, h0, W_ih, W_hh, b, b))
        print(f"reference: {us:.1f} us")
        A = x.reshape(T, I)
        P = pg.pack(W_ih, True)
        C = np.zeros((T, H), dt)
        for name, f in (("packed GEMM", lambda: pg.gemm(A, P, C)), ("NumPy", lambda: A @ W_ih.T)):
            us = median_us(f)
            print(f"projection {T}x{I} @ {I}x{H} on {name}: {us:.1f} us, {2 * T * I * H / us / 1e3:.1f} GFLOP/s")
