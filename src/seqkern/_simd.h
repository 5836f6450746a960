/*
 * The instruction set this translation unit is compiled for, as the compiler's
 * target macros give it (setup.py compiles the kernel modules once per level):
 *   SK_ISA     its name: "avx512", "avx2", "avx", "sse2", "neon" or "generic";
 *   SK_VBYTES  the bytes of one vector register (64, 32 or 16);
 *   SK_WIDE    1 where a 64-byte vector is one register (AVX-512), the width the
 *              hand-written packed GEMM (_packed_gemm.h) is written for: elsewhere
 *              the kernels' products go to BLAS unless a caller forces otherwise.
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

#define SK_WIDE (SK_VBYTES >= 64)

#endif
