"""Argument checks shared by every public function (kernels and references).

Each check names the argument and what was expected, and raises TypeError for
a wrong kind of object or dtype and ValueError for a wrong shape or value.
"""

import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_F32, _F64 = FLOAT_DTYPES

# The kernels hold sizes in C int, and with them the ends of blocks cut from a
# size and the sum of two sizes (attention's D + Dv): every size that reaches
# them (and T * B, 4H, ...) is held to at most MAX_SIZE, which leaves room for both.
MAX_SIZE = 2**30


def check_sizes(*sizes):
    """Raise ValueError for the first (name, value) pair whose value passes MAX_SIZE."""
    for name, n in sizes:
        if n > MAX_SIZE:
            raise ValueError(f"{name} = {n} exceeds the kernels' limit of 2**30 = {MAX_SIZE}")


def float_array(name, a, ndim, dtype=None, check=None):
    """``a`` as a C-contiguous float32/float64 array of ``ndim`` dimensions.

    With ``dtype`` given, ``a`` must have it (all floating arrays of one call
    share one dtype). Never modifies ``a``; copies only if it is not contiguous,
    and then only after ``check(shape)`` (if given) has passed the shape.
    """
    if a is None:
        raise TypeError(f"{name} must be a float32 or float64 array, got None")
    if type(a) is np.ndarray:
        arr = a
    else:
        try:
            arr = np.asarray(a)
        except (TypeError, ValueError) as e:     # ragged nested lists, say
            kind = TypeError if isinstance(e, TypeError) else ValueError
            raise kind(f"{name} must be a float32 or float64 array: {e}") from None
    dt = arr.dtype
    if (dt is _F32 or dt is _F64) and (dtype is None or dt is dtype) and arr.ndim == ndim \
            and arr.flags.c_contiguous:
        return arr          # the common case, checked without dtype comparisons (~0.3 us each)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {arr.dtype} but the call's other arrays are {np.dtype(dtype)}: "
            "all floating arrays of one call must share one dtype"
        )
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    # no copy of an array the kernels would refuse (a stride-0 view, say)
    check_sizes(*((f"{name}.shape[{i}]", n) for i, n in enumerate(arr.shape)))
    if check is not None:
        check(arr.shape)
    return np.ascontiguousarray(arr)


def optional_float_array(name, a, ndim, dtype):
    return None if a is None else float_array(name, a, ndim, dtype)


def check_shape(name, arr, expected, legend):
    """Raise ValueError unless arr.shape == expected; ``legend`` spells the
    expected shape symbolically, e.g. "(B, H) = (4, 16)"."""
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {legend} = {tuple(expected)}, got {tuple(arr.shape)}")


def lengths_array(lengths, B, T, name="lengths", T_name="T"):
    """``lengths`` (the argument ``name``) as an int64 array of shape (B,) with
    values in [0, T] (``T_name``: how a message spells T), or None."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array of shape (B,), got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"{name} must have shape (B,) = ({B},), got {arr.shape}")
    if B and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"{name} must lie in [0, {T_name}] = [0, {T}], "
                         f"got values in [{arr.min()}, {arr.max()}]")
    return np.ascontiguousarray(arr, dtype=np.int64)


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_cache(cache, cls, producer):
    if not isinstance(cache, cls):
        got = "None" if cache is None else type(cache).__name__
        raise TypeError(f"cache must be the cache returned by {producer}, got {got}")
    return cache


def check_index(name, value):
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
