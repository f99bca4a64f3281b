"""Smoke test of benchmarks/admm_stability.py (--smoke: the adding task, seconds)."""

import json

from benchmark_scripts import load


def test_stability_study_smoke_runs_every_cell_and_resumes(tmp_path):
    bench = load("admm_stability")
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
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
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "admm_stability.json").read_text() == before


def test_stability_scaled_initialisation():
    import numpy as np

    from admm_jax import tasks

    bench = load("admm_stability")
    task = tasks.load("adding", seq_len=5, num_train=8, num_test=4)
    base = task.model(6, seed=1)
    m = bench.scaled_model(task, 6, 2.5, seed=1)
    radius = np.max(np.abs(np.linalg.eigvals(np.asarray(m.W[...]))))
    np.testing.assert_allclose(radius, 2.5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m.U[...]), 2.5 * np.asarray(base.U[...]), rtol=1e-6)
