r"""The ADMMiRNN blocks: each a pure function that minimises the augmented Lagrangian over one
group of variables with the others fixed.

Every block is vectorised over all samples and time steps, and exact wherever the subproblem
allows it:

============  ==============================================================  ===========
block         subproblem                                                      solver
============  ==============================================================  ===========
o             ``l(o; y) + rho3/2 |o - (V h + c) + lam3/rho3|^2``              Newton with
                                                                              line search
                                                                              (CE), closed
                                                                              form (MSE)
(V, c)        ridge least squares of ``o + lam3/rho3`` on ``[h_t; 1]``        Cholesky
(U, W, b)     ridge least squares of ``a + lam1/rho1`` on                     Cholesky
              ``[x_t; h_{t-1}; 1]`` (Schur complement for token inputs)
duals         ``lam_i += rho_i r_i``                                          exact
============  ==============================================================  ===========

The (a, h) blocks live beside them: step by step in :mod:`admm_jax.admm.sweeps` (the h- and
a-blocks and the backward and parallel sweeps over them), jointly over time in
:mod:`admm_jax.admm.coupled` (the default); both are re-exported here.

The weight blocks are proximal: they add ``kappa/2 |theta - theta_prev|^2`` with
``kappa = mu * rho * trace(G) / dim(G)`` (``G`` the block's Gram matrix), which keeps a
least-squares re-solve on a mini-batch from jumping along poorly conditioned directions.
With ``mu = 0`` they are the plain ADMM blocks. They are written as steps from the current
weights toward *residual targets* ``R`` (:func:`uwb_step`, :func:`vc_step`): ADMMiRNN's
targets are ``a + lam1/rho1 - (U x + W h_prev + b)`` and ``o + lam3/rho3 - (V h + c)``;
:func:`admm_jax.admm_preconditioned` feeds the same steps with back-propagated adjoints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from admm_jax.admm.coupled import (  # noqa: F401  (re-exported: the coupled block)
    activation_slope,
    coupled_linearised_solve,
    coupled_output_solve,
    coupled_terms,
    sweep_coupled,
)
from admm_jax.admm.linalg import spd_solve
from admm_jax.admm.problem import (
    ADMMConfig,
    Auxiliaries,
    Duals,
    Penalties,
    Residuals,
    readout_states,
    shift_right,
    targets_as_steps,
)
from admm_jax.admm.sweeps import (  # noqa: F401  (re-exported: the step-by-step blocks)
    TANH_CURVATURE,
    a_block,
    a_curvature_bound,
    h_block,
    solve_a,
    sweep_backward,
    sweep_parallel,
)
from admm_jax.models.elman import input_projection, is_token_input

_LINE_SEARCH = 2.0 ** -jnp.arange(12)  # candidate step sizes 1, 1/2, ..., 1/2048
_ARMIJO = 1e-4


# ----------------------------------------------------------------------------- o-block


def o_block(params, aux: Auxiliaries, duals: Duals, rho: Penalties, targets: jax.Array,
            cfg: ADMMConfig) -> jax.Array:
    r"""Minimise ``l(o; y) + rho3/2 |o - z|^2`` with ``z = V h + c - lam3/rho3`` per sample.

    Cross entropy: damped Newton from the current ``o``. The Hessian
    ``diag(p) - p p^T + rho3 I`` is inverted in ``O(C)`` by Sherman-Morrison, and each step is
    halved until the Armijo condition holds, so the objective never increases (where the
    predicted decrease is below rounding, near the minimiser, the full step is taken). MSE
    (``1/2|o - y|^2``): closed form ``(y + rho3 z) / (1 + rho3)``.

    Returns:
      The new ``o [N, |S|, C]``.
    """
    y = targets_as_steps(targets, cfg)
    rho3 = rho.rho3
    z = readout_states(aux.h, cfg) @ params["V"].T + params["c"] - duals.lam3 / rho3
    if cfg.loss == "mse":
        return (y + rho3 * z) / (1.0 + rho3)

    onehot = jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)

    def objective(o):
        return -jnp.sum(onehot * jax.nn.log_softmax(o), -1) + 0.5 * rho3 * jnp.sum((o - z) ** 2, -1)

    def newton(carry, _):
        o, f = carry
        p = jax.nn.softmax(o)
        g = p - onehot + rho3 * (o - z)
        dinv = 1.0 / (p + rho3)
        dg, dp = dinv * g, dinv * p
        step = -(dg + dp * jnp.sum(p * dg, -1, keepdims=True) / (1.0 - jnp.sum(p * dp, -1,
                                                                              keepdims=True)))
        return _armijo(objective, o, step, jnp.sum(g * step, -1), f), None

    (o, _), _ = jax.lax.scan(newton, (aux.o, objective(aux.o)), None, length=cfg.newton_steps)
    return o


def _armijo(objective, x, step, slope, f0):
    """Largest step size in ``_LINE_SEARCH`` with sufficient decrease, per leading entry.

    ``objective`` maps ``x``-shaped arrays to per-entry values (reduced over the last axis, or
    elementwise); ``slope`` is the directional derivative and ``f0 = objective(x)``. Entries
    where no candidate decreases keep ``x``. Candidates are tried from the largest down and the
    search stops once every entry has its step (usually after the full step). Returns the new
    ``x`` and its objective values.
    """
    elementwise = f0.shape == x.shape
    expand = (lambda s: s) if elementwise else (lambda s: s[..., None])
    sizes = _LINE_SEARCH.astype(x.dtype)

    def cond(carry):
        j, chosen, _ = carry
        return (j < sizes.shape[0]) & jnp.any(chosen < 0)

    def body(carry):
        j, chosen, f = carry
        s = sizes[j]
        fs = objective(x + s * step)
        ok = (chosen < 0) & (fs <= f0 + _ARMIJO * s * slope)
        return j + 1, jnp.where(ok, s, chosen), jnp.where(ok, fs, f)

    # entries whose predicted decrease is below rounding take the full step unevaluated: the
    # test cannot resolve it there (this is where Newton converges quadratically)
    tiny = -slope <= 16 * jnp.finfo(f0.dtype).eps * jnp.maximum(jnp.abs(f0), 1.0)
    _, chosen, f = jax.lax.while_loop(cond, body, (0, jnp.where(tiny, 1.0, -1.0), f0))
    return x + expand(jnp.maximum(chosen, 0.0)) * step, f


# ----------------------------------------------------------------------- weight blocks


def _prox_ridge_step(gram, rhs_data, theta0, rho, decay, cfg: ADMMConfig, prox=None):
    """The step ``D`` of ``min rho/2 |R - Phi D|^2 + beta/2 |decay * (T0 + D)|^2 + kappa/2 |D|^2``.

    This is the proximal ridge least squares of targets ``Y = Phi T0 + R`` in terms of the step
    from ``T0``: ``(rho G + diag(beta decay + kappa)) D = rho Phi^T R - beta decay T0``, with
    ``gram = G = Phi^T Phi``, ``rhs_data = Phi^T R`` and ``kappa = mu * rho * trace(G) / dim``
    (``mu = cfg.prox`` unless ``prox``, possibly traced, is given). Returns ``(D, kappa)``.
    """
    dim = gram.shape[0]
    kappa = (cfg.prox if prox is None else prox) * rho * jnp.trace(gram) / dim
    system = rho * gram + jnp.diag(cfg.weight_decay * decay + kappa)
    step = spd_solve(system, rho * rhs_data - cfg.weight_decay * decay[:, None] * theta0)
    return step, kappa


def _bias_features(h: jax.Array) -> jax.Array:
    """``[h; 1]`` flattened over samples and steps: ``[N, S, H] -> [N S, H + 1]``."""
    return jnp.concatenate([h, jnp.ones_like(h[..., :1])], -1).reshape(-1, h.shape[-1] + 1)


def vc_gram(h: jax.Array, cfg: ADMMConfig) -> jax.Array:
    """Gram matrix ``Phi^T Phi`` of the readout's features ``Phi = [h_t; 1]``, ``t in S``."""
    phi = _bias_features(readout_states(h, cfg))
    return phi.T @ phi


def vc_step(params, h: jax.Array, resid: jax.Array, rho3, cfg: ADMMConfig, gram=None,
            prox=None):
    r"""Proximal ridge step of ``(V, c)`` toward outputs ``V h_t + c + R_t`` (``t in S``).

    .. math::
        \min_{V,c} \frac{\rho_3}{2}\sum_{n,t\in S}|R_t - \Delta V h_t - \Delta c|^2
        + \frac{\beta}{2}|V + \Delta V|^2 + \frac{\kappa}{2}|(\Delta V, \Delta c)|^2

    Args:
      resid: the residual targets ``R [N, |S|, C]``: how far each output should move.
      gram: Gram statistics to use instead of this batch's (:func:`vc_gram`).
      prox: ``mu`` instead of ``cfg.prox`` (may be traced).

    Returns:
      ``({"V": V, "c": c}, kappa)``.
    """
    phi = _bias_features(readout_states(h, cfg))
    gram = phi.T @ phi if gram is None else gram
    theta0 = jnp.concatenate([params["V"].T, params["c"][None]], 0)
    decay = jnp.concatenate([jnp.ones(h.shape[-1], phi.dtype), jnp.zeros(1, phi.dtype)])
    step, kappa = _prox_ridge_step(gram, phi.T @ resid.reshape(phi.shape[0], -1), theta0, rho3,
                                 decay, cfg, prox)
    theta = theta0 + step
    return {"V": theta[:-1].T, "c": theta[-1]}, kappa


def vc_block(params, aux: Auxiliaries, duals: Duals, rho: Penalties, cfg: ADMMConfig):
    r"""Proximal ridge least squares for the readout ``(V, c)``.

    .. math::
        \min_{V,c} \frac{\rho_3}{2}\sum_{n,t\in S}|o + \lambda_3/\rho_3 - V h_t - c|^2
        + \frac{\beta}{2}|V|^2 + \frac{\kappa}{2}|(V,c) - (V,c)_{prev}|^2

    That is :func:`vc_step` with residual targets ``o + lam3/rho3 - (V h + c)``.

    Returns:
      ``({"V": V, "c": c}, kappa)``.
    """
    out = readout_states(aux.h, cfg) @ params["V"].T + params["c"]
    return vc_step(params, aux.h, aux.o + duals.lam3 / rho.rho3 - out, rho.rho3, cfg)


def uwb_gram(h: jax.Array, inputs: jax.Array, vocab: int | None = None) -> tuple[jax.Array, ...]:
    """Gram statistics of the recurrent features ``Phi = [x_t; h_{t-1}; 1]``.

    Dense inputs: ``(Phi^T Phi,)``. Token inputs (one-hot ``x_t`` of size ``vocab``): the
    blocks ``(counts [vocab], X^T P [vocab, H+1], P^T P [H+1, H+1])`` with ``P = [h_{t-1}; 1]``
    (the input block ``X^T X = diag(counts)`` is never formed).
    """
    p = _bias_features(shift_right(h))
    if not is_token_input(inputs):
        phi = jnp.concatenate([inputs.reshape(p.shape[0], -1).astype(p.dtype), p], -1)
        return (phi.T @ phi,)
    ids = inputs.reshape(-1)
    counts = jnp.zeros(vocab, p.dtype).at[ids].add(1.0)
    return counts, jax.ops.segment_sum(p, ids, vocab), p.T @ p


def uwb_step(params, h: jax.Array, inputs: jax.Array, resid: jax.Array, rho1,
             cfg: ADMMConfig, gram=None, prox=None):
    r"""Proximal ridge step of ``(U, W, b)`` toward pre-activations ``U x_t + W h_{t-1} + b
    + R_t``.

    .. math::
        \min_{\Delta U,\Delta W,\Delta b} \frac{\rho_1}{2}\sum_{n,t}|R_t - \Delta U x_t
        - \Delta W h_{t-1} - \Delta b|^2 + \frac{\beta}{2}(|U + \Delta U|^2+|W + \Delta W|^2)
        + \frac{\kappa}{2}|(\Delta U,\Delta W,\Delta b)|^2

    One ``(D+H+1)^2`` Cholesky for dense inputs. For token inputs the input block of the Gram
    matrix is diagonal (token counts), and the solve goes through the ``(H+1)^2`` Schur
    complement: cost independent of the vocabulary size beyond ``O(vocab * H)``. Token inputs
    are damped per block: ``U`` by ``mu * rho * mean count of the batch's tokens``, ``(W, b)``
    by ``mu * rho * trace(P^T P)/(H+1)``.

    Args:
      h: the states ``[N, T, H]`` (their shift ``h_{t-1}`` are the features).
      resid: the residual targets ``R [N, T, H]``: how far each pre-activation should move.
      gram: Gram statistics to use instead of this batch's (:func:`uwb_gram`).
      prox: ``mu`` instead of ``cfg.prox`` (may be traced).

    Returns:
      ``({"U": U, "W": W, "b": b}, kappa)``; ``kappa`` a dict by parameter for token inputs.
    """
    outputs, hidden = params["W"].shape  # W maps h_{t-1} [H] to the pre-activations
    p = _bias_features(shift_right(h))
    r = resid.reshape(-1, outputs)
    theta0_p = jnp.concatenate([params["W"].T, params["b"][None]], 0)
    decay_p = jnp.concatenate([jnp.ones(hidden, p.dtype), jnp.zeros(1, p.dtype)])
    if not is_token_input(inputs):
        x = inputs.reshape(p.shape[0], -1).astype(p.dtype)
        phi = jnp.concatenate([x, p], -1)
        (g,) = (phi.T @ phi,) if gram is None else gram
        theta0 = jnp.concatenate([params["U"].T, theta0_p], 0)
        decay = jnp.concatenate([jnp.ones(x.shape[-1], p.dtype), decay_p])
        step, kappa = _prox_ridge_step(g, phi.T @ r, theta0, rho1, decay, cfg, prox)
        theta = theta0 + step
        d = x.shape[-1]
        return {"U": theta[:d].T, "W": theta[d:-1].T, "b": theta[-1]}, kappa

    vocab = params["U"].shape[1]
    ids = inputs.reshape(-1)
    counts, xt_p, gram_p = uwb_gram(h, inputs, vocab) if gram is None else gram
    mu = cfg.prox if prox is None else prox
    # damping per block: trace/dim over a mostly empty one-hot block would make the (W, b)
    # block's damping vanish (10k tokens: ~1e-4 of its mean eigenvalue instead of mu)
    kappa_x = mu * rho1 * jnp.sum(counts) / jnp.maximum(jnp.sum(counts > 0), 1)
    kappa_p = mu * rho1 * jnp.trace(gram_p) / (hidden + 1)
    beta = cfg.weight_decay
    dx = rho1 * counts + beta + kappa_x  # diagonal of the input block
    rhs_x = rho1 * jax.ops.segment_sum(r, ids, vocab) - beta * params["U"].T
    rhs_p = rho1 * (p.T @ r) - beta * decay_p[:, None] * theta0_p
    schur = rho1 * gram_p + jnp.diag(beta * decay_p + kappa_p)
    schur -= rho1**2 * (xt_p.T / dx) @ xt_p
    step_p = spd_solve(schur, rhs_p - rho1 * xt_p.T @ (rhs_x / dx[:, None]))
    step_x = (rhs_x - rho1 * xt_p @ step_p) / dx[:, None]
    theta_p = theta0_p + step_p
    return ({"U": params["U"] + step_x.T, "W": theta_p[:-1].T, "b": theta_p[-1]},
            {"U": kappa_x, "W": kappa_p, "b": kappa_p})


def uwb_block(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
              cfg: ADMMConfig):
    r"""Proximal ridge least squares for the recurrent weights ``(U, W, b)``.

    .. math::
        \min_{U,W,b} \frac{\rho_1}{2}\sum_{n,t}|a_t + \lambda_{1,t}/\rho_1 - U x_t
        - W h_{t-1} - b|^2 + \frac{\beta}{2}(|U|^2+|W|^2)
        + \frac{\kappa}{2}|(U,W,b) - (U,W,b)_{prev}|^2

    That is :func:`uwb_step` with residual targets ``a + lam1/rho1 - (U x + W h_prev + b)``.

    Returns:
      ``({"U": U, "W": W, "b": b}, kappa)``.
    """
    z1 = (input_projection(params["U"], inputs) + shift_right(aux.h) @ params["W"].T
          + params["b"])
    resid = aux.a + duals.lam1 / rho.rho1 - z1
    return uwb_step(params, aux.h, inputs, resid, rho.rho1, cfg)


# ----------------------------------------------------------------------------- duals


def dual_update(duals: Duals, rho: Penalties, r: Residuals) -> Duals:
    """The multiplier step ``lam_i <- lam_i + rho_i r_i`` for all three families."""
    return Duals(*(lam + rh * ri for lam, rh, ri in zip(duals, rho, r, strict=True)))
