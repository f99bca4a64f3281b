"""Bad input at the public boundary: each case raises ValueError/TypeError naming the argument,
the expectation and what was received; a hypothesis fuzz over shapes and values at the public
API only ever sees those documented errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import admm_jax
from admm_jax import LSTM, DivergenceError, ElmanRNN, _validation, admmirnn, optimizers
from admm_jax.models.elman import input_projection
from admm_jax.train import Evaluation, Restored, fit


def data(n=32, t=5, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, d)).astype(np.float32)
    return x, (x[:, :, 0].sum(1) > 0).astype(np.int32)


def model(d=3, h=8, c=2):
    return ElmanRNN(d, h, c, rngs=nnx.Rngs(0))


ADAM = optimizers.get("adam")


@pytest.mark.parametrize("make,kw,pattern", [
    # wrong ranks / shapes of inputs and targets
    (lambda x, y: (x[:, :, 0], y), {},
     r"train_data: inputs of shape \(32, 5\) \(float32\) do not fit the model"),
    (lambda x, y: (x[:, :, :2], y), {},
     r"train_data: inputs of shape \(32, 5, 2\) \(float32\) do not fit the model"),
    (lambda x, y: (x, y[:, None]), {},
     r"train_data: cross_entropy needs integer class targets of shape \(32,\) for model "
     r"outputs \(2,\), got int32\(32, 1\)"),
    (lambda x, y: (x, y.astype(np.float32)), {},
     r"cross_entropy needs integer class targets of shape \(32,\) .* got float32\(32,\)"),
    (lambda x, y: (x, np.zeros((32, 3), np.float32)), {"loss": "mse"},
     r"train_data: mse needs \(2,\) real targets per sample .* got targets of shape \(32, 3\)"),
    (lambda x, y: (x, y[:8]), {},
     r"train_data: expected inputs and targets of the same nonzero length, got "
     r"\(32, 5, 3\) and \(8,\)"),
    # labels out of range
    (lambda x, y: (x, np.where(np.arange(32) == 4, 2, y).astype(np.int32)), {},
     r"train_data targets: expected class labels in \[0, 2\) \(the model has 2 outputs\), "
     r"got values in \[0, 2\]"),
    (lambda x, y: (x, y - 1), {}, r"expected class labels in \[0, 2\).*got values in \[-1, 0\]"),
    # non-finite values
    (lambda x, y: (np.where(np.arange(5)[None, :, None] == 1, np.nan, x), y), {},
     r"train_data inputs: expected finite values, got 96 NaN/inf \(first at index \(0, 1, 0\)"),
    (lambda x, y: (x, y), {"evaluation": (np.full((4, 5, 3), np.inf, np.float32),
                                          np.zeros(4, np.int32))},
     r"evaluation.data inputs: expected finite values, got 60 NaN/inf"),
    # non-positive counts, unknown option strings
    (lambda x, y: (x, y), {"iterations": 0}, r"iterations: expected a positive int or None, "
                                             r"got 0"),
    (lambda x, y: (x, y), {"evaluation": Evaluation(data(), batch_size=-1)},
     r"evaluation.batch_size: expected a positive int, got -1"),
    (lambda x, y: (x, y), {"budget_seconds": float("nan")},
     r"budget_seconds: expected a finite number > 0 or None, got nan"),
    (lambda x, y: (x, y), {"batch_size": 0}, r"batch_size: expected an integer in \[1, 32\], "
                                             r"got 0"),
    (lambda x, y: (x, y), {"loss": "hinge"}, r"loss: expected one of \('cross_entropy', 'mse'\)"
                                             r" or a callable, got 'hinge'"),
    (lambda x, y: (x, y), {"metric": "f1"}, r"metric: expected one of \('accuracy',\)"),
    (lambda x, y: (x, y), {"on_divergence": "skip"},
     r"on_divergence: expected one of \('raise', 'stop'\), got 'skip'"),
    # an optimizer state of another model
    (lambda x, y: (x, y), {"resume": Restored(opt_state=ADAM.init(nnx.state(model(h=9),
                                                                              nnx.Param)))},
     r"opt_state: leaf .* does not match optimizer.init\(params\) of this model: expected "
     r"float32\(8, 3\), got float32\(9, 3\)"),
    (lambda x, y: (x, y), {"resume": Restored(opt_state=optimizers.get("sgd").init(
        nnx.state(model(), nnx.Param)))}, r"opt_state: does not match optimizer.init"),
])
def test_fit_names_the_bad_argument(make, kw, pattern):
    x, y = make(*data())
    kw = {"iterations": 1, "batch_size": 16, **kw}
    with pytest.raises(ValueError, match=pattern):
        fit(model(), ADAM, (x, y), **kw)


def test_fit_type_errors():
    x, y = data()
    with pytest.raises(TypeError, match="model: expected an nnx.Module, got dict"):
        fit({}, ADAM, (x, y), iterations=1)
    with pytest.raises(TypeError, match="optimizer: expected an optax GradientTransformation"):
        fit(model(), "adam", (x, y), iterations=1)
    with pytest.raises(TypeError, match="train_data: expected a pair"):
        fit(model(), ADAM, x, iterations=1)
    with pytest.raises(TypeError, match="train_data: expected numeric targets, got dtype <U1"):
        fit(model(), ADAM, (x, np.array(["a"] * 32)), iterations=1)
    with pytest.raises(TypeError, match="seed: expected an int, got 1.5"):
        fit(model(), ADAM, (x, y), iterations=1, seed=1.5)


def test_admm_factory_and_update_name_the_bad_argument():
    for kw, pattern in [
        ({"rho": 0.0}, r"rho: expected a positive number or three positive numbers, got "
                       r"\(0.0, 0.0, 0.0\)"),
        ({"rho": (1.0, math.inf, 1.0)}, r"rho: expected .* got \(1.0, inf, 1.0\)"),
        ({"num_samples": 0, "seq_len": 5}, r"num_samples: expected a positive int or None, "
                                           r"got 0"),
        ({"sweeps": -2}, r"sweeps: expected a positive int, got -2"),
        ({"prox": -0.1}, r"prox: expected a finite number >= 0, got -0.1"),
        ({"rho_max": float("nan")}, r"rho_max: expected a finite number > 0, got nan"),
        ({"sweep": "forward"}, r"sweep: expected one of \('coupled', 'backward', 'parallel'\), "
                               r"got 'forward'"),
        ({"loss": "hinge"}, r"loss: expected one of \('cross_entropy', 'mse'\), got 'hinge'"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            admmirnn(**kw)
    x, y = data(16)
    params = nnx.state(model(), nnx.Param)
    tx = admmirnn(num_samples=16, seq_len=5, sweep="backward")  # per-sample state
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"inputs: expected \[N, T, 3\] \(U is \(8, 3\)\), "
                                         r"got shape \(16, 5\)"):
        tx.update(None, state, params, inputs=x[:, :, 0], targets=y)
    with pytest.raises(ValueError, match=r"targets: expected integer classes of shape \(16,\)"):
        tx.update(None, state, params, inputs=x, targets=y[:8])
    with pytest.raises(ValueError, match=r"params: expected exactly the Elman parameters"
                                         r".*admm_jax.adapt_flax_rnn\(admm_jax.admmirnn\(\)"):
        tx.update(None, state, {"U": params["U"][...]}, inputs=x, targets=y)
    bad = {k: params[k][...] for k in ("U", "W", "b", "V", "c")}
    bad["W"] = jnp.zeros((8, 7))
    with pytest.raises(ValueError, match=r"params: W should be \(8, 8\) for U of shape \(8, 3\)"):
        tx.update(None, state, bad, inputs=x, targets=y)
    other = nnx.state(model(h=6), nnx.Param)
    with pytest.raises(ValueError, match=r"state: built for other parameters"):
        tx.update(None, state, other, inputs=x, targets=y)
    with pytest.raises(ValueError, match="optimizer: admmirnn was built with num_samples=16, "
                                         "but train_data has 32"):
        fit(model(), tx, data(32), iterations=1, batch_size=16)


def test_registry_and_model_arguments():
    for lr in (0.0, -1e-3, math.inf, math.nan):
        with pytest.raises(ValueError, match=f"learning_rate: expected a finite number > 0, "
                                             f"got {lr!r}"):
            optimizers.get("adam", learning_rate=lr)
    optimizers.get("adam", learning_rate=lambda step: 1e-3)  # schedules pass
    with pytest.raises(ValueError, match="optimizer: unknown name 'lbfgs'; expected one of"):
        optimizers.get("lbfgs")
    with pytest.raises(ValueError, match="hidden_features: expected a positive int, got 0"):
        ElmanRNN(3, 0, 2, rngs=nnx.Rngs(0))


def test_fractions_and_finite_numbers():
    _validation.fraction("p", 1.0)
    _validation.fraction("b1", jnp.asarray(0.0), include_one=False)
    jax.jit(lambda b: _validation.fraction("b1", b, include_one=False))(2.0)  # traced: skipped
    for v, kw, pattern in ((1.0, {"include_one": False}, r"b1: expected a number in \[0, 1\), "
                                                         r"got 1.0"),
                           (-0.1, {}, r"b1: expected a number in \[0, 1\], got -0.1"),
                           ("0.5", {}, r"b1: expected a number in \[0, 1\], got '0.5'"),
                           (math.nan, {}, r"b1: expected a number in \[0, 1\], got nan")):
        with pytest.raises(ValueError, match=pattern):
            _validation.fraction("b1", v, **kw)
    _validation.finite_number("target", -3.0)
    with pytest.raises(ValueError, match="target: expected a finite number, got inf"):
        _validation.finite_number("target", math.inf)
    assert _validation.nonnegative_int("seed", np.asarray(0)) == 0


def test_helpers_accept_what_they_document():
    _validation.positive_int("n", np.int64(3))
    _validation.positive_number("x", 1e-9)
    _validation.finite("a", np.arange(3))  # integers are always finite
    _validation.labels("y", np.array([0, 2]), 3)
    with pytest.raises(ValueError, match="n: expected a positive int, got True"):
        _validation.positive_int("n", True)
    with pytest.raises(TypeError, match=r"y: expected integer class labels, got float32\(2,\)"):
        _validation.labels("y", np.zeros(2, np.float32), 3)


# ---------------------------------------------------------------------------- fuzzing
DOCUMENTED = (ValueError, TypeError, DivergenceError)
values = st.sampled_from([0.0, 1.0, -3.0, 1e30, math.nan, math.inf])


@st.composite
def fit_cases(draw):
    """Half the cases mostly consistent (so training runs, or diverges), half mostly not."""
    mostly_valid = draw(st.booleans())

    def pick(valid, *invalid):
        return draw(st.sampled_from([valid] * (9 if mostly_valid else 1) + list(invalid)))

    n = draw(st.integers(1, 6))
    t, d, h, c = (draw(st.integers(1, 3)) for _ in range(4))
    x_shape = pick((n, t, d), (n, t), (n,), (n, t, d + 1), (n, t, d, 2))
    x = np.random.default_rng(draw(st.integers(0, 3))).normal(size=x_shape)
    x = x.astype(pick(np.float32, np.float64, np.int32))
    if x.dtype.kind == "f" and x.size:
        x.flat[draw(st.integers(0, x.size - 1))] = pick(0.5, math.nan, math.inf, 1e30)
    y_n = pick(n, n + 1, 0)
    loss = pick(draw(st.sampled_from(["cross_entropy", "mse"])), "hinge")
    good_y = (np.arange(y_n, dtype=np.int32) % c if loss != "mse"
              else np.zeros((y_n, c), np.float32))
    y = pick(good_y, np.zeros((y_n, c + 1), np.float32), np.full(y_n, np.nan),
             np.arange(y_n, dtype=np.int32) - 1, np.arange(y_n, dtype=np.int32) + c)
    name = draw(st.sampled_from(["adam", "sgd", "admmirnn"]))
    if name == "admmirnn":
        opt_kw = {"num_samples": pick(n, n + 1), "seq_len": pick(t, t + 1),
                  "sweep": "backward",  # the sweep that keeps per-sample state
                  "rho": pick(1.0, 0.0, -1.0, 1e30),
                  "loss": loss if loss in ("cross_entropy", "mse") else "mse"}
    else:
        opt_kw = {"learning_rate": pick(1e-2, 0.0, -1.0, math.nan, 1e30)}
    batch = pick(draw(st.integers(1, n)), 0, n + 1)
    return x, y, (d, h, c), name, opt_kw, loss, batch


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=fit_cases())
def test_fuzz_fit_raises_only_documented_errors(case):
    x, y, (d, h, c), name, opt_kw, loss, batch = case
    try:
        m = ElmanRNN(d, h, c, rngs=nnx.Rngs(0))
        tx = optimizers.get(name, **opt_kw)
        fit(m, tx, (x, y), loss=loss, iterations=1, batch_size=batch, metric=None)
        event("trained")
    except DOCUMENTED as e:
        event(type(e).__name__)
        assert str(e).split(":")[0], e  # names an argument (or the iteration)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"undocumented {type(e).__name__}: {e}")


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), t=st.integers(1, 3), extra=st.lists(st.integers(1, 3), max_size=2),
       y_kind=st.sampled_from(["ok", "float", "2d", "short"]),
       p_kind=st.sampled_from(["ok", "missing", "wrong_h"]))
def test_fuzz_admm_update_raises_only_documented_errors(n, t, extra, y_kind, p_kind):
    x = np.ones((n, t, *extra), np.float32)
    y = {"ok": np.zeros(n, np.int32), "float": np.zeros(n, np.float32),
         "2d": np.zeros((n, 2), np.int32), "short": np.zeros(max(n - 1, 0), np.int32)}[y_kind]
    params = {k: v[...] for k, v in nnx.state(ElmanRNN(2, 3, 2, rngs=nnx.Rngs(0)),
                                               nnx.Param).items()}
    if p_kind == "missing":
        del params["b"]
    elif p_kind == "wrong_h":
        params["W"] = jnp.zeros((3, 4))
    tx = admmirnn()
    try:
        state = tx.init({k: jnp.zeros((3, 3)) for k in "UWbVc"} if p_kind == "missing"
                        else params)
        jax.eval_shape(lambda s, p: tx.update(None, s, p, inputs=x, targets=y), state, params)
    except DOCUMENTED:
        pass
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"undocumented {type(e).__name__}: {e}")


# ---- token ids, sample indices, scalar hyperparameters and internal errors, on a small model

N, T, D, H, C = 8, 4, 3, 4, 2


def small_batch(n=N, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, T, D)).astype(np.float32)
    return x, (x[:, :, 0].sum(1) > 0).astype(np.int32)


def small_model():
    return ElmanRNN(D, H, C, rngs=nnx.Rngs(0))


def token_batch(bad=None):
    ids = np.random.default_rng(0).integers(0, 5, size=(N, T)).astype(np.int32)
    if bad is not None:
        ids[2, 1] = bad
    return ids, (ids[:, -1] % C).astype(np.int32)


@pytest.mark.parametrize("bad", [5, 7, -1])
def test_token_ids_outside_the_vocabulary_are_named(bad):
    ids, y = token_batch(bad)
    m = ElmanRNN(5, H, C, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"train_data inputs: expected token ids in \[0, 5\)"):
        fit(m, optimizers.get("adam"), (ids, y), iterations=1, batch_size=4)
    params = nnx.state(m, nnx.Param)
    good = token_batch()[0]
    for tx in (admm_jax.admm_preconditioned(m, good, 0.1), admm_jax.admmirnn()):
        with pytest.raises(ValueError, match=r"inputs: expected token ids in \[0, 5\)"):
            tx.update(None, tx.init(params), params, inputs=ids, targets=y)
    # under jit the ids cannot be read: the projection is NaN, so the step is rejected
    tx = admm_jax.admm_preconditioned(m, good, 0.1)
    u, s = jax.jit(lambda p, s, x, y: tx.update(None, s, p, inputs=x, targets=y))(
        params, tx.init(params), ids, y)
    assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree.leaves(u))
    assert int(s[0].count) == 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-3, 8), min_size=1, max_size=6))
def test_fuzz_token_ids_check_and_traced_projection(ids):
    vocab = 5
    a = np.asarray(ids, np.int32)[None]
    valid = all(0 <= i < vocab for i in ids)
    U = jnp.arange(2.0 * vocab).reshape(2, vocab) + 1.0
    if valid:
        _validation.token_ids("inputs", a, vocab)
        np.testing.assert_array_equal(input_projection(U, a)[0], np.asarray(U).T[a[0]])
    else:
        with pytest.raises(ValueError, match=r"inputs: expected token ids in \[0, 5\)"):
            _validation.token_ids("inputs", a, vocab)
    traced = np.asarray(jax.jit(input_projection)(U, jnp.asarray(a)))[0]
    for row, i in zip(traced, ids, strict=True):
        if 0 <= i < vocab:
            np.testing.assert_array_equal(row, np.asarray(U)[:, i])
        else:
            assert np.isnan(row).all()  # never a silent wrap-around


@pytest.mark.parametrize("idx, match", [
    ([0, 1, 2, 3, 4, 5, 6, 8], r"positions in \[0, 8\)"),
    ([0, 1, 2, 3, 4, 5, 6, -1], r"positions in \[0, 8\)"),
    ([0, 1, 2, 3, 4, 5, 6, 6], "distinct"),
])
def test_bad_indices_are_rejected(idx, match):
    params = nnx.state(small_model(), nnx.Param)
    tx = admm_jax.admmirnn(num_samples=N, seq_len=T, sweep="backward")  # per-sample state
    x, y = small_batch()
    with pytest.raises(ValueError, match=match):
        tx.update(None, tx.init(params), params, inputs=x, targets=y, indices=np.asarray(idx))


_JIT_CACHE = {}


def _jitted_admm():
    if not _JIT_CACHE:
        params = nnx.state(small_model(), nnx.Param)
        tx = admm_jax.admmirnn(num_samples=N, seq_len=T, sweep="backward")  # per-sample state
        step = jax.jit(lambda p, s, x, y, i: tx.update(None, s, p, inputs=x, targets=y,
                                                       indices=i))
        _JIT_CACHE.update(params=params, state=tx.init(params), step=step)
    return _JIT_CACHE


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(-2, N + 1), min_size=4, max_size=4))
def test_fuzz_indices_eager_check_and_traced_rejection(idx):
    a = np.asarray(idx, np.int32)
    valid = all(0 <= i < N for i in idx) and len(set(idx)) == len(idx)
    if valid:
        _validation.indices("indices", a, N, 4)
    else:
        with pytest.raises(ValueError, match="indices"):
            _validation.indices("indices", a, N, 4)
    c = _jitted_admm()
    x, y = small_batch(4)
    u, s = c["step"](c["params"], c["state"], x, y, jnp.asarray(a))
    moved = any(float(jnp.abs(v).max()) > 0 for v in jax.tree.leaves(u))
    assert moved == valid
    assert int(s.count) == int(valid)
    if not valid:  # nothing written to any sample's multipliers
        jax.tree.map(np.testing.assert_array_equal, s.duals, c["state"].duals)


def test_scalar_arrays_and_inject_hyperparams():
    m = small_model()
    params = nnx.state(m, nnx.Param)
    x, y = small_batch()
    admm_jax.admm_preconditioned(m, x, np.float32(0.1), damping=np.float64(0.1))
    admm_jax.admm_kfac(m, x, jnp.asarray(0.1), ema=np.float32(0.95))
    admm_jax.admmirnn(rho=np.float32(10))
    admm_jax.admmirnn(rho=(np.float32(10), jnp.asarray(10.0), 1))
    for factory, kw in ((admm_jax.admm_preconditioned, {"model": m, "inputs": x,
                                                        "learning_rate": 0.1}),
                        (admm_jax.admmirnn, {})):
        static = (("sweeps", "newton_steps", "a_steps", "cg_steps") if factory is admm_jax.admmirnn
                  else ("model",))
        tx = optax.inject_hyperparams(factory, static_args=static)(**kw)
        state = tx.init(params)
        u, state = jax.jit(lambda s, p, tx=tx: tx.update(None, s, p, inputs=x, targets=y))(
            state, params)
        assert any(float(jnp.abs(v).max()) > 0 for v in jax.tree.leaves(u))
    with pytest.raises(TypeError, match="static_args"):
        tx = optax.inject_hyperparams(admm_jax.admmirnn)()
        jax.jit(lambda s, p: tx.update(None, s, p, inputs=x, targets=y))(tx.init(params), params)
    with pytest.raises(ValueError, match="rho"):
        admm_jax.admmirnn(rho=np.float32("inf"))


def test_empty_batch_lstm_without_inputs_and_multisteps_are_named():
    m = small_model()
    params = nnx.state(m, nnx.Param)
    x, y = small_batch()
    for tx in (admm_jax.admm_preconditioned(m, x), admm_jax.admmirnn()):
        with pytest.raises(ValueError, match="inputs: expected at least one sample"):
            tx.update(None, tx.init(params), params, inputs=x[:0], targets=y[:0])
    lstm = LSTM(D, H, C, rngs=nnx.Rngs(0))
    lp = nnx.state(lstm, nnx.Param)
    tx = admm_jax.admm_preconditioned(lstm, x)
    with pytest.raises(ValueError, match="inputs, targets"):
        tx.update(None, tx.init(lp), lp)
    with pytest.raises(ValueError, match="MultiSteps"):  # ADMMiRNN never reads gradients
        fit(small_model(), optax.MultiSteps(admm_jax.admmirnn(), 2), (x, y), iterations=1,
            batch_size=4)
