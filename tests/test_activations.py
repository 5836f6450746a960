"""The kernels' own tanh and sigmoid (_mathfun.h): accuracy in ulps against a
long-double reference, special values, and NaN propagation."""

import numpy as np
import pytest

from seqkern._dispatch import kernel_module

_activations = kernel_module("_activations")

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
    np.testing.assert_array_equal(s[1:], np.array([1, 0, 0.5, 0.5, 1, 0, np.exp(-100.0)],
                                                  np.float32))   # subnormal, not flushed


# --- The limits: +-inf, NaN, saturation, and the range where sigmoid is subnormal ---

def _exact_sigmoid(x):
    """In long double (x86's 80-bit format keeps exp(-746) ~ 1e-324 normal)."""
    xl = np.asarray(x, np.longdouble)
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-xl))


# (sigmoid's saturation below: the x under which the exact value rounds to 0, and
# the x above which it rounds to 1; tanh: the |x| above which it rounds to +-1)
LIMITS = {np.float64: dict(sig0=-745.14, sig1=37.5, tanh1=19.1),
          np.float32: dict(sig0=-103.98, sig1=17.4, tanh1=9.02)}


def _all_sigmoids(dtype):
    """(name, function) for every sigmoid the kernels use at this dtype."""
    fs = [("sigmoid", _activations.sigmoid)]
    if dtype == np.float32:
        def native(x):
            out = np.empty_like(x)
            _activations.sigmoid_float_native(np.ascontiguousarray(x), out)
            return out
        fs.append(("sigmoid_float_native", native))
    return fs


def _all_tanhs(dtype):
    fs = [("tanh", _activations.tanh)]
    if dtype == np.float32:
        def native(x):
            out = np.empty_like(x)
            _activations.tanh_float_native(np.ascontiguousarray(x), out)
            return out
        fs.append(("tanh_float_native", native))
    return fs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_at_the_limits(dtype):
    """sigmoid(-inf) = 0 exactly (it was ~3.3e-308 in float64, which turned
    0 * inf = NaN into a finite number in the GRU), 1 at +inf, and exactly 0 / 1
    / +-1 over the saturated ranges; NaN in, NaN out."""
    fi = np.finfo(dtype)
    lim = LIMITS[dtype]
    def up_to_max(start):
        return np.append(np.geomspace(start, float(fi.max) / 2, 2000), fi.max).astype(dtype)
    below, above, flat = -up_to_max(-lim["sig0"]), up_to_max(lim["sig1"]), up_to_max(lim["tanh1"])
    for name, f in _all_sigmoids(dtype):
        special = f(np.array([-np.inf, np.inf, np.nan, -np.nan], dtype))
        assert special[0] == 0 and not np.signbit(special[0]), name
        assert special[1] == 1, name
        assert np.isnan(special[2:]).all(), name
        np.testing.assert_array_equal(f(below), 0, err_msg=name)
        np.testing.assert_array_equal(f(above), 1, err_msg=name)
    for name, f in _all_tanhs(dtype):
        np.testing.assert_array_equal(f(np.array([-np.inf, np.inf], dtype)), [-1, 1], err_msg=name)
        assert np.isnan(f(np.array([np.nan], dtype))).all(), name
        np.testing.assert_array_equal(f(flat), 1, err_msg=name)
        np.testing.assert_array_equal(f(-flat), -1, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_where_it_is_subnormal(dtype):
    """Between the smallest normal value and 0 (float64: x in [-745.2, -708.4],
    float32: [-104, -87.3]) sigmoid(x) ~ exp(x) is subnormal: within 1 ulp there
    too (the spacing of subnormals), as NumPy's exp rounds it, never flushed to 0
    or held at exp(-708)."""
    if dtype == np.float64 and np.finfo(np.longdouble).minexp >= np.finfo(np.float64).minexp:
        pytest.skip("needs a long double wider than double (x86's 80-bit) for the exact values")
    lo, hi = {np.float64: (-745.3, -708.3), np.float32: (-104.1, -87.2)}[dtype]
    x = np.linspace(lo, hi, 200_001).astype(dtype)
    exact = _exact_sigmoid(x)
    tiny_step = np.finfo(dtype).smallest_subnormal
    for name, f in _all_sigmoids(dtype):
        spacing = np.spacing(exact.astype(dtype)).astype(np.longdouble)
        err = np.abs(f(x).astype(np.longdouble) - exact) / spacing
        assert err.max() <= 1.0, f"{name}: {err.max():.2f} ulp"
        assert f(np.array([hi], dtype))[0] > 0, name
        assert (f(x)[exact >= tiny_step] > 0).all(), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_and_tiny_inputs(dtype):
    """Subnormal x: tanh(x) = x exactly (odd, so -0 stays -0), sigmoid(x) = 1/2."""
    fi = np.finfo(dtype)
    x = np.concatenate([np.geomspace(float(fi.smallest_subnormal), float(fi.tiny), 500),
                        [float(fi.smallest_subnormal), float(fi.tiny)]]).astype(dtype)
    x = np.concatenate([x, -x])
    for name, f in _all_tanhs(dtype):
        np.testing.assert_array_equal(f(x), x, err_msg=name)
    for name, f in _all_sigmoids(dtype):
        np.testing.assert_array_equal(f(x), 0.5, err_msg=name)
