"""Smoke test of benchmarks/admm_mnist.py on the real data at a tiny budget."""

import json

from benchmark_scripts import load


def test_admm_mnist_benchmark_runs_and_writes_results(tmp_path, data_dir):
    bench = load("admm_mnist")
    rc = bench.main(["--data-dir", str(data_dir), "--train-size", "512", "--hidden", "16",
                     "--batch-size", "128", "--budget-seconds", "1", "--max-epochs", "2",
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
