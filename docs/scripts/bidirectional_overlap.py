"""Two directions at once: two lstm_forward / gru_forward calls at (T, B, I, H) =
(150, 1, 256, 256) float32 in turn on one thread and at once (run_pair, as seqkern.nn runs
the two directions of a layer), then 2-layer bidirectional nn.LSTM / nn.GRU forwards at
the same sizes on 1 and 2 threads (docs/benchmarks.md, third session)."""
import time, statistics, numpy as np, seqkern
from seqkern.nn._parallel import run_pair
rng = np.random.default_rng(0)
T, B, I, H = 150, 1, 256, 256
for kind in ("lstm", "gru"):
    G = (4 if kind == "lstm" else 3) * H
    x = rng.standard_normal((T, B, I)).astype(np.float32); h0 = np.zeros((B, H), np.float32)
    Wi = (rng.standard_normal((G, I)) * .05).astype(np.float32); Wh = (rng.standard_normal((G, H)) * .05).astype(np.float32)
    b = np.zeros(G, np.float32)
    fwd = getattr(seqkern, f"{kind}_forward")
    st = (h0, h0) if kind == "lstm" else (h0,)
    f = lambda: fwd(x, *st, Wi, Wh, b, b, return_cache=False)
    def seq():
        with seqkern.threads(1):
            f(); f()
    def par():
        with seqkern.threads(2):
            run_pair(f, f)
    for fn in (seq, par): fn()
    a, p = [], []
    for _ in range(30):
        t0 = time.perf_counter(); seq(); a.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); par(); p.append(time.perf_counter() - t0)
    print(kind, f"two calls one after the other {statistics.median(a)*1e3:.2f} ms, at once {statistics.median(p)*1e3:.2f} ms")

from seqkern import nn
for kind in ("LSTM", "GRU"):
    m = getattr(nn, kind)(256, 256, num_layers=2, bidirectional=True, rng=rng)
    x = rng.standard_normal((150, 1, 256)).astype(np.float32)
    f = lambda: m.forward(x, return_cache=False)
    res = {}
    for nt in (1, 2, 1, 2):
        with seqkern.threads(nt):
            f(); ts = []
            for _ in range(20):
                t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
        res.setdefault(nt, []).append(round(statistics.median(ts) * 1e3, 2))
    print(kind, res)
