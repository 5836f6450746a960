from typing import Optional

import numpy as np
from numpy.typing import NDArray

def packed_size(N: int, K: int, dtype: object) -> int: ...
def pack(W: NDArray[np.floating], transposed: bool) -> NDArray[np.floating]: ...
def gemm(A: NDArray[np.floating], P: NDArray[np.floating], C: NDArray[np.floating],
         n0: int = ..., n1: Optional[int] = ..., accumulate: bool = ...,
         repeat: int = ...) -> NDArray[np.floating]: ...
