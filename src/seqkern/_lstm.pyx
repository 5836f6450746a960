# LSTM kernels: forward and backward through time.
#
# Axis legend: T = time steps, B = batch, I = input features, H = hidden units,
# G = 4H gate pre-activations. Every array is C-contiguous and time-major; the
# Python wrapper (lstm.py) checks arguments, allocates outputs and the cache, and
# holds BLAS at one thread. The kernels allocate their own scratch, re-lay the
# weights out themselves, and write every element of their outputs.
#
# Forward:   z_t = x_t W_ih^T + (b_ih + b_hh) + h_{t-1} W_hh^T        (B, 4H)
#            i, f, g, o = sig(z_i), sig(z_f), tanh(z_g), sig(z_o)
#            c_t = f c_{t-1} + i g,   h_t = o tanh(c_t)
# Backward:  dh = carry_h + d_out_t,   dc = carry_c + dh o (1 - tanh(c_t)^2)
#            dz_i = dc g i(1-i),  dz_f = dc c_{t-1} f(1-f),  dz_g = dc i (1-g^2),
#            dz_o = dh tanh(c_t) o(1-o);   carry_c = dc f,   carry_h = dz_t W_hh
#            dW_ih = sum_t dz_t^T x_t,  dW_hh = sum_t dz_t^T h_{t-1},  db = sum_t dz_t,
#            dx_t = dz_t W_ih
#
# Gate layout. The hidden units are cut into blocks of U units (_units: a function
# of T, B, H and n_parts). The kernels regroup the weights and bias once per call
# (_step.group_gates) so that block k's rows are [i rows | f rows | g rows | o rows]
# of its units: one product per block then yields all four gates of its units side
# by side in a (B, 4H) gate row, and the fused element-wise pass of that block needs
# nothing from any other block. Block k starts at column 4 k U and gate q of unit
# k U + j sits at column 4 k U + q U_k + j, U_k = min(U, H - k U); with one block
# (U = H) that is PyTorch's order i, f, g, o. The gate activations of the cache
# are in this layout; the weight gradients are written in PyTorch's row order.
#
# Only what is truly sequential runs step by step (one product per step plus one
# fused element-wise pass); the input projection and the weight gradients are
# GEMMs over many rows at once: the projection of every step before the time loop
# (or chunk by chunk inside it: _in_chunks), the gradients over chunks of ~BWD_CHUNK_ROWS rows right after the backward steps
# that produced them (so that what they read is still in cache, and the scratch is
# one chunk, not T*B rows). At batch 1 with one unit block, where a caller forces
# the packed GEMM (_one_row), the projection of the next steps (forward) and dx of
# the previous ones (backward) run inside each step's product, which is bound by
# reading W_hh and leaves FMA units idle (_packed_gemm.h's gemv_side).
#
# Threads (_step.pxd): the time loop splits by blocks of batch rows (a thread runs
# its rows through every step), or for few rows by unit blocks within each step
# (one OpenMP region over the steps, a barrier per step) where a step is big, or
# runs on one thread. Block boundaries depend on the sizes and n_parts only, so
# the results are bitwise identical for every thread count.

from cython cimport floating

include "_build_info.pxi"
from cython.parallel cimport prange, parallel, threadid
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from seqkern._blas cimport gemm
from seqkern._step cimport (ROW_BLOCK, copy_or_zero, final_states, group_gates, interleaves,
                            keep_ended, loop_threads, n_blocks, packs, project_block,
                            project_rows, row_blocks, row_start, run_blocks, step_barrier,
                            unit_block)
from seqkern._packed_gemm cimport (SK_PK_SIDE_ROWS, SK_PK_VBYTES, pk_alloc_nt, pk_gemm,
                                   pk_gemm_dir, pk_gemv_side, pk_pack_nn, pk_pack_side,
                                   pk_size)
from seqkern._workspace cimport scratch_alloc, scratch_free

cdef extern from "_lstm_cell.h" nogil:
    void sk_lstm_cell_fwd_f(float* z, const float* bias, const float* c_prev, float* c,
                            float* h, int n, Py_ssize_t gs)
    void sk_lstm_cell_fwd_d(double* z, const double* bias, const double* c_prev, double* c,
                            double* h, int n, Py_ssize_t gs)
    void sk_lstm_cell_bwd_f(const float* z, const float* c, const float* c_prev,
                            const float* d_out, float* carry_h, float* carry_c,
                            float* dz, int n, Py_ssize_t gs)
    void sk_lstm_cell_bwd_d(const double* z, const double* c, const double* c_prev,
                            const double* d_out, double* carry_h, double* carry_c,
                            double* dz, int n, Py_ssize_t gs)


cdef inline void cell_forward(floating* z, const floating* bias, const floating* c_prev,
                              floating* c, floating* h, int n, Py_ssize_t gs) noexcept nogil:
    """n units; z and bias hold their gates as runs i, f, g, o, gs >= n apart."""
    if floating is float:
        sk_lstm_cell_fwd_f(z, bias, c_prev, c, h, n, gs)
    else:
        sk_lstm_cell_fwd_d(z, bias, c_prev, c, h, n, gs)


cdef inline void cell_backward(const floating* z, const floating* c, const floating* c_prev,
                               const floating* d_out, floating* carry_h, floating* carry_c,
                               floating* dz, int n, Py_ssize_t gs) noexcept nogil:
    """n units; z and dz hold their gates as runs i, f, g, o, gs >= n apart."""
    if floating is float:
        sk_lstm_cell_bwd_f(z, c, c_prev, d_out, carry_h, carry_c, dz, n, gs)
    else:
        sk_lstm_cell_bwd_d(z, c, c_prev, d_out, carry_h, carry_c, dz, n, gs)


# Where blocks of rows run through the steps on the packed GEMM (_in_chunks), each
# block projects its own rows of a chunk of ~FWD_CHUNK_ROWS rows (T*B) just before
# the chunk's steps, so that their gate rows are still in cache when the steps add
# to them (projected all at once, T B 4H of them would go out to memory and back),
# where the blocks run on at least as many threads as the projection ahead would.
# The backward runs the time loop in chunks of ~BWD_CHUNK_ROWS rows (T*B) and adds
# each chunk's gradients after its steps; the packed weight gradients sum in
# blocks of K_BLOCK rows; the weight-gradient jobs are GRAD_UNITS rows of one gate,
# dx jobs DX_BLOCK x DX_BLOCK tiles.
cdef enum:
    FWD_CHUNK_ROWS = 256
    BWD_CHUNK_ROWS = 512
    K_BLOCK = 256
    GRAD_UNITS = 64
    DX_BLOCK = 64


# The products with the weights (_step.packs): packed on _packed_gemm.h are the
# per-step h_{t-1} @ W_hh^T and dz_t @ W_hh, the input projection x @ W_ih^T, the
# input gradient dz @ W_ih and the weight gradients dz^T @ [x | h_{t-1}].


cdef inline int _units(Py_ssize_t T, int B, int H, int n_parts) noexcept nogil:
    """Units per block of one time step (_step.unit_block), but one block for a
    single step of a single row: its products are GEMVs, and regrouping the weights
    would cost more than the step."""
    if T * B == 1:
        return H
    return unit_block(B, 4, H, n_parts)


cdef inline bint _one_row(int B, int H, int U, int step_gemm) noexcept nogil:
    """Do the steps take the batch-1 path (_forward_one_row, _backward_one_row)?"""
    return B == 1 and U == H and interleaves(step_gemm)


cdef inline bint _in_chunks(bint packed, int B, int n_run, int nt_proj) noexcept nogil:
    """Does the forward (on the row path) project its inputs in chunks inside the
    time loop (_forward_rows)? Where the products are packed (each element one
    k-ordered sum whatever rows share a call, so the same bits as projected all at
    once: the choice may follow the threads), from 2 rows a block (never pk_gemm's
    one-row kernel; a split block has at least MIN_ROWS), where the n_run blocks of
    rows (each projecting its own rows) run on at least as many threads as the
    projection ahead would (nt_proj)."""
    return packed and B >= 2 and n_run >= nt_proj


cdef inline int _chunk_steps(int B) noexcept nogil:
    """Time steps per backward chunk. At least 2: step t reads dz_{t+1} (all 4H
    columns) while its blocks write dz_t, so the two need separate slots."""
    return max(2, BWD_CHUNK_ROWS // B)


cdef floating* _grouped(const floating* W, int H, int K, int U, bint* ok) noexcept nogil:
    """W (4H, K) regrouped by blocks of U units (group_gates) in scratch, or W itself
    where U = H (PyTorch's order is then the block layout); *ok := False if out of
    memory."""
    if U >= H:
        return <floating*>W
    cdef floating* Wg = <floating*>scratch_alloc(<size_t>4 * H * K * sizeof(floating))
    if Wg == NULL:
        ok[0] = False
    else:
        group_gates(W, Wg, 4, H, K, U)
    return Wg


cdef inline void _free_grouped(floating* Wg, const floating* W) noexcept nogil:
    if Wg != W:
        scratch_free(Wg)


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------

cdef inline void _forward_cells(int B, int H, int u0, int uk, int zo, int gs,
                                Py_ssize_t t, const floating* c_prev,
                                const floating* bias_g, floating* z_t, floating* c_t,
                                floating* h_t, const int64_t* lengths) noexcept nogil:
    """The gate pass of step t on units u0 .. u0+uk-1, once z_t holds the whole
    pre-activation less the bias. Their gates are at z_t[b] + zo, as runs i, f, g,
    o, gs apart (as in bias_g + zo): zo = 4 u0, gs = uk for the block of u0 in the
    block layout; zo = u0, gs = H for a single block (U = H). Rows whose sequence
    has ended (t >= lengths[b]) get h_t = c_t = 0."""
    cdef int G = 4 * H
    cdef int b
    cdef floating* cn
    cdef floating* hn
    for b in range(B):
        cn = c_t + <Py_ssize_t>b * H + u0
        hn = h_t + <Py_ssize_t>b * H + u0
        if lengths != NULL and t >= lengths[b]:
            memset(cn, 0, uk * sizeof(floating))
            memset(hn, 0, uk * sizeof(floating))
            continue
        cell_forward(z_t + <Py_ssize_t>b * G + zo, bias_g + zo,
                     c_prev + <Py_ssize_t>b * H + u0, cn, hn, uk, gs)


cdef void _forward_block(int B, int H, int U, int k, Py_ssize_t t,
                         const floating* h_prev, const floating* c_prev,
                         const floating* Whh_g, const floating* W_pk, const floating* bias_g,
                         floating* z_t, floating* c_t, floating* h_t,
                         const int64_t* lengths) noexcept nogil:
    """Step t on the units of block k. z_t (B, 4H) holds the input projection of
    step t (without the bias, which the gate pass adds: bias_g (4H,), block layout)
    on entry and the gate activations on exit (block layout). h_prev, c_prev (B, H)
    are the states after step t-1; c_t, h_t (B, H) are written. Whh_g: W_hh in the
    block layout; W_pk: it packed for h @ Whh_g^T, or NULL (OpenBLAS)."""
    cdef int G = 4 * H
    cdef int u0 = k * U
    cdef int uk = min(U, H - u0)
    if W_pk != NULL:
        # alternate the panel order from step to step: see pk_gemm_dir
        pk_gemm_dir(B, H, h_prev, H, W_pk, z_t, G, 4 * u0, 4 * (u0 + uk), True, t & 1)
    else:
        gemm(False, True, B, 4 * uk, H, <floating>1, h_prev, H,
             Whh_g + <Py_ssize_t>4 * u0 * H, H, <floating>1, z_t + 4 * u0, G)
    _forward_cells(B, H, u0, uk, 4 * u0, uk, t, c_prev, bias_g, z_t, c_t, h_t, lengths)


cdef void _forward_rows(int b0, int b1, int B, int H, Py_ssize_t T, const floating* h0,
                        const floating* c0, const floating* Whh_g, const floating* W_pk,
                        const floating* bias_g, const floating* x, int I,
                        const floating* X_pk, Py_ssize_t Tc, floating* gates, Py_ssize_t nz,
                        floating* cells, floating* out, const int64_t* lengths) noexcept nogil:
    """Every step for batch rows [b0, b1) (their own sequences), one unit block:
    _forward_block on those rows; gates has nz slots, step t in slot t % nz (nz = T,
    or a multiple of Tc); the rest as in forward(). X_pk: W_ih (block layout)
    packed for x @ W_ih^T (_in_chunks): the block's rows of the steps' inputs x
    (T, B, I) are then projected here, Tc steps at a time, just before those steps;
    NULL: gates holds every step's projection already."""
    cdef int G = 4 * H
    cdef Py_ssize_t t, t1 = 0, step = <Py_ssize_t>B * H, r0 = <Py_ssize_t>b0 * H
    cdef Py_ssize_t zr0 = <Py_ssize_t>b0 * G
    for t in range(T):
        if X_pk != NULL and t == t1:
            t1 = min(t + Tc, T)
            # into slots t % nz .. (t1 - 1) % nz, consecutive (packed: W_ih unused)
            project_block(x + t * B * I, <const floating*>NULL, X_pk, <const floating*>NULL,
                          gates + (t % nz) * B * G, t1 - t, B, b0, b1, I, G)
        _forward_block(b1 - b0, H, H, 0, t,
                       (h0 + r0) if t == 0 else out + (t - 1) * step + r0,
                       (c0 + r0) if t == 0 else cells + (t - 1) * step + r0,
                       Whh_g, W_pk, bias_g, gates + (t % nz) * B * G + zr0,
                       cells + t * step + r0, out + t * step + r0,
                       NULL if lengths == NULL else lengths + b0)


cdef void _forward_one_row(Py_ssize_t T, int I, int H, const floating* x, const floating* Xpk,
                           const floating* Wpk, floating* S, const floating* bias,
                           floating* z, Py_ssize_t nz, floating* cells, floating* out,
                           const floating* h0, const floating* c0, const int64_t* lengths,
                           bint first) noexcept nogil:
    """The forward at batch 1 (one block, weights packed: _one_row). Each step's
    product h_{t-1} @ W_hh^T is bound by reading W_hh from L2 and leaves the FMA
    units mostly idle; the input projection is bound by the FMAs. So the steps run
    in chunks of R = SK_PK_SIDE_ROWS, and each step of a chunk computes, interleaved
    with its own product (pk_gemv_side), 1/R of the next chunk's projection. S
    (I x R scratch) holds the next chunk's x rows; z has nz slots (T, or 2R),
    step t in slot t % nz. ``first``: the projection of every step is already in z
    (forward() ran it first, on several threads). Both ways each element of the
    projection is one k-ordered chain of FMAs from 0 (pk_gemm's rows, or the side
    product's), so the results are the same bits."""
    cdef int G = 4 * H
    cdef int R = SK_PK_SIDE_ROWS
    cdef int nv = <int>((G * sizeof(floating) + SK_PK_VBYTES - 1) // SK_PK_VBYTES)  # vector columns
    cdef int j, m2
    cdef Py_ssize_t t, r0
    if not first:
        pk_gemm(<int>min(<Py_ssize_t>R, T), I, x, I, Xpk, z, G, 0, G, False)
    for t in range(T):
        j = <int>(t % R)
        r0 = t - j + R                                  # the next chunk's first step
        m2 = 0 if first or r0 >= T else <int>min(<Py_ssize_t>R, T - r0)
        if j == 0 and m2 > 0:
            pk_pack_side(m2, I, x + r0 * I, I, S)
        pk_gemv_side(H, h0 if t == 0 else out + (t - 1) * H, Wpk, G, z + (t % nz) * G, True,
                     t & 1, False, I, S, Xpk, G, z + (r0 % nz) * G, G, m2,
                     <long long>(j * nv // R) * max(I, 1),
                     <long long>((j + 1) * nv // R) * max(I, 1))
        _forward_cells(1, H, 0, H, 0, H, t, c0 if t == 0 else cells + (t - 1) * H, bias,
                       z + (t % nz) * G, cells + t * H, out + t * H, lengths)


def forward(const floating[:, :, ::1] x,      # (T, B, I)
            const floating[:, ::1] h0,        # (B, H)
            const floating[:, ::1] c0,        # (B, H)
            const floating[:, ::1] W_ih,      # (4H, I)
            const floating[:, ::1] W_hh,      # (4H, H)
            const floating[::1] bias,         # (4H,) = b_ih + b_hh
            const int64_t[::1] lengths,       # (B,) or None
            floating[:, :, ::1] out,          # (T, B, H) OUT: every h_t (0 past a length)
            floating[:, ::1] h_n,             # (B, H) OUT: the state after each sequence's last step
            floating[:, ::1] c_n,             # (B, H) OUT: the cell after each sequence's last step
            floating[:, :, ::1] gates,        # (T, B, 4H) OUT or None: gate activations, block layout
            floating[:, :, ::1] cells,        # (T, B, H) OUT or None: every c_t (0 past a length)
            int n_threads, int n_parts, int step_gemm):
    """LSTM forward over a whole sequence. T, B, H >= 1 (the wrapper handles empties).
    gates and cells (the cache) both given or both None (kept in scratch).
    step_gemm: seqkern._step_gemm's AUTO, BLAS or PACKED."""
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = W_hh.shape[1]
    cdef int G = 4 * H
    cdef Py_ssize_t TB = <Py_ssize_t>T * B
    cdef Py_ssize_t step = <Py_ssize_t>B * H
    cdef Py_ssize_t zstep = <Py_ssize_t>B * G
    cdef const int64_t* lens = NULL if lengths is None else &lengths[0]
    cdef floating* outp = &out[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* h0p = &h0[0, 0]
    cdef const floating* c0p = &c0[0, 0]
    cdef const floating* h_prev
    cdef const floating* c_prev
    cdef int U = _units(T, B, H, n_parts)
    cdef int n_units = n_blocks(H, U)
    cdef int n_rb = row_blocks(B, n_parts)
    # blocks of the projection: at least ROW_BLOCK rows (the last may be longer),
    # never one row, which pk_gemm sums on its one-row kernel in another order than
    # the steps' side product does at batch 1 (see _forward_one_row)
    cdef int n_rows = <int>max(<Py_ssize_t>1, TB // ROW_BLOCK)
    cdef int i, blk, rb
    cdef Py_ssize_t t
    cdef int nt = n_threads
    cdef int nt_proj = loop_threads(nt, n_rows, <double>TB * I * G)
    cdef int nt_rows = loop_threads(nt, n_rb, <double>TB * G * H)
    cdef bint packed = packs(step_gemm, TB)
    cdef bint one_row = _one_row(B, H, U, step_gemm)
    cdef bint by_rows = not one_row and (n_rb > 1 or n_units == 1)
    cdef int n_run = run_blocks(n_rb, nt_rows, packed)
    # the projection inside the row loop, chunk by chunk (Tc steps)
    cdef bint chunked = by_rows and _in_chunks(packed, B, n_run, nt_proj)
    cdef Py_ssize_t Tc = min(<Py_ssize_t>T, max(1, FWD_CHUNK_ROWS // B))
    # batch 1: the projection runs inside the steps, unless it can run first on
    # several threads (then z needs every step's slot)
    cdef bint first = not chunked and (not one_row or nt_proj > 1)
    cdef Py_ssize_t nz = T if first or gates is not None else (
        Tc if chunked else min(T, 2 * SK_PK_SIDE_ROWS))
    cdef bint ok = True
    cdef floating* Wih = NULL
    cdef floating* Whh = NULL
    cdef floating* bp = NULL
    cdef floating* Wpk = NULL
    cdef floating* Xpk = NULL
    cdef floating* S = NULL
    cdef floating* zp = NULL if gates is None else &gates[0, 0, 0]
    cdef floating* csp = NULL if cells is None else &cells[0, 0, 0]
    cdef bint own_z = gates is None
    try:
        t = 0
        h_prev = c_prev = NULL
        with nogil:
            # 0. The weights in the layout the steps read, and the scratch: copying
            # megabytes of weights takes as long as many steps, so not under the GIL
            # (another Python thread, such as a layer's other direction, runs then).
            Wih = _grouped(&W_ih[0, 0], H, I, U, &ok)
            if ok:
                Whh = _grouped(&W_hh[0, 0], H, H, U, &ok)
            if ok:
                bp = _grouped(&bias[0], H, 1, U, &ok)
            if own_z and ok:
                zp = <floating*>scratch_alloc(nz * zstep * sizeof(floating))
                csp = <floating*>scratch_alloc(TB * H * sizeof(floating))
            if packed and ok:
                Wpk = pk_alloc_nt(G, H, Whh)       # for h_prev @ Whh_g^T
                Xpk = pk_alloc_nt(G, I, Wih)       # for x @ Wih_g^T
                ok = Wpk != NULL and Xpk != NULL
            if one_row and ok:
                S = <floating*>scratch_alloc(<size_t>I * SK_PK_SIDE_ROWS * sizeof(floating))
                ok = S != NULL
            if not ok or zp == NULL or csp == NULL:
                with gil:
                    raise MemoryError("lstm_forward: no memory for the kernel's scratch")

            # 1. The input projection of every step, unless it runs inside the steps
            # (chunked, or at batch 1 on _forward_one_row).
            if first:
                for i in prange(n_rows, num_threads=nt_proj, schedule='static',
                                use_threads_if=nt_proj > 1):
                    project_rows(xp, Wih, Xpk, <const floating*>NULL, zp,
                                 <Py_ssize_t>i * TB // n_rows, <Py_ssize_t>(i + 1) * TB // n_rows,
                                 I, G)

            # 2. The recurrence: each block of rows through all steps, or each step
            # over its unit blocks.
            if one_row:
                _forward_one_row(T, I, H, xp, Xpk, Wpk, S, bp, zp, nz, csp, outp, h0p, c0p,
                                 lens, first)
            elif by_rows:
                for rb in prange(n_run, num_threads=nt_rows, schedule='static',
                                 use_threads_if=nt_rows > 1):
                    _forward_rows(row_start(rb, B, n_run), row_start(rb + 1, B, n_run), B, H, T,
                                  h0p, c0p, Whh, Wpk, bp, xp, I, Xpk if chunked else NULL,
                                  Tc, zp, nz, csp, outp, lens)
            else:
                with parallel(num_threads=nt, use_threads_if=nt > 1):
                    for t in range(T):
                        h_prev = h0p if t == 0 else outp + (t - 1) * step
                        c_prev = c0p if t == 0 else csp + (t - 1) * step
                        for blk in prange(n_units, schedule='static'):
                            _forward_block(B, H, U, blk, t, h_prev, c_prev, Whh, Wpk, bp,
                                           zp + t * zstep, csp + t * step, outp + t * step,
                                           lens)
                        step_barrier()

            # 3. The final state of each sequence.
            final_states(B, H, T, lens, h0p, outp, &h_n[0, 0])
            final_states(B, H, T, lens, c0p, csp, &c_n[0, 0])
    finally:
        _free_grouped(Wih, &W_ih[0, 0])
        _free_grouped(Whh, &W_hh[0, 0])
        _free_grouped(bp, &bias[0])
        scratch_free(Wpk)
        scratch_free(Xpk)
        scratch_free(S)
        if own_z:
            scratch_free(zp)
            scratch_free(csp)


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------

cdef void _backward_units(int B, int H, int u0, int uk, int zo, int gs, Py_ssize_t t,
                          const floating* dz_next, const floating* Whh_g,
                          const floating* W_pk, int kh, Py_ssize_t w_slot,
                          floating* carry_h, floating* carry_c, const floating* d_h_n,
                          floating* dz_t,
                          const floating* d_out_t, const floating* z_t,
                          const floating* c_t, const floating* c_prev,
                          const int64_t* lengths) noexcept nogil:
    """One step back on units u0 .. u0+uk-1, whose gates in z_t and dz_t rows are
    at + zo as runs i, f, g, o, gs apart (the block of u0 in the block layout: zo =
    4 u0, gs = uk; a single block: zo = u0, gs = H).

    carry_h (B, H) is the gradient reaching h_t from later steps and from d_h_n
    ((B, H) or NULL); the rows that step t+1 consumed were zeroed, so adding
    dz_{t+1} @ W_hh (zero in rows that ended before t+1, whose carry_h stays
    d_h_n's: keep_ended) completes it. carry_c (B, H) is the gradient
    reaching c_t. Then, if t >= 0, for rows still running at t: dz_t (B, 4H, block
    layout) is computed from the gate activations z_t, c_t and c_prev; carry_h of
    those rows is consumed (set to 0) and carry_c becomes the gradient of c_{t-1}.
    Rows already ended get dz_t = 0 and keep their carries.
    dz_next (B, 4H) or NULL (t = T-1), d_out_t (B, H) or NULL.
    W_pk: Whh_g packed for dz @ Whh_g, or NULL (OpenBLAS). If kh > 0 (B = 1), it
    holds rows [0, kh) and [kh, 4H) packed apart (the second at W_pk + w_slot),
    and the step adds their products in an order that alternates with t: the
    half read last is then still partly in L1 (the forward's pk_gemm_dir, over K)."""
    cdef int G = 4 * H
    cdef int b, i, kb
    cdef Py_ssize_t off
    cdef floating* di
    if dz_next != NULL and W_pk != NULL and kh > 0:
        for i in range(2):
            kb = i ^ <int>(t & 1)
            pk_gemm(B, G - kh if kb else kh, dz_next + kb * kh, G, W_pk + kb * w_slot,
                    carry_h, H, u0, u0 + uk, True)
    elif dz_next != NULL and W_pk != NULL:
        pk_gemm(B, G, dz_next, G, W_pk, carry_h, H, u0, u0 + uk, True)
    elif dz_next != NULL:
        gemm(False, False, B, uk, G, <floating>1, dz_next, G, Whh_g + u0, H,
             <floating>1, carry_h + u0, H)
    if dz_next != NULL:
        keep_ended(B, H, lengths, t, d_h_n, carry_h, u0, u0 + uk)
    if t < 0:
        return
    for b in range(B):
        di = dz_t + <Py_ssize_t>b * G + zo
        if lengths != NULL and t >= lengths[b]:
            for i in range(4):
                memset(di + i * gs, 0, uk * sizeof(floating))
            continue
        off = <Py_ssize_t>b * H + u0
        cell_backward(z_t + <Py_ssize_t>b * G + zo, c_t + off, c_prev + off,
                      NULL if d_out_t == NULL else d_out_t + off,
                      carry_h + off, carry_c + off, di, uk, gs)


cdef inline void _backward_block(int B, int H, int U, int k, Py_ssize_t t,
                                 const floating* dz_next, const floating* Whh_g,
                                 const floating* W_pk, int kh, Py_ssize_t w_slot,
                                 floating* carry_h, floating* carry_c,
                                 const floating* d_h_n, floating* dz_t,
                                 const floating* d_out_t, const floating* z_t,
                                 const floating* c_t, const floating* c_prev,
                                 const int64_t* lengths) noexcept nogil:
    """_backward_units on the units of block k (block layout)."""
    cdef int u0 = k * U
    cdef int uk = min(U, H - u0)
    _backward_units(B, H, u0, uk, 4 * u0, uk, t, dz_next, Whh_g, W_pk, kh, w_slot, carry_h,
                    carry_c, d_h_n, dz_t, d_out_t, z_t, c_t, c_prev, lengths)


cdef void _backward_rows(int b0, int b1, int B, int H, Py_ssize_t T, Py_ssize_t t0,
                         Py_ssize_t t1, int Tc, const floating* Whh_g, const floating* W_pk,
                         int kh, Py_ssize_t w_slot, floating* carry_h, floating* carry_c,
                         const floating* d_h_n, floating* dz, const floating* d_out,
                         const floating* gates, const floating* cells, const floating* c0,
                         const int64_t* lengths) noexcept nogil:
    """Steps t1-1 .. t0 back for batch rows [b0, b1) (their own sequences), one unit
    block; dz (Tc, B, 4H) slots (step t in t % Tc), the rest as in backward()."""
    cdef Py_ssize_t t, step = <Py_ssize_t>B * H, r0 = <Py_ssize_t>b0 * H
    cdef Py_ssize_t zstep = 4 * step, zr0 = 4 * r0
    for t in range(t1 - 1, t0 - 1, -1):
        _backward_units(b1 - b0, H, 0, H, 0, H, t,
                        NULL if t == T - 1 else dz + ((t + 1) % Tc) * zstep + zr0, Whh_g, W_pk,
                        kh, w_slot, carry_h + r0, carry_c + r0,
                        NULL if d_h_n == NULL else d_h_n + r0, dz + (t % Tc) * zstep + zr0,
                        NULL if d_out == NULL else d_out + t * step + r0,
                        gates + t * zstep + zr0, cells + t * step + r0,
                        (c0 + r0) if t == 0 else cells + (t - 1) * step + r0,
                        NULL if lengths == NULL else lengths + b0)


cdef inline int _side_vcols(int N2, size_t elsize) noexcept nogil:
    """Vector columns (SK_PK_VBYTES bytes) of the side product's N2 columns."""
    cdef int vl = <int>(SK_PK_VBYTES // elsize)
    return (N2 + vl - 1) // vl


cdef void _backward_one_row(Py_ssize_t T, int I, int H, Py_ssize_t t0, Py_ssize_t t1, int Tc,
                            int kh, Py_ssize_t kslot, const floating* Wpk,
                            const floating* Wx, floating* S, floating* carry_h,
                            floating* carry_c, const floating* d_h_n, floating* dz,
                            const floating* d_out,
                            const floating* gates, const floating* cells, const floating* c0,
                            floating* dx, const int64_t* lengths) noexcept nogil:
    """Steps t1-1 .. t0 back at batch 1 (one block, packed: _one_row). The steps go
    in groups of R = SK_PK_SIDE_ROWS from t1 down; each step of a whole group q + 1
    computes, interleaved with its product dz_{t+1} @ W_hh (pk_gemv_side, bound by
    reading W_hh while the FMA units idle), 1/R of the dx rows of group q (its dz
    complete, packed into S (4H x R) at the group's first step), cut anywhere inside
    a column. The dx of the chunk's last whole group and of a partial one below it
    are left to the chunk's jobs (_grad_job). Wpk: W_hh in two K halves (kh, kslot:
    see _backward_units); Wx: W_ih packed for dz @ W_ih."""
    cdef int R = SK_PK_SIDE_ROWS
    cdef int G = 4 * H, i, kb, j
    cdef Py_ssize_t s, t, q, tq, n = t1 - t0
    cdef long long total = <long long>_side_vcols(I, sizeof(floating)) * G, s0, s1, mid
    cdef const floating* dz_next
    for s in range(n):
        t = t1 - 1 - s
        dz_next = NULL if t == T - 1 else dz + ((t + 1) % Tc) * G
        q = s // R - 1                  # the group of steps whose dx is due
        tq = t1 - R * (q + 1)           # its first step
        j = <int>(s % R)
        s0 = s1 = 0
        if q >= 0 and s < n // R * R:   # in a whole group of R steps
            s0 = j * total // R
            s1 = (j + 1) * total // R
            if j == 0:
                pk_pack_side(R, G, dz + (tq % Tc) * G, G, S)
        mid = (s0 + s1) // 2
        if dz_next != NULL or s1 > s0:
            # carry_h += dz_{t+1} @ W_hh in two halves of K, in an order alternating
            # with t (the half read last is then still partly in L1), each with half
            # of this step's share of the group's dx
            for i in range(2):
                kb = i ^ <int>(t & 1)
                pk_gemv_side(0 if dz_next == NULL else (G - kh if kb else kh),
                             dz_next + kb * kh if dz_next != NULL else NULL,
                             Wpk + kb * kslot, 0 if dz_next == NULL else H, carry_h,
                             True, False, True, G, S, Wx, I, dx + tq * I, I, R,
                             s0 if i == 0 else mid, mid if i == 0 else s1)
        if dz_next != NULL:
            keep_ended(1, H, lengths, t, d_h_n, carry_h, 0, H)
        _backward_units(1, H, 0, H, 0, H, t, <const floating*>NULL, <const floating*>NULL,
                        Wpk, kh, kslot, carry_h, carry_c, d_h_n, dz + (t % Tc) * G,
                        NULL if d_out == NULL else d_out + t * H, gates + t * G,
                        cells + t * H, c0 if t == 0 else cells + (t - 1) * H, lengths)


cdef void _pack_kblocks(const floating* A, Py_ssize_t K, int N, floating* P,
                        Py_ssize_t slot) noexcept nogil:
    """Pack A (K, N) row-major as ceil(K / K_BLOCK) operands of K_BLOCK rows (the
    last one shorter), block kb at P + kb * slot (slot = pk_size(N, K_BLOCK))."""
    cdef Py_ssize_t kb, k0
    for kb in range(n_blocks(K, K_BLOCK)):
        k0 = kb * K_BLOCK
        pk_pack_nn(<int>min(<Py_ssize_t>K_BLOCK, K - k0), N, A + k0 * N, N, P + kb * slot)


cdef void _gemm_kblocks(int M, Py_ssize_t K, const floating* A, Py_ssize_t lda,
                        const floating* P, Py_ssize_t slot, floating* C, Py_ssize_t ldc,
                        int n0, int n1, bint accumulate) noexcept nogil:
    """C[:, n0:n1] (+)= A @ W[:, n0:n1] (added if ``accumulate``, else written); A
    (M, K) row-major (row stride lda), W (K, N) packed by _pack_kblocks into P.
    Each element is summed block by block in k order, each block in k order: an
    order fixed by K alone. The blocks keep each packed panel in L2 while the
    4-row tiles of A stream past it."""
    cdef Py_ssize_t kb, k0
    for kb in range(n_blocks(K, K_BLOCK)):
        k0 = kb * K_BLOCK
        pk_gemm(M, <int>min(<Py_ssize_t>K_BLOCK, K - k0), A + k0, lda, P + kb * slot,
                C, ldc, n0, n1, accumulate or kb > 0)


cdef const floating* _chunk_rows(Py_ssize_t t0, int R, int B, int I, int H,
                                 const floating* x, const floating* h0,
                                 const floating* out, floating* hs, floating* Xc,
                                 Py_ssize_t xslot, floating* Hc,
                                 Py_ssize_t hslot) noexcept nogil:
    """The h_{t-1} rows (R, H) of the backward chunk of R rows from step t0: out's
    rows from step t0-1, or h0 then out's first rows copied into hs (t0 = 0); and,
    if Xc is not NULL, x's rows and those packed in K_BLOCK-row blocks into Xc, Hc."""
    cdef Py_ssize_t step = <Py_ssize_t>B * H
    cdef const floating* hc
    if t0 == 0:
        memcpy(hs, h0, step * sizeof(floating))
        memcpy(hs + step, out, <Py_ssize_t>(R - B) * H * sizeof(floating))
        hc = hs
    else:
        hc = out + (t0 - 1) * step
    if Xc != NULL:
        _pack_kblocks(x + t0 * B * I, R, I, Xc, xslot)
        _pack_kblocks(hc, R, H, Hc, hslot)
    return hc


cdef void _grad_job(int job, int n_w, int n_c64, int n_xc, int U, int R, int B,
                    int I, int H, const floating* dzc, const floating* xc,
                    const floating* hc, const floating* Wih_g,
                    const floating* Xc, Py_ssize_t xslot,
                    const floating* Hc, Py_ssize_t hslot,
                    const floating* WihK, const floating* Wx, floating* at,
                    floating* dWih, floating* dWhh, floating* dbp,
                    floating* dxc, bint first) noexcept nogil:
    """Job ``job`` of one chunk's gradients; jobs write disjoint elements.
    dzc (R, 4H): the chunk's dz (block layout); xc (R, I): its inputs; hc (R, H):
    the h_{t-1} of its steps; dxc (R, I): its rows of dx; at: the thread's scratch
    (GRAD_UNITS x R, and 4H x SK_PK_SIDE_ROWS on the batch-1 path).
    [0, n_w): rows q H + [u0, u0 + GRAD_UNITS) (gate q; n_c64 such pieces per unit block) of
      dW_ih, dW_hh (written in the first chunk the backward runs, ``first``, added
      to in the others) and db (added to): dz[:, cols]^T xc, dz[:, cols]^T hc and
      column sums (in row order). Packed (Xc not NULL): the columns are first
      transposed into at (GRAD_UNITS, R), and xc, hc come packed in Xc, Hc.
    n_w on the batch-1 path (Wx not NULL): the dx rows the steps left
      (_backward_one_row: the last whole group of SK_PK_SIDE_ROWS and a partial one),
      summed as the steps sum the others.
    Else (n_w, ...): DX_BLOCK x DX_BLOCK tiles of dx := dz @ Wih_g (WihK: Wih_g
      packed in K_BLOCK-row blocks, or NULL for OpenBLAS), n_xc per row block."""
    cdef int G = 4 * H
    cdef int RS = SK_PK_SIDE_ROWS
    cdef int q, u0, n, k, uk, col, r, j, c0, c1, m, m2
    cdef Py_ssize_t s, s0, s1, r0, r1
    cdef const floating* row
    cdef floating* db
    if job < n_w:
        q = job // (n_w // 4)                   # the gate
        k = job % (n_w // 4) // n_c64           # the unit block
        uk = min(U, H - k * U)
        u0 = k * U + job % n_c64 * GRAD_UNITS
        n = min(GRAD_UNITS, k * U + uk - u0)
        if n <= 0:                              # (past a shorter last block)
            return
        col = 4 * k * U + q * uk + (u0 - k * U)
        r = q * H + u0
        db = dbp + r
        for s in range(R):
            row = dzc + s * G + col
            for j in range(n):
                db[j] += row[j]
        if Xc == NULL:
            gemm(True, False, n, I, R, <floating>1, dzc + col, G, xc, I,
                 <floating>(0 if first else 1), dWih + <Py_ssize_t>r * I, I)
            gemm(True, False, n, H, R, <floating>1, dzc + col, G, hc, H,
                 <floating>(0 if first else 1), dWhh + <Py_ssize_t>r * H, H)
            return
        # Transpose in tiles of 16 rows, so that each row of at gets whole cache
        # lines.
        for s0 in range(0, R, 16):
            s1 = min(s0 + 16, R)
            for j in range(n):
                for s in range(s0, s1):
                    at[j * R + s] = dzc[s * G + col + j]
        _gemm_kblocks(n, R, at, R, Xc, xslot, dWih + <Py_ssize_t>r * I, I, 0, I, not first)
        _gemm_kblocks(n, R, at, R, Hc, hslot, dWhh + <Py_ssize_t>r * H, H, 0, H, not first)
        return
    if Wx != NULL:
        r0 = 0
        m = R - max(R // RS - 1, 0) * RS            # rows 0 .. m - 1 of the chunk
        while r0 < m:
            m2 = <int>min(<Py_ssize_t>RS, m - r0)
            pk_pack_side(m2, G, dzc + r0 * G, G, at)
            pk_gemv_side(0, <const floating*>NULL, <const floating*>NULL, 0, <floating*>NULL,
                         True, False, False, G, at, Wx, I, dxc + r0 * I, I, m2, 0,
                         <long long>_side_vcols(I, sizeof(floating)) * G)
            r0 += RS
        return
    job -= n_w
    r0 = <Py_ssize_t>(job // n_xc) * DX_BLOCK
    r1 = min(r0 + DX_BLOCK, <Py_ssize_t>R)
    c0 = (job % n_xc) * DX_BLOCK
    c1 = min(c0 + DX_BLOCK, I)
    if WihK != NULL:
        _gemm_kblocks(<int>(r1 - r0), G, dzc + r0 * G, G, WihK, xslot, dxc + r0 * I, I,
                      c0, c1, False)
    else:
        gemm(False, False, <int>(r1 - r0), c1 - c0, G, <floating>1, dzc + r0 * G, G,
             Wih_g + c0, I, <floating>0, dxc + r0 * I + c0, I)


def backward(const floating[:, :, ::1] x,        # (T, B, I)  from the forward
             const floating[:, :, ::1] d_out,    # (T, B, H) or None
             const floating[:, ::1] d_h_n,       # (B, H) or None
             const floating[:, ::1] d_c_n,       # (B, H) or None
             const floating[:, ::1] h0,          # (B, H)
             const floating[:, ::1] c0,          # (B, H)
             const floating[:, ::1] W_ih,        # (4H, I)
             const floating[:, ::1] W_hh,        # (4H, H)
             const int64_t[::1] lengths,         # (B,) or None
             const floating[:, :, ::1] out,      # (T, B, H)  from the forward
             const floating[:, :, ::1] gates,    # (T, B, 4H) from the forward
             const floating[:, :, ::1] cells,    # (T, B, H)  from the forward
             floating[:, :, ::1] dx,             # (T, B, I) OUT
             floating[:, ::1] dh0,               # (B, H) OUT
             floating[:, ::1] dc0,               # (B, H) OUT
             floating[:, ::1] dW_ih,             # (4H, I) OUT
             floating[:, ::1] dW_hh,             # (4H, H) OUT
             floating[::1] db,                   # (4H,) OUT: gradient of either bias
             int n_threads, int n_parts, int step_gemm):
    """LSTM backward through time. T, B, H >= 1 (the wrapper handles empties).
    step_gemm: seqkern._step_gemm's AUTO, BLAS or PACKED (as in the forward, and
    n_parts too: the gate layout of ``gates`` depends on them). x comes first:
    Cython picks the fused type from the first argument, which must not be None."""
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = W_hh.shape[1]
    cdef int G = 4 * H
    cdef Py_ssize_t TB = <Py_ssize_t>T * B
    cdef Py_ssize_t step = <Py_ssize_t>B * H
    cdef Py_ssize_t zstep = <Py_ssize_t>B * G
    cdef const int64_t* lens = NULL if lengths is None else &lengths[0]
    cdef const floating* dop = NULL if d_out is None else &d_out[0, 0, 0]
    cdef const floating* zp = &gates[0, 0, 0]
    cdef const floating* csp = &cells[0, 0, 0]
    cdef const floating* c0p = &c0[0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* outp = &out[0, 0, 0]
    cdef floating* dxp = &dx[0, 0, 0]
    cdef floating* dWih = &dW_ih[0, 0]
    cdef floating* dWhh = &dW_hh[0, 0]
    cdef floating* dbp = &db[0]
    cdef floating* carry_h = &dh0[0, 0]
    cdef floating* carry_c = &dc0[0, 0]
    cdef const floating* dhn = NULL if d_h_n is None else &d_h_n[0, 0]
    cdef const floating* dcn = NULL if d_c_n is None else &d_c_n[0, 0]
    cdef const floating* dz_next
    cdef const floating* do_t
    cdef const floating* c_prev
    cdef const floating* hc
    cdef int U = _units(T, B, H, n_parts)
    cdef int n_units = n_blocks(H, U)
    cdef int n_rb = row_blocks(B, n_parts)
    cdef int Tc = _chunk_steps(B)
    cdef int n_chunks = n_blocks(T, Tc)
    cdef int R_max = min(T, Tc) * B
    cdef int n_c64 = n_blocks(U, GRAD_UNITS)
    cdef int n_w = 4 * n_units * n_c64
    cdef int n_xc = n_blocks(I, DX_BLOCK)
    cdef int n_kb = n_blocks(R_max, K_BLOCK)
    cdef int blk, job, n_jobs, ch, R, rb
    cdef Py_ssize_t t, t0, t1
    cdef int nt = n_threads
    cdef int nt_rows, nt_jobs, n_run
    cdef bint packed = packs(step_gemm, TB)
    # B = 1: the step's dz @ W_hh in two halves of K = 4H (see _backward_units)
    cdef int kh = (G + 1) // 2 if B == 1 else 0
    cdef Py_ssize_t kslot = pk_size(<floating*>NULL, H, kh)
    # packed: a chunk's x and h_{t-1} rows packed in K_BLOCK-row blocks (Xc, Hc:
    # xslot, hslot elements per block; Wih_g's blocks in WihK are xslot too)
    cdef Py_ssize_t xslot = pk_size(<floating*>NULL, I, K_BLOCK)
    cdef Py_ssize_t hslot = pk_size(<floating*>NULL, H, K_BLOCK)
    # batch 1, one block, packed: the steps compute dx as they go (_backward_one_row)
    # with Wih_g packed whole (Wx, in place of WihK), their side operand in the
    # first thread's `at` scratch
    cdef bint one_row = _one_row(B, H, U, step_gemm)
    cdef Py_ssize_t at_size = max(<Py_ssize_t>GRAD_UNITS * R_max,
                                  <Py_ssize_t>SK_PK_SIDE_ROWS * G if one_row else 0)
    cdef bint ok = True
    cdef floating* Wih = NULL
    cdef floating* Whh = NULL
    cdef floating* Wpk = NULL
    cdef floating* WihK = NULL
    cdef floating* Wx = NULL
    cdef floating* Xc = NULL
    cdef floating* Hc = NULL
    cdef floating* at = NULL
    cdef floating* dzp = NULL
    cdef floating* hs = NULL
    try:
        t = 0
        dz_next = do_t = c_prev = NULL
        with nogil:
            # 0. The weights in the layout the steps read, and the scratch, without
            # the GIL (see forward).
            Wih = _grouped(&W_ih[0, 0], H, I, U, &ok)
            if ok:
                Whh = _grouped(&W_hh[0, 0], H, H, U, &ok)
            if ok:
                dzp = <floating*>scratch_alloc(<size_t>min(T, Tc) * zstep * sizeof(floating))
                # the h_{t-1} rows of the first chunk: h0, then out[0 : Tc-1]
                hs = <floating*>scratch_alloc(<size_t>R_max * H * sizeof(floating))
                ok = dzp != NULL and hs != NULL
            if ok and packed:
                if kh > 0:                                 # for dz @ Whh_g, in two halves
                    Wpk = <floating*>scratch_alloc(2 * kslot * sizeof(floating))
                else:
                    Wpk = <floating*>scratch_alloc(pk_size(Wpk, H, G) * sizeof(floating))
                if one_row:                                # for the steps' dz @ Wih_g
                    Wx = <floating*>scratch_alloc(pk_size(Wx, I, G) * sizeof(floating))
                else:
                    WihK = <floating*>scratch_alloc(n_blocks(G, K_BLOCK) * xslot * sizeof(floating))
                Xc = <floating*>scratch_alloc(n_kb * xslot * sizeof(floating))
                Hc = <floating*>scratch_alloc(n_kb * hslot * sizeof(floating))
                at = <floating*>scratch_alloc(max(nt, 1) * at_size * sizeof(floating))
                ok = (Wpk != NULL and (Wx != NULL or WihK != NULL) and Xc != NULL and Hc != NULL
                      and at != NULL)
            if not ok:
                with gil:
                    raise MemoryError("lstm_backward: no memory for the kernel's scratch")
            copy_or_zero(carry_h, dhn, step)
            copy_or_zero(carry_c, dcn, step)
            memset(dbp, 0, G * sizeof(floating))
            if Wpk != NULL and kh > 0:
                pk_pack_nn(kh, H, Whh, H, Wpk)
                pk_pack_nn(G - kh, H, Whh + <Py_ssize_t>kh * H, H, Wpk + kslot)
            elif Wpk != NULL:
                pk_pack_nn(G, H, Whh, H, Wpk)
            if Wx != NULL:
                pk_pack_nn(G, I, Wih, I, Wx)
            if WihK != NULL:
                _pack_kblocks(Wih, G, I, WihK, xslot)
            for ch in range(n_chunks - 1, -1, -1):
                t0 = <Py_ssize_t>ch * Tc
                t1 = min(t0 + Tc, <Py_ssize_t>T)
                R = <int>((t1 - t0) * B)
                # 1. Through the chunk's steps, latest first (dz_t in slot t % Tc).
                if one_row:
                    _backward_one_row(T, I, H, t0, t1, Tc, kh, kslot, Wpk, Wx, at, carry_h,
                                      carry_c, dhn, dzp, dop, zp, csp, c0p, dxp, lens)
                elif n_rb > 1 or n_units == 1:
                    nt_rows = loop_threads(nt, n_rb, <double>R * G * H)
                    n_run = run_blocks(n_rb, nt_rows, packed)
                    for rb in prange(n_run, num_threads=nt_rows, schedule='static',
                                     use_threads_if=nt_rows > 1):
                        _backward_rows(row_start(rb, B, n_run), row_start(rb + 1, B, n_run), B,
                                       H, T, t0, t1, Tc, Whh, Wpk, kh, kslot, carry_h,
                                       carry_c, dhn, dzp, dop, zp, csp, c0p, lens)
                else:
                    with parallel(num_threads=nt, use_threads_if=nt > 1):
                        for t in range(t1 - 1, t0 - 1, -1):
                            dz_next = NULL if t == T - 1 else dzp + ((t + 1) % Tc) * zstep
                            do_t = NULL if dop == NULL else dop + t * step
                            c_prev = c0p if t == 0 else csp + (t - 1) * step
                            for blk in prange(n_units, schedule='static'):
                                _backward_block(B, H, U, blk, t, dz_next, Whh, Wpk, kh, kslot,
                                                carry_h, carry_c, dhn, dzp + (t % Tc) * zstep,
                                                do_t,
                                                zp + t * zstep, csp + t * step, c_prev, lens)
                            step_barrier()

                # 2. The chunk's weight, bias and input gradients.
                n_jobs = n_w + (1 if one_row else n_blocks(R, DX_BLOCK) * n_xc)
                hc = _chunk_rows(t0, R, B, I, H, xp, &h0[0, 0], outp, hs, Xc, xslot, Hc,
                                 hslot)
                nt_jobs = loop_threads(nt, n_jobs, <double>R * G * (2 * I + H))
                for job in prange(n_jobs, num_threads=nt_jobs, schedule='dynamic',
                                  use_threads_if=nt_jobs > 1):
                    _grad_job(job, n_w, n_c64, n_xc, U, R, B, I, H, dzp, xp + t0 * B * I, hc,
                              Wih, Xc, xslot, Hc, hslot, WihK, Wx,
                              NULL if at == NULL else at + threadid() * at_size,
                              dWih, dWhh, dbp, dxp + t0 * B * I, t1 == T)

            # 3. dh0 = carry_h + dz_0 @ W_hh.
            for blk in prange(n_units, num_threads=nt, schedule='static',
                              use_threads_if=nt > 1 and n_units > 1):
                _backward_block(B, H, U, blk, -1, dzp, Whh, Wpk, kh, kslot, carry_h,
                                carry_c, dhn, NULL, NULL, NULL, NULL, NULL, lens)
    finally:
        _free_grouped(Wih, &W_ih[0, 0])
        _free_grouped(Whh, &W_hh[0, 0])
        scratch_free(dzp)
        scratch_free(hs)
        scratch_free(Wpk)
        scratch_free(Wx)
        scratch_free(WihK)
        scratch_free(Xc)
        scratch_free(Hc)
        scratch_free(at)
