"""Smoke test of benchmarks/admm_variants.py at a tiny budget (synthetic adding task)."""

import json

from benchmark_scripts import load


def test_admm_variants_benchmark_runs_and_writes_results(tmp_path):
    bench = load("admm_variants")
    rc = bench.main(["--task", "adding", "--num-train", "256", "--hidden", "8",
                     "--budget-seconds", "0.5", "--eval-points", "2", "--out", str(tmp_path),
                     "--variant", '{"rho": [0.5, 10, 0.1]}',
                     "--variant", '{"name": "sgd", "learning_rate": 0.1, "clip_norm": 1.0}'])
    assert rc == 0
    rows = json.loads((tmp_path / "admm_variants.json").read_text())["rows"]
    assert [r["variant"].get("name", "admmirnn") for r in rows] == ["admmirnn", "sgd"]
    for r in rows:
        assert r["metric"] == "mse" and r["iterations"] > 0
        assert len(r["time"]) == len(r["value"]) == 3 and r["time"][0] == 0.0
    assert (tmp_path / "admm_variants.png").stat().st_size > 10_000
