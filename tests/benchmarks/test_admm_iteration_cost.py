"""Smoke test of benchmarks/admm_iteration_cost.py on real MNIST at a tiny size."""

import json

from benchmark_scripts import load


def test_iteration_cost_benchmark_times_every_variant(tmp_path, data_dir):
    bench = load("admm_iteration_cost")
    assert bench.main(["--data-dir", str(data_dir), "--hidden", "8", "--batch-size", "8",
                       "--repeats", "2", "--warmup", "1", "--cg-steps", "1",
                       "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "admm_iteration_cost.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["adam", "admmirnn", "admmirnn_cg1"]
    for r in rows:
        assert len(r["times"]) == 2 and r["flops"] > 0
        assert r["median_over_adam"] > 0
    assert rows[0]["flops_over_adam"] == 1.0
