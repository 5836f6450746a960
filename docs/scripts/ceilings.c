/*
 * Two ceilings of one core, against which docs/benchmarks.md weighs the recurrent
 * kernels' batch-1 and batch-32 figures:
 *   - the FMA peak: independent FMA chains on registers only (float32 AVX-512,
 *     float32 and float64 AVX2), in GFLOP/s;
 *   - the read rate of a buffer read pass after pass, the direction alternating
 *     from pass to pass, as a batch-1 step reads W_hh (128 KiB: a float64 RNN's
 *     W_hh at H = 128; 1 MiB: a float32 LSTM's at H = 256; 2 MiB), in us a pass.
 * Best of 5 rounds each. x86-64 only; the AVX-512 rows only where the CPU has it.
 *
 *   gcc -O2 -o /tmp/ceilings docs/scripts/ceilings.c && /tmp/ceilings
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static volatile double sink;

/* 10 independent chains a = a x + y: more than FMA latency x FMA units in flight */
#define FMA_PEAK(T, SET, FMA, LANES)                                                 \
    double best = 0;                                                                 \
    for (int r = 0; r < 5; r++) {                                                    \
        T a0 = SET(0), a1 = SET(1), a2 = SET(2), a3 = SET(3), a4 = SET(4);           \
        T a5 = SET(5), a6 = SET(6), a7 = SET(7), a8 = SET(8), a9 = SET(9);           \
        T x = SET(1.0000001), y = SET(1e-7);                                         \
        double t0 = now();                                                           \
        for (long k = 0; k < n; k++) {                                               \
            a0 = FMA(a0, x, y); a1 = FMA(a1, x, y); a2 = FMA(a2, x, y);              \
            a3 = FMA(a3, x, y); a4 = FMA(a4, x, y); a5 = FMA(a5, x, y);              \
            a6 = FMA(a6, x, y); a7 = FMA(a7, x, y); a8 = FMA(a8, x, y);              \
            a9 = FMA(a9, x, y);                                                      \
        }                                                                            \
        double dt = now() - t0;                                                      \
        T s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9;                       \
        sink = s[0];                                                                 \
        double g = 10.0 * n * (LANES) * 2 / dt / 1e9;                                \
        best = g > best ? g : best;                                                  \
    }                                                                                \
    return best;

__attribute__((target("avx512f"))) static double peak_f32_avx512(long n)
{
    FMA_PEAK(__m512, _mm512_set1_ps, _mm512_fmadd_ps, 16)
}

__attribute__((target("avx2,fma"))) static double peak_f32_avx2(long n)
{
    FMA_PEAK(__m256, _mm256_set1_ps, _mm256_fmadd_ps, 8)
}

__attribute__((target("avx2,fma"))) static double peak_f64_avx2(long n)
{
    FMA_PEAK(__m256d, _mm256_set1_pd, _mm256_fmadd_pd, 4)
}

/* us a pass over the first `bytes` of b (64-byte aligned), 4 loads of W bytes a
 * chunk, forward on even passes and backward on odd ones */
#define READ_PASSES(T, LOAD, ADD, ZERO, W)                                           \
    T s0 = ZERO(), s1 = ZERO(), s2 = ZERO(), s3 = ZERO();                            \
    double best = 1e9;                                                               \
    for (int r = 0; r < 5; r++) {                                                    \
        double t0 = now();                                                           \
        for (int k = 0; k < reps; k++) {                                             \
            for (size_t q = 0; q < bytes; q += 4 * (W)) {                            \
                size_t i = (k & 1) ? bytes - 4 * (W) - q : q;                        \
                const float *p = (const float *)(b + i);                             \
                s0 = ADD(s0, LOAD(p));                                               \
                s1 = ADD(s1, LOAD(p + (W) / 4));                                     \
                s2 = ADD(s2, LOAD(p + 2 * (W) / 4));                                 \
                s3 = ADD(s3, LOAD(p + 3 * (W) / 4));                                 \
            }                                                                        \
        }                                                                            \
        double d = (now() - t0) / reps * 1e6;                                        \
        best = d < best ? d : best;                                                  \
    }                                                                                \
    T s = ADD(ADD(s0, s1), ADD(s2, s3));                                             \
    sink = s[0];                                                                     \
    return best;

__attribute__((target("avx512f"))) static double read_avx512(const char *b, size_t bytes,
                                                             int reps)
{
    READ_PASSES(__m512, _mm512_load_ps, _mm512_add_ps, _mm512_setzero_ps, 64)
}

__attribute__((target("avx2"))) static double read_avx2(const char *b, size_t bytes, int reps)
{
    READ_PASSES(__m256, _mm256_load_ps, _mm256_add_ps, _mm256_setzero_ps, 32)
}

int main(void)
{
    int avx512 = __builtin_cpu_supports("avx512f");
    long n = 20000000;
    printf("FMA peak of one core, GFLOP/s:");
    if (avx512)
        printf(" float32 AVX-512 %.1f;", peak_f32_avx512(n));
    printf(" float32 AVX2 %.1f; float64 AVX2 %.1f\n", peak_f32_avx2(n), peak_f64_avx2(n));
    size_t kib[] = {128, 1024, 2048};
    char *b = aligned_alloc(64, 2048 * 1024);
    memset(b, 0, 2048 * 1024);
    for (int i = 0; i < 3; i++) {
        int reps = kib[i] > 256 ? 300 : 3000;
        size_t bytes = kib[i] * 1024;
        printf("%4zu KiB read pass after pass, alternating direction:", kib[i]);
        if (avx512) {
            double us = read_avx512(b, bytes, reps);
            printf(" 512-bit loads %.2f us (%.0f GB/s);", us, bytes / us / 1e3);
        }
        double us = read_avx2(b, bytes, reps);
        printf(" 256-bit loads %.2f us (%.0f GB/s)\n", us, bytes / us / 1e3);
    }
    free(b);
    return 0;
}
