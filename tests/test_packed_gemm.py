"""The packed-weight GEMM of the recurrent kernels (_packed_gemm.h) against NumPy.
The kernels with each choice of weight product: test_contract.py's
test_each_step_product."""

import numpy as np
import pytest

from seqkern._dispatch import kernel_module

pg = kernel_module("_packed_gemm")

from helpers import DTYPES, assert_close

# M: 1 (its own micro-kernel), multiples of 4 and remainders; N: below, at and
# across the panel width (4 vectors: 64 floats / 32 doubles with AVX-512); K: 0, 1, odd.
MS = [1, 2, 3, 4, 5, 9]
NS = [1, 7, 32, 64, 65, 130]
KS = [0, 1, 3, 17, 64]


def operands(rng, M, N, K, dtype, transposed):
    A = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((N, K) if transposed else (K, N)).astype(dtype)
    Wmat = W.T if transposed else W          # the (K, N) right-hand side
    return A, W, Wmat


def expected(A, Wmat, C0, accumulate):
    prod = A.astype(np.float64) @ Wmat.astype(np.float64)
    return C0.astype(np.float64) + prod if accumulate else prod


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("N", NS)
@pytest.mark.parametrize("K", KS)
def test_matches_numpy(rng, dtype, transposed, M, N, K):
    A, W, Wmat = operands(rng, M, N, K, dtype, transposed)
    P = pg.pack(W, transposed)
    for accumulate in (True, False):
        C0 = rng.standard_normal((M, N)).astype(dtype)
        C = pg.gemm(A, P, C0.copy(), accumulate=accumulate)
        assert_close(C, expected(A, Wmat, C0, accumulate), dtype, f"C acc={accumulate}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("N,K", [(64, 16), (128, 48), (130, 37), (17, 70), (200, 3), (5, 0)])
def test_packed_layout(rng, dtype, transposed, N, K):
    """P[p][k][j] = W[k][p NR + j] (W as the (K, N) operand), zero past N: written
    out in NumPy, so that the tile transposes of the packer (whole 16 x 16 float
    or 8 x 8 double with AVX-512, then ragged edges) are checked element by element."""
    _, W, Wmat = operands(rng, 1, N, K, dtype, transposed)
    NR = 4 * pg.VBYTES // np.dtype(dtype).itemsize
    n_panels = -(-N // NR)
    padded = np.zeros((K, n_panels * NR), dtype)
    padded[:, :N] = Wmat
    want = padded.reshape(K, n_panels, NR).transpose(1, 0, 2).ravel()
    P = pg.pack(W, transposed)
    assert P.size >= want.size
    np.testing.assert_array_equal(P[:want.size], want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("M,N,K", [(1, 130, 17), (5, 130, 33), (8, 200, 64), (3, 65, 0)])
def test_column_ranges_are_independent_and_bitwise_equal(rng, dtype, transposed, M, N, K):
    """Any split of the columns gives bitwise the full product, and nothing outside
    [n0, n1) is written."""
    A, W, Wmat = operands(rng, M, N, K, dtype, transposed)
    P = pg.pack(W, transposed)
    C0 = rng.standard_normal((M, N)).astype(dtype)
    full = pg.gemm(A, P, C0.copy())
    random_cuts = sorted({0, N, *rng.integers(0, N, 4)})
    for cuts in ([0, 1, N], [0, 16, 48, N], [0, 31, 64, 97, N], random_cuts):
        cuts = [c for c in cuts if c <= N]
        C = C0.copy()
        for n0, n1 in zip(cuts[:-1], cuts[1:]):
            before = C.copy()
            pg.gemm(A, P, C, n0, n1)
            outside = np.ones(N, bool)
            outside[n0:n1] = False
            np.testing.assert_array_equal(C[:, outside], before[:, outside])
        np.testing.assert_array_equal(C, full)
    assert_close(full, expected(A, Wmat, C0, True), dtype, "C")


@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_operands(rng, dtype):
    """A and C starting one element past an aligned address (still C-contiguous)."""
    M, N, K = 7, 70, 19
    A = np.empty(M * K + 1, dtype)[1:].reshape(M, K)
    A[...] = rng.standard_normal((M, K))
    C = np.empty(M * N + 1, dtype)[1:].reshape(M, N)
    C[...] = rng.standard_normal((M, N))
    W = rng.standard_normal((N, K)).astype(dtype)
    want = expected(A, W.T, C, True)
    pg.gemm(A, pg.pack(W, True), C, 3, N)
    assert_close(C[:, 3:], want[:, 3:], dtype, "C")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 6])
def test_nan_and_inf_propagate(rng, dtype, M):
    N, K = 70, 9
    A = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((N, K)).astype(dtype)
    A[0, 2] = np.nan               # row 0: all NaN
    W[5, 3] = np.inf               # column 5: +-Inf, or NaN where a row is NaN
    A[-1, 4] = 0.0
    W[9, 4] = np.inf               # 0 * Inf = NaN in the last row, column 9
    C = pg.gemm(A, pg.pack(W, True), np.zeros((M, N), dtype))
    with np.errstate(invalid="ignore"):
        want = A.astype(np.float64) @ W.T.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(C), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(C), np.isinf(want))
    assert np.isnan(C[0]).all() and np.isnan(C[-1, 9])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,N,K2,N2,m2", [
    (64, 256, 64, 256, None),  # the batch-1 LSTM step at H = I = 64 (None: SIDE_ROWS)
    (7, 13, 5, 37, 3),         # ragged panels and vector columns, few side rows
    (3, 200, 90, 70, 7),       # more side steps than row-product steps
    (40, 70, 1, 16, None),     # K2 = 1: a column ends at every side step
    (5, 70, 0, 20, 4),         # K2 = 0: the side columns are empty sums, 0
])
def test_gemv_side_matches_numpy(rng, dtype, K, N, K2, N2, m2):
    """The row product c (+)= a @ W in either panel order, and the interleaved side
    product written to exactly its vector columns [v0, v1) of C2."""
    m2 = m2 or pg.SIDE_ROWS
    vl = pg.VBYTES // np.dtype(dtype).itemsize
    n_vec = -(-N2 // vl)
    W = rng.standard_normal((K, N)).astype(dtype)
    W2 = rng.standard_normal((K2, N2)).astype(dtype)
    P, P2 = pg.pack(W, False), pg.pack(W2, False)
    a = rng.standard_normal(K).astype(dtype)
    A2 = rng.standard_normal((m2, K2)).astype(dtype)
    side = A2.astype(np.float64) @ W2.astype(np.float64)
    for v0, v1 in [(0, n_vec), (1, n_vec), (0, 1), (n_vec - 1, n_vec), (0, 0)]:
        for accumulate in (True, False):
            for reverse in (False, True):
                c0 = rng.standard_normal(N).astype(dtype)
                C2 = np.full((m2, N2), 7.0, dtype)
                c, C2 = pg.gemv_side(a, P, c0.copy(), A2, P2, C2, v0, v1, accumulate, reverse)
                want = a.astype(np.float64) @ W.astype(np.float64)
                assert_close(c, want + c0 if accumulate else want, dtype, "c")
                cols = np.zeros(N2, bool)
                cols[v0 * vl:v1 * vl] = True
                assert_close(C2[:, cols], side[:, cols], dtype, "C2")
                assert np.all(C2[:, ~cols] == 7.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K2,N2,m2", [(37, 70, 5), (256, 64, None), (9, 300, None)])
def test_gemv_side_cut_columns(rng, dtype, K2, N2, m2):
    """The side product's k-steps cut anywhere over several calls (a column cut
    keeps its partial sums in C2, ragged last column included) give bitwise the
    side product of one call: how the batch-1 LSTM backward spreads dx over the
    steps."""
    m2 = m2 or pg.SIDE_ROWS
    vl = pg.VBYTES // np.dtype(dtype).itemsize
    K, N = 8, 2 * 4 * vl
    W = rng.standard_normal((K, N)).astype(dtype)
    W2 = rng.standard_normal((K2, N2)).astype(dtype)
    P, P2 = pg.pack(W, False), pg.pack(W2, False)
    a = rng.standard_normal(K).astype(dtype)
    A2 = rng.standard_normal((m2, K2)).astype(dtype)
    n_vec = -(-N2 // vl)
    whole = pg.gemv_side(a, P, np.zeros(N, dtype), A2, P2, np.full((m2, N2), 7.0, dtype),
                         0, n_vec, False)[1]
    total = n_vec * K2
    for n_calls in (2, 5, 16, total):
        cuts = sorted({0, total} | set(rng.integers(0, total, n_calls - 1).tolist()))
        C2 = np.full((m2, N2), 7.0, dtype)
        for s0, s1 in zip(cuts[:-1], cuts[1:]):
            pg.gemv_side(a, P, np.zeros(N, dtype), A2, P2, C2, s0 // K2, s1 // K2, False,
                         k0=s0 % K2, k1=s1 % K2)
        np.testing.assert_array_equal(C2, whole)
    with pytest.raises(ValueError, match="k0, k1"):
        pg.gemv_side(a, P, np.zeros(N, dtype), A2, P2, C2, 0, 1, k0=K2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,N", [(256, 64), (7, 200), (129, 256)])
def test_gemv_side_pair_sums_as_gemm(rng, dtype, K, N):
    """pair: the row product sums even and odd k apart, as gemm() does at M = 1
    (bitwise, odd K too), with the side product interleaved as ever; without
    pair, one chain per element."""
    W = rng.standard_normal((K, N)).astype(dtype)
    P = pg.pack(W, False)
    a = rng.standard_normal(K).astype(dtype)
    A2 = rng.standard_normal((pg.SIDE_ROWS, 40)).astype(dtype)
    W2 = rng.standard_normal((40, 100)).astype(dtype)
    P2 = pg.pack(W2, False)
    c0 = rng.standard_normal(N).astype(dtype)
    want = pg.gemm(a[None], P, c0[None].copy())[0]
    c, C2 = pg.gemv_side(a, P, c0.copy(), A2, P2, np.zeros((pg.SIDE_ROWS, 100), dtype), 0, 1,
                         pair=True)
    vl = pg.VBYTES // np.dtype(dtype).itemsize
    np.testing.assert_array_equal(c, want)
    assert_close(C2[:, :vl], A2.astype(np.float64) @ W2[:, :vl].astype(np.float64), dtype,
                 "C2")
    single = pg.gemv_side(a, P, c0.copy(), A2, P2, np.zeros((pg.SIDE_ROWS, 100), dtype), 0, 1)[0]
    assert_close(single, want, dtype, "c")


def test_bad_arguments(rng):
    A = np.ones((2, 3), np.float32)
    P = pg.pack(np.ones((5, 3), np.float32), True)
    with pytest.raises(ValueError):
        pg.gemm(A, P, np.zeros((2, 5), np.float32), 3, 2)
    with pytest.raises(ValueError):
        pg.gemm(A, P[:10], np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError):
        pg.gemm(A, P, np.zeros((2, 5), np.float64))
