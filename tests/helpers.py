"""Shared test helpers: the kernels behind one interface (a ``Kernel`` spec each),
one tolerance table, and comparisons that say which tensor went wrong and by
how much (llm.c's test style).

Axis legend: recurrent T = time, B = batch, I = input features, H = hidden units;
attention B = batch, Hq / Hkv = query / key-value heads, Tq / Tk = queries / keys,
D = key width, Dv = value width.
"""

import importlib
import re
from contextlib import contextmanager

import numpy as np

import seqkern
from seqkern import reference as ref
from seqkern._step_gemm import step_gemm

DTYPES = [np.float32, np.float64]

# The one tolerance table: kind of check -> dtype -> tolerance.
TOL = {
    # kernel vs seqkern.reference: a float64 kernel against the float64 reference
    # (summation order only), a float32 kernel against the reference run in float64
    # on the same (rounded) inputs (a few float32 ulps accumulated over the steps:
    # for a sequence of T > STEPS_0 steps, scaled by sqrt(T / STEPS_0), see tol())
    "reference": {np.float64: dict(rtol=1e-10, atol=1e-12),
                  np.float32: dict(rtol=2e-4, atol=2e-5)},
    # step calls against the whole sequence, of one implementation
    "step": {np.float64: dict(rtol=1e-12, atol=1e-13),
             np.float32: dict(rtol=1e-5, atol=1e-6)},
    # a batch with lengths against each sequence run alone (float64): outputs and
    # states, then gradients
    "lengths": {np.float64: dict(rtol=1e-12, atol=0)},
    "lengths_grad": {np.float64: dict(rtol=1e-10, atol=1e-14)},
    # analytic gradients against central differences of step 1e-6 (float64): the
    # differences' own error is ~1e-10 * |loss| from rounding
    "finite_differences": {np.float64: dict(rtol=1e-8, atol=1e-8)},
}


# Steps up to which the float32 "reference" tolerance holds as it stands.
STEPS_0 = 100


def tol(dtype, kind="reference", steps=None):
    """The table's tolerance; for float32 against the reference over ``steps`` time
    steps, scaled by sqrt(steps / STEPS_0) past STEPS_0: the rounding errors of each
    step's state (and, backward, of its carried gradient) propagate to the later
    ones and add up like a random walk, and a BLAS that sums in another order (e.g.
    aarch64's OpenBLAS) lands elsewhere on that walk."""
    t = TOL[kind][np.dtype(dtype).type]
    if steps is None or kind != "reference" or np.dtype(dtype) != np.float32 or steps <= STEPS_0:
        return t
    return {k: v * float(np.sqrt(steps / STEPS_0)) for k, v in t.items()}


def assert_close(actual, expected, dtype, name="", kind="reference", steps=None):
    """assert_allclose with the table's tolerance for ``kind`` and ``dtype`` (over
    ``steps`` time steps: tol()); None must match None. The message gives the
    largest difference."""
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{name}: {actual!r} vs {expected!r}"
        return
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    if actual.size:
        diff = np.nanmax(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))
    else:
        diff = 0.0
    np.testing.assert_allclose(actual, expected, err_msg=f"{name}: max abs diff {diff:.3g}",
                               **tol(dtype, kind, steps))


def assert_grads_close(actual, expected, dtype, kind="reference", steps=None):
    for field in expected._fields:
        assert_close(getattr(actual, field), getattr(expected, field), dtype, field, kind,
                     steps)


def assert_all_equal(actual, expected, names):
    """Bitwise equality of two lists of results (None must match None)."""
    for name, a, b in zip(names, actual, expected, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)


def to64(*arrays):
    return [None if a is None else np.asarray(a, np.float64) for a in arrays]


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar ``f()`` with respect to each element of
    ``x`` (changed in place and restored)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def escape(msg):
    return re.escape(msg)


# ---------------------------------------------------------------------------
# The kernels, one spec each. A spec gives inputs for a shape, runs the forward
# and backward of an implementation (seqkern or seqkern.reference) on them, and
# lists the shapes that reach each of its paths.
# ---------------------------------------------------------------------------

def _rnn_init(rng, T, B, I, H, bias):
    """x (T, B, I), h0 (B, H), W_ih (H, I), W_hh (H, H), b_ih, b_hh (H,)."""
    s = 1.0 / np.sqrt(max(H, 1))
    return [rng.standard_normal((T, B, I)), rng.standard_normal((B, H)) * 0.5,
            rng.standard_normal((H, I)) * s, rng.standard_normal((H, H)) * s * 0.9,
            rng.standard_normal(H) * 0.1 if bias else None,
            rng.standard_normal(H) * 0.1 if bias else None]


def _lstm_init(rng, T, B, I, H, bias):
    """x (T, B, I), h0, c0 (B, H), W_ih (4H, I), W_hh (4H, H), b_ih, b_hh (4H,)."""
    s = 1.0 / np.sqrt(max(H, 1))
    return [rng.standard_normal((T, B, I)), 0.5 * rng.standard_normal((B, H)),
            0.5 * rng.standard_normal((B, H)),
            rng.uniform(-s, s, (4 * H, I)), rng.uniform(-s, s, (4 * H, H)),
            rng.uniform(-s, s, 4 * H) if bias else None,
            rng.uniform(-s, s, 4 * H) if bias else None]


def _gru_init(rng, T, B, I, H, bias):
    """x (T, B, I), h0 (B, H), W_ih (3H, I), W_hh (3H, H), b_ih, b_hh (3H,)."""
    s = 1.0 / np.sqrt(max(H, 1))
    return [rng.standard_normal((T, B, I)), rng.standard_normal((B, H)),
            rng.uniform(-s, s, (3 * H, I)) * 2, rng.uniform(-s, s, (3 * H, H)) * 2,
            rng.uniform(-1, 1, 3 * H) if bias else None,
            rng.uniform(-1, 1, 3 * H) if bias else None]


class Recurrent:
    """An RNN, LSTM or GRU: ``name`` is the functions' prefix ("rnn", ...),
    ``gates`` the rows of W_ih per hidden unit, ``states`` the initial states'
    names, ``kw`` fixed keyword arguments (the RNN's nonlinearity)."""

    recurrent = True
    # variants of the reference comparison
    variants = ["plain", "no_bias", "lengths", "no_bias_lengths", "lengths_batch_first"]

    # (T, B, I, H) without a cache: several unit blocks at H = 70, where the gates
    # live in a buffer of one chunk of steps
    no_cache_shapes = [(5, 2, 3, 4), (5, 16, 8, 70), (20, 17, 9, 70)]

    def __init__(self, name, gates, states, init, shapes, thread_shapes, gemm_shapes,
                 kw=None, id=None):
        self.name, self.gates, self.states = name, gates, states
        self.init, self.kw = init, dict(kw or {})
        self.id = id or name
        self.shapes = shapes                  # (T, B, I, H) against the reference
        self.thread_shapes = thread_shapes    # (T, B, I, H) reaching each parallel path
        self.gemm_shapes = gemm_shapes        # (T, B, I, H) under each forced step product
        self.out_names = ("out", "h_n", "c_n")[:1 + len(states)]
        self.grads_type = {"rnn": seqkern.RNNGrads, "lstm": seqkern.LSTMGrads,
                           "gru": seqkern.GRUGrads}[name]
        self.grad_names = self.grads_type._fields

    def __repr__(self):
        return self.id

    @contextmanager
    def path(self):
        """The products these tests run on: each kernel's own choice."""
        yield

    def two_core_blocks(self, monkeypatch):
        """Cut the work in the blocks of a 2-core machine, whatever this one has."""
        monkeypatch.setattr(importlib.import_module("seqkern." + self.name), "block_count",
                            lambda: 2)

    # --- inputs -----------------------------------------------------------
    def args(self, rng, T, B, I, H, dtype=np.float64, bias=True, scale=1.0):
        """Positional arguments of ``{name}_forward``: x, the states, W_ih, W_hh,
        b_ih, b_hh; ``scale`` multiplies x."""
        args = self.init(rng, T, B, I, H, bias)
        args[0] = args[0] * scale
        return [None if a is None else a.astype(dtype) for a in args]

    def split(self, args):
        """(x, states, weights) of the positional arguments."""
        n = len(self.states)
        return args[0], args[1:1 + n], args[1 + n:]

    def inputs(self, rng, shape, dtype, variant="plain"):
        """(args, kw) of a forward call for a reference comparison ``variant``."""
        T, B, I, H = shape
        args = self.args(rng, T, B, I, H, dtype, bias="no_bias" not in variant)
        kw = {}
        if "lengths" in variant:
            kw["lengths"] = lengths_with_ends(rng, B, T)
        if "batch_first" in variant:
            kw["batch_first"] = True
            args[0] = np.ascontiguousarray(args[0].transpose(1, 0, 2))
        return args, kw

    def upstream(self, rng, outs):
        """Random gradients of the outputs, one per output."""
        return [rng.standard_normal(o.shape).astype(o.dtype) for o in outs]

    # --- calls --------------------------------------------------------------
    def forward(self, mod, args, **kw):
        """(outputs, cache) of ``mod``'s forward: outputs (out, h_n[, c_n])."""
        res = getattr(mod, f"{self.name}_forward")(*args, **self.kw, **kw)
        return tuple(res[:-1]), res[-1]

    def backward(self, mod, d_outs, cache):
        return getattr(mod, f"{self.name}_backward")(*d_outs, cache)

    def step_forward(self, mod, x, states, weights):
        """(next states, cache) of one step."""
        res = getattr(mod, f"{self.name}_step_forward")(x, *states, *weights, **self.kw)
        return tuple(res[:-1]), res[-1]

    def step_backward(self, mod, d_states, cache):
        return getattr(mod, f"{self.name}_step_backward")(*d_states, cache)

    def loss_and_grads(self, mod, args, kw, d_outs):
        """sum(out * d_out) + sum(state * d_state) and its gradients."""
        outs, cache = self.forward(mod, args, **kw)
        loss = sum(float(np.sum(o * d)) for o, d in zip(outs, d_outs))
        return loss, self.backward(mod, d_outs, cache)


class Attention:
    """Batched multi-head attention with its tile products on the kernel's own
    micro-kernel ("own") or on BLAS ("blas"); both must be right at every level."""

    recurrent = False
    name = "attention"
    out_names = ("out",)
    grad_names = ("dq", "dk", "dv")
    variants = ["plain", "causal", "bool_mask", "float_mask", "lengths", "all"]
    # (B, Hq, Hkv, Tq, Tk, D, Dv): Tq != Tk, Tq = 1, D != Dv, odd sizes and GQA, and
    # sizes past the tile sizes (several query and key tiles, ragged last tiles).
    shapes = [
        (2, 4, 4, 13, 29, 8, 8),
        (1, 2, 2, 1, 17, 16, 16),
        (2, 2, 2, 9, 9, 5, 11),
        (3, 6, 2, 37, 53, 7, 5),
        (1, 2, 1, 300, 520, 32, 24),
        (2, 2, 2, 70, 130, 64, 64),        # no padding of D and Dv
        # query tiles of few rows run row by row (_attention's ROW_QUERIES): decoding
        # (Tq = 1) over two key tiles and 18 groups of 16 keys and 12 keys, 6 rows, and
        # 7 (the tile path again)
        (2, 4, 2, 1, 300, 64, 64),
        (1, 3, 3, 6, 45, 5, 7),
        (2, 2, 1, 7, 33, 16, 16),
        # one forward tile of 65 rows, and a backward query tile of one row (its tiles
        # are shorter) on the tile path: one-row products with a strided row
        (2, 2, 1, 65, 70, 16, 8),
    ]
    # many query tiles (Tq = 200), and the row path (Tq = 1, 5), over 300 keys
    thread_shapes = [(3, 4, 2, 200, 300, 16, 8), (3, 4, 2, 1, 300, 16, 8),
                     (3, 4, 2, 5, 300, 16, 8)]
    no_cache_shapes = [(1, 1, 1, 2, 3, 4, 4), (2, 4, 2, 13, 29, 8, 8)]

    def __init__(self, products):
        self.products = products
        self.id = f"attention-{products}"

    def __repr__(self):
        return self.id

    def path(self):
        return step_gemm("blas" if self.products == "blas" else "packed")

    def two_core_blocks(self, monkeypatch):
        pass

    def args(self, rng, shape, dtype=np.float64):
        """q (B, Hq, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv)."""
        B, Hq, Hkv, Tq, Tk, D, Dv = shape
        return [rng.standard_normal(s).astype(dtype)
                for s in [(B, Hq, Tq, D), (B, Hkv, Tk, D), (B, Hkv, Tk, Dv)]]

    def inputs(self, rng, shape, dtype, variant="plain"):
        return self.args(rng, shape, dtype), attention_kwargs(rng, variant, shape)

    def upstream(self, rng, outs):
        return [rng.standard_normal(o.shape).astype(o.dtype) for o in outs]

    def forward(self, mod, args, **kw):
        out, cache = mod.attention_forward(*args, **kw)
        return (out,), cache

    def backward(self, mod, d_outs, cache):
        return mod.attention_backward(*d_outs, cache)

    def loss_and_grads(self, mod, args, kw, d_outs):
        outs, cache = self.forward(mod, args, **kw)
        return float(np.sum(outs[0] * d_outs[0])), self.backward(mod, d_outs, cache)


def lengths_with_ends(rng, B, T):
    """Random lengths in [0, T]: the first sequence full, the last (B > 1) empty."""
    lengths = rng.integers(0, T + 1, size=B)
    lengths[:1] = T
    if B > 1:
        lengths[-1] = 0
    return lengths


def attention_kwargs(rng, variant, shape):
    """Keyword arguments of attention_forward for a variant: causal, a boolean mask
    broadcast over heads, a float mask with keys at -inf broadcast over batch and
    queries, key_lengths with a full and an empty batch entry, or all at once."""
    B, Hq, Hkv, Tq, Tk, D, Dv = shape
    kw = {}
    if variant in ("causal", "all"):
        kw["causal"] = True
    if variant in ("bool_mask", "all"):
        kw["mask"] = rng.random((B, 1, Tq, Tk)) > 0.25    # about one key in four hidden
    if variant == "float_mask":
        m = rng.standard_normal((Hq, 1, Tk))
        m[:, :, ::5] = -np.inf
        kw["mask"] = m
    if variant in ("lengths", "all"):
        kw["key_lengths"] = lengths_with_ends(rng, B, Tk)
    return kw


def _rnn(nonlinearity):
    return Recurrent(
              "rnn", 1, ("h0",), _rnn_init, kw=dict(nonlinearity=nonlinearity),
              id=f"rnn-{nonlinearity}",
              # a single step, odd sizes, and batches whose time loop splits by rows
              # (B >= 16 on a machine of 2 or more cores: blocks of 9 and 10 rows)
              shapes=[(1, 1, 3, 5), (7, 3, 5, 17), (13, 4, 9, 70), (40, 8, 16, 128),
                      (9, 19, 6, 33)],
              # the steps split by hidden units (B H H >= PAR_MIN_STEP = 2^21), the
              # time loop split by batch rows and the gradients' blocks in parallel
              # (T B H H and the gradients >= 2^25 multiply-adds), and a shape too
              # small for any
              thread_shapes=[(6, 4, 8, 768), (6, 1, 8, 1456), (50, 32, 8, 160),
                             (5, 64, 33, 70)],
              gemm_shapes=[(9, 1, 5, 7), (6, 5, 7, 70), (30, 8, 16, 130)])


RNN_TANH, RNN_RELU = _rnn("tanh"), _rnn("relu")
LSTM = Recurrent("lstm", 4, ("h0", "c0"), _lstm_init,
              shapes=[
                  (1, 1, 1, 1),
                  (1, 3, 4, 5),
                  (7, 1, 3, 9),
                  (5, 4, 6, 33),
                  (4, 2, 5, 130),    # several unit blocks at B=2? (size decides), odd H
                  (1, 1, 5, 730),    # a single step: one block where two steps would split
                  (3, 16, 8, 70),    # blocks of 64 with a ragged last block
                  (6, 9, 20, 200),
                  (30, 10, 12, 70),  # T*B = 300: the packed weight gradients sum over 2 K blocks
                  (33, 1, 16, 33),   # batch 1 (forced packed, gemm_shapes: the projection
                  (40, 1, 70, 3),    # inside the steps, also where it outweighs the step)
              ],
              thread_shapes=[
                  (7, 1, 8, 200), (5, 8, 16, 130), (3, 33, 9, 70),
                  (1, 1, 8, 260),      # a single step: one block
                  (20, 17, 9, 70),     # T*B = 340: weight gradients in 2 K blocks
                  # big enough for parallel loops outside the steps (PAR_MIN_GEMM):
                  # a chunk's gradient jobs ...
                  (10, 64, 64, 256),
                  # ... and the projection of a one-block step
                  (2048, 1, 64, 64),
                  # batch 1 with a projection large enough (T I 4H >= 2^25) for
                  # parallel row blocks (the interleaved path forced on these:
                  # test_lstm.py's test_batch_1_interleaved_threads_bitwise)
                  (300, 1, 512, 64), (2100, 1, 512, 64),
                  # ... with a last block of one row in blocks of ROW_BLOCK (1024, 1024, 1)
                  (2049, 1, 512, 64),
              ],
              # (5, 1, ..), (9, 1, ..), (600, 1, ..), (16, 1, ..), (33, 1, ..), (40, 1, ..):
              # batch 1, whose packed forward projects the next SIDE_ROWS steps (16 or
              # 8 by the ISA) inside each step's product: less than one chunk at
              # either (5) or at 16 (9), many, exactly one (16 at 16, two at 8), two
              # and one row, and more projection than recurrent work per step (I > 4H). (20, 8, 16, 130):
              # several unit blocks (B 4H H >= 2^21), split over 2 threads; (600, 1, ..) also: two
              # backward chunks (512 rows, then 88); (5, 600, ..): two steps per chunk,
              # 1200 rows in five K blocks; (5, 300, 4, 130): the same beside unit
              # blocks (whose steps read dz_{t+1} across all blocks while writing dz_t);
              # (300, 4, 5, 130): backward chunks of 128 steps beside unit blocks.
              gemm_shapes=[(5, 1, 5, 7), (9, 1, 5, 7), (6, 5, 7, 70), (20, 8, 16, 260),
                           (600, 1, 3, 20),
                           (5, 600, 4, 10), (5, 300, 4, 130), (300, 4, 5, 368),
                           (16, 1, 8, 64), (33, 1, 16, 33), (40, 1, 70, 3)])
# batch 1 with a projection large enough (T I 4H >= 2^25) for parallel row blocks
LSTM.no_cache_shapes = Recurrent.no_cache_shapes + [(300, 1, 512, 64), (2100, 1, 512, 64)]
GRU = Recurrent("gru", 3, ("h0",), _gru_init,
              shapes=[
                  (1, 1, 3, 2),
                  (5, 3, 4, 7),
                  (7, 1, 6, 33),
                  (4, 16, 8, 70),     # large enough to split a step in unit blocks
                  (3, 9, 5, 131),     # odd H, ragged last block
                  (2, 3, 4, 7),       # few rows (T < 4, T*B < 16): no W_hh^T in the backward at B > 1
                  (1, 1, 5, 840),     # a single step: one block where more steps would split
                  (6, 5, 4, 9), (5, 12, 6, 130),
              ],
              # the last two: few rows, one block, no W_hh^T; (20, 64, 256, 80): large
              # enough for the GEMMs outside the time loop to go parallel
              thread_shapes=[(20, 16, 8, 70), (3, 40, 300, 130), (4, 1, 4, 840),
                             (20, 64, 256, 80), (1, 1, 4, 840), (3, 5, 8, 70),
                             # blocks of batch rows (B >= 16), uneven (17), and two
                             # backward chunks (40 x 32 rows); (25, 35, ..): rows split
                             # over 2 threads (T B 3H H >= PAR_MIN_GEMM), uneven forward
                             # chunks without a cache
                             (9, 17, 5, 40), (40, 32, 6, 33), (25, 35, 4, 128)],
              # (9, 1, ..): batch 1 (_vecmat vs the packed M = 1 kernel); (20, 8, 16,
              # 300): several unit blocks, split over 2 threads; (1100, 1, ..): several
              # backward chunks; (12, 17, ..), (40, 32, ..): blocks of batch rows, the
              # second over two backward chunks and (without a cache) three forward ones
              gemm_shapes=[(9, 1, 5, 7), (6, 5, 7, 70), (20, 8, 16, 300), (1100, 1, 3, 20),
                           (12, 17, 6, 40), (40, 32, 5, 20)])
# rows split over 2 threads without a cache, against the same with one (25, 35: uneven
# chunks) and against a cache, whose 17 rows project as one block (1, 17)
GRU.no_cache_shapes = Recurrent.no_cache_shapes + [(25, 35, 4, 128), (1, 17, 4, 1024)]

RECURRENT = [RNN_TANH, RNN_RELU, LSTM, GRU]
ATTENTION = [Attention("own"), Attention("blas")]
KERNELS = RECURRENT + ATTENTION
IMPLS = {"kernel": seqkern, "reference": ref}

# For code run in a fresh interpreter that forks: wait_child(pid, seconds) waits for
# the child at most that long and gives its exit code, or None where it hung (it is
# then killed).
WAIT_CHILD = """
import os as _os
import time as _time


def wait_child(pid, seconds=10):
    deadline = _time.monotonic() + seconds
    while _time.monotonic() < deadline:
        done, status = _os.waitpid(pid, _os.WNOHANG)
        if done:
            return _os.waitstatus_to_exitcode(status)
        _time.sleep(0.002)
    _os.kill(pid, 9)
    _os.waitpid(pid, 0)
    return None
"""
