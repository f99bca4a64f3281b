"""Two-sided, variable-metric ADMM weight blocks: K-FAC for recurrent networks."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from admm_jax import _validation as checks
from admm_jax.admm import blocks
from admm_jax.admm.preconditioned import (
    PreconditionedDiagnostics,
    ScalarOrSchedule,
    as_blocks,
    check_options,
    compute_dtype,
    damping_update,
    mean_batch_loss,
    schedule_value,
    step_diagnostics,
)
from admm_jax.admm.problem import ADMMConfig, data_loss, readout_states, shift_right
from admm_jax.layouts import from_blocks, to_blocks, unstack_lstm_gates
from admm_jax.models.elman import elman_trace
from admm_jax.models.lstm import lstm_scan
from admm_jax.nonfinite import reject_nonfinite

FISHERS = ("empirical", "sampled")
OUTPUT_FACTORS = ("full", "per_gate")


class ADMMKFACState(NamedTuple):
    """State of :func:`admm_kfac`.

    count, loss, step_norm, damping, loss_fast, loss_slow, loss_var: as in
    :class:`admm_jax.ADMMPreconditionedState`. factors: running averages of the Kronecker
    factors, ``{"A1", "S1", "A3", "S3"}`` (``A1`` a tuple ``(counts, X^T P, P^T P)`` for token
    inputs). inverses: their damped inverses as of the last refresh (no ``A1`` for token
    inputs: that block is solved through its Schur complement every step). inverse_prox: the
    damping ``mu`` they were computed with.
    """

    count: jax.Array
    loss: jax.Array
    step_norm: jax.Array
    damping: jax.Array
    loss_fast: jax.Array
    loss_slow: jax.Array
    loss_var: jax.Array
    factors: dict
    inverses: dict
    inverse_prox: jax.Array

    takes_batch = True  # update(None, state, params, inputs=x, targets=y): no gradients

    @property
    def diagnostics(self) -> PreconditionedDiagnostics:
        """The step's figures (read by :func:`admm_jax.optimizers.diagnostics`)."""
        return step_diagnostics(self)


def kfac_adjoints(p, cell, inputs, targets, cfg: ADMMConfig, key=None):
    r"""Forward pass, the adjoints at every pre-activation and output, and Fisher samples.

    One forward pass, ``jax.vjp`` with respect to zero taps on the pre-activations ``a_t``
    (``ElmanRNN``) or the gate pre-activations ``z_t`` (``LSTM``, ``cell`` given), and the
    backward pass with ``g_o = dL/do`` of the summed loss. With ``key``, a second cotangent
    ``p - onehot(y~)`` (labels ``y~`` sampled from the model's softmax; MSE: ``-eps``,
    ``eps ~ N(0, I)``) goes through the same backward pass (batched with the first): its
    adjoints are samples of the true Fisher's.

    Returns:
      ``(loss_sum, h [N, T, H], g_a [N, T, Z], g_o [N, |S|, C], fisher_a or None, o)``.
    """
    n, t = inputs.shape[:2]
    z = p["W"].shape[0]

    if cell is None:
        def fwd(tap):
            tr = elman_trace(p, inputs, activation=cfg.activation,
                             many_to_many=cfg.many_to_many, a_tap=tap)
            return tr.o, tr.h
    else:
        def fwd(tap):
            _, hs = lstm_scan(cell, inputs, z_tap=tap)
            return readout_states(hs, cfg) @ p["V"].T + p["c"], hs

    o, vjp_fn, h = jax.vjp(fwd, jnp.zeros((n, t, z), p["W"].dtype), has_aux=True)
    loss, g_o = jax.value_and_grad(data_loss)(o, targets, cfg)
    if key is None:
        (g_a,) = vjp_fn(g_o)
        return loss, h, g_a, g_o, None, o
    if cfg.loss == "cross_entropy":
        y = jax.random.categorical(key, o)
        g_s = jax.nn.softmax(o) - jax.nn.one_hot(y, o.shape[-1], dtype=o.dtype)
    else:
        g_s = -jax.random.normal(key, o.shape, o.dtype)
    (both,) = jax.vmap(vjp_fn)(jnp.stack([g_o, g_s]))
    return loss, h, both[0], g_o, both[1], o


def _features(h, inputs):
    """``Phi = [x_t; h_{t-1}; 1]`` flattened, ``[N T, D + H + 1]`` (dense inputs)."""
    p = jnp.concatenate([shift_right(h), jnp.ones_like(h[..., :1])], -1)
    x = inputs.astype(h.dtype)
    return jnp.concatenate([x, p], -1).reshape(-1, p.shape[-1] + x.shape[-1])


LEARNING_RATE = 0.3  # the default constant rate (no decay_steps)
PEAK_LEARNING_RATE = 0.5  # the default peak of the cosine decay (decay_steps given)


def admm_kfac(
    learning_rate: ScalarOrSchedule | None = None,
    *,
    prox: float = 0.1,
    warmup_steps: int = 200,
    decay_steps: int | None = None,
    ema: float = 0.95,
    refresh_every: int = 10,
    fisher: str = "empirical",
    output_factor: str = "full",
    normalize_output: bool = True,
    token_inputs: bool = False,
    weight_decay: float = 0.0,
    adaptive_damping: bool = True,
    seed: int = 0,
    activation: str = "tanh",
    many_to_many: bool = False,
    loss: str = "cross_entropy",
) -> optax.GradientTransformationExtraArgs:
    r"""ADMMiRNN's weight blocks with a matrix penalty on their constraints: a time-shared,
    two-sided Kronecker-factored (K-FAC) step for recurrent networks.

    :func:`admm_jax.admm_preconditioned` solves the ``(U, W, b)`` block of ADMMiRNN with a
    *scalar* penalty ``rho/2 |a_t - U x_t - W h_{t-1} - b|^2`` on the constraint C1 and
    residual targets ``-eta dL/da_t``. Replacing the scalar by a positive-definite matrix
    ``S`` (a variable-metric augmented Lagrangian) estimated from the back-propagated adjoints
    ``g_t = dL_n/da_t`` gives the block's solution (:func:`admm_jax.admm.blocks.kron_step`)

    .. math::
        \Delta\Theta = -\eta\,(A + \kappa_A I)^{-1}\,\nabla_\Theta \bar L\,
        (S + \kappa_S I)^{-1},\qquad
        A = \tfrac1N\sum_{n,t}\phi_{n,t}\phi_{n,t}^\top,\quad
        S = \tfrac1{NT}\sum_{n,t} g_{n,t} g_{n,t}^\top,

    with ``phi_t = [x_t; h_{t-1}; 1]`` and ``Theta = [U^T; W^T; b]``; the same for the
    readout ``(V, c)`` with ``phi = [h_t; 1]`` and ``g = dL/do`` (constraint C3). ``A kron S``
    is the Kronecker-factored Fisher of an RNN under the independence-over-time approximation
    of Martens, Ba & Johnson (2018): ``sum_t phi_t phi_t^T`` and ``E[g g^T]`` shared over
    time steps and samples.

    * Factors: running averages ``F <- ema F + (1 - ema) F_batch`` (the first batch's as is).
      ``fisher="empirical"``: ``g`` from the actual labels (free: the backward pass the
      gradient needs). ``"sampled"``: ``g`` from labels sampled from the model (one more
      backward cotangent, batched with the first), and the readout's ``S`` the exact
      ``E[diag(p) - p p^T]`` (cross entropy) or ``I`` (MSE).
    * Factorisation: the damped inverses ``(A + kappa_A I)^-1``, ``(S + kappa_S I)^-1``
      (Cholesky, :func:`admm_jax.admm.blocks.damped_inverse`) are refreshed every
      ``refresh_every`` steps, and whenever the adaptive damping moved, inside ``jit``
      (``lax.cond``, no recompilation); the step between refreshes is two matrix products
      per block (Cholesky rather than ``jnp.linalg.eigh``: why, in
      ``docs/admm_preconditioned.md``).
    * Damping: factored Tikhonov, ``kappa_A = mu tr(A)/dim``, ``kappa_S = mu tr(S)/dim``
      (``mu = prox * d``): the ``pi``-rescaled damping of K-FAC with ``gamma = mu^2 m_A m_S``
      (``m`` the mean eigenvalues). ``d`` is :func:`admm_jax.admm_preconditioned`'s adaptive
      factor (doubles while the loss rises beyond noise, decays by 0.97 to 1). With
      ``normalize_output`` (default) ``S`` enters as ``S / m_S``: the output side shapes the
      step, ``eta`` keeps :func:`admm_jax.admm_preconditioned`'s scale (without it the
      empirical ``S`` is tiny and ``eta`` must shrink with it).
    * Token inputs (``token_inputs=True``, ``ElmanRNN`` with ids ``[N, T]``): the input
      block of ``A`` is diagonal (token counts); its left solve goes through the ``(H+1)^2``
      Schur complement of :func:`admm_jax.admm.blocks.uwb_step` every step (the blocks'
      per-block damping), its right factor as above.
    * :class:`admm_jax.LSTM`: the four gates are one map of ``phi_t``: one ``A`` for all,
      ``S`` over all ``4H`` gate pre-activations (``output_factor="full"``) or block-diagonal
      per gate (``"per_gate"``).
    * ``weight_decay``: decoupled, ``-eta beta theta`` on ``U, W, V``.

    Cost per step (``N`` samples, ``T`` steps, ``P = D+H+1``, ``Z`` outputs of the recurrent
    map): a BPTT gradient (``2NTZ(2D+3H)``-ish, whose weight gradient is ``Phi^T g``) plus
    ``2NTP^2`` for ``A`` and ``2NTZ^2`` for ``S``, plus the amortised inverses.

    This back-propagates: it is ADMMiRNN's weight subproblem used as a preconditioner, not
    ADMM. It ignores the gradient argument and needs the batch:
    ``update(grads, state, params, *, inputs, targets)``.

    Args:
      learning_rate: ``eta`` for all blocks, or an optax schedule of the step count.
        ``None`` (default): 0.3, or a peak of 0.5 with ``decay_steps`` (a constant 0.5 once
        diverged on row-MNIST's validation split; decayed, it was the best there).
      warmup_steps: the learning rate ramps up linearly over the first ``warmup_steps``
        steps (``eta (k+1)/warmup_steps``; it multiplies a schedule), while the factors'
        running averages are young. ``0``: none.
      decay_steps: the length of the run, when known: the learning rate then decays to 0 by a
        cosine over ``decay_steps`` steps (``eta (1 + cos(pi k / decay_steps)) / 2``; it
        multiplies a schedule and the warmup). ``None``: no decay. ``admm-jax compare`` passes
        its ``--iterations`` here.
      prox: ``mu``, the damping of each factor relative to its mean eigenvalue.
      ema: weight of the old factors in the running averages, in ``[0, 1)``.
      refresh_every: steps between refreshes of the damped inverses (``>= 1``).
      normalize_output: use ``S / m_S`` (see above).
      fisher: ``"empirical"`` or ``"sampled"`` (see above).
      output_factor: LSTM only: ``"full"`` ``4H x 4H`` factor or ``"per_gate"``.
      token_inputs: the inputs are token ids (``ElmanRNN`` only; sizes the factor state).
      weight_decay: decoupled decay ``beta >= 0``.
      adaptive_damping: raise ``prox`` while the loss rises; ``False``: fixed.
      seed: of the sampled labels (``fisher="sampled"``).
      activation, many_to_many, loss: must match the model, as in :func:`admm_jax.admmirnn`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
      inputs, targets)`` returns the step.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> import admm_jax
      >>> model = admm_jax.ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
      >>> params = nnx.state(model, nnx.Param)
      >>> x = jax.random.normal(jax.random.key(1), (16, 5, 3))
      >>> y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
      >>> tx = admm_jax.admm_kfac()
      >>> state = tx.init(params)
      >>> updates, state = tx.update(None, state, params, inputs=x, targets=y)
      >>> params = optax.apply_updates(params, updates)
      >>> int(state.count), sorted(state.factors)
      (1, ['A1', 'A3', 'S1', 'S3'])

    References:
      Martens, Ba & Johnson, "Kronecker-factored Curvature Approximations for Recurrent
      Neural Networks", ICLR 2018; Martens & Grosse, "Optimizing Neural Networks with
      Kronecker-factored Approximate Curvature", ICML 2015; Tang et al., "ADMMiRNN", ECML-PKDD
      2020 (the weight blocks).
    """
    if learning_rate is None:
        learning_rate = LEARNING_RATE if decay_steps is None else PEAK_LEARNING_RATE
    check_options(learning_rate, 1.0, prox, weight_decay, activation, loss)
    if not isinstance(ema, int | float) or isinstance(ema, bool) or not 0 <= ema < 1:
        raise ValueError(f"ema: expected a number in [0, 1), got {ema!r}")
    checks.nonnegative_int("warmup_steps", warmup_steps)
    checks.positive_int("decay_steps", decay_steps, allow_none=True)
    if not isinstance(refresh_every, int) or isinstance(refresh_every, bool) \
            or refresh_every < 1:
        raise ValueError(f"refresh_every: expected an int >= 1, got {refresh_every!r}")
    checks.one_of("fisher", fisher, FISHERS)
    checks.one_of("output_factor", output_factor, OUTPUT_FACTORS)
    cfg = ADMMConfig(activation=activation, many_to_many=many_to_many, loss=loss,
                     weight_decay=0.0, prox=float(prox))

    def shapes(params):
        p, layout = to_blocks(params)
        if layout.lstm and token_inputs:
            raise ValueError("token_inputs: supported for ElmanRNN only, got an LSTM")
        (z, d), hid, classes = p["U"].shape, p["W"].shape[1], p["V"].shape[0]
        return d, hid, z, classes, compute_dtype(layout), layout.lstm

    def init_fn(params) -> ADMMKFACState:
        d, hid, z, classes, dtype, _ = shapes(params)
        zeros = lambda *s: jnp.zeros(s, dtype)  # noqa: E731
        eye = lambda n: jnp.eye(n, dtype=dtype)  # noqa: E731
        factors = {"S1": zeros(z, z), "A3": zeros(hid + 1, hid + 1), "S3": zeros(classes, classes)}
        inverses = {"S1": eye(z), "A3": eye(hid + 1), "S3": eye(classes)}
        if token_inputs:
            factors["A1"] = (zeros(d), zeros(d, hid + 1), zeros(hid + 1, hid + 1))
        else:
            factors["A1"] = zeros(d + hid + 1, d + hid + 1)
            inverses["A1"] = eye(d + hid + 1)
        return ADMMKFACState(
            count=jnp.zeros((), jnp.int32), loss=jnp.zeros((), dtype),
            step_norm=jnp.zeros(2, dtype), damping=jnp.ones((), dtype),
            loss_fast=jnp.zeros((), dtype), loss_slow=jnp.zeros((), dtype),
            loss_var=jnp.zeros((), dtype), factors=factors, inverses=inverses,
            inverse_prox=jnp.zeros((), dtype))

    def update_fn(updates, state: ADMMKFACState, params=None, *, inputs=None, targets=None,
                  **extra_args: Any):
        del updates, extra_args
        p, layout, inputs, targets = as_blocks(params, inputs, targets, cfg)
        tokens = jnp.issubdtype(inputs.dtype, jnp.integer)
        if tokens != token_inputs:
            raise ValueError(f"inputs: got {'token ids' if tokens else 'float inputs'} but "
                             f"admm_kfac(token_inputs={token_inputs})")
        compute = p["W"].dtype
        key = (jax.random.fold_in(jax.random.key(seed), state.count)
               if fisher == "sampled" else None)
        cell = unstack_lstm_gates(p) if layout.lstm else None
        loss_sum, h, g_a, g_o, f_a, o = kfac_adjoints(p, cell, inputs, targets, cfg, key)
        n, t = inputs.shape[:2]
        z, classes = g_a.shape[-1], g_o.shape[-1]
        loss_now = mean_batch_loss(loss_sum, g_o, cfg)
        fast, slow, var, damping = damping_update(state, loss_now, adaptive_damping)

        # this batch's factors and gradients (mean loss), blocks' row layout
        ga = g_a.reshape(-1, z)
        fa = ga if f_a is None else f_a.reshape(-1, z)
        s1 = fa.T @ fa / (n * t)
        if layout.lstm and output_factor == "per_gate":
            gate = jnp.arange(z) // (z // 4)
            s1 = jnp.where(gate[:, None] == gate[None], s1, 0.0)
        phi3 = jnp.concatenate([readout_states(h, cfg), jnp.ones_like(g_o[..., :1])],
                               -1).reshape(-1, h.shape[-1] + 1)
        go = g_o.reshape(-1, classes)
        a3 = phi3.T @ phi3 / n
        grad3 = phi3.T @ go / n
        if fisher == "empirical":
            s3 = go.T @ go / go.shape[0]
        elif cfg.loss == "cross_entropy":
            prob = jax.nn.softmax(o).reshape(-1, classes)
            s3 = (jnp.diag(prob.sum(0)) - prob.T @ prob) / go.shape[0]
        else:
            s3 = jnp.eye(classes, dtype=compute)
        if tokens:
            a1 = tuple(f / n for f in blocks.uwb_gram(h, inputs, p["U"].shape[1]))
        else:
            phi = _features(h, inputs)
            a1 = phi.T @ phi / n
            grad1 = phi.T @ ga / n
        batch = {"A1": a1, "S1": s1, "A3": a3, "S3": s3}
        first = state.count == 0
        factors = jax.tree.map(lambda old, new: jnp.where(first, new, ema * old
                                                          + (1.0 - ema) * new),
                               state.factors, batch)

        mu = prox * damping
        eta = jnp.asarray(schedule_value(learning_rate, state.count), compute)
        if warmup_steps:
            eta = eta * jnp.minimum(1.0, (state.count + 1.0) / warmup_steps).astype(compute)
        if decay_steps is not None:
            done = jnp.minimum(state.count, decay_steps).astype(compute) / decay_steps
            eta = eta * 0.5 * (1.0 + jnp.cos(jnp.pi * done))

        def refresh(f):
            return {k: blocks.damped_inverse(f[k], mu, normalize_output and k[0] == "S")
                    .astype(state.inverses[k].dtype) for k in state.inverses}

        # the damped inverses are refreshed every refresh_every steps, and whenever the
        # adaptive damping has moved since the last refresh
        due = (state.count % refresh_every == 0) | (mu != state.inverse_prox)
        inverses = jax.lax.cond(due, refresh, lambda f: state.inverses, factors)
        inverses = {k: v.astype(compute) for k, v in inverses.items()}
        inverse_prox = jnp.where(due, mu, state.inverse_prox)
        step3 = -eta * blocks.kron_step(grad3, inverses["A3"], inverses["S3"])
        if tokens:
            resid = -eta * (ga @ inverses["S1"]).reshape(g_a.shape) / n
            new, _ = blocks.uwb_step(p, h, inputs, resid, 1.0, cfg, gram=factors["A1"],
                                     prox=mu)
            step1 = {k: new[k] - p[k] for k in ("U", "W", "b")}
        else:
            theta = -eta * blocks.kron_step(grad1, inverses["A1"], inverses["S1"])
            d = p["U"].shape[1]
            step1 = {"U": theta[:d].T, "W": theta[d:-1].T, "b": theta[-1]}
        groups = (step1, {"V": step3[:-1].T, "c": step3[-1]})
        if weight_decay:
            for g in groups:
                for k in g:
                    if k in "UWV":
                        g[k] = g[k] - eta * weight_decay * p[k]
        dtype = state.loss.dtype
        new_state = ADMMKFACState(
            count=state.count + 1,
            loss=loss_now.astype(dtype),
            step_norm=jnp.stack([optax.tree.norm(g) for g in groups]).astype(dtype),
            damping=damping.astype(dtype),
            loss_fast=fast.astype(dtype),
            loss_slow=slow.astype(dtype),
            loss_var=var.astype(dtype),
            factors=jax.tree.map(lambda v: v.astype(dtype), factors),
            inverses={k: v.astype(dtype) for k, v in inverses.items()},
            inverse_prox=inverse_prox.astype(dtype),
        )
        delta = {k: v for g in groups for k, v in g.items()}
        return from_blocks(delta, layout), new_state

    # a step with a non-finite update or state is rejected (zero update, state unchanged), as
    # for every optimizer (admm_jax.reject_nonfinite)
    tx = reject_nonfinite(optax.GradientTransformationExtraArgs(init_fn, update_fn))
    return checks.register_model_options(tx, activation=activation, many_to_many=many_to_many,
                                         loss=loss, name="admm_kfac")
