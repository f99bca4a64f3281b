"""Smoke test of benchmarks/admm_schedule.py on a slice of real MNIST."""

import json

from benchmark_scripts import load


def test_schedule_choice_smoke_and_resume(tmp_path, data_dir):
    bench = load("admm_schedule")
    argv = ["--data-dir", str(data_dir), "--train-subset", "640", "--validation", "128",
            "--hidden", "8", "--batch-size", "64", "--budget-seconds", "0.5",
            "--candidates", "fixed,linear:1.01", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    res = json.loads((tmp_path / "admm_schedule.json").read_text())
    assert list(res["runs"]) == ["fixed", "linear:1.01"]
    assert res["runs"]["linear:1.01"]["options"] == {"rho_schedule": "linear",
                                                     "rho_growth": 1.01}
    for r in res["runs"].values():
        assert r["epochs"] and 0 <= r["final_val_accuracy"] <= 1
    assert "best final validation accuracy" in (tmp_path / "admm_schedule.md").read_text()
    before = (tmp_path / "admm_schedule.json").read_text()
    assert bench.main(argv) == 0  # resumed: nothing to run
    assert (tmp_path / "admm_schedule.json").read_text() == before
