"""The seed text's claims about sequence models, measured on the machine that runs them.

``python -m seqkern.experiments NAME [--quick]``; one module per claim, each
with its table, JSON, figure and a verdict computed from its numbers
(:mod:`seqkern.experiments.common` says what a module provides):

- ``order``: bag-of-words cannot tell word order; n-grams are sparse; a
  recurrent classifier can (seed 1.3).
- ``gradients``: gradients vanish or explode through a plain RNN's steps
  (3.1, 4.3).
- ``parallel``: recurrent layers cannot use more cores for one sequence,
  attention can (4.1, 4.4, 6.2, 6.4).
- ``clipping``: exploding gradients make training unstable; clipping the
  gradient norm tames it (3.1, 6.2).
- ``memory``: a plain RNN forgets across long distances where the LSTM holds
  longer and attention does not degrade (4.3, 7.1).
- ``bottleneck``: one context vector loses long sources; attention over the
  encoder states does not (5.1-5.3, 7.2).
"""

import importlib

NAMES = ("order", "gradients", "parallel", "clipping", "memory", "bottleneck")


def load(name):
    """The module of experiment ``name``."""
    if name not in NAMES:
        raise ValueError(f"experiment must be one of {', '.join(NAMES)}; got {name!r}")
    return importlib.import_module(f"seqkern.experiments.{name}")
