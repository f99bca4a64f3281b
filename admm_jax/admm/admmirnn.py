"""ADMMiRNN as an optax ``GradientTransformationExtraArgs``."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from admm_jax import _validation as checks
from admm_jax._wrappers import refuse_gradient_wrappers
from admm_jax.admm import blocks
from admm_jax.admm.iteration import ADMMDiagnostics, coupled_iteration, per_step_iteration
from admm_jax.admm.problem import (
    SUMMED_LOSSES,
    ADMMConfig,
    Auxiliaries,
    Duals,
    Penalties,
    check_batch,
    config_number,
    data_loss,
    mean_loss,
)
from admm_jax.layouts import merge_elman, split_elman
from admm_jax.models.elman import ACTIVATIONS, elman_apply, elman_trace
from admm_jax.nonfinite import mark_guarded

RHO_SCHEDULES = ("fixed", "geometric", "linear", "balance")
AUXILIARY_MODES = ("reset", "persist")
SWEEPS = ("coupled", "backward", "parallel")
DEFAULT_RHO_GROWTH = {"geometric": 1.05, "linear": 1.001}
DEFAULT_A_STEPS = 4
MANY_TO_MANY_CG_STEPS = 1


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

    An iteration that produces a non-finite weight, residual or Lagrangian, or whose batch
    holds a class label outside ``[0, C)`` under ``jit`` (eager calls raise), is rejected:
    ``update`` returns zero updates, leaves the state as it was and sets ``diagnostics.loss``
    to NaN (:func:`admm_jax.increase_rho_on_divergence` retries it with larger penalties).
    It reads no gradients, so it refuses to run behind a transformation that acts on them: a
    transformation before it in ``optax.chain``, or ``optax.MultiSteps`` around it (which
    would drop all but one mini-batch in ``k``), raises a ``ValueError`` at the first call;
    first in a chain (``optax.chain(admmirnn(), ...)``) it is fine.

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
      ValueError: at ``update``: class labels outside ``[0, C)`` in an eager call; a
        transformation before it in ``optax.chain``, or ``optax.MultiSteps`` around it; a
        state built for other parameters.

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
    sweep_fn = {"backward": blocks.sweep_backward, "parallel": blocks.sweep_parallel,
                "coupled": None}[sweep]

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
        refuse_gradient_wrappers("admmirnn")  # a clip before it, MultiSteps: named errors
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
        # labels in [0, C): concrete ones were checked by check_batch; traced ones that are
        # not reject the iteration (diagnostics.loss = NaN), never train a wrapped-around class
        valid = (jnp.all((targets >= 0) & (targets < classes)) if loss == "cross_entropy"
                 else jnp.asarray(True))
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
                p_new, duals, rho, diag, out = coupled_iteration(
                    p_new, tr, duals, rho, inputs, targets, cfg, schedule, state.count + i)
        else:
            for i in range(sweeps):
                p_new, aux, duals, rho, diag = per_step_iteration(
                    p_new, aux, duals, rho, inputs, targets, cfg, sweep_fn, schedule,
                    state.count + i)
            out = elman_trace(p_new, inputs, activation=activation,
                              many_to_many=many_to_many).o
        n_targets = out.shape[0] * out.shape[1]
        diag = diag._replace(loss=data_loss(out, targets, cfg) / n_targets,
                             batch_loss=mean_loss(trace.o, targets, cfg))

        # divergence guard: a non-finite iteration is rejected (weights, penalties, the batch's
        # multipliers and auxiliaries keep their old values; batch-sized selects only) and
        # reported by diagnostics.loss = NaN, so a caller retries or stops from a good state
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in (*p_new.values(), *diag)]))
        ok = ok & valid  # bad labels or indices (traced): rejected, nothing written
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

    def forward(params, inputs):  # the model it trains, for fit's check (check_forward)
        return elman_apply(split_elman(params)[0], inputs, activation=activation,
                           many_to_many=many_to_many)

    return checks.register_model_options(
        tx, activation=activation, many_to_many=many_to_many, loss=loss, name="admmirnn",
        num_samples=num_samples if per_sample else None, forward=forward,
        forward_note=f"an Elman RNN with activation={activation!r} reading "
                     f"{'every step' if many_to_many else 'the last step'}")


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
