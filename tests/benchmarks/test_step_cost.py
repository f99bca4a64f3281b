"""Smoke tests of benchmarks/step_cost.py (tiny sizes, a few rounds): each case times its
variants round-robin and writes its results with the command in meta."""

import json

import pytest
from benchmark_scripts import load


@pytest.fixture(scope="module")
def bench():
    return load("step_cost")


def test_nonfinite_times_raw_and_guarded_steps(bench, tmp_path):
    assert bench.main(["nonfinite", "--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "nonfinite_overhead_smoke.json").read_text())
    assert [r["optimizer"] for r in res["rows"]] == list(bench.GRADIENT_OPTIMIZERS)
    for r in res["rows"]:
        assert r["raw_ms"] > 0 and r["guarded_ms"] > 0
        assert abs(r["ratio"] - r["guarded_ms"] / r["raw_ms"]) < 1e-9
    assert "step_cost.py nonfinite --smoke" in res["meta"]["command"]
    assert (tmp_path / "nonfinite_overhead_smoke.png").stat().st_size > 0
    assert "| optimizer |" in (tmp_path / "nonfinite_overhead_smoke.md").read_text()


def test_trainer_times_the_trainer_and_the_bare_step(bench, tmp_path):
    assert bench.main(["trainer", "--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "trainer_overhead_smoke.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["adam", "admm_kfac"]
    for r in res["rows"]:
        assert r["trainer_ms"] > 0 and r["bare_ms"] > 0
        assert abs(r["ratio"] - r["trainer_ms"] / r["bare_ms"]) < 1e-9


def test_the_timer_keeps_rounds_after_the_warm_up():
    from _harness import median_ratio, round_robin

    calls = []
    times = round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                        rounds=3, warmup=2)
    assert calls == ["a", "b"] * 5 and all(len(v) == 3 for v in times.values())
    assert median_ratio({"a": [2.0, 4.0, 9.0], "b": [1.0, 2.0, 3.0]}, "a", "b") == 2.0


def test_admm_times_both_steps_on_mnist(bench, tmp_path, data_dir):
    assert bench.main(["admm", "--smoke", "--data-dir", str(data_dir), "--out",
                       str(tmp_path)]) == 0
    res = json.loads((tmp_path / "admm_speed_smoke.json").read_text())
    assert [row["T"] for row in res["rows"]] == [28]
    row = res["rows"][0]
    assert row["admmirnn_seconds"] > 0 and row["bptt_seconds"] > 0
    assert abs(row["admm_over_bptt"] - row["admmirnn_seconds"] / row["bptt_seconds"]) < 1e-9
    assert row["admmirnn_flops"] > 0 and row["bptt_flops"] > 0
    assert len(row["admmirnn_times"]) == 2
    assert (tmp_path / "admm_speed_smoke.png").stat().st_size > 10_000


def test_runs_times_batched_against_sequential_runs(bench, tmp_path):
    assert bench.main(["runs", "--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "batched_runs_smoke.json").read_text())
    assert [(r["workload"], r["runs"]) for r in res["rows"]] == [("copying", 1), ("copying", 2)]
    for r in res["rows"]:
        for v in ("sequential", "vmap", "map"):
            assert r[f"{v}_steps_per_s"] > 0 and r[f"{v}_temp_mb"] > 0
            assert r[f"{v}_faults_per_step"] >= 0
        assert r["sequential_x_sequential"] == 1.0
    assert "| workload |" in (tmp_path / "batched_runs_smoke.md").read_text()
