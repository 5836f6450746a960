# Batched multi-head attention kernels, flash style: forward and backward.
#
# Axis legend: B = batch, Hq = query heads, Hkv = key/value heads (Hq = G * Hkv,
# grouped-query attention), Tq = queries, Tk = keys, D = query/key width,
# Dv = value width. Every array is C-contiguous; the Python wrapper
# (attention.py) checks and prepares arguments (zero-padding D and Dv to whole
# vectors) and allocates outputs.
#
#   q (B, Hq, Tq, D)   k (B, Hkv, Tk, D)   v (B, Hkv, Tk, Dv)   out (B, Hq, Tq, Dv)
#   query head h reads key/value head h // G.
#
# Forward, for one query row i (s = scale):
#   S_ij = s q_i . k_j  (+ float mask; -inf where masked, by selection)
#   m_i = max_j S_ij,  l_i = sum_j exp(S_ij - m_i),  P_ij = exp(S_ij - m_i) / l_i,
#   out_i = sum_j P_ij v_j
# computed over tiles of BQ queries x BK keys with an online softmax: a running
# row max m and sum l, the partial output rescaled by exp(m_old - m_new) when the
# max grows. The (Tq, Tk) matrix is never stored: only one BQ x BK tile per thread.
# Keys past key_lengths[b], and for causal attention past i + (Tk - Tq), are not
# visited at all; only the tile on the causal diagonal is masked element-wise.
# Each row keeps m_i and 1 / l_i for the backward (not m_i + log l_i: with a
# padding mask of finfo.min, |m_i| is so large that log l_i rounds away). A row
# with no key to attend to gets out = 0 and m = 1 / l = 0 (so that its P is 0).
#
# Backward (FlashAttention-2's equations), with Di = sum_c dout_ic out_ic:
#   dv_j += sum_i P_ij dout_i      dP_ij = dout_i . v_j      dS_ij = P_ij (dP_ij - Di)
#   dq_i += s sum_j dS_ij k_j      dk_j += s sum_i dS_ij q_i
# One pass, recomputing S and P = exp(S - m) / l tile by tile, transposed (keys x
# queries) as the forward holds them. Each row's S is computed with the
# forward's arithmetic for that row (its tile product, see _scores_t, or
# sk_row_dots for the rows the forward ran on its row path), so P is exactly the
# forward's however large the scores (where one ulp of S is >> 1, any other
# rounding of S would make exp(S - m) 0 or huge). Its tasks are the
# (b, key/value head) pairs: a task owns dk, dv of its kv head and dq of the G
# query heads that read it, so no two tasks write the same element. When
# B * Hkv is small, each pair's keys are cut into n_kb blocks (n_kb from the
# problem size only), each with its own copy of dq, summed in order afterwards.
#
# Masked keys: a key masked for a row never contributes to it, not even a NaN or
# Inf, in the forward or the backward. Masked scores are -inf by selection, so
# P_ij is exactly 0, but the products over whole tiles still add 0 * v_j, 0 * k_j,
# 0 * dout_i, ... which is NaN for a NaN or Inf. So each task checks its results
# (the forward its out rows; the backward its dq and the rows' q, dout, Di and
# statistics, see _backward_task), and where they hold a NaN or Inf it computes
# them again over the visible pairs (i, j) only (_forward_visible,
# _backward_visible): slow, but only with such values in the inputs.
#
# Threads: tasks are fixed by the problem size (and the tile sizes, which the
# wrapper picks from the problem size alone); threads only choose which task
# they run, and each task's arithmetic is sequential. So the results are
# bitwise identical for every thread count.
#
# Products: every product here is of two tiles already in cache (at most
# 256 x 256 by D or Dv). They run either on sk_gemm (_attention.h), a
# register-blocked micro-kernel that reads the tiles in place (no packing), with
# either operand layout of A, its vectors one register of the ISA the module is
# compiled for (SK_VBYTES) and its register tile sized for that ISA's registers
# (8 rows x 2 vectors of accumulators with 32 registers, 6 x 2 with 16); or on
# BLAS (_blas.gemm: SciPy's OpenBLAS picks its kernels for the CPU it runs on;
# the wrapper holds it at one thread). Problem.blas chooses, per call; the
# wrapper's default is the level's SK_AT_BLAS_PRODUCTS, chosen by measurement
# (see _attention.h): sk_gemm where the ISA has fused multiply-adds on 32- or
# 64-byte vectors (AVX2, AVX-512), BLAS elsewhere (SSE2). Only the scores'
# product must be the same function in the forward and the backward: sk_gemm
# sums each element in an order fixed by D alone; on BLAS the backward repeats
# the forward's calls (_scores_t). One-row products (the row path) go to
# sk_row_gemv instead of sk_gemm (more independent sums).

from cython cimport floating

include "_build_info.pxi"
from cython.parallel cimport prange, parallel
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from seqkern._blas cimport gemm

import numpy as np


cdef extern from "_attention.h" nogil:
    int SK_AT_BLAS_PRODUCTS
    float sk_expf(float x)
    double sk_exp_flush(double x)
    void sk_gemm_f(int m, int n, int k, float alpha, const float* A, Py_ssize_t ars,
                   Py_ssize_t acs, const float* B, int ldb, int beta, float* C,
                   int ldc) noexcept nogil
    void sk_gemm_d(int m, int n, int k, double alpha, const double* A, Py_ssize_t ars,
                   Py_ssize_t acs, const double* B, int ldb, int beta, double* C,
                   int ldc) noexcept nogil
    void sk_softmax_cols_f(float* st, int ld, int nk, int nq, float* m, float* l,
                           float* alpha, float* shift) noexcept nogil
    void sk_softmax_cols_d(double* st, int ld, int nk, int nq, double* m, double* l,
                           double* alpha, double* shift) noexcept nogil
    void sk_row_gemv_f(int n, int k, float alpha, const float* x, Py_ssize_t incx,
                       const float* B, int ldb, float* y) noexcept nogil
    void sk_row_gemv_d(int n, int k, double alpha, const double* x, Py_ssize_t incx,
                       const double* B, int ldb, double* y) noexcept nogil
    void sk_cols_prob_f(float* pt, int ld, int nk, int nq, const float* m,
                        const float* inv_l) noexcept nogil
    void sk_cols_prob_d(double* pt, int ld, int nk, int nq, const double* m,
                        const double* inv_l) noexcept nogil
    void sk_cols_dsoftmax_f(const float* pt, float* dst, int ld, int nk, int nq,
                            const float* d) noexcept nogil
    void sk_cols_dsoftmax_d(const double* pt, double* dst, int ld, int nk, int nq,
                            const double* d) noexcept nogil
    float sk_softmax_row_f(float* s, int nk, float* m, float* l) noexcept nogil
    double sk_softmax_row_d(double* s, int nk, double* m, double* l) noexcept nogil
    void sk_row_prob_f(float* row, int n, float m, float inv_l) noexcept nogil
    void sk_row_prob_d(double* row, int n, double m, double inv_l) noexcept nogil
    void sk_row_axpy_f(int n, float a, const float* x, float* y) noexcept nogil
    void sk_row_axpy_d(int n, double a, const double* x, double* y) noexcept nogil
    int sk_all_finite_f(const float* x, Py_ssize_t n) noexcept nogil
    int sk_all_finite_d(const double* x, Py_ssize_t n) noexcept nogil
    float sk_dot_seq_f(const float* a, const float* b, int n) noexcept nogil
    double sk_dot_seq_d(const double* a, const double* b, int n) noexcept nogil
    void sk_row_dsoftmax_f(const float* p, float* ds, int n, float d) noexcept nogil
    void sk_row_dsoftmax_d(const double* p, double* ds, int n, double d) noexcept nogil
    void sk_row_scale_f(float* row, int n, float a) noexcept nogil
    void sk_row_scale_d(double* row, int n, double a) noexcept nogil
    float sk_key_dot_f(const float* k, const float* q, int D) noexcept nogil
    double sk_key_dot_d(const double* k, const double* q, int D) noexcept nogil
    void sk_row_dots_f(int nk, int D, float alpha, const float* K, const float* q,
                       float* s) noexcept nogil
    void sk_row_dots_d(int nk, int D, double alpha, const double* K, const double* q,
                       double* s) noexcept nogil


cdef inline void _tile_gemm(int m, int n, int k, floating alpha, const floating* A,
                            Py_ssize_t ars, Py_ssize_t acs, const floating* B, int ldb,
                            bint beta, floating* C, int ldc) noexcept nogil:
    """C[:m, :n] := alpha * A @ B (+ C if beta), A's element (r, d) at A[r*ars + d*acs];
    n a multiple of one vector (_nr() / 2, 64 bytes, is one at every level; see
    sk_gemm in _attention.h)."""
    if floating is float:
        sk_gemm_f(m, n, k, alpha, A, ars, acs, B, ldb, beta, C, ldc)
    else:
        sk_gemm_d(m, n, k, alpha, A, ars, acs, B, ldb, beta, C, ldc)


cdef inline void _softmax_cols(floating* st, int ld, int nk, int nq, floating* m,
                               floating* l, floating* alpha, floating* shift) noexcept nogil:
    if floating is float:
        sk_softmax_cols_f(st, ld, nk, nq, m, l, alpha, shift)
    else:
        sk_softmax_cols_d(st, ld, nk, nq, m, l, alpha, shift)


cdef inline floating _softmax_row(floating* s, int nk, floating* m, floating* l) noexcept nogil:
    """_softmax_cols for one query with contiguous scores s (nk,); returns alpha."""
    if floating is float:
        return sk_softmax_row_f(s, nk, m, l)
    else:
        return sk_softmax_row_d(s, nk, m, l)


cdef inline void _cols_prob(floating* pt, int ld, int nk, int nq, const floating* m,
                            const floating* inv_l) noexcept nogil:
    """pt[j, i] := exp(pt[j, i] - m[i]) * inv_l[i]: _row_prob on a transposed tile."""
    if floating is float:
        sk_cols_prob_f(pt, ld, nk, nq, m, inv_l)
    else:
        sk_cols_prob_d(pt, ld, nk, nq, m, inv_l)


cdef inline void _cols_dsoftmax(const floating* pt, floating* dst, int ld, int nk, int nq,
                                const floating* d) noexcept nogil:
    """dst[j, i] := pt[j, i] * (dst[j, i] - d[i]): _row_dsoftmax on a transposed tile."""
    if floating is float:
        sk_cols_dsoftmax_f(pt, dst, ld, nk, nq, d)
    else:
        sk_cols_dsoftmax_d(pt, dst, ld, nk, nq, d)


cdef inline int _nr(floating x) noexcept nogil:
    """The column multiple the tiles are padded to: 128 bytes, a multiple of
    _tile_gemm's vectors at every level (16 to 64 bytes; it needs one)."""
    return <int>(128 // sizeof(floating))


cdef inline int _round_up(int n, int step) noexcept nogil:
    return (n + step - 1) // step * step


cdef inline void _row_prob(floating* row, int n, floating m, floating inv_l) noexcept nogil:
    """row := exp(row - m) * inv_l"""
    if floating is float:
        sk_row_prob_f(row, n, m, inv_l)
    else:
        sk_row_prob_d(row, n, m, inv_l)


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return sk_expf(x)
    else:
        return sk_exp_flush(x)


cdef inline void _row_axpy(int n, floating a, const floating* x, floating* y) noexcept nogil:
    """y += a * x"""
    if floating is float:
        sk_row_axpy_f(n, a, x, y)
    else:
        sk_row_axpy_d(n, a, x, y)


cdef inline bint _all_finite(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return sk_all_finite_f(x, n)
    else:
        return sk_all_finite_d(x, n)


cdef inline floating _dot_seq(const floating* a, const floating* b, int n) noexcept nogil:
    """a . b summed in order (one element of sk_gemm)"""
    if floating is float:
        return sk_dot_seq_f(a, b, n)
    else:
        return sk_dot_seq_d(a, b, n)


cdef inline void _row_dsoftmax(const floating* p, floating* ds, int n, floating d) noexcept nogil:
    if floating is float:
        sk_row_dsoftmax_f(p, ds, n, d)
    else:
        sk_row_dsoftmax_d(p, ds, n, d)


cdef inline void _row_scale(floating* row, int n, floating a) noexcept nogil:
    if floating is float:
        sk_row_scale_f(row, n, a)
    else:
        sk_row_scale_d(row, n, a)


cdef inline floating _key_dot(const floating* a, const floating* b, int n) noexcept nogil:
    """a . b, vectorised (sk_row_dots' sum for one key)"""
    if floating is float:
        return sk_key_dot_f(a, b, n)
    else:
        return sk_key_dot_d(a, b, n)


cdef inline void _row_dots(int nk, int D, floating alpha, const floating* K,
                           const floating* q, floating* s) noexcept nogil:
    """s[j] := alpha * (K[j] . q) for j < nk; K (nk, D) row-major."""
    if floating is float:
        sk_row_dots_f(nk, D, alpha, K, q, s)
    else:
        sk_row_dots_d(nk, D, alpha, K, q, s)


# ---------------------------------------------------------------------------
# The problem and its mask
# ---------------------------------------------------------------------------

cdef struct Problem:
    int B, Hq, Hkv, Tq, Tk, D, Dv
    int bq, bk                   # tile sizes (tile_sizes: from the problem size only)
    bint causal
    const int64_t* lengths       # (B,) or NULL
    # mask: boolean (mask_b, 1 = may attend) or float (mask_f, added to S) or
    # neither; element [b, h, i, j] is at b*ms[0] + h*ms[1] + i*ms[2] + j*ms[3]
    # (strides in elements, 0 along broadcast axes)
    const unsigned char* mask_b
    const void* mask_f
    Py_ssize_t ms[4]
    # rows [row_from, Tq) are the forward's row path (_row_path_from): their scores
    # are sk_row_dots', the others the tile product's, in the forward and backward
    int row_from
    # the tile products on BLAS (_product, _scores_t), else on _tile_gemm
    bint blas


cdef inline void _product(const Problem* P, int m, int n, int k, floating alpha,
                          const floating* A, Py_ssize_t ars, Py_ssize_t acs,
                          const floating* B, int ldb, bint beta, floating* C,
                          int ldc) noexcept nogil:
    """C[:m, :n] := alpha * A @ B (+ C if beta), A's element (r, d) at
    A[r*ars + d*acs]: by _tile_gemm (n a multiple of one vector), or by BLAS where
    P.blas (A row-major, acs == 1, or transposed, ars == 1)."""
    if not P.blas:
        if m == 1 and beta:                 # a row: more chains of multiply-adds
            if floating is float:
                sk_row_gemv_f(n, k, alpha, A, acs, B, ldb, C)
            else:
                sk_row_gemv_d(n, k, alpha, A, acs, B, ldb, C)
        else:
            _tile_gemm(m, n, k, alpha, A, ars, acs, B, ldb, beta, C, ldc)
    elif acs == 1:
        gemm(False, False, m, n, k, alpha, A, <int>ars, B, ldb, <floating>(1 if beta else 0),
             C, ldc)
    else:
        gemm(True, False, m, n, k, alpha, A, <int>acs, B, ldb, <floating>(1 if beta else 0),
             C, ldc)


cdef inline void _scores_t(const Problem* P, floating scale, int nk, int nq,
                           const floating* kt, const floating* qt, const floating* QT,
                           int ldqt, floating* ST, int ld) noexcept nogil:
    """ST[:nk, :nq] := scale * k_tile @ q_tile^T, the scores of a tile of nq query
    rows qt (nq, D) against nk keys kt (nk, D), transposed: on _tile_gemm from
    QT = q_tile^T (D, ldqt), zero past nq (it fills ST up to whole vectors of
    queries), or where P.blas one BLAS call on qt itself.

    The backward must get the forward's scores bitwise. _tile_gemm sums each
    element in an order fixed by D alone, whatever the tile; a BLAS call may not,
    so the backward makes exactly the forward's calls (the same tiles, operands
    and arguments: its tiles are the forward's where P.blas)."""
    if P.blas:
        gemm(False, True, nk, nq, P.D, scale, kt, P.D, qt, P.D, <floating>0, ST, ld)
    else:
        _tile_gemm(nk, _round_up(nq, _nr(scale) // 2), P.D, scale, kt, P.D, 1, QT, ldqt,
                   False, ST, ld)


cdef inline int _key_end(const Problem* P, int b, int i1) noexcept nogil:
    """Keys [0, end) can be visited by query rows [., i1) of batch b."""
    cdef int64_t end = P.Tk
    if P.lengths != NULL and P.lengths[b] < end:
        end = P.lengths[b]
    if P.causal and <int64_t>i1 + P.Tk - P.Tq < end:
        end = <int64_t>i1 + P.Tk - P.Tq
    return <int>(end if end > 0 else 0)


cdef inline bint _visible(const Problem* P, floating scale, int b, int h, int i,
                          int j) noexcept nogil:
    """Whether query i of head h (batch b) sees key j: not causally hidden, before
    key_lengths[b], and not False in a boolean mask nor -inf in a float mask
    (scale: for its type only, the float mask's)."""
    cdef Py_ssize_t o
    if P.causal and j > i + P.Tk - P.Tq:
        return False
    if P.lengths != NULL and j >= P.lengths[b]:
        return False
    o = (<Py_ssize_t>b * P.ms[0] + <Py_ssize_t>h * P.ms[1] + <Py_ssize_t>i * P.ms[2]
         + <Py_ssize_t>j * P.ms[3])
    if P.mask_b != NULL:
        return P.mask_b[o] != 0
    if P.mask_f != NULL:
        return (<const floating*>P.mask_f)[o] != -INFINITY
    return True


cdef void _mask_tile(const Problem* P, floating* S, Py_ssize_t rs, Py_ssize_t cs, int b,
                     int h, int i0, int nq, int j0, int nk) noexcept nogil:
    """Apply the user mask and the causal limit to a score tile of query rows
    i0 .. i0 + nq and keys j0 .. j0 + nk, the score of (r, jj) at S[r*rs + jj*cs]
    (rows of queries: rs = ld, cs = 1; transposed, keys x queries: rs = 1,
    cs = ld). Masked scores become -inf, by selection: a NaN score at a masked
    key goes too. The loops run along the contiguous axis."""
    cdef bint by_rows = cs == 1
    cdef int n_o = nq if by_rows else nk, n_i = nk if by_rows else nq
    cdef Py_ssize_t so = rs if by_rows else cs, si = cs if by_rows else rs
    cdef Py_ssize_t mo = P.ms[2] if by_rows else P.ms[3]
    cdef Py_ssize_t mi = P.ms[3] if by_rows else P.ms[2]
    cdef int off = P.Tk - P.Tq
    cdef int o, x, x0, x1
    cdef floating* line
    cdef const unsigned char* mb
    cdef const floating* mf
    cdef Py_ssize_t base
    if P.mask_b != NULL or P.mask_f != NULL:
        base = (<Py_ssize_t>b * P.ms[0] + <Py_ssize_t>h * P.ms[1]
                + <Py_ssize_t>i0 * P.ms[2] + <Py_ssize_t>j0 * P.ms[3])
        for o in range(n_o):
            line = S + <Py_ssize_t>o * so
            if P.mask_b != NULL:
                mb = P.mask_b + base + <Py_ssize_t>o * mo
                for x in range(n_i):
                    if not mb[<Py_ssize_t>x * mi]:
                        line[<Py_ssize_t>x * si] = -INFINITY
            else:
                mf = (<const floating*>P.mask_f) + base + <Py_ssize_t>o * mo
                for x in range(n_i):
                    if mf[<Py_ssize_t>x * mi] == -INFINITY:
                        line[<Py_ssize_t>x * si] = -INFINITY
                    else:
                        line[<Py_ssize_t>x * si] += mf[<Py_ssize_t>x * mi]
    if P.causal and j0 + nk - 1 > i0 + off:
        # key j0 + jj is hidden from query i0 + r where jj > i0 + r + off - j0
        for o in range(n_o):
            line = S + <Py_ssize_t>o * so
            if by_rows:                         # o = r: keys x0.. hidden
                x0 = max(0, i0 + o + off + 1 - j0)
                x1 = n_i
            else:                               # o = jj: queries ..x1 hidden
                x0 = 0
                x1 = min(n_i, j0 + o - off - i0)
            for x in range(x0, x1):
                line[<Py_ssize_t>x * si] = -INFINITY


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------

cdef void _transpose_pad(const floating* x, int n, int w, floating* xt, int ldt,
                         int n_pad) noexcept nogil:
    """xt[c, r] = x[r, c] for x (n, w) row-major; xt (w, ldt) with columns
    [n, n_pad) zeroed."""
    cdef int r, c
    for c in range(w):
        for r in range(n):
            xt[<Py_ssize_t>c * ldt + r] = x[<Py_ssize_t>r * w + c]
        for r in range(n, n_pad):
            xt[<Py_ssize_t>c * ldt + r] = 0


# Query tiles of at most ROW_QUERIES rows (decoding: Tq = 1) run row by row
# (_forward_row): the tile path pads the queries to _nr() columns of its score
# product, so a single query did 32 times the multiply-adds it needs in float32.
cdef enum:
    ROW_QUERIES = 6

# The backward cuts a (b, kv head)'s keys into blocks to have at least about
# MIN_BACKWARD_TASKS tasks (key_blocks), and sums dq's parts SUM_BLOCK elements a task.
cdef enum:
    MIN_BACKWARD_TASKS = 8
    MAX_KEY_BLOCKS = 4
    SUM_BLOCK = 16384


cdef int _row_path_from(int Tq, int bq) noexcept nogil:
    """The first query row that the forward, with query tiles of bq rows, runs on
    the row path (Tq if none): every row when bq <= ROW_QUERIES, else the rows of
    the last tile when it has at most ROW_QUERIES."""
    cdef int last
    if bq <= ROW_QUERIES:
        return 0
    last = (Tq - 1) // bq * bq
    return last if Tq - last <= ROW_QUERIES else Tq


cdef inline void _finish_row(int Dv, floating* orow, floating m, floating l,
                             floating* mrow, floating* lrow) noexcept nogil:
    """out_i /= l; the row's statistics for the backward: mrow = m (0 for -inf, the
    shift its exps used: every visible score NaN), lrow = 1 / l, and for a row with
    no key to attend to (l = 0) out_i = 0 and mrow = lrow = 0, so that its P is 0."""
    if l == 0:
        memset(orow, 0, Dv * sizeof(floating))
        mrow[0] = 0
        lrow[0] = 0
    else:
        lrow[0] = 1 / l
        _row_scale(orow, Dv, lrow[0])
        mrow[0] = m if m != -INFINITY else 0


cdef void _forward_row(const Problem* P, floating scale, int b, int h, int i, int kend,
                       const floating* qrow, const floating* kp, const floating* vp,
                       floating* orow, floating* mrow, floating* lrow,
                       floating* s) noexcept nogil:
    """out and statistics (_finish_row) of query row i of head h (batch b) over keys
    [0, kend) (its query tile's, masked as the tile path masks them): qrow (D,), kp
    (Tk, D) and vp (Tk, Dv) its head's keys and values, orow (Dv,), mrow and lrow
    (1,); s: bk scratch. The scores of a key tile are one dot product per key,
    s[j] = scale q_i . k_j (sk_row_dots: summed in another order than the tile
    product's; the backward recomputes them the same way); the mask, the online
    softmax and the output product are _forward_task's, with the same arithmetic in
    the same order."""
    cdef int bk = P.bk, D = P.D, Dv = P.Dv
    cdef int j0 = 0, nk
    cdef floating m = -INFINITY, l = 0, alpha
    memset(orow, 0, Dv * sizeof(floating))
    while j0 < kend:
        nk = min(bk, kend - j0)
        _row_dots(nk, D, scale, kp + <Py_ssize_t>j0 * D, qrow, s)    # (nk,)
        _mask_tile(P, s, nk, 1, b, h, i, 1, j0, nk)
        alpha = _softmax_row(s, nk, &m, &l)     # s := exp(s - m_new); m, l updated
        if alpha != 1:
            _row_scale(orow, Dv, alpha)
        # out_i += s @ v_tile                                      (Dv,)
        _product(P, 1, Dv, nk, <floating>1, s, 1, 1, vp + <Py_ssize_t>j0 * Dv, Dv, True,
                 orow, Dv)
        j0 += bk
    _finish_row(Dv, orow, m, l, mrow, lrow)


cdef void _forward_visible(const Problem* P, floating scale, int b, int h, int i0, int nq,
                           int kend, const floating* qp, const floating* kp,
                           const floating* vp, floating* op, const floating* mp,
                           const floating* lp, floating* ST, const floating* QT,
                           int bqp) noexcept nogil:
    """out of rows [i0, i0 + nq) again, as sums over the keys each row sees only:
    out_i = sum_j P_ij v_j, P_ij = exp(S_ij - m_i) / l_i, with the statistics mp, lp
    of the pass before and its scores recomputed the same way (the row path's or
    _scores_t, with QT = q_tile^T (D, bqp) as that pass left it). For a task
    whose output came out with NaN or Inf: where v holds NaN or Inf, the products
    over whole tiles add 0 * v_j = NaN at keys masked for a row. ST: scratch as in
    _forward_task."""
    cdef int bk = P.bk, D = P.D, Dv = P.Dv
    cdef int j0, nk, r, jj
    cdef bint row_path = i0 >= P.row_from
    cdef floating p
    memset(op, 0, <Py_ssize_t>nq * Dv * sizeof(floating))
    j0 = 0
    while j0 < kend:
        nk = min(bk, kend - j0)
        if row_path:
            for r in range(nq):
                _row_dots(nk, D, scale, kp + <Py_ssize_t>j0 * D, qp + <Py_ssize_t>r * D, ST)
                _mask_tile(P, ST, nk, 1, b, h, i0 + r, 1, j0, nk)
                if lp[r] == 0:
                    continue
                for jj in range(nk):
                    if _visible(P, scale, b, h, i0 + r, j0 + jj):
                        p = _exp(ST[jj] - mp[r]) * lp[r]
                        _row_axpy(Dv, p, vp + <Py_ssize_t>(j0 + jj) * Dv,
                                  op + <Py_ssize_t>r * Dv)
        else:
            _scores_t(P, scale, nk, nq, kp + <Py_ssize_t>j0 * D, qp, QT, bqp, ST, bqp)
            _mask_tile(P, ST, 1, bqp, b, h, i0, nq, j0, nk)
            for jj in range(nk):
                for r in range(nq):
                    if lp[r] != 0 and _visible(P, scale, b, h, i0 + r, j0 + jj):
                        p = _exp(ST[<Py_ssize_t>jj * bqp + r] - mp[r]) * lp[r]
                        _row_axpy(Dv, p, vp + <Py_ssize_t>(j0 + jj) * Dv,
                                  op + <Py_ssize_t>r * Dv)
        j0 += bk


cdef void _forward_task(const Problem* P, floating scale, Py_ssize_t task,
                        const floating* q, const floating* k, const floating* v,
                        floating* out, floating* mstat, floating* lstat,
                        floating* scratch) noexcept nogil:
    """Task = (b, h, query tile): out and statistics (_finish_row) of rows [i0, i1)
    of head h.

    The scores are held transposed, ST = scale * k_tile @ q_tile^T (keys x
    queries): q_tile^T is built once per task, and the softmax loops then run
    along queries (vectorised, no reductions). The output rows accumulate in
    place in ``out``. If they come out with NaN or Inf, _forward_visible computes
    them again over visible keys only. scratch: _forward_scratch(P)."""
    cdef int bq = P.bq, bk = P.bk, D = P.D, Dv = P.Dv
    cdef int nr = _nr(scale)
    cdef int bqp = _round_up(bq, nr)
    cdef int nqt = (P.Tq + bq - 1) // bq
    cdef Py_ssize_t bh = task // nqt
    cdef int i0 = <int>(task % nqt) * bq
    cdef int i1 = min(i0 + bq, P.Tq)
    cdef int nq = i1 - i0
    cdef int nqp = _round_up(nq, nr // 2)           # whole vectors of queries
    cdef int b = <int>(bh // P.Hq), h = <int>(bh % P.Hq)
    cdef Py_ssize_t bkv = <Py_ssize_t>b * P.Hkv + h // (P.Hq // P.Hkv)
    cdef const floating* qp = q + (bh * P.Tq + i0) * D
    cdef const floating* kp = k + bkv * P.Tk * D
    cdef const floating* vp = v + bkv * P.Tk * Dv
    cdef floating* op = out + (bh * P.Tq + i0) * Dv
    cdef floating* mp = mstat + bh * P.Tq + i0
    cdef floating* lp = lstat + bh * P.Tq + i0
    cdef int kend = _key_end(P, b, i1)
    # scratch: ST (bk, bqp) | QT (D, bqp) | m, l, alpha, shift (bqp each)
    cdef floating* ST = scratch
    cdef floating* QT = ST + <Py_ssize_t>bk * bqp
    cdef floating* m = QT + <Py_ssize_t>D * bqp
    cdef floating* l = m + bqp
    cdef floating* alpha = l + bqp
    cdef floating* shift = alpha + bqp
    cdef int j0, nk, r

    if i0 >= P.row_from:                     # at most ROW_QUERIES rows
        for r in range(nq):
            _forward_row(P, scale, b, h, i0 + r, kend, qp + <Py_ssize_t>r * D, kp, vp,
                         op + <Py_ssize_t>r * Dv, mp + r, lp + r, ST)
    else:
        if not P.blas:
            _transpose_pad(qp, nq, D, QT, bqp, nqp)     # QT = q_tile^T       (D, nqp)
        memset(op, 0, <Py_ssize_t>nq * Dv * sizeof(floating))
        for r in range(nq):
            m[r] = -INFINITY
            l[r] = 0
        j0 = 0
        while j0 < kend:
            nk = min(bk, kend - j0)
            # ST = scale * k_tile @ q_tile^T                         (nk, nq)
            _scores_t(P, scale, nk, nq, kp + <Py_ssize_t>j0 * D, qp, QT, bqp, ST, bqp)
            _mask_tile(P, ST, 1, bqp, b, h, i0, nq, j0, nk)
            # ST := exp(ST - m_new) (unnormalised P^T); m, l updated
            _softmax_cols(ST, bqp, nk, nq, m, l, alpha, shift)
            for r in range(nq):
                if alpha[r] != 1:
                    _row_scale(op + <Py_ssize_t>r * Dv, Dv, alpha[r])
            # out_tile += P @ v_tile, with P[r, j] = ST[j, r]         (nq, Dv)
            _product(P, nq, Dv, nk, <floating>1, ST, 1, bqp, vp + <Py_ssize_t>j0 * Dv, Dv,
                     True, op, Dv)
            j0 += bk
        for r in range(nq):
            _finish_row(Dv, op + <Py_ssize_t>r * Dv, m[r], l[r], mp + r, lp + r)
    if not _all_finite(op, <Py_ssize_t>nq * Dv):
        _forward_visible(P, scale, b, h, i0, nq, kend, qp, kp, vp, op, mp, lp, ST, QT, bqp)


cdef Py_ssize_t _forward_scratch(const Problem* P, int nr) noexcept nogil:
    return (P.bk + P.D + 4) * <Py_ssize_t>_round_up(P.bq, nr)


cdef bint _forward(const Problem* P, floating scale, const floating* q, const floating* k,
                   const floating* v, floating* out, floating* mstat, floating* lstat,
                   int n_threads) noexcept nogil:
    """Every forward task; False if a thread could not allocate its scratch."""
    cdef Py_ssize_t n_tasks = <Py_ssize_t>P.B * P.Hq * ((P.Tq + P.bq - 1) // P.bq)
    cdef Py_ssize_t t
    cdef floating* scratch = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed       # shared: a variable assigned in the region is private
    with parallel(num_threads=n_threads, use_threads_if=n_threads > 1 and n_tasks > 1):
        scratch = <floating*>malloc(_forward_scratch(P, _nr(scale)) * sizeof(floating))
        if scratch == NULL:
            failed_p[0] = 1
        for t in prange(n_tasks, schedule='dynamic'):
            if scratch != NULL:
                _forward_task(P, scale, t, q, k, v, out, mstat, lstat, scratch)
        free(scratch)
    return not failed


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------

cdef void _backward_visible(const Problem* P, floating scale, int b, int h, int i0, int nq,
                            int j0, int nk, const floating* S, Py_ssize_t srs, Py_ssize_t scs,
                            const floating* qt, const floating* dot, const floating* kp,
                            const floating* vp, const floating* Dip, const floating* lp,
                            floating* dqt, floating* dkp, floating* dvp) noexcept nogil:
    """The products of _backward_task for one tile, summed over the pairs (i, j)
    where row i sees key j only, one pair at a time, so that a NaN or Inf of a row
    never reaches a key hidden from it nor the other way round. S: P, the element
    of row r and key j0 + jj at S[r * srs + jj * scs]; qt, dot, dqt: the tile's
    rows of q, dout, dq; Dip, lp: its rows of Di and of the forward's 1 / l; kp,
    vp, dkp, dvp: the head's (Tk, .) keys, values and their gradients."""
    cdef int D = P.D, Dv = P.Dv
    cdef int r, jj, j
    cdef floating p, dp, ds
    for r in range(nq):
        if lp[r] == 0:                       # a row with no key to attend to
            continue
        for jj in range(nk):
            j = j0 + jj
            if not _visible(P, scale, b, h, i0 + r, j):
                continue
            p = S[<Py_ssize_t>r * srs + <Py_ssize_t>jj * scs]
            # dv_j += P_ij dout_i;  dS_ij = P_ij (dout_i . v_j - Di)
            _row_axpy(Dv, p, dot + <Py_ssize_t>r * Dv, dvp + <Py_ssize_t>j * Dv)
            dp = _dot_seq(dot + <Py_ssize_t>r * Dv, vp + <Py_ssize_t>j * Dv, Dv)
            ds = scale * (p * (dp - Dip[r]))
            # dk_j += scale dS_ij q_i;  dq_i += scale dS_ij k_j
            _row_axpy(D, ds, qt + <Py_ssize_t>r * D, dkp + <Py_ssize_t>j * D)
            _row_axpy(D, ds, kp + <Py_ssize_t>j * D, dqt + <Py_ssize_t>r * D)


cdef inline void _exact_single_key_dp(int Dv, int nq, int nk, const floating* S,
                                      Py_ssize_t srs, Py_ssize_t scs, floating* dP,
                                      const floating* dot, const floating* vt,
                                      const floating* lp) noexcept nogil:
    """dP_ij again as _dot_seq(dout_i, v_j), for the rows whose softmax is one key
    (1 / l = 1) and the keys with P_ij != 0 (S: P, dP: its gradient, both with
    element (r, jj) at [r * srs + jj * scs]; vt: the tile's values). For those rows
    Di was summed so (see _backward), so that dP_ij - Di is exactly 0 where out_i
    is v_j; this is needed wherever dP does not come from _tile_gemm, whose every
    element is that sum already."""
    cdef int r, jj
    cdef Py_ssize_t o
    for r in range(nq):
        if lp[r] != 1:
            continue
        for jj in range(nk):
            o = <Py_ssize_t>r * srs + <Py_ssize_t>jj * scs
            if S[o] != 0:
                dP[o] = _dot_seq(dot + <Py_ssize_t>r * Dv, vt + <Py_ssize_t>jj * Dv, Dv)


cdef void _backward_tile(const Problem* P, floating scale, int b, int h, int i0, int nq,
                         int jfirst, int kend, bint visible_only, const floating* qt,
                         const floating* dot, const floating* kp, const floating* vp,
                         const floating* mp, const floating* lp, const floating* Dip,
                         floating* dqt, floating* dkp, floating* dvp,
                         floating* scratch) noexcept nogil:
    """The backward of query rows [i0, i0 + nq) of head h (batch b), rows the
    forward ran as a tile, against keys [jfirst, kend), tile by tile, on transposed
    score tiles (keys x queries) as the forward's: ST = scale * k_tile @ q_tile^T
    (_scores_t), P^T = exp(ST - m) / l, then
        dv_tile += P^T @ dout_rows          dP^T = v_tile @ dout_rows^T
        dS^T = P^T * (dP^T - Di)            dk_tile += scale * dS^T @ q_rows
        dq_rows += scale * dS @ k_tile
    (_backward_visible instead of the products if visible_only). qt, dot, mp, lp,
    Dip, dqt: the rows of q, dout, the statistics, Di and dq; kp, vp, dkp, dvp: the
    head's keys, values and their gradients. scratch: _backward_scratch(P)."""
    cdef int bk = P.bk, D = P.D, Dv = P.Dv
    cdef int bqp = _round_up(P.bq, _nr(scale))
    cdef int nqp = _round_up(nq, _nr(scale) // 2)
    # scratch: ST, dST (bk, bqp) | QT (D, bqp) | dOT (Dv, bqp)
    cdef floating* ST = scratch
    cdef floating* dST = ST + <Py_ssize_t>bk * bqp
    cdef floating* QT = dST + <Py_ssize_t>bk * bqp
    cdef floating* dOT = QT + <Py_ssize_t>D * bqp
    cdef int j0, nk
    cdef const floating* kt
    cdef const floating* vt
    if not P.blas:
        _transpose_pad(qt, nq, D, QT, bqp, nqp)             # (D, nqp)
        if not visible_only:
            _transpose_pad(dot, nq, Dv, dOT, bqp, nqp)      # (Dv, nqp)
    j0 = jfirst
    while j0 < kend:
        nk = min(bk, kend - j0)
        kt = kp + <Py_ssize_t>j0 * D
        vt = vp + <Py_ssize_t>j0 * Dv
        # ST = scale * k_tile @ q_rows^T, as the forward computed it   (nk, nq)
        _scores_t(P, scale, nk, nq, kt, qt, QT, bqp, ST, bqp)
        _mask_tile(P, ST, 1, bqp, b, h, i0, nq, j0, nk)
        _cols_prob(ST, bqp, nk, nq, mp, lp)                 # P^T = exp(ST - m) / l
        if visible_only:
            _backward_visible(P, scale, b, h, i0, nq, j0, nk, ST, 1, bqp, qt, dot, kp, vp,
                              Dip, lp, dqt, dkp, dvp)
            j0 += bk
            continue
        # dv_tile += P^T @ dout_rows                                  (nk, Dv)
        _product(P, nk, Dv, nq, <floating>1, ST, bqp, 1, dot, Dv, True,
                 dvp + <Py_ssize_t>j0 * Dv, Dv)
        # dP^T = v_tile @ dout_rows^T                                 (nk, nq)
        if P.blas:
            gemm(False, True, nk, nq, Dv, <floating>1, vt, Dv, dot, Dv, <floating>0, dST, bqp)
            _exact_single_key_dp(Dv, nq, nk, ST, 1, bqp, dST, dot, vt, lp)
        else:
            _tile_gemm(nk, nqp, Dv, <floating>1, vt, Dv, 1, dOT, bqp, False, dST, bqp)
        _cols_dsoftmax(ST, dST, bqp, nk, nq, Dip)           # dS^T = P^T * (dP^T - Di)
        # dk_tile += scale * dS^T @ q_rows                            (nk, D)
        _product(P, nk, D, nq, scale, dST, bqp, 1, qt, D, True, dkp + <Py_ssize_t>j0 * D, D)
        # dq_rows += scale * dS @ k_tile                              (nq, D)
        _product(P, nq, D, nk, scale, dST, 1, bqp, kt, D, True, dqt, D)
        j0 += bk


cdef void _backward_rows(const Problem* P, floating scale, int b, int h, int i0, int nq,
                         int jfirst, int kend, bint visible_only, const floating* qt,
                         const floating* dot, const floating* kp, const floating* vp,
                         const floating* mp, const floating* lp, const floating* Dip,
                         floating* dqt, floating* dkp, floating* dvp,
                         floating* scratch) noexcept nogil:
    """_backward_tile for rows the forward ran on its row path (_forward_row: at
    most ROW_QUERIES rows, or every row of a problem with query tiles that small),
    on score rows (queries x keys): each row's scores and dP by sk_row_dots, as
    the forward's, then the same products, which here have few rows or a short
    inner dimension. Same arguments."""
    cdef int bk = P.bk, D = P.D, Dv = P.Dv
    cdef int bqp = _round_up(P.bq, _nr(scale))
    # scratch: S, dS (nq, bk), in the space of _backward_tile's ST and dST
    cdef floating* S = scratch
    cdef floating* dS = S + <Py_ssize_t>bk * bqp
    cdef int j0, nk, r
    cdef const floating* kt
    cdef const floating* vt
    j0 = jfirst
    while j0 < kend:
        nk = min(bk, kend - j0)
        kt = kp + <Py_ssize_t>j0 * D
        vt = vp + <Py_ssize_t>j0 * Dv
        # S = scale * q_rows @ k_tile^T, P = exp(S - m) / l              (nq, nk)
        for r in range(nq):
            _row_dots(nk, D, scale, kt, qt + <Py_ssize_t>r * D, S + <Py_ssize_t>r * bk)
        _mask_tile(P, S, bk, 1, b, h, i0, nq, j0, nk)
        for r in range(nq):
            _row_prob(S + <Py_ssize_t>r * bk, nk, mp[r], lp[r])
        if visible_only:
            _backward_visible(P, scale, b, h, i0, nq, j0, nk, S, bk, 1, qt, dot, kp, vp,
                              Dip, lp, dqt, dkp, dvp)
            j0 += bk
            continue
        # dv_tile += P^T @ dout_rows                                  (nk, Dv)
        _product(P, nk, Dv, nq, <floating>1, S, 1, bk, dot, Dv, True,
                 dvp + <Py_ssize_t>j0 * Dv, Dv)
        # dP = dout_rows @ v_tile^T; dS = P * (dP - Di)               (nq, nk)
        for r in range(nq):
            _row_dots(nk, Dv, <floating>1, vt, dot + <Py_ssize_t>r * Dv, dS + <Py_ssize_t>r * bk)
        _exact_single_key_dp(Dv, nq, nk, S, bk, 1, dS, dot, vt, lp)
        for r in range(nq):
            _row_dsoftmax(S + <Py_ssize_t>r * bk, dS + <Py_ssize_t>r * bk, nk, Dip[r])
        # dk_tile += scale * dS^T @ q_rows                            (nk, D)
        _product(P, nk, D, nq, scale, dS, 1, bk, qt, D, True, dkp + <Py_ssize_t>j0 * D, D)
        # dq_rows += scale * dS @ k_tile                              (nq, D)
        _product(P, nq, D, nk, scale, dS, bk, 1, kt, D, True, dqt, D)
        j0 += bk


cdef void _backward_task(const Problem* P, floating scale, Py_ssize_t task, int n_kb,
                         const floating* q, const floating* k, const floating* v,
                         const floating* mstat, const floating* lstat,
                         const floating* dout, const floating* Di,
                         floating* dq, floating* dk, floating* dv,
                         floating* scratch) noexcept nogil:
    """Task = (b, kv head, key block kb of n_kb): dk, dv of that head's keys in
    the block, and the block's share of dq for its G query heads, written to dq
    part kb (dq is (n_kb, B, Hq, Tq, D); _backward sums the parts in order). The
    task zeroes those elements first, then accumulates into them. Query tiles of bq rows in
    order, each against the block's keys it may see (_backward_tile, or
    _backward_rows for the rows on the forward's row path). If the results come
    out with NaN or Inf, they are computed again with _backward_visible. scratch:
    _backward_scratch(P)."""
    cdef int bq = P.bq, bk = P.bk, D = P.D, Dv = P.Dv
    cdef int G = P.Hq // P.Hkv
    cdef Py_ssize_t bkv = task // n_kb
    cdef int kb = <int>(task % n_kb)
    cdef int b = <int>(bkv // P.Hkv)
    cdef Py_ssize_t bh0 = <Py_ssize_t>b * P.Hq + <Py_ssize_t>(bkv % P.Hkv) * G
    cdef const floating* kp = k + bkv * P.Tk * D
    cdef const floating* vp = v + bkv * P.Tk * Dv
    cdef floating* dkp = dk + bkv * P.Tk * D
    cdef floating* dvp = dv + bkv * P.Tk * Dv
    cdef int n_kt = (P.Tk + bk - 1) // bk
    cdef int per_block = (n_kt + n_kb - 1) // n_kb          # key tiles per block
    cdef int jfirst = kb * per_block * bk
    cdef int kend = min(_key_end(P, b, P.Tq), (kb + 1) * per_block * bk)
    cdef int g, h, i0, nq, nt, kend_q, kblock
    cdef Py_ssize_t bh, rowi
    cdef bint visible_only = False, ok

    dq = dq + <Py_ssize_t>kb * P.B * P.Hq * P.Tq * D
    memset(dq + bh0 * P.Tq * D, 0, <Py_ssize_t>G * P.Tq * D * sizeof(floating))
    if jfirst < P.Tk:
        kblock = min(P.Tk, (kb + 1) * per_block * bk) - jfirst
        memset(dkp + <Py_ssize_t>jfirst * D, 0, <Py_ssize_t>kblock * D * sizeof(floating))
        memset(dvp + <Py_ssize_t>jfirst * Dv, 0, <Py_ssize_t>kblock * Dv * sizeof(floating))
    while True:
        for g in range(G):
            bh = bh0 + g
            h = <int>(bh % P.Hq)
            i0 = 0
            while i0 < P.Tq:
                nq = min(bq, P.Tq - i0)
                kend_q = min(kend, _key_end(P, b, i0 + nq))     # keys these rows may see
                if kend_q > jfirst:
                    rowi = bh * P.Tq + i0
                    # rows [i0, i0 + nt) ran as a tile in the forward, the rest on its
                    # row path: each gets its scores the same way here, so that P is
                    # the forward's exactly whatever the scores' size
                    nt = min(max(P.row_from - i0, 0), nq)
                    if nt > 0:
                        _backward_tile(P, scale, b, h, i0, nt, jfirst, kend_q, visible_only,
                                       q + rowi * D, dout + rowi * Dv, kp, vp, mstat + rowi,
                                       lstat + rowi, Di + rowi, dq + rowi * D, dkp, dvp,
                                       scratch)
                    if nt < nq:
                        rowi += nt
                        _backward_rows(P, scale, b, h, i0 + nt, nq - nt, jfirst, kend_q,
                                       visible_only, q + rowi * D, dout + rowi * Dv, kp, vp,
                                       mstat + rowi, lstat + rowi, Di + rowi, dq + rowi * D,
                                       dkp, dvp, scratch)
                i0 += bq
        if visible_only or kend <= jfirst:
            return
        # A pair (i, j) where row i does not see key j has P_ij = 0 and adds exactly
        # 0 to every result unless a NaN or Inf meets it (0 * NaN): from q_i,
        # dout_i, Di or the row's statistics (all checked here), or from k_j or
        # dP_ij (v_j, or overflow), which also make dq_i NaN (dS_ij k_j). Then
        # compute the results again, pair by pair (rare: only with such values).
        rowi = bh0 * P.Tq
        ok = (_all_finite(dq + rowi * D, <Py_ssize_t>G * P.Tq * D)
              and _all_finite(q + rowi * D, <Py_ssize_t>G * P.Tq * D)
              and _all_finite(dout + rowi * Dv, <Py_ssize_t>G * P.Tq * Dv)
              and _all_finite(Di + rowi, <Py_ssize_t>G * P.Tq)
              and _all_finite(mstat + rowi, <Py_ssize_t>G * P.Tq)
              and _all_finite(lstat + rowi, <Py_ssize_t>G * P.Tq))
        if ok:
            return
        memset(dkp + <Py_ssize_t>jfirst * D, 0, <Py_ssize_t>(kend - jfirst) * D * sizeof(floating))
        memset(dvp + <Py_ssize_t>jfirst * Dv, 0,
               <Py_ssize_t>(kend - jfirst) * Dv * sizeof(floating))
        memset(dq + bh0 * P.Tq * D, 0, <Py_ssize_t>G * P.Tq * D * sizeof(floating))
        visible_only = True


cdef Py_ssize_t _backward_scratch(const Problem* P, int nr) noexcept nogil:
    return (2 * P.bk + P.D + P.Dv) * <Py_ssize_t>_round_up(P.bq, nr)


cdef bint _backward(const Problem* P, floating scale, const floating* q, const floating* k,
                    const floating* v, const floating* out, const floating* mstat,
                    const floating* lstat, const floating* dout, floating* dq, floating* dk,
                    floating* dv, int n_kb, int n_threads) noexcept nogil:
    """Every backward task into dq, dk, dv (each element written); False if
    scratch could not be allocated (the results are then incomplete)."""
    cdef Py_ssize_t n_bh = <Py_ssize_t>P.B * P.Hq
    cdef Py_ssize_t n_rows = n_bh * P.Tq
    cdef Py_ssize_t dq_size = n_rows * P.D
    cdef Py_ssize_t n_tasks = <Py_ssize_t>P.B * P.Hkv * n_kb
    cdef Py_ssize_t t, i, rowi, e, e1
    cdef int Dv = P.Dv, kb
    cdef floating* scratch = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed       # shared: a variable assigned in the region is private
    cdef floating acc
    # Di (B, Hq, Tq), and dq's parts (n_kb, B, Hq, Tq, D) where n_kb > 1
    cdef floating* Di = <floating*>malloc(n_rows * sizeof(floating))
    cdef floating* parts = dq if n_kb == 1 else <floating*>malloc(n_kb * dq_size * sizeof(floating))
    if Di == NULL or parts == NULL:
        free(Di)
        if parts != dq:
            free(parts)
        return False
    with parallel(num_threads=n_threads, use_threads_if=n_threads > 1 and n_bh > 1):
        # Di = rowsum(dout * out), one (b, h) per iteration. A row whose softmax is
        # one key j (l = 1: every other exp is 0 or below rounding) has out_i = v_j
        # and dS_ij = P_ij (dP_ij - Di) = 0 up to rounding; that rounding, times a
        # huge scale (dq = scale dS k), would be all of dq. So such a row's Di is
        # summed as one element of the dP product is (in order, SK_MADD), exactly
        # dP_ij when out_i = v_j; the others by a vectorised sum.
        for t in prange(n_bh, schedule='static'):
            for i in range(P.Tq):
                rowi = t * P.Tq + i
                if lstat[rowi] == 1:
                    Di[rowi] = _dot_seq(dout + rowi * Dv, out + rowi * Dv, Dv)
                else:
                    Di[rowi] = _key_dot(dout + rowi * Dv, out + rowi * Dv, Dv)
    with parallel(num_threads=n_threads, use_threads_if=n_threads > 1 and n_tasks > 1):
        scratch = <floating*>malloc(_backward_scratch(P, _nr(scale)) * sizeof(floating))
        if scratch == NULL:
            failed_p[0] = 1
        for t in prange(n_tasks, schedule='dynamic'):
            if scratch != NULL:
                _backward_task(P, scale, t, n_kb, q, k, v, mstat, lstat, dout, Di, parts,
                               dk, dv, scratch)
        free(scratch)
    if n_kb > 1:
        # dq = the parts summed in order (the sum does not depend on the threads)
        for t in prange((dq_size + SUM_BLOCK - 1) // SUM_BLOCK, num_threads=n_threads,
                        schedule='static', use_threads_if=n_threads > 1 and dq_size > SUM_BLOCK):
            e1 = min((t + 1) * SUM_BLOCK, dq_size)
            for e in range(t * SUM_BLOCK, e1):
                acc = parts[e]
                for kb in range(1, n_kb):
                    acc = acc + parts[kb * dq_size + e]
                dq[e] = acc
        free(parts)
    free(Di)
    return not failed


# ---------------------------------------------------------------------------
# Entry points (called by attention.py with checked, C-contiguous arrays;
# every size >= 1, and D and Dv multiples of pad_multiple(dtype): the wrapper
# zero-pads q, k, v and d_out, which leaves every result unchanged)
# ---------------------------------------------------------------------------

cdef Problem _problem(q, k, v, int bq, int bk, int fwd_bq, bint causal, lengths, mask,
                      mask_strides, bint blas):
    """fwd_bq: the forward's query tile size (the backward's bq differs)."""
    cdef Problem P
    cdef const int64_t[::1] lens
    cdef const unsigned char[::1] mb
    cdef int i
    P.B, P.Hq, P.Tq, P.D = q.shape[0], q.shape[1], q.shape[2], q.shape[3]
    P.Hkv, P.Tk = k.shape[1], k.shape[2]
    P.Dv = v.shape[3]
    P.bq, P.bk = bq, bk
    P.row_from = _row_path_from(P.Tq, fwd_bq)
    P.causal = causal
    P.blas = blas
    P.lengths = NULL
    P.mask_b = NULL
    P.mask_f = NULL
    P.ms[0] = P.ms[1] = P.ms[2] = P.ms[3] = 0
    if lengths is not None:
        lens = lengths
        P.lengths = &lens[0]
    if mask is not None:
        for i in range(4):
            P.ms[i] = mask_strides[i]
        if mask.dtype == np.uint8:
            mb = mask.reshape(-1)
            P.mask_b = &mb[0]
        else:
            P.mask_f = <const void*><size_t>mask.ctypes.data
    return P


def tile_sizes(int Tq, int Tk, bint causal, bint backward=False):
    """(bq, bk): the query and key tile sizes the kernels choose, from the problem
    size only (never the thread count, so that results do not depend on it).
    Causal attention takes short query tiles, which waste less on the diagonal;
    the backward on the kernel's own products holds two score tiles of bk x bq
    and takes short query tiles too. The backward on BLAS takes the forward's
    tiles (it repeats the forward's score products). docs/benchmarks.md has the
    measurements behind these sizes."""
    if backward:
        bq, bk = (32, 128) if causal else (64, 128)
    else:
        bq, bk = (64, 256) if causal else (256, 256)
    return min(bq, Tq), min(bk, Tk)


def key_blocks(int B, int Hkv, int Tk, int bk):
    """How many blocks the backward cuts each (b, kv head)'s keys into, so that
    it has about MIN_BACKWARD_TASKS tasks to share among threads: from the
    problem size only; each block beyond the first costs one more dq-sized
    scratch array."""
    cdef int pairs = B * Hkv
    if pairs >= MIN_BACKWARD_TASKS:
        return 1
    n_tiles = (Tk + bk - 1) // bk
    return max(1, min((MIN_BACKWARD_TASKS + pairs - 1) // pairs, MAX_KEY_BLOCKS, n_tiles))


def _tiles(int Tq, int Tk, bint causal, bint backward, tiles):
    """tile_sizes, or ``tiles`` (bq, bk) where given (tests force small tiles)."""
    if tiles is None:
        return tile_sizes(Tq, Tk, causal, backward)
    return min(tiles[0], Tq), min(tiles[1], Tk)


def forward(const floating[:, :, :, ::1] q,     # (B, Hq, Tq, D)
            const floating[:, :, :, ::1] k,     # (B, Hkv, Tk, D)
            const floating[:, :, :, ::1] v,     # (B, Hkv, Tk, Dv)
            floating[:, :, :, ::1] out,         # (B, Hq, Tq, Dv) OUT
            floating[:, :, :, ::1] stats,       # (2, B, Hq, Tq) OUT: per query row, [0] the
                                                # largest score m, [1] 1 / sum_j exp(S_ij - m)
            double scale, bint causal, lengths, mask, mask_strides, bint blas,
            int n_threads, tiles=None):
    """Attention forward; writes every element of out and stats. ``lengths``
    (B,) int64 or None; ``mask`` a C-contiguous uint8 (boolean) or floating array
    whose element [b, h, i, j] is at the element offsets ``mask_strides`` (a
    4-tuple), or None. The mask array must stay alive for the call (the caller
    holds it). ``blas``: the tile products on BLAS, else on sk_gemm. ``tiles``:
    (bq, bk) to force, else tile_sizes. A row with no key to attend to gets
    out = 0 and stats 0, 0 (see _finish_row)."""
    bq, bk = _tiles(q.shape[2], k.shape[2], causal, False, tiles)
    cdef Problem P = _problem(q, k, v, bq, bk, bq, causal, lengths, mask, mask_strides, blas)
    cdef bint ok
    with nogil:
        ok = _forward(&P, <floating>scale, &q[0, 0, 0, 0], &k[0, 0, 0, 0], &v[0, 0, 0, 0],
                      &out[0, 0, 0, 0], &stats[0, 0, 0, 0], &stats[1, 0, 0, 0], n_threads)
    if not ok:
        raise MemoryError("attention_forward: no memory for the kernel's scratch")


def backward(const floating[:, :, :, ::1] q,     # (B, Hq, Tq, D)
             const floating[:, :, :, ::1] k,     # (B, Hkv, Tk, D)
             const floating[:, :, :, ::1] v,     # (B, Hkv, Tk, Dv)
             const floating[:, :, :, ::1] out,   # (B, Hq, Tq, Dv) from the forward
             const floating[:, :, :, ::1] stats, # (2, B, Hq, Tq) from the forward
             const floating[:, :, :, ::1] dout,  # (B, Hq, Tq, Dv)
             floating[:, :, :, ::1] dq,          # (B, Hq, Tq, D) OUT
             floating[:, :, :, ::1] dk,          # (B, Hkv, Tk, D) OUT
             floating[:, :, :, ::1] dv,          # (B, Hkv, Tk, Dv) OUT
             double scale, bint causal, lengths, mask, mask_strides, bint blas,
             int n_threads, tiles=None):
    """Attention backward (same conventions as :func:`forward`, whose ``blas``
    and ``tiles`` it must be given); writes every element of dq, dk and dv.

    Its tiles are tile_sizes(backward=True), or the forward's where ``blas`` (it
    repeats the forward's score products); rows the forward ran on its row path
    get their scores the same way here. The keys of each (b, kv head) are cut
    into key_blocks() blocks, one task each, each adding its share of dq into a
    dq part of its own; the parts are summed in order."""
    cdef int Tq = q.shape[2], Tk = k.shape[2]
    fbq, fbk = _tiles(Tq, Tk, causal, False, tiles)
    bq, bk = (fbq, fbk) if blas else _tiles(Tq, Tk, causal, True, tiles)
    cdef int n_kb = key_blocks(q.shape[0], k.shape[1], Tk, bk)
    cdef Problem P = _problem(q, k, v, bq, bk, fbq, causal, lengths, mask, mask_strides, blas)
    cdef bint ok
    with nogil:
        ok = _backward(&P, <floating>scale, &q[0, 0, 0, 0], &k[0, 0, 0, 0], &v[0, 0, 0, 0],
                       &out[0, 0, 0, 0], &stats[0, 0, 0, 0], &stats[1, 0, 0, 0],
                       &dout[0, 0, 0, 0], &dq[0, 0, 0, 0], &dk[0, 0, 0, 0], &dv[0, 0, 0, 0],
                       n_kb, n_threads)
    if not ok:
        raise MemoryError("attention_backward: no memory for the kernel's scratch")


#: Whether the tile products run on BLAS at this instruction-set level (the
#: wrapper's default, _attention.h's SK_AT_BLAS_PRODUCTS).
BLAS_PRODUCTS = bool(SK_AT_BLAS_PRODUCTS)


def pad_multiple(dtype):
    """D and Dv must be multiples of this (128 bytes of ``dtype``: whole vectors
    of the tile product at every instruction-set level)."""
    return 128 // np.dtype(dtype).itemsize


def row_dots(const floating[:, ::1] K, const floating[::1] q, floating alpha):
    """s[j] = alpha * (K[j] . q) by sk_row_dots, for its test (any nk and D: the
    kernel's D is always padded to pad_multiple, so the tail past whole vectors
    only runs here)."""
    if K.shape[1] != q.shape[0]:
        raise ValueError("K and q must have the same width")
    cdef floating[::1] s = np.empty(K.shape[0], np.float32 if floating is float else np.float64)
    if K.shape[1] == 0:
        return np.zeros(K.shape[0], np.asarray(s).dtype)
    if K.shape[0]:
        _row_dots(<int>K.shape[0], <int>K.shape[1], alpha, &K[0, 0], &q[0], &s[0])
    return np.asarray(s)


def _expf(const float[::1] x, float[::1] out):
    """out := sk_expf(x): the kernel's float exp, for its accuracy test."""
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        out[i] = sk_expf(x[i])
