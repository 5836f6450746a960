/*
 * Body of _attention.h for one element type; included once per type with
 * SK_AT_T (element), SK_AT_V (vector of SK_AT_T, SK_AT_VBYTES bytes), SK_AT_IV
 * (integer vector of as many lanes), SK_AT_L (its lanes), SK_AT_EXP (the exp)
 * and SK_AT_SUF (name suffix). Read _attention.h first.
 */
#define SK_AT_CAT_(a, b) a##b
#define SK_AT_CAT(a, b) SK_AT_CAT_(a, b)
#define SK_AT_FN(name) SK_AT_CAT(name, SK_AT_SUF)
#define SK_AT_MADD SK_AT_CAT(SK_MADD_, SK_AT_SUF)
#define T SK_AT_T
#define V SK_AT_V
#define L SK_AT_L

/* ---- row helpers ---- */

/* row[j] := exp(row[j] - m) */
static inline void SK_AT_FN(sk_row_exp_)(T *row, int n, T m)
{
    for (int j = 0; j < n; j++) row[j] = SK_AT_EXP(row[j] - m);
}

/* row[j] := exp(row[j] - m) * inv_l: probabilities from the forward's row max m
 * and 1 / row sum inv_l */
static inline void SK_AT_FN(sk_row_prob_)(T *row, int n, T m, T inv_l)
{
    for (int j = 0; j < n; j++) row[j] = SK_AT_EXP(row[j] - m) * inv_l;
}

/* ds[j] := p[j] * (ds[j] - d) */
static inline void SK_AT_FN(sk_row_dsoftmax_)(const T *p, T *ds, int n, T d)
{
    for (int j = 0; j < n; j++) ds[j] = p[j] * (ds[j] - d);
}

static inline void SK_AT_FN(sk_row_scale_)(T *row, int n, T a)
{
    for (int j = 0; j < n; j++) row[j] *= a;
}

/* y[j] += a * x[j] */
static inline void SK_AT_FN(sk_row_axpy_)(int n, T a, const T *x, T *y)
{
    for (int j = 0; j < n; j++) y[j] += a * x[j];
}

/* 1 if x[0:n] holds no NaN or Inf (x - x is NaN for both) */
static inline int SK_AT_FN(sk_all_finite_)(const T *x, ptrdiff_t n)
{
    int ok = 1;
    for (ptrdiff_t j = 0; j < n; j++) ok &= (x[j] - x[j]) == 0;
    return ok;
}

/* a . b (n,), summed in order from 0: the arithmetic of one element of sk_gemm
 * with alpha = 1 (so that Di = dout_i . out_i equals dP_ij when out_i is v_j
 * exactly) */
static inline T SK_AT_FN(sk_dot_seq_)(const T *a, const T *b, int n)
{
    T acc = 0;
    for (int j = 0; j < n; j++) acc = SK_AT_MADD(a[j], b[j], acc);
    return acc;
}

/* ---- a query's scores against a tile of keys ----
 * s[j] = alpha * (K[j] . q) for the nk rows of K (nk, D) row-major. Keys go in
 * groups of one vector's lanes (L): L accumulators along D, then summed across
 * lanes all at once by halving (each stage adds the two halves of every key's
 * lanes of two vectors; after log2 L stages lane l holds key bitrev(l)), instead
 * of one sum across lanes per key. Fixed order: deterministic. D past whole
 * vectors is summed per key in order. Each key's score is the same function of
 * (k_j, q) wherever the key falls (in a whole group or among the last ones,
 * whatever nk is): keys past the last whole group run the same sums one key at
 * a time (sk_key_dot), so the backward, with other key tiles, recomputes the
 * forward's scores exactly. */

/* lane c of the stage of block width w: the first (LO) / second (HI) halves */
#define SK_AT_HLO(c, w) ((c) % (w) < (w) / 2 ? (c) : L + (c) - (w) / 2)
#define SK_AT_HHI(c, w) ((c) % (w) < (w) / 2 ? (c) + (w) / 2 : L + (c))
#define SK_AT_I2(M, w, o) M(o, w), M(o + 1, w)
#define SK_AT_I4(M, w, o) SK_AT_I2(M, w, o), SK_AT_I2(M, w, o + 2)
#define SK_AT_I8(M, w, o) SK_AT_I4(M, w, o), SK_AT_I4(M, w, o + 4)
#define SK_AT_I16(M, w, o) SK_AT_I8(M, w, o), SK_AT_I8(M, w, o + 8)
/* one stage: the w vectors a[0:w] (w lanes per key block) become w / 2 */
#define SK_AT_STAGE(w)                                                           \
    _Pragma("GCC unroll 16")                                                     \
    for (int i = 0; i < (w) / 2; i++)                                            \
        a[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], (SK_AT_IV){SK_AT_IDX(SK_AT_HLO, w)}) \
             + __builtin_shuffle(a[2 * i], a[2 * i + 1], (SK_AT_IV){SK_AT_IDX(SK_AT_HHI, w)});
#if SK_AT_L == 16
#define SK_AT_IDX(M, w) SK_AT_I16(M, w, 0)
#define SK_AT_STAGES SK_AT_STAGE(16) SK_AT_STAGE(8) SK_AT_STAGE(4) SK_AT_STAGE(2)
#define SK_AT_BITREV {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15}
#elif SK_AT_L == 8
#define SK_AT_IDX(M, w) SK_AT_I8(M, w, 0)
#define SK_AT_STAGES SK_AT_STAGE(8) SK_AT_STAGE(4) SK_AT_STAGE(2)
#define SK_AT_BITREV {0, 4, 2, 6, 1, 5, 3, 7}
#elif SK_AT_L == 4
#define SK_AT_IDX(M, w) SK_AT_I4(M, w, 0)
#define SK_AT_STAGES SK_AT_STAGE(4) SK_AT_STAGE(2)
#define SK_AT_BITREV {0, 2, 1, 3}
#elif SK_AT_L == 2
#define SK_AT_IDX(M, w) SK_AT_I2(M, w, 0)
#define SK_AT_STAGES SK_AT_STAGE(2)
#define SK_AT_BITREV {0, 1}
#else
#error "_attention_impl.h: vectors of 2, 4, 8 or 16 lanes"
#endif

/* one key of sk_row_dots (before alpha): its L lanes summed by the same halving,
 * x[c] += x[c + h] for h = L/2, ..., 1. Out of line: inlined into sk_row_dots'
 * last keys it slowed the whole groups' loop. */
static __attribute__((noinline)) T SK_AT_FN(sk_key_dot_)(const T *k, const T *q, int D)
{
    V a = (V){0};
    T x[L], tail = 0;
    int d, h, c;
    for (d = 0; d + L <= D; d += L) {
        V qv, kv;
        memcpy(&qv, q + d, sizeof qv);
        memcpy(&kv, k + d, sizeof kv);
        a += kv * qv;
    }
    for (; d < D; d++)
        tail = SK_AT_MADD(k[d], q[d], tail);
    memcpy(x, &a, sizeof x);
    for (h = L / 2; h >= 1; h /= 2)
        for (c = 0; c < h; c++)
            x[c] = x[c] + x[c + h];
    return x[0] + tail;
}

static void SK_AT_FN(sk_row_dots_)(int nk, int D, T alpha, const T *K, const T *q, T *s)
{
    int j = 0;
    for (; j + L <= nk; j += L) {
        V a[L];
        T tail[L];
        int d, r;
        _Pragma("GCC unroll 16")
        for (r = 0; r < L; r++) { a[r] = (V){0}; tail[r] = 0; }
        _Pragma("GCC unroll 16")
        for (r = 0; r < L; r++) {       /* the keys' rows in memory order */
            const T *k = K + (ptrdiff_t)(j + r) * D;
            for (d = 0; d + L <= D; d += L) {
                V qv, kv;
                memcpy(&qv, q + d, sizeof qv);
                memcpy(&kv, k + d, sizeof kv);
                a[r] += kv * qv;
            }
        }
        d = D / L * L;
        for (r = 0; r < L; r++)
            for (int e = d; e < D; e++)
                tail[r] = SK_AT_MADD(K[(ptrdiff_t)(j + r) * D + e], q[e], tail[r]);
        SK_AT_STAGES
        V f = __builtin_shuffle(a[0], (SK_AT_IV)SK_AT_BITREV);
        for (r = 0; r < L; r++)
            s[j + r] = alpha * (f[r] + tail[r]);
    }
    for (; j < nk; j++)
        s[j] = alpha * SK_AT_FN(sk_key_dot_)(K + (ptrdiff_t)j * D, q, D);
}

#undef SK_AT_HLO
#undef SK_AT_HHI
#undef SK_AT_I2
#undef SK_AT_I4
#undef SK_AT_I8
#undef SK_AT_I16
#undef SK_AT_STAGE
#undef SK_AT_IDX
#undef SK_AT_STAGES
#undef SK_AT_BITREV

/* ---- the tile product ----
 * A register-blocked product for the tiles (no packing: the operands are
 * already tiles in cache):
 *   C[0:m, 0:n] := alpha * A @ B (+ C[0:m, 0:n] if beta)
 * A (m, k) has element (r, d) at A[r * ars + d * acs] (so A^T is free); B (k, n)
 * and C are row-major with row strides ldb and ldc; n must be a multiple of one
 * vector (L), and B and C must hold n columns (callers pad). Blocks of SK_AT_MR
 * rows x SK_AT_NV vectors, the last ones of fewer vectors where n is not a
 * multiple of NV vectors: each element's sum is the same wherever it falls
 * (k in order, then alpha, then C), so it does not depend on m, n or the
 * operands' layout. */

/* C[0:mr, 0:nv L] for nv <= SK_AT_NV vectors (a constant at each call) */
static inline __attribute__((always_inline)) void
SK_AT_FN(sk_block_)(int mr, int k, T alpha, const T *A, ptrdiff_t ars, ptrdiff_t acs,
                    const T *B, int ldb, int beta, T *C, int ldc, int nv)
{
    V acc[SK_AT_MR][SK_AT_NV];
    int r, d, v;
    _Pragma("GCC unroll 16")
    for (r = 0; r < SK_AT_MR; r++)
        _Pragma("GCC unroll 4")
        for (v = 0; v < SK_AT_NV; v++)
            acc[r][v] = (V){0};
    for (d = 0; d < k; d++) {
        V b[SK_AT_NV];
        _Pragma("GCC unroll 4")
        for (v = 0; v < SK_AT_NV; v++) {
            b[v] = (V){0};
            if (v < nv)
                memcpy(&b[v], B + (ptrdiff_t)d * ldb + v * L, sizeof b[v]);
        }
        _Pragma("GCC unroll 16")
        for (r = 0; r < SK_AT_MR; r++) {
            if (r < mr) {
                T a = A[r * ars + d * acs];
                _Pragma("GCC unroll 4")
                for (v = 0; v < SK_AT_NV; v++)
                    if (v < nv)
                        acc[r][v] += a * b[v];
            }
        }
    }
    for (r = 0; r < mr; r++) {
        T *c = C + (ptrdiff_t)r * ldc;
        _Pragma("GCC unroll 4")
        for (v = 0; v < SK_AT_NV; v++) {
            if (v < nv) {
                V cv = acc[r][v] * alpha;
                if (beta) {
                    V o;
                    memcpy(&o, c + v * L, sizeof o);
                    cv += o;
                }
                memcpy(c + v * L, &cv, sizeof cv);
            }
        }
    }
}

/* rows [i, i + mr): blocks of SK_AT_NV vectors, then one of the vectors left */
static inline __attribute__((always_inline)) void
SK_AT_FN(sk_rows_)(int mr, int n, int k, T alpha, const T *A, ptrdiff_t ars, ptrdiff_t acs,
                   const T *B, int ldb, int beta, T *C, int ldc)
{
    int j, nv;
    for (j = 0; j + SK_AT_NV * L <= n; j += SK_AT_NV * L)
        SK_AT_FN(sk_block_)(mr, k, alpha, A, ars, acs, B + j, ldb, beta, C + j, ldc,
                            SK_AT_NV);
    _Pragma("GCC unroll 4")
    for (nv = 1; nv < SK_AT_NV; nv++)
        if ((n - j) / L == nv)
            SK_AT_FN(sk_block_)(mr, k, alpha, A, ars, acs, B + j, ldb, beta, C + j, ldc,
                                nv);
}

static void SK_AT_FN(sk_gemm_)(int m, int n, int k, T alpha, const T *A, ptrdiff_t ars,
                               ptrdiff_t acs, const T *B, int ldb, int beta, T *C, int ldc)
{
    int i = 0;
    for (; i + SK_AT_MR <= m; i += SK_AT_MR)
        SK_AT_FN(sk_rows_)(SK_AT_MR, n, k, alpha, A + i * ars, ars, acs, B, ldb, beta,
                           C + (ptrdiff_t)i * ldc, ldc);
    if (i < m)
        SK_AT_FN(sk_rows_)(m - i, n, k, alpha, A + i * ars, ars, acs, B, ldb, beta,
                           C + (ptrdiff_t)i * ldc, ldc);
}

/* y[0:n] += alpha * x @ B[0:k, 0:n], x[d] at x[d * incx] (B row-major, row
 * stride ldb; n a multiple of one vector): a one-row product, which sk_gemm runs on two chains
 * of fused multiply-adds per block, each waiting on the last. Here blocks of
 * four vectors of columns with the rows d in two interleaved halves (even and
 * odd), eight independent chains, added at the end. Its sums are in another
 * order than sk_gemm's: for products no other one must reproduce. */
static void SK_AT_FN(sk_row_gemv_)(int n, int k, T alpha, const T *x, ptrdiff_t incx,
                                   const T *B, int ldb, T *y)
{
    int j = 0, d, v;
    for (; j < n; j += 4 * L) {
        int nv = (n - j) / L < 4 ? (n - j) / L : 4;
        V a0[4] = {{0}}, a1[4] = {{0}};
        for (d = 0; d + 2 <= k; d += 2) {
            const T *b0 = B + (ptrdiff_t)d * ldb + j, *b1 = b0 + ldb;
            T x0 = x[d * incx], x1 = x[(d + 1) * incx];
            _Pragma("GCC unroll 4")
            for (v = 0; v < 4; v++) {
                if (v < nv) {
                    V u0, u1;
                    memcpy(&u0, b0 + v * L, sizeof u0);
                    memcpy(&u1, b1 + v * L, sizeof u1);
                    a0[v] += x0 * u0;
                    a1[v] += x1 * u1;
                }
            }
        }
        if (d < k) {
            const T *b0 = B + (ptrdiff_t)d * ldb + j;
            _Pragma("GCC unroll 4")
            for (v = 0; v < 4; v++) {
                if (v < nv) {
                    V u0;
                    memcpy(&u0, b0 + v * L, sizeof u0);
                    a0[v] += x[d * incx] * u0;
                }
            }
        }
        _Pragma("GCC unroll 4")
        for (v = 0; v < 4; v++) {
            if (v < nv) {
                V o;
                memcpy(&o, y + j + v * L, sizeof o);
                o += (a0[v] + a1[v]) * alpha;
                memcpy(y + j + v * L, &o, sizeof o);
            }
        }
    }
}

/* ---- online softmax ----
 * The step on a transposed score tile: st holds nk rows (keys) of nq columns
 * (queries), row stride ld; per query i:
 *   mnew = max(m[i], max_j st[j][i]),  shift = mnew, or 0 while the row is all -inf
 *   alpha[i] = exp(m[i] - shift)                 (rescales the partial output)
 *   st[j][i] = exp(st[j][i] - shift),  l[i] = alpha[i] l[i] + sum_j st[j][i]
 * Every loop runs along queries, so it vectorises with no reduction. shift (nq)
 * is scratch. */
static void SK_AT_FN(sk_softmax_cols_)(T *st, int ld, int nk, int nq, T *m, T *l, T *alpha,
                                       T *shift)
{
    int i, j;
    for (i = 0; i < nq; i++) shift[i] = m[i];
    for (j = 0; j < nk; j++) {
        const T *row = st + (ptrdiff_t)j * ld;
        for (i = 0; i < nq; i++)
            shift[i] = row[i] > shift[i] ? row[i] : shift[i];
    }
    for (i = 0; i < nq; i++) {
        T mnew = shift[i];
        T sh = mnew == -INFINITY ? 0 : mnew;
        alpha[i] = SK_AT_EXP(m[i] - sh);
        l[i] *= alpha[i];
        m[i] = mnew;
        shift[i] = sh;
    }
    for (j = 0; j < nk; j++) {
        T *row = st + (ptrdiff_t)j * ld;
        for (i = 0; i < nq; i++) {
            T e = SK_AT_EXP(row[i] - shift[i]);
            row[i] = e;
            l[i] += e;
        }
    }
}

/* The backward's probabilities and score gradients on a transposed tile (nk rows
 * of keys, nq columns of queries, row stride ld), each element as the row
 * helpers compute it (sk_row_prob, sk_row_dsoftmax), the loops along queries:
 *   pt[j][i] := exp(pt[j][i] - m[i]) * inv_l[i]
 *   dst[j][i] := pt[j][i] * (dst[j][i] - d[i]) */
static void SK_AT_FN(sk_cols_prob_)(T *pt, int ld, int nk, int nq, const T *m, const T *inv_l)
{
    for (int j = 0; j < nk; j++) {
        T *row = pt + (ptrdiff_t)j * ld;
        for (int i = 0; i < nq; i++)
            row[i] = SK_AT_EXP(row[i] - m[i]) * inv_l[i];
    }
}

static void SK_AT_FN(sk_cols_dsoftmax_)(const T *pt, T *dst, int ld, int nk, int nq, const T *d)
{
    for (int j = 0; j < nk; j++) {
        const T *p = pt + (ptrdiff_t)j * ld;
        T *ds = dst + (ptrdiff_t)j * ld;
        for (int i = 0; i < nq; i++)
            ds[i] = p[i] * (ds[i] - d[i]);
    }
}

/* The same step for a single query whose nk scores are contiguous (the decoding
 * path): the same arithmetic in the same order, with the exps vectorised along
 * the keys (sk_row_exp). Returns alpha. */
static T SK_AT_FN(sk_softmax_row_)(T *s, int nk, T *m, T *l)
{
    T mnew = *m, sh, alpha;
    int j;
    for (j = 0; j < nk; j++)
        mnew = s[j] > mnew ? s[j] : mnew;   /* a NaN never becomes the max */
    sh = mnew == -INFINITY ? 0 : mnew;
    alpha = SK_AT_EXP(*m - sh);
    *l *= alpha;
    *m = mnew;
    SK_AT_FN(sk_row_exp_)(s, nk, sh);
    for (j = 0; j < nk; j++)
        *l += s[j];
    return alpha;
}

#undef T
#undef V
#undef L
#undef SK_AT_MADD
#undef SK_AT_FN
#undef SK_AT_CAT
#undef SK_AT_CAT_
