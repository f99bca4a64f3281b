"""Smoke tests of benchmarks/hdetach.py, its copying and mnist cases (a few seconds)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from benchmark_scripts import load
from flax import nnx

from admm_jax import LSTM


@pytest.fixture(scope="module")
def bench():
    return load("hdetach")


def test_copying_smoke_writes_rows_and_png(tmp_path, bench):
    assert bench.main(["copying", "--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "hdetach_copying_smoke.json").read_text())
    assert [r["method"] for r in result["runs"]] == ["LSTM", "LSTM+h-detach p=0.5"]
    for r in result["runs"]:
        assert r["iters"] == [5, 10] and len(r["acc"]) == len(r["loss"]) == 2
        assert r["stopped"] == "budget" and r["solved_iter"] is None  # 10 steps solve nothing
        assert all(np.isfinite(r["loss"])) and 0.0 <= r["val_acc"] <= 1.0
        assert r["seconds"] == sorted(r["seconds"]) and r["seconds"][0] > 0
    # Same init, same batches: the methods differ only through the detach mask, so the first
    # chunk's losses are close but (p = 0.5 over 25 steps x 5 iterations) not identical.
    a, b = result["runs"]
    assert a["loss"][0] != b["loss"][0] and abs(a["loss"][0] - b["loss"][0]) < 0.05
    assert (tmp_path / "hdetach_copying_smoke.png").stat().st_size > 10_000
    assert result["meta"]["command"].startswith("python benchmarks/hdetach.py copying --smoke")
    # --replot redraws the PNG from the JSON alone
    (tmp_path / "hdetach_copying_smoke.png").unlink()
    assert bench.main(["copying", "--replot", str(tmp_path / "hdetach_copying_smoke.json")]) == 0
    assert (tmp_path / "hdetach_copying_smoke.png").stat().st_size > 10_000


def test_copying_stops_once_target_held_and_resume_keeps_rows(tmp_path, bench):
    # A target of 1% is met at once: each run records its first crossing at the first
    # evaluation point and stops after --hold points in a row, well before its budget.
    args = ["copying", "--smoke", "--out", str(tmp_path), "--target", "0.01", "--hold", "2",
            "--iters", "50"]
    assert bench.main(args) == 0
    path = tmp_path / "hdetach_copying_smoke.json"
    first = json.loads(path.read_text())
    for r in first["runs"]:
        assert r["solved_iter"] == 5 and r["stopped"] == "solved" and r["iters"] == [5, 10]
        assert r["solved_seconds"] == r["seconds"][0]
    s = first["summary"]
    assert [x["solved"] for x in s] == [1, 1] and s[0]["iters_to_target_mean"] == 5.0
    # --resume finds the (T, seed) pair done and recomputes nothing ...
    assert bench.main(args + ["--resume"]) == 0
    assert json.loads(path.read_text())["runs"] == first["runs"]
    # ... and refuses to mix rows of another recipe.
    with pytest.raises(SystemExit, match=r"another recipe: hold=2 \(now 3\)"):
        bench.main(args[:-4] + ["--hold", "3", "--resume"])


def test_copying_train_chunk_compiles_once_for_any_p(bench):
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    train_chunk = bench.make_fns(tx, 25)[0]
    params = nnx.to_pure_dict(nnx.state(LSTM(1, 8, 9, rngs=nnx.Rngs(0), many_to_many=True),
                                        nnx.Param))
    opt_state = tx.init(params)
    for i, p in enumerate((0.0, 0.5, 1.0, 0.25)):
        xs, ys = bench.chunk_batches(5, 4, 3, 0, i)
        params, opt_state, loss, acc = train_chunk(params, opt_state, jnp.asarray(xs),
                                                   jnp.asarray(ys), jax.random.key(i),
                                                   jnp.float32(p))
        assert np.isfinite(float(loss)) and 0.0 <= float(acc) <= 1.0
    assert train_chunk._cache_size() == 1


def test_copying_bad_arguments_name_the_flag(tmp_path, bench):
    with pytest.raises(SystemExit, match="--Ts"):
        bench.main(["copying", "--Ts", "20,x", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--iters: no budget given for T=\[50\]"):
        bench.main(["copying", "--Ts", "20,50", "--iters", "20:100", "--out", str(tmp_path)])


def test_mnist_smoke_on_real_data(tmp_path, data_dir, bench):
    assert bench.main(["mnist", "--smoke", "--data-dir", str(data_dir),
                       "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "hdetach_mnist_smoke.json").read_text())
    assert result["sizes"] == {"train": 50000, "val": 1000, "test": 1000}  # smoke: --eval-size
    assert [(r["layout"], r["method"]) for r in result["runs"]] == [
        ("pixels", "LSTM"), ("pixels", "LSTM+h-detach p=0.25"),
        ("permuted", "LSTM"), ("permuted", "LSTM+h-detach p=0.25")]
    for r in result["runs"]:
        assert r["history"]["epoch"] == [1, 2] and r["iterations"] == 4
        assert r["best_val_epoch"] in (1, 2)
        assert r["best_val_acc"] == max(r["history"]["val_acc"])
        assert 0.0 <= r["test_acc_at_best_val"] <= 1.0
    assert len(result["summary"]) == 4
    assert (tmp_path / "hdetach_mnist_smoke.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="--pixels-per-step"):
        bench.main(["mnist", "--pixels-per-step", "5", "--out", str(tmp_path)])


def test_copying_full_mode_runs_at_a_tiny_budget(tmp_path, bench):
    # The paper's --full loop (fixed training set, per-epoch validation, p off at the end),
    # exercised with 2 epochs of 2 chunks instead of 600 x 1,000 iterations.
    import argparse
    args = argparse.Namespace(Ts=[5], seeds=1, hidden=8, lr=1e-3, clip=1.0, batch=10, chunk=5,
                              out=tmp_path)
    methods = [("LSTM", 0.0), ("LSTM+h-detach p=0.5", 0.5)]
    assert bench.full_mode(args, methods, epochs=2, per_epoch=10, anneal=1,
                                   train_size=100, test_size=20) == 0
    for m in range(2):
        h = json.loads((tmp_path / f"hdetach_copying_full_T5_{m}_0.json").read_text())["history"]
        assert [e["epoch"] for e in h] == [1, 2]
        assert all(0.0 <= e["val_acc"] <= 1.0 and np.isfinite(e["val_loss"]) for e in h)
