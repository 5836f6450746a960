"""PNG charts of a benchmark run (``python -m seqkern.bench --plot DIR``).

Needs matplotlib (``pip install 'seqkern[plot]'``). Each function takes the
result dicts that :func:`seqkern.bench.runner.run` returns.
"""

import os
from collections import defaultdict


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'seqkern[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_all(results, out_dir):
    """Write every chart the results allow (none without its data: speed-ups
    without the reference or PyTorch, efficiency with one thread count); return the
    paths written."""
    os.makedirs(out_dir, exist_ok=True)
    grid = [r for r in results if r.get("suite", "grid") == "grid"]
    sweep = [r for r in results if r.get("suite") == "sweep"]
    paths = []
    mine = [r for r in grid if r["impl"] == "seqkern"]
    if mine:
        paths.append(peak_fraction(grid, os.path.join(out_dir, "peak_fraction.png")))
    if any(r.get(f"speedup_vs_{o}") is not None for r in mine for o in ("reference", "torch")):
        paths.append(speedups(grid, os.path.join(out_dir, "speedups.png")))
    if sweep:
        paths.append(sweep_tokens(sweep, os.path.join(out_dir, "tokens_vs_length.png")))
        paths.append(sweep_latency(sweep, os.path.join(out_dir, "latency_vs_length.png")))
        if len({r["threads"] for r in sweep}) > 1:    # efficiency needs a second count
            paths.append(sweep_efficiency(sweep, os.path.join(out_dir,
                                                              "parallel_efficiency.png")))
    return paths


def _bars(ax, labels, series, ylabel, title):
    n = len(series)
    width = 0.8 / max(n, 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def peak_fraction(results, path):
    """Where the time goes: each kernel's GFLOP/s as a fraction of the GEMM peak."""
    plt = _plt()
    rows = [r for r in results if r["impl"] == "seqkern"]
    labels = list(dict.fromkeys(r["case"] for r in rows))
    series = defaultdict(lambda: [0.0] * len(labels))
    for r in rows:
        series[f"{r['threads']} thr"][labels.index(r["case"])] = r["peak_fraction"]
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(labels)), 5))
    _bars(ax, labels, dict(series), "GFLOP/s / GEMM peak (same run, same threads)",
          "seqkern: fraction of the machine's GEMM peak")
    ax.axhline(1.0, color="k", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def speedups(results, path):
    """seqkern against the NumPy reference and PyTorch, per case, at each thread count."""
    plt = _plt()
    rows = [r for r in results if r["impl"] == "seqkern"]
    labels = list(dict.fromkeys(r["case"] for r in rows))
    series = {}
    for r in rows:
        for other in ("reference", "torch"):
            v = r.get(f"speedup_vs_{other}")
            if v is not None:
                key = f"vs {other}, {r['threads']} thr"
                series.setdefault(key, [0.0] * len(labels))[labels.index(r["case"])] = v
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(labels)), 5))
    _bars(ax, labels, series, "speed-up (x)", "seqkern speed-up (median time ratio)")
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sweep_lines(results, value):
    lines = defaultdict(list)
    for r in results:
        if r["impl"] != "seqkern":
            continue
        lines[(r["kernel"], r["batch"], r["threads"])].append((r["seq_len"], value(r)))
    return {k: sorted(v) for k, v in sorted(lines.items())}


def _line_plot(lines, path, ylabel, title, logy=True):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    for (kernel, batch, threads), pts in lines.items():
        style = "-" if kernel == "attention" else "--"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o",
                label=f"{kernel} B={batch} {threads} thr")
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_tokens(results, path):
    return _line_plot(_sweep_lines(results, lambda r: r["tokens_per_s"]), path, "tokens/s",
                      "Throughput against sequence length (forward)")


def sweep_latency(results, path):
    rows = [r for r in results if r["batch"] == 1]
    return _line_plot(_sweep_lines(rows, lambda r: r["median_s"] * 1e3), path,
                      "ms for one sequence", "Latency of one sequence (B = 1): LSTM vs attention")


def sweep_efficiency(results, path):
    rows = [r for r in results if r["threads"] != 1]
    return _line_plot(_sweep_lines(rows, lambda r: r["parallel_efficiency"]), path,
                      "parallel efficiency (speed-up / threads)",
                      "How well each kernel uses more cores", logy=False)
