# Memory reused from one call to the next: arrays, and the kernels' scratch.
#
# A training loop runs a forward (which allocates what its cache keeps: the LSTM's
# gate activations take 105 MB at (B, T, H) = (64, 200, 512) in float32), then the
# backward, drops the cache and its gradients, and runs the forward again on a
# batch of the same size. Memory that large comes fresh from the operating system
# on every call (malloc maps it, and unmaps it when it is freed), and each of its
# pages faults in on first touch: measured here 30-230 ms of system time in a
# (64,200,512,512) float32 forward+backward of ~0.95 s on 2 threads, the most
# right after another library's call. Smaller memory does not stay either: a call
# that frees more than malloc's trim threshold at the top of its heap hands it
# back to the system (brk), and the next call faults it in again. Measured: the
# (1,100,128,128) float64 LSTM forward on one thread, 1.2 ms a call with 224 page
# faults (its 1 MiB of packed weights, and more), 0.77 ms with none from these
# blocks; whether malloc trims depends on whatever else sits on the heap (with
# PyTorch imported it did not), so every large buffer comes from here.
#
# So arrays of at least MIN_BYTES come from blocks that go back to a free list,
# not to the system, when the last array using them dies (each block is owned by
# a _Block object that every view of it keeps alive: the memory is reused only
# once nothing refers to it), and the next request that fits takes one:
# - a block serves a request of n bytes if it holds n to 1.25 n bytes (an array
#   keeps its whole block while it lives);
# - at most max_bytes() in all are kept, MAX_BLOCKS on each list (the least
#   recently freed of a list go first); clear() frees them all.
# Smaller arrays are plain NumPy ones.
#
# The recurrent kernels' own scratch (weights packed for a call, the chunks of rows
# they work on; attention's per-thread tiles are small and stay on malloc) comes
# from scratch_alloc, which keeps blocks of MIN_BYTES and
# more on a second list under the same limit. The kernels call scratch_alloc and
# scratch_free without the GIL, from any thread, so both lists are behind one
# spin lock (held for a few loads and stores at a time: memory is allocated and
# freed outside it).

from cpython.buffer cimport PyBuffer_FillInfo
from libc.stdlib cimport free
from libc.string cimport memset

import os

import numpy as np

cimport numpy as cnp
from cpython.number cimport PyNumber_Index

cnp.import_array()

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

cdef extern from "_sync.h" nogil:
    void sk_lock(int* l)
    void sk_unlock(int* l)

cdef enum:
    ALIGN = 64          # a cache line: blocks of rows that different threads write
                        # (the kernels' unit blocks are whole lines) share none
    MAX_BLOCKS = 64     # per list: a step of a 3-layer LSTM frees ~45 arrays of >= MIN_BYTES
    HEADER = ALIGN      # before a scratch block: its size (and the alignment)
    KEPT_MIN = 1 << 16  # blocks of fewer bytes are not kept (arrays: NumPy's own)

MIN_BYTES = KEPT_MIN

cdef size_t _max_bytes = 1 << 30
cdef bint _poison = False               # tests: fill scratch with NaN bytes (poison())
cdef int _lock = 0
cdef size_t _held = 0
# The free blocks of each list, least recently freed first: 0 arrays, 1 scratch.
cdef void* _ptr[2][MAX_BLOCKS]
cdef size_t _size[2][MAX_BLOCKS]
cdef int _n[2]


cdef void* _unlist(int k, int i) noexcept nogil:
    """Take block i off list k and return it (not freed). Lock held."""
    global _held
    cdef void* p = _ptr[k][i]
    cdef int j
    _held -= _size[k][i]
    _n[k] -= 1
    for j in range(i, _n[k]):
        _ptr[k][j] = _ptr[k][j + 1]
        _size[k][j] = _size[k][j + 1]
    return p


cdef void* _listed(int k, size_t n, size_t* size) noexcept nogil:
    """The most recently freed block of list k holding n .. 1.25 n bytes, taken off
    it (*size: its bytes), or NULL."""
    cdef void* p = NULL
    cdef int i
    sk_lock(&_lock)
    for i in range(_n[k] - 1, -1, -1):
        if n <= _size[k][i] <= n + n // 4:
            size[0] = _size[k][i]
            p = _unlist(k, i)
            break
    sk_unlock(&_lock)
    return p


cdef void* _get(int k, size_t n, size_t* size) noexcept nogil:
    """A block of >= n bytes: off list k (_listed) where one fits and n >= KEPT_MIN,
    else new, n rounded up to a cache line (*size: its bytes); NULL if out of
    memory."""
    cdef void* p = _listed(k, n, size) if n >= <size_t>KEPT_MIN else NULL
    if p == NULL:
        size[0] = (n + ALIGN - 1) // ALIGN * ALIGN
        p = aligned_alloc(ALIGN, size[0])
    return p


cdef void _keep(int k, void* p, size_t n) noexcept nogil:
    """A block nothing uses any more, allocated with n bytes: onto list k, making
    room (freeing the least recently freed blocks of that list, then of the
    other), or freed where it alone passes the limit."""
    global _held
    cdef void* old
    while p != NULL:
        sk_lock(&_lock)
        old = NULL
        if n > _max_bytes:              # (read under the lock: max_bytes may change it)
            old = p
            p = NULL
        elif _n[k] == MAX_BLOCKS:
            old = _unlist(k, 0)
        elif _held + n > _max_bytes:    # then _held > 0: some list holds a block
            old = _unlist(k if _n[k] > 0 else 1 - k, 0)
        else:
            _ptr[k][_n[k]] = p
            _size[k][_n[k]] = n
            _n[k] += 1
            _held += n
            p = NULL
        sk_unlock(&_lock)
        free(old)


cdef void* scratch_alloc(size_t nbytes) noexcept nogil:
    """Uninitialised memory of >= nbytes bytes starting on a 64-byte boundary, for
    a kernel's scratch, or NULL if out of memory; give it back with scratch_free
    (never free()). Blocks of >= MIN_BYTES are reused from call to call."""
    cdef size_t size
    cdef void* p = _get(1, nbytes + HEADER, &size)
    if p == NULL:
        return NULL
    (<size_t*>p)[0] = size
    if _poison:
        memset(<char*>p + HEADER, 0xFF, nbytes)
    return <char*>p + HEADER


cdef void scratch_free(void* p) noexcept nogil:
    """Give back memory from scratch_alloc (NULL: nothing)."""
    if p == NULL:
        return
    cdef void* block = <char*>p - HEADER
    cdef size_t n = (<size_t*>block)[0]
    if n >= <size_t>KEPT_MIN:
        _keep(1, block, n)
    else:
        free(block)


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
        if self.n >= <size_t>KEPT_MIN:
            _keep(0, self.p, self.n)
        else:
            free(self.p)


cdef _Block _take(size_t n):
    """A block of >= n bytes: the most recently freed of n .. 1.25 n bytes, else new."""
    cdef _Block b = _Block.__new__(_Block)
    b.p = _get(0, n, &b.n)
    if b.p == NULL:
        raise MemoryError()
    return b


def empty(shape, dtype, aligned=False):
    """An uninitialised C-contiguous array, like np.empty(shape, dtype). From a
    reused block, starting on a 64-byte boundary, where it takes >= MIN_BYTES;
    below that np.empty's, which starts 16 or 48 bytes past one here, unless
    ``aligned`` (then a block of its own, freed with the array)."""
    cdef cnp.npy_intp dims[cnp.NPY_MAXDIMS]
    cdef Py_ssize_t nbytes
    cdef int nd, i
    if not isinstance(dtype, cnp.dtype):
        dtype = np.dtype(dtype)
    if type(shape) is not tuple:
        shape = tuple(shape) if hasattr(shape, "__len__") else (int(shape),)
    nd = len(shape)
    if nd > cnp.NPY_MAXDIMS:
        raise ValueError(f"at most {cnp.NPY_MAXDIMS} dimensions, got {nd}")
    nbytes = (<cnp.dtype>dtype).itemsize
    for i in range(nd):
        dims[i] = PyNumber_Index(shape[i])
        if dims[i] < 0:
            raise ValueError(f"negative dimensions are not allowed: {shape}")
        nbytes *= dims[i]
    # NumPy's C API from a type number alone (~0.2 us, against ~1 us for np.empty,
    # or frombuffer, view and reshape) where that number is the whole dtype: native
    # float32 and float64, all the kernels use
    cdef bint simple = (dtype is _F32 or dtype is _F64 or dtype == _F32 or dtype == _F64)
    if nbytes < MIN_BYTES and not aligned:
        if simple:
            return cnp.PyArray_EMPTY(nd, dims, (<cnp.dtype>dtype).type_num, 0)
        return np.empty(shape, dtype)
    # a block (aligned_alloc'd; reused where it takes >= MIN_BYTES)
    cdef _Block block = _take(<size_t>max(nbytes, 1))
    if _poison:                         # tests: a reused block never hides an unwritten element
        memset(block.p, 0xFF, <size_t>nbytes)
    if not simple:
        return np.frombuffer(block, np.uint8, nbytes).view(dtype).reshape(shape)
    cdef cnp.ndarray a = cnp.PyArray_SimpleNewFromData(nd, dims, (<cnp.dtype>dtype).type_num,
                                                       block.p)
    cnp.set_array_base(a, block)        # the array keeps its block alive
    return a


def zeros(shape, dtype):
    """Like np.zeros(shape, dtype), from a reused block where it takes >= MIN_BYTES
    (zeroed by memset: ndarray.fill(0) took ~2x as long, the largest part of a
    single LSTM step's backward at H = 256 with its two 1 MiB weight gradients)."""
    cdef cnp.ndarray a = empty(shape, dtype)
    cdef char* p = <char*>cnp.PyArray_DATA(a)
    cdef size_t n = <size_t>a.nbytes
    with nogil:
        memset(p, 0, n)
    return a


cdef void _trim(size_t limit) noexcept nogil:
    """Free listed blocks until at most ``limit`` bytes are kept: from the list
    holding more blocks, its least recently freed first."""
    cdef void* p
    while True:
        sk_lock(&_lock)
        p = NULL
        if _held > limit:
            p = _unlist(0 if _n[0] >= _n[1] else 1, 0)
        sk_unlock(&_lock)
        if p == NULL:
            return
        free(p)


def _after_fork_in_child():
    """A child forked while another thread held the lists' lock (or was changing
    them) would wait on it for ever: the child starts with empty lists and the lock
    free, forgetting the parent's blocks (their memory stays the parent's, shared
    until written). Not a lock held across fork: the GIL-holding callers of sk_lock
    would deadlock with a forking thread waiting for the GIL."""
    global _lock, _held
    _lock = 0
    _n[0] = 0
    _n[1] = 0
    _held = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def clear():
    """Free the memory kept for reuse (seqkern.free_workspace): seqkern keeps the
    memory of freed arrays of >= 64 KiB that it allocated (caches, outputs,
    gradients) and of its recurrent kernels' scratch, up to workspace_limit()
    bytes in all, for its next calls."""
    _trim(0)


def poison(on):
    """For tests: whether scratch_alloc, and empty() where it takes a block, fill
    what they hand out with 0xFF bytes (NaN as float32 or float64), new or reused,
    so that a kernel reading scratch, or leaving an element of an output, that it
    has not written shows in its results. Returns the setting before."""
    global _poison
    old = _poison
    _poison = bool(on)
    return old


def held():
    """(blocks, bytes) on the free lists."""
    return _n[0] + _n[1], _held


def max_bytes(limit=None):
    """The most bytes of freed memory seqkern keeps for reuse
    (seqkern.workspace_limit; 1 GiB to start with); ``limit`` sets it (0: keep
    nothing, all of it goes back to the system). Returns the value in force
    before."""
    global _max_bytes
    old = _max_bytes
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
            raise TypeError(f"limit must be an integer number of bytes, got {limit!r}")
        if limit < 0 or limit > <size_t>-1:
            raise ValueError(f"limit must be a number of bytes in [0, {<size_t>-1}], got {limit}")
        _max_bytes = limit
        _trim(_max_bytes)
    return old
