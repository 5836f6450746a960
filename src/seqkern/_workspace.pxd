# Memory reused from one kernel call to the next (see _workspace.pyx).

cdef void* scratch_alloc(size_t nbytes) noexcept nogil
cdef void scratch_free(void* p) noexcept nogil
