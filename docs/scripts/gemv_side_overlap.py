"""How much of the input projection the batch-1 step product hides when the two run
interleaved (_packed_gemm.h's gemv_side), on one thread at the level SEQKERN_MAX_ISA
gives: one step's row product h @ W_hh^T alone, the same call with its share of the
side product (1/SIDE_ROWS of the next SIDE_ROWS steps' projection x @ W_ih^T), and
the projection alone per row (the packed GEMM over 150 rows). With I = H the side
product is also run on W_hh itself (no cache footprint of its own), which tells the
cost of W_ih's footprint from the cost of the interleaving.

    python docs/scripts/gemv_side_overlap.py [dtype [H [I [gates]]]]

defaults: float32 256 256 4 (the LSTM of DeepBench's device-inference shape).
Best of 7 rounds of `repeat` calls each, microseconds per call."""
import sys
import time

import numpy as np

from seqkern._dispatch import kernel_module

pg = kernel_module("_packed_gemm")
dt = np.dtype(sys.argv[1] if len(sys.argv) > 1 else "float32")
H = int(sys.argv[2]) if len(sys.argv) > 2 else 256
I = int(sys.argv[3]) if len(sys.argv) > 3 else 256
G = (int(sys.argv[4]) if len(sys.argv) > 4 else 4) * H
rng = np.random.default_rng(0)
P = pg.pack(rng.standard_normal((G, H)).astype(dt), True)        # W_hh^T packed
P2 = pg.pack(rng.standard_normal((G, I)).astype(dt), True)       # W_ih^T packed
a = rng.standard_normal(H).astype(dt)
c = np.zeros(G, dt)
R = pg.SIDE_ROWS
A2 = rng.standard_normal((R, I)).astype(dt)
C2 = np.zeros((R, G), dt)
per = (G * dt.itemsize // pg.VBYTES) // R          # vector columns of the side product a step
REPEAT = max(20, int(4e8 / (2 * G * (H + I))))


def us(f, repeat=REPEAT):
    best = np.inf
    for _ in range(7):
        t0 = time.perf_counter()
        f(repeat)
        best = min(best, time.perf_counter() - t0)
    return best / repeat * 1e6


row = us(lambda n: pg.gemv_side(a, P, c, A2, P2, C2, 0, 0, repeat=n))
both = us(lambda n: pg.gemv_side(a, P, c, A2, P2, C2, 0, per, repeat=n))
X = rng.standard_normal((150, I)).astype(dt)
C = np.zeros((150, G), dt)
proj = us(lambda n: pg.gemm(X, P2, C, accumulate=False, repeat=n), max(1, REPEAT // 150)) / 150
print(f"{dt.name}, H = {H}, I = {I}, {G // H} gates, {pg.VBYTES}-byte vectors, "
      f"{R} side rows")
print(f"row product alone        {row:8.2f} us")
print(f"row + side product       {both:8.2f} us   (+{both - row:.2f})")
print(f"projection alone, a row  {proj:8.2f} us   hidden: {1 - (both - row) / proj:.0%}")
if I == H:
    same = us(lambda n: pg.gemv_side(a, P, c, A2, P, C2, 0, per, repeat=n))
    print(f"row + side on W_hh itself {same:7.2f} us   (+{same - row:.2f}): "
          f"hidden {1 - (same - row) / proj:.0%} without W_ih's footprint")
