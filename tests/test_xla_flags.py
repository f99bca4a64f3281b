"""Importing admm_jax sets XLA's depth-first CPU scheduler (admm_jax/_xla.py says why), never
over a flag the user set, and not at all with ADMM_JAX_XLA_DEFAULTS=0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


@pytest.mark.parametrize(("env", "want"), [
    ({}, f"{FLAG}=false"),
    ({"XLA_FLAGS": f"{FLAG}=true"}, f"{FLAG}=true"),
    ({"ADMM_JAX_XLA_DEFAULTS": "0"}, ""),
])
def test_import_sets_the_scheduler_flag_unless_told_otherwise(env, want):
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ADMM_JAX_XLA_DEFAULTS")}
    code = "import os, admm_jax, jax; jax.numpy.ones(1).block_until_ready(); " \
           "print(os.environ.get('XLA_FLAGS', ''))"
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == want
