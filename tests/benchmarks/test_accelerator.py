"""Smoke test of benchmarks/accelerator.sh: every part of the GPU script runs on CPU at tiny
sizes through the same code paths (the batched modes of the h-detach and random-bases
scripts, the batched-runs throughput case) and leaves its JSON and PNG in $OUT."""

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
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "accelerator.json").read_text())
    assert [p["part"] for p in summary["parts"]] == ["throughput", "copying", "pixel_mnist",
                                                     "rbd_gaussian"]
    assert all(p["wall_seconds"] > 0 and p["command"].startswith("python benchmarks/")
               for p in summary["parts"])
    for stem in ("batched_runs_smoke", "hdetach_copying_smoke", "hdetach_mnist_smoke",
                 "random_bases_gaussian_smoke"):
        assert (tmp_path / f"{stem}.json").is_file() and (tmp_path / f"{stem}.png").is_file()
    copying = json.loads((tmp_path / "hdetach_copying_smoke.json").read_text())
    assert {(r["T"], r["seed"]) for r in copying["runs"]} == {(t, s) for t in (5, 8)
                                                              for s in range(2)}
    assert all(r["runs_in_batch"] == 4 for r in copying["runs"])  # 2 seeds x 2 methods
    mnist = json.loads((tmp_path / "hdetach_mnist_smoke.json").read_text())
    assert len(mnist["runs"]) == 4 and all(r["runs_in_batch"] == 4 for r in mnist["runs"])
    rbd = json.loads((tmp_path / "random_bases_gaussian_smoke.json").read_text())
    assert sorted(rbd["runs"]) == ["rbd/0", "rbd/1", "rbd/2"]
    assert rbd["setting"]["batched"] and rbd["batches"]["rbd"]["runs_in_batch"] == 3
    assert all(len(r["curve"]) == 2 for r in rbd["runs"].values())
