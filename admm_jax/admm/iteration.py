"""One ADMMiRNN iteration on a batch: the blocks in order, the multipliers, the penalties'
schedule and the per-iteration diagnostics (:func:`admm_jax.admmirnn` runs them)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from admm_jax.admm import blocks
from admm_jax.admm.coupled import coupled_step, coupled_terms
from admm_jax.admm.problem import (
    Auxiliaries,
    Duals,
    Penalties,
    Residuals,
    constraint_sides,
    lagrangian_from_residuals,
    readout_states,
)
from admm_jax.models.elman import activation_fn, elman_trace


class ADMMDiagnostics(NamedTuple):
    """Per-iteration diagnostics, all measured on the batch of the last call.

    lagrangian: augmented Lagrangian after the iteration; r1, r2, r3: primal residual norms;
    dual_residual: ``sqrt(sum_i (rho_i |change of the i-th constraint's right side|)^2)``;
    loss: mean loss of a plain forward pass of the new weights (per target); NaN when the
      iteration was rejected as non-finite (see :func:`admmirnn`).
    batch_loss: the batch's mean loss before the step, as :mod:`admm_jax.train.losses`
      reports it (from the forward pass the iteration starts from; a training loop need not
      run its own).
    """

    lagrangian: jax.Array
    r1: jax.Array
    r2: jax.Array
    r3: jax.Array
    dual_residual: jax.Array
    loss: jax.Array
    batch_loss: jax.Array


def per_step_iteration(p, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs, targets,
                       cfg, sweep_fn, schedule, count):
    r"""One ADMM iteration of the backward or parallel sweep: o, the (h, a) sweep, (U, W, b),
    (V, c), multipliers, penalties; Gauss-Seidel, every block on the latest values.

    .. math::
        o \to (h, a) \to (U, W, b) \to (V, c) \to \lambda_i \mathrel{+}= \rho_i r_i

    Args:
      p: the weights ``U, W, b, V, c``; aux: the auxiliaries ``a, h, o``; duals, rho:
        multipliers and penalties; inputs, targets: the batch; cfg: the problem.
      sweep_fn: :func:`admm_jax.admm.sweeps.sweep_backward` or ``sweep_parallel``.
      schedule: ``(rho_schedule, rho_growth, rho_max)``; count: iterations done before.

    Returns:
      ``(p, aux, duals, rho, diagnostics)``.

    Examples:
      >>> from admm_jax.admm import sweeps
      >>> from admm_jax.admm.problem import ADMMConfig
      >>> from admm_jax.models.elman import elman_trace
      >>> k = jax.random.split(jax.random.key(0), 3)
      >>> p = {"U": jax.random.normal(k[0], (4, 2)), "W": 0.5 * jnp.eye(4), "b": jnp.zeros(4),
      ...      "V": jax.random.normal(k[1], (2, 4)), "c": jnp.zeros(2)}
      >>> x, y = jax.random.normal(k[2], (6, 5, 2)), jnp.arange(6) % 2
      >>> aux = Auxiliaries(*elman_trace(p, x))
      >>> zero = Duals(*(jnp.zeros_like(v) for v in aux))
      >>> rho = Penalties(*(jnp.asarray(r) for r in (10.0, 10.0, 1.0)))
      >>> out = per_step_iteration(p, aux, zero, rho, x, y, ADMMConfig(sweep="backward"),
      ...                          sweeps.sweep_backward, ("fixed", 1.0, 1e4), jnp.asarray(0))
      >>> sorted(out[0]), float(out[4].r1) > 0
      (['U', 'V', 'W', 'b', 'c'], True)

    References:
      Tang et al., "ADMMiRNN", ECML-PKDD 2020; Boyd et al., "Distributed Optimization and
      Statistical Learning via the Alternating Direction Method of Multipliers", 2011.
    """
    before = constraint_sides(p, aux, inputs, cfg)
    aux = aux._replace(o=blocks.o_block(p, aux, duals, rho, targets, cfg))
    aux = sweep_fn(p, aux, duals, rho, inputs, cfg)
    uwb, _ = blocks.uwb_block(p, aux, duals, rho, inputs, cfg)
    p = {**p, **uwb}
    vc, _ = blocks.vc_block(p, aux, duals, rho, cfg)
    p = {**p, **vc}
    after = constraint_sides(p, aux, inputs, cfg)
    r = Residuals(*(v - side for v, side in zip(aux, after, strict=True)))
    duals = blocks.dual_update(duals, rho, r)
    s = [rh * jnp.linalg.norm(a1 - a0) for rh, a0, a1 in zip(rho, before, after, strict=True)]
    rnorm = [jnp.linalg.norm(ri) for ri in r]
    lag = lagrangian_from_residuals(p, aux.o, r, duals, rho, targets, cfg)
    zero = jnp.zeros_like(lag)
    diag = ADMMDiagnostics(lag, *rnorm, jnp.sqrt(sum(si**2 for si in s)), zero, zero)
    return p, aux, duals, next_rho(rho, rnorm, s, schedule, count), diag


def next_rho(rho: Penalties, rnorm, s, schedule, count) -> Penalties:
    """The penalties after iteration ``count + 1`` under ``schedule``.

    ``"geometric"``: ``rho g``; ``"linear"``: ``rho_0 (1 + (g - 1) k)`` after ``k``
    iterations (applied as the ratio of consecutive values, so a penalty scaled by a retry
    keeps its scale); ``"balance"``: doubled when the family's primal residual exceeds 10x its
    dual residual, halved in the opposite case (Boyd et al. 2011, sec. 3.4.1); all capped at
    ``rho_max``.

    Args:
      rho: the penalties; rnorm, s: primal and dual residual norms per family.
      schedule: ``(rho_schedule, rho_growth, rho_max)``; count: iterations done before.

    Returns:
      The next :class:`Penalties`.

    Examples:
      >>> rho = Penalties(*(jnp.asarray(r) for r in (1.0, 2.0, 4.0)))
      >>> new = next_rho(rho, None, None, ("linear", 1.5, 1e4), jnp.asarray(1))
      >>> [round(float(r), 4) for r in new]   # rho_0 (1 + 0.5 * 2) / (1 + 0.5 * 1): x 4/3
      [1.3333, 2.6667, 5.3333]
    """
    rho_schedule, rho_growth, rho_max = schedule
    if rho_schedule == "geometric":
        return Penalties(*(jnp.minimum(rh * rho_growth, rho_max) for rh in rho))
    if rho_schedule == "linear":  # rho_0 (1 + g k) from rho_0 (1 + g (k - 1)), g = growth - 1
        g = rho_growth - 1.0
        k = count.astype(rho.rho1.dtype)
        factor = (1.0 + g * (k + 1.0)) / (1.0 + g * k)
        return Penalties(*(jnp.minimum(rh * factor, rho_max) for rh in rho))
    if rho_schedule == "balance":
        return Penalties(*(
            jnp.clip(jnp.where(ri > 10 * si, 2 * rh, jnp.where(si > 10 * ri, rh / 2, rh)),
                     None, rho_max)
            for rh, ri, si in zip(rho, rnorm, s, strict=True)))
    return rho


def _shrinkage(dim: int, rows: int) -> float:
    """``dim / rows``: the proximal weight (in units of the mean Gram eigenvalue) added to a
    weight block whose ``dim x dim`` Gram matrix is summed over ``rows`` rows of one batch."""
    return dim / rows


def coupled_iteration(p, trace, duals: Duals, rho: Penalties, inputs, targets, cfg, schedule,
                      count):
    r"""One coupled ADMM iteration from the forward pass of the weights: o, (a, h),
    multipliers, (U, W, b) on the forward states, (V, c) on the new weights' states.

    .. math::
        (a, h, o) = \text{forward}(\theta) \to o \to (a, h)\ \text{jointly} \to
        \lambda_i \mathrel{+}= \rho_i r_i \to (U, W, b) \to (V, c)

    At the forward pass C1 holds exactly, so the ``(U, W, b)`` block's residual targets are
    ``lam1/rho1``; the ``(V, c)`` block fits ``o + lam3/rho3`` (``lam3`` before this
    iteration's multiplier step) on the states ``h'`` of the new ``(U, W, b)``, so its fixed
    point is the loss's stationarity in ``(V, c)``. Both weight blocks' proximal weights are
    ``mu = prox + dim/rows``: the batch Gram matrix of ``rows`` rows in ``dim`` dimensions,
    shrunk toward its mean eigenvalue.

    Args:
      p: the weights; trace: the forward pass of ``p`` on the batch
        (:func:`admm_jax.models.elman.elman_trace`); duals, rho: multipliers (zero at the
        first iteration of a call) and penalties; inputs, targets: the batch; cfg: the problem.
      schedule: ``(rho_schedule, rho_growth, rho_max)``; count: iterations done before.

    Returns:
      ``(p, duals, rho, diagnostics, o)``: ``o`` the new weights' outputs on the batch.

    Examples:
      >>> from admm_jax.admm.problem import ADMMConfig
      >>> from admm_jax.models.elman import elman_trace
      >>> k = jax.random.split(jax.random.key(0), 3)
      >>> p = {"U": jax.random.normal(k[0], (4, 2)), "W": 0.5 * jnp.eye(4), "b": jnp.zeros(4),
      ...      "V": jax.random.normal(k[1], (2, 4)), "c": jnp.zeros(2)}
      >>> x, y = jax.random.normal(k[2], (6, 5, 2)), jnp.arange(6) % 2
      >>> tr = elman_trace(p, x)
      >>> zero = Duals(*(jnp.zeros_like(v) for v in tr))
      >>> rho = Penalties(*(jnp.asarray(r) for r in (0.5, 10.0, 0.1)))
      >>> p2, _, _, diag, o = coupled_iteration(p, tr, zero, rho, x, y, ADMMConfig(),
      ...                                       ("fixed", 1.0, 1e4), jnp.asarray(0))
      >>> bool(jnp.allclose(o, elman_trace(p2, x).o, atol=1e-5))   # o: the new weights' outputs
      True

    References:
      Tang et al., "ADMMiRNN", ECML-PKDD 2020; Ledoit & Wolf, J. Multivariate Analysis 88,
      2004 (shrinking a sample covariance matrix by ``dim/rows``).
    """
    fwd = Auxiliaries(trace.a, trace.h, trace.o)
    aux = fwd._replace(o=blocks.o_block(p, fwd, duals, rho, targets, cfg))
    n, steps, hidden = fwd.h.shape
    token = jnp.issubdtype(inputs.dtype, jnp.integer)
    dim_uwb = hidden + 1 + (0 if token else inputs.shape[-1])
    mu_uwb = cfg.prox + _shrinkage(dim_uwb, n * steps)
    mu_vc = cfg.prox + _shrinkage(hidden + 1, n * fwd.o.shape[1])
    # at the forward pass C1 holds exactly: its scaled slack a - W h_prev - u is lam1/rho1
    terms = coupled_terms(p, aux, duals, rho, inputs, cfg, c1=duals.lam1 / rho.rho1)
    aux, c1 = coupled_step(p, aux, duals, rho, inputs, cfg, terms)
    r = Residuals(c1 - duals.lam1 / rho.rho1, aux.h - activation_fn(cfg.activation)(aux.a),
                  aux.o - readout_states(aux.h, cfg) @ p["V"].T - p["c"])
    lag = lagrangian_from_residuals(p, aux.o, r, duals, rho, targets, cfg)
    lam3_before = duals.lam3
    duals = blocks.dual_update(duals, rho, r)
    # (U, W, b): targets a + lam1/rho1 on the forward states, where a = U x + W h_prev + b
    uwb_gram = blocks.uwb_gram(fwd.h, inputs, p["U"].shape[1])
    p0 = p
    uwb, _ = blocks.uwb_step(p, fwd.h, inputs, duals.lam1 / rho.rho1, rho.rho1, cfg,
                             gram=uwb_gram, prox=mu_uwb)
    p = {**p, **uwb}
    # (V, c): targets o + lam3/rho3 on the states of the new (U, W, b), the states it reads
    h_new = elman_trace(p, inputs, activation=cfg.activation, many_to_many=cfg.many_to_many).h
    o_new = readout_states(h_new, cfg) @ p["V"].T + p["c"]
    vc_gram = blocks.vc_gram(h_new, cfg)
    vc, _ = blocks.vc_step(p, h_new, aux.o + lam3_before / rho.rho3 - o_new, rho.rho3, cfg,
                           gram=vc_gram, prox=mu_vc)
    p = {**p, **vc}
    o_new = readout_states(h_new, cfg) @ p["V"].T + p["c"]
    # dual residual: rho_i |change of C_i's right side|: C1's on the forward states, C3's on
    # the new states (|Phi D|^2 = D^T G D from the Gram matrices the blocks used); C2's
    # right side f(a) is not changed by the weights
    s = (rho.rho1 * _fitted_norm(uwb_gram, p, p0, inputs, ("U", "W", "b")), 0.0 * lag,
         rho.rho3 * _fitted_norm((vc_gram,), p, p0, inputs, ("V", "c")))
    rnorm = [jnp.linalg.norm(ri) for ri in r]
    zero = jnp.zeros_like(lag)
    diag = ADMMDiagnostics(lag, *rnorm, jnp.sqrt(sum(si**2 for si in s)), zero, zero)
    return p, duals, next_rho(rho, rnorm, s, schedule, count), diag, o_new


def _fitted_norm(gram, p, p0, inputs, keys):
    """``|Phi D|`` for the step ``D`` of the weights ``keys`` (row layout ``[U^T; W^T; b]`` or
    ``[V^T; c]``) and the Gram statistics of :func:`blocks.uwb_gram` / :func:`blocks.vc_gram`."""
    if keys == ("V", "c"):
        d = jnp.concatenate([(p["V"] - p0["V"]).T, (p["c"] - p0["c"])[None]], 0)
        return jnp.sqrt(jnp.maximum(jnp.sum(d * (gram[0] @ d)), 0.0))
    dp = jnp.concatenate([(p["W"] - p0["W"]).T, (p["b"] - p0["b"])[None]], 0)
    du = (p["U"] - p0["U"]).T
    if len(gram) == 1:  # dense inputs: one Gram matrix over [x; h_prev; 1]
        d = jnp.concatenate([du, dp], 0)
        return jnp.sqrt(jnp.maximum(jnp.sum(d * (gram[0] @ d)), 0.0))
    counts, xt_p, gram_p = gram  # token inputs: diag(counts), X^T P, P^T P
    sq = (jnp.sum(counts[:, None] * du**2) + 2 * jnp.sum(du * (xt_p @ dp))
          + jnp.sum(dp * (gram_p @ dp)))
    return jnp.sqrt(jnp.maximum(sq, 0.0))
