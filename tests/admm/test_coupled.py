"""The time-coupled (a, h) block: its two exact solvers against each other, the dense solve
and the linearised subproblem's optimality condition, truncated CG, and the backtracked step
on the true augmented Lagrangian (float64)."""

from __future__ import annotations

import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from admm_problems import BLOCK_CONFIGS as CONFIGS
from admm_problems import lagrangian, make_problem, rel_norm

from admm_jax.admm import coupled, sweeps
from admm_jax.admm.problem import ADMMConfig, lagrangian_from_residuals, residuals
from admm_jax.models.elman import activation_fn


def _linearised_lagrangian(params, aux, duals, rho, x, y, cfg):
    """The augmented Lagrangian with f replaced by its tangent at ``aux.a`` (independent of
    the block's algebra: built from the library's residuals and Lagrangian)."""
    f = activation_fn(cfg.activation)
    slope = coupled.activation_slope(aux.a, cfg)

    def fn(ah):
        a, h = ah
        r = residuals(params, aux._replace(a=a, h=h), x, cfg)
        r = r._replace(r2=h - f(aux.a) - slope * (a - aux.a))
        return lagrangian_from_residuals(params, aux.o, r, duals, rho, y, cfg)

    return fn


def _exact_cg_steps(aux):
    return aux.o.shape[1] * aux.o.shape[2] + 1  # C |S| + 1


@pytest.mark.parametrize("name", list(CONFIGS))
def test_coupled_linearised_solve_is_the_exact_minimiser(name):
    """After C|S|+1 conjugate-gradient steps: gradient of the linearised subproblem ~ 0 and
    equal to the dense solve of the assembled (2 T H)-dimensional system."""
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(15, cfg=cfg, perturb=1.0)
    cfg = dataclasses.replace(cfg, cg_steps=_exact_cg_steps(aux))
    a, h = coupled.coupled_linearised_solve(params, aux, duals, rho, x, cfg)
    q = _linearised_lagrangian(params, aux, duals, rho, x, y, cfg)
    assert rel_norm(jax.grad(q)((a, h)), jax.grad(q)((aux.a, aux.h))) < 1e-9
    # brute force: the dense Hessian of q over all (a, h) of all samples, np.linalg.solve
    flat, unravel = jax.flatten_util.ravel_pytree((aux.a, aux.h))
    fn = lambda v: q(unravel(v))  # noqa: E731
    hess = np.asarray(jax.hessian(fn)(flat))
    ref = unravel(flat - np.linalg.solve(hess, np.asarray(jax.grad(fn)(flat))))
    np.testing.assert_allclose(a, ref[0], rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(h, ref[1], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 2])
def test_coupled_linearised_solve_fewer_steps_still_decrease(steps):
    """Truncated CG (fewer than C|S|+1 steps) is not exact but lowers the linearised
    subproblem monotonically in the number of steps."""
    cfg = ADMMConfig(many_to_many=True)
    params, aux, duals, rho, x, y = make_problem(16, cfg=cfg, perturb=1.0)
    q = _linearised_lagrangian(params, aux, duals, rho, x, y, cfg)
    values = [float(q((aux.a, aux.h)))]
    for k in (steps, steps + 1, _exact_cg_steps(aux)):
        values.append(float(q(coupled.coupled_linearised_solve(
            params, aux, duals, rho, x, dataclasses.replace(cfg, cg_steps=k)))))
    assert values[0] > values[1] >= values[2] >= values[3] - 1e-9
    grad = jax.grad(q)(coupled.coupled_linearised_solve(
        params, aux, duals, rho, x, dataclasses.replace(cfg, cg_steps=steps)))
    assert rel_norm(grad, jax.grad(q)((aux.a, aux.h))) > 1e-6  # truncated: not yet exact


@pytest.mark.parametrize("perturb", [0.3, 3.0])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_coupled_sweep_never_increases_the_lagrangian(name, perturb):
    """The backtracked step on the true subproblem: L never increases, per sample too (the
    block is separable over samples), and strictly decreases overall."""
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(17, cfg=cfg, perturb=perturb)
    new = coupled.sweep_coupled(params, aux, duals, rho, x, cfg)
    per_sample = jax.vmap(lambda a, h, o, l1, l2, l3, xx, yy: lagrangian(
        params, type(aux)(a[None], h[None], o[None]), type(duals)(l1[None], l2[None], l3[None]),
        rho, xx[None], yy[None], cfg))
    before = per_sample(*aux, *duals, x, y)
    after = per_sample(new.a, new.h, new.o, *duals, x, y)
    assert jnp.all(after <= before + 1e-12 * jnp.abs(before))
    assert float(after.sum()) < float(before.sum())


def test_coupled_sweep_backtracks_when_the_linearisation_is_poor():
    """Far from the tangent (large perturbation, weak C1) the full Gauss-Newton step raises
    the true L of some samples; exactly those take a shorter step (or none), and none ends
    above where it started."""
    cfg = ADMMConfig(cg_steps=8)
    params, aux, duals, rho, x, y = make_problem(18, cfg=cfg, perturb=3.0, rho=(0.05, 5.0, 1.0))
    a_lin, h_lin = coupled.coupled_linearised_solve(params, aux, duals, rho, x, cfg)
    new = coupled.sweep_coupled(params, aux, duals, rho, x, cfg)
    per_sample = jax.vmap(lambda a, h, o, l1, l2, l3, xx, yy: lagrangian(
        params, type(aux)(a[None], h[None], o[None]), type(duals)(l1[None], l2[None], l3[None]),
        rho, xx[None], yy[None], cfg))
    before = per_sample(*aux, *duals, x, y)
    at_full = per_sample(a_lin, h_lin, aux.o, *duals, x, y)
    after = per_sample(*new, *duals, x, y)
    full = np.all(np.isclose(new.h, h_lin, rtol=0, atol=1e-12), axis=(1, 2))
    assert 0 < full.sum() < len(full)  # both cases occur
    np.testing.assert_array_equal(full, np.asarray(at_full <= before))
    assert jnp.all(after <= before)


def test_coupled_sweep_moves_every_step_in_one_iteration():
    """The point of the block: a change of the output target reaches a_1 in one call, far
    more than the backward sweep's <= 1/4 attenuation per step passes on."""
    cfg = ADMMConfig(loss="mse")
    params, aux, duals, rho, x, y = make_problem(19, cfg=cfg, t=12, perturb=0.0,
                                                 rho=(1.0, 10.0, 1.0))
    duals = type(duals)(*(jnp.zeros_like(d) for d in duals))
    aux = aux._replace(o=aux.o + 1.0)
    moved = coupled.sweep_coupled(params, aux, duals, rho, x, cfg)
    backward = sweeps.sweep_backward(params, aux, duals, rho, x, cfg)
    moved_c = np.linalg.norm(moved.a - aux.a, axis=(0, 2))
    moved_b = np.linalg.norm(backward.a - aux.a, axis=(0, 2))
    assert moved_c[0] > 10 * moved_b[0]
    assert moved_c[0] > 1e-3 * moved_c[-1]


@pytest.mark.parametrize("perturb", [0.3, 3.0])
@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if not c.many_to_many])
def test_output_space_solve_is_the_same_solution_as_the_exact_cg_solve(name, perturb):
    """The cheaper exact iteration: one backward scan with C adjoints and a C x C solve give
    the same minimiser of the same linearised subproblem as C|S|+1 conjugate-gradient steps
    (float64), and the same as the dense solve; its gradient vanishes."""
    cfg = dataclasses.replace(CONFIGS[name], cg_steps=None)
    params, aux, duals, rho, x, y = make_problem(21, cfg=cfg, perturb=perturb)
    a_out, h_out = coupled.coupled_output_solve(params, aux, duals, rho, x, cfg)
    cg = dataclasses.replace(cfg, cg_steps=_exact_cg_steps(aux))
    a_cg, h_cg = coupled.coupled_linearised_solve(params, aux, duals, rho, x, cg)
    np.testing.assert_allclose(a_out, a_cg, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(h_out, h_cg, rtol=1e-9, atol=1e-11)
    q = _linearised_lagrangian(params, aux, duals, rho, x, y, cfg)
    assert rel_norm(jax.grad(q)((a_out, h_out)), jax.grad(q)((aux.a, aux.h))) < 1e-9
    flat, unravel = jax.flatten_util.ravel_pytree((aux.a, aux.h))
    fn = lambda v: q(unravel(v))  # noqa: E731
    ref = unravel(flat - np.linalg.solve(np.asarray(jax.hessian(fn)(flat)),
                                         np.asarray(jax.grad(fn)(flat))))
    np.testing.assert_allclose(a_out, ref[0], rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(h_out, ref[1], rtol=1e-8, atol=1e-9)
    # and the coupled block uses it: cg_steps=None, many-to-one
    new = coupled.sweep_coupled(params, aux, duals, rho, x, cfg)
    new_cg = coupled.sweep_coupled(params, aux, duals, rho, x, cg)
    np.testing.assert_allclose(new.a, new_cg.a, rtol=1e-9, atol=1e-11)


def test_output_space_solve_needs_many_to_one():
    cfg = ADMMConfig(many_to_many=True)
    params, aux, duals, rho, x, _ = make_problem(22, cfg=cfg)
    with pytest.raises(ValueError, match="many_to_many"):
        coupled.coupled_output_solve(params, aux, duals, rho, x, cfg)


@pytest.mark.parametrize("name", ["m2o-ce", "m2m-ce"])
def test_coupled_step_reports_the_c1_slack_of_its_result(name):
    """The multiplier step reads C1's residual from the block instead of another W h product:
    it equals the residual computed from scratch."""
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, _ = make_problem(23, cfg=cfg, perturb=1.0)
    new, c1 = coupled.coupled_step(params, aux, duals, rho, x, cfg)
    r1 = residuals(params, new, x, cfg).r1
    np.testing.assert_allclose(c1 - duals.lam1 / rho.rho1, r1, rtol=1e-9, atol=1e-11)
