"""Result types shared by the kernels and their NumPy references."""

from typing import NamedTuple, Optional

import numpy as np


class RNNGrads(NamedTuple):
    """Gradients of an Elman RNN: dx like x, dh0 (B, H), dW_ih (H, I), dW_hh (H, H),
    db_ih and db_hh (H,) or None where the bias was None."""

    dx: np.ndarray
    dh0: np.ndarray
    dW_ih: np.ndarray
    dW_hh: np.ndarray
    db_ih: Optional[np.ndarray]
    db_hh: Optional[np.ndarray]


class LSTMGrads(NamedTuple):
    """Gradients of an LSTM: dx like x, dh0 and dc0 (B, H), dW_ih (4H, I), dW_hh (4H, H),
    db_ih and db_hh (4H,) or None where the bias was None."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dW_ih: np.ndarray
    dW_hh: np.ndarray
    db_ih: Optional[np.ndarray]
    db_hh: Optional[np.ndarray]


class GRUGrads(NamedTuple):
    """Gradients of a GRU: dx like x, dh0 (B, H), dW_ih (3H, I), dW_hh (3H, H),
    db_ih and db_hh (3H,) or None where the bias was None."""

    dx: np.ndarray
    dh0: np.ndarray
    dW_ih: np.ndarray
    dW_hh: np.ndarray
    db_ih: Optional[np.ndarray]
    db_hh: Optional[np.ndarray]


class AttentionGrads(NamedTuple):
    """Gradients of attention: dq (B, Hq, Tq, D), dk (B, Hkv, Tk, D), dv (B, Hkv, Tk, Dv)."""

    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray
