"""Smoke tests of benchmarks/admm.py, one per case (mnist, stability, text, schedule), on real
data or the adding task at tiny budgets."""

import json
import math

import numpy as np
import pytest
from benchmark_scripts import load

from admm_jax import tasks


@pytest.fixture(scope="module")
def bench():
    return load("admm")


def test_mnist_runs_both_methods_and_writes_results(bench, tmp_path, data_dir):
    rc = bench.main(["mnist", "--data-dir", str(data_dir), "--train-size", "512", "--hidden",
                     "16", "--batch-size", "128", "--budget-seconds", "1", "--max-epochs", "2",
                     "--adam-epochs", "1", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    result = json.loads((tmp_path / "admm_mnist.json").read_text())
    adm = result["admmirnn"]
    assert 1 <= len(adm) <= 2 and adm[-1]["iteration"] == 4 * len(adm)
    for key in ("lagrangian", "r1", "r2", "r3", "dual_residual", "train_loss", "test_acc"):
        assert all(isinstance(h[key], float) for h in adm), key
    assert 0.0 <= result["summary"]["admm_best_test_acc"] <= 1.0
    assert result["adam"][0]["iteration"] == 4
    assert (tmp_path / "admm_mnist.png").stat().st_size > 10_000
    assert "| ADMMiRNN |" in (tmp_path / "admm_mnist.md").read_text()
    assert result["meta"]["command"].startswith("python benchmarks/admm.py mnist --data-dir")


def test_stability_smoke_runs_every_cell_and_resumes(bench, tmp_path):
    assert bench.main(["stability", "--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "admm_stability.json").read_text())
    runs = res["runs"]
    # 1 task x 2 scales x 4 methods x 1 seed
    assert sorted(runs) == sorted(f"adding-8|{g}|{m}|0" for g in ("1", "3")
                                  for m in ("admmirnn", "sgd", "sgd_clip", "adam"))
    for k, r in runs.items():
        assert r["metric"] == "mse" and r["iterations"] > 0 and isinstance(r["converged"], bool)
        traj = r["trajectory"]
        assert traj["loss"] and len(traj["time"]) <= bench.TRAJECTORY_POINTS
        assert ("r1" in traj) if k.split("|")[2] == "admmirnn" else ("grad_norm" in traj)
    md = (tmp_path / "admm_stability.md").read_text()
    assert "| adding-8 | 3 |" in md and "admmirnn" in md
    assert (tmp_path / "admm_stability.png").stat().st_size > 10_000
    # resumable: a second call finds every run done and trains nothing
    before = (tmp_path / "admm_stability.json").read_text()
    assert bench.main(["stability", "--smoke", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "admm_stability.json").read_text() == before
    # ... and refuses to mix in runs of other settings
    with pytest.raises(SystemExit, match="other settings"):
        bench.main(["stability", "--smoke", "--out", str(tmp_path), "--test-subset", "100"])


def test_stability_scaled_initialisation(bench):
    task = tasks.load("adding", seq_len=5, num_train=8, num_test=4)
    base = task.model(6, seed=1)
    m = bench.scaled_model(task, 6, 2.5, seed=1)
    radius = np.max(np.abs(np.linalg.eigvals(np.asarray(m.W[...]))))
    np.testing.assert_allclose(radius, 2.5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m.U[...]), 2.5 * np.asarray(base.U[...]), rtol=1e-6)


def test_text_smoke(bench, tmp_path, data_dir):
    assert bench.main(["text", "--smoke", "--data-dir", str(data_dir),
                       "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "admm_text.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["admmirnn", "sgd", "adam"]
    assert math.isclose(res["uniform_loss"], math.log(res["vocab"]))
    for r in res["rows"]:
        assert r["iterations"] > 0 and len(r["time"]) == len(r["loss"]) >= 2
        assert r["final_loss"] is None or r["final_loss"] > 0
    assert "| admmirnn |" in (tmp_path / "admm_text.md").read_text()
    assert (tmp_path / "admm_text.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="--methods: unknown method 'lbfgs'"):
        bench.main(["text", "--smoke", "--methods", "sgd,lbfgs", "--out", str(tmp_path)])


def test_schedule_choice_smoke_and_resume(bench, tmp_path, data_dir):
    argv = ["schedule", "--data-dir", str(data_dir), "--train-subset", "640", "--validation",
            "128", "--hidden", "8", "--batch-size", "64", "--budget-seconds", "0.5",
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
