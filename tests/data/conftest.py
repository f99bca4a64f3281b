"""Data tests start from an empty decoded-array cache, shared by the xdist workers of a run."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def fresh_cache(tmp_path_factory, request):
    """Point ``$ADMM_JAX_CACHE`` at a new folder for this test run (as on a fresh CI machine);
    xdist workers share one (also runs without xdist: ``-p no:xdist``)."""
    base = tmp_path_factory.getbasetemp()
    worker = getattr(request.config, "workerinput", None)  # set in an xdist worker only
    d = (base.parent if worker is not None else base) / "admm_jax_cache"
    d.mkdir(exist_ok=True)
    old = os.environ.get("ADMM_JAX_CACHE")
    os.environ["ADMM_JAX_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("ADMM_JAX_CACHE", None)
    else:
        os.environ["ADMM_JAX_CACHE"] = old
