# What the recurrent kernels (_rnn.pyx, _lstm.pyx, _gru.pyx) share: the choice of
# GEMM for the products with the weights, and the row-block product with W_ih.
#
# The products with the weights run on OpenBLAS (_blas.pxd) or on _packed_gemm.h
# with the weights packed once per call: OpenBLAS packs its W operand again inside
# every call (once per time step for W_hh, once per row block for W_ih), and the
# packed kernel runs closer to the FMA peak at these shapes (~114 GFLOP/s float32
# at B = 32..64 against ~60-75 for OpenBLAS's per-step calls). Each kernel's file
# records what was measured for it. seqkern._step_gemm forces either choice.

from cython cimport floating

from seqkern._blas cimport gemm
from seqkern._packed_gemm cimport pk_gemm

cdef enum:
    STEP_AUTO = 0      # the kernel's measured rule (today: always packed)
    STEP_BLAS = 1
    STEP_PACKED = 2


cdef inline bint packs(int step_gemm) noexcept nogil:
    """Run the products with the weights on _packed_gemm.h? No shape measured so far
    lost to OpenBLAS (B = 1 included), so AUTO packs."""
    return step_gemm != STEP_BLAS


cdef inline int n_blocks(Py_ssize_t n, Py_ssize_t block) noexcept nogil:
    return <int>((n + block - 1) // block)


cdef inline void rows_times_wt(const floating* x, const floating* W, const floating* W_pk,
                               floating* out, Py_ssize_t r0, Py_ssize_t r1, int I, int G,
                               bint accumulate) noexcept nogil:
    """out[r0:r1] (+)= x[r0:r1] @ W^T; x (rows, I), W (G, I), out (rows, G): added
    to out if ``accumulate``, else written. W_pk: W packed for x @ W^T
    (_packed_gemm.h), or NULL for OpenBLAS."""
    if W_pk != NULL:
        pk_gemm(<int>(r1 - r0), I, x + r0 * I, I, W_pk, out + r0 * G, G, 0, G, accumulate)
    else:
        gemm(False, True, <int>(r1 - r0), G, I, <floating>1, x + r0 * I, I, W, I,
             <floating>(1 if accumulate else 0), out + r0 * G, G)
