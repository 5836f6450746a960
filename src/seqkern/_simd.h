/*
 * The instruction set this translation unit is compiled for, as the compiler's
 * target macros give it (setup.py compiles the kernel modules once per level):
 *   SK_ISA     its name: "avx512", "avx2", "avx", "sse2", "neon" or "generic";
 *   SK_VBYTES  the bytes of one vector register (64, 32 or 16);
 *   SK_PACK_AUTO  1 where the recurrent kernels' products run on the packed GEMM
 *              (_packed_gemm.h) rather than BLAS by default: with AVX-512 or AVX2 +
 *              FMA, where it was measured faster than OpenBLAS's own kernels; not
 *              with SSE2, where OpenBLAS's were faster.
 */
#ifndef SEQKERN_SIMD_H
#define SEQKERN_SIMD_H

#if defined(__AVX512F__)
#define SK_ISA "avx512"
#define SK_VBYTES 64
#elif defined(__AVX2__) && defined(__FMA__)
#define SK_ISA "avx2"
#define SK_VBYTES 32
#elif defined(__AVX__)
#define SK_ISA "avx"
#define SK_VBYTES 32
#elif defined(__ARM_NEON) || defined(__aarch64__)
#define SK_ISA "neon"
#define SK_VBYTES 16
#elif defined(__SSE2__)
#define SK_ISA "sse2"
#define SK_VBYTES 16
#else
#define SK_ISA "generic"
#define SK_VBYTES 16
#endif

#if SK_VBYTES >= 32 && (defined(__FMA__) || defined(__AVX512F__))
#define SK_PACK_AUTO 1
#else
#define SK_PACK_AUTO 0
#endif

#endif
