# What the recurrent kernels (_rnn.pyx, _lstm.pyx, _gru.pyx) share: how their work is
# cut into blocks, the choice of GEMM for the products with the weights, the input
# projection, the gate re-layout for the per-step unit split, and the final states.
#
# The products with the weights run on OpenBLAS (_blas.pxd) or on _packed_gemm.h
# with the weights packed once per call: OpenBLAS packs its W operand again inside
# every call (once per time step for W_hh, once per row block for W_ih).
# seqkern._step_gemm forces either choice; docs/benchmarks.md has the measurements.
#
# Threads: every split is into blocks whose boundaries depend only on the problem
# size and n_parts (the machine's core count, a constant of the process), never on
# the thread count, and no two blocks write the same element; the threads only pick
# which blocks they run, so results are bitwise identical for any thread count.
# The time loop splits by blocks of batch rows (row_blocks: each row is its own
# sequence, so a thread runs its rows through every step and the threads meet once),
# or, with too few rows, by blocks of hidden units within each step (unit_block:
# a barrier per step, so only for steps of PAR_MIN_STEP multiply-adds or more), or
# runs on one thread. A time loop of one block of units runs as the row split's
# code, one call through all its steps: a prange per step (an OpenMP worksharing
# loop), even on a team of one, costs more than a batch-1 step of a small layer.
# The big GEMMs outside the time loop are cut in ROW_BLOCK rows (of T*B) or
# W_BLOCK rows of a weight gradient, and run on loop_threads threads.

from cython cimport floating
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from seqkern._blas cimport gemm
from seqkern._packed_gemm cimport pk_gemm

cdef extern from "_simd.h" nogil:
    enum: SK_PACK_AUTO

cdef extern from "_sync.h" nogil:
    # after each step of a loop over unit blocks (a prange inside `with parallel`):
    # see _sync.h
    void step_barrier "sk_team_barrier"()

cdef enum:
    STEP_AUTO = 0      # the kernel's measured rule (packs(): by the ISA and the rows served)
    STEP_BLAS = 1
    STEP_PACKED = 2
    # AUTO packs once the weights serve at least this many rows (T * B): packing
    # costs a pass over the weights, which a handful of rows does not repay.
    PACK_MIN_ROWS = 16
    # The minimum work of a parallel loop (multiply-adds over all its tasks): below
    # it every kernel runs that loop on one thread. Waking a second thread costs
    # microseconds on an idle machine and up to a scheduler time slice when another
    # process holds its core, and the loop ends only when that thread has run: a
    # small problem that splits runs slower, and far slower under load.
    PAR_MIN_GEMM = 1 << 25
    # Blocks of the time loop: at least MIN_ROWS batch rows a row block; unit blocks
    # at least MIN_COL units wide, and only for a step whose recurrent product
    # B*G*H*H (G gates) reaches PAR_MIN_STEP multiply-adds, because every step then
    # ends at a barrier that waits for the slowest thread (and wakes a sleeping one):
    # a step must be tens of microseconds of work to pay for it.
    MIN_ROWS = 8
    MIN_COL = 32
    PAR_MIN_STEP = 1 << 21
    # Blocks of the GEMMs outside the time loop: large, because each GEMM call packs
    # its shared operand again.
    ROW_BLOCK = 1024
    W_BLOCK = 256


cdef inline bint packs(int step_gemm, Py_ssize_t rows) noexcept nogil:
    """Run the products with the weights on _packed_gemm.h, for a call over
    ``rows`` = T * B rows? AUTO: where the module's ISA is one the packed GEMM was
    measured faster on (SK_PACK_AUTO, _simd.h), from PACK_MIN_ROWS rows on: a
    function of the sizes and the ISA only, so never of the thread count."""
    if step_gemm == STEP_AUTO:
        return SK_PACK_AUTO and rows >= PACK_MIN_ROWS
    return step_gemm == STEP_PACKED


cdef inline bint interleaves(int step_gemm) noexcept nogil:
    """Run a batch-1 step's product interleaved with an independent product of
    SK_PK_SIDE_ROWS rows (_packed_gemm.h's gemv_side, the LSTM's batch-1 path)? Only
    where a caller forces the packed GEMM: AUTO keeps the projection ahead of the
    steps at every level, since whether the side product hides in the step's idle
    FMA units depends on the core, not on the instruction set (docs/benchmarks.md)."""
    return step_gemm == STEP_PACKED


cdef inline int loop_threads(int n_threads, int n_tasks, double work) noexcept nogil:
    """Threads for a parallel loop of ``n_tasks`` tasks and ``work`` multiply-adds in
    all, given ``n_threads``: 1 below PAR_MIN_GEMM or with a single task."""
    if n_threads <= 1 or n_tasks <= 1 or work < PAR_MIN_GEMM:
        return 1
    return n_threads if n_threads < n_tasks else n_tasks


cdef inline int n_blocks(Py_ssize_t n, Py_ssize_t block) noexcept nogil:
    """Blocks of ``block`` items that cover n items (the last may be shorter)."""
    return <int>((n + block - 1) // block)


cdef inline int row_blocks(int B, int n_parts) noexcept nogil:
    """Blocks of batch rows the time loop is split into (a function of B and n_parts
    only): up to n_parts, each of at least MIN_ROWS rows; block rb holds rows
    [row_start(rb), row_start(rb + 1)). 1: the loop does not split by rows."""
    return max(1, min(n_parts, B // MIN_ROWS))


cdef inline int row_start(int rb, int B, int n_rb) noexcept nogil:
    """First row of row block rb of n_rb (rb = n_rb gives B)."""
    return <int>(<int64_t>rb * B // n_rb)


cdef inline int run_blocks(int n_rb, int nt_rows, bint packed) noexcept nogil:
    """How many blocks of batch rows the time loop runs, of the n_rb that row_blocks
    fixes, given nt_rows threads for it: n_rb where the step products run on BLAS,
    whose rounding of a row may depend on the rows beside it in a call; on the
    packed GEMM each element is one k-ordered chain whatever rows share the call
    (a split block has at least MIN_ROWS > 1 rows: never the one-row kernel), so
    there the blocks follow the threads, and one thread streams the weights once a
    step, not once a block. Either way the results do not depend on the thread
    count (n_rb = 1, e.g. at batch 1, runs one block whatever the threads)."""
    return nt_rows if packed else n_rb


cdef inline int unit_block(int B, int G, int H, int n_parts) noexcept nogil:
    """Width in hidden units of the blocks a time step is split into (a function of
    the sizes and n_parts only): H (one block) where the loop splits by rows
    (row_blocks > 1) or the step's recurrent product B*G*H*H is below PAR_MIN_STEP;
    else H / n_parts rounded up to whole cache lines of float32, at least MIN_COL."""
    cdef int width
    if row_blocks(B, n_parts) > 1 or n_parts <= 1 or <int64_t>B * G * H * H < PAR_MIN_STEP:
        return H
    width = (H + n_parts - 1) // n_parts
    width = ((width + 15) // 16) * 16
    return min(H, max(width, <int>MIN_COL))


cdef inline void rows_times_wt(const floating* x, const floating* W, const floating* W_pk,
                               floating* out, Py_ssize_t r0, Py_ssize_t r1, int I, int G,
                               bint accumulate) noexcept nogil:
    """out[r0:r1] (+)= x[r0:r1] @ W^T; x (rows, I), W (G, I), out (rows, G): added
    to out if ``accumulate``, else written. W_pk: W packed for x @ W^T
    (_packed_gemm.h), or NULL for OpenBLAS."""
    if W_pk != NULL:
        pk_gemm(<int>(r1 - r0), I, x + r0 * I, I, W_pk, out + r0 * G, G, 0, G, accumulate)
    else:
        gemm(False, True, <int>(r1 - r0), G, I, <floating>1, x + r0 * I, I, W, I,
             <floating>(1 if accumulate else 0), out + r0 * G, G)


cdef inline void project_rows(const floating* x, const floating* W, const floating* W_pk,
                              const floating* bias, floating* out, Py_ssize_t r0, Py_ssize_t r1,
                              int I, int G) noexcept nogil:
    """out[r0:r1] := x[r0:r1] @ W^T + bias; x (rows, I), W (G, I), bias (G,) or NULL
    (no bias), out (rows, G). W_pk: W packed for x @ W^T, or NULL (OpenBLAS)."""
    cdef Py_ssize_t r
    if bias == NULL:
        rows_times_wt(x, W, W_pk, out, r0, r1, I, G, False)
        return
    for r in range(r0, r1):
        memcpy(out + r * G, bias, G * sizeof(floating))
    rows_times_wt(x, W, W_pk, out, r0, r1, I, G, True)


cdef inline void project_block(const floating* x, const floating* W, const floating* W_pk,
                               const floating* bias, floating* out, Py_ssize_t n_steps, int B,
                               int b0, int b1, int I, int G) noexcept nogil:
    """Batch rows [b0, b1) of n_steps steps: out[s, b0:b1] := x[s, b0:b1] @ W^T +
    bias (project_rows); x (n_steps, B, I), out (n_steps, B, G). One product over
    every row where the block holds the whole batch, else one per step. On the
    packed GEMM each element is the same sum either way (a block of a split batch
    has at least MIN_ROWS rows: never the one-row kernel)."""
    cdef Py_ssize_t s
    if b1 - b0 == B:
        project_rows(x, W, W_pk, bias, out, 0, n_steps * B, I, G)
        return
    for s in range(n_steps):
        project_rows(x, W, W_pk, bias, out, s * B + b0, s * B + b1, I, G)


cdef inline void _gate_rows(const floating* src, floating* dst, int G, int H, int K, int U,
                            bint grouping) noexcept nogil:
    """group_gates (grouping) or ungroup_gates (not grouping) from src to dst."""
    cdef int k, c0, c1, g
    cdef Py_ssize_t n, gi, grouped
    for k in range(n_blocks(H, U)):
        c0 = k * U
        c1 = min(c0 + U, H)
        n = <Py_ssize_t>(c1 - c0) * K
        for g in range(G):
            gi = (<Py_ssize_t>g * H + c0) * K                   # row g*H + c0 of W
            grouped = (<Py_ssize_t>G * c0 + <Py_ssize_t>g * (c1 - c0)) * K
            if grouping:
                memcpy(dst + grouped, src + gi, n * sizeof(floating))
            else:
                memcpy(dst + gi, src + grouped, n * sizeof(floating))


cdef inline void group_gates(const floating* W, floating* Wg, int G, int H, int K,
                             int U) noexcept nogil:
    """Wg := the rows of W (G*H, K), stacked by gate as PyTorch's (gate g's rows at
    [g H, (g + 1) H)), regrouped by blocks of U hidden units: block k, units
    [c0, c1) = [k U, min((k + 1) U, H)), holds rows [G c0, G c1) of Wg, its rows
    of gate 0, then gate 1, ...: Wg row G c0 + g (c1 - c0) + j is W row g H + c0 + j.
    So one product with Wg's rows [G c0, G c1) gives every gate of the block's units.
    U >= H: Wg = W. A bias is K = 1. W and Wg do not overlap."""
    _gate_rows(W, Wg, G, H, K, U, True)


cdef inline void ungroup_gates(const floating* Wg, floating* W, int G, int H, int K,
                               int U) noexcept nogil:
    """The inverse of group_gates: W (G*H, K) in PyTorch's order from Wg (for the
    gradients of grouped weights)."""
    _gate_rows(Wg, W, G, H, K, U, False)


cdef inline void copy_or_zero(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """dst[0:n] := src[0:n], or 0 where src is NULL (a gradient given or None)."""
    if src == NULL:
        memset(dst, 0, n * sizeof(floating))
    else:
        memcpy(dst, src, n * sizeof(floating))


cdef inline void keep_ended(int B, int H, const int64_t* lengths, Py_ssize_t t,
                            const floating* d_h_n, floating* carry, int c0,
                            int c1) noexcept nogil:
    """After a backward step's carry[:, c0:c1] += dz_{t+1} @ W_hh: the rows whose
    sequence ended before step t+1 took no step t+1 (their dz_{t+1} rows are 0),
    so their carry is still d_h_n's (0 where d_h_n is NULL), whatever 0 times an Inf
    or NaN of W_hh made of it. carry, d_h_n (B, H); lengths (B,) or NULL (none ended)."""
    cdef int b
    cdef Py_ssize_t r
    if lengths == NULL:
        return
    for b in range(B):
        if t + 1 >= lengths[b]:
            r = <Py_ssize_t>b * H + c0
            copy_or_zero(carry + r, NULL if d_h_n == NULL else d_h_n + r, c1 - c0)


cdef inline void final_states(int B, int H, Py_ssize_t T, const int64_t* lengths,
                              const floating* h0, const floating* out,
                              floating* h_n) noexcept nogil:
    """h_n[b] := out[lengths[b] - 1, b] (T - 1 without lengths), or h0[b] for a
    sequence of length 0; h0, h_n (B, H), out (T, B, H)."""
    cdef int b
    cdef Py_ssize_t L
    for b in range(B):
        L = T if lengths == NULL else lengths[b]
        if L == 0:
            memcpy(h_n + <Py_ssize_t>b * H, h0 + <Py_ssize_t>b * H, H * sizeof(floating))
        else:
            memcpy(h_n + <Py_ssize_t>b * H, out + ((L - 1) * B + b) * <Py_ssize_t>H,
                   H * sizeof(floating))
