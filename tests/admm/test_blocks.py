"""The o-, weight and multiplier blocks against their optimality conditions and brute-force
solvers (float64)."""

from __future__ import annotations

import jax
import jax.flatten_util
import numpy as np
import pytest
from admm_problems import BLOCK_CONFIGS as CONFIGS
from admm_problems import lagrangian, make_problem, newton_minimiser, rel_norm

from admm_jax.admm import blocks
from admm_jax.admm.problem import ADMMConfig, residuals

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


# ------------------------------------------------------------------------------- duals


def test_dual_step_is_exactly_lambda_plus_rho_r():
    cfg = ADMMConfig()
    params, aux, duals, rho, x, y = make_problem(13, cfg=cfg)
    r = residuals(params, aux, x, cfg)
    new = blocks.dual_update(duals, rho, r)
    for lam, rh, ri, got in zip(duals, rho, r, new, strict=True):
        np.testing.assert_array_equal(got, lam + rh * ri)
