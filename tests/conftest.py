import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh, seeded generator for each test."""
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True, scope="session")
def poisoned_scratch():
    """Every test runs with the kernels' scratch handed out full of NaN bytes (new or
    reused), so that a kernel reading scratch it has not written (a half of the
    packed weights left unpacked, say) shows in its results even where a reused
    block still holds the right values from an earlier call."""
    from seqkern import _workspace

    old = _workspace.poison(True)
    yield
    _workspace.poison(old)
