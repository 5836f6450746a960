"""2-thread time over 1-thread time of forwards without a cache at batch 1 and 32
(SPLIT=1: two cases whose steps split by units, a barrier a step; CASE=name: that case
only), float64 (DTYPE=float32 to change), medians of REPS (default 7) pairs of calls,
with N busy processes beside (argv[1]), under the libgomp spin count given in
GOMP_SPINCOUNT (unset: seqkern's)."""
import os, sys, time, statistics, subprocess, numpy as np
import seqkern
nbusy = int(sys.argv[1])
busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(nbusy)]
time.sleep(0.3)
rng = np.random.default_rng(0)
dt = np.dtype(os.environ.get("DTYPE", "float64"))
def rec(kind, T, B, I, H):
    G = {"rnn": 1, "lstm": 4, "gru": 3}[kind] * H
    x = rng.standard_normal((T, B, I)).astype(dt); h0 = np.zeros((B, H), dt)
    Wi = (rng.standard_normal((G, I)) * .05).astype(dt); Wh = (rng.standard_normal((G, H)) * .05).astype(dt)
    b = np.zeros(G, dt)
    st = (h0, h0) if kind == "lstm" else (h0,)
    fwd = getattr(seqkern, f"{kind}_forward")
    return lambda: fwd(x, *st, Wi, Wh, b, b, return_cache=False)
def att(B, Hh, T, D):
    q = rng.standard_normal((B, Hh, T, D)).astype(dt); return lambda: seqkern.attention_forward(q, q, q, return_cache=False)
cases = {"lstm 1x50x1024 split": rec("lstm", 50, 1, 1024, 1024), "gru 4x50x1024 split": rec("gru", 50, 4, 1024, 1024)} if os.environ.get("SPLIT") else {"rnn 32x100x256": rec("rnn", 100, 32, 256, 256), "lstm 32x100x256": rec("lstm", 100, 32, 256, 256),
         "gru 32x100x256": rec("gru", 100, 32, 256, 256), "lstm 1x100x128": rec("lstm", 100, 1, 128, 128),
         "attention 8x8x256x64": att(8, 8, 256, 64)}
if os.environ.get("CASE"):
    cases = {os.environ["CASE"]: cases[os.environ["CASE"]]}
try:
    for name, f in cases.items():
        t = {1: [], 2: []}
        for _ in range(int(os.environ.get("REPS", 7))):
            for n in (1, 2):
                with seqkern.threads(n):
                    t0 = time.perf_counter(); f(); f(); t[n].append((time.perf_counter() - t0) / 2)
        m1, m2 = statistics.median(t[1]), statistics.median(t[2])
        print(f"{os.environ.get('GOMP_SPINCOUNT','-'):>6} busy={nbusy} {name:<22} 1t {m1*1e3:8.2f} ms  2t {m2*1e3:8.2f} ms  2t/1t {m2/m1:.2f}")
finally:
    for p in busy: p.kill()
