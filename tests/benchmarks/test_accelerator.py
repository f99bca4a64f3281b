"""Smoke test of benchmarks/accelerator.sh: every part of the GPU script runs on CPU at tiny
sizes through the same code paths (the batched modes of hdetach.py and random_bases.py, the
batched-runs throughput case of step_cost.py), in the script's one Python process, and leaves
its JSON and PNG in $OUT. It is also the smoke test of ``step_cost.py runs``."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_accelerator_script_smoke_writes_every_part(tmp_path, data_dir):
    env = {**os.environ, "OUT": str(tmp_path), "ADMM_JAX_DATA": str(data_dir),
           "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    r = subprocess.run(["bash", str(ROOT / "benchmarks/accelerator.sh"), "--smoke"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "accelerator.json").read_text())
    assert [p["part"] for p in summary["parts"]] == ["throughput", "copying", "pixel_mnist",
                                                     "rbd_gaussian"]
    assert all(p["wall_seconds"] > 0 and p["error"] is None for p in summary["parts"])
    assert [p["command"].split()[1:3] for p in summary["parts"]] == [
        ["benchmarks/step_cost.py", "runs"], ["benchmarks/hdetach.py", "copying"],
        ["benchmarks/hdetach.py", "mnist"], ["benchmarks/random_bases.py", "--smoke"]]
    assert all(p["command"].startswith("python ") for p in summary["parts"])
    for stem in ("batched_runs_smoke", "hdetach_copying_smoke", "hdetach_mnist_smoke",
                 "random_bases_gaussian_smoke"):
        assert (tmp_path / f"{stem}.json").is_file() and (tmp_path / f"{stem}.png").is_file()
    # step_cost.py runs: S runs batched (vmap, map) against one run's program called S times
    runs = json.loads((tmp_path / "batched_runs_smoke.json").read_text())
    assert [(r["workload"], r["runs"]) for r in runs["rows"]] == [("copying", 2)]
    for row in runs["rows"]:
        for v in ("sequential", "vmap", "map"):
            assert row[f"{v}_steps_per_s"] > 0 and row[f"{v}_temp_mb"] > 0
            assert row[f"{v}_faults_per_step"] >= 0
        assert row["sequential_x_sequential"] == 1.0
    assert "| workload |" in (tmp_path / "batched_runs_smoke.md").read_text()
    # hdetach.py copying/mnist --batched: 2 seeds x 2 methods in one batch
    copying = json.loads((tmp_path / "hdetach_copying_smoke.json").read_text())
    assert {(r["T"], r["seed"]) for r in copying["runs"]} == {(5, 0), (5, 1)}
    assert all(r["runs_in_batch"] == 4 and r["iters"] == [5, 10] for r in copying["runs"])
    assert copying["config"]["batched"] and (tmp_path / "copying_ckpt" / "T5").is_dir()
    mnist = json.loads((tmp_path / "hdetach_mnist_smoke.json").read_text())
    assert len(mnist["runs"]) == 4 and all(r["runs_in_batch"] == 4 for r in mnist["runs"])
    assert all(r["history"]["epoch"] == [1, 2] for r in mnist["runs"])
    # random_bases.py --batched: the three seeds of the Gaussian basis as one batch
    rbd = json.loads((tmp_path / "random_bases_gaussian_smoke.json").read_text())
    assert sorted(rbd["runs"]) == ["rbd/0", "rbd/1", "rbd/2"]
    assert rbd["setting"]["batched"] and rbd["batches"]["rbd"]["runs_in_batch"] == 3
    assert all(len(r["curve"]) == 2 for r in rbd["runs"].values())
