"""seqkern.nn against PyTorch's modules, and the stacked bidirectional layers
against the same stack run as a plain loop (one direction after the other).

Cases (issue 18): 2-layer bidirectional LSTM and GRU at (B, T, I, H) =
(1, 150, 256, 256) and (32, 100, 256, 256); MultiheadAttention (self-attention)
at (B, T, E, heads) = (8, 256, 512, 8); one training step of a 2-layer LSTM
language model (embedding, LSTM, linear, cross-entropy, clipping, Adam) at
(B, T, V, H) = (32, 64, 96, 256). Each forward ("fwd", inference: no cache,
torch.no_grad()) and forward + backward ("fwd+bwd"), float32, 1 and 2 threads.

Implementations: "seqkern"; "seqkern-loop": seqkern.nn as a plain loop, layer
after layer over whole sequences and the two directions of a layer one after
the other (each kernel on all the threads); "torch" when it is installed.

Run: pytest benchmarks/bench_nn.py --benchmark-group-by=group
or, for a side-by-side table (every implementation and thread count in turn
within each round, one process): python benchmarks/bench_nn.py [--repeats N]
[-k WORD] [--stat min|median]
"""

import argparse
import contextlib
import importlib.util
import statistics
import time
from unittest import mock

import numpy as np
import pytest

import seqkern
from seqkern import nn, optim
from seqkern.nn import _rnn

RECURRENT = [(kind, shape, direction) for kind in ("LSTM", "GRU")
             for shape in ((1, 150, 256, 256), (32, 100, 256, 256))
             for direction in ("fwd", "fwd+bwd")]
MHA = [("MHA", (8, 256, 512, 8), direction) for direction in ("fwd", "fwd+bwd")]
LM = [("LM-step", (32, 64, 96, 256), "fwd+bwd")]
CASES = RECURRENT + MHA + LM
IMPLS = ("seqkern", "seqkern-loop", "torch")
THREADS = (1, 2)


def torch_available():
    return importlib.util.find_spec("torch") is not None


def _sequential(f0, f1):
    return f0(), f1()


def _as_loop(fn):
    """fn with seqkern.nn's stacks run as a plain loop (no overlap, no chunks)."""
    def looped():
        with mock.patch.object(_rnn, "run_pair", _sequential), \
                mock.patch.object(_rnn, "_chunk_steps", lambda T: T):
            return fn()
    return looped


def _seqkern(kind, shape, direction, loop):
    rng = np.random.default_rng(0)
    if kind == "LM-step":
        B, T, V, H = shape
        emb = nn.Embedding(V, H, rng=rng)
        lstm = nn.LSTM(H, H, num_layers=2, rng=rng)
        fc = nn.Linear(H, V, rng=rng)
        layers = (emb, lstm, fc)
        opt = optim.Adam([m.params for m in layers], [m.grads for m in layers])
        tokens = rng.integers(0, V, (T, B))
        targets = rng.integers(0, V, (T * B,))

        def step():
            opt.zero_grad()
            e, ce = emb.forward(tokens)
            h, _, cl = lstm.forward(e)
            logits, cf = fc.forward(h)
            loss, d_logits = nn.cross_entropy(logits.reshape(T * B, V), targets)
            d_h = fc.backward(d_logits.reshape(T, B, V), cf)
            d_e, _ = lstm.backward(d_h, None, cl)
            emb.backward(d_e, ce)
            nn.clip_grad_norm_([m.grads for m in layers], 1.0)
            opt.step()
            return loss
        return _as_loop(step) if loop else step
    if kind == "MHA":
        B, T, E, heads = shape
        m = nn.MultiheadAttention(E, heads, rng=rng)
        x = rng.standard_normal((T, B, E)).astype(np.float32)
        d = rng.standard_normal((T, B, E)).astype(np.float32)
        if direction == "fwd":
            return lambda: m.forward(x, x, x)[0]
        return lambda: m.backward(d, m.forward(x, x, x)[1])
    B, T, I, H = shape
    m = getattr(nn, kind)(I, H, num_layers=2, bidirectional=True, rng=rng)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    d = rng.standard_normal((T, B, 2 * H)).astype(np.float32)

    def fwd():
        return m.forward(x, return_cache=False)[0]

    def fwd_bwd():
        out, _, cache = m.forward(x)
        return m.backward(d, None, cache)[0]

    fn = fwd if direction == "fwd" else fwd_bwd
    return _as_loop(fn) if loop else fn


def _torch(kind, shape, direction):
    import torch

    torch.manual_seed(0)
    if kind == "LM-step":
        B, T, V, H = shape
        emb, lstm, fc = torch.nn.Embedding(V, H), torch.nn.LSTM(H, H, 2), torch.nn.Linear(H, V)
        params = [p for m in (emb, lstm, fc) for p in m.parameters()]
        opt = torch.optim.Adam(params)
        tokens = torch.randint(0, V, (T, B))
        targets = torch.randint(0, V, (T * B,))

        def step():
            opt.zero_grad()
            h, _ = lstm(emb(tokens))
            loss = torch.nn.functional.cross_entropy(fc(h).reshape(T * B, V), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            return loss
        return step
    if kind == "MHA":
        B, T, E, heads = shape
        m = torch.nn.MultiheadAttention(E, heads)
        x = torch.randn(T, B, E, requires_grad=direction != "fwd")
        d = torch.randn(T, B, E)
    else:
        B, T, I, H = shape
        m = getattr(torch.nn, kind)(I, H, num_layers=2, bidirectional=True)
        x = torch.randn(T, B, I, requires_grad=direction != "fwd")
        d = torch.randn(T, B, 2 * H)

    def run():
        return m(x, x, x, need_weights=False)[0] if kind == "MHA" else m(x)[0]

    if direction == "fwd":
        def fwd():
            with torch.no_grad():
                return run()
        return fwd

    def fwd_bwd():
        out = run()
        out.backward(d)
        return out
    return fwd_bwd


def make_runner(case, impl):
    kind, shape, direction = case
    if impl == "torch":
        return _torch(kind, shape, direction)
    return _seqkern(kind, shape, direction, loop=impl == "seqkern-loop")


def applies(case, impl):
    return impl != "seqkern-loop" or case[0] != "MHA"


@contextlib.contextmanager
def thread_count(n):
    """n threads for seqkern (this Python thread) and for PyTorch."""
    old = None
    if torch_available():
        import torch
        old = torch.get_num_threads()
        torch.set_num_threads(n)
    try:
        with seqkern.threads(n):
            yield
    finally:
        if old is not None:
            torch.set_num_threads(old)


def case_name(case):
    kind, shape, direction = case
    return f"{kind} {'x'.join(map(str, shape))} {direction}"


@pytest.mark.parametrize("n_threads", THREADS, ids=lambda n: f"{n}thr")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[case_name(c).replace(" ", "-") for c in CASES])
def test_nn(benchmark, case, impl, n_threads):
    if impl == "torch" and not torch_available():
        pytest.skip("PyTorch is not installed")
    if not applies(case, impl):
        pytest.skip("no loop variant")
    fn = make_runner(case, impl)
    benchmark.group = f"{case_name(case)} threads={n_threads}"
    with thread_count(n_threads):
        assert benchmark(fn) is not None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per implementation")
    ap.add_argument("-k", default="", help="only the cases whose name contains this")
    ap.add_argument("--stat", choices=("min", "median"), default="min",
                    help="per implementation: the best round (least disturbed by other "
                         "programs on a shared machine) or the median")
    args = ap.parse_args()
    stat = min if args.stat == "min" else statistics.median
    impls = [i for i in IMPLS if i != "torch" or torch_available()]
    print(f"seqkern {seqkern.__version__}; {args.stat} of {args.repeats} rounds; in each round every "
          "implementation at every thread count, in turn. Ratios: other / seqkern at the same "
          "thread count (> 1: seqkern faster); 1thr/2thr: seqkern's own speed-up")
    print(f"{'case':32s} thr " + " ".join(f"{i:>13s}" for i in impls)
          + "  loop/sk torch/sk 1thr/2thr")
    for case in CASES:
        if args.k not in case_name(case):
            continue
        runs = {}
        for n in THREADS:
            with thread_count(n):
                for i in impls:
                    if applies(case, i):
                        runs[i, n] = make_runner(case, i)
                        runs[i, n]()                          # warm-up
        times = {key: [] for key in runs}
        for _ in range(args.repeats):
            for (i, n), fn in runs.items():
                time.sleep(0.02)     # the previous call's idle OpenMP threads stop spinning
                with thread_count(n):
                    t0 = time.perf_counter()
                    fn()
                    times[i, n].append(time.perf_counter() - t0)
        med = {key: stat(t) * 1e3 for key, t in times.items()}
        for n in THREADS:
            cells = " ".join(f"{med[i, n]:10.2f} ms" if (i, n) in med else f"{'-':>13s}"
                             for i in impls)
            ratios = " ".join(f"{med[i, n] / med['seqkern', n]:7.2f}" if (i, n) in med
                              else f"{'-':>7s}" for i in ("seqkern-loop", "torch"))
            own = f"{med['seqkern', 1] / med['seqkern', n]:9.2f}" if n > 1 else ""
            print(f"{case_name(case):32s} {n:3d} {cells}  {ratios} {own}", flush=True)


if __name__ == "__main__":
    main()
