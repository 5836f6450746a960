"""GRU (T, B, I, H) = (100, 32, 256, 256) forward without a cache, float32: 2-thread time
over 1-thread time (medians of 15 pairs of calls) with N busy processes beside it
(argv[2]); argv[1] labels the line (run it under each tree and SEQKERN_MAX_ISA level)."""
import sys, time, statistics, subprocess, numpy as np, seqkern
nb = int(sys.argv[2])
busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(nb)]
time.sleep(0.3)
rng = np.random.default_rng(0)
T, B, I, H = 100, 32, 256, 256
x = rng.standard_normal((T, B, I)).astype(np.float32); h0 = np.zeros((B, H), np.float32)
Wi = (rng.standard_normal((3 * H, I)) * .05).astype(np.float32); Wh = (rng.standard_normal((3 * H, H)) * .05).astype(np.float32)
b = np.zeros(3 * H, np.float32)
f = lambda: seqkern.gru_forward(x, h0, Wi, Wh, b, b, return_cache=False)
try:
    t = {1: [], 2: []}
    for _ in range(15):
        for n in (1, 2):
            with seqkern.threads(n):
                t0 = time.perf_counter(); f(); f(); t[n].append((time.perf_counter() - t0) / 2)
    m1, m2 = statistics.median(t[1]), statistics.median(t[2])
    print(f"{sys.argv[1]} busy={nb} gru (100,32,256,256) fwd f32: 1t {m1*1e3:.2f} 2t {m2*1e3:.2f} ms, 2t/1t {m2/m1:.2f}")
finally:
    for p in busy: p.kill()
