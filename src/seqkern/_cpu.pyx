"""What the running CPU supports, for seqkern._dispatch (x86-64 levels)."""

cdef extern from *:
    """
    #if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    static int sk_cpu_level(void)
    {
        __builtin_cpu_init();
    #if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
        /* every feature -march=x86-64-v3 / -v4 may use (BMI1, LZCNT, MOVBE, ...) */
        return __builtin_cpu_supports("x86-64-v4") ? 4 : __builtin_cpu_supports("x86-64-v3") ? 3 : 1;
    #else
        int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                 && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
        int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                 && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq")
                 && __builtin_cpu_supports("avx512vl");
        return v4 ? 4 : v3 ? 3 : 1;
    #endif
    }
    #else
    static int sk_cpu_level(void) { return 0; }
    #endif
    """
    int sk_cpu_level() noexcept nogil


def x86_level():
    """The x86-64 microarchitecture level this CPU and OS support: 4 (AVX-512),
    3 (AVX2 + FMA), 1 (baseline SSE2); 0 where the CPU is not x86."""
    return sk_cpu_level()
