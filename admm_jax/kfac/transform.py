r"""`scale_by_kfac`: the time-shared Kronecker-factored direction for any Flax recurrent model,
as an optax transformation.

The pipeline, kfac-jax's stages kept apart:

1. **statistics**: one forward pass of the user's own model and one backward pass, with every
   linear map tapped ([trace][admm_jax.kfac.trace]): the gradient, and each map's input and
   output-adjoint second moments summed over samples and time steps;
2. **factors**: running averages of the Kronecker factors ([factors][admm_jax.kfac.factors]);
3. **inverses**: damped inverses, cached in the state and refreshed inside `jit` under
   `lax.cond` every `refresh_every` steps (or when the damping moves);
4. **direction**: \((A + \kappa_A I)^{-1} G (S + \kappa_S I)^{-1}\) per weight, a diagonal
   Adam-like direction for the parameters no linear map owns (the fallback).

The gradient \(G\) it preconditions is the one it is given, so whatever comes before it in an
`optax.chain` (clipping, accumulation by `optax.MultiSteps`) is honoured; given `None`, it
uses the gradient of its own backward pass (one pass for both: the fast path that
[fit][admm_jax.train.fit] takes for a bare method).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.extend import core as jcore

from admm_jax import _validation as checks
from admm_jax.kfac import factors, trace, walk

FISHERS = ("empirical", "sampled")
OUTPUT_FACTORS = ("gates", "full", "identity")
BETAS = (0.9, 0.999)  # the fallback's Adam moments


class KFACDiagnostics(NamedTuple):
    """Per-step figures of [scale_by_kfac][admm_jax.scale_by_kfac].

    batch_loss: the batch's mean loss before the step (the convention of
    ``admm_jax.train.losses``), from the forward pass the step makes anyway; step_norm:
    the direction's norm (before the learning rate); damping: the damping in use,
    ``damping x`` the adaptive factor.
    """

    batch_loss: jax.Array
    step_norm: jax.Array
    damping: jax.Array


class KFACState(NamedTuple):
    """State of [scale_by_kfac][admm_jax.scale_by_kfac].

    count: steps done; loss: the last batch's loss before its step; step_norm: the last
    direction's norm; factor: the adaptive damping factor (``>= 1``); loss_fast, loss_slow,
    loss_var: the running loss averages it compares; a, s: running averages of the input and
    output factors (one per factor slot of the model's plan); a_inv, s_inv: their damped
    inverses as of the last refresh; inverse_damping: the damping they were computed with;
    mu, nu: the fallback leaves' Adam moments.
    """

    count: jax.Array
    loss: jax.Array
    step_norm: jax.Array
    factor: jax.Array
    loss_fast: jax.Array
    loss_slow: jax.Array
    loss_var: jax.Array
    a: tuple
    s: tuple
    a_inv: tuple
    s_inv: tuple
    inverse_damping: jax.Array
    mu: tuple
    nu: tuple

    takes_batch = True  # update(grads, state, params, inputs=x, targets=y)
    computes_gradients = True  # grads may be None: its own backward pass supplies them
    loss_name = "cross_entropy"  # the loss its batch_loss and statistics use (a class attribute)
    reported = ("loss", "step_norm")  # a rejected step still reports these (reject_nonfinite)

    @property
    def diagnostics(self) -> KFACDiagnostics:
        """The step's figures (read by [admm_jax.optimizers.diagnostics][])."""
        return KFACDiagnostics(self.loss, self.step_norm, self.factor)


_STATE_CLASSES: dict[str | None, type] = {"cross_entropy": KFACState}


def state_class(loss: Any) -> type:
    """The state class for ``loss``: ``KFACState`` whose class attribute ``loss_name`` names
    it (``None`` for a callable loss), so that a training loop reads from the state which loss
    its ``batch_loss`` is."""
    name = loss if isinstance(loss, str) else None
    if name not in _STATE_CLASSES:
        _STATE_CLASSES[name] = type("KFACState", (KFACState,),
                                    {"__slots__": (), "loss_name": name,
                                     "__doc__": KFACState.__doc__})
    return _STATE_CLASSES[name]


class BoundModel(NamedTuple):
    """The model a transformation was built for, as a pure function.

    apply: ``(params, extra, inputs) -> outputs``; extra: the model's other state (passed
    as an argument, never closed over); treedef, shapes: its parameters' structure and
    leaves (``None`` for a plain function); inputs: the example's shape and dtype.
    """

    apply: Callable
    extra: Any
    treedef: Any
    shapes: tuple | None
    inputs: jax.ShapeDtypeStruct


def bind_model(model: Any, inputs: Any) -> BoundModel:
    """An ``nnx.Module`` (or ``apply(params, inputs)``) and an example batch as a
    [BoundModel][admm_jax.kfac.transform.BoundModel]."""
    if not hasattr(inputs, "shape") or not hasattr(inputs, "dtype"):
        raise TypeError(f"inputs: expected an example batch (an array or a "
                        f"jax.ShapeDtypeStruct), got {type(inputs).__name__}")
    spec = jax.ShapeDtypeStruct(tuple(inputs.shape), inputs.dtype)
    if len(spec.shape) < 2:
        raise ValueError(f"inputs: expected a batch [N, T, ...] of sequences, got shape "
                         f"{spec.shape}")
    if isinstance(model, nnx.Module):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        leaves, treedef = jax.tree.flatten(params)
        if not leaves:
            raise ValueError(f"model: {type(model).__name__} has no nnx.Param to train")

        def apply(p, extra, x):
            return nnx.merge(graphdef, p, extra)(x)

        shapes = tuple(jax.ShapeDtypeStruct(v.shape, v.dtype) for v in leaves)
        return BoundModel(apply, rest, treedef, shapes, spec)
    if callable(model):
        return BoundModel(lambda p, extra, x: model(p, x), (), None, None, spec)
    raise TypeError(f"model: expected an nnx.Module or a function apply(params, inputs), got "
                    f"{type(model).__name__}")


def _structured(bound: BoundModel, params: Any) -> tuple[list, Any]:
    """``params`` as leaves and as the tree the model takes; a named error when they are not
    the model's."""
    leaves = jax.tree.leaves(params)
    if bound.treedef is None:
        return leaves, params
    got = [(tuple(v.shape), jnp.dtype(v.dtype)) for v in leaves]
    want = [(tuple(v.shape), jnp.dtype(v.dtype)) for v in bound.shapes]
    if got != want:
        raise ValueError(f"params: {len(got)} leaves {got[:3]}... do not match the model the "
                         f"optimizer was built for ({len(want)} leaves {want[:3]}...); build "
                         "it for this model, and call tx.init(params) again")
    return leaves, jax.tree.unflatten(bound.treedef, leaves)


def model_plan(bound: BoundModel, params: Any, inputs: Any, gates: bool = True):
    """``(plan, closed jaxpr, leaves, other arguments)`` of the model on ``inputs``
    (``gates``: one output factor per gate, :func:`admm_jax.kfac.trace.make_plan`)."""
    leaves, p = _structured(bound, params)
    try:
        closed = walk.inline_calls(jax.make_jaxpr(bound.apply)(p, bound.extra, inputs))
    except walk.UnsupportedModelError:
        raise
    except Exception as e:  # noqa: BLE001 - a model that does not run on these inputs
        raise ValueError(f"inputs: the model does not run on inputs {inputs.dtype}"
                         f"{tuple(inputs.shape)}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if len(closed.out_avals) != 1:
        raise walk.UnsupportedModelError(
            f"model: expected one output array (the logits), got {len(closed.out_avals)}")
    names = trace.leaf_names(params)
    plan = trace.make_plan(closed, len(leaves), names, gates)
    if not plan.blocks:
        raise walk.UnsupportedModelError(
            "model: no linear map (a dense layer or an embedding applied to the data) was "
            f"found among its parameters {list(names)[:6]}: there is nothing to precondition; "
            "use a gradient method such as optax.adam")
    other = jax.tree.leaves((bound.extra, inputs))
    return plan, closed, leaves, other


def compute_dtype(leaves) -> jnp.dtype:
    """The dtype the factors are kept and solved in: the parameters' widest, at least float32
    (no bfloat16 Cholesky)."""
    return jnp.promote_types(jnp.result_type(*leaves), jnp.float32)


def _check_batch(plan, closed, inputs, targets, loss) -> None:
    """Token ids and class labels in range, when they are concrete (eager calls; under
    ``jit`` a bad id or label makes the step non-finite, and it is rejected)."""
    embeds = [b for b in plan.blocks if b.kind == "embed"]
    if len(embeds) == 1 and jnp.issubdtype(inputs.dtype, jnp.integer):
        checks.token_ids("inputs", inputs, embeds[0].d_in)
    out = closed.out_avals[0]
    if loss != "cross_entropy":
        return
    if targets.shape != out.shape[:-1]:
        raise ValueError(f"targets: expected class labels of shape {out.shape[:-1]} for the "
                         f"model's outputs {out.shape}, got {targets.shape}")
    if not isinstance(targets, jax.core.Tracer):
        checks.labels("targets", targets, out.shape[-1])


def _loss_terms(loss, out, targets) -> int:
    """How many loss terms the mean loss averages (each sample's own adjoint is that many
    times the mean's)."""
    if loss == "cross_entropy":
        return math.prod(targets.shape)
    if loss == "mse":
        return math.prod(out.shape[:-1])
    return out.shape[0]


def _sampled_adjoint(loss, out, key, terms: int):
    """The adjoint of the mean loss at labels sampled from the model (true-Fisher samples)."""
    if loss == "cross_entropy":
        y = jax.random.categorical(key, out)
        g = jax.nn.softmax(out) - jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype)
    else:
        g = -jax.random.normal(key, out.shape, out.dtype)
    return g / terms


def _check_options(damping, ema, refresh_every, fallback_scale, fisher, output_factor, loss):
    checks.nonnegative_number("damping", damping)
    f = checks.scalar("ema", ema, "a number in [0, 1)")
    if f is not None and not 0 <= f < 1:
        raise ValueError(f"ema: expected a number in [0, 1), got {ema!r}")
    r = checks.scalar("refresh_every", refresh_every, "an int >= 1")
    if r is not None and (r < 1 or r != int(r)):
        raise ValueError(f"refresh_every: expected an int >= 1, got {refresh_every!r}")
    checks.nonnegative_number("fallback_scale", fallback_scale)
    checks.one_of("fisher", fisher, FISHERS)
    checks.one_of("output_factor", output_factor, OUTPUT_FACTORS)
    if callable(loss) and fisher == "sampled":
        raise ValueError("fisher: 'sampled' needs a named loss ('cross_entropy' or 'mse'), "
                         "got a callable loss")


def scale_by_kfac(
    model: Any,
    inputs: Any,
    *,
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
    r"""Precondition gradients by a time-shared Kronecker-factored Fisher of the model.

    For every linear map of ``model`` (dense layers, recurrent kernels, LSTM/GRU gates,
    embeddings, the head; found by [admm_jax.kfac.trace][]) with kernel gradient \(G\):

    $$
    D = (A + \kappa_A I)^{-1}\, G\, (S + \kappa_S I)^{-1},\qquad
    A = \tfrac1N \textstyle\sum_{n,t} \bar x \bar x^\top,\quad
    S = \tfrac1{NT} \textstyle\sum_{n,t} g g^\top
    $$

    with both factors running averages over steps (weight ``ema``) of the batch statistics,
    summed over every time step the weight is used (Martens, Ba & Johnson 2018, independence
    across time), and the damping of [admm_jax.kfac.factors][]: \(\kappa = \mu m\) with
    \(\mu\) = ``damping`` times an adaptive factor (it doubles while the loss rises beyond
    batch noise, and decays back to 1). Parameters no linear map owns get a diagonal,
    Adam-like direction \(\hat m / (\sqrt{\hat v} + 10^{-8})\) times ``fallback_scale``.

    ``update(grads, state, params, *, inputs, targets)`` needs the batch (for the
    statistics) and preconditions ``grads``; with ``grads=None`` it uses the gradient of its
    own backward pass (one forward and one backward pass per step either way; passing
    gradients costs the caller's backward pass too).

    Cost per step beyond a BPTT gradient: per map \(2 R (d_{in}^2 + d_{out}^2)\) FLOPs for
    the statistics over its \(R\) rows (shared factors counted once), two small matrix
    products for the direction, and the \(O(d^3)\) inverses every ``refresh_every`` steps.

    Args:
      model: the ``nnx.Module`` being trained (or ``apply(params, inputs) -> outputs``).
      inputs: an example batch (an array or a ``jax.ShapeDtypeStruct``; any batch size
        and sequence length): the model is traced on it to find its linear maps.
      loss: ``"cross_entropy"`` (integer labels), ``"mse"``, or a per-sample loss
        ``(outputs, targets) -> [N]`` (as in [admm_jax.train.fit][]).
      damping: \(\mu\), relative to each factor's mean eigenvalue.
      ema: weight of the old factors in the running averages, in ``[0, 1)``.
      refresh_every: steps between refreshes of the damped inverses.
      stats_every: steps between updates of the factors: the taps run every
        ``stats_every`` steps and the plain model in between (the statistics' cost, about
        \(2R(d_{in}^2 + d_{out}^2)\) per map, amortised).
      fisher: ``"empirical"`` (adjoints at the true labels: free) or ``"sampled"``
        (adjoints at labels drawn from the model: one more backward pass).
      output_factor: ``"gates"`` (two-sided K-FAC, with one output factor per gate where a
        map's output is split into equal gates: the fused kernels of
        ``nnx.OptimizedLSTMCell``, ``nnx.GRUCell`` and [admm_jax.LSTM][]), ``"full"`` (one
        output factor per map) or ``"identity"`` (\(S = I\): a one-sided, input-covariance
        preconditioner).
      normalize_output: use \(S / m_S\) (see [admm_jax.kfac.factors][]).
      adaptive_damping: raise the damping while the loss rises; ``False``: fixed.
      fallback_scale: the fallback's Adam-like step relative to the others.
      seed: of the sampled labels.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is a
      [KFACState][admm_jax.KFACState].

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> import admm_jax
      >>> class Model(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.rnn = nnx.RNN(nnx.LSTMCell(3, 8, rngs=rngs))
      ...         self.head = nnx.Linear(8, 2, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.head(self.rnn(x)[:, -1])
      >>> model = Model(nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.key(1), (16, 5, 3))
      >>> y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
      >>> tx = admm_jax.scale_by_kfac(model, x)
      >>> params = nnx.state(model, nnx.Param)
      >>> state = tx.init(params)
      >>> direction, state = tx.update(None, state, params, inputs=x, targets=y)
      >>> len(state.a), len(state.s), int(state.count)
      (2, 5, 1)

    References:
      Martens, Ba & Johnson, "Kronecker-factored Curvature Approximations for Recurrent
      Neural Networks", ICLR 2018; Martens & Grosse, "Optimizing Neural Networks with
      Kronecker-factored Approximate Curvature", ICML 2015; Tang et al., "ADMMiRNN",
      ECML-PKDD 2020 (the weight blocks this grew from).
    """
    from admm_jax.train import losses  # the package's per-sample losses (train imports us)

    _check_options(damping, ema, refresh_every, fallback_scale, fisher, output_factor, loss)
    r = checks.scalar("stats_every", stats_every, "an int >= 1")
    if r is not None and (r < 1 or r != int(r)):
        raise ValueError(f"stats_every: expected an int >= 1, got {stats_every!r}")
    loss_fn = losses.resolve("loss", loss, losses.LOSSES)
    bound = bind_model(model, inputs)
    one_sided = output_factor == "identity"
    state_type = state_class(loss)

    def zero_state(plan, leaves) -> KFACState:
        dtype = compute_dtype(leaves)
        scalar = lambda v=0.0: jnp.full((), v, dtype)  # noqa: E731
        a = tuple(jnp.zeros(shape, dtype) for shape in plan.a_shapes)
        s = () if one_sided else tuple(jnp.zeros(shape, dtype) for shape in plan.s_shapes)
        eye = lambda f: jnp.ones_like(f) if f.ndim == 1 else jnp.broadcast_to(  # noqa: E731
            jnp.eye(f.shape[-1], dtype=dtype), f.shape)
        moments = tuple(jnp.zeros(leaves[i].shape, dtype) for i in plan.fallback)
        return state_type(
            count=jnp.zeros((), jnp.int32), loss=scalar(), step_norm=scalar(),
            factor=scalar(1.0), loss_fast=scalar(), loss_slow=scalar(), loss_var=scalar(),
            a=a, s=s, a_inv=tuple(eye(f) for f in a), s_inv=tuple(eye(f) for f in s),
            inverse_damping=scalar(-1.0), mu=moments,
            nu=tuple(jnp.zeros_like(m) for m in moments))

    gates = output_factor == "gates"

    def init_fn(params) -> KFACState:
        plan, _, leaves, _ = model_plan(bound, params, bound.inputs, gates)
        return zero_state(plan, leaves)

    def statistics(closed, plan, leaves, other, targets, state, taps: bool, own: bool):
        """``(loss, own gradient leaves, (a_stats, s_stats))`` of one forward and one backward
        pass; ``taps=False``: the plain model (zero statistics); ``own=False``: no gradient
        of the parameters (and without taps no backward pass at all)."""
        dtype = state.loss.dtype
        zeros = (tuple(jnp.zeros(sh, dtype) for sh in plan.a_shapes),
                 () if one_sided else tuple(jnp.zeros(sh, dtype) for sh in plan.s_shapes))
        plain = jcore.jaxpr_as_fun(closed)
        mean_loss = lambda o: loss_fn(o, targets).mean()  # noqa: E731
        if not taps:
            if not own:
                return mean_loss(plain(*leaves, *other)[0]), [], zeros
            value, mine = jax.value_and_grad(
                lambda lv: mean_loss(plain(*lv, *other)[0]))(leaves)
            return value, list(mine), zeros

        def forward(lv, dummies):
            return trace.tapped_apply(closed, plan, [*lv, *other], dummies)

        out, pull, rows = jax.vjp(forward, leaves, trace.zero_dummies(plan, dtype, one_sided),
                                  has_aux=True)
        out = out[0]
        value, g_out = jax.value_and_grad(mean_loss)(out)
        if fisher == "sampled":  # the adjoints of labels sampled from the model
            key = jax.random.fold_in(jax.random.key(seed), state.count)
            g_s = _sampled_adjoint(loss, out, key, _loss_terms(loss, out, targets))
            mine, grams = jax.vmap(pull)([jnp.stack([g_out, g_s.astype(g_out.dtype)])])
            mine = [g[0] for g in mine]
            grams = {p: g[1] for p, g in grams.items()}
        else:
            mine, grams = pull([g_out])
        stats = trace.statistics(plan, rows, grams, dtype, one_sided)
        return value, (list(mine) if own else []), stats

    def update_fn(updates, state, params=None, *, inputs=None, targets=None,
                  **extra_args: Any):
        del extra_args
        if params is None or inputs is None or targets is None:
            raise ValueError("inputs, targets: scale_by_kfac needs the parameters and the "
                             "batch: tx.update(grads, state, params, inputs=x, targets=y)")
        inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
        if inputs.ndim == 0 or inputs.shape[0] == 0:
            raise ValueError(f"inputs: expected at least one sample, got shape {inputs.shape}")
        plan, closed, leaves, other = model_plan(bound, params, inputs, gates)
        _check_batch(plan, closed, inputs, targets, loss)
        want = jax.eval_shape(lambda: zero_state(plan, leaves))
        if jax.tree.map(jnp.shape, want) != jax.tree.map(jnp.shape, state):
            raise ValueError("state: it was built for other parameters or another model "
                             "(its factors do not match this one's); call tx.init(params) "
                             "again")
        dtype = state.loss.dtype
        grads = [] if updates is None else jax.tree.leaves(updates)
        need_own = not grads  # None (or nnx.Optimizer's empty tree): its own gradient
        if grads and [jnp.shape(g) for g in grads] != [jnp.shape(v) for v in leaves]:
            raise ValueError("updates: the gradients do not match the parameters "
                             f"({len(grads)} leaves for {len(leaves)})")
        run = functools.partial(statistics, closed, plan, leaves, other, targets, state,
                                own=need_own)
        if isinstance(stats_every, int) and stats_every == 1:
            due_stats = jnp.asarray(True)
            loss_now, own, (a_st, s_st) = run(taps=True)
        else:  # the statistics every stats_every steps, the plain pass in between
            due_stats = state.count % stats_every == 0
            loss_now, own, (a_st, s_st) = jax.lax.cond(
                due_stats, functools.partial(run, taps=True), functools.partial(run, taps=False))
        grads = [g.astype(dtype) for g in (own if need_own else grads)]

        terms = _loss_terms(loss, closed.out_avals[0], targets)
        a_new, s_new = factors.batch_factors(plan, a_st, s_st, inputs.shape[0], terms)
        first = state.count == 0
        a = factors.running_average(state.a, a_new, jnp.where(due_stats, ema, 1.0), first)
        s = factors.running_average(state.s, s_new, jnp.where(due_stats, ema, 1.0), first)
        fast, slow, var, factor = factors.damping_update(state, loss_now.astype(dtype),
                                                 adaptive_damping)
        mu = (damping * factor).astype(dtype)
        due = (state.count % refresh_every == 0) | (mu != state.inverse_damping)
        a_inv, s_inv = jax.lax.cond(due, lambda: factors.inverses(a, s, mu, normalize_output),
                                    lambda: (state.a_inv, state.s_inv))
        direction = factors.precondition(plan, grads, a_inv, None if one_sided else s_inv)

        # the fallback: Adam's bias-corrected direction for the leaves no block owns
        b1, b2 = BETAS
        k = (state.count + 1).astype(dtype)
        mus, nus = [], []
        for j, i in enumerate(plan.fallback):
            m = b1 * state.mu[j] + (1 - b1) * grads[i]
            v = b2 * state.nu[j] + (1 - b2) * grads[i] ** 2
            mus.append(m)
            nus.append(v)
            direction[i] = fallback_scale * (m / (1 - b1**k)) / (jnp.sqrt(v / (1 - b2**k))
                                                                 + 1e-8)
        out = [direction[i].astype(leaves[i].dtype) for i in range(len(leaves))]
        new_state = state_type(
            count=state.count + 1, loss=loss_now.astype(dtype),
            step_norm=optax.tree.norm(out).astype(dtype), factor=factor.astype(dtype),
            loss_fast=fast.astype(dtype), loss_slow=slow.astype(dtype),
            loss_var=var.astype(dtype), a=a, s=s, a_inv=a_inv, s_inv=s_inv,
            inverse_damping=jnp.where(due, mu, state.inverse_damping).astype(dtype),
            mu=tuple(mus), nu=tuple(nus))
        return jax.tree.unflatten(jax.tree.structure(params), out), new_state

    def forward(params, x):  # the model it was built for, for fit's check_forward
        return bound.apply(_structured(bound, params)[1], bound.extra, x)

    # a model with the same graph computes the same forward pass: fit need not run both
    graph = nnx.split(model, nnx.Param, ...)[0] if isinstance(model, nnx.Module) else None
    return checks.register_model_options(
        optax.GradientTransformationExtraArgs(init_fn, update_fn), name="scale_by_kfac",
        forward=forward, forward_graph=graph,
        forward_note="the model it was built for (build it for this one)")
