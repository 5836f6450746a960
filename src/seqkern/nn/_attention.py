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
        """x (T, B, n) (or (B, T, n)) -> (B, T, n)."""
        x = layer_input(name, x, self.dtype, n)
        if x.ndim != 3:
            legend = "(B, T, " if self.batch_first else "(T, B, "
            raise ValueError(f"{name} must have shape {legend}{n}), got {x.shape}")
        return x if self.batch_first else x.transpose(1, 0, 2)

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
        E, h, d = self.embed_dim, self.num_heads, self.head_dim
        q_in = self._sequence("query", query, E)
        k_in = self._sequence("key", key, self.kdim)
        v_in = self._sequence("value", value, self.vdim)
        B, L, _ = q_in.shape
        S = k_in.shape[1]
        if k_in.shape[:2] != (B, S) or v_in.shape[:2] != (B, S):
            raise ValueError(f"key and value must share (B, S) with query's batch {B}, got "
                             f"key {k_in.shape[:2]}, value {v_in.shape[:2]} (as (B, S))")
        causal, mask, key_lengths = self._mask(key_padding_mask, attn_mask, is_causal, B, L, S)
        heads = []
        for i, x in enumerate((q_in, k_in, v_in)):
            w, b = self._projection(i, self.params)
            y = x @ w.T                                         # (B, T, E)
            if b is not None:
                y += b
            heads.append(np.ascontiguousarray(
                y.reshape(B, -1, h, d).transpose(0, 2, 1, 3)))   # (B, h, T, d)
        o, acache = attention_forward(*heads, causal=causal, mask=mask, key_lengths=key_lengths)
        o = np.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(B, L, E)  # (B, L, E)
        out = o @ self.params["out_proj.weight"].T
        if self.bias:
            out += self.params["out_proj.bias"]
        if not self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, _Cache(self, q_in, k_in, v_in, o, acache)

    def backward(self, d_out, cache):
        """d_out like out -> (d_query, d_key, d_value), shaped like query, key,
        value; adds the parameters' gradients into grads."""
        q_in, k_in, v_in, o, acache = check_layer_cache(self, cache)
        E, h, d = self.embed_dim, self.num_heads, self.head_dim
        B, L, _ = q_in.shape
        d_out = self._sequence("d_out", d_out, E)
        if d_out.shape != (B, L, E):
            raise ValueError(f"d_out must have the shape of out, got {d_out.shape}")
        d2 = d_out.reshape(B * L, E)
        self.grads["out_proj.weight"] += d2.T @ o.reshape(B * L, E)
        if self.bias:
            self.grads["out_proj.bias"] += d2.sum(axis=0)
        d_o = (d2 @ self.params["out_proj.weight"]).reshape(B, L, h, d).transpose(0, 2, 1, 3)
        g = attention_backward(np.ascontiguousarray(d_o), acache)
        d_inputs = []
        for i, (x, dy) in enumerate(zip((q_in, k_in, v_in), g)):
            dy = dy.transpose(0, 2, 1, 3).reshape(-1, E)          # (B T, E)
            w, _ = self._projection(i, self.params)
            gw, gb = self._projection(i, self.grads)
            gw += dy.T @ x.reshape(dy.shape[0], -1)
            if gb is not None:
                gb += dy.sum(axis=0)
            dx = (dy @ w).reshape(x.shape)                          # (B, T, n)
            d_inputs.append(dx if self.batch_first else dx.transpose(1, 0, 2))
        return tuple(d_inputs)
