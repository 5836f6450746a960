/*
 * The C of the attention kernels (_attention.pyx keeps the loops, tasks and
 * threading): row helpers, the scores of one query against a tile of keys
 * (sk_row_dots), the register-blocked tile product (sk_gemm) and the online
 * softmax steps. The reductions use GCC/Clang vector extensions: a compiler will
 * not vectorise a floating-point reduction by itself without -ffast-math. Lanes
 * are combined in a fixed order, so results are deterministic. The element-wise
 * loops are plain C and vectorise as they are (sk_expf is branch-free and
 * inline).
 */
#ifndef SEQKERN_ATTENTION_H
#define SEQKERN_ATTENTION_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_mathfun.h"

typedef float sk_vf __attribute__((vector_size(64)));
typedef double sk_vd __attribute__((vector_size(64)));

/* c + a * b in one rounding where the target has a fused multiply-add, which
 * is where the compiler contracts the vector products' acc += a * b (SK_GEMM,
 * sk_row_dots) into one; in two otherwise. Sums written with it round as one
 * element of those products does, whatever the vectoriser makes of the loop
 * (it splits a plain a * b + c in an in-order sum into separate multiplies). */
#if defined(__FP_FAST_FMA) && defined(__FP_FAST_FMAF)
#define SK_MADD_f(a, b, c) __builtin_fmaf((a), (b), (c))
#define SK_MADD_d(a, b, c) __builtin_fma((a), (b), (c))
#else
#define SK_MADD_f(a, b, c) ((a) * (b) + (c))
#define SK_MADD_d(a, b, c) ((a) * (b) + (c))
#endif

#define SK_ROW_HELPERS(T, V, EXP, SUF)                                       \
/* row[j] := exp(row[j] - m) */                                               \
static inline void sk_row_exp_##SUF(T *row, int n, T m)                       \
{                                                                             \
    for (int j = 0; j < n; j++) row[j] = EXP(row[j] - m);                     \
}                                                                             \
/* row[j] := exp(row[j] - m) * inv_l: probabilities from the forward's row   \
 * max m and 1 / row sum inv_l */                                            \
static inline void sk_row_prob_##SUF(T *row, int n, T m, T inv_l)            \
{                                                                             \
    for (int j = 0; j < n; j++) row[j] = EXP(row[j] - m) * inv_l;            \
}                                                                             \
/* ds[j] := p[j] * (ds[j] - d) */                                             \
static inline void sk_row_dsoftmax_##SUF(const T *p, T *ds, int n, T d)       \
{                                                                             \
    for (int j = 0; j < n; j++) ds[j] = p[j] * (ds[j] - d);                   \
}                                                                             \
static inline void sk_row_scale_##SUF(T *row, int n, T a)                     \
{                                                                             \
    for (int j = 0; j < n; j++) row[j] *= a;                                  \
}                                                                             \
/* y[j] += a * x[j] */                                                        \
static inline void sk_row_axpy_##SUF(int n, T a, const T *x, T *y)            \
{                                                                             \
    for (int j = 0; j < n; j++) y[j] += a * x[j];                             \
}                                                                             \
/* 1 if x[0:n] holds no NaN or Inf (x - x is NaN for both) */                 \
static inline int sk_all_finite_##SUF(const T *x, ptrdiff_t n)                \
{                                                                             \
    int ok = 1;                                                               \
    for (ptrdiff_t j = 0; j < n; j++) ok &= (x[j] - x[j]) == 0;              \
    return ok;                                                                \
}                                                                             \
/* a . b (n,), summed in order from 0: the arithmetic of one element of      \
 * SK_GEMM with alpha = 1 (so that Di = dout_i . out_i equals dP_ij when     \
 * out_i is v_j exactly) */                                                  \
static inline T sk_dot_seq_##SUF(const T *a, const T *b, int n)               \
{                                                                             \
    T acc = 0;                                                                \
    for (int j = 0; j < n; j++) acc = SK_MADD_##SUF(a[j], b[j], acc);         \
    return acc;                                                               \
}
SK_ROW_HELPERS(float, sk_vf, sk_expf, f)
SK_ROW_HELPERS(double, sk_vd, sk_exp_flush, d)
/* s[j] = alpha * (K[j] . q) for the nk rows of K (nk, D) row-major: a query's
 * scores against a tile of keys. Keys go in groups of one vector's lanes (L):
 * L accumulators along D, then summed across lanes all at once by halving
 * (each stage adds the two halves of every key's lanes of two vectors; after
 * log2 L stages lane l holds key bitrev(l)), instead of one sum across lanes
 * per key. Fixed order: deterministic. D past whole vectors is summed per key
 * in order. Each key's score is the same function of (k_j, q) wherever the key
 * falls (in a whole group or among the last ones, whatever nk is): keys past
 * the last whole group run the same sums one key at a time (sk_key_dot), so
 * the backward, with other key tiles, recomputes the forward's scores exactly. */
typedef int sk_vif __attribute__((vector_size(64)));
typedef long long sk_vid __attribute__((vector_size(64)));
/* lane c of the stage of block width w: the first (LO) / second (HI) halves */
#define SK_HLO(c, w, L) ((c) % (w) < (w) / 2 ? (c) : (L) + (c) - (w) / 2)
#define SK_HHI(c, w, L) ((c) % (w) < (w) / 2 ? (c) + (w) / 2 : (L) + (c))
#define SK_I8(M, w, L, o) M(o, w, L), M(o + 1, w, L), M(o + 2, w, L), M(o + 3, w, L), \
                          M(o + 4, w, L), M(o + 5, w, L), M(o + 6, w, L), M(o + 7, w, L)
#define SK_STAGE(V, IV, IDX, n, w)                                           \
    _Pragma("GCC unroll 16")                                                  \
    for (int i = 0; i < (n) / 2; i++)                                         \
        a[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], (IV)IDX(SK_HLO, w))  \
             + __builtin_shuffle(a[2 * i], a[2 * i + 1], (IV)IDX(SK_HHI, w));
#define SK_IDX16(M, w) {SK_I8(M, w, 16, 0), SK_I8(M, w, 16, 8)}
#define SK_IDX8(M, w) {SK_I8(M, w, 8, 0)}
#define SK_BITREV16 {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15}
#define SK_BITREV8 {0, 4, 2, 6, 1, 5, 3, 7}
#define SK_ROW_DOTS(T, V, IV, L, SUF, STAGES, BITREV)                          \
/* one key of sk_row_dots (before alpha): its L lanes summed by the same    \
 * halving, x[c] += x[c + h] for h = L/2, ..., 1. Out of line: inlined into   \
 * sk_row_dots' last keys it slowed the whole groups' loop (decoding ~2%). */ \
static __attribute__((noinline)) T sk_key_dot_##SUF(const T *k, const T *q, int D) \
{                                                                             \
    V a = (V){0};                                                             \
    T x[L], tail = 0;                                                         \
    int d, h, c;                                                              \
    for (d = 0; d + L <= D; d += L) {                                         \
        V qv, kv;                                                             \
        memcpy(&qv, q + d, sizeof qv);                                        \
        memcpy(&kv, k + d, sizeof kv);                                        \
        a += kv * qv;                                                         \
    }                                                                         \
    for (; d < D; d++)                                                        \
        tail = SK_MADD_##SUF(k[d], q[d], tail);                               \
    memcpy(x, &a, sizeof x);                                                  \
    for (h = L / 2; h >= 1; h /= 2)                                           \
        for (c = 0; c < h; c++)                                               \
            x[c] = x[c] + x[c + h];                                           \
    return x[0] + tail;                                                       \
}                                                                             \
static void sk_row_dots_##SUF(int nk, int D, T alpha, const T *K, const T *q, \
                              T *s)                                           \
{                                                                             \
    int j = 0;                                                                \
    for (; j + L <= nk; j += L) {                                             \
        V a[L];                                                               \
        T tail[L];                                                            \
        int d, r;                                                             \
        _Pragma("GCC unroll 16")                                              \
        for (r = 0; r < L; r++) { a[r] = (V){0}; tail[r] = 0; }              \
        _Pragma("GCC unroll 16")                                              \
        for (r = 0; r < L; r++) {       /* the keys' rows in memory order */  \
            const T *k = K + (ptrdiff_t)(j + r) * D;                          \
            for (d = 0; d + L <= D; d += L) {                                 \
                V qv, kv;                                                     \
                memcpy(&qv, q + d, sizeof qv);                                \
                memcpy(&kv, k + d, sizeof kv);                                \
                a[r] += kv * qv;                                              \
            }                                                                 \
        }                                                                     \
        d = D / L * L;                                                        \
        for (r = 0; r < L; r++)                                               \
            for (int e = d; e < D; e++)                                       \
                tail[r] = SK_MADD_##SUF(K[(ptrdiff_t)(j + r) * D + e], q[e], tail[r]); \
        STAGES                                                                \
        V f = __builtin_shuffle(a[0], (IV)BITREV);                            \
        for (r = 0; r < L; r++)                                               \
            s[j + r] = alpha * (f[r] + tail[r]);                              \
    }                                                                         \
    for (; j < nk; j++)                                                       \
        s[j] = alpha * sk_key_dot_##SUF(K + (ptrdiff_t)j * D, q, D);          \
}
SK_ROW_DOTS(float, sk_vf, sk_vif, 16, f,
            SK_STAGE(sk_vf, sk_vif, SK_IDX16, 16, 16) SK_STAGE(sk_vf, sk_vif, SK_IDX16, 8, 8)
            SK_STAGE(sk_vf, sk_vif, SK_IDX16, 4, 4) SK_STAGE(sk_vf, sk_vif, SK_IDX16, 2, 2),
            SK_BITREV16)
SK_ROW_DOTS(double, sk_vd, sk_vid, 8, d,
            SK_STAGE(sk_vd, sk_vid, SK_IDX8, 8, 8) SK_STAGE(sk_vd, sk_vid, SK_IDX8, 4, 4)
            SK_STAGE(sk_vd, sk_vid, SK_IDX8, 2, 2),
            SK_BITREV8)
/* A register-blocked product for the tiles (no packing: the operands are
 * already tiles in cache, and OpenBLAS's packing of them was measured at
 * about 12% of the forward time):
 *   C[0:m, 0:n] := alpha * A @ B (+ C[0:m, 0:n] if beta)
 * A (m, k) has element (r, d) at A[r * ars + d * acs] (so A^T is free);
 * B (k, n) and C are row-major with row strides ldb and ldc; n must be a
 * multiple of one vector (_nr() / 2 in Cython), and B and C must hold n
 * columns (callers pad). Blocks of SK_MR rows x two vectors (16 accumulators),
 * the last one vector where n is odd in vectors: each element's sum is the
 * same either way (k in order, then alpha, then C). */
#define SK_MR 8
#define SK_GEMM(T, V, SUF)                                                       \
/* C[0:mr, 0:nv L] for nv = 1 or 2 vectors (a constant at each call) */       \
static inline __attribute__((always_inline)) void                            \
sk_block_##SUF(int mr, int k, T alpha, const T *A, ptrdiff_t ars,             \
               ptrdiff_t acs, const T *B, int ldb, int beta, T *C, int ldc,   \
               int nv)                                                        \
{                                                                             \
    const int L = (int)(sizeof(V) / sizeof(T));                               \
    V acc[SK_MR][2];                                                          \
    int r, d;                                                                 \
    for (r = 0; r < SK_MR; r++) { acc[r][0] = (V){0}; acc[r][1] = (V){0}; }  \
    for (d = 0; d < k; d++) {                                                 \
        V b0, b1 = (V){0};                                                    \
        memcpy(&b0, B + (ptrdiff_t)d * ldb, sizeof b0);                       \
        if (nv == 2)                                                          \
            memcpy(&b1, B + (ptrdiff_t)d * ldb + L, sizeof b1);               \
        for (r = 0; r < SK_MR; r++) {                                         \
            if (r < mr) {                                                     \
                T a = A[r * ars + d * acs];                                   \
                acc[r][0] += a * b0;                                          \
                if (nv == 2)                                                  \
                    acc[r][1] += a * b1;                                      \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    for (r = 0; r < mr; r++) {                                                \
        T *c = C + (ptrdiff_t)r * ldc;                                        \
        V c0 = acc[r][0] * alpha, c1 = acc[r][1] * alpha;                     \
        if (beta) {                                                           \
            V o0, o1 = (V){0};                                                \
            memcpy(&o0, c, sizeof o0);                                        \
            if (nv == 2)                                                      \
                memcpy(&o1, c + L, sizeof o1);                                \
            c0 += o0;                                                         \
            c1 += o1;                                                         \
        }                                                                     \
        memcpy(c, &c0, sizeof c0);                                            \
        if (nv == 2)                                                          \
            memcpy(c + L, &c1, sizeof c1);                                    \
    }                                                                         \
}                                                                             \
/* rows [i, i + mr): the pairs of vectors, then a last single one */          \
static inline __attribute__((always_inline)) void                            \
sk_rows_##SUF(int mr, int n, int k, T alpha, const T *A, ptrdiff_t ars,       \
              ptrdiff_t acs, const T *B, int ldb, int beta, T *C, int ldc)    \
{                                                                             \
    const int L = (int)(sizeof(V) / sizeof(T));                               \
    int j;                                                                    \
    for (j = 0; j + 2 * L <= n; j += 2 * L)                                   \
        sk_block_##SUF(mr, k, alpha, A, ars, acs, B + j, ldb, beta, C + j,    \
                       ldc, 2);                                               \
    if (j < n)                                                                \
        sk_block_##SUF(mr, k, alpha, A, ars, acs, B + j, ldb, beta, C + j,    \
                       ldc, 1);                                               \
}                                                                             \
static void sk_gemm_##SUF(int m, int n, int k, T alpha, const T *A,           \
                          ptrdiff_t ars, ptrdiff_t acs, const T *B, int ldb,  \
                          int beta, T *C, int ldc)                            \
{                                                                             \
    int i = 0;                                                                \
    for (; i + SK_MR <= m; i += SK_MR)                                        \
        sk_rows_##SUF(SK_MR, n, k, alpha, A + i * ars, ars, acs, B, ldb,      \
                      beta, C + (ptrdiff_t)i * ldc, ldc);                     \
    if (i < m)                                                                \
        sk_rows_##SUF(m - i, n, k, alpha, A + i * ars, ars, acs, B, ldb,      \
                      beta, C + (ptrdiff_t)i * ldc, ldc);                     \
}
SK_GEMM(float, sk_vf, f)
SK_GEMM(double, sk_vd, d)
/* The online-softmax step on a transposed score tile: st holds nk rows
 * (keys) of nq columns (queries), row stride ld; per query i:
 *   mnew = max(m[i], max_j st[j][i]),  shift = mnew, or 0 while the row is all -inf
 *   alpha[i] = exp(m[i] - shift)                 (rescales the partial output)
 *   st[j][i] = exp(st[j][i] - shift),  l[i] = alpha[i] l[i] + sum_j st[j][i]
 * Every loop runs along queries, so it vectorises with no reduction.
 * shift (nq) is scratch. */
#define SK_SOFTMAX_COLS(T, EXP, SUF)                                             \
static void sk_softmax_cols_##SUF(T *st, int ld, int nk, int nq, T *m, T *l,  \
                                  T *alpha, T *shift)                         \
{                                                                             \
    int i, j;                                                                 \
    for (i = 0; i < nq; i++) shift[i] = m[i];                                 \
    for (j = 0; j < nk; j++) {                                                \
        const T *row = st + (ptrdiff_t)j * ld;                                \
        for (i = 0; i < nq; i++)                                              \
            shift[i] = row[i] > shift[i] ? row[i] : shift[i];                 \
    }                                                                         \
    for (i = 0; i < nq; i++) {                                                \
        T mnew = shift[i];                                                    \
        T sh = mnew == -INFINITY ? 0 : mnew;                                  \
        alpha[i] = EXP(m[i] - sh);                                            \
        l[i] *= alpha[i];                                                     \
        m[i] = mnew;                                                          \
        shift[i] = sh;                                                        \
    }                                                                         \
    for (j = 0; j < nk; j++) {                                                \
        T *row = st + (ptrdiff_t)j * ld;                                      \
        for (i = 0; i < nq; i++) {                                            \
            T e = EXP(row[i] - shift[i]);                                     \
            row[i] = e;                                                       \
            l[i] += e;                                                        \
        }                                                                     \
    }                                                                         \
}
SK_SOFTMAX_COLS(float, sk_expf, f)
SK_SOFTMAX_COLS(double, sk_exp_flush, d)
/* The same step for a single query whose nk scores are contiguous (the
 * decoding path): the same arithmetic in the same order, with the exps
 * vectorised along the keys (sk_row_exp). Returns alpha. */
#define SK_SOFTMAX_ROW(T, EXP, SUF)                                              \
static T sk_softmax_row_##SUF(T *s, int nk, T *m, T *l)                       \
{                                                                             \
    T mnew = *m, sh, alpha;                                                   \
    int j;                                                                    \
    for (j = 0; j < nk; j++)                                                  \
        mnew = s[j] > mnew ? s[j] : mnew;   /* a NaN never becomes the max */ \
    sh = mnew == -INFINITY ? 0 : mnew;                                        \
    alpha = EXP(*m - sh);                                                     \
    *l *= alpha;                                                              \
    *m = mnew;                                                                \
    sk_row_exp_##SUF(s, nk, sh);                                              \
    for (j = 0; j < nk; j++)                                                  \
        *l += s[j];                                                           \
    return alpha;                                                             \
}
SK_SOFTMAX_ROW(float, sk_expf, f)
SK_SOFTMAX_ROW(double, sk_exp_flush, d)

#endif
