"""Attention speed: seqkern vs torch.nn.functional.scaled_dot_product_attention
(when installed) vs the NumPy reference, float32, issue 4's cases.

seqkern and torch are timed side by side in one process, alternating within
each repetition, and the medians are reported with ratios (>1: seqkern faster).
The reference (--reference) is timed afterwards in its own loop, with NumPy's
BLAS held at the same thread count: interleaved, its multi-GB temporaries and
BLAS threads spinning after each call were seen to slow whatever ran next.
GFLOP/s counts 4*B*H*Tq*Tk*D for the forward (half of it when causal) and 2.5x
that for the backward.

    PYTHONPATH=src python3 benchmarks/attention_speed.py [--threads 1,2] [--reps 5]
        [--cases 8x8x256x64,4x8x1024x64,1x8x4096x64] [--reference]
"""

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import seqkern
from seqkern import reference as ref

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # torch is optional
    torch = None


def _median(x):
    return float(np.median(x))


def _impls(q, k, v, d_out, causal):
    fs = {}

    def sk_fwd():
        seqkern.attention_forward(q, k, v, causal=causal, return_cache=False)

    def sk_fwdbwd():
        _, c = seqkern.attention_forward(q, k, v, causal=causal)
        seqkern.attention_backward(d_out, c)

    fs["seqkern"] = (sk_fwd, sk_fwdbwd)
    if torch is not None:
        tq, tk, tv, td = (torch.from_numpy(x) for x in (q, k, v, d_out))

        def t_fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

        def t_fwdbwd():
            a, b, c = (x.detach().requires_grad_() for x in (tq, tk, tv))
            F.scaled_dot_product_attention(a, b, c, is_causal=causal).backward(td)

        fs["torch"] = (t_fwd, t_fwdbwd)
    return fs


def _reference(q, k, v, d_out, causal):
    def r_fwd():
        ref.attention_forward(q, k, v, causal=causal, return_cache=False)

    def r_fwdbwd():
        _, c = ref.attention_forward(q, k, v, causal=causal)
        ref.attention_backward(d_out, c)

    return (r_fwd, r_fwdbwd)


def _time(f, reps):
    f()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        out.append(time.perf_counter() - t0)
    return _median(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cases", default="8x8x256x64,4x8x1024x64,1x8x4096x64")
    p.add_argument("--reference", action="store_true", help="also time the NumPy reference")
    args = p.parse_args()
    cases = [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",")]
    print(f"seqkern {seqkern.__version__}, torch {torch.__version__ if torch else 'not installed'}")
    print("| threads | (B, H, T, D) | causal | pass | seqkern ms | GFLOP/s | torch ms | "
          "x torch | reference ms | x reference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.threads.split(",")):
        seqkern.set_num_threads(n)
        if torch is not None:
            torch.set_num_threads(n)
        for (B, H, T, D) in cases:
            rng = np.random.default_rng(0)
            q, k, v, d_out = (rng.standard_normal((B, H, T, D), dtype=np.float32)
                              for _ in range(4))
            for causal in (False, True):
                flops = 4.0 * B * H * T * T * D * (0.5 if causal else 1.0)
                fs = _impls(q, k, v, d_out, causal)
                for pi, pname in enumerate(("fwd", "fwd+bwd")):
                    times = {name: [] for name in fs}
                    for name, f in fs.items():      # warm up
                        f[pi]()
                    for _ in range(args.reps):
                        for name, f in fs.items():
                            t0 = time.perf_counter()
                            f[pi]()
                            times[name].append(time.perf_counter() - t0)
                    med = {name: _median(t) for name, t in times.items()}
                    if args.reference:
                        with threadpool_limits(n):
                            med["reference"] = _time(_reference(q, k, v, d_out, causal)[pi],
                                                     max(1, args.reps // 2))
                    s = med["seqkern"]
                    fl = flops * (1 if pi == 0 else 3.5)
                    row = [str(n), str((B, H, T, D)), "yes" if causal else "no", pname,
                           f"{s * 1e3:.1f}", f"{fl / s / 1e9:.0f}"]
                    for other in ("torch", "reference"):
                        if other in med:
                            row += [f"{med[other] * 1e3:.1f}", f"{med[other] / s:.2f}"]
                        else:
                            row += ["-", "-"]
                    print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
