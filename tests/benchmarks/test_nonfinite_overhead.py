"""Smoke test of benchmarks/nonfinite_overhead.py (tiny sizes, a few rounds)."""

import json

from benchmark_scripts import load


def test_benchmark_times_raw_and_guarded_steps_and_writes_results(tmp_path):
    bench = load("nonfinite_overhead")
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "nonfinite_overhead_smoke.json").read_text())
    assert [r["optimizer"] for r in res["rows"]] == list(bench.OPTIMIZERS)
    for r in res["rows"]:
        assert r["raw_ms"] > 0 and r["guarded_ms"] > 0
        assert abs(r["ratio"] - r["guarded_ms"] / r["raw_ms"]) < 1e-9
    assert (tmp_path / "nonfinite_overhead_smoke.png").stat().st_size > 0
