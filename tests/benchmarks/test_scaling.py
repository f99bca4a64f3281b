"""Smoke test of benchmarks/scaling.py on 2 forced host devices (a subprocess: XLA_FLAGS must
be set before jax is imported)."""

import json
import os
import subprocess
import sys

from benchmark_scripts import BENCHMARKS


def test_two_devices_are_timed_with_their_collectives(tmp_path):
    out = tmp_path / "scaling.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, str(BENCHMARKS / "scaling.py"), "--smoke",
                        "--host-devices", "2", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["n_devices_available"] == 2 and res["source"] == "random"
    rows = {(row["method"], row["devices"]): row for row in res["rows"]}
    assert set(rows) == {("admm", 2), ("rbd:hadamard", 2), ("sgd", 2)}
    assert all(row["seconds"] > 0 for row in rows.values())
    # data-parallel SGD all-reduces every gradient entry; RBD gathers dim x devices floats
    assert rows[("sgd", 2)]["bytes"] == 4 * res["n_params"]
    assert rows[("rbd:hadamard", 2)]["bytes"] == 4 * res["dim"] * 2
    assert rows[("admm", 2)]["ops"] > 0
    assert "scaling.py --smoke" in res["meta"]["command"]
    assert out.with_suffix(".md").exists()
