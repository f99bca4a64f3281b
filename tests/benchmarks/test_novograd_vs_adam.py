"""Smoke test of benchmarks/novograd_vs_adam.py on real data at a tiny budget."""

import json

import pytest
from benchmark_scripts import load


@pytest.mark.parametrize("task", ["mnist", "imdb"])
def test_benchmark_tunes_runs_and_writes_results(tmp_path, data_dir, task):
    res = load("novograd_vs_adam").main(["--data-dir", str(data_dir), "--task", task,
                                         "--smoke", "--hidden", "8", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / f"novograd_{task}.json").read_text())
    assert saved["chosen_lr"] == res["chosen_lr"] == {"novograd": 1e-2, "adam": 1e-3,
                                                      "adamw": 1e-3}
    for o in ("novograd", "adam", "adamw"):
        s = res["summary"][o]
        assert 0.0 <= s["test_acc_mean"] <= 100.0 and s["seconds_mean"] > 0
    # NovoGrad keeps one scalar per leaf for its second moment, Adam a full copy
    b = {o: res["summary"][o]["state_bytes"] for o in ("novograd", "adam")}
    assert b["novograd"] < 0.6 * b["adam"]
    assert (tmp_path / f"novograd_{task}.png").stat().st_size > 10_000


def test_benchmark_rejects_bad_learning_rates(capsys):
    with pytest.raises(SystemExit):
        load("novograd_vs_adam").main(["--lrs-adam", "0,-1"])
    assert "--lrs-adam" in capsys.readouterr().err
