"""Smoke test of the ADMM-iteration vs BPTT-step speed benchmark on real MNIST."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_speed_benchmark_times_both_steps(tmp_path, data_dir):
    out = tmp_path / "speed.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "admm_speed.py"),
                        "--data-dir", str(data_dir), "--seq-lens", "28", "--repeats", "2",
                        "--batch-size", "16", "--hidden", "8", "--matmul-n", "128",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["T"] for row in rows] == [28]
    row = rows[0]
    assert row["admmirnn_seconds"] > 0 and row["bptt_seconds"] > 0
    assert row["admm_over_bptt"] == row["admmirnn_seconds"] / row["bptt_seconds"]
    assert row["admmirnn_flops"] > 0 and len(row["admmirnn_times"]) == 2
    assert out.with_suffix(".png").stat().st_size > 10_000
