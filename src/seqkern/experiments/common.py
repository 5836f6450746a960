"""What every experiment shares: the run context (seeded generators, thread
count, a table printed as it goes, a text progress bar), the verdict (a claim
judged by checks computed from the numbers), and the files of a run (a JSON of
every number, a PNG figure when matplotlib is importable).

An experiment is a module with

- ``TITLE`` (one line) and ``CLAIM`` (the seed's claim, in one sentence);
- ``SIZES``: {"tiny": cfg, "quick": cfg, "full": cfg}, each a dict of sizes
  ("tiny" is the test suite's: seconds);
- ``measure(cfg, ctx) -> numbers``: a JSON-able dict of every measured number;
- ``verdict(numbers) -> Verdict``: the claim judged from the numbers alone;
- ``figure(numbers) -> matplotlib.figure.Figure``: drawn from the numbers alone.
"""

import json
import math
import os
import platform
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

SUPPORTED, NOT_SUPPORTED, UNDETERMINED = "SUPPORTED", "NOT SUPPORTED", "UNDETERMINED"


@dataclass
class Check:
    """One measurable part of a claim: ``ok`` is True or False from the numbers,
    or None where this run cannot tell (e.g. one core for a parallel claim)."""

    statement: str
    ok: Optional[bool]
    detail: str = ""


@dataclass
class Verdict:
    """A claim and the checks that decide it: supported when every check holds,
    not supported when any fails, undetermined otherwise."""

    claim: str
    checks: List[Check] = field(default_factory=list)

    @property
    def status(self):
        oks = [c.ok for c in self.checks]
        if any(ok is False for ok in oks):
            return NOT_SUPPORTED
        if not oks or any(ok is None for ok in oks):
            return UNDETERMINED
        return SUPPORTED

    def lines(self, name):
        out = []
        for c in self.checks:
            mark = {True: "yes", False: "NO", None: "n/a"}[c.ok]
            out.append(f"  [{mark:>3}] {c.statement}" + (f" ({c.detail})" if c.detail else ""))
        out.append(f"{name}: {self.claim} -> {self.status} by this run")
        return out

    def to_json(self):
        return {"claim": self.claim, "status": self.status,
                "checks": [{"statement": c.statement, "ok": c.ok, "detail": c.detail}
                           for c in self.checks]}


class Progress:
    """A one-line text bar on stderr (only where stderr is a terminal)."""

    def __init__(self, total, label, stream=None):
        self.total, self.label, self.done = max(int(total), 1), label, 0
        self.stream = stream if stream is not None else sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self._draw()

    def update(self, n=1):
        self.done = min(self.total, self.done + n)
        self._draw()

    def clear(self):
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def close(self):
        self.clear()
        self.live = False

    def _draw(self):
        if not self.live:
            return
        width = 30
        full = width * self.done // self.total
        el = time.perf_counter() - self.t0
        self.stream.write(f"\r  [{'#' * full}{'.' * (width - full)}] {self.done}/{self.total} "
                          f"{self.label} {el:.0f}s")
        self.stream.flush()


def fmt(v):
    """A table cell: 4 significant digits for floats, as is otherwise."""
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


class Context:
    """What ``measure`` gets: ``cfg``'s generators, the thread count, the table
    and the progress bar. Output goes to ``stream`` (stdout by default)."""

    def __init__(self, seed=0, threads=None, stream=None):
        self.seed = int(seed)
        self.threads = threads
        self.stream = stream if stream is not None else sys.stdout
        self._bar = None
        self._columns = None

    def rng(self, *key):
        """A generator for one named part of an experiment: the same for the same
        seed and key, whatever ran before it."""
        return np.random.default_rng([self.seed] + [zlib.crc32(str(k).encode()) for k in key])

    def say(self, text=""):
        if self._bar is not None:
            self._bar.clear()
        print(text, file=self.stream, flush=True)
        if self._bar is not None:
            self._bar._draw()

    def table(self, *columns):
        """Start a table; ``row`` prints one row under these column names."""
        self._columns = columns
        self._widths = [max(10, len(c)) for c in columns]
        self.say("  ".join(c.rjust(w) for c, w in zip(columns, self._widths)))

    def row(self, *values):
        self.say("  ".join(fmt(v).rjust(w) for v, w in zip(values, self._widths)))

    def progress(self, total, label=""):
        if self._bar is not None:
            self._bar.close()
        self._bar = Progress(total, label)
        return self._bar

    def end_progress(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(ncols=1, nrows=1, size=(6.4, 4.8)):
    """(fig, axes) on the Agg canvas, without pyplot's global state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def machine():
    import seqkern
    from seqkern import _dispatch

    return {"python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.machine(), "processor": platform.processor(),
            "cores": os.cpu_count(), "seqkern": seqkern.__version__, "isa": _dispatch.LEVEL}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-able: {type(o).__name__}")


def to_jsonable(numbers):
    """``numbers`` with NumPy arrays and scalars as lists and Python numbers."""
    return json.loads(json.dumps(numbers, default=_json_default))


def run(module, size="quick", out_dir="experiments-out", seed=0, threads=None, stream=None):
    """Run one experiment: print its table and verdict, write NAME.json and
    NAME.png (or a note without matplotlib) under ``out_dir``; return the result
    dict that the JSON holds."""
    import seqkern
    from threadpoolctl import threadpool_limits

    name = module.__name__.rsplit(".", 1)[-1]
    cfg = module.SIZES[size]
    ctx = Context(seed, threads, stream)
    n = threads or seqkern.get_num_threads()
    ctx.say(f"== {name}: {module.TITLE} ({size}, seed {seed}, {n} threads)")
    t0 = time.perf_counter()
    try:
        # NumPy's BLAS (the layers' small products) on one thread: on a busy machine
        # its threads made the training loops many times slower than one thread.
        with seqkern.threads(n), threadpool_limits(limits=1, user_api="blas"):
            numbers = to_jsonable(module.measure(cfg, ctx))
    finally:
        ctx.end_progress()
    wall = time.perf_counter() - t0
    v = module.verdict(numbers)
    result = {"experiment": name, "size": size, "seed": seed, "threads": n, "config": cfg,
              "wall_s": wall, "machine": machine(), "numbers": numbers, "verdict": v.to_json()}
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{name}.json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    png_path = os.path.join(out_dir, f"{name}.png")
    if have_matplotlib():
        fig = module.figure(numbers)
        fig.savefig(png_path, dpi=100)
        files = f"{json_path}, {png_path}"
    else:
        files = json_path
        ctx.say("  (no figure: matplotlib is not installed; pip install 'seqkern[plot]'. "
                "The table above and the JSON hold every number.)")
    ctx.say(f"  wrote {files}; {wall:.1f} s")
    for line in v.lines(name):
        ctx.say(line)
    return result
