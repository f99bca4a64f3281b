"""Shared test configuration: the data directory and float64 helpers."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# The suite compiles a few thousand small XLA programs and runs each for milliseconds: XLA's
# CPU compiler is most of its time. These flags make it compile about twice as fast (no LLVM
# optimisation, the classic loop emitters) and change no result beyond rounding; the
# benchmarks and users keep XLA's defaults. ADMM_JAX_TEST_XLA_OPT=1 tests with the defaults.
# Set before anything starts JAX's backend (it reads XLA_FLAGS once); subprocesses inherit it.
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
                "--xla_cpu_use_fusion_emitters=false")
if os.environ.get("ADMM_JAX_TEST_XLA_OPT") != "1":
    _flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = " ".join([_flags, *(f for f in FAST_COMPILE
                                                  if f.split("=")[0] not in _flags)]).strip()

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
