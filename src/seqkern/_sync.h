/*
 * Spin flags for two threads of one parallel region that hand work to each other
 * step by step (the batch-1 LSTM step split in halves, _lstm.pyx): one thread
 * writes its part of a step, then publishes the step's number (a release store);
 * the other waits until that number is published (acquire loads), and then sees
 * the part. One flag per writer, each on its own cache line.
 *
 * Why not an OpenMP barrier per step: libgomp's barrier sleeps in the kernel after
 * a short spin, and waking a sleeping vCPU on the VM this was written on took
 * milliseconds (a step takes ~1.5 us). A flag costs one cache-line transfer
 * (~50 ns for a round trip here). A thread only ever waits for a step the other
 * thread is running, so the wait ends.
 */
#ifndef SEQKERN_SYNC_H
#define SEQKERN_SYNC_H

#include <stddef.h>

typedef struct {
    long long v;
    char pad[64 - sizeof(long long)];
} __attribute__((aligned(64))) sk_flag;

static inline void sk_flag_set(sk_flag *f, long long v)
{
    __atomic_store_n(&f->v, v, __ATOMIC_RELEASE);
}

static inline long long sk_flag_get(sk_flag *f)
{
    return __atomic_load_n(&f->v, __ATOMIC_ACQUIRE);
}

static inline void sk_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
/* Start loading [p, p + bytes) into this core's cache: the lines the other thread
 * has just written, so that their transfers overlap instead of each waiting for
 * the last (a cross-core line took ~100 to ~140 ns here, depending on where the
 * host placed the two vCPUs). */
static inline void sk_prefetch(const void *p, size_t bytes)
{
    const char *c = (const char *)p;
    for (size_t i = 0; i < bytes; i += 64)
        __builtin_prefetch(c + i, 0, 3);
    if (bytes)
        __builtin_prefetch(c + bytes - 1, 0, 3);
}

#endif
}

/* Wait until the flag holds at least v, for at most `spins` pauses: 1 if it did. */
static inline int sk_flag_wait_for(sk_flag *f, long long v, long long spins)
{
    for (long long i = 0; i < spins; i++) {
        if (sk_flag_get(f) >= v)
            return 1;
        sk_cpu_relax();
    }
    return sk_flag_get(f) >= v;
}

/* Wait until the flag holds at least v. */
static inline void sk_flag_wait(sk_flag *f, long long v)
{
    while (sk_flag_get(f) < v)
        sk_cpu_relax();
}

/* Start loading [p, p + bytes) into this core's cache: the lines the other thread
 * has just written, so that their transfers overlap instead of each waiting for
 * the last (a cross-core line took ~100 to ~140 ns here, depending on where the
 * host placed the two vCPUs). */
static inline void sk_prefetch(const void *p, size_t bytes)
{
    const char *c = (const char *)p;
    for (size_t i = 0; i < bytes; i += 64)
        __builtin_prefetch(c + i, 0, 3);
    if (bytes)
        __builtin_prefetch(c + bytes - 1, 0, 3);
}

#endif
