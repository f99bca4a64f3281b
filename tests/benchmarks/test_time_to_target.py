"""Smoke test of benchmarks/time_to_target.py on the real data at a tiny budget."""

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
            (bench.GRIDS[m][0], s) for s in ("constant", "cosine")}
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
    assert res["meta"]["grids"]["adam"] == [0.002, 0.01]
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
])
def test_benchmark_rejects_bad_options(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        _bench().main([flag, value])
    assert message in capsys.readouterr().err
