"""GRU forward at batch 1, (T, H) = (1000, 64) and (100, 128), float32 and float64: medians
of 30 calls in ms (docs/benchmarks.md, third session). Run it in each tree to compare."""
import time, numpy as np, seqkern
rng = np.random.default_rng(0)
out = {}
for (T, H) in ((1000, 64), (100, 128)):
    for dt in (np.float32, np.float64):
        x = rng.standard_normal((T, 1, H)).astype(dt); h0 = np.zeros((1, H), dt)
        W_ih = (rng.standard_normal((3*H, H))*0.1).astype(dt); W_hh = (rng.standard_normal((3*H, H))*0.1).astype(dt)
        seqkern.gru_forward(x, h0, W_ih, W_hh)
        ts = []
        for _ in range(30):
            t0 = time.perf_counter(); seqkern.gru_forward(x, h0, W_ih, W_hh); ts.append(time.perf_counter() - t0)
        out[f"{T}x{H} {np.dtype(dt).name}"] = round(float(np.median(ts))*1e3, 3)
print(out)
