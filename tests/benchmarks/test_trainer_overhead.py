"""Smoke test of benchmarks/trainer_overhead.py (tiny sizes, a few rounds)."""

import importlib.util
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_benchmark_times_the_trainer_and_the_bare_step_and_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "trainer_overhead_bench", REPO / "benchmarks" / "trainer_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "trainer_overhead_smoke.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["adam", "admm_kfac"]
    for r in res["rows"]:
        assert r["trainer_ms"] > 0 and r["bare_ms"] > 0
        assert abs(r["ratio"] - r["trainer_ms"] / r["bare_ms"]) < 1e-9
