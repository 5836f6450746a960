"""How long each kernel call holds the GIL: another Python thread, spinning on the
clock, adds up the gaps longer than GAP_US between two of its loop turns while the
main thread calls the kernel over and over; divided by the number of calls, that is
the time a call held the GIL. A kernel that releases it for its work holds it only
for its argument checks and allocations in Python. One thread each
(seqkern.threads(1)), so that the two Python threads have a core each on a 2-core
machine. The sizes make the weights large (H = 512 float32: W_hh 1-4 MiB) and the
sequence short (but T * B = 32 rows, enough for the kernels to pack their weights),
so that copying the weights is a large part of a call."""
import os
import sys
import threading
import time

import numpy as np

import seqkern

T, B, H = 32, 1, 512
GAP_US = 20
dt = np.float32
rng = np.random.default_rng(0)


def uniform(*shape):
    return rng.uniform(-0.05, 0.05, shape).astype(dt)


def calls():
    x = uniform(T, B, H)
    h0 = np.zeros((B, H), dt)
    for name, G, fwd, bwd in (("rnn", 1, seqkern.rnn_forward, seqkern.rnn_backward),
                              ("lstm", 4, seqkern.lstm_forward, seqkern.lstm_backward),
                              ("gru", 3, seqkern.gru_forward, seqkern.gru_backward)):
        W_ih, W_hh, b = uniform(G * H, H), uniform(G * H, H), uniform(G * H)
        states = (h0, h0) if name == "lstm" else (h0,)
        f = (lambda fwd=fwd, W_ih=W_ih, W_hh=W_hh, b=b, states=states:
             fwd(x, *states, W_ih, W_hh, b, b))
        res = f()
        out, cache = res[0], res[-1]
        d_out = np.ones_like(out)
        yield f"{name}_forward", f
        yield f"{name}_backward", (lambda bwd=bwd, cache=cache, d_out=d_out:
                                   bwd(d_out, None, cache) if bwd is not seqkern.lstm_backward
                                   else bwd(d_out, None, None, cache))
    q = uniform(8, 8, 256, 64)
    yield "attention_forward", lambda: seqkern.attention_forward(q, q, q)


def gil_hold(f, seconds=1.0):
    """(median call in us, GIL held per call in us): the time the spinning thread
    spent in gaps longer than GAP_US, over the number of calls."""
    stop = False
    held = []

    def spin():
        total, last = 0, time.perf_counter_ns()
        while not stop:
            os.sched_yield()    # drops the GIL (sleep(0) would also wait a timer slack)
            now = time.perf_counter_ns()
            if now - last > GAP_US * 1000:
                total += now - last
            last = now
        held.append(total / 1e3)

    for _ in range(5):
        f()
    th = threading.Thread(target=spin)
    th.start()
    ts = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    stop = True
    th.join()
    return np.median(ts) * 1e6, held[0] / len(ts)


if __name__ == "__main__":
    # the spinning thread gets the GIL back when the main thread releases it, or
    # when this interval forces it to: longer than any call, so holds show whole
    sys.setswitchinterval(0.05)
    seqkern.set_num_threads(1)
    print(f"(T, B, H) = ({T}, {B}, {H}) float32; attention (8, 8, 256, 64)")
    print(f"{'call':20s} {'median call us':>15s} {'GIL held us a call':>20s}")
    for name, f in calls():
        med, gap = gil_hold(f)
        print(f"{name:20s} {med:15.1f} {gap:20.1f}")
