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
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from seqkern._blas cimport gemm
from seqkern._packed_gemm cimport pk_gemm

cdef extern from "_simd.h" nogil:
    enum: SK_WIDE
    enum: SK_PACK_AUTO

cdef enum:
    STEP_AUTO = 0      # the kernel's measured rule (packs(): by the ISA and the rows served)
    STEP_BLAS = 1
    STEP_PACKED = 2
    # AUTO packs once the weights serve at least this many rows (T * B): packing
    # costs a pass over the weights, which a handful of rows does not repay.
    # Measured (LSTM, float32, 1 thread, forward / forward+backward, us, packed vs
    # OpenBLAS): (B,T,I,H) = (1,1,128,128) 55/109 vs 39/78; (1,4,512,512)
    # 1374/4225 vs 704/2933; (1,16,512,512) 2186/6383 vs 2368/6866;
    # (1,16,128,128) 113/259 vs 130/267; (32,1,256,256) 455/1241 vs 594/1520.
    PACK_MIN_ROWS = 16
    # The minimum work of a parallel loop (multiply-adds over all its tasks): below
    # it every kernel runs that loop on one thread. Waking a second thread costs
    # microseconds on an idle machine and up to a scheduler time slice when another
    # process holds its core, and the loop ends only when that thread has run: a
    # small problem that splits runs slower, and far slower under load.
    PAR_MIN_GEMM = 1 << 25


cdef inline bint packs(int step_gemm, Py_ssize_t rows) noexcept nogil:
    """Run the products with the weights on _packed_gemm.h, for a call over
    ``rows`` = T * B rows? AUTO: where the module's ISA is one the packed GEMM was
    measured faster on (SK_PACK_AUTO, _simd.h), from PACK_MIN_ROWS rows on: a
    function of the sizes and the ISA only, so never of the thread count."""
    if step_gemm == STEP_AUTO:
        return SK_PACK_AUTO and rows >= PACK_MIN_ROWS
    return step_gemm == STEP_PACKED


cdef inline bint interleaves(int step_gemm, Py_ssize_t rows) noexcept nogil:
    """Run a batch-1 step's product interleaved with an independent 16-row product
    (_packed_gemm.h's gemv_side, the LSTM's batch-1 path) for a call over ``rows``
    rows? Its accumulators need 32 vector registers: AUTO only where SK_WIDE."""
    if step_gemm == STEP_AUTO:
        return SK_WIDE and rows >= PACK_MIN_ROWS
    return step_gemm == STEP_PACKED


cdef inline int loop_threads(int n_threads, int n_tasks, double work) noexcept nogil:
    """Threads for a parallel loop of ``n_tasks`` tasks and ``work`` multiply-adds in
    all, given ``n_threads``: 1 below PAR_MIN_GEMM or with a single task."""
    if n_threads <= 1 or n_tasks <= 1 or work < PAR_MIN_GEMM:
        return 1
    return n_threads if n_threads < n_tasks else n_tasks


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


cdef inline void final_states(int B, int H, Py_ssize_t T, const int64_t* lengths,
                              const floating* h0, const floating* out,
                              floating* h_n) noexcept nogil:
    """h_n[b] := out[lengths[b] - 1, b] (T - 1 without lengths), or h0[b] for a
    sequence of length 0; h0, h_n (B, H), out (T, B, H)."""
    cdef int b
    cdef Py_ssize_t L
    for b in range(B):
        L = T if lengths == NULL else lengths[b]
        if L == 0:
            memcpy(h_n + <Py_ssize_t>b * H, h0 + <Py_ssize_t>b * H, H * sizeof(floating))
        else:
            memcpy(h_n + <Py_ssize_t>b * H, out + ((L - 1) * B + b) * <Py_ssize_t>H,
                   H * sizeof(floating))
