/*
 * Spin flags for two threads of one parallel region that hand work to each other
 * (_openmp_helpers.handoff_ns measures a round trip with them): one thread
 * publishes a number (a release store); the other waits until that number is
 * published (acquire loads), and then sees what was written before it. One flag
 * per writer, each on its own cache line. A wait spins for a while, then yields
 * the core between looks (sk_flag_wait).
 *
 * Also a spin lock (sk_lock), for _workspace's lists of reusable memory, which
 * kernels on any thread take and give back without the GIL: it is held for a few
 * loads and stores, never across a call that may block.
 */
#ifndef SEQKERN_SYNC_H
#define SEQKERN_SYNC_H

#include <limits.h>
#if !defined(_WIN32)
#include <sched.h>
#endif

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
#endif
}

/* Pauses a wait spins before it yields: tens of microseconds, far below a
 * scheduler time slice (~ms). */
#define SK_SPINS 2000

static inline void sk_yield(void)
{
#if defined(_WIN32)
    sk_cpu_relax();
#else
    sched_yield();
#endif
}

/* Wait until the flag holds at least v, for at most `spins` looks (pausing, then
 * yielding as sk_flag_wait): 1 if it did. */
static inline int sk_flag_wait_for(sk_flag *f, long long v, long long spins)
{
    for (long long i = 0; i < spins; i++) {
        if (sk_flag_get(f) >= v)
            return 1;
        if (i < SK_SPINS)
            sk_cpu_relax();
        else
            sk_yield();
    }
    return sk_flag_get(f) >= v;
}

/* Wait until the flag holds at least v: spinning for a while (the other thread is
 * normally a step away), then giving the core up between looks, so that a thread
 * it may be waiting for (or any other) can run there. */
static inline void sk_flag_wait(sk_flag *f, long long v)
{
    sk_flag_wait_for(f, v, LLONG_MAX);
}

/* A barrier for the threads of the innermost enclosing OpenMP parallel region (a
 * no-op without OpenMP, or on a team of one). The kernels' loops over the unit
 * blocks of a step need it after each step: Cython writes a prange as `omp for
 * nowait`, so nothing else keeps a thread from starting step t + 1, which reads
 * all of step t, while another thread still writes its blocks of step t. */
static inline void sk_team_barrier(void)
{
#ifdef _OPENMP
#pragma omp barrier
#endif
}

/* Take the lock *l (0: free, 1: taken), spinning until it is free. */
static inline void sk_lock(int *l)
{
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(l, __ATOMIC_RELAXED))
            sk_cpu_relax();
}

static inline void sk_unlock(int *l)
{
    __atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

#endif
