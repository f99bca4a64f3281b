"""The ADMMiRNN splitting: variables, configuration, residuals and the augmented Lagrangian."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from admm_jax import _validation as checks
from admm_jax.layouts import check_elman_shapes
from admm_jax.models.elman import activation_fn, input_projection


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["weight_decay", "prox"],
                   meta_fields=["activation", "many_to_many", "loss", "newton_steps", "a_steps",
                                "sweep", "cg_steps"])
@dataclasses.dataclass(frozen=True)
class ADMMConfig:
    """The problem and how its blocks are solved: a pytree whose structure is static.

    The static fields (``activation`` ... ``cg_steps``) choose code paths, shapes and loop
    lengths and are checked on construction; ``weight_decay`` and ``prox`` are its leaves
    (numbers, or arrays that may be traced, e.g. under ``optax.inject_hyperparams``). The
    defaults are :func:`admm_jax.admmirnn`'s.

    Attributes:
      activation: ``"tanh"`` or ``"relu"``.
      many_to_many: targets at every step (``S = 1..T``) instead of the last (``S = {T}``).
      loss: ``"cross_entropy"`` (integer class targets) or ``"mse"`` (real targets,
        ``1/2 |o - y|^2`` summed, :func:`half_sum_of_squares`; not the mean).
      newton_steps: Newton iterations of the o-block (cross entropy).
      a_steps: safeguarded Gauss-Newton iterations of the a-block (tanh; backward and
        parallel sweeps).
      sweep: ``"coupled"`` (all ``(a_t, h_t)`` jointly, :mod:`admm_jax.admm.coupled`),
        ``"backward"`` (h_T, a_T, h_{T-1}, ... in one scan) or ``"parallel"`` (all h_t at
        once, then all a_t at once).
      cg_steps: conjugate-gradient iterations of the coupled block; ``None``: exact (in the
        output space when ``S = {T}``, else ``C |S| + 1`` iterations).
      weight_decay: ``beta`` on ``|U|^2 + |W|^2 + |V|^2`` (biases are not decayed).
      prox: ``mu``: each weight block adds the proximal term
        ``kappa/2 |theta - theta_prev|^2`` with ``kappa = mu * rho * trace(G) / dim(G)``, ``G``
        the block's Gram matrix and ``rho`` its penalty (``rho1`` for ``(U, W, b)``, ``rho3``
        for ``(V, c)``); 0 disables it.

    Examples:
      >>> cfg = ADMMConfig(loss="mse")
      >>> jax.tree_util.tree_leaves(cfg)
      [0.0, 0.03]
      >>> ADMMConfig(sweep="forward")
      Traceback (most recent call last):
      ...
      ValueError: sweep: expected one of ('coupled', 'backward', 'parallel'), got 'forward'
    """

    activation: str = "tanh"
    many_to_many: bool = False
    loss: str = "cross_entropy"
    newton_steps: int = 8
    a_steps: int = 4
    sweep: str = "coupled"
    cg_steps: int | None = None
    weight_decay: float | jax.Array = 0.0
    prox: float | jax.Array = 0.03

    def __post_init__(self):
        checks.one_of("activation", self.activation, ("tanh", "relu"))
        checks.one_of("loss", self.loss, tuple(SUMMED_LOSSES))
        checks.one_of("sweep", self.sweep, ("coupled", "backward", "parallel"))
        if not isinstance(self.many_to_many, bool):
            raise ValueError(f"many_to_many: expected a bool, got {self.many_to_many!r}")
        checks.positive_int("newton_steps", self.newton_steps)
        checks.positive_int("a_steps", self.a_steps)
        checks.positive_int("cg_steps", self.cg_steps, allow_none=True)


def config_number(v):
    """A hyperparameter for :class:`ADMMConfig`: a concrete scalar as a ``float``, a traced one
    (``optax.inject_hyperparams`` inside ``jit``) as is.

    Examples:
      >>> import numpy as np
      >>> config_number(np.float32(0.5))
      0.5
    """
    return v if isinstance(v, jax.core.Tracer) else float(v)


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


def summed_cross_entropy(o: jax.Array, y: jax.Array) -> jax.Array:
    r"""Cross entropy summed over samples and steps: ``-sum log softmax(o)[y]``.

    .. math::
        \ell = -\sum_{n,t} \log \mathrm{softmax}(o_{n,t})_{y_{n,t}}

    Args:
      o: logits ``[N, |S|, C]``.
      y: integer classes ``[N, |S|]``.

    Returns:
      The scalar sum (not a mean: the ADMM subproblems weigh it against the penalties).

    Examples:
      >>> import jax.numpy as jnp
      >>> round(float(summed_cross_entropy(jnp.zeros((2, 1, 4)), jnp.zeros((2, 1), int))), 4)
      2.7726
    """
    logp = jax.nn.log_softmax(o, axis=-1)
    return -jnp.sum(jnp.take_along_axis(logp, y[..., None], axis=-1))


def half_sum_of_squares(o: jax.Array, y: jax.Array) -> jax.Array:
    r"""Half the summed squared error, ``1/2 sum |o - y|^2``: what ``loss="mse"`` means here.

    .. math::
        \ell = \tfrac12 \sum_{n,t} |o_{n,t} - y_{n,t}|^2

    Not :func:`admm_jax.train.losses.mse`, the per-sample *mean* of the squares without the
    1/2 that the training loop reports: the ADMM subproblems need the sum (weighed against the
    penalties), and the 1/2 makes the o-block's solution ``(y + rho3 z)/(1 + rho3)`` exact.

    Args:
      o: outputs ``[N, |S|, C]``.
      y: real targets of the same shape.

    Returns:
      The scalar ``1/2 sum (o - y)^2``.

    Examples:
      >>> import jax.numpy as jnp
      >>> float(half_sum_of_squares(jnp.ones((2, 1, 3)), jnp.zeros((2, 1, 3))))
      3.0
    """
    return 0.5 * jnp.sum((o - y) ** 2)


SUMMED_LOSSES = {"cross_entropy": summed_cross_entropy, "mse": half_sum_of_squares}
"""The ``loss=`` options of the ADMM methods and the summed loss each stands for; not the
per-sample means of :data:`admm_jax.train.losses.LOSSES`."""


def data_loss(o: jax.Array, targets: jax.Array, cfg: ADMMConfig) -> jax.Array:
    """Summed loss ``sum_n sum_{t in S} loss(o_{n,t}, y_{n,t})`` (:data:`SUMMED_LOSSES`).

    ``"cross_entropy"``: :func:`summed_cross_entropy`; ``"mse"``: :func:`half_sum_of_squares`,
    ``1/2`` the summed squares (not the mean).

    Args:
      o: outputs ``[N, |S|, C]``.
      targets: ``[N]`` or ``[N, T]`` integer classes (cross entropy) or ``[N, C]`` /
        ``[N, T, C]`` reals (``"mse"``), aligned with ``o``.
      cfg: the problem (``loss``, ``many_to_many``).

    Returns:
      The scalar summed loss.
    """
    return SUMMED_LOSSES[cfg.loss](o, targets_as_steps(targets, cfg))


def mean_loss(o: jax.Array, targets: jax.Array, cfg: ADMMConfig) -> jax.Array:
    """The batch's mean loss as :mod:`admm_jax.train.losses` reports it.

    Cross entropy: the mean over samples and steps with a target. ``"mse"``: the mean of the
    squares over samples, steps and outputs (without the 1/2 of :func:`half_sum_of_squares`).

    Examples:
      >>> import jax.numpy as jnp
      >>> float(mean_loss(jnp.ones((2, 1, 3)), jnp.zeros((2, 3)), ADMMConfig(loss="mse")))
      1.0
    """
    n, steps, outputs = o.shape
    total = data_loss(o, targets, cfg)
    if cfg.loss == "mse":
        return 2.0 * total / (n * steps * outputs)
    return total / (n * steps)


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
    (``{"UWb": kappa, "Vc": kappa}``, the blocks' proximal weights; a ``kappa`` may be a dict
    by parameter) are given, the proximal terms ``kappa/2 |theta - theta_prev|^2`` of the
    weight blocks are added: this is the function the proximal weight blocks minimise exactly.
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


def check_batch(p, inputs, targets, cfg: ADMMConfig):
    """Check a batch against the Elman parameters and the problem (safe at trace time).

    Args:
      p: the Elman parameters ``{U, W, b, V, c}`` (checked by
        :func:`admm_jax.layouts.check_elman_shapes`).
      inputs: ``[N, T, D]`` floats or ``[N, T]`` token ids below ``D``.
      targets: integer classes ``[N]`` (``[N, T]`` many-to-many) for cross entropy, reals
        ``[N, C]`` (``[N, T, C]``) for ``"mse"``.
      cfg: the problem (``loss``, ``many_to_many``).

    Returns:
      ``(inputs, targets)`` as arrays, float inputs in ``U``'s dtype and real targets in
      ``V``'s.

    Raises:
      ValueError: naming the argument and the shape or dtype expected; concrete token ids
        outside ``[0, D)`` and class labels outside ``[0, C)`` too (traced ones give a NaN
        projection or are checked by the iteration, and the step is rejected).

    Examples:
      >>> import jax.numpy as jnp
      >>> p = {"U": jnp.ones((4, 3)), "W": jnp.ones((4, 4)), "b": jnp.ones(4),
      ...      "V": jnp.ones((2, 4)), "c": jnp.ones(2)}
      >>> x, y = check_batch(p, jnp.zeros((5, 7, 3)), jnp.zeros(5, int), ADMMConfig())
      >>> x.shape, y.shape
      ((5, 7, 3), (5,))
    """
    if inputs is None or targets is None:
        raise ValueError("inputs, targets: admmirnn.update needs the batch: "
                         "tx.update(grads, state, params, inputs=x, targets=y)")
    check_elman_shapes(p)
    inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
    d = p["U"].shape[1]
    token = jnp.issubdtype(inputs.dtype, jnp.integer)
    if token and inputs.ndim != 2:
        raise ValueError(f"inputs: token ids must be [N, T], got shape {inputs.shape}")
    if not token and (inputs.ndim != 3 or inputs.shape[-1] != d):
        raise ValueError(f"inputs: expected [N, T, {d}] (U is {p['U'].shape}), "
                         f"got shape {inputs.shape}")
    if 0 in inputs.shape:
        raise ValueError(f"inputs: expected at least one sample of at least one step, got shape "
                         f"{tuple(inputs.shape)}")
    if token:
        # concrete ids are checked here; under jit an id outside [0, vocab) gives a NaN
        # projection (admm_jax.models.elman.input_projection), so the step is rejected
        checks.token_ids("inputs", inputs, d)
    else:
        inputs = inputs.astype(p["U"].dtype)
    n, t = inputs.shape[:2]
    c = p["V"].shape[0]
    if cfg.loss == "cross_entropy":
        want = (n, t) if cfg.many_to_many else (n,)
        if targets.shape != want or not jnp.issubdtype(targets.dtype, jnp.integer):
            raise ValueError(f"targets: expected integer classes of shape {want}, "
                             f"got {targets.dtype}{targets.shape}")
        if not isinstance(targets, jax.core.Tracer):  # traced: the iteration is rejected
            checks.labels("targets", targets, c)
    else:
        want = (n, t, c) if cfg.many_to_many else (n, c)
        if targets.shape != want:
            raise ValueError(f"targets: expected reals of shape {want}, got {targets.shape}")
        targets = targets.astype(p["V"].dtype)
    return inputs, targets
