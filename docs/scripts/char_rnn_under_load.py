"""rnn_forward + rnn_backward (25, 1, 100, 100) float64 vs the reference at the default
thread count and on 1 thread, with 0, 1 and 2 busy processes beside it."""
import time, sys, subprocess, numpy as np, seqkern
from seqkern import reference as ref
from seqkern._dispatch import LEVEL
rng = np.random.default_rng(0)
T, B, I, H = 25, 1, 100, 100
x = rng.standard_normal((T, B, I)); h0 = np.zeros((B, H))
W_ih = rng.standard_normal((H, I)) * 0.1; W_hh = rng.standard_normal((H, H)) * 0.1
b = np.zeros(H); d = rng.standard_normal((T, B, H))
def run(m):
    out, h_n, c = m.rnn_forward(x, h0, W_ih, W_hh, b, b)
    m.rnn_backward(d, None, c)
def med(fn, n=400):
    for _ in range(20): fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return float(np.median(ts))
def one():
    with seqkern.threads(1):
        run(seqkern)
for busy in (0, 1, 2):
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    time.sleep(0.3)
    try:
        a, a1, r = med(lambda: run(seqkern)), med(one), med(lambda: run(ref))
    finally:
        for p in procs: p.kill()
    print(f"{LEVEL} busy={busy}: seqkern {seqkern.get_num_threads()} thr {a*1e6:.0f} us, 1 thr {a1*1e6:.0f} us, "
          f"reference {r*1e6:.0f} us: {r/a:.2f}x the reference, default/1-thread time {a/a1:.2f}", flush=True)
