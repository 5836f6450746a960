# The one door to BLAS: every kernel calls these, and nothing else cimports
# scipy.linalg.cython_blas. All matrices are row-major (C order); each wrapper
# swaps operands once so that the column-major BLAS computes the row-major result.
#
# These are `cdef inline` so that the call costs nothing next to the BLAS call;
# they hold no Python object and may be called without the GIL.

from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, row-major.

    C is (m, n) with row stride ldc; op(A) is (m, k): A is (m, k), or (k, m) when
    trans_a, with row stride lda; op(B) is (k, n): B is (k, n), or (n, k) when
    trans_b, with row stride ldb. A single row (m == 1) goes to GEMV.
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
    # Row-major C is column-major C^T = op(B)^T @ op(A)^T.
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda,
              &beta, c, &ldc)
