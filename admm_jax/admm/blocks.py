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
h             quadratic in ``h_t`` given ``a_t``, ``a_{t+1}``, ``o_t``        Cholesky
a             1-D per entry: ``rho1/2 (a - z + lam1/rho1)^2                   safeguarded
              + rho2/2 (h - f(a) + lam2/rho2)^2``                             Gauss-Newton
                                                                              (tanh), exact
                                                                              (relu)
(a, h)        all ``a_t, h_t`` of a sample jointly, ``f`` linearised at the   CG in the
coupled       current ``a`` (Gauss-Newton), backtracked on the true L         reduced
                                                                              variables,
                                                                              exact after
                                                                              C|S|+1 steps
(U, W, b)     ridge least squares of ``a + lam1/rho1`` on                     Cholesky
              ``[x_t; h_{t-1}; 1]`` (Schur complement for token inputs)
duals         ``lam_i += rho_i r_i``                                          exact
============  ==============================================================  ===========

The weight blocks are proximal: they add ``kappa/2 |theta - theta_prev|^2`` with
``kappa = mu * rho * trace(G) / dim(G)`` (``G`` the block's Gram matrix), which keeps a
least-squares re-solve on a mini-batch from jumping along poorly conditioned directions.
With ``mu = 0`` they are the plain ADMM blocks. They are written as steps from the current
weights toward *residual targets* ``R`` (:func:`uwb_step`, :func:`vc_step`): ADMMiRNN's
targets are ``a + lam1/rho1 - (U x + W h_prev + b)`` and ``o + lam3/rho3 - (V h + c)``;
:func:`admm_jax.admm_preconditioned` feeds the same steps with back-propagated adjoints.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from admm_jax.admm.linalg import spd_inverse, spd_solve
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
from admm_jax.models.elman import activation_fn, input_projection, is_token_input

_LINE_SEARCH = 2.0 ** -jnp.arange(12)  # candidate step sizes 1, 1/2, ..., 1/2048
_ARMIJO = 1e-4
_COUPLED_BACKTRACKS = 8  # step sizes 1, 1/2, ..., 1/128 of the coupled block


# ----------------------------------------------------------------------------- o-block


def o_block(params, aux: Auxiliaries, duals: Duals, rho: Penalties, targets: jax.Array,
            cfg: ADMMConfig) -> jax.Array:
    r"""Minimise ``l(o; y) + rho3/2 |o - z|^2`` with ``z = V h + c - lam3/rho3`` per sample.

    Cross entropy: damped Newton from the current ``o``. The Hessian
    ``diag(p) - p p^T + rho3 I`` is inverted in ``O(C)`` by Sherman-Morrison, and each step is
    halved until the Armijo condition holds, so the objective never increases. MSE
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

    def newton(o, _):
        p = jax.nn.softmax(o)
        g = p - onehot + rho3 * (o - z)
        dinv = 1.0 / (p + rho3)
        dg, dp = dinv * g, dinv * p
        step = -(dg + dp * jnp.sum(p * dg, -1, keepdims=True) / (1.0 - jnp.sum(p * dp, -1,
                                                                              keepdims=True)))
        return _armijo(objective, o, step, jnp.sum(g * step, -1)), None

    o, _ = jax.lax.scan(newton, aux.o, None, length=cfg.newton_steps)
    return o


def _armijo(objective, x, step, slope):
    """Largest step size in ``_LINE_SEARCH`` with sufficient decrease, per leading entry.

    ``objective`` maps ``x``-shaped arrays to per-entry values (reduced over the last axis, or
    elementwise); ``slope`` is the directional derivative. Entries where no candidate
    decreases keep ``x``.
    """
    f0 = objective(x)
    elementwise = f0.shape == x.shape
    expand = (lambda s: s) if elementwise else (lambda s: s[..., None])
    chosen = jnp.zeros_like(f0)
    for s in _LINE_SEARCH[::-1].astype(x.dtype):  # smallest first: the largest passing wins
        ok = objective(x + s * step) <= f0 + _ARMIJO * s * slope
        chosen = jnp.where(ok, s, chosen)
    return x + expand(chosen) * step


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


def damped_inverse(factor: jax.Array, mu, normalize: bool = False) -> jax.Array:
    r"""``(F + mu m I)^-1`` with ``m = tr(F)/dim`` the mean eigenvalue of ``F`` (Tikhonov
    damping relative to the factor's scale); ``normalize``: ``(F/m + mu I)^-1``, the factor
    as a shape only. One Cholesky-based inverse (:func:`admm_jax.admm.linalg.spd_inverse`)."""
    dim = factor.shape[0]
    m = jnp.maximum(jnp.trace(factor) / dim, jnp.finfo(factor.dtype).tiny)
    if normalize:
        factor, kappa = factor / m, mu
    else:
        kappa = mu * m
    return spd_inverse(factor + kappa * jnp.eye(dim, dtype=factor.dtype))


def kron_step(grad: jax.Array, inv_in: jax.Array, inv_out: jax.Array) -> jax.Array:
    r"""The two-sided, variable-metric weight step ``(A + kappa_A I)^-1 grad (S + kappa_S I)^-1``.

    .. math::
        \Delta = \arg\min_D\ \tfrac12\,\mathrm{tr}\big(D^\top (A+\kappa_A I)\, D\,
        (S+\kappa_S I)\big) - \mathrm{tr}(D^\top G)
        = (A + \kappa_A I)^{-1}\, G\, (S + \kappa_S I)^{-1}

    the weight block's proximal least squares with the scalar penalty on its constraint's
    residual replaced by the metric ``S`` (and the input Gram ``A``): a solve with
    ``(A + kappa_A I) kron (S + kappa_S I)``, given the damped inverses of both factors
    (:func:`damped_inverse`): two matrix products.

    Args:
      grad: ``G [P, Z]`` in the blocks' row layout (``[U^T; W^T; b]``, features by outputs).
      inv_in: ``(A + kappa_A I)^-1 [P, P]``.
      inv_out: ``(S + kappa_S I)^-1 [Z, Z]``.

    Returns:
      ``[P, Z]``.
    """
    return inv_in @ grad @ inv_out


# ------------------------------------------------------------------------ h and a blocks


def _h_inverses(params, rho: Penalties, cfg: ADMMConfig):
    """Inverses of the h-block matrices for steps ``t < T`` and for the last step.

    Both are ``rho2 I`` plus positive semidefinite terms, so they are well conditioned
    (eigenvalues >= rho2); one inverse each (:mod:`admm_jax.admm.linalg`), then every step's
    solve is a matrix product.
    """
    W, V = params["W"], params["V"]
    eye = jnp.eye(W.shape[0], dtype=W.dtype)
    vtv = rho.rho3 * V.T @ V
    mid = rho.rho2 * eye + rho.rho1 * W.T @ W + (vtv if cfg.many_to_many else 0.0)
    last = rho.rho2 * eye + vtv
    return spd_inverse(mid), spd_inverse(last)


def _h_rhs_base(params, aux, duals, rho, inputs, cfg):
    """The h-block right-hand side except the term ``rho1 W^T a_{t+1}``.

    ``rho2 f(a_t) - lam2_t + rho1 W^T(-U x_{t+1} - b + lam1_{t+1}/rho1)[t<T]
    + rho3 V^T(o_t - c + lam3_t/rho3)[t in S]``, ``[N, T, H]``.
    """
    f = activation_fn(cfg.activation)
    V, c, W = params["V"], params["c"], params["W"]
    base = rho.rho2 * f(aux.a) - duals.lam2
    out_term = (rho.rho3 * (aux.o - c) + duals.lam3) @ V
    base = base + out_term if cfg.many_to_many else base.at[:, -1:].add(out_term)
    nxt = duals.lam1 - rho.rho1 * (input_projection(params["U"], inputs) + params["b"])
    return base.at[:, :-1].add(nxt[:, 1:] @ W)


def h_block(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
            cfg: ADMMConfig) -> jax.Array:
    r"""Exact minimiser over all ``h_t`` at once, with every ``a`` (and ``o``) fixed.

    .. math::
        (\rho_2 I + \rho_1 W^\top W [t<T] + \rho_3 V^\top V [t\in S])\, h_t =
        \rho_2 f(a_t) - \lambda_{2,t} + \rho_1 W^\top(a_{t+1} - U x_{t+1} - b
        + \lambda_{1,t+1}/\rho_1)[t<T] + \rho_3 V^\top(o_t - c + \lambda_{3,t}/\rho_3)[t\in S]

    The problem is separable over ``t`` and ``n`` because ``a_{t+1}`` is held fixed: one
    shared ``H x H`` factorisation per matrix.
    """
    mid_inv, last_inv = _h_inverses(params, rho, cfg)
    rhs = _h_rhs_base(params, aux, duals, rho, inputs, cfg)
    rhs = rhs.at[:, :-1].add(rho.rho1 * aux.a[:, 1:] @ params["W"])
    return jnp.concatenate([rhs[:, :-1] @ mid_inv, rhs[:, -1:] @ last_inv], axis=1)


def a_block(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
            cfg: ADMMConfig) -> jax.Array:
    r"""Minimise, entry by entry, ``g(a) = rho1/2 (a - u)^2 + rho2/2 (v - f(a))^2``.

    With ``u = U x_t + W h_{t-1} + b - lam1/rho1`` and ``v = h_t + lam2/rho2``: all steps at
    once (``h`` fixed). See :func:`solve_a` for the solvers.
    """
    z = input_projection(params["U"], inputs) + shift_right(aux.h) @ params["W"].T + params["b"]
    return solve_a(aux.a, z - duals.lam1 / rho.rho1, aux.h + duals.lam2 / rho.rho2, rho, cfg)


TANH_CURVATURE = 4.0 / (3.0 * 3.0**0.5)  # max |d^2 tanh / da^2| = max 2|tanh a| sech^2 a


def a_curvature_bound(v, rho: Penalties):
    """Upper bound ``Lc`` of ``g''`` for tanh: ``rho1 + rho2 (1 + 0.7698 (|v| + 1))``."""
    return rho.rho1 + rho.rho2 * (1.0 + TANH_CURVATURE * (jnp.abs(v) + 1.0))


def solve_a(a0, u, v, rho: Penalties, cfg: ADMMConfig) -> jax.Array:
    r"""Elementwise ``argmin_a g(a) = rho1/2 (a - u)^2 + rho2/2 (v - f(a))^2``.

    relu: exact, the better of the two one-sided minimisers ``min(u, 0)`` and
    ``max((rho1 u + rho2 v)/(rho1 + rho2), 0)``.

    tanh (nonconvex): ``a_steps`` iterations from ``a0``, each taking the better of two
    candidates: the Newton step ``-g'/g''`` where ``g''`` is safely positive, else the
    Gauss-Newton step ``-g'/(rho1 + rho2 f'^2)`` (fast near a minimum), and the
    majorisation step ``-g'/Lc`` with ``Lc >= sup g''`` (:func:`a_curvature_bound`), which by
    the descent lemma guarantees ``g(a+) <= g(a) - g'(a)^2 / (2 Lc)``. So every iteration
    meets that sufficient decrease and ``g`` never increases.
    """
    rho1, rho2 = rho.rho1, rho.rho2
    if cfg.activation == "relu":
        neg = jnp.minimum(u, 0.0)
        pos = jnp.maximum((rho1 * u + rho2 * v) / (rho1 + rho2), 0.0)

        def g_relu(a):
            return 0.5 * rho1 * (a - u) ** 2 + 0.5 * rho2 * (v - jax.nn.relu(a)) ** 2

        return jnp.where(g_relu(pos) <= g_relu(neg), pos, neg)

    lc = a_curvature_bound(v, rho)

    def g(a):
        return 0.5 * rho1 * (a - u) ** 2 + 0.5 * rho2 * (v - jnp.tanh(a)) ** 2

    def step(a, _):
        t = jnp.tanh(a)
        dt = 1.0 - t**2
        grad = rho1 * (a - u) - rho2 * (v - t) * dt
        curv = rho1 + rho2 * (dt**2 + 2.0 * (v - t) * t * dt)  # exact g''
        curv = jnp.where(curv > 0.1 * rho1, curv, rho1 + rho2 * dt**2)  # else Gauss-Newton
        newton = a - grad / curv
        mm = a - grad / lc
        return jnp.where(g(newton) <= g(mm), newton, mm), None

    a, _ = jax.lax.scan(step, a0, None, length=cfg.a_steps)
    return a


def sweep_backward(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
                   cfg: ADMMConfig) -> Auxiliaries:
    r"""Gauss-Seidel over ``h_T, a_T, h_{T-1}, a_{T-1}, ..., h_1, a_1`` in one ``lax.scan``.

    Each ``h_t`` is solved exactly given the ``a_{t+1}`` just updated, and each ``a_t`` given
    the new ``h_t`` and the old ``h_{t-1}``: the loss signal reaches every step in one sweep.
    Everything that does not depend on the sweep's own results is computed for all steps at
    once beforehand; the scan body is two ``[N, H] x [H, H]`` products and the a-solver.
    """
    W = params["W"]
    mid_inv, last_inv = _h_inverses(params, rho, cfg)
    base = _h_rhs_base(params, aux, duals, rho, inputs, cfg)
    u = (input_projection(params["U"], inputs) + shift_right(aux.h) @ W.T + params["b"]
         - duals.lam1 / rho.rho1)
    v_off = duals.lam2 / rho.rho2

    def solve_step(rhs, inv, a_old, u_t, v_off_t):
        h_t = rhs @ inv
        return solve_a(a_old, u_t, h_t + v_off_t, rho, cfg), h_t

    a_last, h_last = solve_step(base[:, -1], last_inv, aux.a[:, -1], u[:, -1], v_off[:, -1])

    def body(a_next, xs):
        base_t, a_old, u_t, v_off_t = xs
        a_t, h_t = solve_step(base_t + rho.rho1 * a_next @ W, mid_inv, a_old, u_t, v_off_t)
        return a_t, (a_t, h_t)

    xs = tuple(jnp.swapaxes(arr[:, :-1], 0, 1) for arr in (base, aux.a, u, v_off))
    _, (a, h) = jax.lax.scan(body, a_last, xs, reverse=True)
    a = jnp.concatenate([jnp.swapaxes(a, 0, 1), a_last[:, None]], axis=1)
    h = jnp.concatenate([jnp.swapaxes(h, 0, 1), h_last[:, None]], axis=1)
    return aux._replace(a=a, h=h)


def sweep_parallel(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
                   cfg: ADMMConfig) -> Auxiliaries:
    """All ``h_t`` at once (:func:`h_block`), then all ``a_t`` at once (:func:`a_block`)."""
    aux = aux._replace(h=h_block(params, aux, duals, rho, inputs, cfg))
    return aux._replace(a=a_block(params, aux, duals, rho, inputs, cfg))


# ------------------------------------------------------------ the time-coupled (a, h) block


def activation_slope(a: jax.Array, cfg: ADMMConfig) -> jax.Array:
    """``f'(a)`` elementwise: ``1 - tanh(a)^2`` for tanh, ``[a > 0]`` for relu.

    >>> float(activation_slope(jnp.zeros(()), ADMMConfig()))
    1.0
    """
    if cfg.activation == "relu":
        return (a > 0).astype(a.dtype)
    return 1.0 - jnp.tanh(a) ** 2


def _time_major(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 0, 1)


def _linear_forward(W, d, inj):
    """``y_t = d_t * (W y_{t-1}) + inj_t`` from ``y_0 = 0``; time-major ``[T, N, H]``."""
    def body(y, xs):
        d_t, in_t = xs
        y = d_t * (y @ W.T) + in_t
        return y, y

    return jax.lax.scan(body, jnp.zeros_like(inj[0]), (d, inj))[1]


def _linear_backward(W, d, e):
    """The transpose of :func:`_linear_forward`: ``g_t = e_t + W^T (d_{t+1} g_{t+1})``."""
    def body(carry, xs):  # carry: d_{t+1} * g_{t+1}
        d_t, e_t = xs
        g = e_t + carry @ W
        return d_t * g, g

    return jax.lax.scan(body, jnp.zeros_like(e[0]), (d, e), reverse=True)[1]


def _output_adjoint(V, y, w, rho3, cfg: ADMMConfig):
    """``rho3 V^T (V y_t - w_t)`` at the steps with an output, zero elsewhere (time-major;
    ``w = 0`` gives the linear part)."""
    if cfg.many_to_many:
        return rho3 * (y @ V.T - w) @ V
    return jnp.zeros_like(y).at[-1].set(rho3 * (y[-1] @ V.T - w[0]) @ V)


class _CoupledTerms(NamedTuple):
    """What the coupled block needs of the fixed blocks, computed once."""

    u: jax.Array  # U x_t + b - lam1_t/rho1
    w: jax.Array  # o_t - c + lam3_t/rho3, [N, |S|, C]
    fa: jax.Array  # f(a) at the current a
    slope: jax.Array  # f'(a) at the current a
    c1: jax.Array  # a - W h_prev - u: the scaled C1 residual at the current point


def _coupled_terms(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs, cfg):
    f = activation_fn(cfg.activation)
    u = input_projection(params["U"], inputs) + params["b"] - duals.lam1 / rho.rho1
    return _CoupledTerms(u=u, w=aux.o - params["c"] + duals.lam3 / rho.rho3, fa=f(aux.a),
                         slope=activation_slope(aux.a, cfg),
                         c1=aux.a - shift_right(aux.h) @ params["W"].T - u)


def coupled_linearised_solve(params, aux: Auxiliaries, duals: Duals, rho: Penalties,
                             inputs: jax.Array, cfg: ADMMConfig, terms=None):
    r"""Minimise the (a, h) subproblem with ``f`` linearised at the current ``a``: all steps
    jointly, by ``cfg.cg_steps`` preconditioned conjugate-gradient iterations.

    With ``D_t = diag f'(a^0_t)`` and ``f(a_t) ~ f(a^0_t) + D_t (a_t - a^0_t)`` the (a, h) part
    of the augmented Lagrangian becomes the quadratic

    .. math::
        Q(a, h) = \sum_t \tfrac{\rho_1}{2}|a_t - W h_{t-1} - u_t|^2
        + \tfrac{\rho_2}{2}|h_t - D_t a_t - v_t|^2 + \sum_{t\in S}\tfrac{\rho_3}{2}|V h_t - w_t|^2

    with ``u_t = U x_t + b - lam1_t/rho1``, ``v_t = f(a^0_t) - D_t a^0_t - lam2_t/rho2``,
    ``w_t = o_t - c + lam3_t/rho3``: block-tridiagonal in time. Its slacks
    ``eps_t = a_t - W h_{t-1} - u_t`` and ``del_t = h_t - D_t a_t - v_t`` enter the states only
    through ``eta_t = D_t eps_t + del_t``: ``h_t = D_t W h_{t-1} + D_t u_t + v_t + eta_t``.
    Minimising over the split of each ``eta_t`` (elementwise,
    ``eps = rho2 d eta / (rho1 + rho2 d^2)``) leaves a linear-quadratic control problem

    .. math::
        \min_\eta \sum_t \tfrac12 \eta_t^\top K_t \eta_t
        + \sum_{t\in S}\tfrac{\rho_3}{2}|V h_t(\eta) - w_t|^2, \qquad
        K_t = \mathrm{diag}\frac{\rho_1\rho_2}{\rho_1 + \rho_2 d_t^2},

    whose Hessian ``K + rho3 L^T P^T V^T V P L`` (``L`` the lower block-triangular map
    ``eta -> h``, ``P`` the selection of ``t in S``) is ``K`` plus a term of rank
    ``<= C |S|``. Conjugate gradients preconditioned by ``K``, per sample and from the current
    point (whose ``h(eta^0)`` is the current ``h``), are therefore exact after ``C |S| + 1``
    iterations in exact arithmetic, whatever ``T``; more are never run. Each iteration is one
    forward scan (``L p``) and one backward scan (``L^T``) of ``[N, H] x [H, H]`` products:
    ``4 T H^2`` FLOPs per sample, against ``O(T H^3)`` for a block-tridiagonal (Riccati)
    factorisation with per-sample blocks.

    Args:
      params: ``U, W, b, V, c``; aux: the current ``a, h [N, T, H]`` (the linearisation
        point) and ``o``; duals, rho: multipliers and penalties; inputs: ``[N, T, D]`` or token
        ids; cfg: ``cg_steps``, ``activation``, ``many_to_many``.
      terms: precomputed :class:`_CoupledTerms` (internal).

    Returns:
      ``(a, h)``, both ``[N, T, H]``: the minimiser of ``Q`` after ``cg_steps`` iterations.

    Examples:
      >>> from admm_jax.admm.problem import Penalties
      >>> k = jax.random.split(jax.random.key(0), 4)
      >>> p = {"U": jax.random.normal(k[0], (4, 2)), "W": 0.5 * jnp.eye(4), "b": jnp.zeros(4),
      ...      "V": jax.random.normal(k[1], (1, 4)), "c": jnp.zeros(1)}
      >>> x = jax.random.normal(k[2], (3, 5, 2))
      >>> from admm_jax.models.elman import elman_trace
      >>> tr = elman_trace(p, x)
      >>> aux = Auxiliaries(tr.a, tr.h, tr.o + 1.0)   # the outputs should rise by 1
      >>> zero = Duals(*(jnp.zeros_like(v) for v in aux))
      >>> a, h = coupled_linearised_solve(p, aux, zero, Penalties(1.0, 10.0, 1.0), x,
      ...                                 ADMMConfig(loss="mse"))
      >>> bool(jnp.all(jnp.abs(a - tr.a).sum(-1) > 0))   # every step of every sample moved
      True

    References:
      Gauss-Newton on the activation, conjugate gradients: Nocedal & Wright, "Numerical
      Optimization", 2nd ed., ch. 5 and 10.3; the splitting: Tang et al., ECML-PKDD 2020.
    """
    rho1, rho2, rho3 = rho
    W, V = params["W"], params["V"]
    t = _coupled_terms(params, aux, duals, rho, inputs, cfg) if terms is None else terms
    a0, h0, d = aux.a, aux.h, t.slope
    v = t.fa - d * a0 - duals.lam2 / rho2
    kappa = rho1 * rho2 / (rho1 + rho2 * d**2)
    # the current point's injection; h(eta0) = h0, so no forward pass is needed to start
    eta0 = d * t.c1 + (h0 - d * a0 - v)

    d_tm, k_tm, w_tm = _time_major(d), _time_major(kappa), _time_major(t.w)

    def hess(p):  # (K + rho3 L^T P^T V^T V P L) p, and L p
        q = _linear_forward(W, d_tm, p)
        out = _output_adjoint(V, q, jnp.zeros_like(w_tm), rho3, cfg)
        return k_tm * p + _linear_backward(W, d_tm, out), q

    def dot(x, y):  # per sample
        return jnp.sum(x * y, axis=(0, 2))

    def safe_div(num, den):
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)[:, None]

    x, y = _time_major(eta0), _time_major(h0)
    r = -(k_tm * x + _linear_backward(W, d_tm, _output_adjoint(V, y, w_tm, rho3, cfg)))
    z = r / k_tm

    def cg(carry, _):
        x, y, r, p, rz = carry
        hp, lp = hess(p)
        alpha = safe_div(rz, dot(p, hp))
        x, y, r = x + alpha * p, y + alpha * lp, r - alpha * hp
        z = r / k_tm
        rz_new = dot(r, z)
        return (x, y, r, z + safe_div(rz_new, rz) * p, rz_new), None

    # exact after C |S| + 1 iterations: more would only add rounding
    steps = min(cfg.cg_steps, aux.o.shape[1] * aux.o.shape[2] + 1)
    (x, y, _, _, _), _ = jax.lax.scan(cg, (x, y, r, z, dot(r, z)), None, length=steps)
    eta, h = _time_major(x), _time_major(y)
    eps = rho2 * d * eta / (rho1 + rho2 * d**2)
    return shift_right(h) @ W.T + t.u + eps, h


def sweep_coupled(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
                  cfg: ADMMConfig) -> Auxiliaries:
    r"""The time-coupled (a, h) block: all ``a_t, h_t`` of a sample at once, so one ADMM
    iteration carries the loss signal through all ``T`` steps.

    With the weights, ``o`` and the multipliers fixed, the augmented Lagrangian's (a, h) part

    .. math::
        \sum_t \tfrac{\rho_1}{2}|a_t - W h_{t-1} - u_t|^2
        + \tfrac{\rho_2}{2}|h_t - f(a_t) + \lambda_{2,t}/\rho_2|^2
        + \sum_{t\in S}\tfrac{\rho_3}{2}|V h_t - w_t|^2

    couples every step with its neighbours (C1: ``a_t`` with ``h_{t-1}``; C2: ``a_t`` with
    ``h_t``; C3: ``h_t``, ``t in S``, with ``o_t``) and is separable over samples. One
    Gauss-Newton step:

    1. the minimiser ``(a*, h*)`` of the subproblem with ``f`` linearised at the current ``a``
       (:func:`coupled_linearised_solve`);
    2. per sample, ``(a, h) + s ((a*, h*) - (a, h))`` with the largest
       ``s in {1, 1/2, ..., 1/128}`` that does not increase the *true* subproblem, else
       ``s = 0``. The linearised model is convex, has the true value and gradient at the
       current point, and ``(a*, h*)`` lowers it, so the direction descends and a small enough
       ``s`` exists (in exact arithmetic). Along the segment C1 and C3 are affine in ``s``;
       only ``f(a)`` is re-evaluated per candidate, and candidates stop as soon as every
       sample has its step (usually after ``s = 1``).

    No step increases the augmented Lagrangian. Cost per sample: the CG solve's
    ``4 (k + 1) T H^2`` FLOPs (``k = min(cg_steps, C|S| + 1)``) plus ``4 T H^2`` for the two
    ``W h_{t-1}`` products, against ``4 T H^2`` for one backward sweep.

    Returns:
      The auxiliaries with the new ``a, h`` (``o`` unchanged).

    Examples:
      >>> from admm_jax.admm.problem import Penalties, augmented_lagrangian
      >>> from admm_jax.models.elman import elman_trace
      >>> k = jax.random.split(jax.random.key(0), 4)
      >>> p = {"U": jax.random.normal(k[0], (4, 2)), "W": 0.5 * jnp.eye(4), "b": jnp.zeros(4),
      ...      "V": jax.random.normal(k[1], (1, 4)), "c": jnp.zeros(1)}
      >>> x, y = jax.random.normal(k[2], (3, 5, 2)), jnp.ones((3, 1))
      >>> tr = elman_trace(p, x)
      >>> aux = Auxiliaries(tr.a, tr.h, tr.o + 1.0)
      >>> zero = Duals(*(jnp.zeros_like(v) for v in aux))
      >>> rho, cfg = Penalties(1.0, 10.0, 1.0), ADMMConfig(loss="mse")
      >>> new = sweep_coupled(p, aux, zero, rho, x, cfg)
      >>> bool(augmented_lagrangian(p, new, zero, rho, x, y, cfg)
      ...      < augmented_lagrangian(p, aux, zero, rho, x, y, cfg))
      True

    References:
      Tang et al., "ADMMiRNN", ECML-PKDD 2020 (the splitting); Nocedal & Wright, "Numerical
      Optimization", 2nd ed., sec. 3.1 (backtracking) and 10.3 (Gauss-Newton).
    """
    f = activation_fn(cfg.activation)
    terms = _coupled_terms(params, aux, duals, rho, inputs, cfg)
    a_lin, h_lin = coupled_linearised_solve(params, aux, duals, rho, inputs, cfg, terms)
    da, dh = a_lin - aux.a, h_lin - aux.h
    dc1 = da - shift_right(dh) @ params["W"].T
    c3_0 = readout_states(aux.h, cfg) @ params["V"].T - terms.w
    dc3 = readout_states(dh, cfg) @ params["V"].T
    off2 = duals.lam2 / rho.rho2

    def value(s, fa):
        c2 = aux.h + s * dh - fa + off2
        return 0.5 * (rho.rho1 * jnp.sum((terms.c1 + s * dc1) ** 2, axis=(1, 2))
                      + rho.rho2 * jnp.sum(c2**2, axis=(1, 2))
                      + rho.rho3 * jnp.sum((c3_0 + s * dc3) ** 2, axis=(1, 2)))

    base = value(0.0, terms.fa)

    def cond(carry):
        j, chosen = carry
        return (j < _COUPLED_BACKTRACKS) & jnp.any(chosen < 0)

    def body(carry):
        j, chosen = carry
        s = 0.5 ** j.astype(base.dtype)
        ok = (chosen < 0) & (value(s, f(aux.a + s * da)) <= base)
        return j + 1, jnp.where(ok, s, chosen)

    _, chosen = jax.lax.while_loop(cond, body, (0, -jnp.ones_like(base)))
    s = jnp.maximum(chosen, 0.0)[:, None, None]
    return aux._replace(a=aux.a + s * da, h=aux.h + s * dh)


# ----------------------------------------------------------------------------- duals


def dual_update(duals: Duals, rho: Penalties, r: Residuals) -> Duals:
    """The multiplier step ``lam_i <- lam_i + rho_i r_i`` for all three families."""
    return Duals(*(lam + rh * ri for lam, rh, ri in zip(duals, rho, r, strict=True)))
