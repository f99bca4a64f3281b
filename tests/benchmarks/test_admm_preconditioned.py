"""Smoke test of benchmarks/admm_preconditioned.py on the real data at a tiny budget."""

import json

import pytest
from benchmark_scripts import load


def _bench():
    return load("admm_preconditioned")


def test_benchmark_tunes_runs_and_writes_results(tmp_path, data_dir):
    rc = _bench().main([
        "--data-dir", str(data_dir), "--train-subset", "1280", "--hidden", "16",
        "--seeds", "1", "--adam-epochs", "2", "--adam-lrs", "1e-3,1e-2", "--pc-epochs", "1",
        "--pc-weight-decays", "0", "--evals-per-epoch", "2", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "admm_preconditioned_mnist.json").read_text())
    # every grid point was scored on validation and the best one was chosen
    adam_grid = res["validation"]["adam"]
    assert {(r["learning_rate"], r["schedule"]) for r in adam_grid} == {
        (1e-3, "constant"), (1e-3, "cosine"), (1e-2, "constant"), (1e-2, "cosine")}
    best = max(adam_grid, key=lambda r: r["validation_accuracy"])
    assert res["recipes"]["adam"]["learning_rate"] == best["learning_rate"]
    assert len(res["validation"]["admm_preconditioned"]) == 2
    seed = res["seeds"]["0"]
    per_epoch = 1280 // 128
    assert seed["adam"]["steps"] == 2 * per_epoch
    # admm_preconditioned stops at its one-epoch budget; admmirnn stops at Adam's time
    assert seed["admm_preconditioned"]["steps"] <= per_epoch
    assert seed["admmirnn"]["seconds"] <= seed["adam"]["seconds"] + 60
    for m in ("admm_preconditioned", "adam", "admmirnn"):
        assert 0.0 <= seed[m]["accuracy_at_adam_time"] <= 1.0
    assert set(res["summary"]["bar"]) == {"accuracy", "spikes"}
    assert (tmp_path / "admm_preconditioned_mnist.png").stat().st_size > 10_000


@pytest.mark.parametrize("flag, value, message", [
    ("--methods", "adam,sgd", "--methods: expected some of"),
    ("--schedules", "linear", "--schedules: expected constant and/or cosine"),
])
def test_benchmark_rejects_bad_options(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        _bench().main([flag, value])
    assert message in capsys.readouterr().err
