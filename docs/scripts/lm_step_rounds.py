"""The LSTM language-model training step of `python -m seqkern.bench --layers`
("nn.LM-step", (B, T, V, H) = (32, 64, 96, 256), float32) against PyTorch's, in
rounds: in each round seqkern and PyTorch take turns (runner.time_interleaved,
``budget`` seconds each) at 1 thread, then at 2; every round is a fresh pair of
runners (new models, new optimisers), so that one round's state (PyTorch's
allocator, the weights' drift) does not carry over. Prints each round's medians
and ratio, then the spread over the rounds.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python docs/scripts/lm_step_rounds.py [rounds [budget]]
"""
import sys

import numpy as np
import torch

import seqkern
from seqkern.bench import layers, runner

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
budget = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
shape = (32, 64, 96, 256)
ratios = {1: [], 2: []}
for r in range(rounds):
    for n in (1, 2):
        seqkern.set_num_threads(n)
        torch.set_num_threads(n)
        fns = {"seqkern": layers.seqkern_runner("nn.LM-step", shape, "fwd+bwd", "float32"),
               "torch": layers.torch_runner("nn.LM-step", shape, "fwd+bwd", "float32")}
        t = {k: float(np.median(v)) for k, v in runner.time_interleaved(fns, budget).items()}
        ratios[n].append(t["torch"] / t["seqkern"])
        print(f"round {r + 1}, {n} thread(s): seqkern {t['seqkern'] * 1e3:.1f} ms, "
              f"torch {t['torch'] * 1e3:.1f} ms, ratio {ratios[n][-1]:.2f}", flush=True)
for n, v in ratios.items():
    print(f"{n} thread(s): torch / seqkern {min(v):.2f}-{max(v):.2f}, median {np.median(v):.2f}")
