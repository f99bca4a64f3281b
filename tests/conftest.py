"""Shared test configuration: the data directory and float64 helpers."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# CI gives a path relative to the repo (../shared/data); subprocesses run elsewhere.
if os.environ.get("ADMM_JAX_DATA"):
    os.environ["ADMM_JAX_DATA"] = str(pathlib.Path(os.environ["ADMM_JAX_DATA"]).resolve())


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """The real-data directory: ``$ADMM_JAX_DATA``, else ``../shared/data`` beside the repo."""
    d = os.environ.get("ADMM_JAX_DATA") or str(REPO.parent / "shared" / "data")
    p = pathlib.Path(d).resolve()
    if not p.is_dir():
        pytest.fail(f"real data not found at {p}: set ADMM_JAX_DATA to the shared data directory")
    return p
