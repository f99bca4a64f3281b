"""Shared test configuration: the data directory and float64 helpers."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """The real-data directory: ``$ADMM_JAX_DATA``, else ``../shared/data`` beside the repo."""
    d = os.environ.get("ADMM_JAX_DATA") or str(REPO.parent / "shared" / "data")
    p = pathlib.Path(d)
    if not p.is_dir():
        pytest.fail(f"real data not found at {p}: set ADMM_JAX_DATA to the shared data directory")
    return p
