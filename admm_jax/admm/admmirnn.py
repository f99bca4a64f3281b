"""ADMMiRNN as an optax ``GradientTransformationExtraArgs``."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from admm_jax import _validation as checks
from admm_jax.admm import blocks
from admm_jax.admm.coupled import coupled_step, coupled_terms
from admm_jax.admm.problem import (
    SUMMED_LOSSES,
    ADMMConfig,
    Auxiliaries,
    Duals,
    Penalties,
    Residuals,
    check_batch,
    config_number,
    constraint_sides,
    data_loss,
    lagrangian_from_residuals,
    mean_loss,
    readout_states,
    residuals,
)
from admm_jax.layouts import merge_elman, split_elman
from admm_jax.models.elman import ACTIVATIONS, activation_fn, elman_trace
from admm_jax.nonfinite import mark_guarded

RHO_SCHEDULES = ("fixed", "geometric", "linear", "balance")
AUXILIARY_MODES = ("reset", "persist")
SWEEPS = ("coupled", "backward", "parallel")
DEFAULT_RHO_GROWTH = {"geometric": 1.05, "linear": 1.001}
DEFAULT_A_STEPS = 4
MANY_TO_MANY_CG_STEPS = 1


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


class ADMMiRNNState(NamedTuple):
    """State of :func:`admmirnn`.

    aux: auxiliaries ``(a, h, o)`` per sample ``[num_samples, ...]`` with
      ``auxiliaries="persist"``; zero-sized with ``"reset"`` (rebuilt from a forward pass).
    duals: multipliers ``(lam1, lam2, lam3)`` per sample ``[num_samples, ...]``; zero-sized when
      ``num_samples is None`` (each call then starts from zero multipliers).
    seen: ``[num_samples]`` bool, whether a sample's persisted auxiliaries are initialised.
    rho: the current penalties. count: ADMM iterations done. diagnostics: of the last iteration.
    """

    aux: Auxiliaries
    duals: Duals
    seen: jax.Array
    rho: Penalties
    count: jax.Array
    diagnostics: ADMMDiagnostics

    takes_batch = True  # update(None, state, params, inputs=x, targets=y, indices=i)
    keeps_itself = True  # a rejected iteration leaves the per-sample state as it was


def admmirnn(
    num_samples: int | None = None,
    seq_len: int | None = None,
    *,
    rho: float | tuple[float, float, float] = (0.5, 10.0, 0.1),
    prox: float = 0.03,
    weight_decay: float = 0.0,
    sweeps: int = 1,
    sweep: str = "coupled",
    auxiliaries: str = "reset",
    rho_schedule: str = "fixed",
    rho_growth: float | None = None,
    rho_max: float = 1e4,
    activation: str = "tanh",
    many_to_many: bool = False,
    loss: str = "cross_entropy",
    newton_steps: int = 8,
    a_steps: int | None = None,
    cg_steps: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""ADMMiRNN: train an Elman RNN by ADMM on its unfolded form; no backpropagation.

    Every pre-activation, state and output of the unfolded RNN gets a variable (Tang et al.,
    2020):

    .. math::
        \min \sum_n\sum_{t\in S} \ell(o_{n,t}, y_{n,t}) + \tfrac{\beta}{2}(|U|^2+|W|^2+|V|^2)
        \ \text{s.t.}\ a_t = U x_t + W h_{t-1} + b,\ h_t = f(a_t),\ o_t = V h_t + c,

    and one call of ``update`` runs ``sweeps`` ADMM iterations on the batch. The default
    iteration (``sweep="coupled"``) starts from the forward pass of the weights:

    1. the o-block (per sample, exact);
    2. the time-coupled (a, h) block (:func:`admm_jax.admm.coupled.sweep_coupled`): all
       ``a_t, h_t`` of a sample at once, one Gauss-Newton step backtracked on the true
       augmented Lagrangian. Many-to-one: solved exactly in the ``C``-dimensional output space
       (one backward scan with ``C`` adjoints); many-to-many: ``cg_steps`` conjugate-gradient
       iterations;
    3. the multiplier step ``lam_i += rho_i r_i``;
    4. ``(U, W, b)``: proximal least squares of ``a + lam1/rho1`` on the forward states;
    5. ``(V, c)``: proximal least squares of ``o + lam3/rho3`` on the states of the new
       ``(U, W, b)``.

    The weight blocks' proximal weight is ``kappa = (prox + dim/rows) rho tr(G)/dim`` (``G``
    the block's ``dim x dim`` Gram matrix over ``rows`` rows of the batch). ``sweep="backward"``
    or ``"parallel"`` run o, a Gauss-Seidel sweep over ``(h_t, a_t)`` (backward in time, or
    all steps at once), ``(U, W, b)``, ``(V, c)``, multipliers, with per-sample multipliers
    carried across calls. Every primal block is solved exactly or by a backtracked step (see
    :mod:`admm_jax.admm.blocks`); no gradient of the loss is taken. The gradient argument of
    ``update`` is ignored (pass ``None``); the returned updates are ``new_params - params``.
    Flax: ``nnx.Optimizer(model, tx, wrt=nnx.Param).update(model, None, inputs=x,
    targets=y)``; see also :func:`admm_jax.adapt_flax_rnn`. Sharded over devices: inputs,
    targets and state sharded along the samples (:func:`admm_jax.shard_batch`,
    :func:`admm_jax.shard_admm_state`), without ``indices``.

    An iteration that produces a non-finite weight, residual or Lagrangian is rejected:
    ``update`` returns zero updates, leaves the state as it was and sets ``diagnostics.loss``
    to NaN (:func:`admm_jax.increase_rho_on_divergence` retries it with larger penalties).

    Args:
      num_samples: training-set size, for the per-sample multipliers of ``sweep="backward"``
        and ``"parallel"`` (with ``indices=``); ``None``: multipliers within one call. The
        coupled sweep keeps no per-sample state and takes none (``ValueError``).
      seq_len: ``T``, given together with ``num_samples``.
      rho: one penalty for all three constraints, or ``(rho1, rho2, rho3)``; all three
        scaled by ``g`` scale the weights' steps by about ``1/g``.
      prox: ``mu`` of the proximal weight blocks.
      weight_decay: ``beta`` on ``U, W, V``.
      sweeps: ADMM iterations per ``update`` call.
      sweep: ``"coupled"``, ``"backward"`` or ``"parallel"`` (see above).
      auxiliaries: ``"reset"`` (every call starts from a forward pass) or ``"persist"``
        (backward and parallel sweeps with ``num_samples``: per-sample auxiliaries).
      rho_schedule: ``"fixed"``; ``"geometric"`` (``rho *= rho_growth`` per iteration);
        ``"linear"`` (``rho = rho_0 (1 + (rho_growth - 1) k)`` after ``k`` iterations: a step
        that decays like ``1/k``); ``"balance"`` (residual balancing, Boyd et al. sec.
        3.4.1). Penalties stop at ``rho_max``.
      rho_growth: ``> 1``, for ``"geometric"`` and ``"linear"`` (default 1.05 and 1.001).
      rho_max: the largest penalty.
      activation, many_to_many: as the model's (``ElmanRNN``'s arguments).
      loss: ``"cross_entropy"`` (integer targets) or ``"mse"`` (real targets).
      newton_steps: iterations of the o-block's Newton solver (cross entropy).
      a_steps: iterations of the a-block's solver (backward and parallel sweeps; default 4).
      cg_steps: conjugate-gradient iterations of the coupled block; ``None``: the exact
        output-space solve for many-to-one, 1 iteration for many-to-many (where the output
        space has ``C T`` dimensions).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. ``update(grads, state, params, *, inputs,
      targets, indices=None)``: ``inputs [B, T, D]`` floats or ``[B, T]`` token ids,
      ``targets [B]`` / ``[B, T]`` classes (or reals with ``loss="mse"``), ``indices [B]`` the
      samples' positions in the training set (per-sample multipliers only; default
      ``arange(B)``, which requires ``B == num_samples``). Float hyperparameters may be 0-d
      arrays or injected (``optax.inject_hyperparams``); the integer ones are static.

    Raises:
      ValueError: an option out of range, or one that does nothing under the chosen
        ``sweep`` or ``rho_schedule`` (naming it).

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> import admm_jax
      >>> model = admm_jax.ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
      >>> params = nnx.state(model, nnx.Param)
      >>> x = jax.random.normal(jax.random.key(1), (16, 5, 3))
      >>> y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
      >>> tx = admm_jax.admmirnn()
      >>> state = tx.init(params)
      >>> updates, state = tx.update(None, state, params, inputs=x, targets=y)
      >>> params = optax.apply_updates(params, updates)
      >>> int(state.count)
      1

    References:
      Tang et al., "ADMMiRNN: Training RNN with Stable Convergence via an Efficient ADMM
      Approach", ECML-PKDD 2020; Boyd et al., "Distributed Optimization and Statistical
      Learning via the Alternating Direction Method of Multipliers", 2011; Ledoit & Wolf, "A
      well-conditioned estimator for large-dimensional covariance matrices", J. Multivariate
      Analysis 88, 2004 (the ``dim/rows`` shrinkage).
    """
    rhos = (rho,) * 3 if np.ndim(rho) == 0 else tuple(rho)
    num_samples = checks.positive_int("num_samples", num_samples, allow_none=True)
    seq_len = checks.positive_int("seq_len", seq_len, allow_none=True)
    sweeps = checks.positive_int("sweeps", sweeps)
    cg_steps = checks.positive_int("cg_steps", cg_steps, allow_none=True)
    a_steps = checks.positive_int("a_steps", a_steps, allow_none=True)
    _check_options(num_samples, seq_len, rhos, prox, weight_decay, sweep, auxiliaries,
                   rho_schedule, rho_growth, rho_max, activation, loss, newton_steps, a_steps,
                   cg_steps)
    if rho_growth is None:
        rho_growth = DEFAULT_RHO_GROWTH.get(rho_schedule, 1.0)
    if cg_steps is None and many_to_many:
        cg_steps = MANY_TO_MANY_CG_STEPS
    cfg = ADMMConfig(activation=activation, many_to_many=many_to_many, loss=loss,
                     weight_decay=config_number(weight_decay), prox=config_number(prox),
                     newton_steps=int(newton_steps),
                     a_steps=DEFAULT_A_STEPS if a_steps is None else a_steps, sweep=sweep,
                     cg_steps=cg_steps)
    # per-sample multipliers carried across visits (backward/parallel sweeps: lagged adjoints)
    per_sample = num_samples is not None
    schedule = (rho_schedule, rho_growth, rho_max)
    sweep_fn = {"coupled": blocks.sweep_coupled, "backward": blocks.sweep_backward,
                "parallel": blocks.sweep_parallel}[sweep]

    def init_fn(params) -> ADMMiRNNState:
        p, _, _ = split_elman(params)
        dtype = p["W"].dtype
        hidden, classes = p["W"].shape[0], p["V"].shape[0]
        n_dual = num_samples if per_sample else 0
        steps = 0 if seq_len is None else seq_len
        out_steps = steps if many_to_many else 1
        n_aux = n_dual if auxiliaries == "persist" else 0
        duals = Duals(
            jnp.zeros((n_dual, steps, hidden), dtype),
            jnp.zeros((n_dual, steps, hidden), dtype),
            jnp.zeros((n_dual, out_steps, classes), dtype),
        )
        aux = Auxiliaries(
            jnp.zeros((n_aux, steps, hidden), dtype),
            jnp.zeros((n_aux, steps, hidden), dtype),
            jnp.zeros((n_aux, out_steps, classes), dtype),
        )
        zero = jnp.zeros((), dtype)
        return ADMMiRNNState(
            aux=aux,
            duals=duals,
            seen=jnp.zeros((n_aux,), bool),
            rho=Penalties(*(jnp.asarray(r, dtype) for r in rhos)),
            count=jnp.zeros((), jnp.int32),
            diagnostics=ADMMDiagnostics(*(zero,) * 7),
        )

    def update_fn(updates, state: ADMMiRNNState, params=None, *, inputs=None, targets=None,
                  indices=None, **extra_args: Any):
        del updates, extra_args
        p_orig, treedef, names = split_elman(params)
        # the solves need at least float32 (no bfloat16 Cholesky); updates go back in p's dtype
        compute = jnp.promote_types(p_orig["W"].dtype, jnp.float32)
        p = {k: v.astype(compute) for k, v in p_orig.items()}
        inputs, targets = check_batch(p, inputs, targets, cfg)
        hidden, classes = p["W"].shape[0], p["V"].shape[0]
        if (state.duals.lam1.shape[2:] != (hidden,)
                or state.duals.lam3.shape[2:] != (classes,)):
            raise ValueError(f"state: built for other parameters (multipliers "
                             f"{state.duals.lam1.shape} and {state.duals.lam3.shape}); params "
                             f"have H={hidden}, C={classes}: call tx.init(params) again")
        batch, steps = inputs.shape[0], inputs.shape[1]
        if seq_len is not None and steps != seq_len:
            raise ValueError(f"inputs: expected {seq_len} steps (seq_len), got shape "
                             f"{tuple(inputs.shape)}")
        if indices is None:
            if per_sample and batch != num_samples:
                raise ValueError(
                    f"indices: a batch of {batch} samples out of num_samples={num_samples} needs "
                    "indices=<positions of the batch's samples in the training set>"
                )
        # the whole training set in order: the per-sample state is used as is, without a
        # gather/scatter (which, with sample-sharded state, would all-gather it)
        whole = indices is None
        indices = jnp.arange(batch) if whole else jnp.asarray(indices)
        if indices.shape != (batch,) or not jnp.issubdtype(indices.dtype, jnp.integer):
            raise ValueError(f"indices: expected int array of shape ({batch},), got "
                             f"{indices.dtype}{tuple(indices.shape)}")
        valid = jnp.asarray(True)
        if not whole and per_sample:
            # concrete: a ValueError now; traced (under jit): the iteration is rejected below
            n_store = state.duals.lam1.shape[0]
            checks.indices("indices", indices, n_store, batch)
            valid = _valid_indices(indices, n_store)

        trace = elman_trace(p, inputs, activation=activation, many_to_many=many_to_many)
        aux = Auxiliaries(trace.a, trace.h, trace.o)
        if auxiliaries == "persist":
            seen = _take(state.seen, indices, whole)[:, None, None]
            aux = Auxiliaries(*(jnp.where(seen, _take(stored, indices, whole).astype(compute),
                                          fresh)
                                for stored, fresh in zip(state.aux, aux, strict=True)))
        if not per_sample:
            duals = Duals(jnp.zeros_like(aux.a), jnp.zeros_like(aux.h), jnp.zeros_like(aux.o))
        else:
            duals = Duals(*(_take(lam, indices, whole).astype(compute) for lam in state.duals))

        rho = state.rho
        p_new = dict(p)
        if sweep == "coupled":
            tr = trace
            for i in range(sweeps):
                if i > 0:
                    tr = elman_trace(p_new, inputs, activation=activation,
                                     many_to_many=many_to_many)
                p_new, duals, rho, diag, out = _coupled_iteration(
                    p_new, tr, duals, rho, inputs, targets, cfg, schedule, state.count + i)
        else:
            for i in range(sweeps):
                forward = Auxiliaries(trace.a, trace.h, trace.o) if i == 0 else None
                p_new, aux, duals, rho, diag = _iteration(p_new, aux, duals, rho, inputs,
                                                          targets, cfg, sweep_fn, schedule,
                                                          state.count + i, forward)
            out = elman_trace(p_new, inputs, activation=activation,
                              many_to_many=many_to_many).o
        n_targets = out.shape[0] * out.shape[1]
        diag = diag._replace(loss=data_loss(out, targets, cfg) / n_targets,
                             batch_loss=mean_loss(trace.o, targets, cfg))

        # divergence guard: a non-finite iteration is rejected (weights, penalties, the batch's
        # multipliers and auxiliaries keep their old values; batch-sized selects only) and
        # reported by diagnostics.loss = NaN, so a caller retries or stops from a good state
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in (*p_new.values(), *diag)]))
        ok = ok & valid  # out-of-range or repeated indices (traced): rejected, nothing written
        diag = diag._replace(loss=jnp.where(ok, diag.loss, jnp.nan))

        def keep(new, old):
            return jnp.where(ok, new, old)

        dtype = state.rho.rho1.dtype
        new_state = state._replace(
            rho=Penalties(*(keep(r.astype(dtype), r0) for r, r0 in zip(rho, state.rho,
                                                                       strict=True))),
            count=state.count + jnp.where(ok, sweeps, 0).astype(state.count.dtype),
            diagnostics=ADMMDiagnostics(*(v.astype(dtype) for v in diag)))
        if per_sample:
            new_state = new_state._replace(duals=Duals(
                *(_put(store, indices, keep(lam.astype(store.dtype),
                                            _take(store, indices, whole)), whole)
                  for store, lam in zip(state.duals, duals, strict=True))))
        if auxiliaries == "persist":
            new_state = new_state._replace(
                aux=Auxiliaries(*(_put(store, indices, keep(v.astype(store.dtype),
                                                            _take(store, indices, whole)), whole)
                                  for store, v in zip(state.aux, aux, strict=True))),
                seen=_put(state.seen, indices,
                          keep(True, _take(state.seen, indices, whole)), whole))
        delta = {k: keep(p_new[k] - p[k], 0).astype(p_orig[k].dtype) for k in p}
        return merge_elman(delta, treedef, names), new_state

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    mark_guarded(tx)  # its own non-finite rule, on the batch's rows (see above)
    return checks.register_model_options(tx, activation=activation, many_to_many=many_to_many,
                                         loss=loss, name="admmirnn",
                                         num_samples=num_samples if per_sample else None)


def _valid_indices(indices, n):
    """Traced check: every index in ``[0, n)`` and none repeated (one sort of the batch)."""
    s = jnp.sort(indices)
    return (s[0] >= 0) & (s[-1] < n) & jnp.all(s[1:] != s[:-1])


def _take(store, indices, whole):
    """The batch's rows of a per-sample array (all of it, without a gather, if ``whole``)."""
    return store if whole else store[indices]


def _put(store, indices, values, whole):
    """Write the batch's rows back (replace the array, without a scatter, if ``whole``)."""
    values = values.astype(store.dtype)
    return values if whole else store.at[indices].set(values)


def _iteration(p, aux, duals, rho, inputs, targets, cfg, sweep_fn, schedule, count,
               forward=None):
    """One ADMM iteration: o, (h, a) sweep, (U, W, b), (V, c), multipliers, penalties.

    ``sweep="coupled"`` orders it o, (a, h), multipliers, auxiliaries back to the forward pass
    of the weights (``forward``, computed when ``None``), (U, W, b), (V, c).
    """
    before = constraint_sides(p, aux, inputs, cfg)
    aux = aux._replace(o=blocks.o_block(p, aux, duals, rho, targets, cfg))
    aux = sweep_fn(p, aux, duals, rho, inputs, cfg)
    coupled = cfg.sweep == "coupled"
    if coupled:
        # the multipliers take up the (a, h, o) solution's residuals (the adjoint-like
        # targets); the weight blocks then fit a + lam1/rho1 on the forward pass's states
        duals = blocks.dual_update(duals, rho, residuals(p, aux, inputs, cfg))
        if forward is None:
            forward = Auxiliaries(*elman_trace(p, inputs, activation=cfg.activation,
                                               many_to_many=cfg.many_to_many))
        aux = forward
    uwb, _ = blocks.uwb_block(p, aux, duals, rho, inputs, cfg)
    p = {**p, **uwb}
    vc, _ = blocks.vc_block(p, aux, duals, rho, cfg)
    p = {**p, **vc}
    after = constraint_sides(p, aux, inputs, cfg)
    r = Residuals(*(v - side for v, side in zip(aux, after, strict=True)))
    if not coupled:
        duals = blocks.dual_update(duals, rho, r)
    s = [rh * jnp.linalg.norm(a1 - a0) for rh, a0, a1 in zip(rho, before, after, strict=True)]
    rnorm = [jnp.linalg.norm(ri) for ri in r]
    lag = lagrangian_from_residuals(p, aux.o, r, duals, rho, targets, cfg)
    zero = jnp.zeros_like(lag)
    diag = ADMMDiagnostics(lag, *rnorm, jnp.sqrt(sum(si**2 for si in s)), zero, zero)
    return p, aux, duals, _next_rho(rho, rnorm, s, schedule, count), diag


def _next_rho(rho: Penalties, rnorm, s, schedule, count) -> Penalties:
    """The penalties after iteration ``count + 1`` (``count`` done before it), with primal
    residual norms ``rnorm`` and dual residuals ``s`` per family, under ``schedule =
    (rho_schedule, rho_growth, rho_max)``."""
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


def _coupled_iteration(p, trace, duals: Duals, rho: Penalties, inputs, targets, cfg, schedule,
                       count):
    """One coupled ADMM iteration from the forward pass ``trace`` of ``p``: o, (a, h),
    multipliers, (U, W, b) on the forward states, (V, c) on the new weights' states.

    Returns ``(p, duals, rho, diagnostics, o)`` with ``o`` the new weights' outputs on the
    batch.
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
    return p, duals, _next_rho(rho, rnorm, s, schedule, count), diag, o_new


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


def _check_options(num_samples, seq_len, rhos, prox, weight_decay, sweep, auxiliaries,
                   rho_schedule, rho_growth, rho_max, activation, loss, newton_steps, a_steps,
                   cg_steps):
    checks.positive_int("newton_steps", newton_steps)
    if len(rhos) != 3:
        raise ValueError(f"rho: expected a positive number or three positive numbers, got {rhos}")
    for r in rhos:
        f = checks.scalar("rho", r, "a positive number or three positive numbers")
        if f is not None and not (math.isfinite(f) and f > 0):
            raise ValueError(f"rho: expected a positive number or three positive numbers, got "
                             f"{rhos}")
    checks.nonnegative_number("prox", prox)
    checks.nonnegative_number("weight_decay", weight_decay)
    checks.positive_number("rho_max", rho_max)
    for name, v, valid in (("sweep", sweep, SWEEPS), ("auxiliaries", auxiliaries, AUXILIARY_MODES),
                           ("rho_schedule", rho_schedule, RHO_SCHEDULES),
                           ("activation", activation, ACTIVATIONS), ("loss", loss, SUMMED_LOSSES)):
        checks.one_of(name, v, valid)
    if rho_growth is not None:
        if rho_schedule not in DEFAULT_RHO_GROWTH:
            raise ValueError(f"rho_growth: only rho_schedule='geometric' or 'linear' grows rho "
                             f"(got rho_schedule={rho_schedule!r})")
        growth = checks.scalar("rho_growth", rho_growth, "a number > 1")
        if growth is not None and not (math.isfinite(growth) and growth > 1):
            raise ValueError(f"rho_growth: expected a finite number > 1, got {rho_growth!r}")
    if (num_samples is None) != (seq_len is None):
        raise ValueError("num_samples, seq_len: per-sample state is [num_samples, seq_len, H]; "
                         f"give both or neither (got {num_samples}, {seq_len})")
    if sweep == "coupled":
        if auxiliaries == "persist":
            raise ValueError("auxiliaries: 'persist' needs sweep='backward' or 'parallel' (the "
                             "'coupled' iteration starts from the forward pass, nothing to "
                             "persist)")
        if num_samples is not None:
            raise ValueError("num_samples, seq_len: sweep='coupled' keeps no per-sample state "
                             "(its multipliers live within one call); they are for "
                             "sweep='backward' or 'parallel'")
        if a_steps is not None:
            raise ValueError("a_steps: the a-block's solver belongs to sweep='backward' or "
                             "'parallel'; the coupled sweep solves (a, h) jointly")
    else:
        if cg_steps is not None:
            raise ValueError(f"cg_steps: the conjugate gradients belong to sweep='coupled' "
                             f"(got sweep={sweep!r})")
        if auxiliaries == "persist" and num_samples is None:
            raise ValueError("auxiliaries: 'persist' stores per-sample auxiliaries; give "
                             "num_samples and seq_len")
