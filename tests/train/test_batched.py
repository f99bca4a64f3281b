"""admm_jax.train.BatchedTrainer / fit_batched: each run of a batch is the run a Trainer makes
alone, the batch compiles once, a diverged run is frozen without touching the others, every
registry optimizer and h-detach's per-run masks go through, checkpoints resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from admm_jax import LSTM, ElmanRNN, data, optimizers
from admm_jax.train import (
    BatchedTrainer,
    Stop,
    Trainer,
    evaluate,
    fit,
    fit_batched,
    load_runs,
    losses,
)


def tiny_data(n=64, t=5, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 3)).astype(dtype)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    return x, y


def elman(seed, dtype=jnp.float32):
    return ElmanRNN(3, 8, 2, rngs=nnx.Rngs(seed), dtype=dtype)


def weights(m):
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(nnx.state(m, nnx.Param))]


def adam_lr():
    return optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)


def alone(model, tx, train, *, steps, seed, lr=None, **kw):
    """The run a Trainer makes alone (lr written into the inject_hyperparams state)."""
    t = Trainer(model, tx, train, batch_size=16, seed=seed, **kw)
    if lr is not None:
        t.loop.opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    t.run(steps)
    t.finish()
    return t.history


def assert_runs_close(batch_hist, batch_models, alone_hist, alone_models, exact):
    cmp = np.testing.assert_array_equal if exact else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6))
    for hb, mb, ha, ma in zip(batch_hist, batch_models, alone_hist, alone_models, strict=True):
        cmp(np.asarray(hb.steps["loss"]), np.asarray(ha.steps["loss"]))
        for a, b in zip(weights(mb), weights(ma), strict=True):
            cmp(a, b)


@pytest.mark.parametrize("group_size", [None, 1, 2])
def test_each_run_is_the_run_alone(group_size):
    """Three runs, each its own init, seed (batch order) and learning rate, 3 steps per call
    over 10 steps (a partial last call): each equals its Trainer to float32 rounding."""
    x, y = tiny_data()
    lrs, seeds = [1e-3, 1e-2, 3e-2], [5, 6, 7]
    models = [elman(s) for s in range(3)]
    t = BatchedTrainer(models, adam_lr(), (x, y), batch_size=16, seeds=seeds,
                       hyperparams={"learning_rate": lrs}, steps_per_call=3,
                       group_size=group_size)
    assert t.run(10) == 10
    t.finish()
    ref = [elman(s) for s in range(3)]
    hist = [alone(m, adam_lr(), (x, y), steps=10, seed=s, lr=lr)
            for m, s, lr in zip(ref, seeds, lrs, strict=True)]
    assert_runs_close(t.histories, models, hist, ref, exact=False)
    for hb, ha in zip(t.histories, hist, strict=True):
        assert hb.steps["iteration"] == ha.steps["iteration"]
        assert hb.epochs["epoch"] == ha.epochs["epoch"] == [0, 1]  # 4 steps an epoch
        np.testing.assert_allclose(hb.epochs["loss"], ha.epochs["loss"], rtol=2e-5)
    assert [h.meta["hyperparams"]["learning_rate"] for h in t.histories] == pytest.approx(lrs)


def test_float64_runs_are_the_runs_alone_to_rounding():
    """In float64, runs laid out one after another (group_size=1) give exactly the Trainer's
    losses and its weights to the last few bits (the compiler fuses the update differently
    inside the batch's loop: measured 2e-16 relative on one bias, 1.1e-15 with the suite's
    fast-compile flags); vectorised (one batched product per layer), to 1e-12."""
    with jax.enable_x64(True):
        x, y = tiny_data(dtype=np.float64)
        ref = [elman(s, jnp.float64) for s in range(2)]
        hist = [alone(m, optax.adam(1e-2), (x, y), steps=6, seed=s)
                for s, m in enumerate(ref)]
        for group_size in (1, None):
            models = [elman(s, jnp.float64) for s in range(2)]
            t = BatchedTrainer(models, optax.adam(1e-2), (x, y), batch_size=16,
                               group_size=group_size)
            t.run(6)
            t.finish()
            rtol = 4e-15 if group_size == 1 else 1e-12
            for hb, ha in zip(t.histories, hist, strict=True):
                if group_size == 1:
                    assert hb.steps["loss"] == ha.steps["loss"]
                np.testing.assert_allclose(hb.steps["loss"], ha.steps["loss"], rtol=rtol)
            for mb, ma in zip(models, ref, strict=True):
                for a, b in zip(weights(mb), weights(ma), strict=True):
                    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-16)


def test_the_batch_compiles_once():
    x, y = tiny_data()
    t = BatchedTrainer([elman(s) for s in range(3)], adam_lr(), (x, y), batch_size=16,
                       hyperparams={"learning_rate": [1e-3, 1e-2, 1e-1]}, steps_per_call=4)
    compiles = []

    def listen(event, _secs, **_kw):
        if event.endswith("backend_compile_duration"):
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        assert [t.run(k) for k in (3, 5, 4, 1)] == [3, 5, 4, 1]
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    assert t.iteration == 13 and all(len(h.steps["loss"]) == 13 for h in t.histories)


def test_a_diverged_run_is_frozen_and_the_others_are_bitwise_unchanged():
    """Run 1's learning rate makes its loss overflow at its second step: that step is not
    applied, the run keeps its weights after step 1, and runs 0 and 2 are bitwise those of
    the same batch without the bad rate (4 steps per call: the failure is mid-call)."""
    x, y = tiny_data()
    y = np.stack([y, 1 - y], 1).astype(np.float32)

    def batch(lr1):
        models = [elman(s) for s in range(3)]
        t = BatchedTrainer(models, adam_lr(), (x, y),
                           loss="mse", metric=None, batch_size=16,
                           hyperparams={"learning_rate": [1e-2, lr1, 1e-2]}, steps_per_call=4)
        t.run(8)
        t.finish()
        return t, models

    good, good_models = batch(1e-2)
    bad, bad_models = batch(1e30)
    assert bad.histories[1].meta["diverged_at"] == 2
    assert bad.histories[1].steps["iteration"] == [1]
    assert list(bad.live) == [True, False, True] and not bad.done
    for r in (0, 2):
        assert bad.histories[r].steps["loss"] == good.histories[r].steps["loss"]
        for a, b in zip(weights(bad_models[r]), weights(good_models[r]), strict=True):
            np.testing.assert_array_equal(a, b)
    # the frozen run holds its weights after its one good step (as the Trainer alone: to
    # float32 rounding of the batched products)
    one = elman(1)
    alone(one, adam_lr(), (x, y), steps=1, seed=1, lr=1e30,
          loss="mse", metric=None)
    for a, b in zip(weights(bad_models[1]), weights(one), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_freeze_stops_a_run_and_all_frozen_ends_the_batch():
    x, y = tiny_data()
    t = BatchedTrainer([elman(s) for s in range(2)], optax.adam(1e-2), (x, y), batch_size=16)
    t.run(2)
    t.freeze(0)
    assert t.run(3) == 3
    assert len(t.histories[0].steps["loss"]) == 2 and len(t.histories[1].steps["loss"]) == 5
    assert t.histories[0].meta["frozen_at"] == 2
    t.freeze(1)
    assert t.done and t.run(4) == 0


def build(name, model, x):
    if name == "admmirnn_per_sample":  # per-sample multipliers: the indices of each run
        return optimizers.get("admmirnn", num_samples=len(x), seq_len=x.shape[1],
                              sweep="backward")
    kw = {"model": model, "inputs": x[:1]} if optimizers.entry(name).takes_model else {}
    return optimizers.get(name, **kw)


# one of each kind in the default suite (a gradient method, K-FAC, ADMMiRNN); all in -m slow
DEFAULT_SUITE = ("adam", "admm_kfac", "admmirnn")


@pytest.mark.parametrize("name", [
    n if n in DEFAULT_SUITE else pytest.param(n, marks=pytest.mark.slow)
    for n in [*optimizers.names(), "admmirnn_per_sample"]])
def test_every_registry_optimizer_runs_batched_as_alone(name):
    """Gradient optimizers, the K-FAC methods (built for model 0, its structure traced under
    vmap) and ADMMiRNN (the batch and its indices per run): 2 runs x 4 steps equal the
    runs alone."""
    x, y = tiny_data()
    models = [elman(s) for s in range(2)]
    tx = build(name, models[0], x)
    t = BatchedTrainer(models, tx, (x, y), batch_size=16, steps_per_call=2)
    t.run(4)
    t.finish()
    ref = [elman(s) for s in range(2)]
    hist = [alone(m, tx, (x, y), steps=4, seed=s) for s, m in enumerate(ref)]
    for hb, ha in zip(t.histories, hist, strict=True):
        np.testing.assert_allclose(hb.steps["loss"], ha.steps["loss"], rtol=1e-4, atol=1e-5)
        assert set(hb.steps) == set(ha.steps)  # the same diagnostics
    for mb, ma in zip(models, ref, strict=True):
        for a, b in zip(weights(mb), weights(ma), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_hdetach_masks_are_per_run():
    """LSTM runs with p_detach 0, 0.5 and 1 (a model argument per run) and per-step keys:
    each is the Trainer's run with that p and seed; the plain and fully detached runs
    differ."""
    x, y = data.copying(3, 64, seed=0)
    metric = losses.last_steps_accuracy(10)
    ps = [0.0, 0.5, 1.0]

    def lstm():
        return LSTM(1, 8, 9, rngs=nnx.Rngs(0), many_to_many=True)

    models = [lstm() for _ in ps]
    t = BatchedTrainer(models, optax.adam(1e-2), (x, y), batch_size=16, seeds=[3, 3, 3],
                       step_key=True, model_kwargs={"p_detach": ps}, metric=metric)
    t.run(5)
    t.finish()
    ref = [lstm() for _ in ps]
    hist = [alone(m, optax.adam(1e-2), (x, y), steps=5, seed=3, step_key=True,
                  model_kwargs={"p_detach": p}, metric=metric) for m, p in zip(ref, ps,
                                                                                strict=True)]
    assert_runs_close(t.histories, models, hist, ref, exact=False)
    assert t.histories[0].steps["loss"][-1] != t.histories[2].steps["loss"][-1]


def test_evaluation_is_per_run():
    x, y = tiny_data()
    xe, ye = tiny_data(n=37, seed=1)
    models = [elman(s) for s in range(3)]
    t = BatchedTrainer(models, optax.adam(1e-2), (x, y), batch_size=16, evaluation=(xe, ye))
    t.run(3)
    rows = t.evaluate(batch_size=10)  # 4 chunks, the last padded
    t.finish()
    for r, m in zip(rows, models, strict=True):
        ref = evaluate(m, (xe, ye))
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert r["accuracy"] == pytest.approx(ref["accuracy"])
        assert r["iteration"] == 3
    assert all(len(h.evals["loss"]) == 1 for h in t.histories)


def test_fit_batched_resumes_from_its_checkpoints(tmp_path):
    """2 epochs in one go = 1 epoch, checkpoint, resume for the second (weights, histories);
    a run's checkpoint is fit's format: fit resumes it alone."""
    x, y = tiny_data()
    xe, ye = tiny_data(n=20, seed=1)
    kw = dict(batch_size=16, hyperparams={"learning_rate": [1e-2, 3e-2]}, steps_per_call=3,
              evaluation=(xe, ye))
    full = [elman(s) for s in range(2)]
    h_full = fit_batched(full, adam_lr(), (x, y), epochs=2, **kw)
    first = [elman(s) for s in range(2)]
    fit_batched(first, adam_lr(), (x, y), epochs=1, checkpoint=tmp_path, **kw)
    params = nnx.state(elman(0), nnx.Param)
    restored = load_runs(tmp_path, params, adam_lr().init(params))
    assert [r.position for r in restored] == [(1, 0), (1, 0)]
    second = [elman(s) for s in range(2)]
    h_res = fit_batched(second, adam_lr(), (x, y), epochs=2, resume=restored, **kw)
    def untimed(table):
        return {k: v for k, v in table.items() if k not in ("time", "seconds")}

    for a, b in zip(h_full, h_res, strict=True):
        for name in ("steps", "epochs", "evals"):
            assert untimed(getattr(a, name)) == untimed(getattr(b, name))
    for ma, mb in zip(full, second, strict=True):
        for a, b in zip(weights(ma), weights(mb), strict=True):
            np.testing.assert_array_equal(a, b)
    # run 1's checkpoint, resumed alone by fit: the same second epoch to float32 rounding
    m = elman(1)
    again = load_runs(tmp_path, params, adam_lr().init(params))[1]
    h = fit(m, adam_lr(), (x, y), epochs=2, batch_size=16, seed=1, resume=again)
    np.testing.assert_allclose(h.steps["loss"], h_full[1].steps["loss"], rtol=2e-5)


def test_bad_arguments_name_themselves():
    x, y = tiny_data()
    two = [elman(0), elman(1)]
    with pytest.raises(ValueError, match="seeds: expected 2 seeds"):
        BatchedTrainer(two, optax.adam(1e-2), (x, y), seeds=[0])
    with pytest.raises(ValueError, match="models: model 1 differs"):
        BatchedTrainer([elman(0), ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0), activation="relu")],
                       optax.adam(1e-2), (x, y))
    with pytest.raises(ValueError, match=r"models\[1\] weights: leaf \['U'\]"):
        BatchedTrainer([elman(0), ElmanRNN(3, 4, 2, rngs=nnx.Rngs(0))], optax.adam(1e-2),
                       (x, y))
    with pytest.raises(ValueError, match=r"hyperparams: \['momentum'\] not in"):
        BatchedTrainer(two, adam_lr(), (x, y), hyperparams={"momentum": 0.9})
    with pytest.raises(ValueError, match="model_kwargs: 'p_detach' has 3 values"):
        BatchedTrainer(two, optax.adam(1e-2), (x, y), model_kwargs={"p_detach": [0, 1, 2]})
    with pytest.raises(TypeError, match="models: expected a non-empty sequence"):
        BatchedTrainer([], optax.adam(1e-2), (x, y))
    with pytest.raises(ValueError, match="give at least one stopping rule"):
        fit_batched(two, optax.adam(1e-2), (x, y))
    with pytest.raises(ValueError, match="group_size: expected a positive int"):
        BatchedTrainer(two, optax.adam(1e-2), (x, y), group_size=0)


def test_stop_ends_the_batch():
    x, y = tiny_data()
    t = BatchedTrainer([elman(0), elman(1)], optax.adam(1e-2), (x, y), batch_size=16,
                       stop=Stop(epochs=2), steps_per_call=3)
    assert t.run(100) == 8 and t.done
    assert t.histories[0].epochs["epoch"] == [0, 1]
