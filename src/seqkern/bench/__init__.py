"""Benchmarks of seqkern against its NumPy references and PyTorch.

``python -m seqkern.bench --help`` for the command; :mod:`seqkern.bench.cases`
holds the grid shared with the pytest-benchmark suite in ``benchmarks/``.
"""

from seqkern.bench.cases import Case, grid, make_runner

__all__ = ["Case", "grid", "make_runner"]
