/*
 * The GRU's fused element-wise passes, one row of one unit block at a time.
 *
 * Written in C rather than Cython only for `restrict`: the gate columns r, z, n
 * of a block sit side by side in one buffer, and without a promise that the
 * pointers do not overlap GCC would not vectorise these loops (checked with
 * -fopt-info-vec). The float version computes the activations and h' in double
 * and rounds once on store.
 * Plain arithmetic, no flag that changes NaN/Inf; see _mathfun.h for the
 * activations.
 *
 * Forward, per unit j of the block (gr, gz, gn hold the input projection on
 * entry and r, z, n on exit; q_* the recurrent product h W_hh^T):
 *   r = sigmoid(gr + qr)   z = sigmoid(gz + qz)   a = qn + b_hn
 *   n = tanh(gn + r a)     h' = (1 - z) n + z h
 * Backward, with g = carry (+ d_out) the gradient reaching h':
 *   dan = g (1 - z)(1 - n^2)   daz = g (h - n) z (1 - z)   dar = dan a r (1 - r)
 *   dgi = (dar, daz, dan)      dgh = (dar, daz, dan r)       carry := g z
 */
#ifndef SEQKERN_GRU_CELL_H
#define SEQKERN_GRU_CELL_H

#include "_mathfun.h"

#define SK_GRU_CELL(T, C, SUFFIX)                                        \
static inline void sk_gru_fwd_row_##SUFFIX(                                         \
    int w, T *restrict gr, T *restrict gz, T *restrict gn,                          \
    const T *restrict qr, const T *restrict qz, const T *restrict qn,               \
    const T *restrict bhn, const T *restrict hp, T *restrict out, T *restrict hn)   \
{                                                                                   \
    for (int j = 0; j < w; j++) {                                                   \
        C r = sk_sigmoid((C)gr[j] + qr[j]);                                   \
        C z = sk_sigmoid((C)gz[j] + qz[j]);                                   \
        T a = qn[j] + bhn[j];                                                       \
        C n = sk_tanh((C)gn[j] + r * a);                                            \
        out[j] = (T)((1 - z) * n + z * hp[j]);                                      \
        gr[j] = (T)r;                                                               \
        gz[j] = (T)z;                                                               \
        gn[j] = (T)n;                                                               \
        hn[j] = a;                                                                  \
    }                                                                               \
}                                                                                   \
                                                                                    \
static inline void sk_gru_bwd_row_##SUFFIX(                                         \
    int w, T *restrict carry, const T *restrict d_out,                              \
    const T *restrict gr, const T *restrict gz, const T *restrict gn,               \
    const T *restrict hn, const T *restrict hp,                                     \
    T *restrict dir, T *restrict diz, T *restrict din,                              \
    T *restrict dhr, T *restrict dhz, T *restrict dhn)                              \
{                                                                                   \
    if (d_out)                                                                      \
        for (int j = 0; j < w; j++)                                                 \
            carry[j] += d_out[j];                                                   \
    for (int j = 0; j < w; j++) {                                                   \
        T g = carry[j], r = gr[j], z = gz[j], n = gn[j];                            \
        T dan = g * (1 - z) * (1 - n * n);                                          \
        T daz = g * (hp[j] - n) * (z * (1 - z));                                    \
        T dar = dan * hn[j] * (r * (1 - r));                                        \
        dir[j] = dar;                                                               \
        diz[j] = daz;                                                               \
        din[j] = dan;                                                               \
        dhr[j] = dar;                                                               \
        dhz[j] = daz;                                                               \
        dhn[j] = dan * r;                                                           \
        carry[j] = g * z;                                                           \
    }                                                                               \
}

SK_GRU_CELL(float, double, f)
SK_GRU_CELL(double, double, d)

#undef SK_GRU_CELL

/*
 * Vector times matrix for batch 1, where a GEMM call degenerates into a GEMV that
 * BLAS runs well below what the cache allows:
 *   y[0:n] := beta * y[0:n] + sum_k x[k] * A[k, 0:n],   A row-major with row stride lda,
 * beta 0 or 1. Columns go in chunks of 8 vectors of 32 bytes, held in registers
 * (GCC vector extensions: plain C on any target) while k runs in order; so every
 * y[j] is summed in the same order whatever chunk it falls in, results do not
 * depend on how a caller splits the columns over threads, and nothing is
 * reassociated.
 */
typedef float sk_v8f __attribute__((vector_size(32), aligned(4)));
typedef double sk_v4d __attribute__((vector_size(32), aligned(8)));

#define SK_GRU_VECMAT(T, V, SUFFIX)                                                 \
static inline void sk_gru_vecmat_##SUFFIX(int n, int K, const T *restrict x,        \
                                          const T *restrict A, int lda, int beta,   \
                                          T *restrict y)                            \
{                                                                                   \
    enum { L = sizeof(V) / sizeof(T) };                                             \
    int j0 = 0;                                                                     \
    for (; j0 + 8 * L <= n; j0 += 8 * L) {                                          \
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0}; \
        if (beta) {                                                                 \
            const V *yv = (const V *)(y + j0);                                      \
            a0 = yv[0]; a1 = yv[1]; a2 = yv[2]; a3 = yv[3];                         \
            a4 = yv[4]; a5 = yv[5]; a6 = yv[6]; a7 = yv[7];                         \
        }                                                                           \
        for (int k = 0; k < K; k++) {                                               \
            const T xk = x[k];                                                      \
            const V *av = (const V *)(A + (size_t)k * lda + j0);                    \
            a0 += xk * av[0]; a1 += xk * av[1]; a2 += xk * av[2]; a3 += xk * av[3]; \
            a4 += xk * av[4]; a5 += xk * av[5]; a6 += xk * av[6]; a7 += xk * av[7]; \
        }                                                                           \
        V *yv = (V *)(y + j0);                                                      \
        yv[0] = a0; yv[1] = a1; yv[2] = a2; yv[3] = a3;                             \
        yv[4] = a4; yv[5] = a5; yv[6] = a6; yv[7] = a7;                             \
    }                                                                               \
    for (; j0 + L <= n; j0 += L) {                                                  \
        V a0 = {0};                                                                 \
        if (beta)                                                                   \
            a0 = *(const V *)(y + j0);                                              \
        for (int k = 0; k < K; k++)                                                 \
            a0 += x[k] * *(const V *)(A + (size_t)k * lda + j0);                    \
        *(V *)(y + j0) = a0;                                                        \
    }                                                                               \
    for (; j0 < n; j0++) {                                                          \
        T a0 = beta ? y[j0] : 0;                                                    \
        for (int k = 0; k < K; k++)                                                 \
            a0 += x[k] * A[(size_t)k * lda + j0];                                   \
        y[j0] = a0;                                                                 \
    }                                                                               \
}

SK_GRU_VECMAT(float, sk_v8f, f)
SK_GRU_VECMAT(double, sk_v4d, d)

#undef SK_GRU_VECMAT

#endif
