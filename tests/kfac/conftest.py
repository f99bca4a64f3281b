"""Shared fixtures of the K-FAC tests."""

import jax
import pytest


@pytest.fixture
def x64():
    """64-bit floats for the test (numerical comparisons)."""
    with jax.enable_x64(True):
        yield
