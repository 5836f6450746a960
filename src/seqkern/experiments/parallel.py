"""parallel (seed 4.1, 4.4, 6.2, 6.4): a recurrent layer walks its sequence one
step after another, so one sequence (batch 1) cannot use more cores, while
attention computes every position at once; a batch of sequences gives the
recurrent layers independent rows to share out again.

Forward passes only (inference), float32, one width for all: the RNN, LSTM and
GRU with I = H = width (their input projection included), and the attention
kernel with heads x head size = width, causal (the recurrent layers are causal
too; the Q/K/V projections, one GEMM over all positions, are left out). Each
case is timed at 1, 2, ... threads in alternation (medians of interleaved
calls), then against the sequence length at the largest thread count.

The critical path is the number of steps that must run one after another:
T for a recurrent layer (each step needs the previous state), 1 for attention
(every query row is independent; its softmax is a reduction over T keys).
"""

import os
import time

import numpy as np

from seqkern.experiments.common import Check, Verdict, new_figure

TITLE = "tokens/s against threads and sequence length: recurrent layers vs attention"
CLAIM = ("a recurrent layer cannot use more cores for one sequence while attention can, "
         "and a batch restores the recurrent layers' parallelism")
KERNELS = ("rnn", "lstm", "gru", "attention")
BATCHES = (1, 32)
# A layer "uses the cores" when n threads run it at least this fraction of n times
# as fast as one (1.5x on 2 threads).
EFFICIENT = 0.75

# T of the thread study: long enough that one attention call at batch 1 is not
# over in a millisecond or less, where waking a second thread is most of what is
# measured (2 threads gained nothing at T = 256, 0.24 ms, nor at T = 512).
SIZES = {
    "tiny": {"width": 32, "heads": 2, "T": 16, "lengths": [8, 16], "budget_s": 0},
    "quick": {"width": 256, "heads": 4, "T": 1024, "lengths": [32, 128, 512], "budget_s": 0.25},
    "full": {"width": 256, "heads": 4, "T": 1024, "lengths": [32, 64, 128, 256, 512, 1024],
             "budget_s": 0.6},
}


def make_call(kernel, B, T, width, heads, rng):
    """A no-argument function running one float32 forward of ``kernel`` on (T, B, width)."""
    import seqkern

    f32 = np.float32
    if kernel == "attention":
        D = width // heads
        q, k, v = (rng.standard_normal((B, heads, T, D)).astype(f32) for _ in range(3))
        return lambda: seqkern.attention_forward(q, k, v, causal=True, return_cache=False)
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[kernel]
    bound = 1 / np.sqrt(width)
    x = rng.standard_normal((T, B, width)).astype(f32)
    W_ih, W_hh = (rng.uniform(-bound, bound, (gates * width, width)).astype(f32) for _ in range(2))
    b_ih, b_hh = (rng.uniform(-bound, bound, gates * width).astype(f32) for _ in range(2))
    if kernel == "lstm":
        return lambda: seqkern.lstm_forward(x, None, None, W_ih, W_hh, b_ih, b_hh,
                                            return_cache=False)
    fn = seqkern.rnn_forward if kernel == "rnn" else seqkern.gru_forward
    return lambda: fn(x, None, W_ih, W_hh, b_ih, b_hh, return_cache=False)


def time_threads(call, counts, budget_s):
    """{n: median seconds per call on n threads}, the counts timed in alternation."""
    import seqkern
    from seqkern.bench.runner import time_interleaved

    def on(n):
        def run():
            with seqkern.threads(n):
                call()
        return run

    fns = {n: on(n) for n in counts}
    if budget_s <= 0:  # the test suite's sizes: one warm-up and three calls each, no pauses
        times = {n: [] for n in counts}
        for rep in range(4):
            for n, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if rep:
                    times[n].append(time.perf_counter() - t0)
    else:
        times = time_interleaved(fns, budget_s=budget_s)
    return {n: float(np.median(ts)) for n, ts in times.items()}


def measure(cfg, ctx):
    import seqkern

    width, heads, T = cfg["width"], cfg["heads"], cfg["T"]
    top = ctx.threads or seqkern.get_num_threads()
    counts = list(range(1, top + 1))
    rng = ctx.rng("parallel")
    ctx.say(f"forward, float32, width {width}, T = {T}; tokens/s (B T / median time) "
            f"on 1..{top} threads")
    ctx.table("kernel", "B", "threads", "ms", "tokens/s", "efficiency", "crit. path")
    by_threads = []
    bar = ctx.progress(len(KERNELS) * len(BATCHES) + len(KERNELS) * len(BATCHES)
                       * len(cfg["lengths"]), "timing")
    for kernel in KERNELS:
        for B in BATCHES:
            med = time_threads(make_call(kernel, B, T, width, heads, rng), counts, cfg["budget_s"])
            steps = 1 if kernel == "attention" else T
            for n in counts:
                tps = B * T / med[n]
                eff = med[1] / (n * med[n])
                by_threads.append({"kernel": kernel, "batch": B, "threads": n, "T": T,
                                   "seconds": med[n], "tokens_per_s": tps,
                                   "efficiency": eff, "critical_path": steps})
                ctx.row(kernel, B, n, med[n] * 1e3, tps, eff, steps)
            bar.update()
    ctx.say(f"against the sequence length, on {top} threads:")
    ctx.table("kernel", "B", "T", "ms", "tokens/s", "us/step")
    by_length = []
    for kernel in KERNELS:
        for B in BATCHES:
            for L in cfg["lengths"]:
                med = time_threads(make_call(kernel, B, L, width, heads, rng), [top],
                                   cfg["budget_s"] / 2)[top]
                steps = 1 if kernel == "attention" else L
                by_length.append({"kernel": kernel, "batch": B, "threads": top, "T": L,
                                  "seconds": med, "tokens_per_s": B * L / med,
                                  "critical_path": steps, "seconds_per_step": med / steps})
                ctx.row(kernel, B, L, med * 1e3, B * L / med, med / steps * 1e6)
                bar.update()
    ctx.end_progress()
    return {"width": width, "heads": heads, "max_threads": top, "cores": os.cpu_count(),
            "by_threads": by_threads, "by_length": by_length}


def efficiency(numbers, kernel, batch):
    """Parallel efficiency at the largest thread count, or None with one thread."""
    top = numbers["max_threads"]
    if top < 2:
        return None
    for r in numbers["by_threads"]:
        if r["kernel"] == kernel and r["batch"] == batch and r["threads"] == top:
            return r["efficiency"]
    raise KeyError((kernel, batch, top))


def verdict(numbers):
    top = numbers["max_threads"]
    eff = {(k, B): efficiency(numbers, k, B) for k in KERNELS for B in BATCHES}
    rec = ("rnn", "lstm", "gru")
    if top < 2:
        note = "one thread: nothing to compare (run with --threads 2 or more on 2+ cores)"
        return Verdict(CLAIM, [Check("more than one thread", None, note)])

    def show(B, kernels):
        return ", ".join(f"{k} {eff[(k, B)]:.2f}" for k in kernels)

    return Verdict(CLAIM, [
        Check(f"at batch 1 no recurrent layer reaches efficiency {EFFICIENT} on {top} threads",
              all(eff[(k, 1)] < EFFICIENT for k in rec), show(1, rec)),
        Check(f"at batch 1 attention reaches efficiency {EFFICIENT} on {top} threads",
              eff[("attention", 1)] >= EFFICIENT, show(1, ("attention",))),
        Check(f"at batch 32 every recurrent layer reaches efficiency {EFFICIENT}",
              all(eff[(k, 32)] >= EFFICIENT for k in rec), show(32, rec)),
    ])


def _throughput(ax, rows, x):
    """tokens/s against ``x`` (a row key), a line per kernel and batch."""
    colors = dict(zip(KERNELS, ("tab:red", "tab:orange", "tab:green", "tab:blue")))
    for k in KERNELS:
        for B, style in zip(BATCHES, ("-", "--")):
            mine = [r for r in rows if r["kernel"] == k and r["batch"] == B]
            ax.plot([r[x] for r in mine], [r["tokens_per_s"] for r in mine], style,
                    marker="o", color=colors[k], label=f"{k} B={B}")
    ax.set_yscale("log")
    ax.set_ylabel("tokens/s")
    ax.legend(fontsize=7)


def figure(numbers):
    fig, axes = new_figure(3, 1, (15, 4.5))
    ax = axes[0, 0]
    _throughput(ax, numbers["by_threads"], "threads")
    ax.set_xticks(range(1, numbers["max_threads"] + 1))
    ax.set_xlabel("threads")
    ax.set_title("throughput against threads")
    ax = axes[0, 1]
    _throughput(ax, numbers["by_length"], "T")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length T")
    ax.set_title(f"throughput against length ({numbers['max_threads']} threads)")
    ax = axes[0, 2]
    top = numbers["max_threads"]
    for i, B in enumerate(BATCHES):
        vals = [next((r["efficiency"] for r in numbers["by_threads"] if r["kernel"] == k
                      and r["batch"] == B and r["threads"] == top), np.nan) for k in KERNELS]
        ax.bar(np.arange(len(KERNELS)) + (i - 0.5) * 0.4, vals, 0.4, label=f"B={B}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(EFFICIENT, color="k", ls="--", lw=0.8, label=f"{EFFICIENT}")
    ax.set_xticks(range(len(KERNELS)))
    ax.set_xticklabels(KERNELS)
    ax.set_ylabel(f"parallel efficiency on {top} threads")
    ax.set_title("speed-up / threads")
    ax.legend(fontsize=7)
    return fig
