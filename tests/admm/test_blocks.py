"""Each ADMMiRNN block against its optimality condition and a brute-force solver (float64)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from admm_problems import make_problem, rel_norm

from admm_jax.admm import blocks
from admm_jax.admm.problem import (
    ADMMConfig,
    augmented_lagrangian,
    lagrangian_from_residuals,
    residuals,
)

CONFIGS = {
    "m2o-ce": ADMMConfig(),
    "m2m-ce": ADMMConfig(many_to_many=True),
    "m2o-mse": ADMMConfig(loss="mse"),
    "m2m-mse-relu": ADMMConfig(many_to_many=True, loss="mse", activation="relu"),
    "decay": ADMMConfig(weight_decay=0.3, prox=0.5),
}


def lagrangian(params, aux, duals, rho, inputs, targets, cfg, **kw):
    return augmented_lagrangian(params, aux, duals, rho, inputs, targets, cfg, **kw)


def newton_minimiser(fn, x):
    """Brute force for a block whose objective is quadratic: one exact Newton step on the
    dense Hessian that jax computes of the whole objective (no block-specific algebra)."""
    flat, unravel = jax.flatten_util.ravel_pytree(x)

    def f(v):
        return fn(unravel(v))

    g = jax.grad(f)(flat)
    hess = jax.hessian(f)(flat)
    return unravel(flat - jnp.linalg.solve(hess, g))


# ------------------------------------------------------------------------------- o-block


@pytest.mark.parametrize("name", list(CONFIGS))
def test_o_block_first_order_condition(name):
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(1, cfg=cfg)
    o = blocks.o_block(params, aux, duals, rho, y, cfg)

    def L(o_):
        return lagrangian(params, aux._replace(o=o_), duals, rho, x, y, cfg)

    assert rel_norm(jax.grad(L)(o), jax.grad(L)(aux.o)) < 1e-8
    assert L(o) <= L(aux.o)


@pytest.mark.parametrize("name", ["m2o-ce", "m2m-ce"])
def test_o_block_matches_brute_force_minimiser(name):
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(2, cfg=cfg)
    o = blocks.o_block(params, aux, duals, rho, y, cfg)

    def L(o_):
        return lagrangian(params, aux._replace(o=o_), duals, rho, x, y, cfg)

    # brute force: plain gradient descent with the safe step 1/(rho3 + 1/2), many iterations
    step = 1.0 / (float(rho.rho3) + 0.5)
    ref = jax.lax.fori_loop(0, 3000, lambda _, v: v - step * jax.grad(L)(v), aux.o)
    np.testing.assert_allclose(o, ref, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- weight blocks


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("tokens", [False, True])
def test_uwb_block_exact(name, tokens):
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(3, cfg=cfg, tokens=tokens)
    new, kappa = blocks.uwb_block(params, aux, duals, rho, x, cfg)
    weights = {"UWb": kappa, "Vc": 0.0}

    def L(sub):
        return lagrangian({**params, **sub}, aux, duals, rho, x, y, cfg,
                          prox_anchor=params, prox_weights=weights)

    old = {k: params[k] for k in ("U", "W", "b")}
    assert rel_norm(jax.grad(L)(new), jax.grad(L)(old)) < 1e-8
    brute = newton_minimiser(L, old)
    for k in old:
        np.testing.assert_allclose(new[k], brute[k], rtol=1e-8, atol=1e-10)
    plain = lagrangian(params, aux, duals, rho, x, y, cfg)
    assert lagrangian({**params, **new}, aux, duals, rho, x, y, cfg) <= plain


@pytest.mark.parametrize("name", list(CONFIGS))
def test_vc_block_exact(name):
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(4, cfg=cfg)
    new, kappa = blocks.vc_block(params, aux, duals, rho, cfg)

    def L(sub):
        return lagrangian({**params, **sub}, aux, duals, rho, x, y, cfg,
                          prox_anchor=params, prox_weights={"UWb": 0.0, "Vc": kappa})

    old = {"V": params["V"], "c": params["c"]}
    assert rel_norm(jax.grad(L)(new), jax.grad(L)(old)) < 1e-8
    brute = newton_minimiser(L, old)
    for k in old:
        np.testing.assert_allclose(new[k], brute[k], rtol=1e-8, atol=1e-10)
    assert lagrangian({**params, **new}, aux, duals, rho, x, y, cfg) <= lagrangian(
        params, aux, duals, rho, x, y, cfg)


def test_prox_weight_is_mu_rho_mean_gram_eigenvalue():
    cfg = ADMMConfig(prox=0.25)
    params, aux, duals, rho, x, y = make_problem(5, cfg=cfg)
    _, kappa = blocks.vc_block(params, aux, duals, rho, cfg)
    hs = aux.h[:, -1]
    phi = np.c_[hs, np.ones(len(hs))]
    expected = 0.25 * float(rho.rho3) * np.trace(phi.T @ phi) / phi.shape[1]
    np.testing.assert_allclose(kappa, expected, rtol=1e-12)


# ------------------------------------------------------------------------------ h-block


@pytest.mark.parametrize("name", list(CONFIGS))
def test_h_block_exact_all_steps(name):
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(6, cfg=cfg)
    h = blocks.h_block(params, aux, duals, rho, x, cfg)

    def L(h_):
        return lagrangian(params, aux._replace(h=h_), duals, rho, x, y, cfg)

    assert rel_norm(jax.grad(L)(h), jax.grad(L)(aux.h)) < 1e-8
    np.testing.assert_allclose(h, newton_minimiser(L, aux.h), rtol=1e-8, atol=1e-10)


def test_h_block_sees_the_recurrent_coupling():
    """The authors' code ignores C1 at t+1 in the h-update: h_t must depend on a_{t+1}."""
    cfg = ADMMConfig()
    params, aux, duals, rho, x, _ = make_problem(7, cfg=cfg)
    h1 = blocks.h_block(params, aux, duals, rho, x, cfg)
    h2 = blocks.h_block(params, aux._replace(a=aux.a.at[:, 3].add(1.0)), duals, rho, x, cfg)
    assert float(jnp.abs(h1[:, 2] - h2[:, 2]).max()) > 1e-3  # h_3 (index 2) sees a_4
    np.testing.assert_allclose(h1[:, 4], h2[:, 4])  # h_T has no step T+1


# ------------------------------------------------------------------------------ a-block


def _g(a, u, v, rho, f):
    return 0.5 * rho.rho1 * (a - u) ** 2 + 0.5 * rho.rho2 * (v - f(a)) ** 2


def test_a_block_relu_matches_grid_search():
    cfg = ADMMConfig(activation="relu")
    params, aux, duals, rho, x, y = make_problem(8, cfg=cfg, perturb=1.0)
    a = blocks.a_block(params, aux, duals, rho, x, cfg)
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
    a_block = jax.jit(lambda a: blocks.a_block(params, aux._replace(a=a), duals, rho, x, cfg))
    slope = jax.jit(jax.vmap(jax.grad(lambda s, uu, vv: _g(s, uu, vv, rho, jnp.tanh))))
    for _ in range(6):
        new = a_block(a)
        grad = slope(a.ravel(), u.ravel(), v.ravel()).reshape(a.shape)
        lc = blocks.a_curvature_bound(v, rho)
        assert jnp.all(_g(new, u, v, rho, jnp.tanh)
                       <= _g(a, u, v, rho, jnp.tanh) - grad**2 / (2 * lc) + 1e-12)
        a = new


def test_a_block_tanh_reaches_a_local_minimum_and_uses_the_right_derivative():
    """Stationary with g'' >= 0 after enough steps. With large |a| the authors' tanh' = 1 - a^2
    would give a wrong (even negative) slope; jax.grad of g is the independent reference."""
    cfg = ADMMConfig(a_steps=60)
    params, aux, duals, rho, x, y = make_problem(10, cfg=cfg, perturb=2.0)
    u, v = _a_block_uv(params, aux, duals, rho, x)
    a = blocks.a_block(params, aux, duals, rho, x, cfg)
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
    got = blocks.sweep_backward(params, aux, duals, rho, x, cfg)
    a, h = aux.a, aux.h
    for t in reversed(range(aux.a.shape[1])):
        def L_t(h_t, a=a, h=h, t=t):
            return lagrangian(params, aux._replace(a=a, h=h.at[:, t].set(h_t)), duals, rho, x,
                              y, cfg)

        h = h.at[:, t].set(newton_minimiser(L_t, h[:, t]))
        cur = aux._replace(a=a, h=h)
        a = a.at[:, t].set(blocks.a_block(params, cur, duals, rho, x, cfg)[:, t])
    np.testing.assert_allclose(got.h, h, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(got.a, a, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("sweep", [blocks.sweep_backward, blocks.sweep_parallel])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sweeps_do_not_increase_lagrangian(sweep, name):
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(12, cfg=cfg, perturb=1.0)
    new = sweep(params, aux, duals, rho, x, cfg)
    assert lagrangian(params, new, duals, rho, x, y, cfg) <= lagrangian(
        params, aux, duals, rho, x, y, cfg)


# ------------------------------------------------------------------------------- duals


def test_dual_step_is_exactly_lambda_plus_rho_r():
    cfg = ADMMConfig()
    params, aux, duals, rho, x, y = make_problem(13, cfg=cfg)
    r = residuals(params, aux, x, cfg)
    new = blocks.dual_update(duals, rho, r)
    for lam, rh, ri, got in zip(duals, rho, r, new, strict=True):
        np.testing.assert_array_equal(got, lam + rh * ri)


# -------------------------------------------------------------- whole iteration, jit, vmap


def _primal_pass(params, aux, duals, rho, x, y, cfg):
    aux = aux._replace(o=blocks.o_block(params, aux, duals, rho, y, cfg))
    aux = blocks.sweep_backward(params, aux, duals, rho, x, cfg)
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


# ------------------------------------------------------------- time-coupled (a, h) block


def _linearised_lagrangian(params, aux, duals, rho, x, y, cfg):
    """The augmented Lagrangian with f replaced by its tangent at ``aux.a`` (independent of
    the block's algebra: built from the library's residuals and Lagrangian)."""
    f = blocks.activation_fn(cfg.activation)
    slope = blocks.activation_slope(aux.a, cfg)

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
    a, h = blocks.coupled_linearised_solve(params, aux, duals, rho, x, cfg)
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
        values.append(float(q(blocks.coupled_linearised_solve(
            params, aux, duals, rho, x, dataclasses.replace(cfg, cg_steps=k)))))
    assert values[0] > values[1] >= values[2] >= values[3] - 1e-9
    grad = jax.grad(q)(blocks.coupled_linearised_solve(
        params, aux, duals, rho, x, dataclasses.replace(cfg, cg_steps=steps)))
    assert rel_norm(grad, jax.grad(q)((aux.a, aux.h))) > 1e-6  # truncated: not yet exact


@pytest.mark.parametrize("perturb", [0.3, 3.0])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_coupled_sweep_never_increases_the_lagrangian(name, perturb):
    """The backtracked step on the true subproblem: L never increases, per sample too (the
    block is separable over samples), and strictly decreases overall."""
    cfg = CONFIGS[name]
    params, aux, duals, rho, x, y = make_problem(17, cfg=cfg, perturb=perturb)
    new = blocks.sweep_coupled(params, aux, duals, rho, x, cfg)
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
    a_lin, h_lin = blocks.coupled_linearised_solve(params, aux, duals, rho, x, cfg)
    new = blocks.sweep_coupled(params, aux, duals, rho, x, cfg)
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
    coupled = blocks.sweep_coupled(params, aux, duals, rho, x, cfg)
    backward = blocks.sweep_backward(params, aux, duals, rho, x, cfg)
    moved_c = np.linalg.norm(coupled.a - aux.a, axis=(0, 2))
    moved_b = np.linalg.norm(backward.a - aux.a, axis=(0, 2))
    assert moved_c[0] > 10 * moved_b[0]
    assert moved_c[0] > 1e-3 * moved_c[-1]


@pytest.mark.parametrize("perturb", [0.3, 3.0])
@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if not c.many_to_many])
def test_output_space_solve_is_the_same_solution_as_the_exact_cg_solve(name, perturb):
    """The cheaper exact iteration: one backward scan with C adjoints and a C x C solve give
    the same minimiser of the same linearised subproblem as C|S|+1 conjugate-gradient steps
    (float64), and the same as the dense solve; its gradient vanishes."""
    from admm_jax.admm import coupled

    cfg = dataclasses.replace(CONFIGS[name], cg_steps=None)
    params, aux, duals, rho, x, y = make_problem(21, cfg=cfg, perturb=perturb)
    a_out, h_out = coupled.coupled_output_solve(params, aux, duals, rho, x, cfg)
    cg = dataclasses.replace(cfg, cg_steps=_exact_cg_steps(aux))
    a_cg, h_cg = blocks.coupled_linearised_solve(params, aux, duals, rho, x, cg)
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
    new = blocks.sweep_coupled(params, aux, duals, rho, x, cfg)
    new_cg = blocks.sweep_coupled(params, aux, duals, rho, x, cg)
    np.testing.assert_allclose(new.a, new_cg.a, rtol=1e-9, atol=1e-11)


def test_output_space_solve_needs_many_to_one():
    from admm_jax.admm import coupled

    cfg = ADMMConfig(many_to_many=True)
    params, aux, duals, rho, x, _ = make_problem(22, cfg=cfg)
    with pytest.raises(ValueError, match="many_to_many"):
        coupled.coupled_output_solve(params, aux, duals, rho, x, cfg)


@pytest.mark.parametrize("name", ["m2o-ce", "m2m-ce"])
def test_coupled_step_reports_the_c1_slack_of_its_result(name):
    """The multiplier step reads C1's residual from the block instead of another W h product:
    it equals the residual computed from scratch."""
    from admm_jax.admm import coupled

    cfg = CONFIGS[name]
    params, aux, duals, rho, x, _ = make_problem(23, cfg=cfg, perturb=1.0)
    new, c1 = coupled.coupled_step(params, aux, duals, rho, x, cfg)
    r1 = residuals(params, new, x, cfg).r1
    np.testing.assert_allclose(c1 - duals.lam1 / rho.rho1, r1, rtol=1e-9, atol=1e-11)
