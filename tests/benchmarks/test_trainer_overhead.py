"""Smoke test of benchmarks/trainer_overhead.py (tiny sizes, a few rounds)."""

import json

from benchmark_scripts import load


def test_benchmark_times_the_trainer_and_the_bare_step_and_writes_results(tmp_path):
    bench = load("trainer_overhead")
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "trainer_overhead_smoke.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["adam", "admm_kfac"]
    for r in res["rows"]:
        assert r["trainer_ms"] > 0 and r["bare_ms"] > 0
        assert abs(r["ratio"] - r["trainer_ms"] / r["bare_ms"]) < 1e-9
