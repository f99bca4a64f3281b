"""Smoke test of benchmarks/data_load.py: a cold and a warm MNIST load from the raw files."""

import json
import os

from benchmark_scripts import load


def test_cold_and_warm_loads_are_timed_and_the_cache_restored(tmp_path, data_dir):
    before = os.environ.get("ADMM_JAX_CACHE")
    assert load("data_load").main(["--smoke", "--data-dir", str(data_dir),
                                   "--out", str(tmp_path)]) == 0
    assert os.environ.get("ADMM_JAX_CACHE") == before
    res = json.loads((tmp_path / "data_load_smoke.json").read_text())
    (row,) = res["rows"]
    assert row["case"] == "mnist train (raw)" and len(row["warm_s"]) == 1
    assert row["cold_s"] > 0 and row["ratio"] == row["cold_s"] / row["warm_median_s"]
    assert "data_load.py --smoke" in res["meta"]["command"]
