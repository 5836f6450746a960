"""Shared test helpers: tolerances per dtype and a comparison that says which
tensor went wrong and by how much (llm.c's test style)."""

import numpy as np

# Kernel in float64 vs reference in float64, and kernel in float32 vs the
# reference run in float64 on the same (rounded) inputs.
TOL = {
    np.float64: dict(rtol=1e-9, atol=1e-11),
    np.float32: dict(rtol=2e-4, atol=2e-5),
}

DTYPES = [np.float32, np.float64]


def tol(dtype):
    return TOL[np.dtype(dtype).type]


def assert_close(actual, expected, dtype, name=""):
    """assert_allclose with the tolerance of ``dtype``; None must match None."""
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
                               **tol(dtype))


def assert_grads_close(actual, expected, dtype):
    for field in expected._fields:
        assert_close(getattr(actual, field), getattr(expected, field), dtype, field)


def to64(*arrays):
    return [None if a is None else np.asarray(a, np.float64) for a in arrays]


def numeric_grad(loss, arr, eps=1e-6):
    """Central differences of loss() with respect to every element of ``arr``
    (changed in place and restored)."""
    num = np.empty_like(arr)
    for i in np.ndindex(arr.shape):
        old = arr[i]
        arr[i] = old + eps
        up = loss()
        arr[i] = old - eps
        down = loss()
        arr[i] = old
        num[i] = (up - down) / (2 * eps)
    return num
