"""Mini-batch ADMMiRNN with multipliers in host memory, and the memory formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import admm_jax
from admm_jax.admm.streaming import HostDuals, admm_memory_bytes

N, T, D, H, C = 24, 6, 3, 8, 2


def toy(activation="tanh"):
    model = admm_jax.ElmanRNN(D, H, C, rngs=nnx.Rngs(0), dtype=jnp.float64,
                              activation=activation)
    x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)
    y = jnp.stack([x[:, :, 0].sum(1), x[:, :, 1].mean(1)], -1)
    return nnx.state(model, nnx.Param), x, y


def rel(a, b):
    return max(float(jnp.linalg.norm(u - v) / jnp.linalg.norm(u))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def make_step(tx):
    @jax.jit
    def step(params, state, x, y):
        updates, state = tx.update(None, state, params, inputs=x, targets=y)
        return optax.apply_updates(params, updates), state
    return step


def test_minibatch_of_all_samples_equals_full_batch_admm_on_the_first_call():
    """Mini-batch mode (auxiliaries reset from a forward pass, multipliers on the host) with
    batch = N, samples shuffled, equals true full-batch ADMM (persisted auxiliaries) for the
    first call of 3 sweeps; the second call differs (reset vs persisted auxiliaries).

    relu + mse: every block is solved in closed form. (With tanh / cross entropy the a- and
    o-blocks choose between candidates by comparing objective values, which fixes iterates
    only to ~sqrt(eps): a reordering of the samples alone then moves results by ~1e-8.)"""
    params, x, y = toy("relu")
    kw = dict(activation="relu", loss="mse", sweeps=3, sweep="backward")
    full = admm_jax.admmirnn(num_samples=N, seq_len=T, auxiliaries="persist", **kw)
    mini = admm_jax.admmirnn(num_samples=N, seq_len=T, **kw)
    step_full, step_mini = make_step(full), make_step(mini)
    store = HostDuals.like(params, num_samples=N, seq_len=T)
    perm = np.random.default_rng(0).permutation(N)
    pf, sf = params, full.init(params)
    pm, sm = params, mini.init(params)
    results = []
    for _ in range(2):
        pf, sf = step_full(pf, sf, x, y)
        sm = store.load(sm, perm)
        pm, sm = step_mini(pm, sm, x[perm], y[perm])
        store.save(sm, perm)
        results.append((rel(pf, pm), rel(sf.duals, (store.lam1, store.lam2, store.lam3))))
    assert rel(pf, params) > 1e-2
    assert results[0][0] < 1e-9 and results[0][1] < 1e-9, results
    assert results[1][0] > 1e-6  # from the second call on, the modes differ


def test_host_duals_gather_scatter_and_checks():
    store = HostDuals(5, 3, 2, 4, many_to_many=True, dtype=np.float64)
    assert store.lam3.shape == (5, 3, 4)
    assert store.nbytes == 8 * 5 * (2 * 3 * 2 + 3 * 4)
    idx = np.array([4, 1])
    duals = store.gather(idx)
    new = type(duals)(*(jnp.full_like(lam, i + 1.0) for i, lam in enumerate(duals)))
    store.scatter(idx, new)
    assert np.all(store.lam2[[1, 4]] == 2.0) and np.all(store.lam2[[0, 2, 3]] == 0.0)
    with pytest.raises(ValueError, match="indices"):
        store.gather(np.array([5]))
    with pytest.raises(ValueError, match="indices"):
        store.gather(np.array([[0]]))
    with pytest.raises(ValueError, match="indices: expected distinct"):
        store.scatter(np.array([1, 1]), new)  # one of the two rows would be lost
    with pytest.raises(ValueError, match="duals"):
        store.scatter(np.array([0]), new)
    with pytest.raises(ValueError, match="hidden"):
        HostDuals(5, 3, 0, 4)
    params, _, _ = toy()
    state = admm_jax.admmirnn(num_samples=4, seq_len=T, sweep="backward").init(params)
    with pytest.raises(ValueError, match="state"):
        HostDuals.like(params, N, T).load(state, np.arange(3))


def test_memory_formula_matches_xla_memory_analysis():
    """The formula's device bytes against XLA's own accounting of the compiled update
    (float32, T=28, D=28 as row-MNIST, H=32), full batch and mini-batch with host duals."""
    n, t, d, h, c, b = 2048, 28, 28, 32, 10, 128
    model = admm_jax.ElmanRNN(d, h, c, rngs=nnx.Rngs(0), dtype=jnp.float32)
    params = nnx.state(model, nnx.Param)
    for state_n, batch, host in ((n, n, False), (b, b, True)):
        tx = admm_jax.admmirnn(num_samples=state_n, seq_len=t, sweep="backward")
        state = jax.eval_shape(tx.init, params)
        x = jax.ShapeDtypeStruct((batch, t, d), jnp.float32)
        y = jax.ShapeDtypeStruct((batch,), jnp.int32)
        ma = jax.jit(lambda p, s, x, y, tx=tx: tx.update(None, s, p, inputs=x, targets=y),
                     donate_argnums=(1,)).lower(params, state, x, y).compile().memory_analysis()
        xla = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
               - ma.alias_size_in_bytes)
        pred = admm_memory_bytes(n, t, h, c, input_dim=d, batch_size=batch, host_duals=host,
                                 sweep="backward")
        assert 0.7 < pred["device"] / xla < 1.3, (state_n, pred, xla)
        assert pred["host"] == (n * (2 * t * h + c) * 4 if host else 0)


@pytest.mark.parametrize("many_to_many", [False, True])
def test_memory_formula_of_the_coupled_sweep(many_to_many):
    """The coupled default keeps no per-sample state: the formula says 0 bytes for it (so no
    caller refuses a run for state it never allocates), and its device bytes match XLA's
    accounting of the compiled update (many-to-one row-MNIST sizes; a many-to-many text
    batch)."""
    if many_to_many:
        n, t, d, h, c, b = 60000, 25, 60, 64, 60, 32
    else:
        n, t, d, h, c, b = 60000, 28, 28, 32, 10, 128
    model = admm_jax.ElmanRNN(d, h, c, rngs=nnx.Rngs(0), dtype=jnp.float32,
                              many_to_many=many_to_many)
    params = nnx.state(model, nnx.Param)
    tx = admm_jax.admmirnn(many_to_many=many_to_many)
    state = jax.eval_shape(tx.init, params)
    x = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    y = jax.ShapeDtypeStruct((b, t) if many_to_many else (b,), jnp.int32)
    ma = jax.jit(lambda p, s, x, y: tx.update(None, s, p, inputs=x, targets=y),
                 donate_argnums=(1,)).lower(params, state, x, y).compile().memory_analysis()
    xla = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
           - ma.alias_size_in_bytes)
    pred = admm_memory_bytes(n, t, h, c, input_dim=d, batch_size=b, many_to_many=many_to_many)
    assert pred["per_sample_state"] == 0 and pred["host"] == 0
    assert 0.7 < pred["device"] / xla < 1.3, (pred, xla)
    with pytest.raises(ValueError, match="auxiliaries, host_duals"):
        admm_memory_bytes(n, t, h, c, input_dim=d, host_duals=True)
    with pytest.raises(ValueError, match="sweep"):
        admm_memory_bytes(n, t, h, c, input_dim=d, sweep="forward")
