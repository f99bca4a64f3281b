"""admm_jax.train.Trainer: a run advanced on demand is the run fit makes; runs stepped in turn
do not disturb each other; evaluation stays out of the training time; failures are clear."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from admm_jax import ElmanRNN, optimizers
from admm_jax.train import DivergenceError, Stop, Trainer, fit


def tiny_data(n=64, t=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    return x, y


def model():
    return ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))


def weights(m):
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(nnx.state(m, nnx.Param))]


def build(name, m, x):
    kw = {"model": m, "inputs": x[:1]} if optimizers.entry(name).takes_model else {}
    return optimizers.get(name, **kw)


@pytest.mark.parametrize("name", ["adam", "admm_kfac"])
def test_chunked_run_is_fits_run(name):
    """Steps taken 3 + 5 + 4 at a time give fit's 12 steps: same losses, same weights."""
    x, y = tiny_data()
    m_fit, m_trainer = model(), model()
    h = fit(m_fit, build(name, m_fit, x), (x, y), iterations=12, batch_size=16)
    t = Trainer(m_trainer, build(name, m_trainer, x), (x, y), batch_size=16)
    assert [t.run(k) for k in (3, 5, 4)] == [3, 5, 4]
    t.finish()
    assert t.history.steps["loss"] == h.steps["loss"]
    assert t.history.epochs["loss"] == h.epochs["loss"]  # 4 steps an epoch: 3 epoch rows
    for a, b in zip(weights(m_fit), weights(m_trainer), strict=True):
        np.testing.assert_array_equal(a, b)
    assert t.uses_gradients is not optimizers.takes_batch(name)


def test_runs_stepped_in_turn_are_runs_alone():
    """Round-robin (the benchmarks' schedule) changes no run's numbers."""
    x, y = tiny_data()
    alone = {}
    for name in ("adam", "admm_kfac"):
        m = model()
        t = Trainer(m, build(name, m, x), (x, y), batch_size=16)
        t.run(10)
        alone[name] = t.history.steps["loss"]
    models = {n: model() for n in alone}
    runs = {n: Trainer(m, build(n, m, x), (x, y), batch_size=16) for n, m in models.items()}
    while any(r.loop.iteration < 10 for r in runs.values()):
        r = min((r for r in runs.values() if r.loop.iteration < 10),
                key=lambda r: r.loop.train_seconds)
        r.run(min(3, 10 - r.loop.iteration))
    for n, r in runs.items():
        assert r.history.steps["loss"] == alone[n], n


def test_epochs_end_the_iterator():
    x, y = tiny_data()
    t = Trainer(model(), optax.adam(1e-2), (x, y), batch_size=16, stop=Stop(epochs=2))
    assert t.run(100) == 8
    assert t.step() == (None, None)
    assert t.history.epochs["epoch"] == [0, 1]


def test_evaluation_is_recorded_and_not_timed():
    x, y = tiny_data()
    t = Trainer(model(), optax.adam(1e-2), (x, y), batch_size=16, evaluation=(x, y))
    t.run(4)
    seconds = t.loop.train_seconds
    row = t.evaluate()
    assert t.loop.train_seconds == seconds and row["time"] == seconds
    assert t.history.meta["eval_seconds"] > 0
    assert row["iteration"] == 4 and row["epoch"] == 1
    assert 0.0 <= row["accuracy"] <= 1.0 and math.isfinite(row["loss"])
    other = t.evaluate((x[:10], y[:10]), batch_size=4)
    assert t.history.evals["iteration"] == [4, 4] and other["loss"] != row["loss"]


def test_divergence_keeps_the_last_good_weights():
    x, y = tiny_data()
    m = model()
    nan_from_step_4 = optax.sgd(lambda count: jnp.where(count < 3, 0.1, jnp.nan))
    t = Trainer(m, nan_from_step_4, (x, y), batch_size=16)
    with pytest.raises(DivergenceError) as err:
        t.run(20)
    assert err.value.iteration == 4 and t.loop.iteration == 3
    assert t.history.meta["diverged_at"] == err.value.iteration
    assert all(np.isfinite(w).all() for w in weights(m))  # finish() wrote the last good ones
    assert len(t.history.steps.get("loss", [])) == t.loop.iteration


def test_bad_arguments_name_themselves():
    x, y = tiny_data()
    with pytest.raises(TypeError, match="model"):
        Trainer("not a model", optax.adam(1e-2), (x, y))
    with pytest.raises(TypeError, match="seed"):
        Trainer(model(), optax.adam(1e-2), (x, y), seed=1.5)
    with pytest.raises(ValueError, match="evaluation.data"):
        Trainer(model(), optax.adam(1e-2), (x, y), evaluation=(x, y[:5]))
    t = Trainer(model(), optax.adam(1e-2), (x, y), batch_size=16)
    with pytest.raises(ValueError, match="steps"):
        t.run(0)
    with pytest.raises(ValueError, match="data"):
        t.evaluate()


def test_the_stop_rule_ends_the_run_and_sizes_the_loop():
    x, y = tiny_data()
    t = Trainer(model(), optax.adam(1e-2), (x, y), batch_size=16, stop=Stop(iterations=6))
    assert t.loop.total_iterations == 6 and t.loop.budget_seconds is None
    assert t.run(100) == 6 and t.step() == (None, None)
    t = Trainer(model(), optax.adam(1e-2), (x, y), batch_size=16,
                stop=Stop(budget_seconds=1e-9))
    assert t.loop.total_iterations is None and t.run(100) == 1  # the first step spends it
    t = Trainer(model(), optax.adam(1e-2), (x, y), batch_size=16)
    t.run(2)
    t.loop.stop = True  # what a callback does
    assert t.step() == (None, None) and t.loop.iteration == 2


def test_each_check_runs_once_in_the_callers_words(monkeypatch):
    from admm_jax.train import checks

    calls = []
    for name in ("model_and_optimizer", "data", "fits_model", "trainable"):
        original = getattr(checks, name)
        monkeypatch.setattr(checks, name, lambda *a, _f=original, _n=name, **k: (
            calls.append((_n, a[0] if isinstance(a[0], str) else None)), _f(*a, **k))[1])
    x, y = tiny_data()
    fit(model(), optax.adam(1e-2), (x, y), iterations=1, batch_size=16, evaluation=(x, y))
    assert sorted(calls) == sorted([
        ("model_and_optimizer", None), ("data", "train_data"), ("data", "evaluation.data"),
        ("trainable", None), ("fits_model", "train_data"), ("fits_model", "evaluation.data")])
    with pytest.raises(TypeError, match="^stop: expected a Stop, got int"):
        Trainer(model(), optax.adam(1e-2), (x, y), stop=3)
    with pytest.raises(ValueError, match="^epochs: expected a positive int or None, got 0"):
        Stop(epochs=0)
    with pytest.raises(ValueError, match="^data: this Trainer was given no evaluation"):
        Trainer(model(), optax.adam(1e-2), (x, y), batch_size=16).evaluate()
