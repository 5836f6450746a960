"""Large arrays reused between calls (seqkern._workspace): a block goes back to the
free list only when nothing refers to it any more, and the next request that fits
takes it."""

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
    with pytest.raises(ValueError, match="limit"):
        ws.max_bytes(-1)
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
