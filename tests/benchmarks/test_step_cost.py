"""Smoke tests of benchmarks/step_cost.py (tiny sizes, a few rounds): each case times its
variants round-robin and writes its results with the command in meta."""

import json

import pytest
from benchmark_scripts import load
from flax import nnx


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


def test_iteration_times_every_variant_against_adam(bench, tmp_path, data_dir):
    assert bench.main(["iteration", "--smoke", "--cg-steps", "1", "--data-dir", str(data_dir),
                       "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "admm_iteration_cost_smoke.json").read_text())
    rows = res["rows"]
    assert [r["method"] for r in rows] == ["adam", "admmirnn", "admmirnn_cg1"]
    assert res["config"]["T"] == 28 and res["config"]["warmup"] == 1
    for r in rows:
        assert len(r["times"]) == 2 and r["flops"] > 0 and r["median_over_adam"] > 0
        assert r["min_seconds"] <= r["median_seconds"]
    assert rows[0]["flops_over_adam"] == 1.0 and rows[0]["median_over_adam"] == 1.0
    assert "| admmirnn_cg1 |" in (tmp_path / "admm_iteration_cost_smoke.md").read_text()
    assert "step_cost.py iteration --smoke" in res["meta"]["command"]


def test_kfac_times_every_method_and_counts_the_step(bench, tmp_path):
    assert bench.main(["kfac", "--smoke", "--stats-every", "2", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "kfac_step_cost_elman_smoke.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["adam", "muon", "admm_preconditioned",
                                                  "admm_kfac", "admm_kfac_sampled",
                                                  "admm_kfac_stats_every_2"]
    assert res["steps_per_round"] % res["refresh_every"] == 0
    for r in res["rows"]:
        assert r["ms_per_step"] > 0 and len(r["ratio_per_round"]) == 2
        assert r["ratio_min"] <= max(r["ratio_per_round"]) <= r["ratio_max"]
        assert r["xla_flops"] > 0 and r["jaxpr_flops"] > 0
    rows = {r["method"]: r for r in res["rows"]}
    # the jaxpr count (scans x length) is Adam's closed-form BPTT count; K-FAC adds work
    assert rows["adam"]["jaxpr_flops"] == pytest.approx(res["closed_form_flops"]["adam"],
                                                        rel=0.05)
    assert rows["admm_kfac"]["jaxpr_flops_vs_adam"] > 1
    assert "| admm_kfac |" in (tmp_path / "kfac_step_cost_elman_smoke.md").read_text()


@pytest.mark.parametrize("name, shape, dtype", [("lstm", (16, 5, 4), "float32"),
                                                ("gru2-imdb", (16, 5), "int32")])
def test_kfac_workloads_beyond_the_package_models(bench, name, shape, dtype):
    """Flax's own cells (StackedRNN), with token inputs through an embedding: the K-FAC
    methods are built for them."""
    model, batches, label = bench.kfac_workload(name, 8, 16, smoke=True)
    assert type(model).__name__ == "StackedRNN" and len(batches) == 8
    x, y = batches[0]
    assert x.shape == shape and str(x.dtype) == dtype
    assert model(x).shape == (16, bench.KFAC_MODELS[name][3])
    params = nnx.state(model, nnx.Param)
    for tx in bench.kfac_methods(model, x).values():
        tx.init(params)
