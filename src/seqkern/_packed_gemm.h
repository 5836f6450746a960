/*
 * A register-blocked GEMM on a right-hand operand packed once, for the
 * recurrent kernels' per-step products C (B, N) += h (B, K) @ W, where W is the
 * same at every step. OpenBLAS packs W again inside every call (sgemm_incopy
 * was ~16% of the LSTM forward); here the caller packs W once per kernel call.
 *
 * Layout: W (K, N) is cut into panels of NR = 4 vectors of 64 bytes (64 floats
 * or 32 doubles) of columns; panel p holds W[k][p NR + j] at P[(p K + k) NR + j],
 * zero past N. The micro-kernel keeps a 4-row x NR tile of C in 16 vector
 * registers and streams the panel once per 4 rows of A.
 *
 * Two packers: sk_pk_pack_nt_{f,d} takes W given as (N, K) row-major (for
 * A @ W^T, the forward's h @ W_hh^T), sk_pk_pack_nn_{f,d} takes W given as
 * (K, N) row-major (for A @ W, the backward's dz @ W_hh).
 *
 * sk_pk_gemm_dir_{f,d}(M, K, A, lda, P, C, ldc, n0, n1, accumulate, reverse)
 * computes columns [n0, n1) only (visiting the panels last to first if reverse), so threads can split a product by column ranges; every element
 * is summed over k in an order that depends only on K and on M == 1, so the
 * result does not depend on the split (1 thread == N threads, bitwise).
 *
 * sk_pk_gemv_side_{f,d} runs a one-row product (M = 1, bound by reading W from L2
 * where W is larger than L1) interleaved with an independent 16-row product
 * (bound by the FMAs), so that each uses the units the other leaves idle: the
 * batch-1 LSTM step and the input projection of later steps.
 *
 * Plain C arithmetic (no -ffast-math): NaN and Inf propagate. Padding columns
 * may compute 0 * Inf = NaN, but they are never stored. Loads and stores are
 * unaligned-safe (the vector types are declared with element alignment), so any
 * pointers and strides work. GCC vector extensions: with -march=native on an
 * AVX-512 CPU a vector is one zmm register; elsewhere GCC splits it (correct,
 * slower).
 */
#ifndef SEQKERN_PACKED_GEMM_H
#define SEQKERN_PACKED_GEMM_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Vector arguments of the inline helpers: without AVX-512 GCC notes that their
 * (never used, all inlined) ABI differs. GCC emits that note at the end of the
 * translation unit, so the pragma cannot be popped at the end of this header. */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float sk_pk_vf __attribute__((vector_size(64), aligned(4), may_alias));
typedef double sk_pk_vd __attribute__((vector_size(64), aligned(8), may_alias));
/* Shuffle indices for the tile transpose of the packers. */
typedef int sk_pk_if __attribute__((vector_size(64)));
typedef long long sk_pk_id __attribute__((vector_size(64)));

static inline sk_pk_vf sk_pk_bc_f(float s)
{
    return (sk_pk_vf){s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
}

static inline sk_pk_vd sk_pk_bc_d(double s)
{
    return (sk_pk_vd){s, s, s, s, s, s, s, s};
}

/* Keep the four panel vectors of a k step in registers: without this GCC folds
 * each load into its four FMAs (16 vector loads per k instead of 4), and the
 * loads, not the FMAs, then bound the loop. An empty asm that "modifies" them
 * forces one load each. Only where a 64-byte vector is one register. */
#if defined(__AVX512F__) && defined(__GNUC__)
#define SK_PK_IN_REGS(a, b, c, d) __asm__("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d))
#else
#define SK_PK_IN_REGS(a, b, c, d) ((void)0)
#endif

/* Rows of the side product of sk_pk_gemv_side_{f,d}: one accumulator each. */
#define SK_PK_SIDE_ROWS 16

#define SK_T float
#define SK_V sk_pk_vf
#define SK_IV sk_pk_if
#define SK_VL 16
#define SK_SUF f
#include "_packed_gemm_impl.h"
#undef SK_T
#undef SK_V
#undef SK_IV
#undef SK_VL
#undef SK_SUF

#define SK_T double
#define SK_V sk_pk_vd
#define SK_IV sk_pk_id
#define SK_VL 8
#define SK_SUF d
#include "_packed_gemm_impl.h"
#undef SK_T
#undef SK_V
#undef SK_IV
#undef SK_VL
#undef SK_SUF

#endif
