"""The kernel modules: those whose code depends on the instruction set. setup.py
compiles each once per level (seqkern._rnn, seqkern._rnn_avx2, ...) and
seqkern._dispatch imports the chosen level's. The one list of them: setup.py
reads this file without importing the package, so it imports nothing.
"""

KERNEL_MODULES = ("_activations", "_attention", "_gru", "_lstm", "_packed_gemm", "_rnn")
