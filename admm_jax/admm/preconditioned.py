"""The ADMMiRNN weight subproblem as a preconditioner: its blocks fed with exact adjoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from admm_jax.admm import blocks
from admm_jax.admm.admmirnn import _check_batch
from admm_jax.admm.params import merge_like, split_params
from admm_jax.admm.problem import LOSSES, ADMMConfig, data_loss
from admm_jax.models.elman import ACTIVATIONS, elman_trace

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


class ADMMPreconditionedState(NamedTuple):
    """State of :func:`admm_preconditioned`.

    count: steps done. loss: mean loss of the last batch *before* its step (from the forward
    pass the step makes anyway). The other fields have one entry per weight group,
    ``[(U, W, b), (V, c)]``: step_norm, ``|delta theta|`` of the last step after the cap;
    capped, the cap's factor on the last step (``1``: not capped); step_scale, the running
    average of the step norms, the cap's reference (``0`` before the first step).
    """

    count: jax.Array
    loss: jax.Array
    step_norm: jax.Array
    capped: jax.Array
    step_scale: jax.Array


def adjoints(params, inputs: jax.Array, targets: jax.Array, cfg: ADMMConfig):
    r"""Forward pass, and the adjoints of the summed loss at every pre-activation and output.

    One forward and one backward pass: ``jax.value_and_grad`` with respect to zero *taps*
    added to every ``a_t`` (:func:`admm_jax.elman_trace`'s ``a_tap``) and to ``o``, so
    ``g_a = dL/da_t`` and ``g_o = dL/do`` with ``L`` = :func:`admm_jax.admm.problem.data_loss`
    (summed over samples and output steps). No weight gradient is formed.

    Returns:
      ``(loss_sum, trace, g_a [N, T, H], g_o [N, |S|, C])``.
    """

    def loss_of(taps):
        tap_a, tap_o = taps
        tr = elman_trace(params, inputs, activation=cfg.activation,
                         many_to_many=cfg.many_to_many, a_tap=tap_a)
        return data_loss(tr.o + tap_o, targets, cfg), tr

    n, t = inputs.shape[:2]
    hidden, classes = params["W"].shape[0], params["V"].shape[0]
    dtype = params["W"].dtype
    taps = (jnp.zeros((n, t, hidden), dtype),
            jnp.zeros((n, t if cfg.many_to_many else 1, classes), dtype))
    (loss, trace), (g_a, g_o) = jax.value_and_grad(loss_of, has_aux=True)(taps)
    return loss, trace, g_a, g_o


def admm_preconditioned(
    learning_rate: ScalarOrSchedule = 0.1,
    readout_learning_rate: ScalarOrSchedule = 1.0,
    *,
    prox: float = 0.1,
    weight_decay: float = 0.0,
    max_update: float | None = 3.0,
    activation: str = "tanh",
    many_to_many: bool = False,
    loss: str = "cross_entropy",
) -> optax.GradientTransformationExtraArgs:
    r"""ADMMiRNN's proximal least-squares weight blocks, their residual targets set by adjoints.

    ADMMiRNN updates ``(U, W, b)`` and ``(V, c)`` by proximal ridge regressions of targets
    ``a + R_1`` on the features ``phi_t = [x_t; h_{t-1}; 1]`` and ``o + R_3`` on
    ``[h_t; 1]`` (:func:`admm_jax.admm.blocks.uwb_step`, :func:`~admm_jax.admm.blocks.vc_step`).
    Here the residual targets come from one backward pass of the current weights instead of
    the multipliers: ``R_1 = -eta g_a`` and ``R_3 = -eta_o g_o`` with
    ``g_a = dL/da_t``, ``g_o = dL/do`` (:func:`adjoints`). The block's solution is then

    .. math::
        \Delta\theta = -\eta\,(\hat G + \lambda I)^{-1}\,\nabla_\theta \bar L, \qquad
        \hat G = \tfrac{1}{N}\sum_{n,t}\phi_{n,t}\phi_{n,t}^\top, \quad
        \lambda = \mu\,\mathrm{tr}(\hat G)/\dim\hat G,

    with ``L̄`` the mean loss of the batch: a gradient step preconditioned by the input
    covariance shared over time steps (a one-sided, time-shared K-FAC), invariant to the
    batch size. ``mu -> inf`` gives gradient descent with step ``eta / lambda``; ``mu = 0``
    is the unregularised Gauss-Newton-like step (ill-posed on small batches).

    Safeguard against the occasional oversized step (``max_update``): for each weight group,
    ``(U, W, b)`` and ``(V, c)``, a step longer than ``max_update`` times the running average
    of that group's previous step norms is scaled down to that length: a trust region whose
    radius follows the method's own step sizes, so it needs no tuning to the loss scale.

    Cost per step, for ``N`` samples of ``T`` steps, ``P = D + H + 1`` features (dense inputs):
    forward ``2NT(D+H)H`` + adjoints ``2NTH^2`` + Gram ``2NTP^2`` + right side ``2NTPH`` +
    solve ``~ P^3 + 4P^2 H`` FLOPs, against ``2NTH(2D + 3H)`` for a BPTT gradient step (whose
    weight gradients are not needed here): 1.48x at ``D=28, H=128, T=28, N=128``
    (row-MNIST). For token inputs the Gram is never formed over the vocabulary: the solve
    goes through an ``(H+1)^2`` Schur complement.

    This is not ADMM (it back-propagates); it is the ADMM weight subproblem used as a
    preconditioner. Like :func:`admm_jax.admmirnn` it ignores the gradient argument and needs
    the batch: ``update(grads, state, params, *, inputs, targets)``.

    Args:
      learning_rate: ``eta`` of ``(U, W, b)`` (``1/rho1`` of ADMMiRNN), or an optax schedule
        of the step count.
      readout_learning_rate: ``eta_o`` of ``(V, c)`` (``1/rho3``), or a schedule.
      prox: ``mu``, the damping relative to the mean eigenvalue of ``Ĝ``. Below ``0.1`` steps
        along poorly covered directions grow large.
      weight_decay: ``beta`` on ``U, W, V``, in units of the summed batch loss (as in
        :func:`admm_jax.admmirnn`).
      max_update: cap of a step's norm relative to the running average of step norms
        (``None``: no cap).
      activation, many_to_many, loss: must match the model, as in :func:`admm_jax.admmirnn`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
      inputs, targets)`` returns ``new_params - params``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> import admm_jax
      >>> model = admm_jax.ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
      >>> params = nnx.state(model, nnx.Param)
      >>> x = jax.random.normal(jax.random.key(1), (16, 5, 3))
      >>> y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
      >>> tx = admm_jax.admm_preconditioned()
      >>> state = tx.init(params)
      >>> updates, state = tx.update(None, state, params, inputs=x, targets=y)
      >>> params = optax.apply_updates(params, updates)
      >>> int(state.count)
      1

    References:
      Tang et al., "ADMMiRNN: Training RNN with Stable Convergence via an Efficient ADMM
      Approach", ECML-PKDD 2020 (the weight subproblems); Martens & Grosse, "Optimizing
      Neural Networks with Kronecker-factored Approximate Curvature", ICML 2015 (the input
      covariance factor).
    """
    _check_options(learning_rate, readout_learning_rate, prox, weight_decay, max_update,
                   activation, loss)
    cfg = ADMMConfig(activation=activation, many_to_many=many_to_many, loss=loss,
                     weight_decay=float(weight_decay), prox=float(prox))

    def init_fn(params) -> ADMMPreconditionedState:
        p, _, _ = split_params(params)
        dtype = jnp.promote_types(p["W"].dtype, jnp.float32)
        zero = jnp.zeros(2, dtype)
        return ADMMPreconditionedState(jnp.zeros((), jnp.int32), jnp.zeros((), dtype), zero,
                                       zero + 1, zero)

    def update_fn(updates, state: ADMMPreconditionedState, params=None, *, inputs=None,
                  targets=None, **extra_args: Any):
        del updates, extra_args
        p_orig, treedef, names = split_params(params)
        compute = jnp.promote_types(p_orig["W"].dtype, jnp.float32)
        p = {k: v.astype(compute) for k, v in p_orig.items()}
        inputs, targets = _check_batch(p, inputs, targets, cfg)
        loss_sum, trace, g_a, g_o = adjoints(p, inputs, targets, cfg)
        eta = jnp.asarray(_value(learning_rate, state.count), compute)
        eta_o = jnp.asarray(_value(readout_learning_rate, state.count), compute)
        uwb, _ = blocks.uwb_step(p, trace.h, inputs, -eta * g_a, 1.0 / eta, cfg)
        vc, _ = blocks.vc_step(p, trace.h, -eta_o * g_o, 1.0 / eta_o, cfg)
        groups = ({k: v - p[k] for k, v in uwb.items()}, {k: v - p[k] for k, v in vc.items()})
        norm = jnp.stack([optax.tree.norm(g) for g in groups])
        first = state.count == 0
        if max_update is None:
            capped = jnp.ones(2, compute)
        else:
            radius = max_update * jnp.where(first, norm, state.step_scale)
            capped = jnp.minimum(1.0, radius / jnp.maximum(norm, jnp.finfo(compute).tiny))
        step_norm = norm * capped
        dtype = state.loss.dtype
        new_state = ADMMPreconditionedState(
            count=state.count + 1,
            loss=(loss_sum / (trace.o.shape[0] * trace.o.shape[1])).astype(dtype),
            step_norm=step_norm.astype(dtype),
            capped=capped.astype(dtype),
            step_scale=jnp.where(first, step_norm,
                                 0.9 * state.step_scale + 0.1 * step_norm).astype(dtype),
        )
        delta = {k: (v * capped[i]).astype(p_orig[k].dtype)
                 for i, g in enumerate(groups) for k, v in g.items()}
        return merge_like(delta, treedef, names), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _value(v: ScalarOrSchedule, count: jax.Array):
    return v(count) if callable(v) else v


def _check_options(learning_rate, readout_learning_rate, prox, weight_decay, max_update,
                   activation, loss):
    for name, v in (("learning_rate", learning_rate),
                    ("readout_learning_rate", readout_learning_rate)):
        if not callable(v) and (not isinstance(v, int | float) or isinstance(v, bool)
                                or not v > 0):
            raise ValueError(f"{name}: expected a positive number or an optax schedule, "
                             f"got {v!r}")
    for name, v in (("prox", prox), ("weight_decay", weight_decay)):
        if not isinstance(v, int | float) or isinstance(v, bool) or not v >= 0:
            raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
    if max_update is not None and (not isinstance(max_update, int | float)
                                   or not max_update >= 1):
        raise ValueError(f"max_update: expected None or a number >= 1, got {max_update!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
