"""The step-by-step (h, a) blocks and the backward and parallel sweeps (float64)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from admm_problems import BLOCK_CONFIGS as CONFIGS
from admm_problems import lagrangian, make_problem, newton_minimiser, rel_norm

from admm_jax.admm import blocks, sweeps
from admm_jax.admm.problem import ADMMConfig

# ------------------------------------------------------------------------------ h-block


@pytest.mark.parametrize("name", list(CONFIGS))
def test_h_block_exact_all_steps(name):
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(6, cfg=cfg)
    h = sweeps.h_block(params, aux, duals, rho, x, cfg)

    def L(h_):
        return lagrangian(params, aux._replace(h=h_), duals, rho, x, y, cfg)

    assert rel_norm(jax.grad(L)(h), jax.grad(L)(aux.h)) < 1e-8
    np.testing.assert_allclose(h, newton_minimiser(L, aux.h), rtol=1e-8, atol=1e-10)


def test_h_block_sees_the_recurrent_coupling():
    """The authors' code ignores C1 at t+1 in the h-update: h_t must depend on a_{t+1}."""
    cfg = ADMMConfig()
    params, aux, duals, rho, x, _ = make_problem(7, cfg=cfg)
    h1 = sweeps.h_block(params, aux, duals, rho, x, cfg)
    h2 = sweeps.h_block(params, aux._replace(a=aux.a.at[:, 3].add(1.0)), duals, rho, x, cfg)
    assert float(jnp.abs(h1[:, 2] - h2[:, 2]).max()) > 1e-3  # h_3 (index 2) sees a_4
    np.testing.assert_allclose(h1[:, 4], h2[:, 4])  # h_T has no step T+1


# ------------------------------------------------------------------------------ a-block


def _g(a, u, v, rho, f):
    return 0.5 * rho.rho1 * (a - u) ** 2 + 0.5 * rho.rho2 * (v - f(a)) ** 2


def test_a_block_relu_matches_grid_search():
    cfg = ADMMConfig(activation="relu")
    params, aux, duals, rho, x, y = make_problem(8, cfg=cfg, perturb=1.0)
    a = sweeps.a_block(params, aux, duals, rho, x, cfg)
    # brute force: dense grid around the solution, per entry
    u, v = _a_block_uv(params, aux, duals, rho, x)
    grid = jnp.linspace(-6.0, 6.0, 24001)
    vals = _g(grid[:, None, None, None], u, v, rho, jax.nn.relu)
    best = grid[jnp.argmin(vals, axis=0)]
    np.testing.assert_allclose(a, best, atol=1e-3)
    assert jnp.all(_g(a, u, v, rho, jax.nn.relu) <= vals.min(0) + 1e-12)


def _a_block_uv(params, aux, duals, rho, x):
    h_prev = jnp.concatenate([jnp.zeros_like(aux.h[:, :1]), aux.h[:, :-1]], 1)
    z = x @ params["U"].T + h_prev @ params["W"].T + params["b"]
    return z - duals.lam1 / rho.rho1, aux.h + duals.lam2 / rho.rho2


def test_a_block_tanh_sufficient_decrease_every_step():
    cfg = ADMMConfig(a_steps=1)
    params, aux, duals, rho, x, y = make_problem(9, cfg=cfg, perturb=1.5)
    u, v = _a_block_uv(params, aux, duals, rho, x)
    a = aux.a
    a_block = jax.jit(lambda a: sweeps.a_block(params, aux._replace(a=a), duals, rho, x, cfg))
    slope = jax.jit(jax.vmap(jax.grad(lambda s, uu, vv: _g(s, uu, vv, rho, jnp.tanh))))
    for _ in range(6):
        new = a_block(a)
        grad = slope(a.ravel(), u.ravel(), v.ravel()).reshape(a.shape)
        lc = sweeps.a_curvature_bound(v, rho)
        assert jnp.all(_g(new, u, v, rho, jnp.tanh)
                       <= _g(a, u, v, rho, jnp.tanh) - grad**2 / (2 * lc) + 1e-12)
        a = new


def test_a_block_tanh_reaches_a_local_minimum_and_uses_the_right_derivative():
    """Stationary with g'' >= 0 after enough steps. With large |a| the authors' tanh' = 1 - a^2
    would give a wrong (even negative) slope; jax.grad of g is the independent reference."""
    cfg = ADMMConfig(a_steps=60)
    params, aux, duals, rho, x, y = make_problem(10, cfg=cfg, perturb=2.0)
    u, v = _a_block_uv(params, aux, duals, rho, x)
    a = sweeps.a_block(params, aux, duals, rho, x, cfg)
    g1 = jax.vmap(jax.grad(lambda s, uu, vv: _g(s, uu, vv, rho, jnp.tanh)))
    g2 = jax.vmap(jax.grad(jax.grad(lambda s, uu, vv: _g(s, uu, vv, rho, jnp.tanh))))
    args = (a.ravel(), u.ravel(), v.ravel())
    scale = float(rho.rho1) * (1.0 + float(jnp.abs(u).max()))
    assert float(jnp.abs(g1(*args)).max()) < 1e-8 * scale
    assert jnp.all(g2(*args) >= -1e-9)
    assert float(jnp.abs(aux.a).max()) > 1.5  # the test does exercise |a| > 1


# -------------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("name", ["m2o-ce", "m2m-mse-relu"])
def test_backward_sweep_equals_step_by_step_reference(name):
    """The scan equals a naive loop t = T..1 of exact h_t solves (brute-force Newton on L)
    followed by the a_t solver, each using the latest values. The a-solver runs to
    convergence so that rounding-level differences cannot flip its choice of candidate."""
    cfg = dataclasses.replace(CONFIGS[name], a_steps=40)
    params, aux, duals, rho, x, y = make_problem(11, cfg=cfg)
    got = sweeps.sweep_backward(params, aux, duals, rho, x, cfg)
    a, h = aux.a, aux.h
    for t in reversed(range(aux.a.shape[1])):
        def L_t(h_t, a=a, h=h, t=t):
            return lagrangian(params, aux._replace(a=a, h=h.at[:, t].set(h_t)), duals, rho, x,
                              y, cfg)

        h = h.at[:, t].set(newton_minimiser(L_t, h[:, t]))
        cur = aux._replace(a=a, h=h)
        a = a.at[:, t].set(sweeps.a_block(params, cur, duals, rho, x, cfg)[:, t])
    np.testing.assert_allclose(got.h, h, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(got.a, a, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("sweep", [sweeps.sweep_backward, sweeps.sweep_parallel])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sweeps_do_not_increase_lagrangian(sweep, name):
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(12, cfg=cfg, perturb=1.0)
    new = sweep(params, aux, duals, rho, x, cfg)
    assert lagrangian(params, new, duals, rho, x, y, cfg) <= lagrangian(
        params, aux, duals, rho, x, y, cfg)


# -------------------------------------------------------------- whole iteration, jit, vmap


def _primal_pass(params, aux, duals, rho, x, y, cfg):
    aux = aux._replace(o=blocks.o_block(params, aux, duals, rho, y, cfg))
    aux = sweeps.sweep_backward(params, aux, duals, rho, x, cfg)
    params = {**params, **blocks.uwb_block(params, aux, duals, rho, x, cfg)[0]}
    params = {**params, **blocks.vc_block(params, aux, duals, rho, cfg)[0]}
    return params, aux


@pytest.mark.parametrize("name", list(CONFIGS))
def test_iteration_primal_part_decreases_lagrangian(name):
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(14, cfg=cfg, perturb=1.0)
    before = lagrangian(params, aux, duals, rho, x, y, cfg)
    p2, aux2 = _primal_pass(params, aux, duals, rho, x, y, cfg)
    assert lagrangian(p2, aux2, duals, rho, x, y, cfg) < before


def test_jit_and_vmap_agree_with_eager():
    """Norm-wise agreement (1e-9 of each leaf's largest entry): jit reassociates the Gram sums,
    and the solves amplify that rounding by their condition number in near-zero entries."""
    cfg = ADMMConfig(a_steps=40)  # converged a-solves: no rounding-sensitive candidate choice
    problems = [make_problem(s, cfg=cfg) for s in (20, 21)]
    fn = functools.partial(_primal_pass, cfg=cfg)
    eager = [fn(*p) for p in problems]
    jitted = [jax.jit(fn)(*p) for p in problems]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *problems)
    vmapped = jax.vmap(fn)(*stacked)
    for i, (e, j) in enumerate(zip(eager, jitted, strict=True)):
        for a, b, c in zip(jax.tree.leaves(e), jax.tree.leaves(j),
                           jax.tree.leaves(jax.tree.map(lambda v, i=i: v[i], vmapped)),
                           strict=True):
            scale = float(jnp.abs(a).max())
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * scale)
            np.testing.assert_allclose(a, c, rtol=0, atol=1e-9 * scale)
