"""Python hooks onto the kernels' activations, for tests and for measuring them.

Not public API: ``seqkern._activations.tanh(x)`` applies exactly the function
the recurrent kernels use, so its accuracy can be checked against NumPy.
"""

import numpy as np
from cython cimport floating

include "_build_info.pxi"
from seqkern._activations cimport tanh_, sigmoid_


cdef void _tanh_loop(const floating[::1] x, floating[::1] out) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        out[i] = tanh_(x[i])


cdef void _sigmoid_loop(const floating[::1] x, floating[::1] out) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        out[i] = sigmoid_(x[i])


def _prepare(x):
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be a float32 or float64 array, got dtype {x.dtype}")
    flat = np.ascontiguousarray(x).reshape(-1)
    return x, flat, np.empty_like(flat)


def tanh(x):
    """tanh as the kernels compute it; same shape and dtype as ``x``."""
    x, flat, out = _prepare(x)
    cdef const float[::1] xs
    cdef float[::1] ys
    cdef const double[::1] xd
    cdef double[::1] yd
    if flat.dtype == np.float32:
        xs, ys = flat, out
        with nogil:
            _tanh_loop(xs, ys)
    else:
        xd, yd = flat, out
        with nogil:
            _tanh_loop(xd, yd)
    return out.reshape(x.shape)


def sigmoid(x):
    """The logistic function as the kernels compute it."""
    x, flat, out = _prepare(x)
    cdef const float[::1] xs
    cdef float[::1] ys
    cdef const double[::1] xd
    cdef double[::1] yd
    if flat.dtype == np.float32:
        xs, ys = flat, out
        with nogil:
            _sigmoid_loop(xs, ys)
    else:
        xd, yd = flat, out
        with nogil:
            _sigmoid_loop(xd, yd)
    return out.reshape(x.shape)


cdef extern from "_mathfun.h" nogil:
    float sk_tanhf_fl(float x)
    float sk_sigmoidf_fl(float x)


def tanh_float_native(const float[::1] x, float[::1] out):
    """out := tanh(x) computed in float throughout (the float LSTM gate pass), for tests."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(x.shape[0]):
            out[i] = sk_tanhf_fl(x[i])


def sigmoid_float_native(const float[::1] x, float[::1] out):
    """out := sigmoid(x) computed in float throughout (the float LSTM gate pass), for tests."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(x.shape[0]):
            out[i] = sk_sigmoidf_fl(x[i])
