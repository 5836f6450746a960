"""Python hooks onto the packed-weight GEMM the recurrent kernels use, for tests
and for measuring it against BLAS.

Not public API. ``pack(W, transposed)`` packs W (N, K) as the operand of
``A @ W.T`` (transposed=True) or W (K, N) as the operand of ``A @ W``;
``gemm(A, P, C, n0, n1, accumulate)`` computes ``C[:, n0:n1] (+)= A @ op(W)[:, n0:n1]``
in place, exactly as the kernels do; ``gemv_side`` runs the one-row product with
an interleaved side product (the batch-1 LSTM step with the projection of later
steps).
"""

import numpy as np
from cython cimport floating

include "_build_info.pxi"
from seqkern._packed_gemm cimport (SK_PK_SIDE_ROWS, SK_PK_VBYTES, pk_gemm, pk_gemv_side, pk_pack_nn,
                                   pk_pack_nt, pk_pack_side, pk_size)


def _check(name, x, ndim, dtype=None):
    if not isinstance(x, np.ndarray) or x.ndim != ndim or x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be a {ndim}-d float32 or float64 array")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


cdef void _pack(const floating[:, ::1] W, floating[::1] P, bint transposed) noexcept nogil:
    if transposed:
        pk_pack_nt(<int>W.shape[0], <int>W.shape[1], &W[0, 0], W.shape[1], &P[0])
    else:
        pk_pack_nn(<int>W.shape[0], <int>W.shape[1], &W[0, 0], W.shape[1], &P[0])


def _pack_any(W, P, bint transposed):
    cdef const float[:, ::1] Ws
    cdef float[::1] Ps
    cdef const double[:, ::1] Wd
    cdef double[::1] Pd
    if W.dtype == np.float32:
        Ws, Ps = W, P
        with nogil:
            _pack(Ws, Ps, transposed)
    else:
        Wd, Pd = W, P
        with nogil:
            _pack(Wd, Pd, transposed)


def packed_size(int N, int K, dtype):
    """Elements of the packed form of a (K, N) operand of dtype float32 or float64."""
    cdef float* f = NULL
    cdef double* d = NULL
    return pk_size(f, N, K) if np.dtype(dtype) == np.float32 else pk_size(d, N, K)


def pack(W, bint transposed):
    """Packed 1-d copy of W: W (N, K) for A @ W.T if transposed, else W (K, N) for A @ W."""
    _check("W", W, 2)
    N, K = (W.shape[0], W.shape[1]) if transposed else (W.shape[1], W.shape[0])
    P = np.empty(max(packed_size(N, K, W.dtype), 1), W.dtype)
    if W.size:
        _pack_any(W, P, transposed)
    return P


cdef void _gemm(const floating[:, ::1] A, int K, const floating[::1] P, floating[:, ::1] C,
                int n0, int n1, bint accumulate, int repeat) noexcept nogil:
    cdef int r
    for r in range(repeat):
        pk_gemm(<int>A.shape[0], K, &A[0, 0], A.shape[1], &P[0],
                &C[0, 0], C.shape[1], n0, n1, accumulate)


def gemm(A, P, C, n0=0, n1=None, bint accumulate=True, int repeat=1):
    """C[:, n0:n1] (+)= A @ W[:, n0:n1] in place; A (M, K), C (M, N), P from pack();
    ``repeat`` runs it that many times (for timing without call overhead)."""
    _check("A", A, 2)
    _check("C", C, 2, A.dtype)
    _check("P", P, 1, A.dtype)
    M, K = A.shape
    N = C.shape[1]
    if C.shape[0] != M:
        raise ValueError("A and C must have the same number of rows")
    if P.shape[0] < packed_size(N, K, A.dtype):
        raise ValueError("P is too small for A and C: pack W of shape (N, K) or (K, N)")
    a = n0
    b = N if n1 is None else n1
    if not 0 <= a <= b <= N:
        raise ValueError(f"need 0 <= n0 <= n1 <= N = {N}")
    if M == 0 or a == b:
        return C
    if K == 0:
        A = np.zeros((M, 1), A.dtype)       # a valid pointer; nothing is read
    cdef const float[:, ::1] As
    cdef const float[::1] Ps
    cdef float[:, ::1] Cs
    cdef const double[:, ::1] Ad
    cdef const double[::1] Pd
    cdef double[:, ::1] Cd
    cdef int k = K, n0_ = a, n1_ = b, reps = repeat
    if A.dtype == np.float32:
        As, Ps, Cs = A, P, C
        with nogil:
            _gemm(As, k, Ps, Cs, n0_, n1_, accumulate, reps)
    else:
        Ad, Pd, Cd = A, P, C
        with nogil:
            _gemm(Ad, k, Pd, Cd, n0_, n1_, accumulate, reps)
    return C


SIDE_ROWS = SK_PK_SIDE_ROWS
#: Bytes of one vector of this module's ISA; a packed panel is 4 vectors wide.
VBYTES = SK_PK_VBYTES


cdef void _gemv_side(const floating[::1] a, const floating[::1] P, floating[::1] c,
                     bint accumulate, bint reverse, bint pair,
                     const floating[:, ::1] A2, const floating[::1] P2, floating[:, ::1] C2,
                     floating[::1] S, int K2, long long s0, long long s1,
                     int repeat) noexcept nogil:
    cdef int r
    cdef int m2 = <int>A2.shape[0]
    pk_pack_side(m2, K2, &A2[0, 0], A2.shape[1], &S[0])
    for r in range(repeat):
        pk_gemv_side(<int>a.shape[0], &a[0], &P[0], <int>c.shape[0], &c[0], accumulate,
                     reverse, pair, K2, &S[0], &P2[0], <int>C2.shape[1], &C2[0, 0],
                     C2.shape[1], m2, s0, s1)


def gemv_side(a, P, c, A2, P2, C2, int v0, int v1, bint accumulate=True,
              bint reverse=False, int repeat=1, int k0=0, int k1=0,
              bint pair=False):
    """c (N,) (+)= a (K,) @ W and, interleaved, C2[:, v VL:(v+1) VL] := A2 @ W2[:, v VL:(v+1) VL]
    for v0 <= v < v1 (VL: elements per VBYTES bytes; columns past N2 untouched); or
    part of it: the k-steps from k0 in column v0 to k1 in column v1 (0 <= k0, k1 <
    K2; a column cut keeps its partial sums in C2 for the next call); P, P2
    from pack() of W (K, N) and W2 (K2, N2); A2 (m2 <= SIDE_ROWS, K2), C2 (m2, N2),
    K, N >= 1 (K2 = 0: those columns are 0). ``pair``: the row product summed as
    gemm() sums a single row (else one chain). ``repeat`` runs it that many times
    (for timing)."""
    _check("A2", A2, 2)
    dt = A2.dtype
    _check("C2", C2, 2, dt)
    _check("P", P, 1, dt)
    _check("P2", P2, 1, dt)
    if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype != dt or not a.flags.c_contiguous:
        raise TypeError("a must be a contiguous 1-d array of A2's dtype")
    if not isinstance(c, np.ndarray) or c.ndim != 1 or c.dtype != dt or not c.flags.c_contiguous:
        raise TypeError("c must be a contiguous 1-d array of A2's dtype")
    m2, K2 = A2.shape
    N2 = C2.shape[1]
    vl = VBYTES // dt.itemsize
    if not 1 <= m2 <= SIDE_ROWS or C2.shape[0] != m2 or a.shape[0] < 1 or c.shape[0] < 1:
        raise ValueError(f"need 1 <= A2.shape[0] = C2.shape[0] <= {SIDE_ROWS}, K, N >= 1")
    if P.shape[0] < packed_size(c.shape[0], a.shape[0], dt) or P2.shape[0] < packed_size(N2, K2, dt):
        raise ValueError("P or P2 is too small")
    if not 0 <= v0 <= v1 <= (N2 + vl - 1) // vl:
        raise ValueError("need 0 <= v0 <= v1 <= the vector columns of C2")
    if not (0 <= k0 < max(K2, 1) and 0 <= k1 < max(K2, 1)) or (v0, k0) > (v1, k1):
        raise ValueError("need 0 <= k0, k1 < K2 and (v0, k0) <= (v1, k1)")
    if v1 == (N2 + vl - 1) // vl and k1 > 0:
        raise ValueError("k1 > 0 needs v1 < the vector columns of C2")
    if K2 == 0:
        A2 = np.zeros((m2, 1), dt)          # a valid pointer; nothing is read
    S = np.empty(max(K2, 1) * SIDE_ROWS, dt)
    cdef int k2 = K2, reps = repeat
    cdef long long s0 = v0 * max(K2, 1) + k0, s1 = v1 * max(K2, 1) + k1
    cdef const float[::1] af, Pf, P2f
    cdef float[::1] cf, Sf
    cdef const float[:, ::1] A2f
    cdef float[:, ::1] C2f
    cdef const double[::1] ad, Pd, P2d
    cdef double[::1] cd, Sd
    cdef const double[:, ::1] A2d
    cdef double[:, ::1] C2d
    if dt == np.float32:
        af, Pf, cf, A2f, P2f, C2f, Sf = a, P, c, A2, P2, C2, S
        with nogil:
            _gemv_side(af, Pf, cf, accumulate, reverse, pair, A2f, P2f, C2f, Sf, k2,
                       s0, s1, reps)
    else:
        ad, Pd, cd, A2d, P2d, C2d, Sd = a, P, c, A2, P2, C2, S
        with nogil:
            _gemv_side(ad, Pd, cd, accumulate, reverse, pair, A2d, P2d, C2d, Sd, k2,
                       s0, s1, reps)
    return c, C2
