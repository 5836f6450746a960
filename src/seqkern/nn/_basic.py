"""Linear, Embedding, the fused softmax cross-entropy, and gradient clipping."""

import math
import numbers

import numpy as np

from seqkern._validation import check_bool, check_choice, check_index
from seqkern.nn._module import Module, cache_error, check_size, layer_input, make_rng, uniform
from seqkern.nn._parallel import blas_one_thread, matmul

__all__ = ["Linear", "Embedding", "cross_entropy", "clip_grad_norm_", "clip_grad_value_",
           "arrays_of", "pieces", "piece_buffer"]

# Elements per piece of the element-wise passes over gradients and optimiser state
# (pieces): small enough that a piece's temporaries stay in the core's cache
# between the passes, large enough that NumPy's per-call cost does not show.
PIECE = 1 << 16


class _Cache:
    """A layer's saved forward values, tagged with the layer that made them."""

    __slots__ = ("layer", "values")

    def __init__(self, layer, *values):
        self.layer, self.values = layer, values


def check_layer_cache(layer, cache):
    if not isinstance(cache, _Cache) or cache.layer is not layer:
        raise TypeError(cache_error(layer, cache))
    return cache.values


class Linear(Module):
    """y = x W^T + b, ``torch.nn.Linear``.

    Parameters: weight (out_features, in_features), bias (out_features,), both
    U(-1/sqrt(in_features), 1/sqrt(in_features)) from ``rng`` (PyTorch's default).
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.in_features = check_size("in_features", in_features)
        self.out_features = check_size("out_features", out_features)
        rng = make_rng(rng)
        bound = 1 / math.sqrt(self.in_features)
        self._add_param("weight", uniform(rng, bound, (self.out_features, self.in_features),
                                          self.dtype))
        if check_bool("bias", bias):
            self._add_param("bias", uniform(rng, bound, (self.out_features,), self.dtype))

    def forward(self, x):
        """x (..., in_features) -> (y (..., out_features), cache)."""
        x = layer_input("x", x, self.dtype, self.in_features)
        x2 = x.reshape(-1, self.in_features)                          # (N, in): one GEMM
        y = matmul(x2, self.params["weight"].T)
        if "bias" in self.params:
            y += self.params["bias"]
        return y.reshape(x.shape[:-1] + (self.out_features,)), _Cache(self, x2, x.shape[:-1])

    def backward(self, d_y, cache):
        """d_y (..., out_features) -> dx (..., in_features); adds into grads."""
        x2, lead = check_layer_cache(self, cache)
        d_y = layer_input("d_y", d_y, self.dtype, self.out_features)
        if d_y.shape[:-1] != lead:
            raise ValueError(f"d_y must have the shape of y, {lead + (self.out_features,)}, "
                             f"got {d_y.shape}")
        d2 = d_y.reshape(-1, self.out_features)                       # (N, out)
        self.grads["weight"] += matmul(d2.T, x2)                      # (out, in)
        if "bias" in self.grads:
            self.grads["bias"] += d2.sum(axis=0)
        return matmul(d2, self.params["weight"]).reshape(d_y.shape[:-1] + (self.in_features,))


class Embedding(Module):
    """Rows of a table, ``torch.nn.Embedding``.

    Parameters: weight (num_embeddings, embedding_dim), N(0, 1) from ``rng``;
    the row ``padding_idx`` (if given; negative counts from the end) is zeros
    and receives no gradient.
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32,
                 rng=None):
        super().__init__(dtype)
        self.num_embeddings = n = check_size("num_embeddings", num_embeddings)
        self.embedding_dim = check_size("embedding_dim", embedding_dim)
        if padding_idx is not None:
            if not isinstance(padding_idx, numbers.Integral) or not -n <= padding_idx < n:
                raise ValueError(f"padding_idx must be an integer in [-{n}, {n}), "
                                 f"got {padding_idx!r}")
            padding_idx = int(padding_idx) % n
        self.padding_idx = padding_idx
        w = make_rng(rng).standard_normal((n, self.embedding_dim)).astype(self.dtype)
        if padding_idx is not None:
            w[padding_idx] = 0
        self._add_param("weight", w)

    def forward(self, indices):
        """indices: integer array of any shape (...) -> (out (..., embedding_dim), cache)."""
        idx = np.asarray(indices)
        if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"indices must be an integer array, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ValueError(f"indices must be in [0, {self.num_embeddings}), "
                             f"got values in [{idx.min()}, {idx.max()}]")
        return self.params["weight"][idx], _Cache(self, idx)

    def backward(self, d_out, cache):
        """d_out (..., embedding_dim) -> None (indices have no gradient); adds the
        rows of d_out into grads["weight"][indices], except at padding_idx."""
        from scipy.sparse import csr_array      # (here: importing it takes a while)

        (idx,) = check_layer_cache(self, cache)
        d_out = layer_input("d_out", d_out, self.dtype, self.embedding_dim)
        if d_out.shape[:-1] != idx.shape:
            raise ValueError(f"d_out must have shape {idx.shape + (self.embedding_dim,)}, "
                             f"got {d_out.shape}")
        flat = idx.reshape(-1)                                        # (N,)
        rows = np.ascontiguousarray(d_out.reshape(-1, self.embedding_dim))   # (N, E)
        # The positions sorted by index (stable: each index's rows in their order),
        # without padding_idx; then each distinct index's rows summed at once, as
        # one sparse (U, N) @ (N, E) product of a 0/1 matrix (U distinct indices):
        # row u sums the rows of index u in order (as np.add.at would into zeros),
        # then adds to the gradient: N E work.
        order = np.argsort(flat, kind="stable")
        s = flat[order]
        if self.padding_idx is not None:
            keep = s != self.padding_idx
            order, s = order[keep], s[keep]
        if not s.size:
            return None
        starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))   # (U,)
        select = csr_array((np.ones(s.size, self.dtype), order, np.append(starts, s.size)),
                           shape=(starts.size, flat.size))
        self.grads["weight"][s[starts]] += select @ rows             # distinct rows: no clash
        return None


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    """Softmax and negative log-likelihood in one pass, with the gradient.

    logits (N, C) floating; targets (N,) integers in [0, C) or ``ignore_index``
    (such rows add nothing; an integer). reduction: "mean" (over the rows not
    ignored; with none, a NaN loss and a zero gradient, as PyTorch), "sum", or
    "none".

    Returns (loss, d_logits): loss a NumPy scalar ("mean", "sum") or (N,) ("none";
    ignored rows 0), and d_logits (N, C) the gradient of the loss (of its sum,
    for "none"). The log-sum-exp is taken after subtracting each row's maximum,
    so large logits neither overflow nor lose the small ones; NaN and Inf in a
    row give a NaN loss for that row.
    """
    logits = np.asarray(logits)
    if logits.dtype not in (np.float32, np.float64):
        raise TypeError(f"logits must be float32 or float64, got {logits.dtype}")
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, C) with C >= 1, got {logits.shape}")
    N, C = logits.shape
    t = np.asarray(targets)
    if t.dtype == np.bool_ or not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"targets must be an integer array, got dtype {t.dtype}")
    if t.shape != (N,):
        raise ValueError(f"targets must have shape (N,) = {(N,)}, got {t.shape}")
    reduction = check_choice("reduction", reduction, ("mean", "sum", "none"))
    if isinstance(ignore_index, (bool, np.bool_)):
        raise TypeError("ignore_index must be an integer, got bool")
    ignore_index = check_index("ignore_index", ignore_index)
    valid = t != ignore_index
    if np.any(valid & ((t < 0) | (t >= C))):
        bad = t[valid & ((t < 0) | (t >= C))][0]
        raise ValueError(f"targets must be in [0, {C}) or ignore_index={ignore_index}, "
                         f"got {bad}")
    rows = np.arange(N)
    tv = np.where(valid, t, 0)
    p = logits - logits.max(axis=1, keepdims=True)      # (N, C) shifted logits
    z_t = p[rows, tv]                                   # (N,) shifted logit of the target
    np.exp(p, out=p)
    s = p.sum(axis=1)                                    # (N,) sum of exp
    loss = np.where(valid, np.log(s) - z_t, 0).astype(logits.dtype)
    p /= s[:, None]                                      # softmax
    p[rows, tv] -= 1                                     # d(loss_i)/d(logits_i)
    p[~valid] = 0
    if reduction == "none":
        return loss, p
    if reduction == "sum":
        return loss.sum(dtype=logits.dtype), p
    n = logits.dtype.type(valid.sum())
    if n:
        p /= n
    with np.errstate(invalid="ignore", divide="ignore"):   # no row counted: a NaN loss
        return (loss.sum(dtype=logits.dtype) / n).astype(logits.dtype), p   # and 0 gradient


def arrays_of(grads, name="grads"):
    """The arrays of ``grads``: an array, a dict of arrays, or a list/tuple of those."""
    if isinstance(grads, np.ndarray):
        return [grads]
    if isinstance(grads, dict):
        grads = list(grads.values())
    if not isinstance(grads, (list, tuple)):
        raise TypeError(f"{name} must be an array, a dict of arrays or a list of those, "
                        f"got {type(grads).__name__}")
    out = []
    for g in grads:
        if isinstance(g, (dict, list, tuple)):
            out += arrays_of(g, name)
        elif isinstance(g, np.ndarray) and g.dtype in (np.float32, np.float64):
            out.append(g)
        else:
            raise TypeError(f"{name} must hold float32/float64 arrays, got "
                            f"{getattr(g, 'dtype', type(g).__name__)}")
    return out


def pieces(*arrays):
    """Matching views of ``arrays`` (all of one shape) in pieces: flat slices of at
    most PIECE elements when every array is C-contiguous, else the whole arrays
    (one piece). Element-wise work done piece by piece touches each element as
    the whole-array ops would, with temporaries the size of a piece."""
    if not all(a.flags.c_contiguous for a in arrays):
        yield arrays
        return
    flat = [a.reshape(-1) for a in arrays]
    for i in range(0, flat[0].size, PIECE):
        yield tuple(a[i:i + PIECE] for a in flat)


def piece_buffer(buf, piece):
    """An array shaped like ``piece`` in buf's dtype: a view of ``buf`` (PIECE
    elements) where the piece fits, else a new array (a whole, non-contiguous one)."""
    if piece.size <= buf.size:
        return buf[:piece.size].reshape(piece.shape)
    return np.empty(piece.shape, buf.dtype)


def _sum_of_squares(g, scratch):
    """sum(g ** 2) of a float32/float64 array, accumulated in float64, piece by piece
    (float32 pieces widened through ``scratch``, a float64 array of PIECE elements)."""
    total = 0.0
    for (piece,) in pieces(g):
        if piece.dtype != np.float64:
            g64 = piece_buffer(scratch, piece)
            g64[...] = piece
            piece = g64
        total += float(np.vdot(piece, piece))
    return total


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale ``grads`` in place so that their total norm is at most ``max_norm``.

    grads: an array, a dict of arrays (``layer.grads``) or a list of those. The
    total norm is the ``norm_type``-norm of all their elements together (in
    float64; ``inf`` for the largest magnitude). If it exceeds max_norm, every
    gradient is multiplied by max_norm / (total + 1e-6), as PyTorch does: a NaN
    or Inf total makes the gradients NaN (and zeros where they were finite, for
    Inf), never hides it. With ``error_if_nonfinite`` such a total raises
    RuntimeError instead, before anything is changed. Returns the total norm
    before clipping, a float.
    """
    arrays = arrays_of(grads)
    max_norm, norm_type = float(max_norm), float(norm_type)
    if norm_type <= 0:
        raise ValueError(f"norm_type must be positive, got {norm_type}")
    if not arrays:
        return 0.0
    if norm_type == math.inf:
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in arrays)
        if any(np.isnan(g).any() for g in arrays):
            total = math.nan
    elif norm_type == 2:
        scratch = np.empty(PIECE, np.float64)
        with blas_one_thread():
            total = math.sqrt(sum(_sum_of_squares(g, scratch) for g in arrays))
    else:
        total = sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type))
                    for g in arrays) ** (1 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {total}; "
                           f"clip_grad_norm_(error_if_nonfinite=False) would scale by it")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1:              # < 1, or NaN (propagated into the gradients)
        with np.errstate(invalid="ignore"):     # Inf * 0
            for g in arrays:
                g *= g.dtype.type(coef)
    return total


def clip_grad_value_(grads, clip_value):
    """Clamp every gradient into [-clip_value, clip_value] in place (NaN stays NaN).
    grads: an array, a dict of arrays or a list of those."""
    clip_value = float(clip_value)
    if not clip_value >= 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for g in arrays_of(grads):
        np.clip(g, -clip_value, clip_value, out=g)
