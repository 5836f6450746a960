# The packed-weight GEMM of _packed_gemm.h for the recurrent kernels' per-step
# products: pack W once per kernel call, then C[:, n0:n1] (+)= A @ W[:, n0:n1] at
# every step. Fused over float/double; GIL-free; see _packed_gemm.h for the layout.

from cython cimport floating

from seqkern._workspace cimport scratch_alloc

cdef extern from "_packed_gemm.h" nogil:
    enum: SK_PK_SIDE_ROWS
    enum: SK_PK_VBYTES      # bytes of one vector; a panel is 4 of them wide
    size_t sk_pk_size_f(int N, int K)
    size_t sk_pk_size_d(int N, int K)
    void sk_pk_pack_nt_f(int N, int K, const float* W, Py_ssize_t ldw, float* P)
    void sk_pk_pack_nt_d(int N, int K, const double* W, Py_ssize_t ldw, double* P)
    void sk_pk_pack_nn_f(int K, int N, const float* W, Py_ssize_t ldw, float* P)
    void sk_pk_pack_nn_d(int K, int N, const double* W, Py_ssize_t ldw, double* P)
    void sk_pk_gemm_dir_f(int M, int K, const float* A, Py_ssize_t lda, const float* P,
                          float* C, Py_ssize_t ldc, int n0, int n1, int accumulate,
                          int reverse)
    void sk_pk_gemm_dir_d(int M, int K, const double* A, Py_ssize_t lda, const double* P,
                          double* C, Py_ssize_t ldc, int n0, int n1, int accumulate,
                          int reverse)
    void sk_pk_pack_side_f(int m, int K, const float* A, Py_ssize_t lda, float* S)
    void sk_pk_pack_side_d(int m, int K, const double* A, Py_ssize_t lda, double* S)
    void sk_pk_gemv_side_f(int K, const float* a, const float* P, int N, float* c,
                           int accumulate, int reverse, int pair, int K2,
                           const float* S, const float* P2, int N2, float* C2,
                           Py_ssize_t ldc2, int m2,
                           long long s0, long long s1)
    void sk_pk_gemv_side_d(int K, const double* a, const double* P, int N, double* c,
                           int accumulate, int reverse, int pair, int K2,
                           const double* S, const double* P2, int N2, double* C2,
                           Py_ssize_t ldc2, int m2,
                           long long s0, long long s1)


cdef inline size_t pk_size(floating* dummy, int N, int K) noexcept nogil:
    """Elements of the packed form of a (K, N) operand (dummy only picks the type)."""
    if floating is float:
        return sk_pk_size_f(N, K)
    else:
        return sk_pk_size_d(N, K)


cdef inline void pk_pack_nt(int N, int K, const floating* W, Py_ssize_t ldw,
                            floating* P) noexcept nogil:
    """P := packed W^T; W (N, K) row-major (the operand of A @ W^T)."""
    if floating is float:
        sk_pk_pack_nt_f(N, K, W, ldw, P)
    else:
        sk_pk_pack_nt_d(N, K, W, ldw, P)


cdef inline void pk_pack_nn(int K, int N, const floating* W, Py_ssize_t ldw,
                            floating* P) noexcept nogil:
    """P := packed W; W (K, N) row-major (the operand of A @ W)."""
    if floating is float:
        sk_pk_pack_nn_f(K, N, W, ldw, P)
    else:
        sk_pk_pack_nn_d(K, N, W, ldw, P)


cdef inline void pk_gemm_dir(int M, int K, const floating* A, Py_ssize_t lda,
                             const floating* P, floating* C, Py_ssize_t ldc,
                             int n0, int n1, bint accumulate, bint reverse) noexcept nogil:
    """pk_gemm visiting the panels last to first if ``reverse`` (same results)."""
    if floating is float:
        sk_pk_gemm_dir_f(M, K, A, lda, P, C, ldc, n0, n1, accumulate, reverse)
    else:
        sk_pk_gemm_dir_d(M, K, A, lda, P, C, ldc, n0, n1, accumulate, reverse)


cdef inline void pk_gemm(int M, int K, const floating* A, Py_ssize_t lda,
                         const floating* P, floating* C, Py_ssize_t ldc,
                         int n0, int n1, bint accumulate) noexcept nogil:
    """C[:, n0:n1] (+)= A @ W[:, n0:n1]; A (M, K), C (M, N), P the packed (K, N) W."""
    pk_gemm_dir(M, K, A, lda, P, C, ldc, n0, n1, accumulate, False)


cdef inline floating* pk_alloc_nt(int N, int K, const floating* W) noexcept nogil:
    """Packed copy of W (N, K) row-major, for A @ W^T, in SK_PK_VBYTES-aligned scratch
    (_workspace: scratch_free() it); NULL if out of memory."""
    cdef floating* P = <floating*>scratch_alloc(pk_size(<floating*>NULL, N, K) * sizeof(floating))
    if P != NULL:
        pk_pack_nt(N, K, W, K, P)
    return P


cdef inline floating* pk_alloc_nn(int K, int N, const floating* W) noexcept nogil:
    """Packed copy of W (K, N) row-major, for A @ W, in SK_PK_VBYTES-aligned scratch
    (_workspace: scratch_free() it); NULL if out of memory."""
    cdef floating* P = <floating*>scratch_alloc(pk_size(<floating*>NULL, N, K) * sizeof(floating))
    if P != NULL:
        pk_pack_nn(K, N, W, N, P)
    return P


cdef inline void pk_pack_side(int m, int K, const floating* A, Py_ssize_t lda,
                              floating* S) noexcept nogil:
    """S (K, SK_PK_SIDE_ROWS) := A^T for the m <= SK_PK_SIDE_ROWS rows of A (m, K), 0 past m:
    the left operand of pk_gemv_side's side product."""
    if floating is float:
        sk_pk_pack_side_f(m, K, A, lda, S)
    else:
        sk_pk_pack_side_d(m, K, A, lda, S)


cdef inline void pk_gemv_side(int K, const floating* a, const floating* P, int N,
                              floating* c, bint accumulate, bint reverse, bint pair,
                              int K2, const floating* S, const floating* P2, int N2,
                              floating* C2, Py_ssize_t ldc2, int m2, long long s0,
                              long long s1) noexcept nogil:
    """c (N,) (+)= a (K,) @ W (P packed; panels last to first if ``reverse``; summed
    as pk_gemm at M = 1 if ``pair``, else in one chain per element) and, interleaved,
    the k-steps [s0, s1) of the side product C2[:m2, v VL:(v+1) VL] := A2 @ W2[:,
    v VL:(v+1) VL], step v K2 + k adding A2[:, k] W2[k, ...] (VL = SK_PK_VBYTES bytes of
    elements; whole vector columns v0 <= v < v1: s0 = v0 K2, s1 = v1 K2; A2 packed
    in S by pk_pack_side, W2 (K2, N2) packed in P2, C2 row stride ldc2). See
    _packed_gemm_impl.h."""
    if floating is float:
        sk_pk_gemv_side_f(K, a, P, N, c, accumulate, reverse, pair, K2, S, P2, N2,
                          C2, ldc2, m2, s0, s1)
    else:
        sk_pk_gemv_side_d(K, a, P, N, c, accumulate, reverse, pair, K2, S, P2, N2,
                          C2, ldc2, m2, s0, s1)
