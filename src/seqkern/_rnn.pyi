# Type stubs for the compiled Elman RNN kernels (private: use seqkern.rnn_*).
from typing import Optional

import numpy as np
from numpy.typing import NDArray

def forward(x: NDArray[np.floating], h0: NDArray[np.floating], W_ih: NDArray[np.floating],
            W_hh: NDArray[np.floating], bias: NDArray[np.floating],
            lengths: Optional[NDArray[np.int64]], out: NDArray[np.floating],
            h_n: NDArray[np.floating], relu: bool, n_threads: int, n_parts: int,
            step_gemm: int) -> None: ...

def backward(x: NDArray[np.floating], d_out: Optional[NDArray[np.floating]],
             d_h_n: Optional[NDArray[np.floating]], h0: NDArray[np.floating],
             out: NDArray[np.floating], W_ih: NDArray[np.floating], W_hh: NDArray[np.floating],
             lengths: Optional[NDArray[np.int64]], dz: NDArray[np.floating],
             dx: NDArray[np.floating], dh0: NDArray[np.floating], dW_ih: NDArray[np.floating],
             dW_hh: NDArray[np.floating], db: NDArray[np.floating], relu: bool,
             n_threads: int, n_parts: int, step_gemm: int) -> None: ...
