"""LSTM forward (T, B, I, H) = (100, 32, 256, 256) on one thread, with and without a cache,
float32 and float64: medians of 15 calls in ms (docs/benchmarks.md, third session)."""
import time, numpy as np, seqkern, statistics
rng = np.random.default_rng(0)
T,B,I,H=100,32,256,256
for dt in (np.float32, np.float64):
    x=rng.standard_normal((T,B,I)).astype(dt); h0=np.zeros((B,H),dt); c0=np.zeros((B,H),dt)
    Wi=(rng.standard_normal((4*H,I))*.05).astype(dt); Wh=(rng.standard_normal((4*H,H))*.05).astype(dt); b=np.zeros(4*H,dt)
    with seqkern.threads(1):
        for rc in (False, True):
            f=lambda: seqkern.lstm_forward(x,h0,c0,Wi,Wh,b,b,return_cache=rc)
            f(); ts=[]
            for _ in range(15):
                t0=time.perf_counter(); f(); ts.append(time.perf_counter()-t0)
            print(np.dtype(dt).name, "cache" if rc else "nocache", round(statistics.median(ts)*1e3,2), end="; ")
print()
