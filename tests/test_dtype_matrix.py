"""Every registered optimizer, {float32, float64, bfloat16} params x {float32, float64} inputs,
through ``update`` and ``fit``, with x64 off and on: one subprocess per x64 setting (x64 must
be chosen before anything is traced), both run at once."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from admm_jax import optimizers

HERE = pathlib.Path(__file__).resolve().parent


def test_dtype_matrix_every_optimizer_update_and_fit_x64_off_and_on():
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    procs = {x64: subprocess.Popen([sys.executable, str(HERE / "dtype_matrix_checks.py"), x64],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True) for x64 in ("off", "on")}
    results = {}
    try:
        for x64, p in procs.items():
            out, err = p.communicate(timeout=900)
            assert p.returncode == 0, err[-3000:]
            results[x64] = json.loads(out.strip().splitlines()[-1])
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for x64, r in results.items():
        assert r["x64"] == (x64 == "on")
        cells = r["cells"]
        assert len(cells) == len(optimizers.names()) * 3 * 2
        bad = {k: v for k, v in cells.items() if v != "ok"}
        assert not bad, (x64, bad)
