"""The ADMM tests run in float64."""

import jax
import pytest


@pytest.fixture(autouse=True)
def x64():
    """Every test in tests/admm runs with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield
