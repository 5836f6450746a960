# LSTM kernels: forward and backward through time.
#
# Axis legend: T = time steps, B = batch, I = input features, H = hidden units,
# G = 4H gate pre-activations. Every array is C-contiguous and time-major; the
# Python wrapper (lstm.py) checks and prepares arguments, allocates outputs and
# scratch, and holds BLAS at one thread where the products run on it.
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
# Gate layout. The hidden units are cut into blocks of U units (U depends only on
# B and H). The weights and bias are repacked once per call so that block k's
# rows are [i rows | f rows | g rows | o rows] of its units, one after the other:
# one GEMM per block then yields all four gates of its units side by side in the
# (B, 4H) gate buffer, and the fused element-wise pass of that block needs
# nothing from any other block. Inside the gate buffer, block k starts at column
# 4 k U and gate q of unit k U + j sits at column 4 k U + q U_k + j, where
# U_k = min(U, H - k U). The weight gradients are written straight back in
# PyTorch's row order.
#
# Only what is truly sequential runs step by step (one GEMM per step plus one
# fused element-wise pass); the input projection and all weight gradients are
# GEMMs over many rows at once: the projection over chunks of ~CHUNK_ROWS rows run
# just ahead of their steps, the gradients over chunks of ~BWD_CHUNK_ROWS rows
# right after the backward steps that produced them (so that what they read is
# still in cache, and the scratch is one chunk, not T*B rows). At batch 1 (where
# a step is one unit block and the weights are packed: _one_row) the projection
# of the next 16 steps runs inside each step's product instead, which is bound by
# reading W_hh and leaves the FMA units idle (_forward_one_row).
#
# Threads: work is cut into blocks whose boundaries depend only on the problem
# size, never on the thread count, and no two blocks write the same element; the
# threads only decide who runs which block. So the results are bitwise identical
# for every thread count. Inside the time loop, one OpenMP parallel region spans
# the steps and the end of each step's work-shared loop is the barrier between
# steps; the batch-1 steps split in two halves (forward and backward) hand each
# step across through spin flags instead (_split_lead).

from cython cimport floating

include "_build_info.pxi"
from cython.parallel cimport prange, parallel, threadid
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from seqkern._blas cimport gemm
from seqkern._step cimport PAR_MIN_GEMM, interleaves, n_blocks, packs, rows_times_wt
from seqkern._packed_gemm cimport (SK_PK_SIDE_ROWS, SK_PK_VBYTES, pk_alloc_nn, pk_alloc_nt, pk_gemm,
                                   pk_gemm_dir, pk_gemv_side, pk_pack_nn, pk_pack_nt, pk_pack_side,
                                   pk_size)
from seqkern._workspace cimport scratch_alloc, scratch_free

cdef extern from "_sync.h" nogil:
    ctypedef struct sk_flag:
        pass
    void sk_flag_set(sk_flag* f, long long v)
    long long sk_flag_get(sk_flag* f)
    void sk_flag_wait(sk_flag* f, long long v)
    int sk_flag_wait_for(sk_flag* f, long long v, long long spins)
    long long sk_flag_take(sk_flag* f)
    int sk_flag_claim(sk_flag* f, long long frm, long long to)

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


# A step is split over blocks of UNIT_BLOCK hidden units once its recurrent
# product (B * 4H * H multiply-adds) reaches PAR_MIN_STEP; below that a single
# block (U = H) is used and the barrier per step would cost more than it saves.
# The GEMMs outside the time loop (the projection where the steps are not split,
# each backward chunk's gradients) go parallel only from PAR_MIN_GEMM
# multiply-adds (_step.pxd).
# Where the batch-1 backward steps split between two threads, though, the
# chunk's gradients are shared by those two inside the same region, whatever
# their size (_bwd_grad_tail): (1,100,128,128) float32 forward+backward on 2
# threads 0.89 -> 0.71 ms, float64 (1,1000,64,64) 4.4 -> 3.6 ms (tight loops).
# The forward's input projection runs in chunks of ~CHUNK_ROWS rows and the
# backward in chunks of ~BWD_CHUNK_ROWS rows (see below); the weight gradients
# in jobs of UNIT_BLOCK rows of one gate, dx in DX_BLOCK x DX_BLOCK tiles.
cdef enum:
    UNIT_BLOCK = 64
    PAR_MIN_STEP = 262144
    ROW_BLOCK = 256
    K_BLOCK = 256
    CHUNK_ROWS = 64
    BWD_CHUNK_ROWS = 512
    DX_BLOCK = 64


# The products with the weights (see _step.pxd). Packed: the per-step h_{t-1} @ W_hh^T and
# dz_t @ W_hh, the input projection x @ W_ih^T and the input gradient dz @ W_ih.
# The weight gradients dW = dz^T @ [x | h_prev] also run packed (see
# _chunk_grad_job): OpenBLAS ran them at 52/72 GFLOP/s at (B,T,I,H) =
# (32,100,256,256) / (64,200,512,512), ~37% of the fwd+bwd time; the packed
# blocks (64 x 256 x N) run at the step GEMM's speed (~112 GFLOP/s). Cost: each
# backward chunk's x and h_{t-1} rows packed once more, 64 x R scratch per thread.
# With them and the float gate pass, float32 fwd+bwd vs PyTorch went from
# 0.77x / 0.72x to 1.22x / 1.03x at those shapes (python -m seqkern.bench).
# Measured (1 thread, AMD EPYC Zen 4, alternating calls, fwd / fwd+bwd speed-up of
# packed over OpenBLAS): (B,T,I,H) = (1,100,128,128) 1.04/1.06 float32, 0.95/1.02
# float64 (the one case within noise of even: B = 1 is bound by reading W_hh, the
# same bytes either way); (1,1000,64,64) 1.19/1.10, 1.09/1.19; (8,100,128,128)
# 1.81/1.31, 1.50/1.20; (32,100,256,256) 1.29/1.22, 1.16/1.05; (64,200,512,512)
# 1.15/1.13, 1.36/1.14. So AUTO packs where the ISA allows (_step.packs).


cdef inline int _unit_block(Py_ssize_t T, int B, int H) noexcept nogil:
    """Units per block of one time step (a function of the sizes only). One block
    (the weights as given, not reordered per call) for a single step of a single
    row, whose products are GEMVs: measured (float32, forward / forward+backward,
    1 and 2 threads) at H = 256 1.37x / 1.81x forward+backward, at H = 512 4.3x /
    3.1x forward, 1.24x / 1.27x forward+backward. Not from T = 2 or B = 2 on: there
    OpenBLAS ran one (B, 4H) x (H) GEMM per step up to 2x slower than four of its
    blocks (H = 256, 512), reordering included, even on one thread."""
    if T * B == 1 or <int64_t>B * 4 * H * H < PAR_MIN_STEP or H <= UNIT_BLOCK:
        return H
    return UNIT_BLOCK


def unit_block(Py_ssize_t T, int B, int H):
    """Units per gate block for T steps of a batch of B and H hidden units."""
    return _unit_block(T, B, H)


def splits_steps(int T, int B, int H, int itemsize, int step_gemm, int n_threads):
    """Does forward() split each batch-1 step between two threads (_split_one_row)?
    The two then write alternate runs of H/2 elements of the same rows of z, out
    and cs, which the wrapper therefore starts on a cache line: else the lines at
    the seams would be written by both cores at every step."""
    return (_one_row(T, B, H, step_gemm) and T > 1
            and _split_one_row(H, itemsize, n_threads))


def calls_blas(Py_ssize_t rows, int step_gemm):
    """Do forward() and backward() call BLAS for a call over ``rows`` = T * B rows?
    Only where the products are not packed: the packed path runs every product,
    weight gradients included, on _packed_gemm.h (so the wrapper need not hold
    BLAS at one thread around it, ~5 us a call)."""
    return not packs(step_gemm, rows)


# Where a step is split over unit blocks, the input projection runs in chunks of
# ~CHUNK_ROWS rows (Tc steps) just before those steps, each block projecting its
# own columns: the gate rows are then still in the thread's L2 when the step's
# product adds to them and the gate pass reads them, and without a cache the gate
# buffer needs only Tc steps. Otherwise (one block: small B * H) the projection
# of all steps runs first, split over row blocks between the threads.

cdef inline int _chunk_steps(int B) noexcept nogil:
    return max(1, CHUNK_ROWS // B)


cdef inline bint _one_row(Py_ssize_t T, int B, int H, int step_gemm) noexcept nogil:
    """Does forward() take the batch-1 path (_forward_one_row)?"""
    return B == 1 and _unit_block(T, B, H) == H and interleaves(step_gemm, T)


cdef inline bint _project_first(Py_ssize_t T, int I, int H, int n_threads) noexcept nogil:
    """On the batch-1 path: project all steps first, in parallel (see _forward_one_row)?"""
    return n_threads > 1 and T >= 2 and T * I * 4 * H >= PAR_MIN_GEMM


def gate_slots(int T, int B, int H, int I, bint keep_all, int step_gemm, int n_threads):
    """Time steps the (slots, B, 4H) gate buffer of forward() must hold: T if
    ``keep_all`` (the cache) or the projection runs ahead of the time loop, else
    one chunk (two on the batch-1 path)."""
    if keep_all:
        return T
    if _one_row(T, B, H, step_gemm) and not _project_first(T, I, H, n_threads):
        return min(T, 2 * SK_PK_SIDE_ROWS)
    if _unit_block(T, B, H) == H:
        return T
    return min(T, _chunk_steps(B))


cdef void _repack_rows(const floating* W, floating* Wp, int H, int K, int U) noexcept nogil:
    """Wp := W with its rows reordered into the block layout; W, Wp (4H, K).
    Rows q*H + u (gate q, unit u) go to 4 k U + q U_k + (u - k U), k = u // U."""
    cdef int k, q, u0, uk
    for k in range(n_blocks(H, U)):
        u0 = k * U
        uk = min(U, H - u0)
        for q in range(4):
            memcpy(Wp + (<Py_ssize_t>4 * u0 + q * uk) * K,
                   W + (<Py_ssize_t>q * H + u0) * K,
                   <size_t>uk * K * sizeof(floating))


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------

cdef void _project_chunk(int B, int H, int U, int k, int I, Py_ssize_t t0, Py_ssize_t t1,
                         const floating* x, const floating* Wp, const floating* Wp_pk,
                         floating* z) noexcept nogil:
    """The columns of unit block k of z[0:t1-t0] := x[t0:t1] @ Wp^T; x (T, B, I),
    Wp (4H, I) block layout, z (t1-t0, B, 4H): the input projection of steps
    t0..t1-1 for that block. Wp_pk: Wp packed for x @ Wp^T, or NULL (OpenBLAS)."""
    cdef int G = 4 * H
    cdef int u0 = k * U
    cdef int uk = min(U, H - u0)
    cdef int M = <int>((t1 - t0) * B)
    cdef const floating* xs = x + t0 * B * I
    if Wp_pk != NULL:
        pk_gemm(M, I, xs, I, Wp_pk, z, G, 4 * u0, 4 * (u0 + uk), False)
    else:
        gemm(False, True, M, 4 * uk, I, <floating>1, xs, I, Wp + <Py_ssize_t>4 * u0 * I, I,
             <floating>0, z + 4 * u0, G)


cdef void _forward_block(int B, int H, int U, int k, Py_ssize_t t, int T,
                         const floating* h_prev, const floating* c_prev,
                         const floating* Whh_p, const floating* W_pk, const floating* bias_p,
                         floating* z_t, floating* c_t,
                         floating* h_t, floating* h_n, floating* c_n,
                         const int64_t* lengths) noexcept nogil:
    """Step t on the units of block k.

    z_t (B, 4H) holds the input projection of step t (without the bias, which the
    gate pass adds: bias_p (4H), block layout) on entry and the gate
    activations i, f, g, o on exit (block layout). h_prev, c_prev (B, H) are the
    states after step t-1; c_t (B, H) and h_t (B, H, the output of step t) are
    written. Rows whose sequence has ended (t >= lengths[b]) get h_t = c_t = 0;
    rows at their last step also copy h_t, c_t into h_n, c_n.
    W_pk: Whh_p packed for h @ Whh_p^T (the product then runs in _packed_gemm.h),
    or NULL (OpenBLAS)."""
    cdef int G = 4 * H
    cdef int u0 = k * U
    cdef int uk = min(U, H - u0)
    if W_pk != NULL:
        # alternate the panel order from step to step: see pk_gemm_dir
        pk_gemm_dir(B, H, h_prev, H, W_pk, z_t, G, 4 * u0, 4 * (u0 + uk), True, t & 1)
    else:
        gemm(False, True, B, 4 * uk, H, <floating>1, h_prev, H,
             Whh_p + <Py_ssize_t>4 * u0 * H, H, <floating>1, z_t + 4 * u0, G)
    _forward_cells(B, H, u0, uk, 4 * u0, uk, t, T, c_prev, bias_p, z_t, c_t, h_t, h_n, c_n,
                   lengths)


cdef inline void _forward_cells(int B, int H, int u0, int uk, int zo, int gs,
                                Py_ssize_t t, int T, const floating* c_prev,
                                const floating* bias_p, floating* z_t, floating* c_t,
                                floating* h_t, floating* h_n, floating* c_n,
                                const int64_t* lengths) noexcept nogil:
    """The gate pass of step t on units u0 .. u0+uk-1, once z_t holds the whole
    pre-activation less the bias (see _forward_block). Their gates are at z_t[b]
    + zo, as runs i, f, g, o, gs apart (as in bias_p + zo): zo = 4 u0, gs = uk
    for the block of u0 in the block layout; zo = u0, gs = H for units of a
    single block (U = H)."""
    cdef int G = 4 * H
    cdef int b
    cdef Py_ssize_t L
    cdef floating* cn
    cdef floating* hn
    for b in range(B):
        cn = c_t + <Py_ssize_t>b * H + u0
        hn = h_t + <Py_ssize_t>b * H + u0
        L = T if lengths == NULL else lengths[b]
        if t >= L:
            memset(cn, 0, uk * sizeof(floating))
            memset(hn, 0, uk * sizeof(floating))
            continue
        cell_forward(z_t + <Py_ssize_t>b * G + zo, bias_p + zo,
                     c_prev + <Py_ssize_t>b * H + u0, cn, hn, uk, gs)
        if t == L - 1:
            memcpy(h_n + <Py_ssize_t>b * H + u0, hn, uk * sizeof(floating))
            memcpy(c_n + <Py_ssize_t>b * H + u0, cn, uk * sizeof(floating))


cdef inline void _one_row_step(Py_ssize_t t, int part, int T, int I, int H,
                               const floating* x, const floating* Xpk, const floating* Wpk,
                               floating* S, const floating* bias_p, floating* z, int nz,
                               floating* cs, int n_slots, floating* out, floating* h_n,
                               floating* c_n, const floating* h0, const floating* c0,
                               const int64_t* lengths, bint first) noexcept nogil:
    """Step t of _forward_one_row: all of it (part = -1), or the half of its units
    numbered ``part`` (0: the first H/2, 1: the rest; see _split_one_row), with the
    same half of the side product's columns. S: this thread's side operand (packed
    here at the first step of each chunk)."""
    cdef int G = 4 * H
    cdef int R = SK_PK_SIDE_ROWS
    cdef int nv = <int>((G * sizeof(floating) + SK_PK_VBYTES - 1) // SK_PK_VBYTES)  # vector columns
    cdef int j = <int>(t % R)
    cdef Py_ssize_t r0 = t - j + R                              # the next chunk's first step
    cdef int m2 = 0 if first or r0 >= T else <int>min(<Py_ssize_t>R, T - r0)
    cdef int hg = 0, u0 = 0, uk = H         # panels in half a gate (0: all), units
    if part >= 0:
        hg = _half_gate_panels(H, sizeof(floating))
        nv = nv // 2                        # the half's columns, numbered from 0
        u0 = part * (H // 2)
        uk = H // 2
    if j == 0 and m2 > 0:
        pk_pack_side(m2, I, x + r0 * I, I, S)
    cdef const floating* h_prev = h0 if t == 0 else out + (t - 1) * H
    cdef const floating* c_prev = c0 if t == 0 else cs + ((t - 1) % n_slots) * H
    pk_gemv_side(H, h_prev, Wpk, G, z + (t % nz) * G, True, t & 1, False, hg,
                 max(part, 0), I, S, Xpk, G, z + (r0 % nz) * G, G, m2,
                 <long long>(j * nv // R) * max(I, 1), <long long>((j + 1) * nv // R) * max(I, 1))
    _forward_cells(1, H, u0, uk, u0, H, t, T, c_prev, bias_p, z + (t % nz) * G,
                   cs + (t % n_slots) * H, out + t * H, h_n, c_n, lengths)


cdef inline int _half_gate_panels(int H, size_t elsize) noexcept nogil:
    """Panels (4 vectors of columns) in half of a gate's H columns; 0 where
    that is not whole panels."""
    cdef int nr = 4 * (SK_PK_VBYTES // <int>elsize)
    return H // (2 * nr) if H % (2 * nr) == 0 else 0


cdef inline bint _split_one_row(int H, size_t elsize, int n_threads) noexcept nogil:
    """Do the batch-1 steps split between two threads? Where there are two and
    half of each gate is whole panels (with AVX-512: H a multiple of 128 in
    float32, of 64 in float64): each thread then reads half of W_hh^T, all four gates of half of
    the units, and runs their gate pass."""
    return n_threads > 1 and _half_gate_panels(H, elsize) > 0


# A split step pays only while handing each step across is quick, and a spinning
# wait for a thread that another process has pushed off its core lasts a
# scheduler time slice. So the lead times its waits for the helper over the split
# chunks of R steps (the first one excepted: the helper's caches are cold) and
# goes back to running the steps alone, from the next chunk on, once they exceed
# MAX_WAIT times the rest of their time. Whether and when the steps split never
# changes the results, only who computes them (docs/benchmarks.md: the
# measurements behind MAX_WAIT and MAX_SLOWER).
cdef double MAX_WAIT = 0.5
# The waits do not show every slow split: the split steps themselves may run
# slow with short waits. So the lead also compares the split chunks' time with
# steps run alone, and goes on alone once they take over MAX_SLOWER times that.
# The time alone is measured on the first chunk of a call (run alone for that,
# its first SOLO_FROM steps not timed: caches still cold) where no figure for the
# same sizes is at hand or it is SOLO_CALLS calls old; one figure for the
# forward, one for the backward (_solo_get, _solo_put).
cdef double MAX_SLOWER = 0.85
cdef enum:
    SOLO_CALLS = 32
    SOLO_FROM = 2
# Where a call did not split (its helper came too late) or went back to one thread,
# the next _skip calls run alone without a parallel region (whose start and end
# wait for a sleeping core), _skip doubling from
# 1 to 64 while calls fail; a call that splits to its end sets it back to 0.
cdef int _skip = 0
cdef int _backoff = 0
# For tests: the lead splits no step before _join_at, and there waits up to
# _join_spins looks for the helper, so that the split surely runs from that step
# (the defaults 0, 0: from the first chunk boundary the helper is there, no wait);
# _max_wait replaces MAX_WAIT; _use_backoff False turns the back-off off.
cdef long long _join_spins = 0
cdef Py_ssize_t _join_at = 0
cdef double _max_wait = MAX_WAIT
cdef bint _use_backoff = True
# _max_slower replaces MAX_SLOWER; None (inf here) turns that rule off, and with
# it the chunk run alone to measure.
cdef double _max_slower = MAX_SLOWER


cdef struct SoloRef:
    # seconds per step run alone (0: none yet) for the sizes (H, I, itemsize) and
    # variant (the forward: whether the projection ran first), and the calls
    # since it was measured
    int H, n_in, size, variant, age
    double per_step

cdef SoloRef _solo[2]                   # 0: forward, 1: backward


cdef double _solo_get(int kind, int H, int I, int size, int variant):
    """The time per step alone of the forward (kind 0) or backward (1) at these
    sizes, for _split_lead: 0 where it is to measure it (none yet, or too old),
    -1 where MAX_SLOWER is off. Called with the GIL held, once per call that
    may split; the call hands back what it measured (_solo_put)."""
    cdef SoloRef* r = &_solo[kind]
    if _max_slower == INFINITY:
        return -1
    r.age += 1
    if (r.H != H or r.n_in != I or r.size != size or r.variant != variant
            or r.age > SOLO_CALLS):
        r.H, r.n_in, r.size, r.variant, r.age, r.per_step = H, I, size, variant, 0, 0
    return r.per_step


cdef void _solo_put(int kind, int H, int I, int size, int variant, double per_step):
    """Keep a time measured by _split_lead, unless another call (another Python
    thread) has since claimed the figure for other sizes. With the GIL held."""
    cdef SoloRef* r = &_solo[kind]
    if (per_step > 0 and r.per_step == 0 and r.H == H and r.n_in == I
            and r.size == size and r.variant == variant):
        r.per_step = per_step


def wait_for_helper(long long spins, Py_ssize_t at_step=0, double max_wait=MAX_WAIT,
                    bint backoff=True, max_slower=MAX_SLOWER):
    """Make the batch-1 steps on two threads split no step before ``at_step``,
    wait there up to ``spins`` looks for the second thread, stop splitting once
    its waits exceed ``max_wait`` times its work over the split chunks (but the
    first) or they take over ``max_slower`` times as long as alone (None: never,
    and no chunk run alone to measure that), and back off after
    a call that did not split to its end if ``backoff`` (for tests; the defaults
    are the kernel's own: no wait, MAX_WAIT, MAX_SLOWER, back-off). Clears the
    back-off and the times measured alone."""
    global _join_spins, _join_at, _max_wait, _use_backoff, _skip, _backoff, _max_slower
    _skip = _backoff = 0
    _join_spins = spins
    _join_at = at_step
    _max_wait = max_wait
    _use_backoff = backoff
    _max_slower = INFINITY if max_slower is None else max_slower
    for kind in range(2):
        _solo[kind].per_step = 0


cdef bint _may_split(bint eligible):
    """Split this call's steps, if eligible? Not while the back-off says to run
    alone (a call it makes alone counts down). Called with the GIL held."""
    global _skip
    if eligible and _skip > 0 and _use_backoff:
        _skip -= 1
        return False
    return eligible


cdef void _note_split(bint ran_split):
    """After a call that tried to split: the back-off is cleared if its steps ran
    split to their end, else doubled (1 .. 64). Called with the GIL held."""
    global _skip, _backoff
    if not _use_backoff:
        return
    if ran_split:
        _backoff = 0
    else:
        _backoff = min(max(2 * _backoff, 1), 64)
        _skip = _backoff


def backoff_state():
    """(calls left to run alone, current back-off length), for tests."""
    return _skip, _backoff


# The flags of a split step (_sync.h): the helper is here; the step from which the
# two split (T: never); the step from which the lead runs alone again (T: none);
# the last step each has finished; all steps done (1); the next job of the tail;
# who prepares the helper's half (_fwd_prep: PREP_*).
cdef enum:
    FLAG_HERE = 0
    FLAG_START = 1
    FLAG_STOP = 2
    FLAG_LEAD = 3
    FLAG_HELP = 4
    FLAG_DONE = 5
    FLAG_JOB = 6
    FLAG_PREP = 7
    N_FLAGS = 8
    PREP_OPEN = 0
    PREP_HELPER = 1
    PREP_LEAD = 2
    PREP_DONE = 3


cdef bint _ran_split(sk_flag* fl, Py_ssize_t n) noexcept nogil:
    """Did the n steps of a _split_run split and run split to their end?"""
    return sk_flag_get(&fl[FLAG_START]) < n and sk_flag_get(&fl[FLAG_STOP]) >= n


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + 1e-9 * ts.tv_nsec


# A batch-1 step for the protocol below: step s of a sequence of them, all of it
# (part = -1) or one half of its units (part 0 or 1); ctx holds the arguments.
# s = -1: what the calling thread does first (while the helper wakes).
ctypedef void (*step_fn)(void* ctx, Py_ssize_t s, int part) noexcept nogil
# Work after the steps that both threads share by taking numbered jobs from the
# counter ``jobs`` (sk_flag_take) until none is left; who: 0 the calling thread,
# 1 the helper (e.g. for its own scratch).
ctypedef void (*tail_fn)(void* ctx, sk_flag* jobs, int who) noexcept nogil


# Split steps start with both threads' halves of W_hh (and W_ih) packed, each
# half by the thread that reads it in the steps, wherever the helper has come by
# then. The weights are packed anew every call, into the memory of the last one:
# packed by the lead, the lines the helper had read were first taken from its
# cache, then sent back to it in the steps. (A helper that has claimed its half
# and then loses its core holds the calling thread up until it gets one back.) Measured, (1,100,128,128) float32
# on 2 threads, in tight loops: the forward's kernel 253 -> 218 us a call (its
# first chunk of split steps had taken 3.5 us a step against 1.9 later),
# forward+backward 0.73 -> 0.66 ms; float64 forward 0.94 -> 0.76 ms.
ctypedef void (*prep_fn)(void* ctx, int half) noexcept nogil

# For tests: who packs the helper's half (-1: whoever claims it first; 0: the
# lead, the helper claims nothing; 1: the helper, the lead waiting for its claim)
# and who did in the last split call (PREP_* of FLAG_PREP).
cdef int _prep_by = -1
cdef long long _last_prep = PREP_OPEN


def prep_by(int who):
    """Who packs the helper's half of the weights in split steps (for tests): -1
    whoever comes first (the kernel's own), 0 the calling thread, 1 the helper
    (not where the calling thread times its first chunk alone: it then packs all;
    see wait_for_helper's max_slower). Returns who did in the last split call: 0
    none, 1 the calling thread, 2 the helper."""
    global _prep_by
    last = {PREP_LEAD: 1, PREP_DONE: 2}.get(_last_prep, 0)
    _prep_by = who
    return last


cdef void _prep_lead(sk_flag* prep, void* ctx, prep_fn fn, bint alone) noexcept nogil:
    """The calling thread before the steps: its half, then the helper's unless the
    helper has claimed it (then it waits for its end); all of it where it runs the
    first steps alone to time them (``alone``: its weights then in its own caches)."""
    if alone and sk_flag_claim(prep, PREP_OPEN, PREP_LEAD):
        fn(ctx, 0)
        fn(ctx, 1)
        return
    fn(ctx, 0)
    if _prep_by == 1:
        sk_flag_wait_for(prep, PREP_HELPER, 10 ** 7)
    if sk_flag_claim(prep, PREP_OPEN, PREP_LEAD):
        fn(ctx, 1)
    else:
        sk_flag_wait(prep, PREP_DONE)


cdef void _prep_help(sk_flag* prep, void* ctx, prep_fn fn) noexcept nogil:
    """The helper, on arrival: its half, if the calling thread has not taken it."""
    if _prep_by != 0 and sk_flag_claim(prep, PREP_OPEN, PREP_HELPER):
        fn(ctx, 1)
        sk_flag_set(prep, PREP_DONE)


cdef void _split_lead(sk_flag* fl, void* ctx, step_fn step, Py_ssize_t n,
                      double* solo, prep_fn prep) noexcept nogil:
    """Steps 0 .. n-1 on the calling thread: alone until the helper (_split_help)
    has come, then, from the next chunk of R steps on, half of each, until handing
    them across costs too much (MAX_WAIT) or the split steps are not quicker than
    alone (MAX_SLOWER, against solo[0] seconds per step; solo NULL or solo[0] < 0:
    not judged; solo[0] = 0: the first chunk runs alone to measure it, into
    solo[0]); fl NULL: alone. Both are judged at the end of each chunk from the
    third split one on, over all split chunks but the first: one chunk is too
    short a sample (judged chunk by chunk, one slow chunk stopped a split that
    paid in half the calls of (1,1000,64,64) float64). Step s needs both halves
    of step s-1 and nothing later. fl[FLAG_START] and fl[FLAG_STOP] end holding
    the first step split and the first run alone again (n: none)."""
    cdef int R = SK_PK_SIDE_ROWS
    cdef Py_ssize_t s, split = -1, stop = n
    cdef double t_judged = 0, waited = 0, t0
    cdef bint measure = fl != NULL and solo != NULL and solo[0] == 0 and n > R
    cdef double t_alone = 0
    if prep != NULL:
        _prep_lead(&fl[FLAG_PREP], ctx, prep, measure)
    step(ctx, -1, -1)
    for s in range(n):
        if measure and s == SOLO_FROM:
            t_alone = _now()
        if measure and s == R:
            solo[0] = (_now() - t_alone) / (R - SOLO_FROM)
            measure = False
        if fl != NULL and split < 0 and s % R == 0 and s >= _join_at and not measure:
            if _join_spins > 0:
                sk_flag_wait_for(&fl[FLAG_HERE], 1, _join_spins)
            if sk_flag_get(&fl[FLAG_HERE]):
                split = s
                sk_flag_set(&fl[FLAG_START], s)    # publishes steps < s to the helper
        if split < 0 or s >= stop:
            step(ctx, s, -1)
            continue
        if s > split and sk_flag_get(&fl[FLAG_HELP]) < s - 1:
            t0 = _now()
            sk_flag_wait(&fl[FLAG_HELP], s - 1)    # the other half of step s-1
            waited += _now() - t0
        step(ctx, s, 0)
        if (s + 1) % R == 0 and s + 1 < n:        # the end of a chunk: go on split?
            t0 = _now()
            if s + 1 - split == R:                 # the first split chunk: not judged
                t_judged = t0
                waited = 0
            elif s + 1 - split >= 3 * R and (
                    waited > _max_wait * (t0 - t_judged - waited) or
                    solo != NULL and solo[0] > 0 and
                    t0 - t_judged > _max_slower * (s + 1 - split - R) * solo[0]):
                stop = s + 1
                sk_flag_set(&fl[FLAG_STOP], stop)  # before the helper may start step s+1
        sk_flag_set(&fl[FLAG_LEAD], s)
        if s + 1 == stop:
            sk_flag_wait(&fl[FLAG_HELP], s)        # its half of the last split step
    if fl != NULL and split < 0:
        sk_flag_set(&fl[FLAG_START], n)            # nothing left for a late helper


cdef bint _split_help(sk_flag* fl, void* ctx, step_fn step, Py_ssize_t n,
                      prep_fn prep) noexcept nogil:
    """The second thread: says it is here (and takes its half of prep if the lead
    has not), then runs half 1 of every step from the one _split_lead names (none
    if the lead finished first) until the one from which the lead runs alone
    again. Returns False if the lead went on alone before the end (its steps then
    still to come)."""
    sk_flag_set(&fl[FLAG_HERE], 1)
    if prep != NULL:
        _prep_help(&fl[FLAG_PREP], ctx, prep)
    sk_flag_wait(&fl[FLAG_START], 0)
    cdef Py_ssize_t s, s0 = sk_flag_get(&fl[FLAG_START])
    for s in range(s0, n):
        if s > s0:
            sk_flag_wait(&fl[FLAG_LEAD], s - 1)
            if sk_flag_get(&fl[FLAG_STOP]) <= s:
                return False
        step(ctx, s, 1)
        sk_flag_set(&fl[FLAG_HELP], s)
    return True


cdef void _split_run(sk_flag* fl, void* ctx, step_fn step, Py_ssize_t n,
                     tail_fn tail, double* solo, prep_fn prep) noexcept nogil:
    """Steps 0 .. n-1 on the calling thread and, if fl is not NULL, a second thread
    that joins when it comes (the flags start as _init_flags sets them); then, if
    tail is not NULL (only with fl), its jobs, shared by both: the helper starts
    on them once every step is done, unless the lead went on alone before the
    end (the split did not pay: the helper then leaves rather than wait
    through those steps). Which thread runs a job must not change its result.
    prep, if not NULL (only with fl): what precedes the steps, in two halves, the
    helper's run by the helper if it comes before the lead has done its own
    (_prep_lead). solo: as _split_lead's."""
    if fl == NULL:
        _split_lead(NULL, ctx, step, n, NULL, NULL)
        return
    with parallel(num_threads=2):
        if threadid() == 0:
            _split_lead(fl, ctx, step, n, solo, prep)
            if tail != NULL:
                sk_flag_set(&fl[FLAG_DONE], 1)
                tail(ctx, &fl[FLAG_JOB], 0)
        elif _split_help(fl, ctx, step, n, prep) and tail != NULL:
            sk_flag_wait(&fl[FLAG_DONE], 1)
            tail(ctx, &fl[FLAG_JOB], 1)


cdef void _init_flags(sk_flag* fl, Py_ssize_t n) noexcept nogil:
    cdef int i
    for i in range(N_FLAGS):
        sk_flag_set(&fl[i], n if i == FLAG_STOP else
                    0 if i == FLAG_HERE or i == FLAG_DONE or i == FLAG_JOB
                    or i == FLAG_PREP else -1)


cdef struct RowArgs:
    # the arguments of _one_row_step, for _fwd_row_step (pointers typed by is_double)
    bint is_double, first
    int T, n_in, H, nz, n_slots          # n_in: I (a C macro, from complex.h)
    const void* x
    const void* Xpk
    const void* Wpk
    void* S                              # the calling thread's side operand
    void* S_help                         # the helper's
    const void* bias_p
    void* z
    void* cs
    void* out
    void* h_n
    void* c_n
    const void* h0
    const void* c0
    const int64_t* lengths
    const void* W_hh                     # W_hh, W_ih to pack into Wpk, Xpk in the
    const void* W_ih                     # region (_fwd_prep), where prepped
    bint prepped


cdef void _pack_half(bint nt, int N, int K, const floating* W, Py_ssize_t ldw,
                     floating* P, int hg, int half) noexcept nogil:
    """The panels of half ``half`` (pk_gemv_side's: its groups of hg panels of the N
    columns) of a packed operand, written into P as the whole pack writes them
    (it packs each panel on its own): nt, pk_pack_nt(N, K, W, ldw, P) of W (N, K);
    else pk_pack_nn(K, N, W, ldw, P) of W (K, N). half -1: all of them."""
    cdef int nr = 4 * <int>(SK_PK_VBYTES // sizeof(floating))
    cdef int p, n
    if half < 0:
        if nt:
            pk_pack_nt(N, K, W, ldw, P)
        else:
            pk_pack_nn(K, N, W, ldw, P)
        return
    for p in range(half * hg, (N + nr - 1) // nr):
        if (p // hg) % 2 != half:
            continue
        n = min(nr, N - p * nr)
        if nt:
            pk_pack_nt(n, K, W + p * nr * ldw, ldw, P + <Py_ssize_t>p * nr * K)
        else:
            pk_pack_nn(K, n, W + p * nr, ldw, P + <Py_ssize_t>p * nr * K)


cdef void _fwd_prep(RowArgs* a, int half, const floating* typed) noexcept nogil:
    """Half ``half`` of what precedes split steps (_forward_one_row): W_hh's and
    W_ih's panels of that half packed into Wpk and Xpk, and those columns of the
    first chunk's projection (pk_gemm over any columns sums as over all; never
    where all of the projection runs first: forward() packs before the region
    there). ``typed`` (NULL) only selects the type."""
    cdef int G = 4 * a.H
    cdef int hg = _half_gate_panels(a.H, sizeof(floating))
    cdef int nr = 4 * <int>(SK_PK_VBYTES // sizeof(floating))
    cdef int g, n0
    _pack_half(True, G, a.H, <const floating*>a.W_hh, a.H, <floating*>a.Wpk, hg, half)
    _pack_half(True, G, a.n_in, <const floating*>a.W_ih, a.n_in, <floating*>a.Xpk, hg, half)
    for g in range(half, G // (hg * nr), 2):
        n0 = g * hg * nr
        pk_gemm(min(SK_PK_SIDE_ROWS, a.T), a.n_in, <const floating*>a.x, a.n_in,
                <const floating*>a.Xpk, <floating*>a.z, G, n0, n0 + hg * nr, False)


cdef void _fwd_row_prep(void* ctx, int half) noexcept nogil:
    cdef RowArgs* a = <RowArgs*>ctx
    if a.is_double:
        _fwd_prep(a, half, <const double*>NULL)
    else:
        _fwd_prep(a, half, <const float*>NULL)


cdef void _fwd_row_step(void* ctx, Py_ssize_t t, int part) noexcept nogil:
    cdef RowArgs* a = <RowArgs*>ctx
    cdef void* S = a.S_help if part == 1 else a.S
    cdef int R = SK_PK_SIDE_ROWS
    if t < 0:           # the first chunk's projection (unless all of it ran first)
        if a.first or a.prepped:
            return
        if a.is_double:
            pk_gemm(min(R, a.T), a.n_in, <const double*>a.x, a.n_in, <const double*>a.Xpk,
                    <double*>a.z, 4 * a.H, 0, 4 * a.H, False)
        else:
            pk_gemm(min(R, a.T), a.n_in, <const float*>a.x, a.n_in, <const float*>a.Xpk,
                    <float*>a.z, 4 * a.H, 0, 4 * a.H, False)
        return
    if a.is_double:
        _one_row_step(t, part, a.T, a.n_in, a.H, <const double*>a.x, <const double*>a.Xpk,
                      <const double*>a.Wpk, <double*>S, <const double*>a.bias_p,
                      <double*>a.z, a.nz, <double*>a.cs, a.n_slots, <double*>a.out,
                      <double*>a.h_n, <double*>a.c_n, <const double*>a.h0,
                      <const double*>a.c0, a.lengths, a.first)
    else:
        _one_row_step(t, part, a.T, a.n_in, a.H, <const float*>a.x, <const float*>a.Xpk,
                      <const float*>a.Wpk, <float*>S, <const float*>a.bias_p,
                      <float*>a.z, a.nz, <float*>a.cs, a.n_slots, <float*>a.out,
                      <float*>a.h_n, <float*>a.c_n, <const float*>a.h0,
                      <const float*>a.c0, a.lengths, a.first)


cdef void _forward_one_row(int T, int I, int H, const floating* x, const floating* Xpk,
                           const floating* Wpk, floating* S, const floating* bias_p,
                           floating* z, int nz, floating* cs, int n_slots, floating* out,
                           floating* h_n, floating* c_n, const floating* h0,
                           const floating* c0, const int64_t* lengths, int nt,
                           sk_flag* fl, double* solo, const floating* W_hh,
                           const floating* W_ih, bint prep) noexcept nogil:
    """The forward at batch 1 (one block, weights packed: _one_row). Each step's
    product h_{t-1} @ W_hh^T is bound by reading W_hh from L2 and leaves the FMA
    units mostly idle; the input projection is bound by the FMAs. So the steps run
    in chunks of R = SK_PK_SIDE_ROWS, and each step of a chunk computes, interleaved
    with its own product (pk_gemv_side), 1/R of the next chunk's projection. S
    (I x R scratch, two of them where the steps split) holds the next chunk's x
    rows; z has nz slots (T, or min(T, 2R) without a cache), step t in slot t % nz;
    the rest as in forward().
    Where a second thread can take half of a large projection (_project_first:
    measured (1,1000,256,64) forward 1.37 ms that way on 2 threads, 1.83 inside
    the steps), all of it runs first, in blocks of >= 2 rows shared between the
    threads (z then has T slots). Both ways each element of the projection is one
    k-ordered chain of FMAs from 0 (4-row tiles, or the side product's rows).
    On two threads (_split_one_row; fl: N_FLAGS flags, else NULL) the steps split
    in halves of the units (_split_run, as the backward's at batch 1), synchronised
    by flags (_sync.h), never by a barrier: the calling thread starts alone, and
    the second joins at the first chunk boundary after it has come, so a second
    core that is slow to wake delays nothing but the end of the region; and the
    calling thread goes
    back to running the steps alone where handing them across costs too much
    (MAX_WAIT) or the split steps are not quicker than alone (MAX_SLOWER; solo: the
    time per step alone, see _split_lead). A half step computes each of its
    elements exactly as the whole step does, so the results do not depend on the
    thread count. fl[FLAG_START] and fl[FLAG_STOP] end holding the first step
    split and the first run alone again (T: none)."""
    cdef int G = 4 * H
    cdef int R = SK_PK_SIDE_ROWS
    cdef int i
    cdef bint first = _project_first(T, I, H, nt)
    cdef Py_ssize_t n_rb = max(1, T // ROW_BLOCK)       # row blocks of >= 2 rows
    cdef Py_ssize_t rb0, rb1
    if first:
        for i in prange(n_rb, num_threads=nt, schedule='static'):
            rb0 = i * T // n_rb
            rb1 = (i + 1) * T // n_rb
            pk_gemm(<int>(rb1 - rb0), I, x + rb0 * I, I, Xpk, z + rb0 * G, G, 0, G, False)
    cdef RowArgs a = RowArgs(floating is double, first, T, I, H, nz, n_slots, x, Xpk, Wpk,
                             S, S + <Py_ssize_t>I * R, bias_p, z, cs, out, h_n, c_n, h0, c0,
                             lengths, W_hh, W_ih, prep)
    _split_run(fl, &a, _fwd_row_step, T, NULL, solo, _fwd_row_prep if prep else <prep_fn>NULL)


def forward(const floating[:, :, ::1] x,      # (T, B, I)
            const floating[:, ::1] h0,        # (B, H)
            const floating[:, ::1] c0,        # (B, H)
            const floating[:, ::1] W_ih,      # (4H, I)
            const floating[:, ::1] W_hh,      # (4H, H)
            const floating[::1] bias,         # (4H,) = b_ih + b_hh
            const int64_t[::1] lengths,       # (B,) or None
            const floating[:, ::1] Wih_p,     # (4H, I) OUT: W_ih in the block layout (*)
            const floating[:, ::1] Whh_p,     # (4H, H) OUT: W_hh in the block layout (*)
            floating[::1] bias_p,             # (4H,) scratch: bias in the block layout
            floating[:, :, ::1] z,            # (gate_slots(), B, 4H) OUT: gates, step t in slot t % len
            floating[:, :, ::1] cs,           # (T or 2, B, H) OUT: c_t (step t in slot t % len)
            floating[:, :, ::1] out,          # (T, B, H) OUT: every h_t (0 past a length)
            floating[:, ::1] h_n,             # (B, H) OUT: the state after each sequence's last step
            floating[:, ::1] c_n,             # (B, H) OUT: the cell after each sequence's last step
            int n_threads, int step_gemm):
    """LSTM forward over a whole sequence. T, B, H >= 1 (the wrapper handles empties).
    (*) Where unit_block(T, B, H) == H the block layout is the given one, and Wih_p,
    Whh_p may be W_ih, W_hh themselves: no copy (two 256 KiB copies, ~15 us a call,
    at H = I = 128 in float32).
    step_gemm: seqkern._step_gemm's AUTO, BLAS or PACKED. Returns (for tests) the
    first step split between two threads (_forward_one_row) and the first run
    alone again after it, each -1 for none."""
    global _last_prep
    _last_prep = PREP_OPEN
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = W_hh.shape[1]
    cdef int G = 4 * H
    cdef Py_ssize_t TB = <Py_ssize_t>T * B
    cdef Py_ssize_t step = <Py_ssize_t>B * H
    cdef Py_ssize_t zstep = <Py_ssize_t>B * G
    cdef int n_slots = cs.shape[0]
    cdef int nz = z.shape[0]
    cdef int Tc = _chunk_steps(B)
    cdef const int64_t* lens = NULL if lengths is None else &lengths[0]
    cdef floating* outp = &out[0, 0, 0]
    cdef floating* zp = &z[0, 0, 0]
    cdef floating* csp = &cs[0, 0, 0]
    cdef floating* hnp = &h_n[0, 0]
    cdef floating* cnp = &c_n[0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* h0p = &h0[0, 0]
    cdef const floating* c0p = &c0[0, 0]
    cdef floating* Wih = <floating*>&Wih_p[0, 0]
    cdef floating* Whh = <floating*>&Whh_p[0, 0]
    cdef floating* bp = &bias_p[0]
    cdef const floating* h_prev
    cdef const floating* c_prev
    cdef int U = _unit_block(T, B, H)
    cdef int n_units = n_blocks(H, U)
    cdef int n_rows = n_blocks(TB, ROW_BLOCK)
    cdef int i, blk, b
    cdef Py_ssize_t t
    cdef int nt = n_threads

    cdef floating* Wpk = NULL
    cdef floating* Xpk = NULL
    cdef floating* S = NULL
    cdef bint packed = packs(step_gemm, TB)
    cdef bint one_row = _one_row(T, B, H, step_gemm)
    cdef bint split = _may_split(splits_steps(T, B, H, sizeof(floating), step_gemm, nt))
    cdef int variant = _project_first(T, I, H, nt)
    # split steps: the packing (and the first projection) halves run in the region
    cdef bint prep = one_row and split and not variant
    cdef double solo_t = _solo_get(0, H, I, sizeof(floating), variant) if split else -1
    cdef bint ran_split = False
    cdef sk_flag* fl = NULL
    cdef Py_ssize_t split_at = -1, stop_at = -1
    try:
        t = 0
        h_prev = NULL
        c_prev = NULL
        if (Wih == &W_ih[0, 0] or Whh == &W_hh[0, 0]) and U != H:
            raise ValueError("Wih_p and Whh_p may be W_ih and W_hh only with one unit block")
        with nogil:
            if Wih != &W_ih[0, 0]:
                _repack_rows(&W_ih[0, 0], Wih, H, I, U)
            if Whh != &W_hh[0, 0]:
                _repack_rows(&W_hh[0, 0], Whh, H, H, U)
            _repack_rows(&bias[0], bp, H, 1, U)
            if prep:
                Wpk = <floating*>scratch_alloc(pk_size(Wpk, G, H) * sizeof(floating))
                Xpk = <floating*>scratch_alloc(pk_size(Xpk, G, I) * sizeof(floating))
            elif packed:
                Wpk = pk_alloc_nt(G, H, Whh)       # for h_prev @ Whh_p^T
                Xpk = pk_alloc_nt(G, I, Wih)       # for x @ Wih_p^T
            if one_row:
                S = <floating*>scratch_alloc(<size_t>I * SK_PK_SIDE_ROWS * (2 if split else 1)
                                             * sizeof(floating))
            if split:
                fl = <sk_flag*>scratch_alloc(N_FLAGS * 64)
                if fl != NULL:
                    _init_flags(fl, T)
        if (packed and (Wpk == NULL or Xpk == NULL) or one_row and S == NULL
                or split and fl == NULL):
            raise MemoryError()
        if nz != gate_slots(T, B, H, I, nz == T, step_gemm, nt):
            raise ValueError("z must have gate_slots() time slots")
        with nogil:
            if one_row:
                _forward_one_row(T, I, H, xp, Xpk, Wpk, S, bp, zp, nz, csp, n_slots, outp,
                                 hnp, cnp, h0p, c0p, lens, nt, fl, &solo_t, Whh, Wih, prep)
                if fl != NULL:
                    ran_split = _ran_split(fl, T)
                    if prep:
                        _last_prep = sk_flag_get(&fl[FLAG_PREP])
                    if sk_flag_get(&fl[FLAG_START]) < T:
                        split_at = sk_flag_get(&fl[FLAG_START])
                        stop_at = sk_flag_get(&fl[FLAG_STOP])
                        stop_at = -1 if stop_at >= T else stop_at
            elif n_units > 1:
                # The projection in chunks of Tc steps, each block its own columns,
                # then the steps; static schedules give each thread the same blocks.
                if nt > 1:
                    with parallel(num_threads=nt):
                        for t in range(T):
                            if t % Tc == 0:
                                for blk in prange(n_units, schedule='static'):
                                    _project_chunk(B, H, U, blk, I, t, min(t + Tc, T), xp,
                                                   Wih, Xpk, zp + (t % nz) * zstep)
                            h_prev = h0p if t == 0 else outp + (t - 1) * step
                            c_prev = c0p if t == 0 else csp + ((t - 1) % n_slots) * step
                            for blk in prange(n_units, schedule='static'):
                                _forward_block(B, H, U, blk, t, T, h_prev, c_prev, Whh, Wpk,
                                               bp, zp + (t % nz) * zstep,
                                               csp + (t % n_slots) * step,
                                               outp + t * step, hnp, cnp, lens)
                else:
                    for t in range(T):
                        if t % Tc == 0:
                            for blk in range(n_units):
                                _project_chunk(B, H, U, blk, I, t, min(t + Tc, T), xp,
                                               Wih, Xpk, zp + (t % nz) * zstep)
                        h_prev = h0p if t == 0 else outp + (t - 1) * step
                        c_prev = c0p if t == 0 else csp + ((t - 1) % n_slots) * step
                        for blk in range(n_units):
                            _forward_block(B, H, U, blk, t, T, h_prev, c_prev, Whh, Wpk, bp,
                                           zp + (t % nz) * zstep, csp + (t % n_slots) * step,
                                           outp + t * step, hnp, cnp, lens)
            else:
                # One block: the projection of every step first (row blocks shared
                # between the threads), then the steps on one thread.
                if nt > 1 and n_rows > 1 and TB * I * G >= PAR_MIN_GEMM:
                    for i in prange(n_rows, num_threads=nt, schedule='static'):
                        rows_times_wt(xp, Wih, Xpk, zp, <Py_ssize_t>i * ROW_BLOCK,
                                      min(<Py_ssize_t>(i + 1) * ROW_BLOCK, TB), I, G, False)
                else:
                    for i in range(n_rows):
                        rows_times_wt(xp, Wih, Xpk, zp, <Py_ssize_t>i * ROW_BLOCK,
                                      min(<Py_ssize_t>(i + 1) * ROW_BLOCK, TB), I, G, False)
                for t in range(T):
                    h_prev = h0p if t == 0 else outp + (t - 1) * step
                    c_prev = c0p if t == 0 else csp + ((t - 1) % n_slots) * step
                    _forward_block(B, H, U, 0, t, T, h_prev, c_prev, Whh, Wpk, bp,
                                   zp + t * zstep, csp + (t % n_slots) * step,
                                   outp + t * step, hnp, cnp, lens)

            # 3. Sequences of length 0 keep their initial state.
            if lens != NULL:
                for b in range(B):
                    if lens[b] == 0:
                        memcpy(hnp + <Py_ssize_t>b * H, h0p + <Py_ssize_t>b * H,
                               H * sizeof(floating))
                        memcpy(cnp + <Py_ssize_t>b * H, c0p + <Py_ssize_t>b * H,
                               H * sizeof(floating))
    finally:
        scratch_free(Wpk)
        scratch_free(Xpk)
        scratch_free(S)
        scratch_free(fl)
    if split:
        _note_split(ran_split)
        _solo_put(0, H, I, sizeof(floating), variant, solo_t)
    return split_at, stop_at


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------

cdef void _backward_units(int B, int H, int u0, int uk, int zo, int gs, Py_ssize_t t,
                          const floating* dz_next, const floating* Whh_p,
                          const floating* W_pk, int kh, Py_ssize_t w_slot,
                          floating* carry_h, floating* carry_c,
                          floating* dz_t,
                          const floating* d_out_t, const floating* z_t,
                          const floating* c_t, const floating* c_prev,
                          const int64_t* lengths) noexcept nogil:
    """One step back on units u0 .. u0+uk-1, whose gates in z_t and dz_t rows are
    at + zo as runs i, f, g, o, gs apart (the block of u0 in the block layout: zo =
    4 u0, gs = uk; half of a single block: zo = u0, gs = H).

    carry_h (B, H) is the gradient reaching h_t from later steps and from d_h_n;
    the rows that step t+1 consumed were zeroed, so adding dz_{t+1} @ W_hh (zero
    in rows that ended before t+1) completes it. carry_c (B, H) is the gradient
    reaching c_t. Then, if t >= 0, for rows still running at t: dz_t (B, 4H, block
    layout) is computed from the gate activations z_t, c_t and c_prev; carry_h of
    those rows is consumed (set to 0) and carry_c becomes the gradient of c_{t-1}.
    Rows already ended get dz_t = 0 and keep their carries.
    dz_next (B, 4H) or NULL (t = T-1), d_out_t (B, H) or NULL.
    W_pk: Whh_p packed for dz @ Whh_p, or NULL (OpenBLAS). If kh > 0 (B = 1), it
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
        gemm(False, False, B, uk, G, <floating>1, dz_next, G, Whh_p + u0, H,
             <floating>1, carry_h + u0, H)
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
                                 const floating* dz_next, const floating* Whh_p,
                                 const floating* W_pk, int kh, Py_ssize_t w_slot,
                                 floating* carry_h, floating* carry_c, floating* dz_t,
                                 const floating* d_out_t, const floating* z_t,
                                 const floating* c_t, const floating* c_prev,
                                 const int64_t* lengths) noexcept nogil:
    """_backward_units on the units of block k (block layout)."""
    cdef int u0 = k * U
    cdef int uk = min(U, H - u0)
    _backward_units(B, H, u0, uk, 4 * u0, uk, t, dz_next, Whh_p, W_pk, kh, w_slot, carry_h,
                    carry_c, dz_t, d_out_t, z_t, c_t, c_prev, lengths)


# The backward runs the time loop in chunks of Tc = max(1, BWD_CHUNK_ROWS // B)
# steps (R = Tc B rows), latest first. After each chunk its weight, bias and input
# gradients are added with GEMMs over the chunk's R rows, so dz needs R rows of
# scratch (not T B: 105 MB at (B,T,H) = (64,200,512) in float32, whose fresh pages
# cost ~0.1 s per call to fault in) and is still in cache when those GEMMs read it.
# Each gradient element is summed chunk by chunk, latest first, and within a
# chunk in K_BLOCK blocks of rows: an order fixed by T and B alone.

cdef struct BwdRowArgs:
    # the arguments of a batch-1 backward step (_bwd_row_step), over one chunk of
    # steps t0 .. t1-1, and of the chunk's gradient jobs (_row_job: R rows, the
    # rest as _chunk_grad_job's; at: each thread's scratch, at_size apart, also
    # its side operand; Wx: Wih_p packed for dz @ Wih_p); pointers typed by is_double
    bint is_double
    int T, H, Tc, kh
    Py_ssize_t t0, t1, kslot
    const void* Wx
    const void* Whh
    const void* Wpk
    void* carry_h
    void* carry_c
    void* dz
    const void* d_out
    const void* z
    const void* cs
    const void* c0
    const int64_t* lengths
    int n_jobs, n_w, n_c64, n_xc, R, n_in          # n_in: I (a C macro, from complex.h)
    Py_ssize_t xslot, hslot, at_size
    const void* xc
    const void* hc
    const void* Wih
    const void* Xc
    const void* Hc
    const void* WihK
    void* at
    void* dWih
    void* dWhh
    void* db
    void* dxc


cdef inline int _side_vcols(int N2, int hg, int part, size_t elsize) noexcept nogil:
    """Vector columns (SK_PK_VBYTES bytes) of the side product's N2 columns that part -1 (all;
    hg = 0) or the half ``part`` (its groups of hg panels) computes (pk_gemv_side)."""
    cdef int vl = <int>(SK_PK_VBYTES // elsize)
    cdef int nr = 4 * vl
    cdef int p, n = 0
    if part < 0 or hg == 0:
        return (N2 + vl - 1) // vl
    for p in range((N2 + nr - 1) // nr):
        if (p // hg) % 2 == part:
            n += (min(nr, N2 - p * nr) + vl - 1) // vl
    return n


cdef inline void _bwd_row_step_t(BwdRowArgs* a, Py_ssize_t s, int part,
                                 const floating* typed) noexcept nogil:
    """_bwd_row_step with a's pointers read as floating* (``typed``, NULL, only
    selects the type)."""
    cdef int R = SK_PK_SIDE_ROWS
    cdef Py_ssize_t t = a.t1 - 1 - s
    cdef int H = a.H, G = 4 * a.H, kh = a.kh, i, kb
    cdef int who = 1 if part == 1 else 0
    cdef int u0 = 0 if part < 0 else part * (H // 2)
    cdef int uk = H if part < 0 else H // 2
    cdef int hg = 0 if part < 0 else _half_gate_panels(H, sizeof(floating))
    cdef floating* S = <floating*>a.at + who * a.at_size     # the thread's side operand
    cdef floating* dz = <floating*>a.dz
    cdef const floating* dz_next = NULL if t == a.T - 1 else dz + ((t + 1) % a.Tc) * G
    cdef Py_ssize_t q = s // R - 1              # the group of steps whose dx is due
    cdef Py_ssize_t tq = a.t1 - R * (q + 1)     # its first step
    cdef int j = <int>(s % R)
    cdef long long total = 0, s0 = 0, s1 = 0, mid
    if q >= 0 and s < (a.t1 - a.t0) // R * R:   # in a whole group of R steps
        total = <long long>_side_vcols(a.n_in, hg, part, sizeof(floating)) * G
        s0 = j * total // R
        s1 = (j + 1) * total // R
        if j == 0:
            pk_pack_side(R, G, dz + (tq % a.Tc) * G, G, S)
    mid = (s0 + s1) // 2
    if dz_next != NULL or s1 > s0:
        # carry_h += dz_{t+1} @ W_hh in two halves of K, in an order alternating
        # with t (the half read last is then still partly in L1), each with half
        # of this step's share of the group's dx
        for i in range(2):
            kb = i ^ <int>(t & 1)
            pk_gemv_side(0 if dz_next == NULL else (G - kh if kb else kh),
                         dz_next + kb * kh if dz_next != NULL else NULL,
                         <const floating*>a.Wpk + kb * a.kslot, 0 if dz_next == NULL else H,
                         <floating*>a.carry_h,
                         True, False, True, hg, max(part, 0), G, S, <const floating*>a.Wx,
                         a.n_in, <floating*>a.dxc + (tq - a.t0) * a.n_in, a.n_in, R,
                         s0 if i == 0 else mid, mid if i == 0 else s1)
    _backward_units(1, H, u0, uk, u0, H, t, <const floating*>NULL,
                    <const floating*>a.Whh, <const floating*>a.Wpk, kh, a.kslot,
                    <floating*>a.carry_h, <floating*>a.carry_c, dz + (t % a.Tc) * G,
                    NULL if a.d_out == NULL else <const floating*>a.d_out + t * H,
                    <const floating*>a.z + t * G, <const floating*>a.cs + t * H,
                    <const floating*>a.c0 if t == 0 else <const floating*>a.cs + (t - 1) * H,
                    a.lengths)


cdef void _bwd_prep(BwdRowArgs* a, int half, const floating* typed) noexcept nogil:
    """Half ``half`` of the packed weights of split backward steps (as the forward's
    _fwd_prep): those panels of W_hh's two K halves in Wpk and of W_ih in Wx; half
    -1: all of them, for steps that do not split (B = 1 with several unit blocks
    included: Wx NULL there). ``typed`` (NULL) only selects
    the type."""
    cdef int G = 4 * a.H
    cdef int hg = _half_gate_panels(a.H, sizeof(floating))
    cdef const floating* W = <const floating*>a.Whh
    _pack_half(False, a.H, a.kh, W, a.H, <floating*>a.Wpk, hg, half)
    _pack_half(False, a.H, G - a.kh, W + <Py_ssize_t>a.kh * a.H, a.H,
               <floating*>a.Wpk + a.kslot, hg, half)
    if a.Wx != NULL:                    # (NULL where the steps leave dx to jobs)
        _pack_half(False, a.n_in, G, <const floating*>a.Wih, a.n_in, <floating*>a.Wx, hg,
                   half)


cdef void _bwd_row_prep(void* ctx, int half) noexcept nogil:
    cdef BwdRowArgs* a = <BwdRowArgs*>ctx
    if a.is_double:
        _bwd_prep(a, half, <const double*>NULL)
    else:
        _bwd_prep(a, half, <const float*>NULL)


cdef void _bwd_row_step(void* ctx, Py_ssize_t s, int part) noexcept nogil:
    """Step t = t1 - 1 - s back (_backward_units at batch 1, one block): all units
    (part -1), or half of them (part 0, 1) with their columns of dz_{t+1} @ W_hh,
    all of dz_{t+1} read (the protocol of _split_lead hands it across). The steps
    go in groups of R = SK_PK_SIDE_ROWS from t1 down; each step of a whole group
    q + 1 computes, interleaved with its product (pk_gemv_side, bound by reading
    W_hh while the FMA units idle), 1/R of the dx rows of group q (its dz
    complete, packed into the thread's S at the group's first step; part 0 or 1:
    the columns of its half), cut anywhere inside a column. The dx of the chunk's
    last whole group and of a partial one below it are left to _row_job.
    Measured, forward+backward in tight loops against dx in jobs after the steps:
    float32 on one thread (1,1000,128,128) 10.3 -> 9.5 ms, (1,1000,64,64) 2.68 ->
    2.57, (1,100,128,128) 1.03 -> 0.99; float64 (1,300,128,128) and float32
    (1,100,128,128) on 2 threads (split) even."""
    cdef BwdRowArgs* a = <BwdRowArgs*>ctx
    if s < 0:
        return
    if a.is_double:
        _bwd_row_step_t(a, s, part, <const double*>NULL)
    else:
        _bwd_row_step_t(a, s, part, <const float*>NULL)


cdef inline void _row_job_t(BwdRowArgs* a, int job, int who,
                            const floating* typed) noexcept nogil:
    """Job ``job`` of a batch-1 chunk's gradients on thread ``who``'s scratch (the
    pointers of ``a`` read as floating*; ``typed``, NULL, only selects the type):
    below n_w, _chunk_grad_job's weight gradients (one unit block: U = H); n_w,
    the dx rows the steps left (_bwd_row_step: the last whole group of R_SIDE
    rows and a partial one), summed as the steps sum the others."""
    cdef int R = SK_PK_SIDE_ROWS
    cdef int G = 4 * a.H
    cdef floating* at = <floating*>a.at + who * a.at_size    # the thread's scratch
    cdef int r0 = 0, m = a.R - max(a.R // R - 1, 0) * R   # rows r0 .. m - 1 from t0
    cdef int m2
    if job < a.n_w:
        _chunk_grad_job(job, a.n_w, a.n_c64, a.n_xc, a.H, a.R, 1, a.n_in, a.H,
                        <const floating*>a.dz, <const floating*>a.xc,
                        <const floating*>a.hc, <const floating*>a.Wih,
                        <const floating*>a.Xc, a.xslot, <const floating*>a.Hc, a.hslot,
                        <const floating*>a.WihK, at, <floating*>a.dWih,
                        <floating*>a.dWhh, <floating*>a.db, <floating*>a.dxc, a.t1 == a.T)
        return
    while r0 < m:
        m2 = min(R, m - r0)
        pk_pack_side(m2, G, <const floating*>a.dz + (a.t0 % a.Tc + r0) * G, G, at)
        pk_gemv_side(0, <const floating*>NULL, <const floating*>NULL, 0, <floating*>NULL,
                     True, False, False, 0, 0, G, at, <const floating*>a.Wx, a.n_in,
                     <floating*>a.dxc + <Py_ssize_t>r0 * a.n_in, a.n_in, m2, 0,
                     <long long>_side_vcols(a.n_in, 0, -1, sizeof(floating)) * G)
        r0 += R


cdef void _row_job(BwdRowArgs* a, int job, int who) noexcept nogil:
    if a.is_double:
        _row_job_t(a, job, who, <const double*>NULL)
    else:
        _row_job_t(a, job, who, <const float*>NULL)


# Jobs of _bwd_grad_tail run by each thread (0: the calling one), for tests.
cdef long long _tail_jobs[2]


def tail_jobs():
    """(jobs run by the calling thread, by the helper) in the batch-1 backward's
    shared gradient jobs since the last call (for tests); resets them."""
    counts = (_tail_jobs[0], _tail_jobs[1])
    _tail_jobs[0] = _tail_jobs[1] = 0
    return counts


cdef void _bwd_grad_tail(void* ctx, sk_flag* jobs, int who) noexcept nogil:
    """The gradient jobs of a batch-1 chunk (_row_job), taken from ``jobs`` by both
    threads once the chunk's steps are done."""
    cdef BwdRowArgs* a = <BwdRowArgs*>ctx
    cdef long long job
    while True:
        job = sk_flag_take(jobs)
        if job >= a.n_jobs:
            return
        _tail_jobs[who] += 1
        _row_job(a, <int>job, who)


def bwd_chunk_steps(int B):
    """Time steps per backward chunk: the (slots, B, 4H) dz scratch holds
    min(T, bwd_chunk_steps(B)) of them. At least 2: step t reads dz_{t+1} (all
    4H columns) while its blocks write dz_t, so the two need separate slots."""
    return max(2, BWD_CHUNK_ROWS // B)


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
    order fixed by K alone. The blocks keep each packed panel (K_BLOCK x 64
    floats, 64 KiB) in L2 while the 4-row tiles of A stream past it."""
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


cdef void _chunk_grad_job(int job, int n_w, int n_c64, int n_xc, int U, int R, int B,
                          int I, int H, const floating* dzc, const floating* xc,
                          const floating* hc, const floating* Wih_p,
                          const floating* Xc, Py_ssize_t xslot,
                          const floating* Hc, Py_ssize_t hslot,
                          const floating* WihK, floating* at,
                          floating* dWih, floating* dWhh, floating* dbp,
                          floating* dxc, bint first) noexcept nogil:
    """Job ``job`` of one chunk's gradients; jobs write disjoint elements.
    dzc (R, 4H): the chunk's dz (block layout); xc (R, I): its inputs; hc (R, H):
    the h_{t-1} of its steps; dxc (R, I): its rows of dx.
    [0, n_w): rows q H + [u0, u0 + 64) (gate q, 64 units in one unit block) of
      dW_ih += dz[:, cols]^T xc, dW_hh += dz[:, cols]^T hc and db += column sums
      (in row order); ``first`` (the first chunk the backward runs): dW_ih, dW_hh
      := instead of += (their memory need not be zeroed: the n_w jobs of a chunk
      cover every element). Packed (Xc not NULL): the columns are first transposed into
      at (64, R), the calling thread's scratch, and xc, hc come packed in Xc, Hc.
    [n_w, ...): 64 rows x 64 columns of dx := dz @ Wih_p (WihK: Wih_p packed in
      K_BLOCK-row blocks, or NULL for OpenBLAS), n_xc column blocks per row block
      (not on the batch-1 path, whose steps compute dx: _row_job)."""
    cdef int G = 4 * H
    cdef int q, u0, n, k, uk, col, r, j, c0, c1
    cdef Py_ssize_t s, s0, s1, r0, r1
    cdef const floating* row
    cdef floating* db
    if job < n_w:
        q = job // n_c64
        u0 = (job % n_c64) * UNIT_BLOCK
        n = min(u0 + UNIT_BLOCK, H) - u0
        k = u0 // U
        uk = min(U, H - k * U)
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
        # lines (64 scattered element stores per dz row were slower).
        for s0 in range(0, R, 16):
            s1 = min(s0 + 16, R)
            for j in range(n):
                for s in range(s0, s1):
                    at[j * R + s] = dzc[s * G + col + j]
        _gemm_kblocks(n, R, at, R, Xc, xslot, dWih + <Py_ssize_t>r * I, I, 0, I, not first)
        _gemm_kblocks(n, R, at, R, Hc, hslot, dWhh + <Py_ssize_t>r * H, H, 0, H, not first)
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
             Wih_p + c0, I, <floating>0, dxc + r0 * I + c0, I)


def backward(const floating[:, :, ::1] x,        # (T, B, I)  from the forward
             const floating[:, :, ::1] d_out,    # (T, B, H) or None
             const floating[:, ::1] d_h_n,       # (B, H) or None
             const floating[:, ::1] d_c_n,       # (B, H) or None
             const floating[:, ::1] h0,          # (B, H)
             const floating[:, ::1] c0,          # (B, H)
             const floating[:, :, ::1] out,      # (T, B, H)
             const floating[:, :, ::1] z,        # (T, B, 4H) gate activations
             const floating[:, :, ::1] cs,       # (T, B, H) cell states
             const floating[:, ::1] Wih_p,       # (4H, I) block layout
             const floating[:, ::1] Whh_p,       # (4H, H) block layout
             const int64_t[::1] lengths,         # (B,) or None
             floating[:, :, ::1] dz,             # (min(T, bwd_chunk_steps(B)), B, 4H) scratch
             floating[:, :, ::1] dx,             # (T, B, I) OUT
             floating[:, ::1] dh0,               # (B, H) OUT
             floating[:, ::1] dc0,               # (B, H) OUT
             floating[:, ::1] dW_ih,             # (4H, I) OUT (written: need not be zeroed)
             floating[:, ::1] dW_hh,             # (4H, H) OUT (written: need not be zeroed)
             floating[::1] db,                   # (4H,) OUT, zero on entry: gradient of either bias
             int n_threads, int step_gemm):
    """LSTM backward through time. T, B, H >= 1 (the wrapper handles empties).
    step_gemm: seqkern._step_gemm's AUTO, BLAS or PACKED.
    x comes first: Cython picks the fused type from the first argument, which
    must not be None."""
    global _last_prep
    _last_prep = PREP_OPEN
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = Whh_p.shape[1]
    cdef int G = 4 * H
    cdef Py_ssize_t step = <Py_ssize_t>B * H
    cdef Py_ssize_t zstep = <Py_ssize_t>B * G
    cdef const int64_t* lens = NULL if lengths is None else &lengths[0]
    cdef const floating* dop = NULL if d_out is None else &d_out[0, 0, 0]
    cdef const floating* zp = &z[0, 0, 0]
    cdef const floating* csp = &cs[0, 0, 0]
    cdef const floating* c0p = &c0[0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* outp = &out[0, 0, 0]
    cdef const floating* Whh = &Whh_p[0, 0]
    cdef const floating* Wih = &Wih_p[0, 0]
    cdef floating* dzp = &dz[0, 0, 0]
    cdef floating* dxp = &dx[0, 0, 0]
    cdef floating* dWih = &dW_ih[0, 0]
    cdef floating* dWhh = &dW_hh[0, 0]
    cdef floating* dbp = &db[0]
    cdef floating* carry_h = &dh0[0, 0]
    cdef floating* carry_c = &dc0[0, 0]
    cdef const floating* dz_next
    cdef const floating* do_t
    cdef const floating* c_prev
    cdef const floating* hc
    cdef int U = _unit_block(T, B, H)
    cdef int n_units = n_blocks(H, U)
    cdef int Tc = bwd_chunk_steps(B)
    cdef int n_chunks = n_blocks(T, Tc)
    cdef int R_max = min(T, Tc) * B
    cdef int n_c64 = n_blocks(H, UNIT_BLOCK)
    cdef int n_w = 4 * n_c64
    cdef int n_xc = n_blocks(I, DX_BLOCK)
    cdef int n_kb = n_blocks(R_max, K_BLOCK)
    cdef int blk, job, n_jobs, ch, R
    cdef Py_ssize_t t, t0, t1
    cdef int nt = n_threads
    if dz.shape[0] != min(T, Tc):
        raise ValueError("dz must have min(T, bwd_chunk_steps(B)) slots")

    if d_h_n is None:
        dh0[:, :] = 0
    else:
        dh0[:, :] = d_h_n
    if d_c_n is None:
        dc0[:, :] = 0
    else:
        dc0[:, :] = d_c_n

    cdef floating* Wpk = NULL
    cdef floating* WihK = NULL
    # Packed path: a chunk's x and h_{t-1} rows packed in K_BLOCK-row blocks (Xc,
    # Hc: xslot, hslot elements per block; Wih_p's blocks in WihK are xslot too),
    # 64 x R_max scratch per thread (at).
    cdef floating* Xc = NULL
    cdef floating* Hc = NULL
    cdef floating* at = NULL
    cdef Py_ssize_t xslot = pk_size(Xc, I, K_BLOCK)
    cdef Py_ssize_t hslot = pk_size(Xc, H, K_BLOCK)
    # B = 1: the step's dz @ W_hh in two halves of K = 4H (see _backward_block)
    cdef int kh = (G + 1) // 2 if B == 1 else 0
    cdef Py_ssize_t kslot = pk_size(Xc, H, kh)
    cdef Py_ssize_t at_size = <Py_ssize_t>UNIT_BLOCK * R_max
    cdef int n_at = nt if nt > 1 else 1
    # B = 1, one block, packed: the steps compute dx as they go (_bwd_row_step),
    # with Wih_p packed whole (Wx, in place of WihK) and each thread's side operand
    # in its `at` scratch (R_SIDE x 4H; the jobs that use `at` come after the steps)
    cdef bint row = B == 1 and n_units == 1 and kh > 0 and interleaves(step_gemm, <Py_ssize_t>T)
    cdef floating* Wx = NULL
    if row:
        at_size = max(at_size, <Py_ssize_t>SK_PK_SIDE_ROWS * G)
        n_at = max(n_at, 2)
    # The h_{t-1} rows of the first chunk: h0, then out[0 : Tc-1].
    cdef floating* hs = <floating*>scratch_alloc(<Py_ssize_t>R_max * H * sizeof(floating))
    cdef bint ok = hs != NULL
    if ok and packs(step_gemm, <Py_ssize_t>T * B):
        if kh > 0:                                 # for dz @ Whh_p, in two halves
            Wpk = <floating*>scratch_alloc(2 * kslot * sizeof(floating))   # packed below
        else:
            Wpk = pk_alloc_nn(G, H, Whh)           # for dz @ Whh_p
        if row:                                    # for the steps' dz @ Wih_p
            Wx = <floating*>scratch_alloc(pk_size(Wx, I, G) * sizeof(floating))
        else:
            WihK = <floating*>scratch_alloc(n_blocks(G, K_BLOCK) * xslot * sizeof(floating))
        Xc = <floating*>scratch_alloc(n_kb * xslot * sizeof(floating))
        Hc = <floating*>scratch_alloc(n_kb * hslot * sizeof(floating))
        at = <floating*>scratch_alloc(n_at * at_size * sizeof(floating))
        ok = (Wpk != NULL and (Wx != NULL if row else WihK != NULL) and Xc != NULL
              and Hc != NULL and at != NULL)
    row = row and ok
    # and each step split in halves of the units between two threads, as the
    # forward's (_forward_one_row, _split_lead)
    cdef bint split = _may_split(row and _split_one_row(H, sizeof(floating), nt))
    cdef double solo_t = _solo_get(1, H, I, sizeof(floating), 0) if split else -1
    cdef sk_flag* fl = NULL
    cdef bint split_all = True                     # every chunk split to its end
    cdef BwdRowArgs args = BwdRowArgs(floating is double, T, H, Tc, kh, 0, 0, kslot, Wx,
                                      Whh, Wpk,
                                      carry_h, carry_c, dzp, dop, zp, csp, c0p, lens,
                                      0, n_w, n_c64, n_xc, 0, I, xslot, hslot, at_size,
                                      NULL, NULL, Wih, Xc, Hc, WihK, at, dWih, dWhh, dbp,
                                      NULL)
    if split:
        fl = <sk_flag*>scratch_alloc(N_FLAGS * 64)
        ok = ok and fl != NULL
    try:
        if not ok:
            raise MemoryError()
        t = 0
        dz_next = NULL
        do_t = NULL
        c_prev = NULL
        with nogil:
            if kh > 0 and Wpk != NULL and not split:   # (split: in the first region)
                _bwd_row_prep(&args, -1)
            if WihK != NULL:
                _pack_kblocks(Wih, G, I, WihK, xslot)      # for dz @ Wih_p
            for ch in range(n_chunks - 1, -1, -1):
                t0 = <Py_ssize_t>ch * Tc
                t1 = min(t0 + Tc, <Py_ssize_t>T)
                R = <int>((t1 - t0) * B)
                if row:
                    # The chunk's steps (with most of its dx), then its weight
                    # gradients and the rest of dx (_row_job), its x and h_{t-1}
                    # rows packed first. Where the steps split, the two threads
                    # share those jobs (no parallel region of its own to wake a
                    # core for).
                    args.hc = _chunk_rows(t0, R, B, I, H, xp, &h0[0, 0], outp, hs, Xc,
                                          xslot, Hc, hslot)
                    args.xc = xp + t0 * B * I
                    args.dxc = dxp + t0 * B * I
                    args.R = R
                    args.n_jobs = n_jobs = n_w + 1
                    args.t0 = t0
                    args.t1 = t1
                    if split:
                        _init_flags(fl, t1 - t0)
                        # the packing in the first chunk's region (_bwd_prep)
                        _split_run(fl, &args, _bwd_row_step, t1 - t0, _bwd_grad_tail,
                                   &solo_t, _bwd_row_prep if ch == n_chunks - 1
                                   else <prep_fn>NULL)
                        if ch == n_chunks - 1:
                            _last_prep = sk_flag_get(&fl[FLAG_PREP])
                        split_all = split_all and _ran_split(fl, t1 - t0)
                    else:
                        _split_run(NULL, &args, _bwd_row_step, t1 - t0, NULL, NULL, NULL)
                        if nt > 1 and <Py_ssize_t>R * G * (2 * I + H) >= PAR_MIN_GEMM:
                            for job in prange(n_jobs, num_threads=nt, schedule='dynamic'):
                                _row_job(&args, job, threadid())
                        else:
                            for job in range(n_jobs):
                                _row_job(&args, job, 0)
                    continue
                # 1. Through the chunk's steps, latest first (dz_t in slot t % Tc).
                if nt > 1 and n_units > 1:
                    with parallel(num_threads=nt):
                        for t in range(t1 - 1, t0 - 1, -1):
                            dz_next = NULL if t == T - 1 else dzp + ((t + 1) % Tc) * zstep
                            do_t = NULL if dop == NULL else dop + t * step
                            c_prev = c0p if t == 0 else csp + (t - 1) * step
                            for blk in prange(n_units, schedule='static'):
                                _backward_block(B, H, U, blk, t, dz_next, Whh, Wpk, kh, kslot,
                                                carry_h, carry_c, dzp + (t % Tc) * zstep, do_t,
                                                zp + t * zstep, csp + t * step, c_prev, lens)
                else:
                    for t in range(t1 - 1, t0 - 1, -1):
                        dz_next = NULL if t == T - 1 else dzp + ((t + 1) % Tc) * zstep
                        do_t = NULL if dop == NULL else dop + t * step
                        c_prev = c0p if t == 0 else csp + (t - 1) * step
                        for blk in range(n_units):
                            _backward_block(B, H, U, blk, t, dz_next, Whh, Wpk, kh, kslot,
                                            carry_h, carry_c, dzp + (t % Tc) * zstep, do_t,
                                            zp + t * zstep, csp + t * step, c_prev, lens)

                # 2. The chunk's weight, bias and input gradients.
                n_jobs = n_w + n_blocks(R, DX_BLOCK) * n_xc
                hc = _chunk_rows(t0, R, B, I, H, xp, &h0[0, 0], outp, hs, Xc, xslot, Hc,
                                 hslot)
                if nt > 1 and <Py_ssize_t>R * G * (2 * I + H) >= PAR_MIN_GEMM:
                    for job in prange(n_jobs, num_threads=nt, schedule='dynamic'):
                        _chunk_grad_job(job, n_w, n_c64, n_xc, U, R, B, I, H,
                                        dzp, xp + t0 * B * I, hc, Wih, Xc, xslot, Hc, hslot,
                                        WihK,
                                        NULL if at == NULL else at + threadid() * at_size,
                                        dWih, dWhh, dbp, dxp + t0 * B * I, t1 == T)
                else:
                    for job in range(n_jobs):
                        _chunk_grad_job(job, n_w, n_c64, n_xc, U, R, B, I, H,
                                        dzp, xp + t0 * B * I, hc, Wih, Xc, xslot, Hc, hslot,
                                        WihK, at, dWih, dWhh, dbp, dxp + t0 * B * I, t1 == T)

            # 3. dh0 = carry_h + dz_0 @ W_hh.
            if nt > 1 and n_units > 1:
                for blk in prange(n_units, num_threads=nt, schedule='static'):
                    _backward_block(B, H, U, blk, -1, dzp, Whh, Wpk, kh, kslot, carry_h,
                                    carry_c, NULL, NULL, NULL, NULL, NULL, lens)
            else:
                for blk in range(n_units):
                    _backward_block(B, H, U, blk, -1, dzp, Whh, Wpk, kh, kslot, carry_h,
                                    carry_c, NULL, NULL, NULL, NULL, NULL, lens)
    finally:
        scratch_free(hs)
        scratch_free(Wpk)
        scratch_free(Wx)
        scratch_free(WihK)
        scratch_free(Xc)
        scratch_free(Hc)
        scratch_free(at)
        scratch_free(fl)
    if split:
        _note_split(split_all)
        _solo_put(1, H, I, sizeof(floating), 0, solo_t)
