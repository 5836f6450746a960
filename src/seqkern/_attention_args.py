"""Argument handling shared by the attention kernels and their NumPy reference,
so that both accept and reject exactly the same inputs. Pure Python:
``seqkern.reference`` imports it without the compiled modules.

Legend: B batch, Hq query heads, Hkv key/value heads, Tq queries, Tk keys,
D query/key width, Dv value width.
"""

import math
import numbers

import numpy as np

from seqkern._validation import check_bool, check_shape, check_sizes, float_array, lengths_array


def _compact_mask(mask, target, dtype):
    """The mask as a C-contiguous 4-d array whose every axis is 1 or the target's
    size, with element strides (0 along broadcast axes), never materialising a
    broadcast (axes that a view repeats with stride 0 are collapsed to size 1).

    Returns (array, strides, kind): kind "bool" (array is uint8, 1 = may attend)
    or "float" (array has the call's dtype, added to the scores).
    """
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        kind = "bool"
    elif np.issubdtype(m.dtype, np.floating):
        kind = "float"
    else:
        raise TypeError(f"mask must be a boolean or floating array, got dtype {m.dtype}")
    legend = "(B, Hq, Tq, Tk) = " + str(tuple(target))
    if m.ndim > 4:
        raise ValueError(f"mask must broadcast to {legend}, got shape {m.shape}")
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)
    if any(s != 1 and s != t for s, t in zip(m.shape, target)):
        raise ValueError(f"mask of shape {np.shape(mask)} does not broadcast to {legend}")
    # collapse axes a view repeats (stride 0), e.g. np.broadcast_to's
    m = m[tuple(slice(0, 1) if (st == 0 and s > 1) else slice(None)
                for s, st in zip(m.shape, m.strides))]
    if kind == "bool":
        m = np.ascontiguousarray(m).view(np.uint8)
    else:
        m = np.ascontiguousarray(m, dtype=dtype)
    strides = []
    step = 1
    for s in reversed(m.shape):
        strides.append(0 if s == 1 else step)
        step *= s
    return m, tuple(reversed(strides)), kind


class AttentionArgs:
    """Checked, C-contiguous arguments of an attention call (shared by the kernel
    wrappers and the references so that both reject the same inputs).

    ``mask`` is the compact 4-d mask (axes of size 1 where it broadcasts: NumPy
    broadcasting against (B, Hq, Tq, Tk) works on it directly), ``mask_kind``
    "bool" (then uint8) or "float", ``mask_strides`` its element strides with 0
    along broadcast axes.
    """

    __slots__ = ("q", "k", "v", "causal", "mask", "mask_kind", "mask_strides", "key_lengths",
                 "scale", "B", "Hq", "Hkv", "Tq", "Tk", "D", "Dv", "dtype")

    def __init__(self, q, k, v, causal, mask, key_lengths, scale):
        self.causal = check_bool("causal", causal)
        self.q = q = float_array("q", q, 4)
        self.dtype = dt = q.dtype
        self.k = k = float_array("k", k, 4, dt)
        self.v = v = float_array("v", v, 4, dt)
        self.B, self.Hq, self.Tq, self.D = B, Hq, Tq, D = q.shape
        self.Hkv, self.Tk = Hkv, Tk = k.shape[1], k.shape[2]
        self.Dv = Dv = v.shape[3]
        check_shape("k", k, (B, Hkv, Tk, D), "(B, Hkv, Tk, D) with B and D from q")
        check_shape("v", v, (B, Hkv, Tk, Dv), "(B, Hkv, Tk, Dv) with B, Hkv and Tk from k")
        if Hkv == 0 and Hq != 0 or Hkv != 0 and Hq % Hkv != 0:
            raise ValueError(f"the query heads Hq = q.shape[1] = {Hq} must be a multiple of the "
                             f"key/value heads Hkv = k.shape[1] = {Hkv}")
        check_sizes(("B = q.shape[0]", B), ("Hq = q.shape[1]", Hq), ("Hkv = k.shape[1]", Hkv),
                    ("Tq = q.shape[2]", Tq), ("Tk = k.shape[2]", Tk), ("D + Dv", D + Dv))
        if scale is None:
            self.scale = 1.0 / math.sqrt(D) if D else 1.0
        elif isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
        else:
            self.scale = float(scale)
        self.key_lengths = lengths_array(key_lengths, B, Tk, "key_lengths", "Tk")
        if mask is None:
            self.mask, self.mask_strides, self.mask_kind = None, (0, 0, 0, 0), None
        else:
            self.mask, self.mask_strides, self.mask_kind = _compact_mask(mask, (B, Hq, Tq, Tk), dt)
