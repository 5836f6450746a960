from typing import Optional

import numpy as np
from numpy.typing import NDArray

def packed_size(N: int, K: int, dtype: object) -> int: ...
def pack(W: NDArray[np.floating], transposed: bool) -> NDArray[np.floating]: ...
def gemm(A: NDArray[np.floating], P: NDArray[np.floating], C: NDArray[np.floating],
         n0: int = ..., n1: Optional[int] = ..., accumulate: bool = ...,
         repeat: int = ...) -> NDArray[np.floating]: ...

SIDE_ROWS: int

def gemv_side(a: NDArray[np.floating], P: NDArray[np.floating], c: NDArray[np.floating],
              A2: NDArray[np.floating], P2: NDArray[np.floating], C2: NDArray[np.floating],
              v0: int, v1: int, accumulate: bool = ..., reverse: bool = ...,
              repeat: int = ..., k0: int = ..., k1: int = ..., pair: bool = ...
              ) -> tuple[NDArray[np.floating], NDArray[np.floating]]: ...
