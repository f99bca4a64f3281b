"""Smoke tests of benchmarks/random_bases.py: its table1 case (the default) on real data, its
speed case on random images."""

import json

from benchmark_scripts import load


def test_table1_runner_writes_curves_and_resumes(tmp_path, data_dir):
    bench = load("random_bases")
    out = tmp_path / "rb.json"
    args = ["--data-dir", str(data_dir), "--smoke", "--seeds", "0,1", "--out", str(out)]
    result = bench.main(args)
    assert set(result["runs"]) == {f"{m}/{s}" for m in ("rbd", "fpd", "sgd") for s in (0, 1)}
    for r in result["runs"].values():
        assert [c["epoch"] for c in r["curve"]] == [1, 2]
        assert all(0.0 <= c["val_acc"] <= 100.0 for c in r["curve"])
        assert r["curve"][-1]["seconds"] >= r["curve"][0]["seconds"] > 0
    assert json.loads(out.read_text())["runs"] == json.loads(json.dumps(result["runs"]))
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert result["meta"]["command"].startswith("python benchmarks/random_bases.py --data-dir")
    # resume: nothing left to do at the same budget, the curves are kept unchanged
    again = bench.main(args + ["--resume"])
    assert again["runs"] == json.loads(json.dumps(result["runs"]))


def test_step_cost_benchmark_reports_ratios(tmp_path):
    bench = load("random_bases")
    result = bench.main(["speed", "--smoke", "--out", str(tmp_path / "s.json")])
    ratios = result["ratio_to_sgd_median"]
    assert ratios["sgd"] == 1.0
    assert "rbd defaults" in ratios and "rbd hadamard (SRHT)" in ratios
    assert all(r > 0 for r in ratios.values())
    assert json.loads((tmp_path / "s.json").read_text())["floor"]["basis_entries"] == 250 * 101770
    assert (tmp_path / "s.png").stat().st_size > 10_000
    assert "| rbd defaults |" in (tmp_path / "s.md").read_text()
    meta = json.loads((tmp_path / "s.json").read_text())["meta"]
    assert meta["command"].startswith("python benchmarks/random_bases.py speed --smoke")
