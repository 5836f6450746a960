"""Before/after table for the packed weight GEMM (_packed_gemm.h): seqkern with the
weight products on OpenBLAS (step_gemm "blas", the code before) and packed (the
default), PyTorch (if installed) and the NumPy reference, in one process, calls
alternating between implementations, medians of samples of back-to-back calls.
With 1 thread the clock is the calling thread's CPU time (every implementation
computes in that thread), which other load on a shared machine disturbs less.

Run (from the repository root, after building in place):
  OPENBLAS_NUM_THREADS=1 PYTHONPATH=src python3 benchmarks/compare_step_gemm.py \
      rnn,lstm,gru "[(1,100,128,128),(1,1000,64,64),(32,100,256,256),(64,200,512,512)]" \
      float32,float64 1 5
arguments: kernels, shapes (B, T, I, H), dtypes, threads, seconds per row
[, implementations: before,after,torch,ref].
"""
import sys, time
import numpy as np
import seqkern
try:
    import torch
except ImportError:
    torch = None
from seqkern import reference as ref
from seqkern._step_gemm import step_gemm
kernels = sys.argv[1].split(',')
shapes = eval(sys.argv[2])
dtypes = [np.dtype(d).type for d in sys.argv[3].split(',')]
nthr = int(sys.argv[4]); budget = float(sys.argv[5])
impls = sys.argv[6].split(',') if len(sys.argv) > 6 else ['before', 'after', 'torch', 'ref']
if torch is None:
    impls = [i for i in impls if i != 'torch']
else:
    torch.set_num_threads(nthr)
clock = time.thread_time if nthr == 1 else time.perf_counter   # 1 thread: CPU time of the calling thread (all impls compute there), robust to time-slicing by other load
rng = np.random.default_rng(0)

def make(kern, B, T, I, H, dt):
    G = {'lstm': 4 * H, 'gru': 3 * H}.get(kern, H)
    s = 1 / np.sqrt(H)
    d = dict(x=rng.standard_normal((T, B, I)).astype(dt), h0=(0.5*rng.standard_normal((B, H))).astype(dt),
             c0=(0.5*rng.standard_normal((B, H))).astype(dt),
             W_ih=rng.uniform(-s, s, (G, I)).astype(dt), W_hh=rng.uniform(-s, s, (G, H)).astype(dt),
             b_ih=rng.uniform(-s, s, G).astype(dt), b_hh=rng.uniform(-s, s, G).astype(dt))
    d['d_out'] = rng.standard_normal((T, B, H)).astype(dt)
    return d

def fn_sk(kern, d, bwd, mode):
    def f():
        with step_gemm(mode):
            if kern == 'lstm':
                out, hn, cn, c = seqkern.lstm_forward(d['x'], d['h0'], d['c0'], d['W_ih'], d['W_hh'], d['b_ih'], d['b_hh'], return_cache=bwd)
                if bwd: seqkern.lstm_backward(d['d_out'], None, None, c)
            elif kern == 'gru':
                out, hn, c = seqkern.gru_forward(d['x'], d['h0'], d['W_ih'], d['W_hh'], d['b_ih'], d['b_hh'], return_cache=bwd)
                if bwd: seqkern.gru_backward(d['d_out'], None, c)
            else:
                out, hn, c = seqkern.rnn_forward(d['x'], d['h0'], d['W_ih'], d['W_hh'], d['b_ih'], d['b_hh'], return_cache=bwd)
                if bwd: seqkern.rnn_backward(d['d_out'], None, c)
    return f

def fn_ref(kern, d, bwd):
    def f():
        if kern == 'lstm':
            out, hn, cn, c = ref.lstm_forward(d['x'], d['h0'], d['c0'], d['W_ih'], d['W_hh'], d['b_ih'], d['b_hh'])
            if bwd: ref.lstm_backward(d['d_out'], None, None, c)
        elif kern == 'gru':
            out, hn, c = ref.gru_forward(d['x'], d['h0'], d['W_ih'], d['W_hh'], d['b_ih'], d['b_hh'])
            if bwd: ref.gru_backward(d['d_out'], None, c)
        else:
            out, hn, c = ref.rnn_forward(d['x'], d['h0'], d['W_ih'], d['W_hh'], d['b_ih'], d['b_hh'])
            if bwd: ref.rnn_backward(d['d_out'], None, c)
    return f

def fn_torch(kern, d, bwd):
    T, B, I = d['x'].shape; H = d['h0'].shape[1]
    dt = torch.float32 if d['x'].dtype == np.float32 else torch.float64
    m = {'lstm': torch.nn.LSTM, 'gru': torch.nn.GRU}.get(kern, torch.nn.RNN)(I, H).to(dt)
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(d['W_ih'])); m.weight_hh_l0.copy_(torch.from_numpy(d['W_hh']))
        m.bias_ih_l0.copy_(torch.from_numpy(d['b_ih'])); m.bias_hh_l0.copy_(torch.from_numpy(d['b_hh']))
    x = torch.from_numpy(d['x']); h0 = torch.from_numpy(d['h0']).unsqueeze(0); c0 = torch.from_numpy(d['c0']).unsqueeze(0)
    g = torch.from_numpy(d['d_out'])
    def f():
        if bwd:
            xx = x.detach().requires_grad_(True)
            m.zero_grad(set_to_none=True)
            out, _ = m(xx, (h0, c0)) if kern == 'lstm' else m(xx, h0)
            out.backward(g)
        else:
            with torch.no_grad():
                m(x, (h0, c0)) if kern == 'lstm' else m(x, h0)
    return f

print(f"threads={nthr}; median ms ({'CPU time of the calling thread' if nthr == 1 else 'wall time'}) per call, samples of back-to-back calls (>= 20 ms) of alternating calls; before = seqkern with OpenBLAS per-step GEMMs (step_gemm='blas'), after = packed (default)")
print(f"{'kernel':6s} {'(B,T,I,H)':18s} {'dtype':7s} {'mode':6s} | {'before':>9s} {'after':>9s} {'torch':>9s} {'ref':>9s} | {'after/before':>12s} {'x torch':>7s} {'x ref':>6s}  n")
with seqkern.threads(nthr):
  for kern in kernels:
    for (B, T, I, H) in shapes:
      for dt in dtypes:
        d = make(kern, B, T, I, H, dt)
        for bwd in (False, True):
            make_fn = {'before': lambda: fn_sk(kern, d, bwd, 'blas'),
                       'after': lambda: fn_sk(kern, d, bwd, 'auto'),
                       'torch': lambda: fn_torch(kern, d, bwd), 'ref': lambda: fn_ref(kern, d, bwd)}
            fs = {k: make_fn[k]() for k in make_fn if k in impls}
            inner = {}
            for k, f in fs.items():
                f(); a = time.perf_counter(); f(); inner[k] = max(1, int(0.02 / (time.perf_counter() - a)))
            t = {k: [] for k in fs}
            t0 = time.perf_counter(); r = 0
            while (time.perf_counter() - t0 < budget and r < 31) or r < 3:
                keys = list(fs) if r % 2 == 0 else list(fs)[::-1]
                for k in keys:
                    f = fs[k]; n = inner[k]
                    s = clock()
                    for _ in range(n): f()
                    t[k].append((clock() - s) / n)
                    time.sleep(0.02)
                r += 1
            med = {k: np.median(v) * 1e3 for k, v in t.items()}
            g = lambda k: f"{med[k]:9.3f}" if k in med else f"{'-':>9s}"
            rat = lambda a, b: f"{med[b]/med[a]:.2f}" if a in med and b in med else "-"
            print(f"{kern:6s} {str((B,T,I,H)):18s} {np.dtype(dt).name:7s} {'fwdbwd' if bwd else 'fwd':6s} | {g('before')} {g('after')} {g('torch')} {g('ref')} | {rat('after','before'):>12s} {rat('after','torch'):>7s} {rat('after','ref'):>6s}  {r}", flush=True)
