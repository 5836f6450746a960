"""Wavefront against layer after layer for one-direction 2-layer stacks, H = 256,
forward+backward, float32, on 1 and 2 threads: interleaved medians in ms. Argument: the
wavefront's minimum rows per chunk (the rule then also asks for at least 3 chunks)
(docs/benchmarks.md, third session)."""
import sys, time, statistics, numpy as np, seqkern
from unittest import mock
from seqkern import nn
from seqkern.nn import _rnn
MIN = int(sys.argv[1])
def run(kind, B, T, H, nt):
    rng = np.random.default_rng(0)
    m = getattr(nn, kind)(H, H, num_layers=2, rng=rng)
    x = rng.standard_normal((T, B, H)).astype(np.float32); d = rng.standard_normal((T, B, H)).astype(np.float32)
    def f():
        out, _, c = m.forward(x); m.backward(d, None, c)
    chunk = max(-(-MIN // B), -(-T // 8))
    def wave():
        with mock.patch.object(_rnn, "WAVEFRONT_ROWS", MIN), \
                mock.patch.object(_rnn, "_wavefront", lambda *s: True): f()
    def layers():
        with mock.patch.object(_rnn, "_wavefront", lambda *s: False): f()
    with seqkern.threads(nt):
        wave(); layers(); a, b = [], []
        for _ in range(15):
            t0 = time.perf_counter(); wave(); a.append(time.perf_counter() - t0); time.sleep(0.005)
            t0 = time.perf_counter(); layers(); b.append(time.perf_counter() - t0); time.sleep(0.005)
    print(f"min {MIN} rows: {kind} B={B} T={T} H={H} thr={nt}: chunk {chunk} steps, wavefront {statistics.median(a)*1e3:.2f} ms, layers {statistics.median(b)*1e3:.2f} ms", flush=True)
for kind, B, T, H in [("LSTM", 1, 150, 256), ("LSTM", 1, 512, 256), ("GRU", 1, 512, 256), ("LSTM", 4, 256, 256)]:
    for nt in (1, 2):
        run(kind, B, T, H, nt)
