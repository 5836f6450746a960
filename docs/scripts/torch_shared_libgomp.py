"""PyTorch's 2-layer bidirectional LSTM at (T, B, I, H) = (150, 1, 256, 256) float32 on 2
threads, in a process that imported seqkern first (so PyTorch's libgomp.so.1 resolves to
the one seqkern loaded, with seqkern's spin setting). Run it with GOMP_SPINCOUNT=N set to
try another spin count (0: what OMP_WAIT_POLICY=PASSIVE gives; unset: seqkern's)."""
import statistics, time
import seqkern
seqkern.rnn_forward         # the kernels load on first use, and with them libgomp
import torch  # noqa: E402

torch.set_num_threads(2)
m = torch.nn.LSTM(256, 256, num_layers=2, bidirectional=True)
x = torch.randn(150, 1, 256)
with torch.no_grad():
    for _ in range(3):
        m(x)
    ts = []
    for _ in range(20):
        t0 = time.perf_counter(); m(x); ts.append(time.perf_counter() - t0)
print(f"PyTorch 2 threads: {statistics.median(ts) * 1e3:.2f} ms")
