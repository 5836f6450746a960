"""python -m seqkern.experiments NAME|all [--quick] [--out DIR] [--seed S] [--threads N]

Runs one of the seed text's claims as an experiment (or all of them), prints its
table as it goes, writes DIR/NAME.json (every number) and DIR/NAME.png (with
matplotlib: pip install 'seqkern[plot]'), and ends with the claim and whether
this run supports it. Results are reproducible for a seed and thread count
(the timings of ``parallel`` excepted).
"""

import argparse
import os
import sys
import time

from seqkern.experiments import NAMES, load
from seqkern.experiments.common import run


def _int_in(low, high=None):
    """An argparse type: an integer in [low, high()] (high: a function, called on
    use; None: no upper bound)."""
    def parse(s):
        top = None if high is None else high()
        span = f"an integer >= {low}" if top is None else f"an integer in [{low}, {top}]"
        try:
            n = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {span}, got {s!r}") from None
        if n < low or top is not None and n > top:
            raise argparse.ArgumentTypeError(f"expected {span}, got {s!r}")
        return n
    return parse


def _max_threads():
    from seqkern import MAX_THREADS

    return MAX_THREADS


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m seqkern.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("name", choices=NAMES + ("all",), help="the experiment, or all of them")
    p.add_argument("--quick", action="store_true",
                   help="smaller sizes: each experiment in under 2 minutes on 2 cores")
    p.add_argument("--out", default="experiments-out", metavar="DIR",
                   help="where the JSON and PNG files go (default: experiments-out)")
    p.add_argument("--seed", type=_int_in(0), default=0, help="seed of every generator (default 0)")
    p.add_argument("--threads", type=_int_in(1, _max_threads), default=None, metavar="N",
                   help="seqkern's thread count (default: seqkern's; NumPy's BLAS runs on "
                        "one); for parallel, the largest count of its sweep")
    p.add_argument("--size", choices=("tiny", "quick", "full"), default=None,
                   help=argparse.SUPPRESS)  # tiny: the test suite's sizes
    args = p.parse_args(argv)
    try:                                # before any experiment runs
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        p.error(f"--out {args.out}: {e.strerror}")
    if not os.access(args.out, os.W_OK):
        p.error(f"--out {args.out}: not writable")
    size = args.size or ("quick" if args.quick else "full")
    names = NAMES if args.name == "all" else (args.name,)
    t0 = time.perf_counter()
    statuses = []
    for name in names:
        result = run(load(name), size=size, out_dir=args.out, seed=args.seed,
                     threads=args.threads)
        statuses.append((name, result["verdict"]["status"], result["wall_s"]))
        print(flush=True)
    if len(names) > 1:
        for name, status, wall in statuses:
            print(f"{name:>10}: {status} ({wall:.0f} s)")
        print(f"all: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
