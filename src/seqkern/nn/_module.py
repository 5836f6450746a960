"""The base of every layer: parameters, gradients, state dicts, train/eval.

A layer keeps its parameters in ``params`` and their gradients in ``grads``:
dicts of NumPy arrays keyed by PyTorch's ``state_dict`` names, with the same
shapes. ``backward`` adds into ``grads``; ``zero_grad`` clears them. The arrays
are updated in place (by ``load_state_dict`` and the optimisers), so a
reference to ``layer.params[key]`` stays valid.
"""

import numbers

import numpy as np

from seqkern._validation import check_bool


def check_dtype(dtype):
    """``dtype`` as np.float32 or np.float64, else TypeError."""
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_size(name, value, minimum=1):
    """``value`` as an int >= minimum, else TypeError / ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def make_rng(rng):
    """A numpy Generator from None, a seed or a Generator (used as it is)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, numbers.Integral):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an integer seed or None, got {rng!r}")


def uniform(rng, bound, shape, dtype):
    """U(-bound, bound) of ``shape`` in ``dtype`` (drawn in float64, then rounded)."""
    return rng.uniform(-bound, bound, shape).astype(dtype)


def layer_input(name, x, dtype, last):
    """``x`` as an array of the layer's dtype whose last axis has size ``last``."""
    x = np.asarray(x)
    if x.dtype != dtype:
        raise TypeError(f"{name} must have the layer's dtype {dtype}, got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != last:
        raise ValueError(f"{name} must have a last axis of size {last}, got shape {x.shape}")
    return x


def cache_error(layer, cache, note=""):
    """The message for a backward given a cache its layer's forward did not return:
    another layer's (a copy's included: a cache belongs to the layer object whose
    forward made it) or not a cache at all."""
    name = type(layer).__name__
    if getattr(cache, "layer", None) is not None:
        return (f"cache must be the cache returned by this {name}'s forward, got one returned "
                f"by another {type(cache.layer).__name__} (a cache belongs to the layer object "
                "that made it: a copied layer needs its own forward)")
    return (f"cache must be the cache returned by this {name}'s forward"
            + (f" {note}" if note else "") + f", got {type(cache).__name__}")


class Module:
    """Parameters, gradients and the train/eval flag of one layer."""

    def __init__(self, dtype):
        self.dtype = check_dtype(dtype)
        self.params = {}
        self.grads = {}
        self.training = True

    def _add_param(self, name, value):
        self.params[name] = np.ascontiguousarray(value, self.dtype)
        self.grads[name] = np.zeros_like(self.params[name])

    def zero_grad(self):
        """Set every gradient to zero (in place)."""
        for g in self.grads.values():
            g[...] = 0

    def train(self, mode=True):
        """Training mode (dropout on) or, with mode=False, evaluation mode. Returns self."""
        self.training = check_bool("mode", mode)
        return self

    def eval(self):
        """Evaluation mode (dropout off). Returns self."""
        return self.train(False)

    def state_dict(self):
        """{PyTorch key: copy of the parameter}."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy the values of ``state_dict`` (arrays, or anything np.asarray takes,
        such as CPU torch tensors) into the parameters, cast to the layer's dtype.

        With ``strict`` a key the layer does not have, or one it has that is
        missing, is a ValueError naming them; a shape that differs is a ValueError
        naming the key in any case. Nothing is changed when an error is raised.
        Returns (missing_keys, unexpected_keys), as PyTorch does.
        """
        strict = check_bool("strict", strict)
        if not hasattr(state_dict, "items"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        unexpected = [k for k in state_dict if k not in self.params]
        missing = [k for k in self.params if k not in state_dict]
        if strict and (unexpected or missing):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise ValueError(f"load_state_dict(strict=True): {'; '.join(parts)}")
        values = {}
        for k, v in state_dict.items():
            if k not in self.params:
                continue
            try:
                v = np.asarray(v)
            except (TypeError, ValueError, RuntimeError) as e:
                raise TypeError(f"state_dict[{k!r}] must be an array of real numbers: {e}") \
                    from None
            if v.shape != self.params[k].shape:
                raise ValueError(f"state_dict[{k!r}] must have shape {self.params[k].shape}, "
                                 f"got {v.shape}")
            if v.dtype.kind not in "biuf":         # bool, integers, floats
                raise TypeError(f"state_dict[{k!r}] must hold real numbers, got dtype {v.dtype}")
            values[k] = v.astype(self.dtype)        # cast all before changing any
        for k, v in values.items():
            self.params[k][...] = v
        return missing, unexpected
