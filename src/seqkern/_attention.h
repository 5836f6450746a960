/*
 * The C of the attention kernels (_attention.pyx keeps the loops, tasks and
 * threading): row helpers, the scores of one query against a tile of keys
 * (sk_row_dots), the register-blocked tile product (sk_gemm) and the online
 * softmax steps, for float (suffix _f) and double (_d); the body is written once
 * in _attention_impl.h and included once per type.
 *
 * Vectors are SK_VBYTES wide (_simd.h: 64 bytes with AVX-512, 32 with AVX2, 16
 * with SSE2 or NEON), one register of the ISA the module is compiled for, so
 * nothing spills into several registers. The reductions use GCC/Clang vector
 * extensions: a compiler will not vectorise a floating-point reduction by
 * itself without -ffast-math. Lanes are combined in a fixed order, so results
 * are deterministic. The element-wise loops are plain C and vectorise as they
 * are (sk_expf is branch-free and inline). Plain C arithmetic, no -ffast-math:
 * NaN and Inf propagate.
 */
#ifndef SEQKERN_ATTENTION_H
#define SEQKERN_ATTENTION_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_mathfun.h"
#include "_simd.h"

/* Vector arguments of the inline helpers: without AVX-512 GCC notes that their
 * (never used, all inlined) ABI differs. GCC emits that note at the end of the
 * translation unit, so the pragma cannot be popped at the end of this header. */
#pragma GCC diagnostic ignored "-Wpsabi"

#define SK_AT_VBYTES SK_VBYTES

/* The register tile of sk_gemm: SK_AT_MR rows x SK_AT_NV vectors of
 * accumulators, plus NV vectors of B and one broadcast of A in registers.
 * 8 x 2 where there are 32 vector registers (AVX-512, aarch64 NEON); 6 x 2 with
 * 16 (AVX2, SSE2): 12 accumulators + 2 + 1 (SSE2, with no fused multiply-add,
 * also holds the product: 16). */
#if SK_VBYTES >= 64 || defined(__aarch64__)
#define SK_AT_MR 8
#else
#define SK_AT_MR 6
#endif
#define SK_AT_NV 2

/* Whether the tile products run on BLAS rather than sk_gemm at this level (the
 * wrapper's default; the kernels take either, see _attention.pyx). Measured on
 * the benchmark's cases (forward and forward+backward, float32 and float64, one
 * thread), OpenBLAS's time / sk_gemm's:
 *   AVX-512  1.5-2.1 (decoding 0.95-1.3); 1.1-1.3 with OpenBLAS's own AVX-512
 *            kernels rather than the AVX2 ones: sk_gemm;
 *   AVX2     1.0-1.2 against OpenBLAS's AVX2 kernels: sk_gemm;
 *   SSE2     0.5-0.86 against its AVX2 kernels, 0.62-1.2 against its AVX ones,
 *            0.71-1.11 against its SSE ones (float32 favours sk_gemm there,
 *            float64 BLAS): BLAS, which uses what the CPU has beyond SSE2 (a CPU
 *            at this level may have AVX or FMA) and this module cannot.
 * Not measured (AVX without FMA, NEON, generic): BLAS, which picks kernels for
 * the CPU at run time. */
#if SK_VBYTES >= 32 && defined(__FMA__)
#define SK_AT_BLAS_PRODUCTS 0
#else
#define SK_AT_BLAS_PRODUCTS 1
#endif

/* c + a * b in one rounding where the target has a fused multiply-add, which
 * is where the compiler contracts the vector products' acc += a * b (sk_gemm,
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

typedef float sk_at_vf __attribute__((vector_size(SK_AT_VBYTES)));
typedef double sk_at_vd __attribute__((vector_size(SK_AT_VBYTES)));
typedef int sk_at_if __attribute__((vector_size(SK_AT_VBYTES)));
typedef long long sk_at_id __attribute__((vector_size(SK_AT_VBYTES)));

#define SK_AT_T float
#define SK_AT_V sk_at_vf
#define SK_AT_IV sk_at_if
#define SK_AT_L (SK_AT_VBYTES / 4)
#define SK_AT_EXP sk_expf
#define SK_AT_SUF f
#include "_attention_impl.h"
#undef SK_AT_T
#undef SK_AT_V
#undef SK_AT_IV
#undef SK_AT_L
#undef SK_AT_EXP
#undef SK_AT_SUF

#define SK_AT_T double
#define SK_AT_V sk_at_vd
#define SK_AT_IV sk_at_id
#define SK_AT_L (SK_AT_VBYTES / 8)
#define SK_AT_EXP sk_exp_flush
#define SK_AT_SUF d
#include "_attention_impl.h"
#undef SK_AT_T
#undef SK_AT_V
#undef SK_AT_IV
#undef SK_AT_L
#undef SK_AT_EXP
#undef SK_AT_SUF

#endif
