# The one door to BLAS: every kernel calls these, and nothing else cimports
# scipy.linalg.cython_blas. All matrices are row-major (C order); each wrapper
# swaps operands once so that the column-major BLAS computes the row-major result.
#
# These are `cdef inline` so that the call costs nothing next to the BLAS call;
# they hold no Python object and may be called without the GIL.

from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

# A product over this many rows k or fewer (a weight gradient of one time step at
# batch 1: dW = dz^T x, k = T * B) is k rank-1 updates of C, bound by reading and
# writing C; some BLAS builds send such shapes to "small matrix" kernels several
# times slower than that, which even pass over C for k = 0. Those run as the loop
# of _rank_k_update instead.
cdef enum:
    RANK_K_MAX = 4


cdef inline void _rank_k_update(bint trans_a, int m, int n, int k, floating alpha,
                                const floating* a, int lda, const floating* b, int ldb,
                                floating beta, floating* c, int ldc) noexcept nogil:
    """gemm's C := alpha * op(A) @ B + beta * C for B (k, n) row-major (not
    transposed), row by row of C: c_i := beta c_i (not 0 * c_i where beta == 0: the
    first product is written over it), then c_i += (alpha op(A)[i, p]) b_p for p =
    0 .. k-1, in order. alpha == 0 reads neither A nor B, as BLAS."""
    cdef int i, j, p, p0
    cdef floating* ci
    if alpha == 0:
        k = 0
    for i in range(m):
        ci = c + <Py_ssize_t>i * ldc
        p0 = 0
        if beta == 0 and k > 0:             # c_i := the first product (no pass of 0s)
            _row_times(alpha * _a_at(trans_a, a, lda, i, 0), b, n, ci)
            p0 = 1
        elif beta == 0:
            for j in range(n):
                ci[j] = 0
        elif beta != 1:
            for j in range(n):
                ci[j] *= beta
        for p in range(p0, k):
            _row_add(alpha * _a_at(trans_a, a, lda, i, p), b + <Py_ssize_t>p * ldb, n, ci)


cdef inline floating _a_at(bint trans_a, const floating* a, int lda, int i,
                           int p) noexcept nogil:
    """op(A)[i, p]: A (m, k), or (k, m) when trans_a, row stride lda."""
    return a[<Py_ssize_t>p * lda + i] if trans_a else a[<Py_ssize_t>i * lda + p]


cdef inline void _row_times(floating s, const floating* b, int n, floating* c) noexcept nogil:
    """c[0:n] := s b[0:n]."""
    cdef int j
    for j in range(n):
        c[j] = s * b[j]


cdef inline void _row_add(floating s, const floating* b, int n, floating* c) noexcept nogil:
    """c[0:n] += s b[0:n]."""
    cdef int j
    for j in range(n):
        c[j] += s * b[j]


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, row-major.

    C is (m, n) with row stride ldc; op(A) is (m, k): A is (m, k), or (k, m) when
    trans_a, with row stride lda; op(B) is (k, n): B is (k, n), or (n, k) when
    trans_b, with row stride ldb. A single row (m == 1, k > 0) goes to GEMV; a
    product over RANK_K_MAX rows k or fewer (B not transposed), or over none, to
    _rank_k_update (k = 0: C := beta C, nothing to do for beta = 1).
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef char tg
    cdef int one = 1, incx, rows, cols, j
    if m <= 0 or n <= 0:
        return
    # BLAS rejects leading dimensions below 1 even when nothing is read.
    if lda < 1:
        lda = 1
    if ldb < 1:
        ldb = 1
    if ldc < 1:
        ldc = 1
    if m == 1 and k > 0:
        # c(n) := alpha * op(B)^T @ a_row + beta * c, where a_row has stride 1
        # (A is (1, k)) or lda (A is (k, 1)). With beta == 0, c may be
        # uninitialised memory: zero it first, since some BLAS builds scale y by
        # beta (0 * NaN = NaN) instead of overwriting it.
        if beta == 0:
            for j in range(n):
                c[j] = 0
        incx = lda if trans_a else 1
        if trans_b:
            # B (n, k) row-major is a (k, n) column-major matrix: c = B @ a = (B_cm)^T a.
            tg = b'T'
            rows = k
            cols = n
        else:
            # B (k, n) row-major is an (n, k) column-major matrix: c = B^T a = B_cm a.
            tg = b'N'
            rows = n
            cols = k
        if floating is float:
            sgemv(&tg, &rows, &cols, &alpha, <float*>b, &ldb, <float*>a, &incx,
                  &beta, c, &one)
        else:
            dgemv(&tg, &rows, &cols, &alpha, <double*>b, &ldb, <double*>a, &incx,
                  &beta, c, &one)
        return
    if k == 0 or (k <= RANK_K_MAX and not trans_b):
        _rank_k_update(trans_a, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    # Row-major C is column-major C^T = op(B)^T @ op(A)^T.
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda,
              &beta, c, &ldc)
