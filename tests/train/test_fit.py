"""admm_jax.train.fit: every optimizer lowers the loss; ADMM never differentiates; budgets,
evaluation, model arguments and checkpoints behave as documented."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import admm_jax
from admm_jax import ElmanRNN, admmirnn, optimizers
from admm_jax.train import (
    Callback,
    Checkpoint,
    Evaluation,
    History,
    ModelKwargSchedule,
    Restored,
    evaluate,
    fit,
    load_checkpoint,
    losses,
)


def tiny_data(n=64, t=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    return x, y


def build(name, n, t, model=None, x=None):
    if name == "admmirnn":
        return optimizers.get(name)
    if name == "random_bases":  # dim well below the model's 114 parameters (default 250)
        return optimizers.get(name, dim=20)
    if optimizers.entry(name).takes_model:
        return optimizers.get(name, model=model, inputs=x[:1])
    return optimizers.get(name)


@pytest.mark.parametrize("name", optimizers.names())
def test_every_registered_optimizer_lowers_the_loss(name):
    x, y = tiny_data()
    model = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    before = evaluate(model, (x, y))["loss"]
    h = fit(model, build(name, len(x), x.shape[1], model, x), (x, y), iterations=40,
            batch_size=16)
    after = evaluate(model, (x, y))["loss"]
    assert len(h.steps["loss"]) == 40
    assert after < before, (name, before, after)
    assert h.meta["uses_gradients"] is not optimizers.takes_batch(name)
    key = {"admmirnn": "r1", "admm_preconditioned": "step_norm",
           "admm_kfac": "step_norm"}.get(name, "grad_norm")
    assert all(math.isfinite(v) for v in h.steps[key])


def _forbid_differentiation(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("differentiation called")

    for fn in ("grad", "value_and_grad", "vjp", "linear_transpose", "linearize", "jvp"):
        monkeypatch.setattr(jax, fn, boom)


def test_admm_path_never_differentiates(monkeypatch):
    x, y = tiny_data()
    _forbid_differentiation(monkeypatch)
    model = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    h = fit(model, optimizers.get("admmirnn"), (x, y), iterations=3, batch_size=16)
    assert h.meta["uses_gradients"] is False and len(h.steps["loss"]) == 3
    # the check can fail: a gradient optimizer trips it
    with pytest.raises(AssertionError, match="differentiation called"):
        fit(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), optimizers.get("adam"), (x, y), iterations=1,
            batch_size=16)


def test_budget_seconds_excludes_compilation_and_stops():
    x, y = tiny_data(256)
    model = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    h = fit(model, optimizers.get("adam"), (x, y), evaluation=(x, y), budget_seconds=0.5,
            batch_size=16)
    t = h.steps["time"]
    assert t[-1] >= 0.5 and t[-2] < 0.5
    assert np.allclose(np.cumsum(h.steps["seconds"]), t)
    assert h.meta["compile_seconds"] > 0 and h.meta["eval_seconds"] > 0
    assert h.evals["iteration"][0] == 0 and h.evals["iteration"][-1] == h.meta["iterations"]


def test_epochs_and_evaluation_schedule():
    x, y = tiny_data(64)
    model = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    h = fit(model, optimizers.get("adam"), (x, y), evaluation=(x[:10], y[:10]), epochs=3,
            batch_size=16)
    assert h.meta["iterations"] == 12 and h.epochs["epoch"] == [0, 1, 2]
    assert h.evals["iteration"] == [0, 4, 8, 12]
    # the last eval is a plain forward pass of the final weights
    assert h.evals["loss"][-1] == pytest.approx(evaluate(model, (x[:10], y[:10]))["loss"],
                                                rel=1e-5)
    h2 = fit(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), optimizers.get("adam"), (x, y),
             evaluation=Evaluation((x, y), every=3), iterations=10, batch_size=16)
    assert h2.evals["iteration"] == [0, 3, 6, 9, 10]


def test_evaluate_matches_a_hand_computed_mean_with_padding():
    x, y = tiny_data(37)
    model = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(1))
    logits = np.asarray(model(jnp.asarray(x)), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want_loss = -logp[np.arange(37), y].mean()
    want_acc = (logits.argmax(-1) == y).mean()
    r = evaluate(model, (x, y), batch_size=10)  # 4 chunks, the last one padded
    assert r["loss"] == pytest.approx(want_loss, rel=1e-5)
    assert r["accuracy"] == pytest.approx(want_acc)


class Scaled(nnx.Module):
    """An Elman RNN whose logits are multiplied by a traced ``scale``; records its keys."""

    def __init__(self):
        self.rnn = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
        self.keys_seen = []

    def __call__(self, x, *, scale=1.0, key=None):
        self.keys_seen.append(key is not None)
        return self.rnn(x) * scale


def test_model_kwargs_change_between_epochs_without_recompiling():
    x, y = tiny_data(64)
    model = Scaled()
    traces = []

    class Count(Callback):
        def on_step_end(self, loop, row):
            traces.append(len(model.keys_seen))

    h = fit(model, optimizers.get("adam"), (x, y), epochs=2, batch_size=16,
            model_kwargs={"scale": 1.0}, step_key=True,
            callbacks=[ModelKwargSchedule("scale", lambda e: 1.0 if e == 0 else 0.0), Count()])
    loss = np.array(h.steps["loss"])
    epoch = np.array(h.steps["epoch"])
    assert np.all(np.abs(loss[epoch == 1] - math.log(2)) < 1e-6)  # zero logits
    assert np.all(np.abs(loss[epoch == 0] - math.log(2)) > 1e-4)
    assert len(set(traces)) == 1  # traced once: no retracing when the value changed
    assert True in model.keys_seen  # the training step passed a key


def test_schedule_needs_an_initial_value():
    x, y = tiny_data(32)
    with pytest.raises(ValueError, match="p_detach"):
        fit(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), optimizers.get("adam"), (x, y), iterations=1,
            callbacks=[ModelKwargSchedule("p_detach", lambda e: 0.1)])


@pytest.mark.parametrize("name", ["adam", pytest.param("admmirnn", marks=pytest.mark.slow)])
def test_checkpoint_resume_equals_an_uninterrupted_run(tmp_path, name):
    x, y = tiny_data(64)
    straight = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    fit(straight, build(name, 64, 5), (x, y), epochs=2, batch_size=16)

    first = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    fit(first, build(name, 64, 5), (x, y), epochs=1, batch_size=16,
        callbacks=[Checkpoint(tmp_path)])
    resumed = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(7))  # other weights: all must come from disk
    tx = build(name, 64, 5)
    params = nnx.state(resumed, nnx.Param)
    params, opt_state, start, history = load_checkpoint(tmp_path, params, tx.init(params))
    nnx.update(resumed, params)
    assert start == (1, 0)
    h = fit(resumed, tx, (x, y), epochs=2, batch_size=16,
            resume=Restored(None, opt_state, start, history))
    assert h.meta["iterations"] == 8 and h.steps["iteration"] == list(range(1, 9))
    for k in ("U", "W", "b", "V", "c"):
        np.testing.assert_allclose(getattr(resumed, k)[...], getattr(straight, k)[...],
                                   rtol=1e-6, atol=1e-7)


def test_bad_arguments_name_themselves():
    x, y = tiny_data(8)
    m = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    tx = optimizers.get("adam")
    with pytest.raises(ValueError, match="stopping rule"):
        fit(m, tx, (x, y))
    with pytest.raises(ValueError, match="iterations"):
        fit(m, tx, (x, y), iterations=0)
    with pytest.raises(ValueError, match="train_data"):
        fit(m, tx, (x, y[:4]), iterations=1)
    with pytest.raises(ValueError, match="batch_size"):
        fit(m, tx, (x, y), iterations=1, batch_size=100)
    with pytest.raises(ValueError, match="loss"):
        fit(m, tx, (x, y), iterations=1, loss="hinge")


def test_divergence_stops_and_is_recorded():
    x, y = tiny_data(32)
    def exploding(outputs, targets):
        return losses.cross_entropy(outputs, targets) * jnp.exp(1e3 * outputs[:, 0] ** 2)

    model = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    h = fit(model, optimizers.get("sgd", learning_rate=10.0), (x, y), loss=exploding,
            iterations=50, batch_size=16, on_divergence="stop")
    assert h.meta["diverged_at"] == h.meta["iterations"] + 1 <= 50
    # the failed step is not recorded, and the model holds finite (last good) weights
    assert all(math.isfinite(v) for v in h.steps.get("loss", []))
    assert h.meta["divergence_metrics"]["loss"] in ("nan", "inf")
    History.from_json(h.to_json())  # still strict JSON
    assert all(np.isfinite(np.asarray(getattr(model, k)[...])).all() for k in "UWbVc")


def test_h_detach_reaches_the_model():
    x, y = tiny_data()
    first_grad = {}
    for p in (0.0, 1.0):
        h = fit(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), optimizers.get("adam"), (x, y),
                iterations=2, batch_size=16, model_kwargs={"p_detach": p}, step_key=True)
        first_grad[p] = h.steps["grad_norm"][0]
    # same weights and batch; p = 1 blocks every h_{t-1} -> W path, so the gradient differs
    assert first_grad[0.0] != pytest.approx(first_grad[1.0], rel=1e-4)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_a_method_reporting_its_batch_loss_saves_the_forward_pass(loss):
    x, y = tiny_data(32)
    if loss == "mse":
        y = np.eye(2, dtype=np.float32)[y]
    model = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    before = evaluate(model, (x, y), loss=loss, metric=None)["loss"]
    h = fit(model, optimizers.get("admm_kfac", loss=loss, model=model, inputs=x), (x, y),
            loss=loss, iterations=1, batch_size=32)
    # the method's own forward pass, reported under fit's loss: the loss before the step
    assert h.steps["loss"][0] == pytest.approx(before, rel=1e-5)
    assert "accuracy" not in h.steps and "batch_loss" not in h.steps
    # a loss other than the one the method was built with: fit runs its own forward pass
    other = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    h = fit(other, optimizers.get("admm_kfac", loss=loss, model=other, inputs=x), (x, y),
            loss=losses.LOSSES[loss], metric=None, iterations=1, batch_size=32)
    assert h.steps["loss"][0] == pytest.approx(before, rel=1e-5)
    assert "batch_loss" in h.steps


class FlaxRNN(nnx.Module):
    """A user's Flax RNN whose head reads the last step, or (``reads="mean"``) the mean."""

    def __init__(self, reads="last"):
        rngs = nnx.Rngs(0)
        self.rnn = nnx.RNN(nnx.SimpleCell(3, 8, rngs=rngs), rngs=False)
        self.head = nnx.Linear(8, 2, rngs=rngs)
        self.reads = reads

    def __call__(self, x):
        h = self.rnn(x, initial_carry=jnp.zeros((x.shape[0], 8), x.dtype))
        return self.head(h.mean(1) if self.reads == "mean" else h[:, -1])


def test_the_history_is_the_models_loss_or_the_run_is_refused():
    """Issue 29, item 1: through adapt_flax_rnn ADMMiRNN trains the Elman RNN it reads from
    the parameters; fit records its batch loss only when that RNN is the model."""
    x, y = tiny_data(32)
    model = FlaxRNN()
    before = evaluate(model, (x, y))["loss"]
    h = fit(model, admm_jax.adapt_flax_rnn(admmirnn(), model.rnn), (x, y), iterations=1,
            batch_size=32)
    assert h.steps["loss"][0] == pytest.approx(before, rel=1e-5)  # the model's own loss
    mean = FlaxRNN("mean")
    with pytest.raises(ValueError, match=r"^optimizer: admmirnn trains its own forward pass "
                                         r"\(.*adapt_flax_rnn.*\), which differs from the "
                                         r"model's"):
        fit(mean, admm_jax.adapt_flax_rnn(admmirnn(), mean.rnn), (x, y), iterations=1,
            batch_size=32)
    # K-FAC built for another model with the same parameters (tanh, trained as relu)
    tanh, relu = (ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0), activation=a) for a in ("tanh", "relu"))
    with pytest.raises(ValueError, match="admm_kfac trains its own forward pass"):
        fit(relu, admm_jax.admm_kfac(tanh, x), (x, y), iterations=1, batch_size=32)


def test_admmirnn_behind_a_gradient_wrapper_is_refused_and_apply_if_finite_is_not():
    x, y = tiny_data(32)
    for tx, match in ((optax.chain(optax.clip_by_global_norm(1.0), admmirnn()), "optax.chain"),
                      (optax.MultiSteps(admmirnn(), 2), "MultiSteps")):
        with pytest.raises(ValueError, match=rf"^optimizer: admmirnn .*{match}"):
            fit(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), tx, (x, y), iterations=1, batch_size=16)
    h = fit(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), optax.apply_if_finite(admmirnn(), 3), (x, y),
            iterations=2, batch_size=16)
    assert h.meta["uses_gradients"] and len(h.steps["loss"]) == 2
