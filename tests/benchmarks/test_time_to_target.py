"""Smoke tests of benchmarks/time_to_target.py on the real data at a tiny budget: each
comparison (kfac, preconditioned, novograd) tunes, runs its seeds and writes its results."""

import json

import pytest
from benchmark_scripts import load


def _bench():
    return load("time_to_target")


def test_smoke_tunes_every_method_runs_every_seed_and_writes_results(tmp_path, data_dir):
    bench = _bench()
    methods = ("admm_kfac", "adam", "admmirnn")
    rc = bench.main(["--data-dir", str(data_dir), "--smoke", "--methods", ",".join(methods),
                     "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "time_to_target_mnist_elman_smoke.json").read_text())
    # every method but admmirnn scored its (smoke: first learning rate) grid on validation,
    # and kept the best recipe
    for m in ("admm_kfac", "adam"):
        scores = res["validation"][m]
        assert {(r["learning_rate"], r["schedule"]) for r in scores} == {
            (bench.COMPARISONS["kfac"].grids("mnist")[m]["learning_rate"][0], s)
            for s in ("constant", "cosine")}
        best = max(scores, key=lambda r: r["validation_accuracy"])
        assert res["recipes"][m] == {"learning_rate": best["learning_rate"],
                                     "schedule": best["schedule"]}
    assert res["recipes"]["admmirnn"] == {}
    seed = res["seeds"]["0"]
    steps = int(0.5 * (2000 // 128))
    for m in methods:
        assert seed[m]["steps"] == steps
        times = [e["time"] for e in seed[m]["evals"]]
        assert times == sorted(times) and times[0] == 0.0
        row = res["summary"][m]
        assert 0.0 <= row["final_accuracy_mean"] <= 1.0
        assert row["seconds_to_target_mean"] <= seed[m]["seconds"] + 1e-9
    # the target is tuned Adam's best test accuracy, rounded down to 0.001
    best_adam = max(e["accuracy"] for e in seed["adam"]["evals"])
    assert res["target"] == pytest.approx(int(best_adam * 1000) / 1000)
    assert res["summary"]["adam"]["seeds_reaching_target"] == 1
    assert "| admm_kfac |" in res["table"]
    assert (tmp_path / "time_to_target_mnist_elman_smoke.png").stat().st_size > 10_000


@pytest.mark.slow  # the default suite runs the row-MNIST smoke test of the protocol
def test_smoke_imdb_with_a_replaced_grid(tmp_path, data_dir):
    """Token inputs (IMDb, the token-scale initialisation), ``--lrs`` replacing a grid (smoke:
    its first rate only), and a time-to-target ratio that is None, not a division by zero,
    when tuned Adam's best test accuracy is its untrained start."""
    bench = _bench()
    rc = bench.main(["--data-dir", str(data_dir), "--smoke", "--task", "imdb", "--methods",
                     "admm_kfac,adam", "--lrs", "adam=0.002,0.01", "--lrs", "admm_kfac=0.1,0.2",
                     "--token-init", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "time_to_target_imdb_elman_tokeninit_smoke.json").read_text())
    assert res["meta"]["command"].count(" --token-init") == 1
    assert res["meta"]["grids"]["adam"] == {"learning_rate": [0.002, 0.01]}
    assert {r["learning_rate"] for r in res["validation"]["adam"]} == {0.002}
    assert {r["learning_rate"] for r in res["validation"]["admm_kfac"]} == {0.1}
    assert "--lrs admm_kfac=0.1,0.2 --lrs adam=0.002,0.01" in res["meta"]["command"]
    for row in res["summary"].values():
        adam = res["summary"]["adam"]["seconds_to_target_mean"]
        if adam == 0:
            assert row["time_to_target_vs_adam"] is None
        else:
            assert row["time_to_target_vs_adam"] == pytest.approx(
                row["seconds_to_target_mean"] / adam)
    assert "| admm_kfac |" in res["table"]


@pytest.mark.slow  # the default suite runs the row-MNIST smoke test of the protocol
def test_preconditioned_stops_every_method_at_adams_time(tmp_path, data_dir):
    """The preconditioned comparison: Adam's grid and admm_preconditioned's schedule x weight
    decay x budget scored on validation; admm_preconditioned stops at its budget, admmirnn
    (no budget) at Adam's final training time."""
    bench = _bench()
    rc = bench.main([
        "--compare", "preconditioned", "--data-dir", str(data_dir), "--train-subset", "1280",
        "--test-subset", "500", "--hidden", "16", "--seeds", "1", "--epochs", "2",
        "--lrs", "adam=1e-3,1e-2", "--schedules", "cosine", "--budgets",
        "admm_preconditioned=1", "--evals-per-epoch", "2", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "admm_preconditioned_mnist_elman.json").read_text())
    assert "--compare preconditioned" in res["meta"]["command"]
    assert "--budgets admm_preconditioned=1" in res["meta"]["command"]
    adam_grid = res["validation"]["adam"]
    assert {(r["learning_rate"], r["schedule"]) for r in adam_grid} == {
        (1e-3, "cosine"), (1e-2, "cosine")}
    best = max(adam_grid, key=lambda r: r["validation_accuracy"])
    assert res["recipes"]["adam"]["learning_rate"] == best["learning_rate"]
    assert {(r["epochs"], r["weight_decay"]) for r in res["validation"]["admm_preconditioned"]} \
        == {(1.0, 0.0), (1.0, 0.3)}
    assert res["recipes"]["admmirnn"] == {"epochs": None}
    seed = res["seeds"]["0"]
    per_epoch = 1280 // 128
    assert seed["adam"]["steps"] == 2 * per_epoch
    assert seed["admm_preconditioned"]["steps"] <= per_epoch
    # admmirnn's last chunk started before Adam's final time: at most one chunk past it
    assert 0 < seed["admmirnn"]["steps"] and len(seed["adam"]["epoch_loss"]) == 2
    for m in ("admm_preconditioned", "adam", "admmirnn"):
        assert 0.0 <= res["summary"][m]["accuracy_at_adam_time_mean"] <= 1.0
        assert len(res["summary"][m]["max_epoch_loss_rise"]) == 1
    assert (tmp_path / "admm_preconditioned_mnist_elman.png").stat().st_size > 10_000


def test_novograd_reports_half_of_adams_state(tmp_path, data_dir):
    bench = _bench()
    rc = bench.main(["--compare", "novograd", "--model", "lstm", "--data-dir", str(data_dir),
                     "--smoke", "--hidden", "8", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "novograd_mnist_lstm_smoke.json").read_text())
    assert res["recipes"] == {"novograd": {"learning_rate": 3e-3, "schedule": "constant",
                                           "weight_decay": 0.0},
                              "adam": {"learning_rate": 1e-3, "schedule": "constant"},
                              "adamw": {"learning_rate": 1e-3, "schedule": "constant",
                                        "weight_decay": 1e-2}}
    s = res["summary"]
    for m in ("novograd", "adam", "adamw"):
        assert 0.0 <= s[m]["final_accuracy_mean"] <= 1.0 and res["seeds"]["0"][m]["seconds"] > 0
    # NovoGrad keeps one scalar per leaf for its second moment, Adam a full copy
    assert s["novograd"]["state_bytes"] < 0.6 * s["adam"]["state_bytes"]
    assert s["adamw"]["state_bytes"] == s["adam"]["state_bytes"]


def test_resume_key_ignores_only_the_seed_count():
    no_seeds = _bench()._no_seeds
    a = "python b.py --task imdb --seeds 5 --epochs 3"
    assert no_seeds(a) == no_seeds(a.replace("--seeds 5", "--seeds 3"))
    assert no_seeds(a) != no_seeds(a.replace("--epochs 3", "--epochs 4"))


@pytest.mark.parametrize("flag, value, message", [
    ("--lrs", "adam=1e-3,3e-3,1e-2", "--lrs: every tuned method needs the same number"),
    ("--lrs", "sgd=0.1,0.2", "--lrs: expected METHOD=LR,LR,... with METHOD one of"),
    ("--lrs", "adam=fast,0.1", "--lrs: expected positive numbers after adam="),
    ("--lrs", "adam=-1,0.1", "--lrs: expected positive numbers after adam="),
    ("--methods", "adam,sgd", "--methods: expected some of"),
    ("--methods", "muon", "--methods: must include adam"),
    ("--schedules", "linear", "--schedules: expected constant and/or cosine"),
    ("--token-init", "--smoke", "--token-init: for token inputs (--task imdb) only"),
    ("--budgets", "adam=3", "--budgets: expected METHOD=EPOCHS,EPOCHS,... with METHOD one of"),
    ("--weight-decays", "admm_kfac=-1", "--weight-decays: expected non-negative numbers"),
    ("--compare", "sgd", "argument --compare: invalid choice"),
])
def test_benchmark_rejects_bad_options(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        _bench().main([flag, value])
    assert message in capsys.readouterr().err
