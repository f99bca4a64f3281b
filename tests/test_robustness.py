"""Issue 19, the adversarial round: one regression test per defect (numbered as in the issue),
the non-finite rule for every optimizer, and hypothesis fuzzing of indices and token ids."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import admm_jax
from admm_jax import LSTM, ElmanRNN, _validation, optimizers
from admm_jax.models.elman import input_projection
from admm_jax.train import Checkpoint, Restored, fit, load_checkpoint

N, T, D, H, C = 8, 4, 3, 4, 2


def batch(n=N, seed=0, dtype=np.float32):
    x = np.random.default_rng(seed).normal(size=(n, T, D)).astype(dtype)
    return x, (x[:, :, 0].sum(1) > 0).astype(np.int32)


def model(**kw):
    return ElmanRNN(D, H, C, rngs=nnx.Rngs(0), **kw)


def build(name):
    kw = {}
    if name == "random_bases":
        kw["dim"] = 4
    return optimizers.get(name, **kw)


def grads_of(m, x, y):
    def loss(p):
        out = nnx.merge(nnx.graphdef(m), p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
    return jax.grad(loss)(nnx.state(m, nnx.Param))


def same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(jax.random.key_data(u) if jax.dtypes.issubdtype(
            u.dtype, jax.dtypes.prng_key) else u), np.asarray(
            jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)
            else v), equal_nan=True) for u, v in zip(la, lb, strict=True))


# --------------------------------------------------------------- 1. resume with --iterations


def test_1_iterations_count_the_whole_run_on_resume(tmp_path):
    x, y = batch(32)
    full = model()
    h_full = fit(full, optimizers.get("adam"), (x, y), iterations=10, batch_size=8)
    part = model()
    fit(part, optimizers.get("adam"), (x, y), iterations=4, batch_size=8,
        callbacks=[Checkpoint(tmp_path)])
    resumed = model()
    params = nnx.state(resumed, nnx.Param)
    tx = optimizers.get("adam")
    r = load_checkpoint(tmp_path, params, tx.init(params))
    nnx.update(resumed, r.params)
    h = fit(resumed, tx, (x, y), iterations=10, batch_size=8, resume=r)
    assert h.meta["iterations"] == 10 == len(h.steps["loss"])
    assert h.steps["loss"] == h_full.steps["loss"]
    assert same(nnx.state(resumed, nnx.Param), nnx.state(full, nnx.Param))
    # already past the total: nothing more is run
    h2 = fit(resumed, tx, (x, y), iterations=3, batch_size=8, resume=Restored(history=h))
    assert h2.meta["iterations"] == 10


# ------------------------------------------- 2 + bar: a bad batch loses nothing, every optimizer


@pytest.mark.parametrize("name", optimizers.names())
def test_2_bad_batch_keeps_last_good_weights_and_state(name):
    m = model()
    params = nnx.state(m, nnx.Param)
    tx = build(name)
    x, y = batch()

    @jax.jit
    def step(params, state, x, y):
        g = None if optimizers.takes_batch(name) else grads_of(nnx.merge(nnx.graphdef(m), params),
                                                               x, y)
        u, state = tx.update(g, state, params, inputs=x, targets=y)
        return optax.apply_updates(params, u), state

    params, state = step(params, tx.init(params), x, y)  # one good step
    bad = x.copy()
    bad[3, 1, 2] = np.nan
    p2, s2 = step(params, state, bad, y)
    assert same(p2, params), "weights changed by a bad batch"
    if name == "admmirnn":  # its own rule: everything but the diagnostics of the failed try
        assert same(s2._replace(diagnostics=state.diagnostics), state)
        assert np.isnan(float(s2.diagnostics.loss))
    else:
        assert same(s2, state), "optimizer state changed by a bad batch"
    p3, _ = step(p2, s2, x, y)  # and training goes on from there
    assert not same(p3, p2)


def test_2_nnx_optimizer_loop_survives_a_nan_batch_and_rejects_inf_rates():
    m = model()
    opt = nnx.Optimizer(m, admm_jax.admm_preconditioned(), wrt=nnx.Param)
    x, y = batch()
    opt.update(m, None, inputs=x, targets=y)
    before = jax.tree.map(jnp.copy, nnx.state(m, nnx.Param))
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    opt.update(m, None, inputs=bad, targets=y)
    assert same(nnx.state(m, nnx.Param), before)
    assert int(opt.opt_state.count[...]) == 1  # the rejected step did not count
    for v in (float("inf"), float("nan"), -1.0, np.float32("inf")):
        with pytest.raises(ValueError, match="learning_rate"):
            admm_jax.admm_preconditioned(v)


def test_2_reject_nonfinite_is_idempotent_and_keeps_the_state_type():
    tx = admm_jax.reject_nonfinite(optax.adam(0.1))
    assert admm_jax.reject_nonfinite(tx).update is tx.update
    pc = admm_jax.admm_preconditioned()
    assert admm_jax.reject_nonfinite(pc).update is pc.update
    assert isinstance(pc.init(nnx.state(model(), nnx.Param)), admm_jax.ADMMPreconditionedState)


# ----------------------------------------------------------------------------- 3. token ids


def token_batch(bad=None):
    ids = np.random.default_rng(0).integers(0, 5, size=(N, T)).astype(np.int32)
    if bad is not None:
        ids[2, 1] = bad
    return ids, (ids[:, -1] % C).astype(np.int32)


@pytest.mark.parametrize("bad", [5, 7, -1])
def test_3_token_ids_outside_the_vocabulary_are_named(bad):
    ids, y = token_batch(bad)
    m = ElmanRNN(5, H, C, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"train_data inputs: expected token ids in \[0, 5\)"):
        fit(m, optimizers.get("adam"), (ids, y), iterations=1, batch_size=4)
    params = nnx.state(m, nnx.Param)
    for tx in (admm_jax.admm_preconditioned(), admm_jax.admmirnn()):
        with pytest.raises(ValueError, match=r"inputs: expected token ids in \[0, 5\)"):
            tx.update(None, tx.init(params), params, inputs=ids, targets=y)
    # under jit the ids cannot be read: the projection is NaN, so the step is rejected
    tx = admm_jax.admm_preconditioned()
    u, s = jax.jit(lambda p, s, x, y: tx.update(None, s, p, inputs=x, targets=y))(
        params, tx.init(params), ids, y)
    assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree.leaves(u))
    assert int(s.count) == 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-3, 8), min_size=1, max_size=6))
def test_3_fuzz_token_ids_check_and_traced_projection(ids):
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


# ------------------------------------------------------------------------------- 4. text()


def test_4_text_missing_or_binary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="path_or_string: no such file"):
        admm_jax.data.text("/no/such/file.txt", seq_len=4)
    with pytest.raises(FileNotFoundError, match="path_or_string"):
        admm_jax.data.text(pathlib.Path(tmp_path / "missing"), seq_len=4)
    b = tmp_path / "blob.bin"
    b.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="is not utf-8 text"):
        admm_jax.data.text(b, seq_len=4)
    assert admm_jax.data.text("hello world", seq_len=4).inputs.shape == (2, 4)


# ---------------------------------------------------------------------------- 5. indices


@pytest.mark.parametrize("idx, match", [
    ([0, 1, 2, 3, 4, 5, 6, 8], r"positions in \[0, 8\)"),
    ([0, 1, 2, 3, 4, 5, 6, -1], r"positions in \[0, 8\)"),
    ([0, 1, 2, 3, 4, 5, 6, 6], "distinct"),
])
def test_5_bad_indices_are_rejected(idx, match):
    params = nnx.state(model(), nnx.Param)
    tx = admm_jax.admmirnn(num_samples=N, seq_len=T, sweep="backward")  # per-sample state
    x, y = batch()
    with pytest.raises(ValueError, match=match):
        tx.update(None, tx.init(params), params, inputs=x, targets=y, indices=np.asarray(idx))


_JIT_CACHE = {}


def _jitted_admm():
    if not _JIT_CACHE:
        params = nnx.state(model(), nnx.Param)
        tx = admm_jax.admmirnn(num_samples=N, seq_len=T, sweep="backward")  # per-sample state
        step = jax.jit(lambda p, s, x, y, i: tx.update(None, s, p, inputs=x, targets=y,
                                                       indices=i))
        _JIT_CACHE.update(params=params, state=tx.init(params), step=step)
    return _JIT_CACHE


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(-2, N + 1), min_size=4, max_size=4))
def test_5_fuzz_indices_eager_check_and_traced_rejection(idx):
    a = np.asarray(idx, np.int32)
    valid = all(0 <= i < N for i in idx) and len(set(idx)) == len(idx)
    if valid:
        _validation.indices("indices", a, N, 4)
    else:
        with pytest.raises(ValueError, match="indices"):
            _validation.indices("indices", a, N, 4)
    c = _jitted_admm()
    x, y = batch(4)
    u, s = c["step"](c["params"], c["state"], x, y, jnp.asarray(a))
    moved = any(float(jnp.abs(v).max()) > 0 for v in jax.tree.leaves(u))
    assert moved == valid
    assert int(s.count) == int(valid)
    if not valid:  # nothing written to any sample's multipliers
        assert same(s.duals, c["state"].duals)


# ---------------------------------------------------------------------- 6. Flax layouts


class FlaxModel(nnx.Module):
    def __init__(self, rngs, **kw):
        self.rnn = nnx.RNN(nnx.SimpleCell(D, H, rngs=rngs, **kw), rngs=False)
        self.head = nnx.Linear(H, C, rngs=rngs)

    def __call__(self, x):
        carry = jnp.zeros((x.shape[0], H), x.dtype)
        return self.head(self.rnn(x, initial_carry=carry)[:, -1])


def test_6_flax_layouts_that_cannot_be_trained_raise():
    tx = admm_jax.admmirnn()
    rev = nnx.RNN(nnx.SimpleCell(D, H, rngs=nnx.Rngs(0)), reverse=True)
    with pytest.raises(ValueError, match="reverse"):
        admm_jax.adapt_flax_rnn(tx, rev)
    gelu = nnx.SimpleCell(D, H, rngs=nnx.Rngs(0), activation_fn=jax.nn.gelu)
    with pytest.raises(ValueError, match="tanh and relu"):
        admm_jax.adapt_flax_rnn(tx, gelu)
    relu = FlaxModel(nnx.Rngs(0), activation_fn=jax.nn.relu)
    with pytest.raises(ValueError, match="activation='relu'"):
        admm_jax.adapt_flax_rnn(tx, relu.rnn)
    ok = admm_jax.adapt_flax_rnn(admm_jax.admmirnn(activation="relu"), relu.rnn)
    x, y = batch()
    fit(relu, ok, (x, y), iterations=1, batch_size=N)
    # fit checks the model against the optimizer (no module passed to the adapter)
    with pytest.raises(ValueError, match="activation"):
        fit(relu, admm_jax.adapt_flax_rnn(tx), (x, y), iterations=1, batch_size=N)
    with pytest.raises(ValueError, match="activation='tanh', but the model has "
                                         "activation='relu'"):
        fit(model(activation="relu"), tx, (x, y), iterations=1, batch_size=N)
    with pytest.raises(ValueError, match="many_to_many"):
        fit(model(many_to_many=True), admm_jax.admm_preconditioned(), (x, np.zeros((N, T),
                                                                                    np.int32)),
            iterations=1, batch_size=N)


# ----------------------------------------------------------------- 7. the README's snippet


# The README's quick start with either optimizer line: tests/test_docs.py.


# ------------------------------------------------------- 8. scalar arrays as hyperparameters


def test_8_scalar_arrays_and_inject_hyperparams():
    params = nnx.state(model(), nnx.Param)
    x, y = batch()
    admm_jax.admm_preconditioned(np.float32(0.1), jnp.asarray(1.0), prox=np.float64(0.1))
    admm_jax.admmirnn(rho=np.float32(10))
    admm_jax.admmirnn(rho=(np.float32(10), jnp.asarray(10.0), 1))
    for factory, kw in ((admm_jax.admm_preconditioned, {"learning_rate": 0.1}),
                        (admm_jax.admmirnn, {})):
        static = (("sweeps", "newton_steps", "a_steps", "cg_steps") if factory is admm_jax.admmirnn
                  else ())
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


# ------------------------------------------------------------------------ 10. internal errors


def test_10_empty_batch_lstm_without_inputs_multisteps():
    params = nnx.state(model(), nnx.Param)
    x, y = batch()
    for tx in (admm_jax.admm_preconditioned(), admm_jax.admmirnn()):
        with pytest.raises(ValueError, match="inputs: expected at least one sample"):
            tx.update(None, tx.init(params), params, inputs=x[:0], targets=y[:0])
    lp = nnx.state(LSTM(D, H, C, rngs=nnx.Rngs(0)), nnx.Param)
    tx = admm_jax.admm_preconditioned()
    with pytest.raises(ValueError, match="inputs, targets"):
        tx.update(None, tx.init(lp), lp)
    with pytest.raises(ValueError, match="MultiSteps"):
        fit(model(), optax.MultiSteps(admm_jax.admm_preconditioned(), 2), (x, y),
            iterations=1, batch_size=4)


# ------------------------------------------------------------------------- 12. blame


def test_12_checkpoint_of_another_width_blames_the_parameters(tmp_path):
    x, y = batch(16)
    fit(ElmanRNN(D, 4, C, rngs=nnx.Rngs(0)), optimizers.get("adam"), (x, y), iterations=1,
        batch_size=8, callbacks=[Checkpoint(tmp_path)])
    p5 = nnx.state(ElmanRNN(D, 5, C, rngs=nnx.Rngs(0)), nnx.Param)
    with pytest.raises(ValueError,
                       match=r"^params, opt_state: .*: params leaf \['U'\] saved as "):
        load_checkpoint(tmp_path, p5, optimizers.get("adam").init(p5))


def test_12_flax_rnn_with_rngs_is_a_model_error():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.rnn = nnx.RNN(nnx.SimpleCell(D, H, rngs=rngs))
            self.head = nnx.Linear(H, C, rngs=rngs)

        def __call__(self, x):
            return self.head(self.rnn(x)[:, -1])

    x, y = batch()
    with pytest.raises(ValueError, match="^model: M holds RNG state"):
        fit(M(nnx.Rngs(0)), optimizers.get("adam"), (x, y), iterations=1, batch_size=4)


@pytest.mark.parametrize("split, match", [("train[50000:40000]", "selects no samples"),
                                          ("train[:70000]", "up to 70000"),
                                          ("test[-20000:]", "up to -20000")])
def test_12_invalid_mnist_splits(split, match, data_dir):
    with pytest.raises(ValueError, match=f"split: .*{match}"):
        admm_jax.data.mnist(split, data_dir=data_dir)


def test_12_permutation_seed_is_named(data_dir):
    with pytest.raises(ValueError, match="permutation_seed"):
        admm_jax.data.mnist("test", layout="permuted", permutation_seed=-1, data_dir=data_dir)
