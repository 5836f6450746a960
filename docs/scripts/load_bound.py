"""Issue 15's load bound: each grid case at batch 1 and 32 (and attention's batch 1 and 8),
forward and forward+backward, on 2 threads against 1 thread with N busy processes beside
(argv[1]; argv[2]: dtype, default float32). The two thread counts take turns sample by sample
(the bench's time_interleaved), so both see the same moments of the scheduler (the bench's
--busy run does the same with its --budget, by default fewer samples). Prints, per case, the
median 2-thread time over the median 1-thread time, and the same of the means: beside busy
processes a case's samples fall in modes a scheduler slice apart (a thread that had a core
to itself, or half of one), and with few samples the median can land on either mode, while
the mean is what many calls cost. The bound is 1.25."""
import json, statistics, sys

import seqkern
from seqkern.bench import cases as C, runner as R

n_busy = int(sys.argv[1])
dtype = sys.argv[2] if len(sys.argv) > 2 else "float32"
picked = [c for c in C.grid(dtypes=(dtype,))
          if (c.kernel != "attention" and c.shape[0] in (1, 32))
          or (c.kernel == "attention" and c.shape[0] in (1, 8))]


def on(fn, n):
    def call():
        with seqkern.threads(n):
            fn()
    return call


with R.busy_processes(n_busy):
    for c in picked:
        fn = C.make_runner(c, "seqkern")
        t = R.time_interleaved({"1t": on(fn, 1), "2t": on(fn, 2)}, budget_s=1.0, max_repeats=40)
        m1, m2 = statistics.median(t["1t"]), statistics.median(t["2t"])
        print(json.dumps({"case": c.name, "busy": n_busy, "isa": seqkern._dispatch.LEVEL,
                          "ms_1t": m1 * 1e3, "ms_2t": m2 * 1e3, "ratio": m2 / m1,
                          "mean_ratio": statistics.fmean(t["2t"]) / statistics.fmean(t["1t"]),
                          "samples": len(t["1t"])}), flush=True)
