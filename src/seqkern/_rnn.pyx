# Elman RNN kernels: forward and backward through time.
#
# Axis legend: T = time steps, B = batch, I = input features, H = hidden units.
# Every array is C-contiguous and time-major; the Python wrapper (rnn.py) checks
# and prepares arguments, allocates the outputs and holds BLAS at one thread; the
# kernels write every element of their outputs and allocate their own scratch.
#
# Forward:   z_t = x_t W_ih^T + (b_ih + b_hh) + h_{t-1} W_hh^T,   h_t = act(z_t)
# Backward:  dz_t = (dh_t + d_out_t) * act'(h_t),   dh_{t-1} = dz_t W_hh
#            dW_ih = sum_t dz_t^T x_t,   dW_hh = sum_t dz_t^T h_{t-1},   db = sum_t dz_t,
#            dx_t = dz_t W_ih
#
# Only what is truly sequential runs in the time loop (one GEMM per step plus a
# fused element-wise pass); the input projection and all weight gradients are
# large GEMMs over all T*B rows, outside it.
#
# Threads: work is cut into blocks whose boundaries depend only on the problem
# size (and the machine's core count), never on the thread count, and no two
# blocks write the same element; the threads only decide who runs which block. So
# the results are bitwise identical for every thread count. The time loop splits
# by batch rows where there are enough (each row is its own sequence: a thread
# runs its rows' whole time loop, and the threads meet once, at the end), else by
# hidden units within each step (one OpenMP region over all steps, a barrier
# between steps: a thread that loses its core to another process holds up every
# step, so this split is kept to large steps).

from cython cimport floating

include "_build_info.pxi"
from cython.parallel cimport prange, parallel
from libc.stdint cimport int64_t
from libc.string cimport memset

from seqkern._blas cimport gemm
from seqkern._packed_gemm cimport pk_alloc_nn, pk_alloc_nt, pk_gemm, pk_gemm_dir
from seqkern._workspace cimport scratch_alloc, scratch_free
from seqkern._activations cimport tanh_
from seqkern._step cimport (ROW_BLOCK, W_BLOCK, copy_or_zero, final_states, keep_ended,
                            loop_threads, n_blocks, packs, project_rows, row_blocks, row_start,
                            run_blocks, step_barrier, unit_block)

# The products with the weights (see _step.pxd): packed on _packed_gemm.h are the
# per-step h_{t-1} @ W_hh^T and dz_t @ W_hh, the input projection x @ W_ih^T and the
# input gradient dz @ W_ih; the weight gradients stay on OpenBLAS (their left
# operand is dz^T).


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------

cdef void _forward_cols(int B, int H, const floating* h_prev, const floating* W_hh,
                        const floating* W_pk, floating* out_t, const int64_t* lengths,
                        Py_ssize_t t, bint relu, int c0, int c1) noexcept nogil:
    """One step on hidden units [c0, c1):
    out_t[:, c0:c1] := act(out_t[:, c0:c1] + h_prev @ W_hh[c0:c1]^T);
    rows whose sequence has ended (t >= lengths[b]) are set to 0.
    h_prev (B, H), W_hh (H, H), out_t (B, H) holds the input projection on entry.
    W_pk: W_hh packed for h @ W_hh^T (the product then runs in _packed_gemm.h), or
    NULL (OpenBLAS)."""
    cdef int b, c
    cdef floating v
    cdef floating* row
    if W_pk != NULL:
        # alternate the panel order from step to step: see pk_gemm_dir
        pk_gemm_dir(B, H, h_prev, H, W_pk, out_t, H, c0, c1, True, t & 1)
    else:
        gemm(False, True, B, c1 - c0, H, <floating>1, h_prev, H, W_hh + <Py_ssize_t>c0 * H, H,
             <floating>1, out_t + c0, H)
    for b in range(B):
        row = out_t + <Py_ssize_t>b * H
        if lengths != NULL and t >= lengths[b]:
            for c in range(c0, c1):
                row[c] = 0
        elif relu:
            for c in range(c0, c1):
                v = row[c]
                row[c] = 0 if v < 0 else v      # NaN stays NaN
        else:
            for c in range(c0, c1):
                row[c] = tanh_(row[c])


cdef void _forward_rows(int b0, int b1, int B, int H, Py_ssize_t T, const floating* h0,
                        const floating* W_hh, const floating* W_pk, floating* out,
                        const int64_t* lengths, bint relu) noexcept nogil:
    """Every step for batch rows [b0, b1) (their own sequences): _forward_cols on
    those rows and all H units; h0 (B, H), out (T, B, H) as in forward()."""
    cdef Py_ssize_t t, step = <Py_ssize_t>B * H, r0 = <Py_ssize_t>b0 * H
    cdef const floating* h_prev
    for t in range(T):
        h_prev = (h0 + r0) if t == 0 else out + (t - 1) * step + r0
        _forward_cols(b1 - b0, H, h_prev, W_hh, W_pk, out + t * step + r0,
                      NULL if lengths == NULL else lengths + b0, t, relu, 0, H)


def forward(const floating[:, :, ::1] x,      # (T, B, I)
            const floating[:, ::1] h0,        # (B, H)
            const floating[:, ::1] W_ih,      # (H, I)
            const floating[:, ::1] W_hh,      # (H, H)
            const floating[::1] bias,         # (H,) = b_ih + b_hh
            const int64_t[::1] lengths,       # (B,) or None
            floating[:, :, ::1] out,          # (T, B, H) OUT: every h_t (0 past a length)
            floating[:, ::1] h_n,             # (B, H) OUT: the state after each sequence's last step
            bint relu, int n_threads, int n_parts, int step_gemm):
    """Elman RNN forward over a whole sequence. T, B, H >= 1 (the wrapper handles empties).
    step_gemm: seqkern._step_gemm's AUTO, BLAS or PACKED."""
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = W_ih.shape[0]
    cdef Py_ssize_t TB = <Py_ssize_t>T * B
    cdef Py_ssize_t step = <Py_ssize_t>B * H
    cdef const int64_t* lens = NULL if lengths is None else &lengths[0]
    cdef floating* outp = &out[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* h0p = &h0[0, 0]
    cdef const floating* Wih = &W_ih[0, 0]
    cdef const floating* Whh = &W_hh[0, 0]
    cdef const floating* bp = &bias[0]
    cdef const floating* h_prev
    cdef int width = unit_block(B, 1, H, n_parts)
    cdef int n_cols = n_blocks(H, width)
    cdef int n_rows = n_blocks(TB, ROW_BLOCK)
    cdef int n_rb = row_blocks(B, n_parts)
    cdef int i, blk, rb
    cdef Py_ssize_t t
    cdef int nt = n_threads
    cdef int nt_proj = loop_threads(nt, n_rows, <double>TB * I * H)
    cdef int nt_rows = loop_threads(nt, n_rb, <double>TB * H * H)
    cdef int n_run

    cdef floating* Wpk = NULL
    cdef floating* Xpk = NULL
    cdef bint packed = packs(step_gemm, TB)
    try:
        t = 0
        h_prev = NULL
        with nogil:
            # 0. The weights packed, without the GIL (a copy of the weights takes as
            # long as many steps, and another Python thread runs meanwhile).
            if packed:
                Wpk = pk_alloc_nt(H, H, Whh)       # for h_prev @ W_hh^T
                Xpk = pk_alloc_nt(H, I, Wih)       # for x @ W_ih^T
                if Wpk == NULL or Xpk == NULL:
                    with gil:
                        raise MemoryError("rnn_forward: no memory for the kernel's scratch")

            # 1. The input projection of every step, in one pass of row blocks.
            for i in prange(n_rows, num_threads=nt_proj, schedule='static',
                            use_threads_if=nt_proj > 1):
                project_rows(xp, Wih, Xpk, bp, outp, <Py_ssize_t>i * ROW_BLOCK,
                              min(<Py_ssize_t>(i + 1) * ROW_BLOCK, TB), I, H)

            # 2. The recurrence: one GEMM and one fused element-wise pass per step,
            # each block of rows through all steps, or each step over column blocks.
            if n_rb > 1 or n_cols == 1:
                n_run = run_blocks(n_rb, nt_rows, packed)
                for rb in prange(n_run, num_threads=nt_rows, schedule='static',
                                 use_threads_if=nt_rows > 1):
                    _forward_rows(row_start(rb, B, n_run), row_start(rb + 1, B, n_run), B, H, T, h0p,
                                  Whh, Wpk,
                                  outp, lens, relu)
            else:
                with parallel(num_threads=nt, use_threads_if=nt > 1):
                    for t in range(T):
                        h_prev = h0p if t == 0 else outp + (t - 1) * step
                        for blk in prange(n_cols, schedule='static'):
                            _forward_cols(B, H, h_prev, Whh, Wpk, outp + t * step, lens, t,
                                          relu, blk * width, min((blk + 1) * width, H))
                        step_barrier()

            # 3. The final state of each sequence.
            final_states(B, H, T, lens, h0p, outp, &h_n[0, 0])
    finally:
        scratch_free(Wpk)
        scratch_free(Xpk)


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------

cdef void _backward_cols(int B, int H, const floating* dz_next, const floating* W_hh,
                         const floating* W_pk, floating* carry, const floating* d_h_n,
                         floating* dz_t, const floating* d_out_t,
                         const floating* h_t, const int64_t* lengths, Py_ssize_t t,
                         bint relu, int c0, int c1) noexcept nogil:
    """One step back on hidden units [c0, c1).

    carry (B, H) is the gradient reaching h_t from later steps and from d_h_n;
    the rows that step t+1 consumed were zeroed, so adding dz_{t+1} @ W_hh (zero in
    rows that ended before t+1, whose carry stays d_h_n's: keep_ended) completes it:
    carry[:, c0:c1] += dz_next @ W_hh[:, c0:c1]. Then, if t >= 0, for rows still
    running at t:
    dz_t = (carry + d_out_t) * act'(h_t), and their carry is consumed (set to 0).
    dz_next (B, H) or NULL (t = T-1), d_out_t (B, H) or NULL, h_t (B, H), d_h_n
    (B, H) or NULL. W_pk: W_hh packed for dz @ W_hh, or NULL (OpenBLAS)."""
    cdef int b, c
    cdef floating g, h
    cdef floating* cr
    cdef floating* dz
    cdef const floating* go
    cdef const floating* hr
    if dz_next != NULL and W_pk != NULL:
        pk_gemm(B, H, dz_next, H, W_pk, carry, H, c0, c1, True)
    elif dz_next != NULL:
        gemm(False, False, B, c1 - c0, H, <floating>1, dz_next, H, W_hh + c0, H,
             <floating>1, carry + c0, H)
    if dz_next != NULL:
        keep_ended(B, H, lengths, t, d_h_n, carry, c0, c1)
    if t < 0:
        return
    for b in range(B):
        cr = carry + <Py_ssize_t>b * H
        dz = dz_t + <Py_ssize_t>b * H
        if lengths != NULL and t >= lengths[b]:
            for c in range(c0, c1):
                dz[c] = 0
            continue
        hr = h_t + <Py_ssize_t>b * H
        go = NULL if d_out_t == NULL else d_out_t + <Py_ssize_t>b * H
        for c in range(c0, c1):
            g = cr[c] if go == NULL else cr[c] + go[c]
            h = hr[c]
            if relu:
                dz[c] = g if h > 0 else 0
            else:
                dz[c] = g * (1 - h * h)
            cr[c] = 0


cdef void _backward_rows(int b0, int b1, int B, int H, Py_ssize_t T, const floating* W_hh,
                         const floating* W_pk, floating* carry, const floating* d_h_n,
                         floating* dz, const floating* d_out, const floating* out,
                         const int64_t* lengths, bint relu) noexcept nogil:
    """Every step back, t = T-1 .. -1, for batch rows [b0, b1) (their own
    sequences): _backward_cols on those rows and all H units; carry (B, H), dz,
    out (T, B, H), d_out (T, B, H) or NULL, d_h_n (B, H) or NULL, as in backward()."""
    cdef Py_ssize_t t, step = <Py_ssize_t>B * H, r0 = <Py_ssize_t>b0 * H
    for t in range(T - 1, -2, -1):      # t = -1: only the carry into dh0 (no dz, out rows)
        _backward_cols(b1 - b0, H, NULL if t == T - 1 else dz + (t + 1) * step + r0, W_hh, W_pk,
                       carry + r0, NULL if d_h_n == NULL else d_h_n + r0,
                       NULL if t < 0 else dz + t * step + r0,
                       NULL if (d_out == NULL or t < 0) else d_out + t * step + r0,
                       NULL if t < 0 else out + t * step + r0,
                       NULL if lengths == NULL else lengths + b0, t, relu, 0, H)


cdef void _weight_grad_rows(const floating* dz, const floating* inp, floating* dW,
                            Py_ssize_t rows, int K, int r0, int r1, int H) noexcept nogil:
    """dW[r0:r1] += dz[:, r0:r1]^T @ inp; dz (rows, H), inp (rows, K), dW (H, K)."""
    gemm(True, False, r1 - r0, K, <int>rows, <floating>1, dz + r0, H, inp, K,
         <floating>1, dW + <Py_ssize_t>r0 * K, K)


cdef void _bias_grad_cols(const floating* dz, floating* db, Py_ssize_t rows, int H,
                          int c0, int c1) noexcept nogil:
    """db[c0:c1] = sum over rows of dz[:, c0:c1] (rows summed in order)."""
    cdef Py_ssize_t r
    cdef int c
    cdef const floating* row
    for c in range(c0, c1):
        db[c] = 0
    for r in range(rows):
        row = dz + r * H
        for c in range(c0, c1):
            db[c] += row[c]


cdef void _input_grad_rows(const floating* dz, const floating* W_ih, const floating* W_pk,
                           floating* dx, Py_ssize_t r0, Py_ssize_t r1,
                           int I, int H) noexcept nogil:
    """dx[r0:r1] = dz[r0:r1] @ W_ih; dz (rows, H), W_ih (H, I), dx (rows, I).
    W_pk: W_ih packed for dz @ W_ih (_packed_gemm.h), or NULL (OpenBLAS)."""
    if W_pk != NULL:
        pk_gemm(<int>(r1 - r0), H, dz + r0 * H, H, W_pk, dx + r0 * I, I, 0, I, False)
    else:
        gemm(False, False, <int>(r1 - r0), I, H, <floating>1, dz + r0 * H, H, W_ih, I,
             <floating>0, dx + r0 * I, I)


cdef void _grads_block(int blk, const floating* dzp, const floating* xp,
                       const floating* h0p, const floating* outp, const floating* Wih,
                       const floating* Wih_pk, floating* dWih, floating* dWhh, floating* dbp,
                       floating* dxp,
                       int T, int B, int I, int H, int n_w, int n_x) noexcept nogil:
    """Task ``blk`` of the work after the time loop; tasks write disjoint elements:
    [0, n_w): W_BLOCK rows of dW_ih; [n_w, 2 n_w): the same rows of dW_hh and
    entries of db; [2 n_w, 2 n_w + n_x): ROW_BLOCK rows of dx."""
    cdef Py_ssize_t TB = <Py_ssize_t>T * B
    cdef int r0, r1
    cdef Py_ssize_t q
    if blk < 2 * n_w:
        r0 = (blk % n_w) * W_BLOCK
        r1 = min(r0 + W_BLOCK, H)
        if blk < n_w:
            _weight_grad_rows(dzp, xp, dWih, TB, I, r0, r1, H)
        else:
            # dW_hh = dz_0^T h0 + dz[1:]^T out[:-1]
            _weight_grad_rows(dzp, h0p, dWhh, B, H, r0, r1, H)
            if T > 1:
                _weight_grad_rows(dzp + <Py_ssize_t>B * H, outp, dWhh, TB - B, H, r0, r1, H)
            _bias_grad_cols(dzp, dbp, TB, H, r0, r1)
    else:
        q = blk - 2 * n_w
        _input_grad_rows(dzp, Wih, Wih_pk, dxp, q * ROW_BLOCK, min((q + 1) * ROW_BLOCK, TB), I, H)


def backward(const floating[:, :, ::1] x,        # (T, B, I)  from the forward
             const floating[:, :, ::1] d_out,    # (T, B, H) or None
             const floating[:, ::1] d_h_n,       # (B, H) or None
             const floating[:, ::1] h0,          # (B, H)
             const floating[:, :, ::1] out,      # (T, B, H)
             const floating[:, ::1] W_ih,        # (H, I)
             const floating[:, ::1] W_hh,        # (H, H)
             const int64_t[::1] lengths,         # (B,) or None
             floating[:, :, ::1] dx,             # (T, B, I) OUT
             floating[:, ::1] dh0,               # (B, H) OUT
             floating[:, ::1] dW_ih,             # (H, I) OUT
             floating[:, ::1] dW_hh,             # (H, H) OUT
             floating[::1] db,                   # (H,) OUT: gradient of either bias
             bint relu, int n_threads, int n_parts, int step_gemm):
    """Elman RNN backward through time. T, B, H >= 1 (the wrapper handles empties).
    step_gemm: seqkern._step_gemm's AUTO, BLAS or PACKED."""
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = W_ih.shape[0]
    cdef Py_ssize_t step = <Py_ssize_t>B * H
    cdef const int64_t* lens = NULL if lengths is None else &lengths[0]
    cdef const floating* dop = NULL if d_out is None else &d_out[0, 0, 0]
    cdef const floating* outp = &out[0, 0, 0]
    cdef const floating* Whh = &W_hh[0, 0]
    cdef floating* dzp = NULL       # (T, B, H) scratch: the pre-activation gradients
    cdef floating* carry = &dh0[0, 0]
    cdef const floating* dhn = NULL if d_h_n is None else &d_h_n[0, 0]
    cdef const floating* dz_next
    cdef const floating* do_t
    cdef int width = unit_block(B, 1, H, n_parts)
    cdef int n_cols = n_blocks(H, width)
    cdef int n_w = n_blocks(H, W_BLOCK)
    cdef int n_x = n_blocks(<Py_ssize_t>T * B, ROW_BLOCK)
    cdef int n_rb = row_blocks(B, n_parts)
    cdef int blk, rb
    cdef Py_ssize_t t
    cdef int nt = n_threads
    cdef int nt_rows = loop_threads(nt, n_rb, <double>T * B * H * H)
    cdef int n_run
    # dW_ih, dW_hh and dx: T B H (2 I + H) multiply-adds
    cdef int nt_grads = loop_threads(nt, 2 * n_w + n_x, <double>T * B * H * (2 * I + H))

    cdef floating* Wpk = NULL
    cdef floating* Xpk = NULL
    cdef bint packed = packs(step_gemm, <Py_ssize_t>T * B)
    try:
        t = 0
        dz_next = NULL
        do_t = NULL
        with nogil:
            # 0. Scratch and the weights packed, without the GIL (see forward).
            if packed:
                Wpk = pk_alloc_nn(H, H, Whh)               # for dz @ W_hh
                Xpk = pk_alloc_nn(H, I, &W_ih[0, 0])       # for dz @ W_ih
            dzp = <floating*>scratch_alloc(<size_t>T * B * H * sizeof(floating))
            if dzp == NULL or (packed and (Wpk == NULL or Xpk == NULL)):
                with gil:
                    raise MemoryError("rnn_backward: no memory for the kernel's scratch")
            copy_or_zero(carry, dhn, step)
            memset(&dW_ih[0, 0], 0, <size_t>H * I * sizeof(floating))
            memset(&dW_hh[0, 0], 0, <size_t>H * H * sizeof(floating))

            # 1. Through time: t = T-1 .. 0, then t = -1 finishes dh0 = carry.
            if n_rb > 1 or n_cols == 1:
                n_run = run_blocks(n_rb, nt_rows, packed)
                for rb in prange(n_run, num_threads=nt_rows, schedule='static',
                                 use_threads_if=nt_rows > 1):
                    _backward_rows(row_start(rb, B, n_run), row_start(rb + 1, B, n_run), B, H, T,
                                   Whh, Wpk,
                                   carry, dhn, dzp, dop, outp, lens, relu)
            else:
                with parallel(num_threads=nt, use_threads_if=nt > 1):
                    for t in range(T - 1, -2, -1):
                        dz_next = NULL if t == T - 1 else dzp + (t + 1) * step
                        do_t = NULL if (dop == NULL or t < 0) else dop + t * step
                        for blk in prange(n_cols, schedule='static'):
                            _backward_cols(B, H, dz_next, Whh, Wpk, carry, dhn,
                                           dzp + t * step, do_t, outp + t * step, lens, t, relu,
                                           blk * width, min((blk + 1) * width, H))
                        step_barrier()

            # 2. Weight, bias and input gradients: large GEMMs over all T*B rows.
            for blk in prange(2 * n_w + n_x, num_threads=nt_grads, schedule='dynamic',
                              use_threads_if=nt_grads > 1):
                _grads_block(blk, dzp, &x[0, 0, 0], &h0[0, 0], outp, &W_ih[0, 0], Xpk,
                             &dW_ih[0, 0], &dW_hh[0, 0], &db[0], &dx[0, 0, 0],
                             T, B, I, H, n_w, n_x)
    finally:
        scratch_free(Wpk)
        scratch_free(Xpk)
        scratch_free(dzp)
