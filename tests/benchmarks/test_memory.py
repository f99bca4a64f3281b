"""Smoke tests of benchmarks/memory.py (tiny sizes): the compiled analysis, the measured
subprocess (real row-MNIST) and the blocked-basis scratch are written with their command."""

import json

import pytest
from benchmark_scripts import load


@pytest.fixture(scope="module")
def bench():
    return load("memory")


@pytest.mark.slow  # two ADMMiRNN compilations and a subprocess loading MNIST: ~45 s on 2 cores
def test_admm_compiled_and_measured(bench, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("ADMM_JAX_DATA", str(data_dir))
    assert bench.main(["admm", "--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "admm_memory_smoke.json").read_text())
    assert [r["config"] for r in res["compiled"]] == ["full-batch, reset aux",
                                                      "mini-batch, duals on host"]
    full, host = res["compiled"]
    assert full["compiled"]["device_total"] > host["compiled"]["device_total"] > 0
    assert [m["mode"] for m in res["measured"]] == ["mini"]
    assert all(m["peak_rss"] >= m["baseline_rss"] > 0 for m in res["measured"])
    assert res["meta"]["command"].startswith("python benchmarks/memory.py admm --smoke")


def test_random_bases_blocks_need_less_than_the_whole_basis(bench, tmp_path):
    assert bench.main(["random_bases", "--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "random_bases_memory_smoke.json").read_text())
    assert [r["block_size"] for r in res["blocked"]] == [1, 5, 20]
    assert res["blocked"][0]["vs_materialised"] < 1
    assert res["threefry_over_hash"] > 0
