# GRU kernels: forward and backward through time.
#
# Axis legend: T = time steps, B = batch, I = input features, H = hidden units,
# G = 3H gate rows (r, z, n as in PyTorch). Every array is C-contiguous and
# time-major; the Python wrapper (gru.py) checks arguments, allocates the outputs
# and holds BLAS at one thread; the kernels write every element of their outputs
# and allocate their own scratch.
#
# Forward:
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
# Grouped gate layout. Where a time step is split over blocks of U hidden units
# (_step.unit_block), the kernels regroup the G rows of W_ih, W_hh and the biases
# by unit block (_step.group_gates): block [c0, c1) holds its r rows, then its z
# rows, then its n rows, so that one GEMM per block gives all three gates of its
# units side by side and a block of a step is independent of the other blocks.
# Every (.., G) buffer, the cached gates included, uses that layout; the weight
# gradients are regrouped back to PyTorch's (ungroup_gates). With one block
# (U = H) it is PyTorch's layout.
#
# Chunks of time: the backward walks back through chunks of about BWD_CHUNK_ROWS
# rows (steps x B); after a chunk's steps it adds the chunk's share of dW_ih,
# dW_hh and db and computes its dx, so its scratch is O(chunk) not O(T B G). The
# forward without a cache does the same with the input projection (CHUNK_ROWS).
#
# Threads (see _step.pxd): the steps split by blocks of batch rows (a thread runs
# its rows through every step of a chunk; without a cache, on the packed GEMM, and
# where the row blocks use as many threads as a chunk's projection would, through
# every chunk in one parallel region), or for few rows by blocks of units
# within each step (one parallel region over the chunk's steps, a barrier after
# each step) where a step is big, else run on one thread as one block of rows.
# Blocks depend only on the problem size and n_parts, so the results are bitwise
# identical for every thread count.
#
# The products with the weights: OpenBLAS's GEMM (with _vecmat for the per-step
# products at B = 1), or _packed_gemm.h on W_hh and W_ih packed once per call
# (_step.packs): the per-step h_{t-1} @ W_hh^T (B, H) x (H, G) and dgh_{t+1} @ W_hh
# (B, G) x (G, H), the input projection x @ W_ih^T and the input gradient
# dgi @ W_ih. The weight gradients stay on OpenBLAS (their left operand is
# dgi^T / dgh^T).

from cython cimport floating

include "_build_info.pxi"
from cython.parallel cimport prange, parallel
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from seqkern._blas cimport gemm
from seqkern._packed_gemm cimport pk_gemm, pk_gemm_dir, pk_pack_nn, pk_pack_nt, pk_size
from seqkern._workspace cimport scratch_alloc, scratch_free
from seqkern._step cimport (PACK_MIN_ROWS, copy_or_zero, final_states, group_gates, keep_ended,
                            loop_threads, n_blocks, packs, project_block, project_rows,
                            row_blocks, row_start, run_blocks, step_barrier, ungroup_gates,
                            unit_block)

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


cdef enum:
    # The GEMMs outside the time loop are cut into at most PARTS blocks of rows,
    # multiples of ALIGN (a function of the size only): few large BLAS calls,
    # because each call packs its shared operand again.
    PARTS = 4
    ALIGN = 16
    # A call over fewer than FEW_STEPS steps and PACK_MIN_ROWS rows (a single step,
    # typically: gru_step_forward) keeps the weights as given: one block of units,
    # and no W_hh^T (OpenBLAS's GEMV at B = 1, W_hh itself in the backward):
    # regrouping and transposing cost more than such a call's products.
    FEW_STEPS = 4
    # Rows (steps x B) of a chunk of time: the forward without a cache, the backward.
    CHUNK_ROWS = 512
    BWD_CHUNK_ROWS = 1024


cdef inline Py_ssize_t _block(Py_ssize_t n) noexcept nogil:
    """Size of the blocks that cut n items into at most PARTS (a function of n only)."""
    cdef Py_ssize_t b = (n + PARTS - 1) // PARTS
    b = (b + ALIGN - 1) // ALIGN * ALIGN
    return b if b > 0 else 1


cdef inline Py_ssize_t _chunk_steps(Py_ssize_t T, int B) noexcept nogil:
    """Steps of a forward chunk without a cache: about CHUNK_ROWS rows, the chunks
    of one call as even as whole steps allow (so that none is one row where T B > 1:
    a one-row projection would sum on the packed GEMM's one-row kernel, in another
    order than the same row projected among others, as with a cache)."""
    cdef Py_ssize_t c = max(1, CHUNK_ROWS // B)
    cdef Py_ssize_t n = (T + c - 1) // c
    return (T + n - 1) // n


cdef inline int _proj_blocks(Py_ssize_t rows, Py_ssize_t rb) noexcept nogil:
    """Blocks of a chunk's projection of ``rows`` rows: rb to 2 rb rows each, one
    block where fewer (never a one-row block: see _chunk_steps)."""
    return <int>max(<Py_ssize_t>1, rows // rb)


cdef inline bint _few(Py_ssize_t T, int B) noexcept nogil:
    return T < FEW_STEPS and T * B < PACK_MIN_ROWS


cdef inline int _unit_width(Py_ssize_t T, int B, int H, int n_parts) noexcept nogil:
    """Width of the unit blocks of a call of T steps (the grouped layout depends on
    it, so forward and backward agree): H for a call of few steps."""
    return H if _few(T, B) else unit_block(B, 3, H, n_parts)


cdef inline size_t _lines(size_t n) noexcept nogil:
    """n elements rounded up to 16, so that the next buffer starts on 64 bytes."""
    return (n + 15) // 16 * 16


cdef void _transpose(const floating* a, floating* out, int m, int n) noexcept nogil:
    """out (n, m) := a^T for a (m, n) row-major; tiles of 16 x 16."""
    cdef int i0, j0, i, j
    for i0 in range(0, m, 16):
        for j0 in range(0, n, 16):
            for j in range(j0, min(j0 + 16, n)):
                for i in range(i0, min(i0 + 16, m)):
                    out[<Py_ssize_t>j * m + i] = a[<Py_ssize_t>i * n + j]


cdef floating* _weights(bint backward, int I, int H, int U, bint packed, bint transposed,
                        const floating* W_ih, const floating* W_hh, size_t extra,
                        const floating** Wih, const floating** Whh, const floating** WhhT,
                        floating** Xpk, floating** Wpk) noexcept nogil:
    """One scratch allocation (scratch_free it; NULL if out of memory) that starts
    with ``extra`` elements for the caller, followed by the weights as a call runs
    on them. W_ih (G, I), W_hh (G, H) in PyTorch's order. Sets *Wih, *Whh to them
    grouped by blocks of U units (to W_ih, W_hh themselves where U >= H); *WhhT to
    the grouped W_hh^T (H, G) if ``transposed``, else NULL; *Wpk and *Xpk, if
    ``packed``, to the grouped W_hh and W_ih packed for the forward's h @ W_hh^T and
    x @ W_ih^T or the backward's dgh @ W_hh and dgi @ W_ih, else NULL."""
    cdef int G = 3 * H
    cdef bint grouped = U < H
    cdef size_t n_ih = _lines(<size_t>G * I) if grouped else 0
    cdef size_t n_hh = _lines(<size_t>G * H) if grouped else 0
    cdef size_t n_t = _lines(<size_t>G * H) if transposed else 0
    cdef size_t n_wp = 0, n_xp = 0
    cdef floating* buf
    cdef floating* p
    if packed:
        n_wp = _lines(pk_size(<floating*>NULL, H if backward else G, G if backward else H))
        n_xp = _lines(pk_size(<floating*>NULL, I if backward else G, G if backward else I))
    extra = _lines(extra)
    buf = <floating*>scratch_alloc((extra + n_ih + n_hh + n_t + n_wp + n_xp) * sizeof(floating))
    if buf == NULL:
        return NULL
    p = buf + extra
    Wih[0], Whh[0], WhhT[0], Xpk[0], Wpk[0] = W_ih, W_hh, NULL, NULL, NULL
    if grouped:
        group_gates(W_ih, p, 3, H, I, U)
        Wih[0] = p
        p += n_ih
        group_gates(W_hh, p, 3, H, H, U)
        Whh[0] = p
        p += n_hh
    if transposed:
        _transpose(Whh[0], p, G, H)
        WhhT[0] = p
        p += n_t
    if packed:
        Wpk[0] = p
        Xpk[0] = p + n_wp
        if backward:
            pk_pack_nn(G, H, Whh[0], H, Wpk[0])
            pk_pack_nn(G, I, Wih[0], I, Xpk[0])
        else:
            pk_pack_nt(G, H, Whh[0], H, Wpk[0])
            pk_pack_nt(G, I, Wih[0], I, Xpk[0])
    return buf


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------

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
    out_t := h'. Rows whose sequence has ended get 0 in all three.
    h_prev (B, H), W_hh (G, H) grouped, gh (B, G), gates_t (B, G), hn_t, out_t (B, H)."""
    cdef int G = 3 * H, w = c1 - c0, p = 3 * c0
    cdef int b
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
        g = gates_t + <Py_ssize_t>b * G + p
        hr = hn_t + <Py_ssize_t>b * H + c0
        if lengths != NULL and t >= lengths[b]:
            memset(o, 0, w * sizeof(floating))
            memset(g, 0, 3 * w * sizeof(floating))
            memset(hr, 0, w * sizeof(floating))
            continue
        q = gh + <Py_ssize_t>b * G + p
        hp = h_prev + <Py_ssize_t>b * H + c0
        if floating is float:
            sk_gru_fwd_row_f(w, g, g + w, g + 2 * w, q, q + w, q + 2 * w, bh, hp, o, hr)
        else:
            sk_gru_fwd_row_d(w, g, g + w, g + 2 * w, q, q + w, q + 2 * w, bh, hp, o, hr)


cdef void _forward_rows(int b0, int b1, int B, int H, Py_ssize_t t0, Py_ssize_t t1,
                        const floating* h0, const floating* W_hh, const floating* W_hh_T,
                        const floating* W_pk, const floating* b_hn, floating* gh,
                        floating* gates, floating* hn,
                        Py_ssize_t hstep, floating* out, const int64_t* lengths) noexcept nogil:
    """Steps [t0, t1) for batch rows [b0, b1) (their own sequences): _forward_block
    on those rows and all H units. gates (t1 - t0, B, G) for the chunk's steps, hn
    (.., B, H) with step t at t * hstep, the rest as in forward()."""
    cdef int G = 3 * H
    cdef Py_ssize_t t, step = <Py_ssize_t>B * H, r0 = <Py_ssize_t>b0 * H
    cdef Py_ssize_t g0 = <Py_ssize_t>b0 * G
    cdef const floating* h_prev
    for t in range(t0, t1):
        h_prev = (h0 + r0) if t == 0 else out + (t - 1) * step + r0
        _forward_block(b1 - b0, H, h_prev, W_hh, W_hh_T, W_pk, b_hn, gh + g0,
                       gates + (t - t0) * B * G + g0, hn + t * hstep + r0, out + t * step + r0,
                       NULL if lengths == NULL else lengths + b0, t, 0, H)


cdef void _forward_rows_chunks(int b0, int b1, int B, int H, Py_ssize_t T, Py_ssize_t Tc,
                               int I, const floating* x, const floating* W_ih,
                               const floating* X_pk, const floating* bias, const floating* h0,
                               const floating* W_hh, const floating* W_hh_T,
                               const floating* W_pk, const floating* b_hn, floating* gh,
                               floating* gates, floating* hn, floating* out,
                               const int64_t* lengths) noexcept nogil:
    """Every step for batch rows [b0, b1) of a split batch, chunk by chunk (Tc steps;
    no cache: gates holds one chunk, hn one step), each step's input projection of
    these rows at the start of its chunk: the blocks run in one parallel region,
    with no barrier between chunks, which a busy machine would make each thread
    wait at. Only where the products are packed: every element is one k-ordered
    sum whatever rows share a call (a split block has at least MIN_ROWS rows, never
    the one-row kernel), so the same bits as the chunk projected in row blocks."""
    cdef int G = 3 * H
    cdef Py_ssize_t t0 = 0, t1
    while t0 < T:
        t1 = min(t0 + Tc, T)
        project_block(x + t0 * B * I, W_ih, X_pk, bias, gates, t1 - t0, B, b0, b1, I, G)
        _forward_rows(b0, b1, B, H, t0, t1, h0, W_hh, W_hh_T, W_pk, b_hn, gh, gates, hn, 0,
                      out, lengths)
        t0 = t1


def forward(const floating[:, :, ::1] x,      # (T, B, I)
            const floating[:, ::1] h0,        # (B, H)
            const floating[:, ::1] W_ih,      # (G, I), rows r, z, n
            const floating[:, ::1] W_hh,      # (G, H), rows r, z, n
            const floating[::1] b_ih,         # (G,) or None
            const floating[::1] b_hh,         # (G,) or None
            const int64_t[::1] lengths,       # (B,) or None
            floating[:, :, ::1] gates,        # (T, B, G) OUT: r, z, n (grouped), or None
            floating[:, :, ::1] hn,           # (T, B, H) OUT: h W_hn^T + b_hn, or None
            floating[:, :, ::1] out,          # (T, B, H) OUT: every h_t (0 past a length)
            floating[:, ::1] h_n,             # (B, H) OUT: the state after each sequence's last step
            int n_threads, int n_parts, int step_gemm):
    """GRU forward over a whole sequence. T, B, H >= 1 (the wrapper handles empties).
    ``gates`` and ``hn`` (what the backward needs; 0 past a length) are both given
    or both None (no cache: the steps then run in chunks of about CHUNK_ROWS rows).
    n_parts: the machine's core count (_step.pxd); step_gemm: seqkern._step_gemm's
    AUTO, BLAS or PACKED."""
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef int G = 3 * H
    cdef Py_ssize_t TB = <Py_ssize_t>T * B
    cdef Py_ssize_t step = <Py_ssize_t>B * H
    cdef Py_ssize_t gstep = <Py_ssize_t>B * G
    cdef bint cached = gates is not None
    cdef Py_ssize_t Tc = T if cached else _chunk_steps(T, B)
    cdef Py_ssize_t hstep = step if cached else 0
    cdef const int64_t* lens = NULL if lengths is None else &lengths[0]
    cdef const floating* bih = NULL if b_ih is None else &b_ih[0]
    cdef const floating* bhh = NULL if b_hh is None else &b_hh[0]
    cdef floating* outp = &out[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* h0p = &h0[0, 0]
    cdef int U = _unit_width(T, B, H, n_parts)
    cdef int n_cols = n_blocks(H, U)
    cdef int n_rb = row_blocks(B, n_parts)
    cdef bint packed = packs(step_gemm, TB)
    cdef Py_ssize_t rb = _block(Tc * B)
    cdef int nt = n_threads
    cdef int nt_rows = loop_threads(nt, n_rb, <double>TB * G * H)
    cdef int n_run = run_blocks(n_rb, nt_rows, packed)
    cdef int nt_proj
    # the threads of a whole chunk's projection
    cdef int nt_chunk = loop_threads(nt, _proj_blocks(Tc * B, rb), <double>Tc * B * G * I)
    cdef Py_ssize_t rows, t, t0, t1
    cdef int i, blk, r, n_rows
    cdef const floating* Wih
    cdef const floating* Whh
    cdef const floating* WhhT
    cdef floating* Wpk
    cdef floating* Xpk
    # scratch: the input bias (G, grouped) and a staging copy (G), b_hn (H), the
    # step product gh (B, G), and without a cache the chunk's gates and hn
    cdef size_t n_bias = _lines(G), n_bhn = _lines(H), n_gh = _lines(gstep)
    cdef size_t n_gates = 0 if cached else _lines(Tc * gstep)
    cdef floating* buf
    with nogil:
        buf = _weights(False, I, H, U, packed, B == 1 and not packed and not _few(T, B),
                       &W_ih[0, 0], &W_hh[0, 0], 2 * n_bias + n_bhn + n_gh + n_gates + (0 if cached else step),
                       &Wih, &Whh, &WhhT, &Xpk, &Wpk)
    if buf == NULL:
        raise MemoryError("gru_forward: no memory for the kernel's scratch")
    cdef floating* bias = buf
    cdef floating* stage = buf + n_bias
    cdef floating* bhn = stage + n_bias
    cdef floating* ghp = bhn + n_bhn
    cdef floating* gp = ghp + n_gh if not cached else &gates[0, 0, 0]
    cdef floating* hnp = ghp + n_gh + n_gates if not cached else &hn[0, 0, 0]
    cdef const floating* h_prev = NULL
    t = 0
    try:
        with nogil:
            # b_hr, b_hz fold into the input projection; b_hn sits inside r * (...)
            for i in range(G):
                stage[i] = 0 if bih == NULL else bih[i]
                if bhh != NULL and i < 2 * H:
                    stage[i] += bhh[i]
            group_gates(<const floating*>stage, bias, 3, H, 1, U)
            for i in range(H):
                bhn[i] = 0 if bhh == NULL else bhh[2 * H + i]

            if packed and not cached and n_run > 1 and n_run >= nt_chunk:
                # the batch split by rows over threads, no cache, packed: each block
                # of rows through every chunk in one region (_forward_rows_chunks),
                # unless a chunk's projection would run on more threads than there
                # are blocks of rows
                for r in prange(n_run, num_threads=nt_rows, schedule='static',
                                use_threads_if=nt_rows > 1):
                    _forward_rows_chunks(row_start(r, B, n_run), row_start(r + 1, B, n_run), B,
                                         H, T, Tc, I, xp, Wih, Xpk, bias, h0p, Whh, WhhT, Wpk,
                                         bhn, ghp, gp, hnp, outp, lens)
            else:
                t0 = 0
                while t0 < T:
                    t1 = min(t0 + Tc, T)
                    # 1. The input projection of the chunk's steps (_proj_blocks)
                    rows = (t1 - t0) * B
                    n_rows = _proj_blocks(rows, rb)
                    nt_proj = loop_threads(nt, n_rows, <double>rows * G * I)
                    for i in prange(n_rows, num_threads=nt_proj, schedule='static',
                                    use_threads_if=nt_proj > 1):
                        project_rows(xp + t0 * B * I, Wih, Xpk, bias, gp,
                                     <Py_ssize_t>i * rows // n_rows,
                                     <Py_ssize_t>(i + 1) * rows // n_rows, I, G)

                    # 2. The recurrence: one GEMM and one fused pass per step, each block
                    # of rows through the chunk's steps, or each step over unit blocks.
                    if n_rb > 1 or n_cols == 1:
                        for r in prange(n_run, num_threads=nt_rows, schedule='static',
                                        use_threads_if=nt_rows > 1):
                            _forward_rows(row_start(r, B, n_run), row_start(r + 1, B, n_run), B, H,
                                          t0, t1, h0p, Whh, WhhT, Wpk, bhn, ghp, gp, hnp, hstep,
                                          outp, lens)
                    else:
                        with parallel(num_threads=nt, use_threads_if=nt > 1):
                            for t in range(t0, t1):
                                h_prev = h0p if t == 0 else outp + (t - 1) * step
                                for blk in prange(n_cols, schedule='static'):
                                    _forward_block(B, H, h_prev, Whh, WhhT, Wpk, bhn, ghp,
                                                   gp + (t - t0) * gstep, hnp + t * hstep,
                                                   outp + t * step, lens, t,
                                                   blk * U, min((blk + 1) * U, H))
                                step_barrier()
                    t0 = t1

            # 3. The final state of each sequence.
            final_states(B, H, T, lens, h0p, outp, &h_n[0, 0])
    finally:
        scratch_free(buf)


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------

cdef void _backward_block(int B, int H, const floating* dgh_next, const floating* W_hh,
                          const floating* W_hh_T, const floating* W_pk,
                          floating* carry, const floating* d_h_n,
                          floating* dgi_t, floating* dgh_t,
                          const floating* d_out_t, const floating* gates_t,
                          const floating* hn_t, const floating* h_prev,
                          const int64_t* lengths, Py_ssize_t t, int c0, int c1) noexcept nogil:
    """One step back on hidden units [c0, c1).

    carry (B, H) is the gradient reaching h_t from later steps and from d_h_n ((B, H)
    or NULL). Step t+1 left g*z in the rows it consumed (the direct path h' = ... +
    z h), so adding dgh_{t+1} @ W_hh (zero in rows that ended before t+1, whose carry
    stays d_h_n's: keep_ended) completes it:
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
        keep_ended(B, H, lengths, t, d_h_n, carry, c0, c1)
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


cdef void _backward_rows(int b0, int b1, int B, int H, Py_ssize_t t0, Py_ssize_t t1,
                         Py_ssize_t T, Py_ssize_t Tc, const floating* W_hh,
                         const floating* W_hh_T, const floating* W_pk, floating* carry,
                         const floating* d_h_n,
                         floating* dgi, floating* dgh, const floating* d_out,
                         const floating* gates, const floating* hn, const floating* h0,
                         const floating* out, const int64_t* lengths) noexcept nogil:
    """Steps t1-1 .. t0 back (and t = -1, the carry into dh0, where t0 = 0) for batch
    rows [b0, b1) (their own sequences): _backward_block on those rows and all H
    units; dgi, dgh (Tc, B, G) hold step t in slot t mod Tc; the rest as in
    backward()."""
    cdef int G = 3 * H
    cdef Py_ssize_t t, step = <Py_ssize_t>B * H, gstep = <Py_ssize_t>B * G
    cdef Py_ssize_t r0 = <Py_ssize_t>b0 * H, g0 = <Py_ssize_t>b0 * G
    cdef Py_ssize_t t_end = -1 if t0 == 0 else t0
    for t in range(t1 - 1, t_end - 1, -1):
        _backward_block(b1 - b0, H, NULL if t == T - 1 else dgh + ((t + 1) % Tc) * gstep + g0,
                        W_hh, W_hh_T, W_pk, carry + r0, NULL if d_h_n == NULL else d_h_n + r0,
                        NULL if t < 0 else dgi + (t % Tc) * gstep + g0,
                        NULL if t < 0 else dgh + (t % Tc) * gstep + g0,
                        NULL if (d_out == NULL or t < 0) else d_out + t * step + r0,
                        NULL if t < 0 else gates + t * gstep + g0,
                        NULL if t < 0 else hn + t * step + r0,
                        NULL if t < 0 else ((h0 + r0) if t == 0 else out + (t - 1) * step + r0),
                        NULL if lengths == NULL else lengths + b0, t, 0, H)


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
    (added to); [n_w, ...): rows of dx_c. Block sizes: wb rows of G,
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


def backward(const floating[:, :, ::1] x,        # (T, B, I)  from the forward
             const floating[:, :, ::1] d_out,    # (T, B, H) or None
             const floating[:, ::1] d_h_n,       # (B, H) or None
             const floating[:, ::1] h0,          # (B, H)
             const floating[:, :, ::1] out,      # (T, B, H)
             const floating[:, ::1] W_ih,        # (G, I), rows r, z, n
             const floating[:, ::1] W_hh,        # (G, H), rows r, z, n
             const floating[:, :, ::1] gates,    # (T, B, G) r, z, n (grouped) from forward()
             const floating[:, :, ::1] hn,       # (T, B, H) from forward()
             const int64_t[::1] lengths,         # (B,) or None
             floating[:, :, ::1] dx,             # (T, B, I) OUT
             floating[:, ::1] dh0,               # (B, H) OUT
             floating[:, ::1] dW_ih,             # (G, I) OUT
             floating[:, ::1] dW_hh,             # (G, H) OUT
             floating[::1] db_ih,                # (G,) OUT
             floating[::1] db_hh,                # (G,) OUT
             int n_threads, int n_parts, int step_gemm):
    """GRU backward through time. T, B, H >= 1 (the wrapper handles empties); the
    sizes, n_parts and (for the grouped layout of ``gates``) the call's T as in
    forward().

    Time runs backwards in chunks of Tc steps (Tc >= 2 or Tc >= T), aligned on
    multiples of Tc: the gate gradients of a chunk's steps, then its share of dW_ih,
    dW_hh, db and dx as GEMMs over its Tc*B rows. The gate gradients of step t sit
    in slot t mod Tc, so step t0 - 1 (next chunk) still finds those of step t0. The
    chunks depend only on the problem size, so does the summation order of the
    weight gradients."""
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef int G = 3 * H
    cdef Py_ssize_t step = <Py_ssize_t>B * H
    cdef Py_ssize_t gstep = <Py_ssize_t>B * G
    cdef Py_ssize_t Tc = min(T, max(2, BWD_CHUNK_ROWS // B))
    cdef const int64_t* lens = NULL if lengths is None else &lengths[0]
    cdef const floating* dop = NULL if d_out is None else &d_out[0, 0, 0]
    cdef const floating* outp = &out[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* h0p = &h0[0, 0]
    cdef const floating* gp = &gates[0, 0, 0]
    cdef const floating* hnp = &hn[0, 0, 0]
    cdef floating* dxp = &dx[0, 0, 0]
    cdef floating* carry = &dh0[0, 0]
    cdef const floating* dhn = NULL if d_h_n is None else &d_h_n[0, 0]
    cdef int U = _unit_width(T, B, H, n_parts)
    cdef bint grouped = U < H
    cdef int n_cols = n_blocks(H, U)
    cdef int n_rb = row_blocks(B, n_parts)
    cdef bint packed = packs(step_gemm, <Py_ssize_t>T * B)
    cdef int wb = <int>_block(G)
    cdef int n_w = n_blocks(G, wb)
    cdef Py_ssize_t rb = _block(Tc * B)
    cdef int nt = n_threads
    cdef int nt_rows = loop_threads(nt, n_rb, <double>T * B * G * H)
    cdef int n_run = run_blocks(n_rb, nt_rows, packed)
    # dW_ih, dW_hh and dx of a chunk: rows G (2 I + H) multiply-adds
    cdef int nt_grads
    cdef Py_ssize_t rows, t, t0, t1, t_end
    cdef int blk, r, n_x
    cdef const floating* Wih
    cdef const floating* Whh
    cdef const floating* WhhT
    cdef floating* Wpk
    cdef floating* Xpk
    # scratch: the chunk's gate gradients dgi, dgh (Tc, B, G); grouped, the weight
    # and bias gradients before they are regrouped to PyTorch's order
    cdef size_t n_dg = _lines(Tc * gstep)
    cdef size_t n_wih = _lines(<size_t>G * I) if grouped else 0
    cdef size_t n_whh = _lines(<size_t>G * H) if grouped else 0
    cdef size_t n_b = _lines(G) if grouped else 0
    cdef floating* buf
    with nogil:
        buf = _weights(True, I, H, U, packed, B > 1 and not packed and not _few(T, B),
                       &W_ih[0, 0], &W_hh[0, 0], 2 * n_dg + n_wih + n_whh + 2 * n_b,
                       &Wih, &Whh, &WhhT, &Xpk, &Wpk)
    if buf == NULL:
        raise MemoryError("gru_backward: no memory for the kernel's scratch")
    cdef floating* dgip = buf
    cdef floating* dghp = buf + n_dg
    cdef floating* dWih = dghp + n_dg if grouped else &dW_ih[0, 0]
    cdef floating* dWhh = dghp + n_dg + n_wih if grouped else &dW_hh[0, 0]
    cdef floating* dbi = dghp + n_dg + n_wih + n_whh if grouped else &db_ih[0]
    cdef floating* dbh = dghp + n_dg + n_wih + n_whh + n_b if grouped else &db_hh[0]
    cdef const floating* dgh_next = NULL
    cdef const floating* do_t = NULL
    cdef const floating* h_prev = NULL
    t = 0
    try:
        with nogil:
            copy_or_zero(carry, dhn, step)
            memset(dWih, 0, <size_t>G * I * sizeof(floating))
            memset(dWhh, 0, <size_t>G * H * sizeof(floating))
            memset(dbi, 0, G * sizeof(floating))
            memset(dbh, 0, G * sizeof(floating))

            t1 = T
            while t1 > 0:
                t0 = (t1 - 1) // Tc * Tc
                # 1. Through the chunk's steps, t = t1-1 .. t0 (and t = -1 after
                # step 0: dh0 = carry + dgh_0 @ W_hh), by blocks of rows or of units.
                if n_rb > 1 or n_cols == 1:
                    for r in prange(n_run, num_threads=nt_rows, schedule='static',
                                    use_threads_if=nt_rows > 1):
                        _backward_rows(row_start(r, B, n_run), row_start(r + 1, B, n_run), B, H,
                                       t0, t1, T, Tc, Whh, WhhT, Wpk, carry, dhn, dgip, dghp,
                                       dop, gp, hnp, h0p, outp, lens)
                else:
                    t_end = -1 if t0 == 0 else t0
                    with parallel(num_threads=nt, use_threads_if=nt > 1):
                        for t in range(t1 - 1, t_end - 1, -1):
                            dgh_next = NULL if t == T - 1 else dghp + ((t + 1) % Tc) * gstep
                            do_t = NULL if (dop == NULL or t < 0) else dop + t * step
                            h_prev = h0p if t <= 0 else outp + (t - 1) * step
                            for blk in prange(n_cols, schedule='static'):
                                _backward_block(B, H, dgh_next, Whh, WhhT, Wpk, carry, dhn,
                                                dgip + (t - t0 if t >= 0 else 0) * gstep,
                                                dghp + (t - t0 if t >= 0 else 0) * gstep, do_t,
                                                gp + (t if t >= 0 else 0) * gstep,
                                                hnp + (t if t >= 0 else 0) * step, h_prev,
                                                lens, t, blk * U, min((blk + 1) * U, H))
                            step_barrier()

                # 2. The chunk's weight, bias and input gradients: GEMMs over its rows.
                # Previous states of the chunk's rows: out[t0-1 : t1-1], or for the
                # chunk at t0 = 0, h0 for step 0's rows and out[0 : t1-1] for the rest.
                rows = (t1 - t0) * B
                n_x = n_blocks(rows, rb)
                nt_grads = loop_threads(nt, n_w + n_x, <double>rows * G * (2 * I + H))
                for blk in prange(n_w + n_x, num_threads=nt_grads, schedule='dynamic',
                                  use_threads_if=nt_grads > 1):
                    _grads_block(blk, dgip, dghp, xp + t0 * B * I, h0p if t0 == 0 else NULL,
                                 outp if t0 == 0 else outp + (t0 - 1) * step, Wih, Xpk,
                                 dWih, dWhh, dbi, dbh, dxp + t0 * B * I, rows, B, I, H,
                                 n_w, wb, rb)
                t1 = t0

            # 3. The weight gradients in PyTorch's order.
            if grouped:
                ungroup_gates(<const floating*>dWih, &dW_ih[0, 0], 3, H, I, U)
                ungroup_gates(<const floating*>dWhh, &dW_hh[0, 0], 3, H, H, U)
                ungroup_gates(<const floating*>dbi, &db_ih[0], 3, H, 1, U)
                ungroup_gates(<const floating*>dbh, &db_hh[0], 3, H, 1, U)
    finally:
        scratch_free(buf)
