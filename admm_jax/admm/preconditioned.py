"""The ADMMiRNN weight subproblem as a preconditioner: its blocks fed with exact adjoints."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from admm_jax import _validation as checks
from admm_jax.admm import blocks
from admm_jax.admm.problem import (
    SUMMED_LOSSES,
    ADMMConfig,
    check_batch,
    config_number,
    data_loss,
    readout_states,
)
from admm_jax.layouts import BlockLayout, from_blocks, to_blocks, unstack_lstm_gates
from admm_jax.models.elman import ACTIVATIONS, elman_trace
from admm_jax.models.lstm import lstm_scan
from admm_jax.nonfinite import reject_nonfinite

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]
RISE = 1.1  # adaptive damping: "the loss is rising" when its fast average > RISE * slow one
MAX_DAMPING = 1e6


class PreconditionedDiagnostics(NamedTuple):
    """Per-step figures of :func:`admm_preconditioned` and :func:`admm_kfac`.

    batch_loss: the mean loss of the last batch before its step, from the forward pass the step
    makes anyway, as :mod:`admm_jax.train.losses` defines it (mean over samples and steps; for
    ``mse`` also over outputs, without a 1/2), so a training loop can record it instead of
    running a forward pass of its own; step_norm: ``|delta theta|`` of the last step over all
    weights; damping: the adaptive damping factor ``d >= 1`` on ``prox``.
    """

    batch_loss: jax.Array
    step_norm: jax.Array
    damping: jax.Array


class ADMMPreconditionedState(NamedTuple):
    """State of :func:`admm_preconditioned`.

    count: steps done. loss: mean loss of the last batch *before* its step (from the forward
    pass the step makes anyway), as :mod:`admm_jax.train.losses` defines it. step_norm:
    ``|delta theta|`` of the last step for each weight group, ``[(U, W, b), (V, c)]``.
    damping: the factor ``d >= 1`` on ``prox`` (adaptive damping). loss_fast, loss_slow,
    loss_var: the running averages of the batch loss it compares, and the slow one's running
    variance.
    """

    count: jax.Array
    loss: jax.Array
    step_norm: jax.Array
    damping: jax.Array
    loss_fast: jax.Array
    loss_slow: jax.Array
    loss_var: jax.Array

    takes_batch = True  # update(None, state, params, inputs=x, targets=y): no gradients

    @property
    def diagnostics(self) -> PreconditionedDiagnostics:
        """The step's figures (read by :func:`admm_jax.optimizers.diagnostics`)."""
        return step_diagnostics(self)


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


def lstm_adjoints(cell, readout, inputs: jax.Array, targets: jax.Array, cfg: ADMMConfig):
    r""":func:`adjoints` for :class:`admm_jax.LSTM`: taps on the gate pre-activations.

    ``z_t = W_x x_t + W_h h_{t-1} + b`` (``[N, T, 4H]``, gates ``i, f, g, o``) get zero taps
    (:func:`admm_jax.lstm_scan`'s ``z_tap``), and the outputs ``o = V h + c`` another.

    Returns:
      ``(loss_sum, hs [N, T, H], g_z [N, T, 4H], g_o [N, |S|, C])``.
    """
    V, c = readout

    def loss_of(taps):
        tap_z, tap_o = taps
        _, hs = lstm_scan(cell, inputs, z_tap=tap_z)
        o = readout_states(hs, cfg) @ V.T + c + tap_o
        return data_loss(o, targets, cfg), hs

    n, t = inputs.shape[:2]
    gates = cell["hi"]["kernel"].shape[0] * 4
    dtype = V.dtype
    taps = (jnp.zeros((n, t, gates), dtype),
            jnp.zeros((n, t if cfg.many_to_many else 1, V.shape[0]), dtype))
    (loss, hs), (g_z, g_o) = jax.value_and_grad(loss_of, has_aux=True)(taps)
    return loss, hs, g_z, g_o


def admm_preconditioned(
    learning_rate: ScalarOrSchedule = 0.1,
    readout_learning_rate: ScalarOrSchedule = 1.0,
    *,
    prox: float = 0.1,
    weight_decay: float = 0.0,
    adaptive_damping: bool = True,
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
        \Delta\theta = -\eta\,(\hat G + \kappa I)^{-1}\,\nabla_\theta \bar L, \qquad
        \hat G = \tfrac{1}{N}\sum_{n,t}\phi_{n,t}\phi_{n,t}^\top, \quad
        \kappa = \mu\,\mathrm{tr}(\hat G)/\dim\hat G,

    with ``L̄`` the mean loss of the batch: a gradient step preconditioned by the input
    covariance shared over time steps (a one-sided, time-shared K-FAC), invariant to the
    batch size. ``mu -> inf`` gives gradient descent with step ``eta / kappa``; ``mu = 0``
    is the unregularised Gauss-Newton-like step (ill-posed on small batches).

    Safeguard, ``adaptive_damping`` (Levenberg-Marquardt style, driven by the observed
    loss): running averages of the batch loss, ``fast`` (weight 1/2) and ``slow`` (1/20, with
    its running variance ``v``), are kept. When ``fast > 1.1 slow`` *and*
    ``fast - slow > 3 sqrt(v/3)`` (the rise is material and beyond batch-to-batch noise), or
    the loss is not finite, the damping factor ``d`` doubles; otherwise it decays by ``0.97``
    per step, down to 1. The step uses ``mu * d``: larger damping shortens every step and
    turns it toward the gradient, so a run whose steps are too long damps itself back to a
    stable regime, then returns to ``d = 1``. The experiment that chose this rule, and the
    step-norm cap it replaced, are in ``docs/admm_preconditioned.md`` ("Safeguard: adaptive
    damping").

    Cost per step, for ``N`` samples of ``T`` steps, ``P = D + H + 1`` features (dense inputs):
    forward ``2NT(D+H)H`` + adjoints ``2NTH^2`` + Gram ``2NTP^2`` + right side ``2NTPH`` +
    solve ``~ P^3 + 4P^2 H`` FLOPs, against ``2NTH(2D + 3H)`` for a BPTT gradient step (whose
    weight gradients are not needed here); the ratio at row-MNIST's sizes and the measured
    step cost are in ``docs/admm_preconditioned.md`` ("Cost"). For token inputs the Gram is
    never formed over the vocabulary: the solve goes through an ``(H+1)^2`` Schur complement.

    :class:`admm_jax.LSTM` is supported the same way: its four gates' pre-activations
    ``z_t = W_x x_t + W_h h_{t-1} + b`` are one linear map of the same features, so the same
    ``(D+H+1)^2`` Gram preconditions all ``4H`` columns, with targets ``-eta dL/dz_t`` from taps
    on ``z_t`` (:func:`lstm_adjoints`); the readout as above.

    A step whose update or new state is not finite (a NaN in the batch, an overflow) is not
    applied: zero update, state unchanged, ``count`` included (:func:`admm_jax.reject_nonfinite`).
    Hyperparameters may be Python or numpy numbers or 0-d arrays, and may be injected by
    ``optax.inject_hyperparams``.

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
        :func:`admm_jax.admmirnn`); a proximal decay: each step pulls a weight toward 0 with
        weight ``beta`` against the data's ``rho * G`` and the damping. With token inputs
        that makes it an embedding regulariser: a row whose token is absent from the batch
        shrinks by ``beta / (beta + kappa_x)`` per step (``kappa_x = mu rho`` x mean token
        count). The values chosen on IMDb and row-MNIST: ``docs/admm_preconditioned.md``.
      adaptive_damping: raise ``prox`` while the loss rises (see above); ``False``: fixed
        ``prox``.
      activation, many_to_many, loss: must match the model, as in :func:`admm_jax.admmirnn`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
      inputs, targets)`` returns ``new_params - params``.

    Examples:
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
    check_options(learning_rate, readout_learning_rate, prox, weight_decay, activation, loss)
    cfg = ADMMConfig(activation=activation, many_to_many=many_to_many, loss=loss,
                     weight_decay=config_number(weight_decay), prox=config_number(prox))

    def init_fn(params) -> ADMMPreconditionedState:
        dtype = compute_dtype(to_blocks(params)[1])
        # distinct buffers for every leaf, so the state can be donated
        return ADMMPreconditionedState(
            count=jnp.zeros((), jnp.int32), loss=jnp.zeros((), dtype),
            step_norm=jnp.zeros(2, dtype), damping=jnp.ones((), dtype),
            loss_fast=jnp.zeros((), dtype), loss_slow=jnp.zeros((), dtype),
            loss_var=jnp.zeros((), dtype))

    def update_fn(updates, state: ADMMPreconditionedState, params=None, *, inputs=None,
                  targets=None, **extra_args: Any):
        del updates, extra_args
        if inputs is None or targets is None or params is None:
            raise ValueError("inputs, targets: admm_preconditioned.update needs the batch and "
                             "the parameters: tx.update(grads, state, params, inputs=x, "
                             "targets=y)")
        p, layout, inputs, targets = as_blocks(params, inputs, targets, cfg)
        if not layout.lstm:
            loss_sum, trace, g_a, g_o = adjoints(p, inputs, targets, cfg)
            h = trace.h
        else:
            loss_sum, h, g_a, g_o = lstm_adjoints(unstack_lstm_gates(p), (p["V"], p["c"]),
                                                  inputs, targets, cfg)
        compute = p["W"].dtype
        loss_now = mean_batch_loss(loss_sum, g_o, cfg)
        fast, slow, var, damping = damping_update(state, loss_now, adaptive_damping)
        mu = prox * damping
        eta = jnp.asarray(schedule_value(learning_rate, state.count), compute)
        eta_o = jnp.asarray(schedule_value(readout_learning_rate, state.count), compute)
        uwb, _ = blocks.uwb_step(p, h, inputs, -eta * g_a, 1.0 / eta, cfg, prox=mu)
        vc, _ = blocks.vc_step(p, h, -eta_o * g_o, 1.0 / eta_o, cfg, prox=mu)
        groups = ({k: v - p[k] for k, v in uwb.items()}, {k: v - p[k] for k, v in vc.items()})
        dtype = state.loss.dtype
        new_state = ADMMPreconditionedState(
            count=state.count + 1,
            loss=loss_now.astype(dtype),
            step_norm=jnp.stack([optax.tree.norm(g) for g in groups]).astype(dtype),
            damping=damping.astype(dtype),
            loss_fast=fast.astype(dtype),
            loss_slow=slow.astype(dtype),
            loss_var=var.astype(dtype),
        )
        delta = {k: v for g in groups for k, v in g.items()}
        return from_blocks(delta, layout), new_state

    # a step with a non-finite update or state is rejected (zero update, state unchanged), as
    # for every optimizer (admm_jax.reject_nonfinite)
    tx = reject_nonfinite(optax.GradientTransformationExtraArgs(init_fn, update_fn))
    return checks.register_model_options(tx, activation=activation, many_to_many=many_to_many,
                                         loss=loss, name="admm_preconditioned")


def compute_dtype(layout: BlockLayout):
    """The dtype the blocks are solved in: the parameters' widest, at least float32 (no
    bfloat16 Cholesky)."""
    return jnp.promote_types(jnp.result_type(*layout.dtypes.values()), jnp.float32)


def as_blocks(params, inputs, targets, cfg: ADMMConfig):
    """The parameters as one Elman-like map in the compute dtype, and the batch checked.

    ``ElmanRNN``: ``{U, W, b, V, c}``. :class:`admm_jax.LSTM`: the four gates stacked,
    ``U [4H, D]``, ``W [4H, H]``, ``b [4H]`` (gates ``i, f, g, o``), and the readout ``V, c``
    (:func:`admm_jax.layouts.to_blocks`). The batch is checked against them
    (:func:`admm_jax.admm.problem.check_batch`). Returns ``(p, layout, inputs, targets)``,
    ``layout`` for :func:`admm_jax.layouts.from_blocks`.
    """
    p, layout = to_blocks(params)
    compute = compute_dtype(layout)
    p = {k: v.astype(compute) for k, v in p.items()}
    if not layout.lstm:
        inputs, targets = check_batch(p, inputs, targets, cfg)
        return p, layout, inputs, targets
    if inputs is not None and jnp.issubdtype(jnp.asarray(inputs).dtype, jnp.integer):
        raise ValueError("inputs: expected float inputs [N, T, D] for LSTM (token ids only "
                         "for ElmanRNN)")
    hid = p["W"].shape[1]  # shape checks as for one gate's Elman-like map
    gate = {k: (v[:hid] if k in "UWb" else v) for k, v in p.items()}
    inputs, targets = check_batch(gate, inputs, targets, cfg)
    return p, layout, inputs, targets


def step_diagnostics(state) -> PreconditionedDiagnostics:
    """The figures of the last step of :func:`admm_preconditioned` or :func:`admm_kfac`, from
    their shared state fields ``loss``, ``step_norm`` and ``damping``."""
    return PreconditionedDiagnostics(state.loss, jnp.linalg.norm(state.step_norm),
                                     state.damping)


def mean_batch_loss(loss_sum: jax.Array, g_o: jax.Array, cfg: ADMMConfig) -> jax.Array:
    """The summed loss ``sum_n sum_t loss(o_nt, y_nt)`` of a batch (``g_o [N, |S|, C]``) as the
    mean :mod:`admm_jax.train.losses` reports: over samples and steps, and for ``mse``
    (``1/2 |o - y|^2`` here) over the ``C`` outputs without the 1/2."""
    n, steps, classes = g_o.shape
    if cfg.loss == "mse":
        return 2.0 * loss_sum / (n * steps * classes)
    return loss_sum / (n * steps)


def damping_update(state, loss_now, adaptive: bool):
    """The running loss averages and the adaptive damping factor after this batch's loss.

    ``state`` has ``count, damping, loss_fast, loss_slow, loss_var``. Returns
    ``(fast, slow, var, damping)`` (see :func:`admm_preconditioned`, "adaptive_damping").
    """
    first = state.count == 0
    fast = jnp.where(first, loss_now, 0.5 * state.loss_fast + 0.5 * loss_now)
    dev = loss_now - state.loss_slow
    slow = jnp.where(first, loss_now, state.loss_slow + 0.05 * dev)
    var = jnp.where(first, 0.0, 0.95 * (state.loss_var + 0.05 * dev**2))
    if not adaptive:
        return fast, slow, var, state.damping
    # rising: the fast average is materially (RISE) and significantly (3 standard errors of
    # a 1/2-weighted average: var/3) above the slow one; or not finite
    rising = ~((fast <= RISE * slow) | (fast - slow <= 3.0 * jnp.sqrt(var / 3.0)))
    damping = jnp.clip(jnp.where(rising, 2.0 * state.damping, 0.97 * state.damping),
                       1.0, MAX_DAMPING)
    return fast, slow, var, damping


def schedule_value(v: ScalarOrSchedule, count: jax.Array):
    """A hyperparameter at step ``count``: a schedule's value, or the number itself."""
    return v(count) if callable(v) else v


def check_options(learning_rate, readout_learning_rate, prox, weight_decay, activation, loss):
    """The checks shared by :func:`admm_preconditioned` and :func:`admm_jax.admm_kfac`: each
    error names the argument and what was expected."""
    for name, v in (("learning_rate", learning_rate),
                    ("readout_learning_rate", readout_learning_rate)):
        if callable(v):
            continue
        f = checks.scalar(name, v, "a positive number or an optax schedule")
        if f is not None and not (math.isfinite(f) and f > 0):
            raise ValueError(f"{name}: expected a positive number (finite) or an optax "
                             f"schedule, got {v!r}")
    for name, v in (("prox", prox), ("weight_decay", weight_decay)):
        f = checks.scalar(name, v, "a number >= 0")
        if f is not None and not (math.isfinite(f) and f >= 0):
            raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
    checks.one_of("activation", activation, ACTIVATIONS)
    checks.one_of("loss", loss, SUMMED_LOSSES)
