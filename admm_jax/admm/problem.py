"""The ADMMiRNN splitting: variables, configuration, residuals and the augmented Lagrangian."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from admm_jax.models.elman import activation_fn, input_projection

LOSSES = ("cross_entropy", "mse")


@dataclasses.dataclass(frozen=True)
class ADMMConfig:
    """Static (hashable) description of the problem and of how its blocks are solved.

    Attributes:
      activation: ``"tanh"`` or ``"relu"``.
      many_to_many: targets at every step (``S = 1..T``) instead of the last (``S = {T}``).
      loss: ``"cross_entropy"`` (integer class targets) or ``"mse"`` (real targets,
        ``1/2 |o - y|^2``).
      weight_decay: ``beta`` on ``|U|^2 + |W|^2 + |V|^2`` (biases are not decayed).
      prox: ``mu``: each weight block adds ``lam/2 |theta - theta_prev|^2`` with
        ``lam = mu * trace(G) / dim(G)``, ``G`` the block's Gram matrix (0 disables it).
      newton_steps: Newton iterations of the o-block (cross entropy).
      a_steps: safeguarded Gauss-Newton iterations of the a-block (tanh).
      sweep: ``"coupled"`` (all ``(a_t, h_t)`` jointly: one Gauss-Newton step solved by
        conjugate gradients over time, :func:`admm_jax.admm.blocks.sweep_coupled`),
        ``"backward"`` (h_T, a_T, h_{T-1}, ... in one scan) or ``"parallel"`` (all h_t at
        once, then all a_t at once).
      cg_steps: conjugate-gradient iterations of the ``"coupled"`` block.
    """

    activation: str = "tanh"
    many_to_many: bool = False
    loss: str = "cross_entropy"
    weight_decay: float = 0.0
    prox: float = 0.1
    newton_steps: int = 8
    a_steps: int = 4
    sweep: str = "backward"
    cg_steps: int = 3


class Auxiliaries(NamedTuple):
    """Auxiliary variables of the unfolded RNN: ``a, h [N, T, H]`` and ``o [N, |S|, C]``."""

    a: jax.Array
    h: jax.Array
    o: jax.Array


class Duals(NamedTuple):
    """Scaled-form multipliers of C1 (``lam1 [N, T, H]``), C2 (``lam2``) and C3 (``lam3``)."""

    lam1: jax.Array
    lam2: jax.Array
    lam3: jax.Array


class Penalties(NamedTuple):
    """Penalty parameters ``rho1, rho2, rho3`` of C1, C2 and C3 (scalars)."""

    rho1: jax.Array
    rho2: jax.Array
    rho3: jax.Array


class Residuals(NamedTuple):
    """Primal residuals ``r1 = a - Ux - W h_prev - b``, ``r2 = h - f(a)``, ``r3 = o - V h - c``."""

    r1: jax.Array
    r2: jax.Array
    r3: jax.Array


def shift_right(h: jax.Array) -> jax.Array:
    """``h_{t-1}`` for every step, with ``h_0 = 0``: ``[N, T, H] -> [N, T, H]``."""
    return jnp.concatenate([jnp.zeros_like(h[:, :1]), h[:, :-1]], axis=1)


def readout_states(h: jax.Array, cfg: ADMMConfig) -> jax.Array:
    """The states that feed an output: all of them (many-to-many) or the last one."""
    return h if cfg.many_to_many else h[:, -1:]


def constraint_sides(params, aux: Auxiliaries, inputs: jax.Array, cfg: ADMMConfig):
    """The right-hand sides of C1, C2, C3: ``U x + W h_prev + b``, ``f(a)``, ``V h_S + c``."""
    f = activation_fn(cfg.activation)
    z1 = input_projection(params["U"], inputs) + shift_right(aux.h) @ params["W"].T + params["b"]
    return z1, f(aux.a), readout_states(aux.h, cfg) @ params["V"].T + params["c"]


def residuals(params, aux: Auxiliaries, inputs: jax.Array, cfg: ADMMConfig) -> Residuals:
    """The three constraint residuals at ``(params, aux)``: each variable minus its side."""
    return Residuals(*(v - side for v, side in
                       zip(aux, constraint_sides(params, aux, inputs, cfg), strict=True)))


def data_loss(o: jax.Array, targets: jax.Array, cfg: ADMMConfig) -> jax.Array:
    """Summed loss ``sum_n sum_{t in S} loss(o_{n,t}, y_{n,t})``.

    ``targets`` are ``[N]`` or ``[N, T]`` integer classes (cross entropy) or ``[N, C]`` /
    ``[N, T, C]`` reals (mse); they are aligned with ``o [N, |S|, C]``.
    """
    y = targets_as_steps(targets, cfg)
    if cfg.loss == "cross_entropy":
        logp = jax.nn.log_softmax(o, axis=-1)
        return -jnp.sum(jnp.take_along_axis(logp, y[..., None], axis=-1))
    return 0.5 * jnp.sum((o - y) ** 2)


def targets_as_steps(targets: jax.Array, cfg: ADMMConfig) -> jax.Array:
    """Targets with an explicit step axis matching ``o [N, |S|, C]``."""
    if cfg.many_to_many:
        return targets
    return targets[:, None]


def augmented_lagrangian(
    params,
    aux: Auxiliaries,
    duals: Duals,
    rho: Penalties,
    inputs: jax.Array,
    targets: jax.Array,
    cfg: ADMMConfig,
    prox_anchor=None,
    prox_weights=None,
) -> jax.Array:
    r"""The scaled-form augmented Lagrangian that every block decreases.

    .. math::
        L = \sum \ell(o) + \tfrac{\beta}{2}(|U|^2+|W|^2+|V|^2)
            + \sum_i \tfrac{\rho_i}{2}|r_i + \lambda_i/\rho_i|^2 - \tfrac{1}{2\rho_i}|\lambda_i|^2

    When ``prox_anchor`` (the weights at the start of the iteration) and ``prox_weights``
    (``{"UWb": lam, "Vc": lam}``, a ``lam`` may be a dict by parameter) are given, the proximal
    terms of the weight blocks are added:
    this is the function the proximal weight blocks minimise exactly.
    """
    return lagrangian_from_residuals(
        params, aux.o, residuals(params, aux, inputs, cfg), duals, rho, targets, cfg,
        prox_anchor, prox_weights)


def lagrangian_from_residuals(params, o, r: Residuals, duals: Duals, rho: Penalties,
                              targets: jax.Array, cfg: ADMMConfig, prox_anchor=None,
                              prox_weights=None) -> jax.Array:
    """:func:`augmented_lagrangian` given residuals already computed."""
    value = data_loss(o, targets, cfg)
    value += 0.5 * cfg.weight_decay * sum(jnp.sum(params[k] ** 2) for k in ("U", "W", "V"))
    for ri, lam, rh in zip(r, duals, rho, strict=True):
        value += 0.5 * rh * jnp.sum((ri + lam / rh) ** 2) - jnp.sum(lam**2) / (2 * rh)
    if prox_anchor is not None:
        for group, keys in (("UWb", ("U", "W", "b")), ("Vc", ("V", "c"))):
            w = prox_weights[group]  # one weight, or one per parameter (dict)
            value += sum(0.5 * (w[k] if isinstance(w, dict) else w)
                         * jnp.sum((params[k] - prox_anchor[k]) ** 2) for k in keys)
    return value
