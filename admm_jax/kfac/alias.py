r"""The named K-FAC methods: `optax.chain`s of [scale_by_kfac][admm_jax.scale_by_kfac] with
optax's own weight decay and learning rate."""

from __future__ import annotations

import inspect
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


def _with_options(method: Callable, drop: tuple[str, ...] = ()) -> Callable:
    """``method(model, inputs, learning_rate, *, weight_decay, **options)`` with a signature
    that lists ``options`` as [scale_by_kfac][admm_jax.scale_by_kfac]'s keywords (less
    ``drop``), each with its default: ``optax.inject_hyperparams`` binds them by name, and the
    options have one home."""
    own = inspect.signature(method)
    keywords = [p for name, p in inspect.signature(scale_by_kfac).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name not in drop]
    params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
    method.__signature__ = own.replace(parameters=[*params, *keywords])
    return method


def admm_kfac(
    model: Any,
    inputs: Any,
    learning_rate: ScalarOrSchedule = KFAC_RATE,
    *,
    weight_decay: float = 0.0,
    **options: Any,
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
      **options: [scale_by_kfac][admm_jax.scale_by_kfac]'s keywords, with its defaults
        (``loss``, ``damping``, ``ema``, ``refresh_every``, ``stats_every``, ``fisher``,
        ``output_factor``, ``normalize_output``, ``adaptive_damping``, ``fallback_scale``,
        ``seed``); the function's signature lists them. With ``optax.inject_hyperparams``
        any numeric one may be injected; list ``model`` in its ``static_args`` (a module is
        callable, and optax would take it for a schedule).

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
    direction = scale_by_kfac(model, inputs, **options)
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
    **options: Any,
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
    for name in ("output_factor", "normalize_output"):
        if name in options:
            raise TypeError(f"{name}: admm_preconditioned has no output factor (it is "
                            "admm_kfac with output_factor='identity')")
    return admm_kfac(model, inputs, learning_rate, weight_decay=weight_decay,
                     output_factor="identity", **options)


admm_kfac = _with_options(admm_kfac)
admm_preconditioned = _with_options(admm_preconditioned, ("output_factor", "normalize_output"))
