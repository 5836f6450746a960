"""The kernels' own tanh and sigmoid (_mathfun.h): accuracy in ulps against a
long-double reference, special values, and NaN propagation."""

import numpy as np
import pytest

from seqkern import _activations

# The bounds documented in _mathfun.h.
MAX_ULP = {np.float64: 4.0, np.float32: 1.0}


def _points():
    rng = np.random.default_rng(7)
    return np.concatenate([
        np.linspace(-25, 25, 400_001),
        rng.standard_normal(100_000) * 1e-3,
        rng.standard_normal(100_000) * 1e-9,
        np.geomspace(1e-300, 700, 20_000),
        -np.geomspace(1e-300, 700, 20_000),
    ])


def _ulp_error(actual, exact, dtype):
    exact = exact.astype(np.longdouble)
    ok = np.abs(exact) > np.finfo(dtype).tiny     # ulps of subnormals are not meaningful
    spacing = np.spacing(np.abs(exact[ok]).astype(dtype)).astype(np.longdouble)
    return np.abs(actual[ok].astype(np.longdouble) - exact[ok]) / spacing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_accuracy_in_ulps(dtype, name):
    x = _points().astype(dtype)
    xl = x.astype(np.longdouble)
    if name == "tanh":
        actual, exact = _activations.tanh(x), np.tanh(xl)
    else:
        with np.errstate(over="ignore"):
            actual, exact = _activations.sigmoid(x), 1 / (1 + np.exp(-xl))
    assert actual.dtype == dtype
    err = _ulp_error(actual, exact, dtype)
    assert err.max() <= MAX_ULP[dtype], f"{name} {np.dtype(dtype)}: {err.max():.2f} ulp"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e4, -1e4], dtype)
    t = _activations.tanh(x)
    assert np.isnan(t[0])
    np.testing.assert_array_equal(t[1:], np.array([1, -1, 0, 0, 1, -1], dtype))
    assert np.signbit(t[4])                       # tanh(-0) = -0
    s = _activations.sigmoid(x)
    assert np.isnan(s[0])
    assert s[1] == 1 and s[3] == 0.5 and s[5] == 1
    assert 0 <= float(s[2]) < 1e-300 and 0 <= float(s[6]) < 1e-300


def test_rejects_non_float():
    with pytest.raises(TypeError, match="float32 or float64"):
        _activations.tanh(np.arange(3))


# The float-native tanh and sigmoid of the float32 LSTM gate pass (_mathfun.h,
# sk_tanhf_fl / sk_sigmoidf_fl). Measured maxima over these points: tanh 2.42 ulp
# (near x = 8e-4), sigmoid 2.48 ulp (near x = -1.16).
MAX_ULP_FLOAT_NATIVE = {"tanh": 3.0, "sigmoid": 3.0}


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_float_native_accuracy_in_ulps(name):
    x = np.concatenate([_points(), np.linspace(-88, -86, 100_001)]).astype(np.float32)
    xl = x.astype(np.longdouble)
    out = np.empty_like(x)
    if name == "tanh":
        _activations.tanh_float_native(x, out)
        exact = np.tanh(xl)
    else:
        _activations.sigmoid_float_native(x, out)
        with np.errstate(over="ignore"):
            exact = 1 / (1 + np.exp(-xl))
    err = _ulp_error(out, exact, np.float32)
    assert err.max() <= MAX_ULP_FLOAT_NATIVE[name], f"{name}: {err.max():.2f} ulp"


def test_float_native_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e4, -1e4, -100.0], np.float32)
    t = np.empty_like(x)
    _activations.tanh_float_native(x, t)
    assert np.isnan(t[0])
    np.testing.assert_array_equal(t[1:], np.array([1, -1, 0, 0, 1, -1, -1], np.float32))
    assert np.signbit(t[4])                       # tanh(-0) = -0
    s = np.empty_like(x)
    _activations.sigmoid_float_native(x, s)
    assert np.isnan(s[0])
    np.testing.assert_array_equal(s[1:], np.array([1, 0, 0.5, 0.5, 1, 0, 0], np.float32))
