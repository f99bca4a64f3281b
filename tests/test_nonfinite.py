"""The non-finite rule (admm_jax.nonfinite) for every registered optimizer: a batch with a NaN
changes neither the weights nor the optimizer state, and training goes on from there."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import admm_jax
from admm_jax import ElmanRNN, optimizers

N, T, D, H, C = 8, 4, 3, 4, 2


def batch(n=N, seed=0, dtype=np.float32):
    x = np.random.default_rng(seed).normal(size=(n, T, D)).astype(dtype)
    return x, (x[:, :, 0].sum(1) > 0).astype(np.int32)


def model(**kw):
    return ElmanRNN(D, H, C, rngs=nnx.Rngs(0), **kw)


def package_built(name):
    """The registry's factory is the package's own (not optax's)."""
    factory = optimizers.entry(name).factory
    return getattr(factory, "func", factory).__module__.startswith("admm_jax")


def build(name, m=None):
    """The package's own methods as a user builds them (the factory itself, not through
    ``optimizers.get``: the rule must hold either way); optax's through ``optimizers.get``."""
    kw = {}
    if optimizers.entry(name).takes_model:
        kw.update(model=model() if m is None else m, inputs=batch()[0])
    if name == "random_bases":
        kw["dim"] = 4
    if not package_built(name):
        return optimizers.get(name, **kw)
    e = optimizers.entry(name)
    if e.takes_model:
        tx = e.factory(kw.pop("model"), kw.pop("inputs"), **kw)
    else:
        tx = e.factory(**kw) if e.learning_rate is None else e.factory(e.learning_rate, **kw)
    # it guards itself: optimizers.get's wrapper adds nothing
    assert admm_jax.reject_nonfinite(tx).update is tx.update, name
    return tx


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


@pytest.mark.parametrize("name", optimizers.names())
def test_a_bad_batch_keeps_the_last_good_weights_and_state(name):
    m = model()
    params = nnx.state(m, nnx.Param)
    tx = build(name, m)
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
    elif optimizers.entry(name).takes_model:  # K-FAC: everything but what it reports
        assert same(s2[0]._replace(loss=state[0].loss, step_norm=state[0].step_norm), state[0])
        assert same(s2[1:], state[1:])
        assert np.isnan(float(optimizers.diagnostics(s2)["batch_loss"]))
    else:
        assert same(s2, state), "optimizer state changed by a bad batch"
    p3, _ = step(p2, s2, x, y)  # and training goes on from there
    assert not same(p3, p2)


def test_an_nnx_optimizer_loop_survives_a_nan_batch_and_rejects_inf_rates():
    m = model()
    x, y = batch()
    opt = nnx.Optimizer(m, admm_jax.admm_preconditioned(m, x, 0.1), wrt=nnx.Param)
    opt.update(m, None, inputs=x, targets=y)
    before = jax.tree.map(jnp.copy, nnx.state(m, nnx.Param))
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    opt.update(m, None, inputs=bad, targets=y)
    assert same(nnx.state(m, nnx.Param), before)
    assert int(opt.opt_state[0].count[...]) == 1  # the rejected step did not count
    for v in (float("inf"), float("nan"), -1.0, np.float32("inf")):
        with pytest.raises(ValueError, match="learning_rate"):
            admm_jax.admm_preconditioned(m, x, v)


def test_reject_nonfinite_is_idempotent_and_keeps_the_state_type():
    tx = admm_jax.reject_nonfinite(optax.adam(0.1))
    assert admm_jax.reject_nonfinite(tx).update is tx.update
    m = model()
    pc = admm_jax.admm_preconditioned(m, batch()[0])
    assert admm_jax.reject_nonfinite(pc).update is pc.update
    state = pc.init(nnx.state(m, nnx.Param))  # optax.chain's tuple, not a wrapper's state
    assert type(state) is tuple and isinstance(state[0], admm_jax.KFACState)
