# Element-wise activations shared by every recurrent kernel (see _mathfun.h for
# the formulation and its accuracy). Inline, GIL-free, fused over float/double.

from cython cimport floating

cdef extern from "_mathfun.h" nogil:
    double sk_tanh(double x)
    double sk_sigmoid(double x)
    float sk_tanhf(float x)
    float sk_sigmoidf(float x)


cdef inline floating tanh_(floating x) noexcept nogil:
    if floating is float:
        return sk_tanhf(x)
    else:
        return sk_tanh(x)


cdef inline floating sigmoid_(floating x) noexcept nogil:
    if floating is float:
        return sk_sigmoidf(x)
    else:
        return sk_sigmoid(x)
