"""LSTM (T, B, I, H) = (100, 32, 256, 256) forward (no cache) and forward+backward, float32
and float64, 1 and 2 threads: medians of 9 pairs of calls; argv[1] labels the output
lines (run it under each tree, SEQKERN_MAX_ISA=avx2 or avx512)."""
import sys, time, statistics, numpy as np, seqkern
from seqkern.bench.runner import pause
rng = np.random.default_rng(0)
T, B, I, H = 100, 32, 256, 256
out = []
for dt in (np.float32, np.float64):
    x = rng.standard_normal((T, B, I)).astype(dt); h0 = np.zeros((B, H), dt)
    Wi = (rng.standard_normal((4 * H, I)) * .05).astype(dt); Wh = (rng.standard_normal((4 * H, H)) * .05).astype(dt)
    b = np.zeros(4 * H, dt)
    fwd = lambda: seqkern.lstm_forward(x, h0, h0, Wi, Wh, b, b, return_cache=False)
    def fb():
        o, hn, cn, c = seqkern.lstm_forward(x, h0, h0, Wi, Wh, b, b)
        seqkern.lstm_backward(np.ones_like(o), None, None, c)
    for name, f in (("fwd", fwd), ("fwd+bwd", fb)):
        for nt in (1, 2):
            with seqkern.threads(nt):
                f(); ts = []
                for _ in range(9):
                    t0 = time.perf_counter(); f(); f(); ts.append((time.perf_counter() - t0) / 2)
                    pause(0.01)
            out.append((np.dtype(dt).name, name, nt, statistics.median(ts) * 1e3))
for r in out: print(sys.argv[1], *r)
