# Large arrays reused from one call to the next.
#
# A training loop runs a forward (which allocates what its cache keeps: the LSTM's
# gate activations take 105 MB at (B, T, H) = (64, 200, 512) in float32), then the
# backward, drops the cache and its gradients, and runs the forward again on a
# batch of the same size. Memory that large comes fresh from the operating system
# on every call (malloc maps it, and unmaps it when it is freed), and each of its
# pages faults in on first touch: measured here 30-230 ms of system time in a
# (64,200,512,512) float32 forward+backward of ~0.95 s on 2 threads, the most
# right after another library's call.
#
# So arrays of at least MIN_BYTES come from blocks that go back to a free list,
# not to the system, when the last array using them dies (each block is owned by
# a _Block object that every view of it keeps alive: the memory is reused only
# once nothing refers to it), and the next request that fits takes one:
# - a block serves a request of n bytes if it holds n to 1.25 n bytes (an array
#   keeps its whole block while it lives);
# - at most max_bytes() in all are kept (the least recently freed go first);
#   clear() frees them all.
# Smaller arrays are plain np.empty: malloc reuses their memory itself.

from cpython.buffer cimport PyBuffer_FillInfo
from libc.stdlib cimport free

import math

import numpy as np

cimport numpy as cnp

cnp.import_array()

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

cdef enum:
    ALIGN = 64          # a cache line: two threads writing alternate runs of a
                        # row never share one at the seams (see _lstm.splits_steps)
    MAX_BLOCKS = 16

MIN_BYTES = 1 << 22

cdef size_t _max_bytes = 1 << 30
cdef void* _ptr[MAX_BLOCKS]             # the free blocks, least recently freed first
cdef size_t _size[MAX_BLOCKS]
cdef int _n = 0
cdef size_t _held = 0


cdef void _remove(int i) noexcept:
    """Take block i off the free list (not freed)."""
    global _n, _held
    cdef int j
    _held -= _size[i]
    _n -= 1
    for j in range(i, _n):
        _ptr[j] = _ptr[j + 1]
        _size[j] = _size[j + 1]


cdef void _drop(int i) noexcept:
    """Free block i of the free list."""
    free(_ptr[i])
    _remove(i)


cdef void _keep(void* p, size_t n) noexcept:
    """A block nothing uses any more: onto the free list, making room (or freed)."""
    global _n, _held
    if n > _max_bytes:
        free(p)
        return
    while _n > 0 and (_n == MAX_BLOCKS or _held + n > _max_bytes):
        _drop(0)
    _ptr[_n] = p
    _size[_n] = n
    _n += 1
    _held += n


cdef class _Block:
    """Owner of one block of memory, exported as bytes (the buffer protocol);
    its death hands the block to the free list."""
    cdef void* p
    cdef size_t n

    def __getbuffer__(self, Py_buffer* buf, int flags):
        PyBuffer_FillInfo(buf, self, self.p, <Py_ssize_t>self.n, 0, flags)

    def __releasebuffer__(self, Py_buffer* buf):
        pass

    def __dealloc__(self):
        if self.p != NULL:
            _keep(self.p, self.n)


cdef _Block _take(size_t n):
    """A block of >= n bytes: the most recently freed of n .. 1.25 n bytes, else new."""
    cdef _Block b = _Block.__new__(_Block)
    cdef int i
    for i in range(_n - 1, -1, -1):
        if n <= _size[i] <= n + n // 4:
            b.p = _ptr[i]
            b.n = _size[i]
            _remove(i)
            break
    else:
        b.n = (n + ALIGN - 1) // ALIGN * ALIGN
        b.p = aligned_alloc(ALIGN, b.n)
        if b.p == NULL:
            raise MemoryError()
    return b


def empty(shape, dtype, aligned=False):
    """An uninitialised C-contiguous array, like np.empty(shape, dtype). From a
    reused block, starting on a 64-byte boundary, where it takes >= MIN_BYTES;
    below that np.empty's, which starts 16 or 48 bytes past one here, unless
    ``aligned`` (then a view of a slightly larger one, ~0.5 us more)."""
    cdef cnp.ndarray buf
    cdef size_t off
    dtype = np.dtype(dtype)
    if not isinstance(shape, tuple):
        shape = tuple(shape) if hasattr(shape, "__len__") else (int(shape),)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes >= MIN_BYTES:
        buf = np.frombuffer(_take(nbytes), np.uint8, nbytes)
    elif aligned:
        buf = np.empty(nbytes + ALIGN, np.uint8)
        off = (ALIGN - <size_t>cnp.PyArray_DATA(buf) % ALIGN) % ALIGN
        buf = buf[off:off + nbytes]
    else:
        return np.empty(shape, dtype)
    return buf.view(dtype).reshape(shape)


def clear():
    """Free the large arrays kept for reuse (seqkern.free_workspace): seqkern
    keeps the memory of freed arrays of >= 4 MiB that it allocated (caches,
    outputs, scratch), up to workspace_limit() bytes, for its next calls."""
    while _n > 0:
        _drop(_n - 1)


def held():
    """(blocks, bytes) on the free list."""
    return _n, _held


def max_bytes(limit=None):
    """The most bytes of freed large arrays seqkern keeps for reuse
    (seqkern.workspace_limit; 1 GiB to start with); ``limit`` sets it (0: keep
    nothing, every array's memory goes back to the system). Returns the value
    in force before."""
    global _max_bytes
    old = _max_bytes
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
            raise TypeError(f"limit must be an integer number of bytes, got {limit!r}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        _max_bytes = limit
        while _n > 0 and _held > _max_bytes:
            _drop(0)
    return old
