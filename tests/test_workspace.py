"""Memory reused between calls (seqkern._workspace): large arrays and the kernels'
scratch. A block goes back to the free list only when nothing refers to it any
more, and the next request that fits takes it."""

import gc
import subprocess
import sys

import numpy as np
import pytest

import seqkern
from seqkern import _workspace as ws
from seqkern import reference as ref

from helpers import assert_close

BIG = ws.MIN_BYTES // 4          # float32 elements in MIN_BYTES


@pytest.fixture(autouse=True)
def fresh_list():
    gc.collect()            # arrays of earlier tests in reference cycles
    ws.clear()
    old = ws.max_bytes(1 << 30)
    yield
    ws.max_bytes(old)
    ws.clear()


def test_empty_is_like_np_empty():
    for shape, aligned in [((3, BIG), False), ((7, 5), False), ((7, 5), True), ((0, 4), True)]:
        a = ws.empty(shape, np.float32, aligned)
        assert a.shape == shape and a.dtype == np.float32
        assert a.flags.c_contiguous and a.flags.writeable
        if a.size and (aligned or a.nbytes >= ws.MIN_BYTES):
            assert a.ctypes.data % 64 == 0
        a[...] = 2.5
        assert (a == 2.5).all()
    assert ws.empty((5,), np.float64).base is None       # small: NumPy's own


@pytest.mark.parametrize("dtype", [np.float32, "float64", ">f4", np.int16, "S5", np.complex64])
@pytest.mark.parametrize("shape, aligned", [((3, 4), False), ((3, 4), True), ((2, BIG), False)])
def test_empty_keeps_any_dtype(dtype, shape, aligned):
    """The fast path builds the array from a type number alone, which is the whole
    dtype only for native float32 and float64; any other dtype is kept whole."""
    a = ws.empty(shape, dtype, aligned)
    assert a.dtype == np.dtype(dtype) and a.shape == shape and a.flags.c_contiguous
    if aligned or a.nbytes >= ws.MIN_BYTES:
        assert a.ctypes.data % 64 == 0


def test_empty_rejects_bad_shapes():
    with pytest.raises(TypeError):
        ws.empty((2.5, 3), np.float32)
    with pytest.raises(ValueError):
        ws.empty((-1, 3), np.float32, True)
    assert ws.empty([np.int64(2), 3], np.float32).shape == (2, 3)


def test_block_reused_once_nothing_refers_to_it():
    a = ws.empty((4, BIG), np.float32)                    # 4 MIN_BYTES
    address = a.ctypes.data
    view = a[1, 10:20]
    del a
    assert ws.held() == (0, 0)                            # the view still uses it
    b = ws.empty((4, BIG), np.float32)
    assert b.ctypes.data != address
    del view
    assert ws.held() == (1, 4 * ws.MIN_BYTES)
    c = ws.empty((5, BIG), np.float32)                    # more bytes: too large
    d = ws.empty((3, BIG), np.float32)                    # under 0.8 of them: too small
    assert ws.held()[0] == 1 and address not in (c.ctypes.data, d.ctypes.data)
    e = ws.empty(16 * BIG // 5 + 4, np.float32)           # just over 0.8 of them: fits
    assert e.ctypes.data == address and ws.held() == (0, 0)
    del b, c, d, e


def test_free_list_limit_and_clear():
    ws.max_bytes(3 * ws.MIN_BYTES)
    arrays = [ws.empty((BIG * (i + 1),), np.float32) for i in range(3)]
    addresses = [a.ctypes.data for a in arrays]
    while arrays:                                         # freed first to last
        del arrays[0]
    # 1 + 2 blocks fit; the third (3 MIN_BYTES) pushes both out
    assert ws.held() == (1, 3 * ws.MIN_BYTES)
    assert ws.empty((3 * BIG,), np.float32).ctypes.data == addresses[2]
    assert ws.max_bytes(0) == 3 * ws.MIN_BYTES
    a = ws.empty((BIG,), np.float32)
    del a
    assert ws.held() == (0, 0)                            # limit 0 keeps nothing
    ws.max_bytes(1 << 30)
    a = ws.empty((BIG,), np.float32)
    del a
    assert ws.held()[0] == 1
    ws.clear()
    assert ws.held() == (0, 0)
    for bad in (-1, 2**64, 2**70):      # past size_t: was an OverflowError
        with pytest.raises(ValueError, match="limit must be a number of bytes"):
            ws.max_bytes(bad)
    assert ws.max_bytes() == 1 << 30
    assert ws.max_bytes(2**64 - 1) == 1 << 30 and ws.max_bytes() == 2**64 - 1
    for bad in (1.5, "2", True):
        with pytest.raises(TypeError, match="limit must be an integer"):
            ws.max_bytes(bad)


def test_public_names():
    assert seqkern.workspace_limit is ws.max_bytes and seqkern.free_workspace is ws.clear
    code = "import seqkern; print(seqkern.workspace_limit())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert int(out.stdout) == 1 << 30                     # the default in a fresh process


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_recurrent_calls_reuse_blocks(kind):
    """A forward+backward whose cache and gradients were dropped lends its blocks to
    the next; one whose cache lives keeps them: two interleaved calls get the
    same results as the reference."""
    rng = np.random.default_rng(0)
    T, B, I, H = 130, 32, 24, 256                   # (T, B, H) floats >= 4 MiB
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    fwd = getattr(seqkern, kind + "_forward")
    bwd = getattr(seqkern, kind + "_backward")
    W_ih = rng.standard_normal((G * H, I)).astype(np.float32) * 0.05
    W_hh = rng.standard_normal((G * H, H)).astype(np.float32) * 0.05
    xs = [rng.standard_normal((T, B, I)).astype(np.float32) for _ in range(2)]
    d_out = rng.standard_normal((T, B, H)).astype(np.float32)
    states = (None, None) if kind == "lstm" else (None,)

    def run(x):
        res = fwd(x, *states, W_ih, W_hh)
        return res[0], bwd(d_out, *(None,) * len(states), res[-1])

    out0, g0 = run(xs[0])
    del out0, g0
    held = ws.held()
    assert held[0] >= 1                             # the dropped call's blocks
    # two calls alive at once: the second must not take the first's blocks
    res = [fwd(x, *states, W_ih, W_hh) for x in xs]
    for x, r in zip(xs, res):
        g = bwd(d_out, *(None,) * len(states), r[-1])
        r_fwd = getattr(ref, kind + "_forward")(x.astype(np.float64), *states,
                                                 W_ih.astype(np.float64),
                                                 W_hh.astype(np.float64))
        r_g = getattr(ref, kind + "_backward")(d_out.astype(np.float64),
                                                *(None,) * len(states), r_fwd[-1])
        assert_close(r[0], r_fwd[0], np.float32, "out")
        for name in ("dW_hh", "dx"):   # sums over T B rows: errors scale with the largest
            want = getattr(r_g, name)
            np.testing.assert_allclose(getattr(g, name), want, rtol=2e-4,
                                       atol=1e-5 * np.abs(want).max(), err_msg=name)


def test_kernel_scratch_reused_between_calls():
    """The kernels' scratch of >= MIN_BYTES (here the weights packed for a
    call: 4H x (I + H) float64, 1 MiB) goes back to the free list after each call
    and serves the next, under the same limit as the arrays."""
    from seqkern._step_gemm import step_gemm

    args = [np.random.default_rng(1).standard_normal(s) * 0.1
            for s in ((100, 1, 128), (1, 128), (1, 128), (512, 128), (512, 128))]
    with seqkern.threads(1), step_gemm("packed"):     # AUTO packs on some ISAs only
        want = seqkern.lstm_forward(*args, return_cache=False)[0]
        n, held = ws.held()
        assert n >= 2 and held >= 2 * 512 * 128 * 8          # W_hh and W_ih packed
        np.testing.assert_array_equal(seqkern.lstm_forward(*args, return_cache=False)[0], want)
        n, held = ws.held()                                  # and the dropped outputs
        for _ in range(3):
            np.testing.assert_array_equal(seqkern.lstm_forward(*args, return_cache=False)[0],
                                          want)
            assert ws.held() == (n, held)                    # the same blocks again
        ws.max_bytes(0)
        assert ws.held() == (0, 0)
        np.testing.assert_array_equal(seqkern.lstm_forward(*args, return_cache=False)[0], want)
        assert ws.held() == (0, 0)                           # limit 0 keeps nothing


def test_scratch_shared_by_concurrent_calls():
    """Kernels running at once in several Python threads (without the GIL) take and
    give back scratch from the one free list, whose limit here forces blocks out
    while others come in: every result as computed alone."""
    import threading

    rng = np.random.default_rng(2)
    cases = []
    for T, B, I, H, dt in [(100, 1, 128, 128, np.float64), (60, 1, 64, 128, np.float32),
                           (20, 4, 70, 96, np.float32), (30, 1, 40, 64, np.float64)]:
        x = rng.standard_normal((T, B, I)).astype(dt)
        W = [(rng.standard_normal((4 * H, n)) * 0.1).astype(dt) for n in (I, H)]
        d_out = rng.standard_normal((T, B, H)).astype(dt)
        cases.append((x, W, d_out))

    def run(case):
        x, W, d_out = case
        out, _, _, cache = seqkern.lstm_forward(x, None, None, *W)
        return out, seqkern.lstm_backward(d_out, None, None, cache)

    want = [run(c) for c in cases]
    ws.max_bytes(3 << 20)
    errors = []

    def worker(i):
        try:
            for _ in range(8):
                out, g = run(cases[i])
                np.testing.assert_array_equal(out, want[i][0])
                for a, b in zip(g, want[i][1]):
                    if a is not None:
                        np.testing.assert_array_equal(a, b)
        except Exception as e:          # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
    with seqkern.threads(2):            # each call on 2 threads where OpenMP has them
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert ws.held()[1] <= 3 << 20


FAULTS_SCRIPT = """
import resource, sys
import numpy as np
import seqkern

def faults(fn):
    for _ in range(3):
        fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

rng = np.random.default_rng(3)
T, B, I, H = 100, 1, 128, 128
for kind in ("lstm", "gru", "rnn"):
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    W = [rng.standard_normal((G * H, n)) * 0.1 for n in (I, H)]
    x = rng.standard_normal((T, B, I))
    d_out = rng.standard_normal((T, B, H))
    states = (None, None) if kind == "lstm" else (None,)
    fwd = getattr(seqkern, kind + "_forward")
    bwd = getattr(seqkern, kind + "_backward")
    cache = fwd(x, *states, *W)[-1]
    print(kind, "forward", faults(lambda: fwd(x, *states, *W, return_cache=False)))
    print(kind, "backward", faults(lambda: bwd(d_out, *(None,) * len(states), cache)))
"""


def test_repeated_calls_fault_in_no_fresh_memory():
    """Every buffer of a call that is large enough for malloc to hand back to the
    system (outputs, gradients, the kernels' packed weights) is reused by the next
    call: repeated forwards, and repeated backwards, take next to no page faults.
    In a fresh process with little else on its heap (whether malloc trims depends
    on what else is there: in pytest's own process it did not), the float64 LSTM
    here took ~224 a call, forward and backward each, when its packed weights and
    gradients came from malloc."""
    pytest.importorskip("resource")
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], capture_output=True,
                         text=True, check=True)
    lines = [line.split() for line in out.stdout.splitlines()]
    assert [(k, d) for k, d, _ in lines] == [(k, d) for k in ("lstm", "gru", "rnn")
                                             for d in ("forward", "backward")]
    for kind, direction, n in lines:
        # a few come and go with the process (0-41 seen in 10 calls); 2240 before
        assert int(n) < 100, f"{kind} {direction}: {n} page faults in 10 calls"
