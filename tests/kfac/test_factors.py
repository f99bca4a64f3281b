"""The damped inverses and the Kronecker-factored step against explicit ``np.kron`` solves
(float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from kfac_reference import FlaxRNN

import admm_jax
from admm_jax.kfac import factors
from admm_jax.kfac.transform import bind_model, model_plan


def spd(rng, n):
    m = rng.normal(size=(n, n))
    return m @ m.T / n + 0.1 * np.eye(n)


def test_damped_inverse_is_the_tikhonov_inverse(x64):
    rng = np.random.default_rng(0)
    f = spd(rng, 5)
    m = np.trace(f) / 5
    np.testing.assert_allclose(factors.damped_inverse(jnp.asarray(f), 0.3),
                               np.linalg.inv(f + 0.3 * m * np.eye(5)), rtol=1e-10)
    np.testing.assert_allclose(factors.damped_inverse(jnp.asarray(f), 0.3, True),
                               np.linalg.inv(f / m + 0.3 * np.eye(5)), rtol=1e-10)
    d = rng.uniform(0.1, 2.0, size=7)  # a diagonal factor (embedding counts)
    np.testing.assert_allclose(factors.damped_inverse(jnp.asarray(d), 0.3),
                               1.0 / (d + 0.3 * d.mean()), rtol=1e-12)


@settings(max_examples=10, deadline=None)
@given(p=st.integers(1, 6), z=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_kernel_step_solves_the_kronecker_system(p, z, seed):
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        a, s, g = spd(rng, p), spd(rng, z), rng.normal(size=(p, z))
        block = type("B", (), {"kind": "dense"})()
        step = factors.kernel_step(block, jnp.linalg.inv(a), jnp.linalg.inv(s), jnp.asarray(g))
        # row-major vec: vec(A^-1 G S^-1) = (A kron S)^-1 vec(G) for symmetric A, S
        want = np.linalg.solve(np.kron(a, s), g.reshape(-1)).reshape(p, z)
        np.testing.assert_allclose(step, want, rtol=1e-9, atol=1e-12)


def test_identity_factors_give_the_gradient():
    g = jnp.arange(12.0).reshape(4, 3)
    block = type("B", (), {"kind": "dense"})()
    np.testing.assert_array_equal(factors.kernel_step(block, jnp.eye(4), jnp.eye(3), g), g)
    np.testing.assert_array_equal(factors.kernel_step(block, jnp.eye(4), None, g), g)
    embed = type("B", (), {"kind": "embed"})()
    np.testing.assert_array_equal(factors.kernel_step(embed, jnp.ones(4), jnp.eye(3), g), g)


@pytest.mark.parametrize("model", ["elman", "lstm-cell", "embed-gru"])
def test_the_direction_is_the_kronecker_solve_of_the_gradient(model, x64):
    """One step of scale_by_kfac on a model: every weight's direction equals
    ``((A + kA I) kron (S/mS + mu I))^-1 vec(dL/dK)`` from the state's own factors, the
    kernel read in its ``[d_in, d_out]`` orientation and the bias as its last row."""
    n, t, d, h, c = 6, 4, 3, 5, 2
    key = jax.random.key(0)
    if model == "elman":
        m = admm_jax.ElmanRNN(d, h, c, rngs=nnx.Rngs(0), dtype=jnp.float64)
        x = jax.random.normal(key, (n, t, d), jnp.float64)
    else:
        kind, vocab = ("lstm", None) if model == "lstm-cell" else ("gru", 7)
        m = FlaxRNN(kind, d, h, c, vocab=vocab, rngs=nnx.Rngs(0), dtype=jnp.float64)
        x = (jax.random.randint(key, (n, t), 0, 7) if vocab
             else jax.random.normal(key, (n, t, d), jnp.float64))
    y = jax.random.randint(jax.random.key(1), (n,), 0, c)
    mu = 0.2
    tx = admm_jax.scale_by_kfac(m, x, damping=mu, adaptive_damping=False)
    params = nnx.state(m, nnx.Param)
    direction, state = tx.update(None, tx.init(params), params, inputs=x, targets=y)

    graphdef, _, rest = nnx.split(m, nnx.Param, ...)

    def loss(p):  # the model's other state rebuilt inside the trace (nnx.RNN's RNG counts)
        out = nnx.merge(graphdef, p, jax.tree.map(jnp.asarray, rest))(x)
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    grads = jax.tree.leaves(jax.grad(loss)(params))
    plan = model_plan(bind_model(m, x), params, x)[0]
    got = jax.tree.leaves(direction)
    for b in plan.blocks:
        a = np.asarray(state.a[b.a_slot])
        s = np.asarray(state.s[b.s_slot])
        per_gate = s if s.ndim == 3 else s[None]  # the GRU's three gates: one factor each
        s_damped = scipy.linalg.block_diag(*[f / (np.trace(f) / len(f)) + mu * np.eye(len(f))
                                             for f in per_gate])
        if b.kind == "embed":
            a_damped = np.diag(a + mu * a.mean())
        else:
            a_damped = a + mu * np.trace(a) / len(a) * np.eye(len(a))
        g = np.asarray(factors.kernel_gradient(b, grads))
        want = np.linalg.solve(np.kron(a_damped, s_damped), g.reshape(-1)).reshape(g.shape)
        mine = np.asarray(factors.kernel_gradient(b, got))
        np.testing.assert_allclose(mine, want, rtol=1e-8, atol=1e-12, err_msg=b.name)
