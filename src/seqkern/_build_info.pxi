# Included by every kernel module (the ones setup.py compiles once per
# instruction-set level): what this copy of the module was compiled for.
cdef extern from "_simd.h":
    const char* SK_ISA
    const char* SEQKERN_LEVEL
    const char* SEQKERN_CFLAGS

#: The build level this module belongs to ("native", "sse2", "avx2", "avx512", "generic").
LEVEL = SEQKERN_LEVEL.decode()
#: The instruction set the compiler targeted ("avx512", "avx2", "sse2", "neon", ...).
ISA = SK_ISA.decode()
#: The C compiler flags of this module.
CFLAGS = SEQKERN_CFLAGS.decode()
