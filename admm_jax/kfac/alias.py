r"""The named K-FAC methods: `optax.chain`s of [scale_by_kfac][admm_jax.scale_by_kfac] with
optax's own weight decay and learning rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from admm_jax import _validation as checks
from admm_jax.kfac.transform import scale_by_kfac
from admm_jax.nonfinite import reject_nonfinite

ScalarOrSchedule = float | optax.Schedule
WARMUP_STEPS = 200  # the default rates ramp up while the factors' running averages are young
KFAC_RATE = optax.warmup_constant_schedule(0.0, 0.3, WARMUP_STEPS)
ONE_SIDED_RATE = optax.warmup_constant_schedule(0.0, 0.1, WARMUP_STEPS)


def _matrices(params: Any) -> Any:
    """Decay the weight matrices, not the biases or scales."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def admm_kfac(
    model: Any,
    inputs: Any,
    learning_rate: ScalarOrSchedule = KFAC_RATE,
    *,
    weight_decay: float = 0.0,
    loss: str | Callable = "cross_entropy",
    damping: float = 0.1,
    ema: float = 0.95,
    refresh_every: int = 10,
    stats_every: int = 1,
    fisher: str = "empirical",
    output_factor: str = "gates",
    normalize_output: bool = True,
    adaptive_damping: bool = True,
    fallback_scale: float = 0.003,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""Time-shared, two-sided K-FAC for recurrent networks: ADMMiRNN's weight blocks with a
    matrix penalty on their constraints.

    $$
    \Delta\theta = -\eta_t \big(D(\theta) + \beta\,\theta\big),
    $$

    \(D\) the Kronecker-factored direction of [scale_by_kfac][admm_jax.scale_by_kfac]
    (ADMMiRNN's proximal least-squares weight subproblem with its scalar penalty
    \(\rho/2\,|a_t - U x_t - W h_{t-1} - b|^2\) replaced by the metric \(S\) of the
    back-propagated adjoints: [docs](../admm_preconditioned.md)), \(\beta\) the decoupled
    weight decay of the weight matrices (``optax.add_decayed_weights``) and \(\eta_t\) the
    learning rate or any optax schedule (``optax.scale_by_learning_rate``). A step with a
    non-finite update or state is not applied ([admm_jax.reject_nonfinite][]).

    It drops into any Flax loop: ``nnx.Optimizer(model, admm_kfac(model, x), wrt=nnx.Param)``
    and ``optimizer.update(model, grads, inputs=x, targets=y)``, or ``grads=None`` to let it
    compute the gradient in its own backward pass.

    Args:
      model: the ``nnx.Module`` being trained (or ``apply(params, inputs)``).
      inputs: an example batch (its shape and dtype: the model is traced on it).
      learning_rate: \(\eta\), or an optax schedule of the step count. Default: 0.3 after a
        linear warmup over 200 steps (``optax.warmup_constant_schedule``): the factors'
        running averages are young in the first steps, and a constant rate from the first step
        can overshoot. For a run of known length, ``optax.warmup_cosine_decay_schedule``.
      weight_decay: \(\beta \ge 0\), decoupled, on parameters with two or more axes.
      loss: ``"cross_entropy"``, ``"mse"`` or a per-sample loss.
      damping: \(\mu\), relative to each factor's mean eigenvalue.
      ema: weight of the old factors in their running averages.
      refresh_every: steps between refreshes of the damped inverses.
      stats_every: steps between updates of the factors.
      fisher: ``"empirical"`` or ``"sampled"``.
      output_factor: ``"gates"`` (two-sided, one output factor per gate), ``"full"`` or
        ``"identity"`` (one-sided).
      normalize_output: use \(S / m_S\).
      adaptive_damping: raise the damping while the loss rises.
      fallback_scale: the step of parameters no linear map owns, relative to the others.
      seed: of the sampled labels.

    All as in [scale_by_kfac][admm_jax.scale_by_kfac]. With ``optax.inject_hyperparams`` any
    numeric one may be injected; list ``model`` in its ``static_args`` (a module is callable,
    and optax would take it for a schedule).

    Returns:
      An ``optax.GradientTransformationExtraArgs``: ``optax.chain`` of ``scale_by_kfac``,
      ``add_decayed_weights`` and ``scale_by_learning_rate``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> import admm_jax
      >>> model = admm_jax.ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.key(1), (16, 5, 3))
      >>> y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
      >>> optimizer = nnx.Optimizer(model, admm_jax.admm_kfac(model, x), wrt=nnx.Param)
      >>> _ = optimizer.update(model, None, inputs=x, targets=y)  # no gradients: its own
      >>> int(optimizer.opt_state[0].count[...])
      1

    References:
      Martens, Ba & Johnson, "Kronecker-factored Curvature Approximations for Recurrent
      Neural Networks", ICLR 2018; Tang et al., "ADMMiRNN", ECML-PKDD 2020.
    """
    checks.learning_rate("learning_rate", learning_rate)
    checks.nonnegative_number("weight_decay", weight_decay)
    direction = scale_by_kfac(model, inputs, loss=loss, damping=damping, ema=ema,
                              refresh_every=refresh_every, stats_every=stats_every,
                              fisher=fisher, output_factor=output_factor,
                              normalize_output=normalize_output,
                              adaptive_damping=adaptive_damping,
                              fallback_scale=fallback_scale, seed=seed)
    tx = reject_nonfinite(optax.chain(
        direction, optax.add_decayed_weights(weight_decay, mask=_matrices),
        optax.scale_by_learning_rate(learning_rate)))
    # the model it was built for, which fit compares with the model it trains (check_forward)
    return checks.register_model_options(tx, **{**checks.model_options(direction),
                                                "name": "admm_kfac"})


def admm_preconditioned(
    model: Any,
    inputs: Any,
    learning_rate: ScalarOrSchedule = ONE_SIDED_RATE,
    *,
    weight_decay: float = 0.0,
    loss: str | Callable = "cross_entropy",
    damping: float = 0.1,
    ema: float = 0.95,
    refresh_every: int = 10,
    stats_every: int = 1,
    fisher: str = "empirical",
    adaptive_damping: bool = True,
    fallback_scale: float = 0.003,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""The one-sided time-shared preconditioner: [admm_kfac][admm_jax.admm_kfac] with
    ``output_factor="identity"``.

    $$
    \Delta K = -\eta\,(A + \kappa_A I)^{-1} G,
    $$

    ADMMiRNN's proximal least-squares weight blocks with their residual targets set by the
    back-propagated adjoints: a gradient step preconditioned by each weight's input
    covariance summed over time steps. Same arguments as [admm_kfac][admm_jax.admm_kfac]
    (no ``output_factor``, ``normalize_output``: it has no output factor).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import admm_jax
      >>> model = admm_jax.ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.key(1), (16, 5, 3))
      >>> tx = admm_jax.admm_preconditioned(model, x)
      >>> state = tx.init(nnx.state(model, nnx.Param))
      >>> state[0].s
      ()

    References:
      Tang et al., "ADMMiRNN", ECML-PKDD 2020 (the weight subproblems); Martens & Grosse,
      "Optimizing Neural Networks with Kronecker-factored Approximate Curvature", ICML 2015
      (the input factor).
    """
    return admm_kfac(model, inputs, learning_rate, weight_decay=weight_decay, loss=loss,
                     damping=damping, ema=ema, refresh_every=refresh_every,
                     stats_every=stats_every, fisher=fisher, output_factor="identity",
                     adaptive_damping=adaptive_damping, fallback_scale=fallback_scale, seed=seed)
