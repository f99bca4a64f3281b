"""Smoke test of benchmarks/kfac_defaults.py on real MNIST at a tiny budget."""

import json

from benchmark_scripts import load


def test_kfac_defaults_benchmark_runs_and_writes_results(tmp_path, data_dir):
    bench = load("kfac_defaults")
    assert bench.main(["--data-dir", str(data_dir), "--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "kfac_defaults.json").read_text())
    (row,) = res["rows"]
    assert row["recipe"]["decay_steps"] == 20
    assert 0.0 <= row["final"] <= 1.0 and row["best"] >= row["final"]
    assert row["first_iteration_to_target"] is None or row["first_iteration_to_target"] <= 20
