"""Checkpoints: exact round trips, partial writes ignored, and a run killed mid-way (SIGKILL)
resumes bit for bit like the uninterrupted run, for Adam and ADMMiRNN."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from admm_jax import ElmanRNN, optimizers
from admm_jax.train import (
    Callback,
    Checkpoint,
    History,
    Restored,
    checkpoint_steps,
    fit,
    load_checkpoint,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_data(n=64, t=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 3)).astype(np.float32)
    return x, (x[:, :, 0].sum(1) > 0).astype(np.int32)


def assert_trees_identical(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class Stop(Callback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, loop, row):
        loop.stop = loop.iteration >= self.at


def test_round_trip_keeps_structure_dtypes_and_typed_keys(tmp_path):
    """A state with NamedTuples, bfloat16, int, bool, empty arrays and a typed PRNG key."""
    x, y = tiny_data(32)
    model = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    tx = optimizers.get("admmirnn", num_samples=32, seq_len=5, auxiliaries="persist",
                        sweep="backward")
    params = nnx.state(model, nnx.Param)
    state = (tx.init(params), {"key": jax.random.key(3), "half": jnp.ones(3, jnp.bfloat16)})

    class Fake:  # the Loop attributes a Checkpoint reads
        pass

    loop = Fake()
    loop.params, loop.opt_state, loop.position, loop.iteration = params, state, (2, 1), 9
    loop.history = History()
    loop.history.append("steps", iteration=1, loss=float("nan"))
    ck = Checkpoint(tmp_path)
    ck.save(loop)
    ck.close()
    assert checkpoint_steps(tmp_path) == [9]
    template = jax.tree_util.tree_map(jnp.zeros_like, (params, state))
    r = load_checkpoint(tmp_path, *template)
    assert_trees_identical((r.params, r.opt_state), (params, state))
    assert type(r.opt_state[0]).__name__ == "ADMMiRNNState"
    assert r.position == (2, 1) and r.history == loop.history
    # a template of another model is refused, naming the argument
    other = nnx.state(ElmanRNN(3, 9, 2, rngs=nnx.Rngs(0)), nnx.Param)
    with pytest.raises(ValueError, match="params, opt_state: .*does not match"):
        load_checkpoint(tmp_path, other, (tx.init(other), state[1]))
    with pytest.raises(ValueError, match="opt_state: the checkpoint holds 20 arrays"):
        load_checkpoint(tmp_path, params, tx.init(params))
    with pytest.raises(FileNotFoundError, match="directory"):
        load_checkpoint(tmp_path / "none", params, state)


def test_partial_checkpoint_is_ignored_in_favour_of_the_previous(tmp_path):
    x, y = tiny_data()
    model = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    tx = optimizers.get("adam")
    fit(model, tx, (x, y), epochs=2, batch_size=16, callbacks=[Checkpoint(tmp_path)])
    assert checkpoint_steps(tmp_path) == [4, 8]
    params = nnx.state(model, nnx.Param)
    good = load_checkpoint(tmp_path, params, tx.init(params))
    # 1) a crash mid-write leaves orbax's temporary folder: never read
    tmp = tmp_path / "12.orbax-checkpoint-tmp-1700000000000000"
    shutil.copytree(tmp_path / "8", tmp)
    for f in tmp.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated files
    assert checkpoint_steps(tmp_path) == [4, 8]
    r = load_checkpoint(tmp_path, params, tx.init(params))
    assert_trees_identical(r.params, good.params)
    assert r.history.steps["iteration"][-1] == 8
    # 2) a final-named folder whose files were lost: warn and fall back to the previous one
    shutil.copytree(tmp_path / "8", tmp_path / "12")
    for f in (tmp_path / "12").rglob("*"):
        if f.is_file() and f.name not in ("commit_success.txt", "_CHECKPOINT_METADATA"):
            f.unlink()
    with pytest.warns(RuntimeWarning, match="could not read"):
        r = load_checkpoint(tmp_path, params, tx.init(params))
    assert_trees_identical(r.params, good.params)


def test_checkpoint_refuses_to_mix_runs(tmp_path):
    x, y = tiny_data()
    fit(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), optimizers.get("adam"), (x, y), epochs=1,
        batch_size=16, callbacks=[Checkpoint(tmp_path)])
    with pytest.raises(ValueError, match="directory: .* holds a checkpoint of iteration 4"):
        fit(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), optimizers.get("adam"), (x, y), epochs=1,
            batch_size=16, callbacks=[Checkpoint(tmp_path)])
    assert checkpoint_steps(tmp_path) == [4]


def test_same_seed_same_run_in_process():
    """Determinism on CPU: two runs from one seed agree bit for bit (weights and metrics)."""
    x, y = tiny_data()
    runs = []
    for _ in range(2):
        m = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
        h = fit(m, optax.with_extra_args_support(optax.adam(1e-2)), (x, y), epochs=2,
                batch_size=16, evaluation=(x, y))
        runs.append((nnx.state(m, nnx.Param), h))
    assert_trees_identical(runs[0][0], runs[1][0])
    for table in ("steps", "evals"):
        a, b = getattr(runs[0][1], table), getattr(runs[1][1], table)
        for k in a:
            if k not in ("seconds", "time"):
                assert a[k] == b[k], (table, k)


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    return [sys.executable, "-m", "admm_jax.cli", *args], dict(cwd=cwd, env=env)


def _finished_steps(d):
    return [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.is_dir() else []


@pytest.mark.parametrize("name", ["adam", "admmirnn"])
def test_killed_run_resumes_bit_identically(tmp_path, name):
    """SIGKILL a CLI run that checkpoints every step once it is past step 5, resume it, and
    compare weights, optimizer state and every step's metrics with an uninterrupted run."""
    base = ["train", "--task", "adding", "--seq-len", "6", "--num-train", "64", "--num-test",
            "16", "--hidden", "8", "--batch-size", "16", "--no-progress", "--optimizer", name,
            "--epochs", "6", "--out"]
    cmd, kw = _cli([*base, "full", "--checkpoint-dir", "full"], tmp_path)
    straight = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)

    cmd, kw = _cli([*base, "cut", "--checkpoint-dir", "cut", "--checkpoint-every", "1"],
                   tmp_path)
    victim = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    deadline = time.time() + 240
    while max(_finished_steps(tmp_path / "cut"), default=0) < 5:
        assert victim.poll() is None, victim.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = max(_finished_steps(tmp_path / "cut"))
    assert killed_at < 24, "the run finished before it was killed"

    out, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err.decode()[-3000:]
    cmd, kw = _cli([*base, "cut", "--checkpoint-dir", "cut", "--checkpoint-every", "1",
                    "--resume"], tmp_path)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at epoch" in r.stdout

    from admm_jax import tasks

    task = tasks.load("adding", seq_len=6, num_train=64, num_test=16)
    params = nnx.state(task.model(8), nnx.Param)
    tx = task.optimizer(name)
    a = load_checkpoint(tmp_path / "full", params, tx.init(params))
    b = load_checkpoint(tmp_path / "cut", params, tx.init(params))
    assert a.position == b.position == (6, 0)
    assert_trees_identical((a.params, a.opt_state), (b.params, b.opt_state))
    assert b.history.steps["iteration"] == list(range(1, 25))
    for table in ("steps", "epochs", "evals"):
        ta, tb = getattr(a.history, table), getattr(b.history, table)
        assert set(ta) == set(tb)
        for k in ta:
            if k not in ("seconds", "time"):
                assert ta[k] == tb[k], (table, k)  # bitwise: floats compared with ==


def test_iterations_count_the_whole_run_on_resume(tmp_path):
    x, y = tiny_data(32, t=4)
    full = ElmanRNN(3, 4, 2, rngs=nnx.Rngs(0))
    h_full = fit(full, optimizers.get("adam"), (x, y), iterations=10, batch_size=8)
    part = ElmanRNN(3, 4, 2, rngs=nnx.Rngs(0))
    fit(part, optimizers.get("adam"), (x, y), iterations=4, batch_size=8,
        callbacks=[Checkpoint(tmp_path)])
    resumed = ElmanRNN(3, 4, 2, rngs=nnx.Rngs(0))
    params = nnx.state(resumed, nnx.Param)
    tx = optimizers.get("adam")
    r = load_checkpoint(tmp_path, params, tx.init(params))
    nnx.update(resumed, r.params)
    h = fit(resumed, tx, (x, y), iterations=10, batch_size=8, resume=r)
    assert h.meta["iterations"] == 10 == len(h.steps["loss"])
    assert h.steps["loss"] == h_full.steps["loss"]
    assert_trees_identical(nnx.state(resumed, nnx.Param), nnx.state(full, nnx.Param))
    # already past the total: nothing more is run
    h2 = fit(resumed, tx, (x, y), iterations=3, batch_size=8, resume=Restored(history=h))
    assert h2.meta["iterations"] == 10


def test_a_checkpoint_of_another_width_blames_the_parameters(tmp_path):
    x, y = tiny_data(16, t=4)
    fit(ElmanRNN(3, 4, 2, rngs=nnx.Rngs(0)), optimizers.get("adam"), (x, y), iterations=1,
        batch_size=8, callbacks=[Checkpoint(tmp_path)])
    p5 = nnx.state(ElmanRNN(3, 5, 2, rngs=nnx.Rngs(0)), nnx.Param)
    with pytest.raises(ValueError,
                       match=r"^params, opt_state: .*: params leaf \['U'\] saved as "):
        load_checkpoint(tmp_path, p5, optimizers.get("adam").init(p5))
