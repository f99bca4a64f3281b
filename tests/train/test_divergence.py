"""Divergence guard: a NaN in the data or a huge learning rate stops the run with a
DivergenceError that names the iteration and the last good metrics, the model keeps the last
good weights and the last checkpoint stays the last good one; ADMMiRNN rejects a non-finite
iteration itself (retrying it with larger penalties: tests/admm/test_retry.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from admm_jax import DivergenceError, ElmanRNN, admmirnn, optimizers
from admm_jax.train import Callback, Checkpoint, checkpoint_steps, fit, load_checkpoint


def tiny_data(n=64, t=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 3)).astype(np.float32)
    return x, (x[:, :, 0].sum(1) > 0).astype(np.int32)


class Sabotage(Callback):
    """After the first epoch: poison the training inputs in place, or set a huge learning rate
    (an ``optax.inject_hyperparams`` state)."""

    def __init__(self, x, how):
        self.x, self.how = x, how

    def on_epoch_end(self, loop, row):
        if loop.epoch != 1:
            return
        if self.how == "nan_data":
            self.x[:, 2, 1] = np.nan
        else:
            loop.opt_state.hyperparams["learning_rate"] = jnp.asarray(3e38, jnp.float32)


@pytest.mark.parametrize("name,how", [("adam", "nan_data"), ("sgd", "huge_lr"),
                                      ("admmirnn", "nan_data")])
def test_divergence_raises_and_keeps_the_last_good_checkpoint(tmp_path, name, how):
    x, y = tiny_data()
    if name == "admmirnn":
        tx = admmirnn()
    else:
        tx = optax.with_extra_args_support(optax.inject_hyperparams(
            getattr(optax, name))(learning_rate=1e-2))
    model = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    # the Checkpoint comes first: it saves epoch 0's state before the sabotage
    cbs = [Checkpoint(tmp_path), Sabotage(x, how)]
    with pytest.raises(DivergenceError) as e:
        fit(model, tx, (x, y), epochs=3, batch_size=16, callbacks=cbs)
    err = e.value
    first_bad = 5 if how == "nan_data" else err.iteration  # sgd needs a step or two to overflow
    assert err.iteration == first_bad and 5 <= err.iteration <= 8
    assert err.last_good["iteration"] == err.iteration - 1
    assert math.isfinite(err.last_good["loss"])
    assert f"diverged at iteration {err.iteration}" in str(err)
    assert f"iteration={err.iteration - 1}" in str(err)
    assert not all(math.isfinite(v) for v in err.metrics.values())
    assert err.history.steps["iteration"] == list(range(1, err.iteration))
    # the checkpoint of epoch 0 is untouched, and the model holds the last good (finite) weights
    assert checkpoint_steps(tmp_path) == [4]
    params = nnx.state(model, nnx.Param)
    r = load_checkpoint(tmp_path, params, tx.init(params))
    assert r.history.steps["iteration"] == [1, 2, 3, 4]
    for k in "UWbVc":
        w = np.asarray(getattr(model, k)[...])
        assert np.isfinite(w).all()
        if err.iteration == 5:  # the last good step is the checkpointed one
            np.testing.assert_array_equal(w, np.asarray(r.params[k][...]))


def test_nan_in_the_data_is_refused_before_training(tmp_path):
    x, y = tiny_data()
    x[7, 3, 2] = np.inf
    with pytest.raises(ValueError, match=r"train_data inputs: expected finite values, got 1 "
                                         r"NaN/inf \(first at index \(7, 3, 2\)"):
        fit(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), optimizers.get("adam"), (x, y),
            iterations=1, callbacks=[Checkpoint(tmp_path)])
    assert checkpoint_steps(tmp_path) == []


def test_admm_rejects_a_non_finite_iteration():
    x, y = tiny_data(16)
    params = nnx.state(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), nnx.Param)
    tx = admmirnn(num_samples=16, seq_len=5, sweep="backward")  # per-sample multipliers
    update = jax.jit(lambda s, p, xx: tx.update(None, s, p, inputs=xx, targets=y))
    s0 = tx.init(params)
    _, s1 = update(s0, params, x)  # one good iteration: multipliers become nonzero
    bad = x.copy()
    bad[3, 1, 0] = np.nan
    u, s2 = update(s1, params, bad)
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree_util.tree_leaves(u))
    assert int(s2.count) == int(s1.count) == 1
    assert math.isnan(float(s2.diagnostics.loss))
    for a, b in zip(jax.tree_util.tree_leaves((s1.duals, s1.rho)),
                    jax.tree_util.tree_leaves((s2.duals, s2.rho)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_policy_arguments_are_checked():
    x, y = tiny_data(32)
    m = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="on_divergence: expected one of"):
        fit(m, optimizers.get("adam"), (x, y), iterations=1, on_divergence="ignore")
