"""Smoke test of benchmarks/admm_text.py (--smoke: 30 IMDb reviews, seconds)."""

import json
import math

from benchmark_scripts import load


def test_text_benchmark_smoke(tmp_path, data_dir):
    bench = load("admm_text")
    assert bench.main(["--smoke", "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "admm_text.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["admmirnn", "sgd", "adam"]
    assert math.isclose(res["uniform_loss"], math.log(res["vocab"]))
    for r in res["rows"]:
        assert r["iterations"] > 0 and len(r["time"]) == len(r["loss"]) >= 2
        assert r["final_loss"] is None or r["final_loss"] > 0
    assert "| admmirnn |" in (tmp_path / "admm_text.md").read_text()
    assert (tmp_path / "admm_text.png").stat().st_size > 10_000
