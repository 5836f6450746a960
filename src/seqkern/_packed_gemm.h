/*
 * A register-blocked GEMM on a right-hand operand packed once, for the
 * recurrent kernels' per-step products C (B, N) += h (B, K) @ W, where W is the
 * same at every step. OpenBLAS packs W again inside every call (sgemm_incopy
 * was ~16% of the LSTM forward); here the caller packs W once per kernel call.
 *
 * Layout: W (K, N) is cut into panels of NR = 4 vectors (SK_VBYTES bytes each,
 * _simd.h: 64 with AVX-512, 32 with AVX2, 16 with SSE2 or NEON) of columns; panel
 * p holds W[k][p NR + j] at P[(p K + k) NR + j], zero past N. The micro-kernel
 * keeps an MR-row x NR tile of C in 4 MR vector registers (MR = 4 where there
 * are 32 vector registers, AVX-512 and NEON; 2 with AVX2's or SSE2's 16) and
 * streams the panel once per MR rows of A.
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
 * where W is larger than L1) interleaved with an independent product of
 * SK_PK_SIDE_ROWS rows (bound by the FMAs), so that each uses the units the other
 * leaves idle: a batch-1 recurrent step and the input projection of later steps.
 *
 * Plain C arithmetic (no -ffast-math): NaN and Inf propagate. Padding columns
 * may compute 0 * Inf = NaN, but they are never stored. Loads and stores are
 * unaligned-safe (the vector types are declared with element alignment), so any
 * pointers and strides work. GCC vector extensions, one vector one register of
 * the ISA the module is compiled for. */
#ifndef SEQKERN_PACKED_GEMM_H
#define SEQKERN_PACKED_GEMM_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "_simd.h"

/* Vector arguments of the inline helpers: without AVX-512 GCC notes that their
 * (never used, all inlined) ABI differs. GCC emits that note at the end of the
 * translation unit, so the pragma cannot be popped at the end of this header. */
#pragma GCC diagnostic ignored "-Wpsabi"

#define SK_PK_VBYTES SK_VBYTES
typedef float sk_pk_vf __attribute__((vector_size(SK_PK_VBYTES), aligned(4), may_alias));
typedef double sk_pk_vd __attribute__((vector_size(SK_PK_VBYTES), aligned(8), may_alias));
/* Shuffle indices for the tile transpose of the packers. */
typedef int sk_pk_if __attribute__((vector_size(SK_PK_VBYTES)));
typedef long long sk_pk_id __attribute__((vector_size(SK_PK_VBYTES)));

/* Rows of the register tile: 4 x 4 vectors of accumulators need 32 registers. */
#if SK_VBYTES >= 64 || defined(__aarch64__)
#define SK_PK_MR 4
#else
#define SK_PK_MR 2
#endif

/* Keep the four panel vectors of a k step in registers: without this GCC folds
 * each load into its FMAs (4 MR vector loads per k instead of 4), and the
 * loads, not the FMAs, then bound the loop. An empty asm that "modifies" them
 * forces one load each. */
#if defined(__GNUC__) && defined(__AVX512F__)
#define SK_PK_IN_REGS(a, b, c, d) __asm__("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d))
#elif defined(__GNUC__) && (defined(__SSE2__) || defined(__AVX__))
#define SK_PK_IN_REGS(a, b, c, d) __asm__("" : "+x"(a), "+x"(b), "+x"(c), "+x"(d))
#elif defined(__GNUC__) && defined(__aarch64__)
#define SK_PK_IN_REGS(a, b, c, d) __asm__("" : "+w"(a), "+w"(b), "+w"(c), "+w"(d))
#else
#define SK_PK_IN_REGS(a, b, c, d) ((void)0)
#endif

/* Rows of the side product of sk_pk_gemv_side_{f,d}: one accumulator each, beside
 * the row product's 4 (8 with pair) and a panel vector and broadcasts: 16 where
 * there are 32 vector registers (AVX-512, NEON), 8 where there are 16 (with pair,
 * forced only there, some spill). */
#if SK_VBYTES >= 64 || defined(__aarch64__)
#define SK_PK_SIDE_ROWS 16
#else
#define SK_PK_SIDE_ROWS 8
#endif

#define SK_T float
#define SK_V sk_pk_vf
#define SK_IV sk_pk_if
#define SK_VL (SK_PK_VBYTES / 4)
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
#define SK_VL (SK_PK_VBYTES / 8)
#define SK_SUF d
#include "_packed_gemm_impl.h"
#undef SK_T
#undef SK_V
#undef SK_IV
#undef SK_VL
#undef SK_SUF

#endif
