/*
 * Body of _packed_gemm.h for one element type; included once per type with
 * SK_T (element), SK_V (vector of SK_T), SK_VL (its lanes), SK_SUF (name suffix).
 * Read _packed_gemm.h first.
 */
#define SK_CAT_(a, b) a##b
#define SK_CAT(a, b) SK_CAT_(a, b)
#define SK_FN(name) SK_CAT(name, SK_SUF)
#define SK_NR (4 * SK_VL)

/* Elements of the packed form of a (K, N) operand: ceil(N / NR) panels of K x NR. */
static inline size_t SK_FN(sk_pk_size_)(int N, int K)
{
    size_t np = (size_t)((N + SK_NR - 1) / SK_NR);
    return np * (size_t)(K > 0 ? K : 0) * SK_NR;
}

static inline SK_V SK_FN(sk_pk_ld_)(const SK_T *p) { return *(const SK_V *)p; }

/* s in every lane (one broadcast instruction: a loop over the lanes becomes
 * masked partial broadcasts). */
#define SK_BC2 s, s
#define SK_BC4 SK_BC2, SK_BC2
#define SK_BC8 SK_BC4, SK_BC4
static inline __attribute__((always_inline)) SK_V SK_FN(sk_pk_bc_)(SK_T s)
{
#if SK_VL == 16
    return (SK_V){SK_BC8, SK_BC8};
#elif SK_VL == 8
    return (SK_V){SK_BC8};
#elif SK_VL == 4
    return (SK_V){SK_BC4};
#else
    return (SK_V){SK_BC2};
#endif
}
#undef SK_BC2
#undef SK_BC4
#undef SK_BC8

/* Transpose the SK_VL x SK_VL tile held in v[0..SK_VL) in place: log2(SK_VL)
 * stages, the stage of distance d swapping bit d of the row index with bit d of
 * the column index through two-vector shuffles (one vpermt2ps/pd each with
 * AVX-512). The index vectors are literals so that GCC sees constant shuffles. */
#define SK_TR_STAGE(d, m0, m1)                                                   \
    _Pragma("GCC unroll 16")                                                     \
    for (int r = 0; r < SK_VL; r++) {                                            \
        if (r & (d))                                                             \
            continue;                                                            \
        SK_V a = v[r], b = v[r + (d)];                                           \
        v[r] = __builtin_shuffle(a, b, m0);                                      \
        v[r + (d)] = __builtin_shuffle(a, b, m1);                                \
    }
/* element c of the two index vectors of stage d */
#define SK_M0(c, d) (((c) & (d)) ? SK_VL + (c) - (d) : (c))
#define SK_M1(c, d) (((c) & (d)) ? SK_VL + (c) : (c) + (d))
#define SK_IDX2(M, o, d) M(o, d), M(o + 1, d)
#define SK_IDX4(M, o, d) SK_IDX2(M, o, d), SK_IDX2(M, o + 2, d)
#define SK_IDX8(M, o, d) SK_IDX4(M, o, d), SK_IDX4(M, o + 4, d)
#if SK_VL == 16
#define SK_IDX(M, d) ((SK_IV){SK_IDX8(M, 0, d), SK_IDX8(M, 8, d)})
#elif SK_VL == 8
#define SK_IDX(M, d) ((SK_IV){SK_IDX8(M, 0, d)})
#elif SK_VL == 4
#define SK_IDX(M, d) ((SK_IV){SK_IDX4(M, 0, d)})
#else
#define SK_IDX(M, d) ((SK_IV){SK_IDX2(M, 0, d)})
#endif
static inline __attribute__((always_inline)) void SK_FN(sk_pk_transpose_)(SK_V *v)
{
#if SK_VL >= 16
    SK_TR_STAGE(8, SK_IDX(SK_M0, 8), SK_IDX(SK_M1, 8))
#endif
#if SK_VL >= 8
    SK_TR_STAGE(4, SK_IDX(SK_M0, 4), SK_IDX(SK_M1, 4))
#endif
#if SK_VL >= 4
    SK_TR_STAGE(2, SK_IDX(SK_M0, 2), SK_IDX(SK_M1, 2))
#endif
    SK_TR_STAGE(1, SK_IDX(SK_M0, 1), SK_IDX(SK_M1, 1))
}
#undef SK_TR_STAGE
#undef SK_M0
#undef SK_M1
#undef SK_IDX2
#undef SK_IDX4
#undef SK_IDX8
#undef SK_IDX

/* Pack W (N, K) row-major (row stride ldw), the operand of A @ W^T:
 * P[p][k][j] = W[p NR + j][k], 0 past N. Whole SK_VL x SK_VL tiles go through
 * registers (SK_VL-wide loads, a transpose, SK_VL-wide stores); element by
 * element, the stores land NR elements apart and the packing of a 512 x 128
 * float W took ~25 us, as long as a whole time step at B = 1. */
static void SK_FN(sk_pk_pack_nt_)(int N, int K, const SK_T *restrict W, ptrdiff_t ldw,
                                  SK_T *restrict P)
{
    int np = (N + SK_NR - 1) / SK_NR;
    int kt = K / SK_VL * SK_VL;                 /* k < kt: in whole tiles */
    for (int p = 0; p < np; p++) {
        SK_T *restrict Pp = P + (ptrdiff_t)p * K * SK_NR;
        int nr = N - p * SK_NR < SK_NR ? N - p * SK_NR : SK_NR;
        for (int j0 = 0; j0 < SK_NR; j0 += SK_VL) {
            if (j0 + SK_VL > nr)                /* ragged or empty rows: below */
                break;
            const SK_T *w = W + (ptrdiff_t)(p * SK_NR + j0) * ldw;
            for (int k0 = 0; k0 < kt; k0 += SK_VL) {
                SK_V v[SK_VL];
                for (int i = 0; i < SK_VL; i++)
                    v[i] = SK_FN(sk_pk_ld_)(w + (ptrdiff_t)i * ldw + k0);
                SK_FN(sk_pk_transpose_)(v);
                for (int i = 0; i < SK_VL; i++)
                    *(SK_V *)(Pp + (ptrdiff_t)(k0 + i) * SK_NR + j0) = v[i];
            }
            for (int j = j0; j < j0 + SK_VL; j++)
                for (ptrdiff_t k = kt; k < K; k++)
                    Pp[k * SK_NR + j] = W[(ptrdiff_t)(p * SK_NR + j) * ldw + k];
        }
        for (int j = nr / SK_VL * SK_VL; j < SK_NR; j++) {
            const SK_T *restrict w = W + (ptrdiff_t)(p * SK_NR + j) * ldw;
            if (j < nr)
                for (ptrdiff_t k = 0; k < K; k++) Pp[k * SK_NR + j] = w[k];
            else
                for (ptrdiff_t k = 0; k < K; k++) Pp[k * SK_NR + j] = 0;
        }
    }
}

/* Pack W (K, N) row-major (row stride ldw), the operand of A @ W:
 * P[p][k][j] = W[k][p NR + j], 0 past N. */
static void SK_FN(sk_pk_pack_nn_)(int K, int N, const SK_T *restrict W, ptrdiff_t ldw,
                                  SK_T *restrict P)
{
    int np = (N + SK_NR - 1) / SK_NR;
    for (int p = 0; p < np; p++) {
        SK_T *restrict Pp = P + (ptrdiff_t)p * K * SK_NR;
        int nr = N - p * SK_NR < SK_NR ? N - p * SK_NR : SK_NR;
        for (ptrdiff_t k = 0; k < K; k++) {
            const SK_T *restrict w = W + k * ldw + p * SK_NR;
            for (int j = 0; j < nr; j++) Pp[k * SK_NR + j] = w[j];
            for (int j = nr; j < SK_NR; j++) Pp[k * SK_NR + j] = 0;
        }
    }
}

/* Write one row of a tile: c[j0:j1] (+)= acc[j0:j1], acc the NR sums of the row. */
static inline __attribute__((always_inline)) void
SK_FN(sk_pk_store_)(SK_T *restrict c, SK_V a0, SK_V a1, SK_V a2, SK_V a3,
                    int j0, int j1, int accumulate)
{
    if (j0 == 0 && j1 == SK_NR) {
        SK_V *cv = (SK_V *)c;
        if (accumulate) {
            cv[0] += a0; cv[1] += a1; cv[2] += a2; cv[3] += a3;
        } else {
            cv[0] = a0; cv[1] = a1; cv[2] = a2; cv[3] = a3;
        }
        return;
    }
    SK_V a[4] = {a0, a1, a2, a3};
    if (accumulate)
        for (int j = j0; j < j1; j++) c[j] += a[j / SK_VL][j % SK_VL];
    else
        for (int j = j0; j < j1; j++) c[j] = a[j / SK_VL][j % SK_VL];
}


/* Tile of up to SK_PK_MR rows x one panel: for r < mr, c[r][j0:j1] (+)= sum_k
 * a_r[k] w[k][j0:j1], the sum over k in order, one accumulator per element. Rows
 * past mr repeat row 0 (computed, never stored). The rows are written out by the
 * X-macro SK_PK_TILE_ROWS, so that the accumulators stay plain locals. */
#if SK_PK_MR == 4
#define SK_PK_TILE_ROWS(X) X(0) X(1) X(2) X(3)
#else
#define SK_PK_TILE_ROWS(X) X(0) X(1)
#endif
#define SK_PK_ROW_DECL(r)                                                          \
    const SK_T *restrict a##r = a + (mr > r ? r * lda : 0);                        \
    SK_V c##r##0 = z, c##r##1 = z, c##r##2 = z, c##r##3 = z;
#define SK_PK_ROW_FMA4(r)                                                          \
    {                                                                              \
        SK_V x = SK_FN(sk_pk_bc_)(a##r[k]);                                        \
        c##r##0 += x * w0; c##r##1 += x * w1; c##r##2 += x * w2; c##r##3 += x * w3; \
    }
#define SK_PK_ROW_STORE(r)                                                         \
    if (mr > r)                                                                    \
        SK_FN(sk_pk_store_)(c + r * ldc, c##r##0, c##r##1, c##r##2, c##r##3, j0, j1, accumulate);
static inline __attribute__((always_inline)) void
SK_FN(sk_pk_tile_)(ptrdiff_t K, const SK_T *restrict a, ptrdiff_t lda,
                   int mr, const SK_T *restrict w, SK_T *restrict c, ptrdiff_t ldc,
                   int j0, int j1, int accumulate)
{
    SK_V z = {0};
    SK_PK_TILE_ROWS(SK_PK_ROW_DECL)
    for (ptrdiff_t k = 0; k < K; k++) {
        const SK_T *wk = w + k * SK_NR;
        SK_V w0 = SK_FN(sk_pk_ld_)(wk), w1 = SK_FN(sk_pk_ld_)(wk + SK_VL);
        SK_V w2 = SK_FN(sk_pk_ld_)(wk + 2 * SK_VL), w3 = SK_FN(sk_pk_ld_)(wk + 3 * SK_VL);
        SK_PK_IN_REGS(w0, w1, w2, w3);
        SK_PK_TILE_ROWS(SK_PK_ROW_FMA4)
    }
    SK_PK_TILE_ROWS(SK_PK_ROW_STORE)
}
#undef SK_PK_ROW_DECL
#undef SK_PK_ROW_FMA4
#undef SK_PK_ROW_STORE
#undef SK_PK_TILE_ROWS

/* One k of a one-row product over a panel: (c0..c3) += x * the panel row at wk
 * (a macro, not a function, so that the accumulators stay plain locals). */
#define SK_PK_ROW_FMA(x, wk, c0, c1, c2, c3)                                       \
    do {                                                                           \
        c0 += (x) * SK_FN(sk_pk_ld_)(wk);                                          \
        c1 += (x) * SK_FN(sk_pk_ld_)((wk) + SK_VL);                                \
        c2 += (x) * SK_FN(sk_pk_ld_)((wk) + 2 * SK_VL);                            \
        c3 += (x) * SK_FN(sk_pk_ld_)((wk) + 3 * SK_VL);                            \
    } while (0)

/* One row x one panel (M = 1): the k sum split into even and odd k, (even + odd) at
 * the end, so that two FMA chains per vector hide the FMA latency. */
static inline void SK_FN(sk_pk_tile1_)(ptrdiff_t K, const SK_T *restrict a,
                                       const SK_T *restrict w, SK_T *restrict c,
                                       int j0, int j1, int accumulate)
{
    SK_V z = {0};
    SK_V c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z;
    ptrdiff_t k = 0;
    for (; k + 1 < K; k += 2) {
        const SK_T *wk = w + k * SK_NR;
        SK_V x = SK_FN(sk_pk_bc_)(a[k]), y = SK_FN(sk_pk_bc_)(a[k + 1]);
        SK_PK_ROW_FMA(x, wk, c00, c01, c02, c03);
        SK_PK_ROW_FMA(y, wk + SK_NR, c10, c11, c12, c13);
    }
    if (k < K) {
        SK_V x = SK_FN(sk_pk_bc_)(a[k]);
        SK_PK_ROW_FMA(x, w + k * SK_NR, c00, c01, c02, c03);
    }
    SK_FN(sk_pk_store_)(c, c00 + c10, c01 + c11, c02 + c12, c03 + c13, j0, j1, accumulate);
}

/* C[:, n0:n1] (+)= A @ W[:, n0:n1]: A (M, K) row-major (row stride lda), W the (K, N)
 * operand packed by sk_pk_pack_nt_ / sk_pk_pack_nn_ (P), C (M, N) row-major (row
 * stride ldc). accumulate: 1 adds to C, 0 overwrites it. Each element is
 * (C +) sum_k A[i][k] W[k][j], summed in an order fixed by K and by whether M == 1,
 * never by [n0, n1): any split of the columns gives bitwise the same C.
 * reverse: visit the panels last to first (same sums). A recurrence that calls
 * this every step with W larger than L1 and alternates the direction finds the
 * panels it read last still in L1 (measured: M = 1, K = 64, N = 256 float32,
 * 0.62 -> 0.51 us per call). */
static void SK_FN(sk_pk_gemm_dir_)(int M, int K, const SK_T *restrict A, ptrdiff_t lda,
                                   const SK_T *restrict P, SK_T *restrict C, ptrdiff_t ldc,
                                   int n0, int n1, int accumulate, int reverse)
{
    if (M <= 0 || n1 <= n0)
        return;
    if (K < 0)
        K = 0;
    int p_first = n0 / SK_NR, p_last = (n1 - 1) / SK_NR;
    for (int q = 0; q <= p_last - p_first; q++) {
        int p = reverse ? p_last - q : p_first + q;
        const SK_T *restrict w = P + (ptrdiff_t)p * K * SK_NR;
        int j0 = n0 > p * SK_NR ? n0 - p * SK_NR : 0;
        int j1 = n1 < (p + 1) * SK_NR ? n1 - p * SK_NR : SK_NR;
        SK_T *restrict c = C + p * SK_NR;
        if (M == 1) {
            SK_FN(sk_pk_tile1_)(K, A, w, c, j0, j1, accumulate);
            continue;
        }
        for (int i = 0; i < M; i += SK_PK_MR)
            SK_FN(sk_pk_tile_)(K, A + (ptrdiff_t)i * lda, lda, M - i < SK_PK_MR ? M - i : SK_PK_MR,
                               w, c + (ptrdiff_t)i * ldc, ldc, j0, j1, accumulate);
    }
}

/* dst[0:l] = v[0:l], l < SK_VL, with no call (a call to memcpy would clobber every
 * vector register, and GCC then spills the accumulators of sk_pk_gemv_side_ around
 * its whole side path); sk_pk_load_part_ the other way (0 past l). */
static inline __attribute__((always_inline)) void
SK_FN(sk_pk_store_part_)(SK_T *restrict dst, SK_V v, int l)
{
    _Pragma("GCC unroll 16")
    for (int j = 0; j < SK_VL; j++)
        if (j < l)
            dst[j] = v[j];
}

static inline __attribute__((always_inline)) SK_V
SK_FN(sk_pk_load_part_)(const SK_T *restrict src, int l)
{
    SK_V v = {0};
    _Pragma("GCC unroll 16")
    for (int j = 0; j < SK_VL; j++)
        if (j < l)
            v[j] = src[j];
    return v;
}

/* The side operand of sk_pk_gemv_side_: S[k][r] = A[r][k] for r < m, 0 for
 * m <= r < SK_PK_SIDE_ROWS; A (m, K) row-major (row stride lda), S (K, SK_PK_SIDE_ROWS). */
static void SK_FN(sk_pk_pack_side_)(int m, int K, const SK_T *restrict A, ptrdiff_t lda,
                                    SK_T *restrict S)
{
    for (ptrdiff_t k = 0; k < K; k++)
        for (int r = 0; r < SK_PK_SIDE_ROWS; r++)
            S[k * SK_PK_SIDE_ROWS + r] = r < m ? A[r * lda + k] : 0;
}

/* A one-row product and, interleaved with it, an independent "side" product.
 *
 * Row product: c[0:N] (+)= a @ W, a (K,), W the (K, N) operand packed in P, panels
 * last to first if reverse; each element summed over k in order (one chain: not
 * the even/odd split of sk_pk_gemm_dir_ at M = 1, so the two differ in rounding;
 * pair: that split, the same sums as sk_pk_gemm_dir_'s, and two chains of FMAs
 * where one would wait on the FMA latency: a step's product over one panel).
 * Side product: for each vector column v (columns v VL .. v VL + VL - 1),
 * C2[r][v VL + l] := sum_k A2[r][k] W2[k][v VL + l] for r < m2 <= SK_PK_SIDE_ROWS,
 * over k in order; A2 given as S (sk_pk_pack_side_), W2 the (K2, N2) operand packed
 * in P2, C2 row stride ldc2; columns past N2 are not stored. The call runs the
 * k-steps [s0, s1) of these sums, numbered v K2 + k (v = 0, 1, .. and k < K2; one
 * step a column where K2 <= 0, whose columns are 0): whole columns from v0 to v1
 * are s0 = v0 K2, s1 = v1 K2, and a column cut between two calls keeps its
 * partial sums in C2 in between (stored, then loaded and added to in order: the
 * same sums as in one call).
 *
 * Why: with W larger than L1 the row product is bound by reading W from L2 (one
 * vector FMA per 64 bytes, ~32 bytes per cycle here) and leaves the FMA units
 * mostly idle, while the side product (SK_PK_SIDE_ROWS FMAs per 64 bytes of W2) is
 * bound by the FMAs. A batch-1 recurrence spends every step on the first; the
 * input projection of later steps is the second. Interleaved step by step (the
 * side product advancing in proportion), each can run in the other's idle units:
 * how much it hides depends on the core (its loads in flight, what its L2 holds),
 * so the recurrent kernels take it only where a caller forces the packed GEMM. */
static void SK_FN(sk_pk_gemv_side_)(int K, const SK_T *restrict a, const SK_T *restrict P,
                                    int N, SK_T *restrict c, int accumulate, int reverse,
                                    int pair,
                                    int K2, const SK_T *restrict S, const SK_T *restrict P2,
                                    int N2, SK_T *restrict C2, ptrdiff_t ldc2, int m2,
                                    long long s0, long long s1)
{
    int np = N > 0 ? (N + SK_NR - 1) / SK_NR : 0;      /* panels visited */
    if (K < 0)
        K = 0;
    if (K2 <= 0 && m2 > 0) {                /* empty sums: the columns are 0 */
        for (int u = (int)s0; u < s1; u++) {
            int j0 = u * SK_VL, j1 = j0 + SK_VL < N2 ? j0 + SK_VL : N2;
            for (int r = 0; r < m2; r++)
                for (int j = j0; j < j1; j++)
                    C2[r * ldc2 + j] = 0;
        }
    }
    long long tg = (long long)np * K;
    long long ts = (s1 > s0 && K2 > 0 && m2 > 0) ? s1 - s0 : 0;
    long long g = 0, s = 0;
    int v = ts ? (int)(s0 / K2) : 0, k2 = ts ? (int)(s0 % K2) : 0;
    SK_V z = {0};
    SK_V acc[SK_PK_SIDE_ROWS];
    /* the width of column v in C2 (< SK_VL: the last, partial one) */
#define SK_SIDE_WIDTH() (N2 - v * SK_VL < SK_VL ? N2 - v * SK_VL : SK_VL)
    _Pragma("GCC unroll 16")
    for (int r = 0; r < SK_PK_SIDE_ROWS; r++) {     /* a cut column: its partial sums */
        acc[r] = z;
        if (k2 > 0 && r < m2) {
            const SK_T *src = C2 + r * ldc2 + (ptrdiff_t)v * SK_VL;
            int l = SK_SIDE_WIDTH();
            acc[r] = l == SK_VL ? SK_FN(sk_pk_ld_)(src) : SK_FN(sk_pk_load_part_)(src, l);
        }
    }

    /* column v of W2: panel v / 4, vector v % 4 of its rows */
#define SK_SIDE_COL(v) (P2 + (ptrdiff_t)((v) / 4) * K2 * SK_NR + ((v) % 4) * SK_VL)
    const SK_T *restrict w2 = SK_SIDE_COL(v) + (ptrdiff_t)k2 * SK_NR;
    const SK_T *restrict sk = S + (ptrdiff_t)k2 * SK_PK_SIDE_ROWS;

/* C2's rows of column v := acc (rows < m2) */
#define SK_SIDE_STORE()                                                            \
    do {                                                                           \
        int l = SK_SIDE_WIDTH();                                                   \
        _Pragma("GCC unroll 16")                                                   \
        for (int r = 0; r < SK_PK_SIDE_ROWS; r++) {                                \
            if (r < m2) {                                                          \
                SK_T *dst = C2 + r * ldc2 + (ptrdiff_t)v * SK_VL;                  \
                if (l == SK_VL)                                                    \
                    *(SK_V *)dst = acc[r];                                         \
                else                                                               \
                    SK_FN(sk_pk_store_part_)(dst, acc[r], l);                      \
            }                                                                      \
        }                                                                          \
    } while (0)

/* One k of the side product; at the end of a vector column, its store. */
#define SK_SIDE_STEP()                                                             \
    do {                                                                           \
        SK_V wv = SK_FN(sk_pk_ld_)(w2);                                            \
        _Pragma("GCC unroll 16")                                                   \
        for (int r = 0; r < SK_PK_SIDE_ROWS; r++)                                  \
            acc[r] += SK_FN(sk_pk_bc_)(sk[r]) * wv;                                \
        w2 += SK_NR;                                                               \
        sk += SK_PK_SIDE_ROWS;                                                     \
        if (++k2 == K2) {                                                          \
            SK_SIDE_STORE();                                                       \
            _Pragma("GCC unroll 16")                                               \
            for (int r = 0; r < SK_PK_SIDE_ROWS; r++)                              \
                acc[r] = z;                                                        \
            k2 = 0;                                                                \
            v++;                                                                   \
            w2 = SK_SIDE_COL(v);                                                   \
            sk = S;                                                                \
        }                                                                          \
        s++;                                                                       \
    } while (0)

    for (int q = 0; q < np; q++) {
        int p = reverse ? np - 1 - q : q;
        const SK_T *restrict w = P + (ptrdiff_t)p * K * SK_NR;
        SK_V c0 = z, c1 = z, c2 = z, c3 = z;
        SK_V d0 = z, d1 = z, d2 = z, d3 = z;        /* pair: odd k (tile1's sums) */
        ptrdiff_t k = 0;
        for (; pair && k + 1 < K; k += 2) {
            SK_V x = SK_FN(sk_pk_bc_)(a[k]), y = SK_FN(sk_pk_bc_)(a[k + 1]);
            SK_PK_ROW_FMA(x, w + k * SK_NR, c0, c1, c2, c3);
            SK_PK_ROW_FMA(y, w + (k + 1) * SK_NR, d0, d1, d2, d3);
            g += 2;
            while (s * tg < g * ts)
                SK_SIDE_STEP();
        }
        for (; k < K; k++) {                /* all k, or pair's last odd one */
            SK_V x = SK_FN(sk_pk_bc_)(a[k]);
            SK_PK_ROW_FMA(x, w + k * SK_NR, c0, c1, c2, c3);
            g++;
            while (s * tg < g * ts)
                SK_SIDE_STEP();
        }
        if (pair) {
            c0 += d0; c1 += d1; c2 += d2; c3 += d3;
        }
        int j1 = N - p * SK_NR < SK_NR ? N - p * SK_NR : SK_NR;
        SK_FN(sk_pk_store_)(c + (ptrdiff_t)p * SK_NR, c0, c1, c2, c3, 0, j1, accumulate);
    }
    while (s < ts)
        SK_SIDE_STEP();
    if (ts && k2 > 0)                       /* a column cut here: its partial sums */
        SK_SIDE_STORE();
#undef SK_SIDE_STEP
#undef SK_SIDE_STORE
#undef SK_SIDE_WIDTH
#undef SK_SIDE_COL
}

#undef SK_PK_ROW_FMA
#undef SK_NR
#undef SK_FN
#undef SK_CAT
#undef SK_CAT_
