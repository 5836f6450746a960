# GRU kernels: forward and backward through time.
#
# Axis legend: T = time steps, B = batch, I = input features, H = hidden units,
# G = 3H gate columns. Every array is C-contiguous and time-major; the Python
# wrapper (gru.py) checks and prepares arguments, packs the weights, allocates
# outputs and scratch, and holds BLAS at one thread.
#
# Forward (gate order r, z, n as in PyTorch):
#   r = sigmoid(gi_r + gh_r)   z = sigmoid(gi_z + gh_z)   hn = gh_n (with b_hn)
#   n = tanh(gi_n + r * hn)    h' = (1 - z) * n + z * h
#   where gi = x W_ih^T + b_ih (+ b_hr, b_hz folded in), gh = h W_hh^T.
# Backward, with g the gradient reaching h':
#   da_n = g (1 - z)(1 - n^2)       da_z = g (h - n) z (1 - z)
#   da_r = da_n hn r (1 - r)        dgi = [da_r, da_z, da_n]   dgh = [da_r, da_z, da_n r]
#   dh = dgh W_hh + g z,   dW_ih = sum dgi^T x,   dW_hh = sum dgh^T h,   dx = dgi W_ih
#
# The element-wise passes live in _gru_cell.h (C, for `restrict`, so that GCC
# vectorises them), with the batch-1 vector-matrix product that replaces BLAS's
# GEMV; this file does the blocking, the GEMMs and the threads.
#
# Chunks of time: the backward walks back through chunks of about a thousand rows
# (steps x B); after a chunk's steps it adds the chunk's share of dW_ih, dW_hh and
# db and computes its dx, so its scratch is O(chunk) not O(T B G). The forward
# without a cache does the same with the input projection.
#
# Packed gate layout. The hidden units are cut in blocks [c0, c1) of width w
# (the last may be narrower) and the G = 3H gate rows of W_ih, W_hh, the biases
# and every (.., G) buffer are stored block after block, each block holding its
# r rows, then its z rows, then its n rows: packed column 3*c0 + k*(c1-c0) + j is
# gate k of unit c0 + j. So one GEMM per block gives all three gates of its units
# side by side, and a block of a time step is independent of the other blocks.
# The wrapper does the packing (once per call) and the unpacking of gradients.
#
# Threads: blocks (of units in a step, of rows in the big GEMMs) have boundaries
# that depend only on the problem size, never on the thread count, and no two
# blocks write the same element; threads only pick which blocks they run. So
# results are bitwise identical for every thread count. Inside the time loop,
# one OpenMP parallel region spans all steps and the implicit barrier at the end
# of each step's work-shared loop separates the steps.

from cython cimport floating

include "_build_info.pxi"
from cython.parallel cimport prange, parallel
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from seqkern._blas cimport gemm
from seqkern._step cimport PACK_MIN_ROWS, PAR_MIN_GEMM, final_states, n_blocks, packs, rows_times_wt
from seqkern._packed_gemm cimport pk_gemm, pk_gemm_dir, pk_pack_nn, pk_pack_nt, pk_size
from seqkern._workspace cimport scratch_alloc, scratch_free

cdef extern from "_gru_cell.h" nogil:
    void sk_gru_fwd_row_f(int w, float* gr, float* gz, float* gn, const float* qr,
                          const float* qz, const float* qn, const float* bhn,
                          const float* hp, float* out, float* hn)
    void sk_gru_fwd_row_d(int w, double* gr, double* gz, double* gn, const double* qr,
                          const double* qz, const double* qn, const double* bhn,
                          const double* hp, double* out, double* hn)
    void sk_gru_bwd_row_f(int w, float* carry, const float* d_out, const float* gr,
                          const float* gz, const float* gn, const float* hn,
                          const float* hp, float* dir, float* diz, float* din,
                          float* dhr, float* dhz, float* dhn)
    void sk_gru_bwd_row_d(int w, double* carry, const double* d_out, const double* gr,
                          const double* gz, const double* gn, const double* hn,
                          const double* hp, double* dir, double* diz, double* din,
                          double* dhr, double* dhz, double* dhn)
    void sk_gru_vecmat_f(int n, int K, const float* x, const float* A, int lda, int beta,
                         float* y)
    void sk_gru_vecmat_d(int n, int K, const double* x, const double* A, int lda, int beta,
                         double* y)


cdef inline void _vecmat(int n, int K, const floating* x, const floating* A, int lda,
                         bint beta, floating* y) noexcept nogil:
    """y[0:n] := beta * y + x @ A[:, 0:n]; x (K,), A (K, lda) row-major. For batch 1,
    where it beats BLAS's GEMV (see _gru_cell.h); sums in a fixed order."""
    if floating is float:
        sk_gru_vecmat_f(n, K, x, A, lda, beta, y)
    else:
        sk_gru_vecmat_d(n, K, x, A, lda, beta, y)


# Every split is into at most PARTS blocks, aligned to ALIGN, whatever the thread
# count: few large BLAS calls, because each GEMM call re-packs its operands (one
# packing of x per block of weight-gradient rows, of W_ih per block of rows...),
# and enough blocks to keep a few threads busy. A step is split over blocks of
# hidden units only once its recurrent product B*3H*H reaches PAR_MIN_STEP
# multiply-adds; below that one block does it all (the fork/join would cost more
# than it saves). The GEMMs outside the time loop go parallel only from
# PAR_MIN_GEMM multiply-adds (_step.pxd).
cdef enum:
    PARTS = 4
    ALIGN = 16
    PAR_MIN_STEP = 65536
    PANEL_UNITS = 64


# The products with the weights: OpenBLAS's GEMM (with _vecmat for the per-step
# products at B = 1), or _packed_gemm.h on W_hh and W_ih packed once per call
# (OpenBLAS packs its W operand again inside every call: once per step for W_hh,
# once per row block for W_ih). Packed, when chosen: the per-step h_{t-1} @ W_hh^T
# (B, H) x (H, 3H) and dgh_{t+1} @ W_hh (B, 3H) x (3H, H), the input projection
# x @ W_ih^T (rows, I) x (I, 3H) and the input gradient dgi @ W_ih (rows, 3H) x (3H, I).
# The weight gradients stay on OpenBLAS (their left operand is dgi^T / dgh^T).
# step_gemm (seqkern._step_gemm) forces either; AUTO follows packed_products.
# Measured (1 thread, AMD EPYC Zen 4 with AVX-512, 2 cores, benchmarks of the time,
# alternating calls; fwd / fwd+bwd speed-up of packed over OpenBLAS, float32 then
# float64): (B,T,I,H) = (32,100,256,256) 1.53/1.25, 1.30/1.14; (64,200,512,512)
# 1.17/1.15, 1.37/1.29; at batch 1, against _vecmat for the steps, near even (W_hh
# is read once a step either way; the packed input products give the rest):
# (1,100,128,128) 1.18/1.14, 1.07/1.13; (1,1000,64,64) 1.04/1.00, 1.20/0.98. At
# (8,100,128,128), forward / backward alone: 1.14/0.94, 1.10/1.05 (0.94: within
# the noise of these runs). So AUTO packs everything where the ISA allows
# (_step.packs).
# Both packed operands live in one allocation (_pack_weights): with two, of ~400 KB
# each at (1,100,128,128) float64, both packed ran at 0.83-0.88x of OpenBLAS while
# either alone ran at 1.05-1.11x; glibc handed the pair back to the system after
# every call (heap trim) and the next call faulted it in again. With one: 1.38x
# forward, 1.08x backward alone.
# Which products are packed: flags of the kernels' ``packed`` argument.
cdef enum:
    PACK_STEP = 1      # the per-step products with W_hh
    PACK_INPUT = 2     # the products with W_ih over all rows (input projection / dx)
PK_STEP, PK_INPUT = PACK_STEP, PACK_INPUT


def packed_products(Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, int step_gemm, bint backward):
    """Which products to run on _packed_gemm.h (PK_STEP | PK_INPUT flags; the others
    on OpenBLAS / _vecmat) for T steps of a batch of B and H hidden units in the
    forward or the backward, given seqkern._step_gemm's AUTO, BLAS or PACKED. AUTO
    packs all four products once they serve PACK_MIN_ROWS rows (_step.packs;
    measured above); the other arguments are those of the rule should a size
    turn up where OpenBLAS or _vecmat wins."""
    if not packs(step_gemm, T * B):
        return 0
    return PK_STEP | PK_INPUT


cdef floating* _pack_weights(int packed, bint backward, int H, int I, const floating* Whh,
                            const floating* Wih, floating** Wpk, floating** Xpk) noexcept nogil:
    """Pack the weights the ``packed`` flags name, for the forward (h @ W_hh^T,
    x @ W_ih^T) or the backward (dgh @ W_hh, dgi @ W_ih); W_hh (G, H), W_ih (G, I).
    Sets *Wpk (PACK_STEP) and *Xpk (PACK_INPUT), else leaves them. Returns the one
    64-byte aligned buffer holding both (_workspace: scratch_free() it), NULL if out of memory or if
    nothing is packed. One allocation, not two: see the measurements above
    packed_products."""
    cdef int G = 3 * H
    cdef size_t align = 64 // sizeof(floating)
    cdef size_t nw = 0, nx = 0
    cdef floating* buf
    if packed & PACK_STEP:
        nw = pk_size(<floating*>NULL, H if backward else G, G if backward else H)
        nw = (nw + align - 1) // align * align
    if packed & PACK_INPUT:
        nx = pk_size(<floating*>NULL, I if backward else G, G if backward else I)
    if not packed:
        return NULL
    buf = <floating*>scratch_alloc((nw + nx) * sizeof(floating))
    if buf == NULL:
        return NULL
    if packed & PACK_STEP:
        Wpk[0] = buf
        if backward:
            pk_pack_nn(G, H, Whh, H, buf)
        else:
            pk_pack_nt(G, H, Whh, H, buf)
    if packed & PACK_INPUT:
        Xpk[0] = buf + nw
        if backward:
            pk_pack_nn(G, I, Wih, I, buf + nw)
        else:
            pk_pack_nt(G, I, Wih, I, buf + nw)
    return buf


cdef inline Py_ssize_t _block(Py_ssize_t n) noexcept nogil:
    """Size of the blocks that cut n items into at most PARTS (a function of n only)."""
    cdef Py_ssize_t b = (n + PARTS - 1) // PARTS
    b = (b + ALIGN - 1) // ALIGN * ALIGN
    return b if b > 0 else 1


# A call over fewer than FEW_STEPS steps and PACK_MIN_ROWS rows (a single step,
# typically: gru_step_forward) keeps the weights as given: one block of hidden
# units, and no W_hh^T (the step products at B = 1 on OpenBLAS's GEMV, the
# backward's at B > 1 on W_hh itself). Reordering the weights into blocks (a fancy
# index of both) and transposing W_hh cost more per call than the call's products.
# Measured (float32, forward / forward+backward speed-up, 1 and 2 threads alike):
# batch 1, one step, H = 256 2.4-3.2x fwd+bwd, H = 512 10x / 5.3x; T = 2 at
# H = 512 4.6-5.6x / 2.9-3.6x; one step of a batch of 2, 4, 8, 15 at H = 512 or
# 1024 1.3-2.5x, of 4 at H = 256 1.0-1.1x / 1.6x; T = 3, B = 5, H = 512 1.33-1.36x.
cdef enum:
    FEW_STEPS = 4


cdef inline bint few_rows(Py_ssize_t T, Py_ssize_t B) noexcept nogil:
    return T < FEW_STEPS and T * B < PACK_MIN_ROWS


def few_steps(Py_ssize_t T, Py_ssize_t B):
    """Does a call over T steps of a batch of B keep the weights as given: one
    block of units, no W_hh^T (FEW_STEPS)?"""
    return few_rows(T, B)


def unit_block(Py_ssize_t T, Py_ssize_t B, Py_ssize_t H, bint packed_step=False):
    """Width of the blocks of hidden units (a function of the problem size and of
    the choice of step product only, not of the thread count); the packed layout of
    the weights depends on it: H (the layout given) for a call of few steps
    (few_steps). With the packed step product (packed_step) the width
    is a multiple of PANEL_UNITS, so that a block's columns, [3 c0, 3 c1) forward and
    [c0, c1) backward, are whole panels of the packed W_hh (64 floats with AVX-512):
    with blocks of 32 units, as _block gives for H = 128, half of every panel's
    FMAs were wasted and packing lost to OpenBLAS at (B, H) = (8, 128) (measured)."""
    cdef Py_ssize_t w
    if few_rows(T, B) or B * 3 * H * H < PAR_MIN_STEP:
        return H
    w = _block(H)
    if packed_step:
        w = (w + PANEL_UNITS - 1) // PANEL_UNITS * PANEL_UNITS
    return min(H, w)


def transpose(const floating[:, ::1] a, floating[:, ::1] out):
    """out := a^T for a (m, n), out (n, m); tiles of 16 x 16 (numpy's strided copy
    was measured at ~30 us for a (384, 128) matrix, most of a batch-1 call's overhead)."""
    cdef Py_ssize_t m = a.shape[0], n = a.shape[1], i0, j0, i, j
    with nogil:
        for i0 in range(0, m, 16):
            for j0 in range(0, n, 16):
                for j in range(j0, min(j0 + 16, n)):
                    for i in range(i0, min(i0 + 16, m)):
                        out[j, i] = a[i, j]


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------

cdef void _project_rows(const floating* x, const floating* W, const floating* W_pk,
                        const floating* bias, floating* out, Py_ssize_t r0, Py_ssize_t r1,
                        int I, int G) noexcept nogil:
    """out[r0:r1] := x[r0:r1] @ W^T + bias; x (rows, I), W (G, I), out (rows, G).
    W_pk: W packed for x @ W^T (_packed_gemm.h), or NULL (OpenBLAS)."""
    cdef Py_ssize_t r
    for r in range(r0, r1):
        memcpy(out + r * G, bias, G * sizeof(floating))
    rows_times_wt(x, W, W_pk, out, r0, r1, I, G, True)


cdef void _forward_block(int B, int H, const floating* h_prev, const floating* W_hh,
                         const floating* W_hh_T, const floating* W_pk, const floating* b_hn,
                         floating* gh, floating* gates_t,
                         floating* hn_t, floating* out_t, const int64_t* lengths,
                         Py_ssize_t t, int c0, int c1) noexcept nogil:
    """One step on hidden units [c0, c1) (packed gate columns [3c0, 3c1)).

    gh[:, 3c0:3c1] := h_prev @ W_hh[3c0:3c1]^T, on W_pk (W_hh packed for h @ W_hh^T)
    if given, else by _vecmat on W_hh_T = W_hh^T (H, G) when B = 1 and W_hh_T is
    not NULL, else OpenBLAS.
    Then for each row still running:
    gates_t (input projection on entry) := r, z, n; hn_t := gh_n + b_hn;
    out_t := h'. Rows whose sequence has ended get out_t = 0.
    h_prev (B, H), W_hh (G, H) packed, gh (B, G), gates_t (B, G), hn_t, out_t (B, H)."""
    cdef int G = 3 * H, w = c1 - c0, p = 3 * c0
    cdef int b, j
    cdef floating* g
    cdef const floating* q
    cdef const floating* hp
    cdef const floating* bh = b_hn + c0
    cdef floating* hr
    cdef floating* o
    if W_pk != NULL:
        # alternate the panel order from step to step: see pk_gemm_dir
        pk_gemm_dir(B, H, h_prev, H, W_pk, gh, G, p, p + 3 * w, False, t & 1)
    elif B == 1 and W_hh_T != NULL:
        _vecmat(3 * w, H, h_prev, W_hh_T + p, G, False, gh + p)
    else:
        gemm(False, True, B, 3 * w, H, <floating>1, h_prev, H, W_hh + <Py_ssize_t>p * H, H,
             <floating>0, gh + p, G)
    for b in range(B):
        o = out_t + <Py_ssize_t>b * H + c0
        if lengths != NULL and t >= lengths[b]:
            for j in range(w):
                o[j] = 0
            continue
        g = gates_t + <Py_ssize_t>b * G + p
        q = gh + <Py_ssize_t>b * G + p
        hp = h_prev + <Py_ssize_t>b * H + c0
        hr = hn_t + <Py_ssize_t>b * H + c0
        if floating is float:
            sk_gru_fwd_row_f(w, g, g + w, g + 2 * w, q, q + w, q + 2 * w, bh, hp, o, hr)
        else:
            sk_gru_fwd_row_d(w, g, g + w, g + 2 * w, q, q + w, q + 2 * w, bh, hp, o, hr)


def forward(const floating[:, :, ::1] x,      # (T, B, I)
            const floating[:, ::1] h0,        # (B, H)
            const floating[:, ::1] W_ih,      # (G, I) packed
            const floating[:, ::1] W_hh,      # (G, H) packed
            const floating[:, ::1] W_hh_T,    # (H, G) W_hh^T for B = 1, or None
            const floating[::1] bias,         # (G,) packed: b_ih + (b_hr, b_hz, 0)
            const floating[::1] b_hn,         # (H,)
            const int64_t[::1] lengths,       # (B,) or None
            floating[:, :, ::1] gates,        # (Tc, B, G) OUT: r, z, n (packed); see below
            floating[:, :, ::1] hn,           # (T, B, H) OUT: h W_hn^T + b_hn, or (1, B, H) scratch
            floating[:, ::1] gh,              # (B, G) scratch
            floating[:, :, ::1] out,          # (T, B, H) OUT: every h_t (0 past a length)
            floating[:, ::1] h_n,             # (B, H) OUT: the state after each sequence's last step
            int width, int n_threads, int packed):
    """GRU forward over a whole sequence. T, B, H >= 1 (the wrapper handles empties);
    ``width`` is the unit-block width the weights were packed with. ``packed``
    (flags, see packed_products): PK_STEP, h @ W_hh^T goes through _packed_gemm.h
    (W_hh_T is then unused), PK_INPUT, x @ W_ih^T does; each packed here once.

    The steps run in chunks of Tc = gates.shape[0] steps: the input projection of a
    chunk, then its recurrence. With Tc = T, ``gates`` keeps r, z, n of every step
    (for the backward); without a cache a short Tc keeps the buffer in cache and
    spares allocating (T, B, G)."""
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef int G = 3 * H
    cdef Py_ssize_t TB = <Py_ssize_t>T * B
    cdef Py_ssize_t step = <Py_ssize_t>B * H
    cdef Py_ssize_t gstep = <Py_ssize_t>B * G
    cdef Py_ssize_t hstep = step if hn.shape[0] == T else 0
    cdef const int64_t* lens = NULL if lengths is None else &lengths[0]
    cdef floating* outp = &out[0, 0, 0]
    cdef floating* gp = &gates[0, 0, 0]
    cdef floating* hnp = &hn[0, 0, 0]
    cdef floating* ghp = &gh[0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* h0p = &h0[0, 0]
    cdef const floating* Wih = &W_ih[0, 0]
    cdef const floating* Whh = &W_hh[0, 0]
    cdef const floating* WhhT = NULL if W_hh_T is None else &W_hh_T[0, 0]
    cdef const floating* bp = &bias[0]
    cdef const floating* bhn = &b_hn[0]
    cdef const floating* h_prev
    cdef int n_cols = n_blocks(H, width)
    cdef Py_ssize_t Tc = gates.shape[0]
    cdef Py_ssize_t rb = _block(Tc * B)
    cdef Py_ssize_t rows
    cdef int n_rows
    cdef int i, blk
    cdef Py_ssize_t t, t0, t1
    cdef int nt = n_threads
    cdef floating* Wpk = NULL     # W_hh packed for h_prev @ W_hh^T
    cdef floating* Xpk = NULL     # W_ih packed for x @ W_ih^T

    cdef floating* pk_buf = NULL
    with nogil:
        pk_buf = _pack_weights(packed, False, H, I, Whh, Wih, &Wpk, &Xpk)
    if packed and pk_buf == NULL:
        raise MemoryError()
    t = 0
    h_prev = NULL
    try:
        with nogil:
            t0 = 0
            while t0 < T:
                t1 = min(t0 + Tc, T)
                # 1. The input projection of the chunk's steps, in row blocks.
                rows = (t1 - t0) * B
                n_rows = n_blocks(rows, rb)
                if nt > 1 and n_rows > 1 and rows * G * I >= PAR_MIN_GEMM:
                    for i in prange(n_rows, num_threads=nt, schedule='static'):
                        _project_rows(xp + t0 * B * I, Wih, Xpk, bp, gp, i * rb,
                                      min((i + 1) * rb, rows), I, G)
                else:
                    for i in range(n_rows):
                        _project_rows(xp + t0 * B * I, Wih, Xpk, bp, gp, i * rb,
                                      min((i + 1) * rb, rows), I, G)

                # 2. The recurrence: per step and block one GEMM and one fused pass.
                if nt > 1 and n_cols > 1:
                    with parallel(num_threads=nt):
                        for t in range(t0, t1):
                            h_prev = h0p if t == 0 else outp + (t - 1) * step
                            for blk in prange(n_cols, schedule='static'):
                                _forward_block(B, H, h_prev, Whh, WhhT, Wpk, bhn, ghp,
                                               gp + (t - t0) * gstep, hnp + t * hstep,
                                               outp + t * step, lens, t,
                                               blk * width, min((blk + 1) * width, H))
                else:
                    for t in range(t0, t1):
                        h_prev = h0p if t == 0 else outp + (t - 1) * step
                        for blk in range(n_cols):
                            _forward_block(B, H, h_prev, Whh, WhhT, Wpk, bhn, ghp,
                                           gp + (t - t0) * gstep, hnp + t * hstep,
                                           outp + t * step, lens, t,
                                           blk * width, min((blk + 1) * width, H))
                t0 = t1

            # 3. The final state of each sequence.
            final_states(B, H, T, lens, h0p, outp, &h_n[0, 0])
    finally:
        scratch_free(pk_buf)


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------

cdef void _backward_block(int B, int H, const floating* dgh_next, const floating* W_hh,
                          const floating* W_hh_T, const floating* W_pk,
                          floating* carry, floating* dgi_t, floating* dgh_t,
                          const floating* d_out_t, const floating* gates_t,
                          const floating* hn_t, const floating* h_prev,
                          const int64_t* lengths, Py_ssize_t t, int c0, int c1) noexcept nogil:
    """One step back on hidden units [c0, c1).

    carry (B, H) is the gradient reaching h_t from later steps and from d_h_n. Step
    t+1 left g*z in the rows it consumed (the direct path h' = ... + z h), so adding
    dgh_{t+1} @ W_hh (zero in rows that ended before t+1) completes it:
    carry[:, c0:c1] += dgh_next @ W_hh[:, c0:c1], on W_pk (W_hh packed for dgh @ W_hh)
    if given, else by _vecmat when B = 1, else OpenBLAS on W_hh_T = W_hh^T (on W_hh
    itself where W_hh_T is NULL: one block).
    Then, if t >= 0, for rows still
    running at t: g = carry + d_out_t, dgi_t and dgh_t get the gate gradients and
    carry := g*z; rows that have ended get zero gate gradients and keep their carry.
    dgh_next (B, G) or NULL (t = T-1), d_out_t (B, H) or NULL, gates_t (B, G),
    hn_t and h_prev (B, H)."""
    cdef int G = 3 * H, w = c1 - c0, p = 3 * c0
    cdef int b, j
    cdef floating* cr
    cdef floating* di
    cdef floating* dh
    cdef const floating* go
    cdef const floating* g
    cdef const floating* a
    cdef const floating* hp
    if dgh_next != NULL:
        if W_pk != NULL:
            pk_gemm(B, G, dgh_next, G, W_pk, carry, H, c0, c1, True)
        elif B == 1:
            _vecmat(w, G, dgh_next, W_hh + c0, H, True, carry + c0)
        elif W_hh_T != NULL:
            # through W_hh^T (H, G): rows c0:c1 are contiguous, which BLAS packs
            # much faster than the strided columns c0:c1 of W_hh (measured)
            gemm(False, True, B, w, G, <floating>1, dgh_next, G, W_hh_T + <Py_ssize_t>c0 * G, G,
                 <floating>1, carry + c0, H)
        else:       # a call of few steps: one block, all of W_hh's (contiguous) columns
            gemm(False, False, B, w, G, <floating>1, dgh_next, G, W_hh + c0, H,
                 <floating>1, carry + c0, H)
    if t < 0:
        return
    for b in range(B):
        di = dgi_t + <Py_ssize_t>b * G + p
        dh = dgh_t + <Py_ssize_t>b * G + p
        if lengths != NULL and t >= lengths[b]:
            memset(di, 0, 3 * w * sizeof(floating))
            memset(dh, 0, 3 * w * sizeof(floating))
            continue
        cr = carry + <Py_ssize_t>b * H + c0
        go = NULL if d_out_t == NULL else d_out_t + <Py_ssize_t>b * H + c0
        g = gates_t + <Py_ssize_t>b * G + p
        a = hn_t + <Py_ssize_t>b * H + c0
        hp = h_prev + <Py_ssize_t>b * H + c0
        if floating is float:
            sk_gru_bwd_row_f(w, cr, go, g, g + w, g + 2 * w, a, hp,
                             di, di + w, di + 2 * w, dh, dh + w, dh + 2 * w)
        else:
            sk_gru_bwd_row_d(w, cr, go, g, g + w, g + 2 * w, a, hp,
                             di, di + w, di + 2 * w, dh, dh + w, dh + 2 * w)


cdef void _grads_block(int blk, const floating* dgi, const floating* dgh,
                       const floating* x_c, const floating* hp0, const floating* hp_c,
                       const floating* Wih, const floating* Wih_pk, floating* dWih, floating* dWhh,
                       floating* dbi, floating* dbh, floating* dx_c, Py_ssize_t rows,
                       int B, int I, int H, int n_w, int wb, Py_ssize_t rb) noexcept nogil:
    """Block ``blk`` of the weight and input gradients of one chunk of steps, whose
    ``rows`` rows (steps x B) have gate gradients dgi, dgh (rows, G), inputs x_c
    (rows, I) and previous states hp_c (rows, H), or, where hp0 is given, hp0 (B, H)
    for the first B rows and hp_c (rows - B, H) for the others. Blocks write disjoint elements:
    [0, n_w): packed rows [c0, c1) of dW_ih, dW_hh and entries of db_ih, db_hh
    (accumulated over chunks); [n_w, ...): rows of dx_c. Block sizes: wb rows of G,
    rb rows of the chunk. Wih_pk: W_ih packed for dgi @ W_ih, or NULL (OpenBLAS)."""
    cdef int G = 3 * H
    cdef Py_ssize_t q, r, r0, r1
    cdef int c, c0, c1
    cdef const floating* row
    if blk < n_w:
        c0 = blk * wb
        c1 = min(c0 + wb, G)
        # dW_ih[c0:c1] += dgi[:, c0:c1]^T @ x;  dW_hh[c0:c1] += dgh[:, c0:c1]^T @ h_prev
        gemm(True, False, c1 - c0, I, <int>rows, <floating>1, dgi + c0, G, x_c, I,
             <floating>1, dWih + <Py_ssize_t>c0 * I, I)
        if hp0 == NULL:
            gemm(True, False, c1 - c0, H, <int>rows, <floating>1, dgh + c0, G, hp_c, H,
                 <floating>1, dWhh + <Py_ssize_t>c0 * H, H)
        else:
            gemm(True, False, c1 - c0, H, B, <floating>1, dgh + c0, G, hp0, H,
                 <floating>1, dWhh + <Py_ssize_t>c0 * H, H)
            gemm(True, False, c1 - c0, H, <int>(rows - B), <floating>1,
                 dgh + <Py_ssize_t>B * G + c0, G, hp_c, H,
                 <floating>1, dWhh + <Py_ssize_t>c0 * H, H)
        # db[c0:c1] += column sums, rows in order
        for r in range(rows):
            row = dgi + r * G
            for c in range(c0, c1):
                dbi[c] += row[c]
            row = dgh + r * G
            for c in range(c0, c1):
                dbh[c] += row[c]
    else:
        q = blk - n_w
        r0 = q * rb
        r1 = min(r0 + rb, rows)
        # dx[r0:r1] = dgi[r0:r1] @ W_ih
        if Wih_pk != NULL:
            pk_gemm(<int>(r1 - r0), G, dgi + r0 * G, G, Wih_pk, dx_c + r0 * I, I, 0, I, False)
        else:
            gemm(False, False, <int>(r1 - r0), I, G, <floating>1, dgi + r0 * G, G, Wih, I,
                 <floating>0, dx_c + r0 * I, I)


def backward(const floating[:, :, ::1] d_out,    # (T, B, H) or None
             const floating[:, :, ::1] x,        # (T, B, I)  from the forward
             const floating[:, ::1] h0,          # (B, H)
             const floating[:, :, ::1] out,      # (T, B, H)
             const floating[:, ::1] W_ih,        # (G, I) packed
             const floating[:, ::1] W_hh,        # (G, H) packed
             const floating[:, ::1] W_hh_T,      # (H, G) W_hh^T for B > 1, or None
             const floating[:, :, ::1] gates,    # (T, B, G) r, z, n (packed)
             const floating[:, :, ::1] hn,       # (T, B, H)
             const int64_t[::1] lengths,         # (B,) or None
             floating[:, :, ::1] dgi,            # (Tc, B, G) scratch: d(x W_ih^T + b_ih)
             floating[:, :, ::1] dgh,            # (Tc, B, G) scratch: d(h W_hh^T + b_hh)
             floating[:, :, ::1] dx,             # (T, B, I) OUT
             floating[:, ::1] dh0,               # (B, H) IN: d_h_n (or 0), OUT: dh0
             floating[:, ::1] dW_ih,             # (G, I) IN: 0, OUT packed
             floating[:, ::1] dW_hh,             # (G, H) IN: 0, OUT packed
             floating[::1] db_ih,                # (G,) IN: 0, OUT packed
             floating[::1] db_hh,                # (G,) IN: 0, OUT packed
             int width, int n_threads, int packed):
    """GRU backward through time. T, B, H >= 1 (the wrapper handles empties).

    Time runs backwards in chunks of Tc = dgi.shape[0] steps (Tc >= 2 or Tc >= T),
    aligned on multiples of Tc: the gate gradients of a chunk's steps, then its share
    of dW_ih, dW_hh, db and dx as GEMMs over its Tc*B rows. The gate gradients of
    step t sit in slot t mod Tc, so step t0 - 1 (next chunk) still finds those of
    step t0. The chunks depend only on the problem size, so does the summation
    order of the weight gradients. ``packed`` (flags, see packed_products): PK_STEP,
    dgh @ W_hh goes through _packed_gemm.h (W_hh_T is then unused), PK_INPUT,
    dgi @ W_ih does; each packed here once."""
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef int G = 3 * H
    cdef Py_ssize_t step = <Py_ssize_t>B * H
    cdef Py_ssize_t gstep = <Py_ssize_t>B * G
    cdef Py_ssize_t Tc = dgi.shape[0]
    cdef const int64_t* lens = NULL if lengths is None else &lengths[0]
    cdef const floating* dop = NULL if d_out is None else &d_out[0, 0, 0]
    cdef const floating* outp = &out[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* h0p = &h0[0, 0]
    cdef const floating* Wih = &W_ih[0, 0]
    cdef const floating* Whh = &W_hh[0, 0]
    cdef const floating* WhhT = NULL if W_hh_T is None else &W_hh_T[0, 0]
    cdef const floating* gp = &gates[0, 0, 0]
    cdef const floating* hnp = &hn[0, 0, 0]
    cdef floating* dgip = &dgi[0, 0, 0]
    cdef floating* dghp = &dgh[0, 0, 0]
    cdef floating* dxp = &dx[0, 0, 0]
    cdef floating* carry = &dh0[0, 0]
    cdef const floating* dgh_next
    cdef const floating* do_t
    cdef const floating* h_prev
    cdef const floating* hp_c
    cdef const floating* hp0
    cdef int n_cols = n_blocks(H, width)
    cdef int wb = <int>_block(G)
    cdef int n_w = n_blocks(G, wb)
    cdef Py_ssize_t rb = _block(Tc * B)
    cdef Py_ssize_t rows
    cdef int n_x
    cdef int blk
    cdef Py_ssize_t t, t0, t1
    cdef int nt = n_threads
    cdef bint par_steps = nt > 1 and n_cols > 1
    cdef bint par_grads = nt > 1 and <Py_ssize_t>T * B * G * (I + H) >= PAR_MIN_GEMM
    cdef floating* Wpk = NULL     # W_hh packed for dgh @ W_hh
    cdef floating* Xpk = NULL     # W_ih packed for dgi @ W_ih

    cdef floating* pk_buf = NULL
    with nogil:
        pk_buf = _pack_weights(packed, True, H, I, Whh, Wih, &Wpk, &Xpk)
    if packed and pk_buf == NULL:
        raise MemoryError()
    t = 0
    dgh_next = NULL
    do_t = NULL
    h_prev = NULL
    hp_c = NULL
    hp0 = NULL
    try:
        with nogil:
            t1 = T
            while t1 > 0:
                t0 = (t1 - 1) // Tc * Tc
                # 1. Through the chunk's steps: t = t1-1 .. t0.
                if par_steps:
                    with parallel(num_threads=nt):
                        for t in range(t1 - 1, t0 - 1, -1):
                            dgh_next = NULL if t == T - 1 else dghp + ((t + 1) % Tc) * gstep
                            do_t = NULL if dop == NULL else dop + t * step
                            h_prev = h0p if t == 0 else outp + (t - 1) * step
                            for blk in prange(n_cols, schedule='static'):
                                _backward_block(B, H, dgh_next, Whh, WhhT, Wpk, carry,
                                                dgip + (t - t0) * gstep, dghp + (t - t0) * gstep,
                                                do_t, gp + t * gstep, hnp + t * step, h_prev,
                                                lens, t, blk * width, min((blk + 1) * width, H))
                else:
                    for t in range(t1 - 1, t0 - 1, -1):
                        dgh_next = NULL if t == T - 1 else dghp + ((t + 1) % Tc) * gstep
                        do_t = NULL if dop == NULL else dop + t * step
                        h_prev = h0p if t == 0 else outp + (t - 1) * step
                        for blk in range(n_cols):
                            _backward_block(B, H, dgh_next, Whh, WhhT, Wpk, carry,
                                            dgip + (t - t0) * gstep, dghp + (t - t0) * gstep,
                                            do_t, gp + t * gstep, hnp + t * step, h_prev,
                                            lens, t, blk * width, min((blk + 1) * width, H))

                # 2. The chunk's weight, bias and input gradients: GEMMs over its rows.
                rows = (t1 - t0) * B
                n_x = n_blocks(rows, rb)
                # Previous states of the chunk's rows: out[t0-1 : t1-1], or for the chunk
                # at t0 = 0, h0 for step 0's rows and out[0 : t1-1] for the rest.
                hp0 = h0p if t0 == 0 else NULL
                hp_c = outp if t0 == 0 else outp + (t0 - 1) * step
                if par_grads:
                    for blk in prange(n_w + n_x, num_threads=nt, schedule='dynamic'):
                        _grads_block(blk, dgip, dghp, xp + t0 * B * I, hp0, hp_c, Wih, Xpk,
                                     &dW_ih[0, 0], &dW_hh[0, 0], &db_ih[0], &db_hh[0],
                                     dxp + t0 * B * I, rows, B, I, H, n_w, wb, rb)
                else:
                    for blk in range(n_w + n_x):
                        _grads_block(blk, dgip, dghp, xp + t0 * B * I, hp0, hp_c, Wih, Xpk,
                                     &dW_ih[0, 0], &dW_hh[0, 0], &db_ih[0], &db_hh[0],
                                     dxp + t0 * B * I, rows, B, I, H, n_w, wb, rb)
                t1 = t0

            # 3. dh0 = carry + dgh_0 @ W_hh (slot 0 holds step 0).
            for blk in range(n_cols):
                _backward_block(B, H, dghp, Whh, WhhT, Wpk, carry, NULL, NULL, NULL, NULL,
                                NULL, NULL, lens, -1, blk * width, min((blk + 1) * width, H))
    finally:
        scratch_free(pk_buf)
