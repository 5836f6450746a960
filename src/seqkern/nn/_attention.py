"""Multi-head attention with projections, ``torch.nn.MultiheadAttention``, on the
flash kernel (the (L, S) scores are never materialised).

Axis legend: B batch, L query steps, S key steps, E embed_dim, h num_heads,
d = E / h per head.

    q = query W_q^T + b_q,  k = key W_k^T + b_k,  v = value W_v^T + b_v   (B, L|S, E)
    o_head = softmax(q_head k_head^T / sqrt(d) + mask) v_head             (B, h, L, d)
    out = concat_heads(o) W_o^T + b_o                                      (B, L, E)
"""

import math

import numpy as np

from seqkern.attention import attention_backward, attention_forward
from seqkern._validation import check_bool
from seqkern.nn._basic import _Cache, check_layer_cache
from seqkern.nn._module import Module, check_size, layer_input, make_rng, uniform
from seqkern.nn._parallel import matmul

__all__ = ["MultiheadAttention"]


def _bool_or_float(name, m, dtype):
    m = np.asarray(m)
    if m.dtype == np.bool_:
        return m
    if np.issubdtype(m.dtype, np.floating):
        return m.astype(dtype, copy=False)
    raise TypeError(f"{name} must be a boolean or floating array, got dtype {m.dtype}")


def _additive(m, dtype):
    """A boolean "may not attend" mask as 0 / -inf; a float mask as it is."""
    return np.where(m, dtype.type(-np.inf), dtype.type(0)) if m.dtype == np.bool_ else m


class MultiheadAttention(Module):
    """``torch.nn.MultiheadAttention`` (without add_bias_kv, add_zero_attn, dropout).

    MultiheadAttention(embed_dim, num_heads, bias=True, kdim=None, vdim=None,
    batch_first=False, dtype=np.float32, rng=None)

    Parameters (PyTorch's keys): in_proj_weight (3E, E) (rows q, k, v) where
    kdim = vdim = E, else q_proj_weight (E, E), k_proj_weight (E, kdim),
    v_proj_weight (E, vdim); in_proj_bias (3E,); out_proj.weight (E, E);
    out_proj.bias (E,). Initialised as PyTorch: Xavier-uniform projections,
    out_proj.weight U(-1/sqrt(E), 1/sqrt(E)), zero biases.
    """

    def __init__(self, embed_dim, num_heads, bias=True, kdim=None, vdim=None,
                 batch_first=False, dtype=np.float32, rng=None):
        super().__init__(dtype)
        E = self.embed_dim = check_size("embed_dim", embed_dim)
        self.num_heads = check_size("num_heads", num_heads)
        if E % self.num_heads:
            raise ValueError(f"embed_dim ({E}) must be divisible by num_heads ({num_heads})")
        self.head_dim = E // self.num_heads
        self.kdim = E if kdim is None else check_size("kdim", kdim)
        self.vdim = E if vdim is None else check_size("vdim", vdim)
        self.batch_first = check_bool("batch_first", batch_first)
        self.bias = check_bool("bias", bias)
        rng = make_rng(rng)
        self.packed = self.kdim == E and self.vdim == E
        if self.packed:
            self._add_param("in_proj_weight",
                            uniform(rng, math.sqrt(6 / (4 * E)), (3 * E, E), self.dtype))
        else:
            for name, n in (("q", E), ("k", self.kdim), ("v", self.vdim)):
                self._add_param(f"{name}_proj_weight",
                                uniform(rng, math.sqrt(6 / (E + n)), (E, n), self.dtype))
        if self.bias:
            self._add_param("in_proj_bias", np.zeros(3 * E))
        self._add_param("out_proj.weight", uniform(rng, 1 / math.sqrt(E), (E, E), self.dtype))
        if self.bias:
            self._add_param("out_proj.bias", np.zeros(E))

    def _projection(self, i, store):
        """(weight (E, n), bias (E,) or None) of q (i = 0), k (1) or v (2), as views
        into ``store`` (params or grads)."""
        E = self.embed_dim
        if self.packed:
            w = store["in_proj_weight"][i * E:(i + 1) * E]
        else:
            w = store["qkv"[i] + "_proj_weight"]
        b = store["in_proj_bias"][i * E:(i + 1) * E] if self.bias else None
        return w, b

    def _sequence(self, name, x, n):
        """x (T, B, n) (or (B, T, n) with batch_first), C-contiguous."""
        x = layer_input(name, x, self.dtype, n)
        if x.ndim != 3:
            legend = "(B, T, " if self.batch_first else "(T, B, "
            raise ValueError(f"{name} must have shape {legend}{n}), got {x.shape}")
        return np.ascontiguousarray(x)

    def _to_heads(self, y):
        """(T, B, E) (or (B, T, E)) -> (B, h, T, d), C-contiguous."""
        y = y.reshape(y.shape[:2] + (self.num_heads, self.head_dim))
        return np.ascontiguousarray(y.transpose((0, 2, 1, 3) if self.batch_first else (1, 2, 0, 3)))

    def _from_heads(self, y):
        """(B, h, T, d) -> (T B, E) (or (B T, E)) rows in the input's layout."""
        y = y.transpose((0, 2, 1, 3) if self.batch_first else (2, 0, 1, 3))
        return np.ascontiguousarray(y).reshape(-1, self.embed_dim)

    def _mask(self, key_padding_mask, attn_mask, is_causal, B, L, S):
        """(causal, mask broadcastable to (B, h, L, S) with True = may attend or
        additive floats, key_lengths) for the kernel."""
        h, dt = self.num_heads, self.dtype
        masks, key_lengths = [], None
        if attn_mask is not None:
            m = _bool_or_float("attn_mask", attn_mask, dt)
            if m.shape == (L, S):
                m = m[None, None]
            elif m.shape == (B * h, L, S):
                m = m.reshape(B, h, L, S)
            else:
                raise ValueError(f"attn_mask must have shape (L, S) = {(L, S)} or "
                                 f"(B * num_heads, L, S) = {(B * h, L, S)}, got {m.shape}")
            masks.append(m)
        if key_padding_mask is not None:
            m = _bool_or_float("key_padding_mask", key_padding_mask, dt)
            if m.shape != (B, S):
                raise ValueError(f"key_padding_mask must have shape (B, S) = {(B, S)}, "
                                 f"got {m.shape}")
            n = S - m.sum(axis=1) if m.dtype == np.bool_ else None
            if n is not None and np.array_equal(m, np.arange(S) >= n[:, None]):
                key_lengths = n       # padding at the end of each row: the kernel's lengths
            else:
                masks.append(m[:, None, None, :])
        causal = False
        if is_causal and attn_mask is None:   # with a mask, is_causal is a hint (PyTorch)
            if L == S:
                causal = True
            else:                               # PyTorch's causal mask: key j <= query i
                masks.append(~np.tri(L, S, dtype=bool)[None, None])
        if not masks:
            return causal, None, key_lengths
        if all(m.dtype == np.bool_ for m in masks):
            may_not = masks[0]
            for m in masks[1:]:
                may_not = may_not | m
            return causal, ~may_not, key_lengths
        total = _additive(masks[0], dt)
        for m in masks[1:]:
            total = total + _additive(m, dt)
        return causal, total, key_lengths

    def forward(self, query, key, value, *, key_padding_mask=None, attn_mask=None,
                is_causal=False):
        """query (L, B, E), key (S, B, kdim), value (S, B, vdim), or (B, L, E) ...
        with ``batch_first``.

        key_padding_mask: (B, S), True (or -inf) where the key is padding; float
        values are added to the scores. attn_mask: (L, S) or (B * num_heads, L, S),
        True where a query may NOT attend to a key, or floats added to the
        scores. is_causal: without attn_mask, query i attends to keys j <= i (with
        attn_mask, a hint that it is causal, as in PyTorch). A query with no key
        left gives zeros (PyTorch gives NaN).

        Returns (out (L, B, E) or (B, L, E), cache); no attention weights.
        """
        check_bool("is_causal", is_causal)
        E = self.embed_dim
        xs = (self._sequence("query", query, E), self._sequence("key", key, self.kdim),
              self._sequence("value", value, self.vdim))
        (B, L), S = ((xs[0].shape[0], xs[0].shape[1]), xs[1].shape[1]) if self.batch_first \
            else ((xs[0].shape[1], xs[0].shape[0]), xs[1].shape[0])
        for name, x in zip(("key", "value"), xs[1:]):
            if x.shape[:2] != xs[1].shape[:2] or B != (x.shape[0] if self.batch_first
                                                        else x.shape[1]):
                raise ValueError(f"{name} must have the batch of query ({B}) and the steps of "
                                 f"key, got shape {x.shape}")
        causal, mask, key_lengths = self._mask(key_padding_mask, attn_mask, is_causal, B, L, S)
        heads = []
        for i, x in enumerate(xs):
            w, b = self._projection(i, self.params)
            y = matmul(x.reshape(-1, x.shape[2]), w.T)              # (T B, E)
            if b is not None:
                y += b
            heads.append(self._to_heads(y.reshape(x.shape[:2] + (E,))))  # (B, h, T, d)
        o, acache = attention_forward(*heads, causal=causal, mask=mask, key_lengths=key_lengths)
        o = self._from_heads(o)                                     # (L B, E)
        out = matmul(o, self.params["out_proj.weight"].T)
        if self.bias:
            out += self.params["out_proj.bias"]
        return out.reshape(xs[0].shape[:2] + (E,)), _Cache(self, xs, o, acache)

    def backward(self, d_out, cache):
        """d_out like out -> (d_query, d_key, d_value), shaped like query, key,
        value; adds the parameters' gradients into grads."""
        xs, o, acache = check_layer_cache(self, cache)
        E = self.embed_dim
        d_out = self._sequence("d_out", d_out, E)
        if d_out.shape != xs[0].shape[:2] + (E,):
            raise ValueError(f"d_out must have the shape of out, {xs[0].shape[:2] + (E,)}, "
                             f"got {d_out.shape}")
        d2 = d_out.reshape(-1, E)                                   # (L B, E)
        self.grads["out_proj.weight"] += matmul(d2.T, o)
        if self.bias:
            self.grads["out_proj.bias"] += d2.sum(axis=0)
        d_o = matmul(d2, self.params["out_proj.weight"]).reshape(d_out.shape)
        g = attention_backward(self._to_heads(d_o), acache)
        d_inputs = []
        for i, (x, dy) in enumerate(zip(xs, g)):
            dy = self._from_heads(dy)                               # (T B, E)
            x2 = x.reshape(-1, x.shape[2])                          # (T B, n)
            w, _ = self._projection(i, self.params)
            gw, gb = self._projection(i, self.grads)
            gw += matmul(dy.T, x2)
            if gb is not None:
                gb += dy.sum(axis=0)
            d_inputs.append(matmul(dy, w).reshape(x.shape))
        return tuple(d_inputs)
