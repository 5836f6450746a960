"""seqkern.nn's 2-layer bidirectional LSTM at (150, 1, 256, 256) float32 on 1 and 2
threads, timed as pairs of calls: back to back, after a 1 ms or 20 ms sleep, and after
20 ms of spinning on the calling thread. Shows why the benchmark's pauses spin
(seqkern.bench.runner.pause)."""
import statistics, time
import numpy as np
import seqkern
from seqkern import nn

rng = np.random.default_rng(0)
m = nn.LSTM(256, 256, num_layers=2, bidirectional=True, rng=rng)
x = rng.standard_normal((150, 1, 256)).astype(np.float32)
f = lambda: m.forward(x, return_cache=False)


def spin(s):
    end = time.perf_counter() + s
    while time.perf_counter() < end:
        pass


waits = {"back to back": lambda: None, "sleep 1 ms": lambda: time.sleep(0.001),
         "sleep 20 ms": lambda: time.sleep(0.02), "spin 20 ms": lambda: spin(0.02)}
for name, wait in waits.items():
    res = {}
    for nt in (1, 2, 1, 2):
        with seqkern.threads(nt):
            f(); ts = []
            for _ in range(15):
                wait()
                t0 = time.perf_counter(); f(); f(); ts.append((time.perf_counter() - t0) / 2)
        res.setdefault(nt, []).append(round(statistics.median(ts) * 1e3, 2))
    print(f"{name:<13} ms per call, 1 thread {res[1]}, 2 threads {res[2]}")
