"""One training loop for every optimizer: it asks the optimizer's state, never its name."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from admm_jax import _validation as checks
from admm_jax.data import BatchIterator
from admm_jax.optimizers import diagnostics, keeps_itself, needs_gradients
from admm_jax.train import losses
from admm_jax.train.callbacks import Callback, Loop, ProgressBar
from admm_jax.train.checkpoint import Restored
from admm_jax.train.history import History

DIVERGENCE_POLICIES = ("raise", "stop")


class Evaluation(NamedTuple):
    """When and on what :func:`fit` evaluates.

    data: ``(inputs, targets)`` evaluated with a plain forward pass (no training); every:
    evaluate every ``every`` iterations; every_seconds: every ``every_seconds`` training
    seconds (with neither: at the end of each epoch); batch_size: rows per evaluation chunk.
    The run is also evaluated before the first step and after the last.
    """

    data: tuple[np.ndarray, np.ndarray]
    every: int | None = None
    every_seconds: float | None = None
    batch_size: int = 500


class DivergenceError(FloatingPointError):
    """A training step produced a non-finite loss, metric, residual or weight.

    Attributes:
      iteration: the 1-based iteration whose step failed (not applied).
      metrics: that step's metrics (with the non-finite values).
      last_good: the metrics of the last good step (``None`` when the first step failed).
      history: the run's :class:`History` up to the last good step.
    """

    def __init__(self, iteration: int, metrics: dict[str, float],
                 last_good: dict[str, float] | None, history: History, detail: str = ""):
        self.iteration, self.metrics, self.last_good, self.history = (
            iteration, metrics, last_good, history)
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        good = "none (the first step failed)" if last_good is None else ", ".join(
            f"{k}={v:.6g}" for k, v in last_good.items() if k not in ("seconds", "time"))
        super().__init__(
            f"training diverged at iteration {iteration}: non-finite {', '.join(bad) or 'weights'}"
            f"{detail}. Last good step: {good}. The step was not applied: the model holds the "
            "last good weights and no checkpoint was written after the last good step.")


def _apply_fn(graphdef, rest):
    def apply(params, inputs, kwargs, key):
        model = nnx.merge(graphdef, params, rest)
        kw = dict(kwargs)
        if key is not None:
            kw["key"] = key
        return model(inputs, **kw)

    return apply


def make_train_step(graphdef, rest, tx: optax.GradientTransformation, loss_fn, metric_fn, *,
                    use_gradients: bool | None = None, step_key: bool = False,
                    method_loss: bool = False):
    """The (unjitted) training step ``(params, opt_state, x, y, indices, kwargs, key, it) ->
    (params, opt_state, metrics, ok)``.

    ``use_gradients`` (default: read from the state, :func:`admm_jax.optimizers.needs_gradients`):
    the loss is differentiated (``jax.value_and_grad``) and
    ``tx.update(grads, state, params)`` is called; without, only a forward pass of the current
    weights is made (for the batch loss and metric) and ``tx.update(None, state, params,
    inputs=x, targets=y, indices=indices)`` computes the step, so no backward pass is ever
    traced. With ``method_loss`` (a method that reports ``batch_loss``, the batch's loss before
    its step under ``loss_fn``, in its diagnostics) not even that: the step records the
    method's ``batch_loss`` as ``loss`` and no training metric. ``metrics`` holds the loss, the
    metric, ``grad_norm`` (with gradients) and every field of the new state's ``diagnostics``
    (:func:`admm_jax.optimizers.diagnostics`) that the step did not already name.

    ``ok`` is False when the loss, the metric, the gradient norm, a diagnostic or a new weight
    is not finite; the step is then not applied: the old weights are returned, and the old
    optimizer state unless the state keeps itself (:func:`admm_jax.optimizers.keeps_itself`).
    """
    apply = _apply_fn(graphdef, rest)

    def step(params, opt_state, x, y, indices, kwargs, key, iteration):
        k = jax.random.fold_in(key, iteration) if step_key else None
        gradients = needs_gradients(opt_state) if use_gradients is None else use_gradients
        if gradients:
            def objective(p):
                out = apply(p, x, kwargs, k)
                return loss_fn(out, y).mean(), out

            (loss, out), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, new_opt_state = tx.update(grads, opt_state, params)
            reported = diagnostics(new_opt_state)
            metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        else:
            out = None if method_loss else apply(params, x, kwargs, None)
            updates, new_opt_state = tx.update(None, opt_state, params, inputs=x, targets=y,
                                               indices=indices)
            reported = diagnostics(new_opt_state)
            metrics = {"loss": (reported.pop("batch_loss") if method_loss
                                else loss_fn(out, y).mean())}
        if metric_fn is not None and out is not None:
            metrics["accuracy"] = metric_fn(out, y).mean()
        metrics.update({n: v for n, v in reported.items() if n not in metrics})
        new_params = optax.apply_updates(params, updates)
        values = [*metrics.values(), *reported.values(), *jax.tree_util.tree_leaves(new_params)]
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))

        def keep(new, old):
            return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)

        if not keeps_itself(opt_state):  # params-sized: keeping the old one costs one select
            new_opt_state = keep(new_opt_state, opt_state)
        return keep(new_params, params), new_opt_state, metrics, ok

    return step


def make_eval_fn(graphdef, rest, loss_fn, metric_fn):
    """Jitted ``(params, x, y, mask) -> (sum of losses, sum of metric)`` over the unmasked rows."""
    apply = _apply_fn(graphdef, rest)

    @jax.jit
    def evaluate_chunk(params, x, y, mask):
        out = apply(params, x, {}, None)
        m = mask.astype(jnp.float32)
        total = {"loss": jnp.sum(loss_fn(out, y) * m)}
        if metric_fn is not None:
            total["accuracy"] = jnp.sum(metric_fn(out, y) * m)
        return total

    return evaluate_chunk


def _evaluate(eval_chunk, params, data, batch_size: int) -> dict[str, float]:
    x, y = data
    n = len(x)
    b = min(batch_size, n)
    sums: dict[str, float] = {}
    for lo in range(0, n, b):
        idx = np.arange(lo, lo + b) % n
        mask = np.arange(lo, lo + b) < n
        part = jax.device_get(eval_chunk(params, jnp.asarray(x[idx]), jnp.asarray(y[idx]),
                                         jnp.asarray(mask)))
        for k, v in part.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {k: v / n for k, v in sums.items()}


def evaluate(model: nnx.Module, data: tuple[np.ndarray, np.ndarray], *,
             loss: str | losses.PerSample = "cross_entropy",
             metric: str | losses.PerSample | None = "accuracy",
             batch_size: int = 500) -> dict[str, float]:
    """Mean loss (and metric) of a plain forward pass of ``model`` over ``data = (x, y)``.

    >>> import numpy as np
    >>> from flax import nnx
    >>> from admm_jax import ElmanRNN
    >>> m = ElmanRNN(2, 4, 3, rngs=nnx.Rngs(0))
    >>> r = evaluate(m, (np.zeros((5, 6, 2), np.float32), np.zeros(5, np.int32)))
    >>> sorted(r), round(r["loss"], 3)  # zero inputs and biases: uniform logits
    (['accuracy', 'loss'], 1.099)
    """
    loss_fn = losses.resolve("loss", loss, losses.LOSSES)
    metric_fn = losses.resolve("metric", metric, losses.METRICS)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return _evaluate(make_eval_fn(graphdef, rest, loss_fn, metric_fn), params, data, batch_size)


def _check_data(name: str, data: Any, validate: bool) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise TypeError(f"{name}: expected a pair (inputs, targets), got {type(data).__name__}")
    try:
        x, y = (np.asarray(a) for a in data)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected two arrays (inputs, targets), got {e}") from None
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{name}: expected inputs and targets of the same nonzero length, got "
                         f"{x.shape} and {y.shape}")
    for part, a in (("inputs", x), ("targets", y)):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise TypeError(f"{name}: expected numeric {part}, got dtype {a.dtype}")
        if validate:
            checks.finite(f"{name} {part}", a)
    return x, y


def _check_against_model(name, x, y, apply, params, kwargs, loss_fn, loss, metric_fn,
                         validate: bool):
    """Trace (no compile, no run) the model, loss and metric on one sample of ``(x, y)``."""
    x1, y1 = x[:1], y[:1]
    try:
        out = jax.eval_shape(apply, params, x1, kwargs, None)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the data does not fit
        raise ValueError(f"{name}: inputs of shape {x.shape} ({x.dtype}) do not fit the model: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    if loss == "cross_entropy" or loss_fn is losses.cross_entropy:
        want = (len(y),) + tuple(out.shape[1:-1])
        if not np.issubdtype(y.dtype, np.integer) or y.shape != want:
            raise ValueError(f"{name}: cross_entropy needs integer class targets of shape {want} "
                             f"for model outputs {tuple(out.shape)[1:]}, got {y.dtype}{y.shape}")
        if validate:
            checks.labels(f"{name} targets", y, int(out.shape[-1]))
    elif loss == "mse" or loss_fn is losses.mse:
        if int(np.prod(y.shape[1:])) != int(np.prod(out.shape[1:])):
            raise ValueError(f"{name}: mse needs {tuple(out.shape[1:])} real targets per sample "
                             f"(the model's outputs), got targets of shape {y.shape}")
    for what, fn in (("loss", loss_fn), ("metric", metric_fn)):
        if fn is None:
            continue
        try:
            v = jax.eval_shape(fn, out, jax.ShapeDtypeStruct(y1.shape, y1.dtype))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{what}: fails on model outputs {tuple(out.shape)} and {name} "
                             f"targets {y1.dtype}{y1.shape}: {type(e).__name__}: {e}") from None
        if tuple(v.shape) != (1,):
            raise ValueError(f"{what}: expected one value per sample, shape (1,) for a batch of "
                             f"1, got {tuple(v.shape)}")


def _distinct_buffers(tree: Any) -> Any:
    """``tree`` with repeated leaf objects copied: a donated argument may not hold one buffer
    twice (e.g. a state whose fields share one zero array)."""
    seen: set[int] = set()

    def once(x):
        if id(x) in seen:
            return jnp.copy(x)
        seen.add(id(x))
        return x

    return jax.tree_util.tree_map(once, tree)


def _find_multisteps(opt_state: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(opt_state,
                                       is_leaf=lambda x: isinstance(x, optax.MultiStepsState))
    return any(isinstance(x, optax.MultiStepsState) for x in leaves)


def _check_model_state(model: nnx.Module) -> None:
    """A model holding RNG streams (``nnx.Rngs`` state, e.g. ``nnx.RNN``'s default
    ``rngs=True``) cannot be trained by ``fit``, which keeps non-parameter state constant."""
    rng = jax.tree_util.tree_leaves(nnx.state(model, nnx.RngState))
    if rng:
        raise ValueError(
            f"model: {type(model).__name__} holds RNG state (nnx.Rngs streams, e.g. nnx.RNN's "
            "default rngs=True), which fit keeps constant between steps; build it without "
            "(nnx.RNN(cell, rngs=False), called with initial_carry=zeros) or train it in an "
            "nnx.jit loop")


def _check_model_options(model: nnx.Module, optimizer: Any, num_samples: int) -> None:
    """What the optimizer says it was built for (:func:`admm_jax._validation.model_options`:
    the activation, the readout, the training-set size of a per-sample state) matches the
    model and the data."""
    opts = checks.model_options(optimizer)
    if opts is None:
        return
    tx_name = opts.get("name", "the optimizer")
    n = opts.get("num_samples")
    if n is not None and n != num_samples:
        raise ValueError(f"optimizer: {tx_name} was built with num_samples={n}, but train_data "
                         f"has {num_samples} samples")
    from admm_jax.interop.flax_rnn import flax_cell_options
    from admm_jax.models.elman import ElmanRNN

    if isinstance(model, ElmanRNN):
        got = {"activation": model.activation, "many_to_many": model.many_to_many}
    else:
        mods = [m for _, m in nnx.iter_modules(model)]
        rnns = ([m for m in mods if isinstance(m, nnx.RNN)]
                 or [m for m in mods if isinstance(m, nnx.SimpleCell)])
        if len(rnns) != 1:
            return
        got = {"activation": flax_cell_options(rnns[0]).activation}
    for k, v in got.items():
        if k in opts and opts[k] != v:
            raise ValueError(f"optimizer: {tx_name} was built with {k}={opts[k]!r}, but the "
                             f"model has {k}={v!r}; build it with {tx_name}({k}={v!r})")


def _model_vocab(model: nnx.Module) -> int | None:
    """The token vocabulary of ``model``: an ElmanRNN's input size, or the size of its single
    ``nnx.Embed``; ``None`` when it has none (float inputs, or unknown)."""
    from admm_jax.models.elman import ElmanRNN

    if isinstance(model, ElmanRNN):
        return int(model.U[...].shape[1])
    embeds = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Embed)]
    return int(embeds[0].num_embeddings) if len(embeds) == 1 else None


def fit(
    model: nnx.Module,
    optimizer: optax.GradientTransformation,
    train_data: tuple[np.ndarray, np.ndarray],
    *,
    loss: str | losses.PerSample = "cross_entropy",
    metric: str | losses.PerSample | None = "accuracy",
    epochs: int | None = None,
    iterations: int | None = None,
    budget_seconds: float | None = None,
    batch_size: int = 32,
    seed: int = 0,
    evaluation: Evaluation | tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: Sequence[Callback] = (),
    model_kwargs: dict[str, Any] | None = None,
    step_key: bool = False,
    progress: bool | str = False,
    resume: Restored | None = None,
    on_divergence: str = "raise",
    validate: bool = True,
) -> History:
    r"""Train ``model`` in place with ``optimizer`` on ``train_data``; return the :class:`History`.

    Each step takes a mini-batch ``(x, y, indices)`` (:class:`admm_jax.data.BatchIterator`,
    reshuffled every epoch from ``seed``; a short last batch is dropped) and runs one jitted,
    ahead-of-time compiled step that donates the weights and the optimizer state. The loop knows
    no method: the step is chosen once from the optimizer's state
    (:func:`admm_jax.optimizers.needs_gradients`):

    * gradient optimizers: ``loss, g = value_and_grad(mean loss)(params)``, then
      ``tx.update(g, state, params)``;
    * a method that takes the batch (its state says ``takes_batch``, also inside
      ``optax.chain``): a forward pass gives the batch loss, then ``tx.update(None, state,
      params, inputs=x, targets=y, indices=indices)``; no gradient is computed.

    Every step records the batch ``loss`` and ``accuracy`` of the weights before the update,
    its ``seconds``, the training ``time`` so far, ``grad_norm`` (gradient optimizers) and every
    field the method reports in its state's ``diagnostics``
    (:func:`admm_jax.optimizers.diagnostics`). Evaluation (a plain forward pass, no
    ``key``/``model_kwargs``) runs before training, as :class:`Evaluation` says (default: every
    epoch) and at the end. Compile and evaluation time are excluded from ``time`` and from
    ``budget_seconds`` and stored in ``history.meta``.

    Training stops at the first of ``epochs``, ``iterations``, ``budget_seconds`` (at least one
    is required) or a callback setting ``loop.stop``. All three count the whole run: a run
    resumed with ``resume=`` stops at the same total epoch, iteration or training time as
    the uninterrupted run (``iterations=10`` after 4 done runs 6 more).

    Robustness: arguments and data are checked before anything is compiled (see Raises); every
    step also returns a finite flag, read with the step's metrics (no extra host sync), and a
    non-finite step is never applied, recorded or checkpointed (``on_divergence``). With a
    :class:`admm_jax.train.Checkpoint` callback, ``resume=load_checkpoint(...)`` resumes a run;
    the resumed run is bitwise the uninterrupted one on the same machine (the batch order
    depends only on ``(seed, epoch)``, per-step keys on ``(seed, iteration)``).

    Args:
      model: an ``nnx.Module`` called as ``model(x, **model_kwargs[, key=k])``; updated in
        place. Its ``nnx.Param`` s are trained.
      optimizer: any optax transformation (e.g. :func:`admm_jax.optimizers.get`). One that
        keeps per-sample state must be built for ``len(train_data[0])`` samples.
      train_data: ``(inputs, targets)`` arrays with the same leading size.
      loss: ``"cross_entropy"``, ``"mse"`` or ``f(outputs, targets) -> [B]`` per-sample losses.
      metric: ``"accuracy"``, ``None`` or ``f(outputs, targets) -> [B]``.
      epochs, iterations, budget_seconds: stopping rules (any combination), totals over the
        whole run including the steps recorded in the resumed history.
      batch_size: samples per step. seed: shuffling seed (and the base of per-step keys).
      evaluation: an :class:`Evaluation` (data and period), or just the ``(inputs, targets)``
        to evaluate every epoch; ``None``: no evaluation.
      callbacks: :class:`admm_jax.train.Callback` s; they see the :class:`Loop`.
      model_kwargs: extra model arguments passed as traced scalars (e.g. ``{"p_detach":
        0.25}``); callbacks may change their values between steps without recompiling.
      step_key: pass ``key=fold_in(key(seed), iteration)`` to the model in training steps
        (models that draw randomness, such as h-detach).
      progress: show a tqdm progress bar (a string is used as its label).
      resume: a :class:`admm_jax.train.Restored` (from :func:`admm_jax.train.load_checkpoint`,
        or built by hand): the weights, optimizer state, ``(epoch, step)`` position and
        history to continue from.
      on_divergence: what a non-finite step does (the loss, a metric, the gradient norm, a
        diagnostic or a new weight is NaN/inf; such a step is never applied, never recorded
        in the steps table and never checkpointed). ``"raise"`` (default): set the model to the
        last good weights and raise :class:`DivergenceError` (iteration, bad and last good
        metrics). ``"stop"``: the same, but return the history with ``meta["diverged_at"]``
        and ``meta["divergence_metrics"]`` (non-finite values as ``"nan"``/``"inf"``) instead
        of raising. A method that can retry a failed step does so inside its own update (a
        wrapper such as :func:`admm_jax.increase_rho_on_divergence`).
      validate: check the data's values before training (finite inputs and targets, class
        labels in range): one pass over the arrays on the host, none in the jitted step.

    Returns:
      The :class:`History` (also with ``meta``: ``compile_seconds``, ``eval_seconds``,
      ``uses_gradients``, ``batch_size``, ``seed``, ``num_samples``, ...).

    Examples:
      >>> import numpy as np, optax
      >>> from flax import nnx
      >>> from admm_jax import ElmanRNN, data, optimizers
      >>> from admm_jax.train import Evaluation, fit
      >>> x, y = data.adding(8, 64, seed=0)
      >>> model = ElmanRNN(2, 8, 1, rngs=nnx.Rngs(0))
      >>> h = fit(model, optimizers.get("adam", learning_rate=1e-2), (x, y[:, None]),
      ...         loss="mse", metric=None, iterations=20, batch_size=16,
      ...         evaluation=Evaluation((x, y[:, None]), every=10))
      >>> len(h.steps["loss"]), h.evals["iteration"], h.meta["uses_gradients"]
      (20, [0, 10, 20], True)

    Raises:
      ValueError: no stopping rule; non-positive counts or budgets; unknown loss, metric or
        policy names; data of mismatched sizes, non-finite values, labels out of range, or
        inputs/targets that do not fit the model; ``batch_size`` out of range; an ``opt_state``
        to resume that does not match ``optimizer.init`` of the model's parameters; an
        optimizer built for another number of samples, activation or readout than the data
        and the model (or a Flax RNN it cannot train); token ids outside the model's
        vocabulary; a model holding RNG streams; ``optax.MultiSteps`` around an optimizer that
        takes the batch.
      TypeError: a model that is not an ``nnx.Module``, an optimizer without ``init``/``update``,
        data that is not a pair of numeric arrays, an ``evaluation`` or ``resume`` of the wrong
        type.
      DivergenceError: a non-finite step with ``on_divergence="raise"``.
    """
    _check_arguments(model, optimizer, epochs, iterations, budget_seconds, on_divergence, seed)
    ev = _check_evaluation(evaluation, validate)
    resume = _check_resume(resume)
    x_train, y_train = _check_data("train_data", train_data, validate)
    loss_fn = losses.resolve("loss", loss, losses.LOSSES)
    metric_fn = losses.resolve("metric", metric, losses.METRICS)
    metric_name = "accuracy" if metric_fn is not None else "loss"

    it = BatchIterator(x_train, y_train, batch_size=batch_size, seed=seed, epochs=epochs,
                       start=resume.position)
    if resume.params is not None:
        nnx.update(model, resume.params)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("model: has no nnx.Param to train")
    apply = _apply_fn(graphdef, rest)
    _check_model_state(model)
    _check_model_options(model, optimizer, len(x_train))
    vocab = _model_vocab(model)
    for name, xy in (("train_data", (x_train, y_train)),
                     ("evaluation.data", None if ev is None else ev.data)):
        if xy is not None:
            if validate and vocab is not None:
                checks.token_ids(f"{name} inputs", xy[0], vocab)
            _check_against_model(name, *xy, apply, params, {}, loss_fn, loss, metric_fn,
                                 validate)
    opt_state = resume.opt_state
    if opt_state is not None:
        checks.same_structure("resume.opt_state", opt_state,
                              jax.eval_shape(optimizer.init, params),
                              what="optimizer.init(params) of this model")
    params = jax.tree_util.tree_map(jnp.copy, params)  # donated below; keep the model's own
    if opt_state is None:
        opt_state = optimizer.init(params)
    opt_state = _distinct_buffers(opt_state)
    use_gradients = needs_gradients(opt_state)
    if not use_gradients and _find_multisteps(opt_state):
        raise ValueError("optimizer: optax.MultiSteps accumulates gradients, but this optimizer "
                         "takes the batch instead of gradients; use a larger batch_size "
                         "instead of MultiSteps")
    kwargs = {k: jnp.asarray(v, jnp.result_type(float) if isinstance(v, float) else None)
              for k, v in (model_kwargs or {}).items()}
    base_key = jax.random.key(seed)

    # a method that reports the batch's loss under fit's own loss saves the forward pass
    method_loss = (not use_gradients and "batch_loss" in diagnostics(opt_state)
                   and isinstance(loss, str)
                   and (checks.model_options(optimizer) or {}).get("loss") == loss)
    step = make_train_step(graphdef, rest, optimizer, loss_fn, metric_fn,
                           use_gradients=use_gradients, step_key=step_key,
                           method_loss=method_loss)
    b0 = it.epoch_indices(it.position[0])[0][0]
    example = (params, opt_state, jnp.asarray(x_train[b0]), jnp.asarray(y_train[b0]),
               jnp.asarray(b0), kwargs, base_key, jnp.asarray(0, jnp.int32))
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*example).compile()
    compile_seconds = time.perf_counter() - t0
    eval_chunk = None if ev is None else make_eval_fn(graphdef, rest, loss_fn, metric_fn)

    history = History() if resume.history is None else resume.history
    done = len(history.steps.get("iteration", []))
    # iterations, like epochs and budget_seconds, counts the whole run, resumed parts included
    total = None if iterations is None else max(iterations - done, 0)
    if total is None and epochs is not None:
        total = max(epochs * it.steps_per_epoch - done, 0)
    loop = Loop(history=history, iteration=done, epoch=it.position[0], position=it.position,
                train_seconds=history.last("steps", "time", 0.0), params=params,
                opt_state=opt_state, model_kwargs=kwargs, total_iterations=total,
                budget_seconds=budget_seconds, metric_name=metric_name)
    history.meta.update(
        compile_seconds=history.meta.get("compile_seconds", 0.0) + compile_seconds,
        uses_gradients=use_gradients, batch_size=int(batch_size), seed=int(seed),
        num_samples=len(x_train), steps_per_epoch=it.steps_per_epoch,
        eval_samples=0 if ev is None else len(ev.data[0]),
    )
    eval_seconds = [history.meta.get("eval_seconds", 0.0)]
    cbs = list(callbacks)
    if progress:
        cbs.append(ProgressBar(progress if isinstance(progress, str) else None))

    def run_eval():
        if eval_chunk is None:
            return
        t = time.perf_counter()
        r = _evaluate(eval_chunk, loop.params, ev.data, ev.batch_size)
        eval_seconds[0] += time.perf_counter() - t
        row = {"iteration": loop.iteration, "epoch": loop.epoch, "time": loop.train_seconds, **r}
        history.append("evals", **row)
        for cb in cbs:
            cb.on_eval_end(loop, row)

    def last_good_row():
        if not history.steps.get("iteration"):
            return None
        return {k: col[-1] for k, col in history.steps.items()}

    def finish():
        history.meta["eval_seconds"] = eval_seconds[0]
        history.meta["iterations"] = loop.iteration
        history.meta["train_seconds"] = loop.train_seconds
        nnx.update(model, loop.params)

    for cb in cbs:
        cb.on_train_begin(loop)
    if not history.evals:
        run_eval()
    # a resumed run continues the evaluation period and the epoch means where they were
    last_eval_it = history.last("evals", "iteration", loop.iteration)
    last_eval_t = history.last("evals", "time", loop.train_seconds)
    every_epoch = ev is not None and ev.every is None and ev.every_seconds is None
    epoch_rows: list[dict[str, float]] = [
        {k: history.steps[k][i] for k in history.steps}
        for i, e in enumerate(history.steps.get("epoch", [])) if e == it.position[0]]
    batches = iter(it)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        while not loop.stop:
            if iterations is not None and loop.iteration >= iterations:
                break
            if budget_seconds is not None and loop.train_seconds >= budget_seconds:
                break
            t = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            loop.params, loop.opt_state, m, ok = compiled(
                loop.params, loop.opt_state, jnp.asarray(batch.data[0]),
                jnp.asarray(batch.data[1]), jnp.asarray(batch.indices), loop.model_kwargs,
                base_key, jnp.asarray(loop.iteration, jnp.int32))
            m, ok = jax.device_get((m, ok))
            m = {k: float(v) for k, v in m.items()}
            if not ok:  # not applied: loop.params / opt_state are the last good ones
                history.meta["diverged_at"] = loop.iteration + 1
                history.meta["divergence_metrics"] = {  # JSON-safe: "nan", "inf"
                    k: v if math.isfinite(v) else str(v) for k, v in m.items()}
                finish()
                err = DivergenceError(loop.iteration + 1, m, last_good_row(), history)
                for cb in cbs:
                    cb.on_divergence(loop, err)
                if on_divergence == "stop":
                    break
                raise err
            seconds = time.perf_counter() - t
            loop.iteration += 1
            loop.train_seconds += seconds
            loop.position = it.position
            row = {"iteration": loop.iteration, "epoch": batch.epoch, "seconds": seconds,
                   "time": loop.train_seconds, **m}
            history.append("steps", **row)
            epoch_rows.append(row)
            if it.position[0] != batch.epoch:  # epoch finished
                erow = {"epoch": batch.epoch, "iteration": loop.iteration,
                        "time": loop.train_seconds,
                        **{k: float(np.mean([r[k] for r in epoch_rows])) for k in m}}
                epoch_rows = []
                history.append("epochs", **erow)
                loop.epoch = it.position[0]
                if every_epoch:
                    run_eval()
                    last_eval_it, last_eval_t = loop.iteration, loop.train_seconds
                for cb in cbs:
                    cb.on_epoch_end(loop, erow)
            due = ev is not None and (
                (ev.every is not None and loop.iteration - last_eval_it >= ev.every)
                or (ev.every_seconds is not None
                    and loop.train_seconds - last_eval_t >= ev.every_seconds))
            if due:
                run_eval()
                last_eval_it, last_eval_t = loop.iteration, loop.train_seconds
            # last, so that a checkpoint written here holds this step's epoch row and eval
            for cb in cbs:
                cb.on_step_end(loop, row)
        if history.last("evals", "iteration", None) != loop.iteration:
            run_eval()
    finish()
    for cb in cbs:
        cb.on_train_end(loop)
    return history


def _check_arguments(model, optimizer, epochs, iterations, budget_seconds, on_divergence,
                     seed) -> None:
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model: expected an nnx.Module, got {type(model).__name__}")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer: expected an optax GradientTransformation, got "
                        f"{type(optimizer).__name__}")
    if epochs is None and iterations is None and budget_seconds is None:
        raise ValueError("epochs, iterations, budget_seconds: give at least one stopping rule")
    for name, v in (("epochs", epochs), ("iterations", iterations)):
        checks.positive_int(name, v, allow_none=True)
    checks.positive_number("budget_seconds", budget_seconds, allow_none=True)
    checks.one_of("on_divergence", on_divergence, DIVERGENCE_POLICIES)
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {seed!r}")


def _check_evaluation(evaluation: Any, validate: bool) -> Evaluation | None:
    """``evaluation`` as an :class:`Evaluation` with checked data and periods."""
    if evaluation is None:
        return None
    if not isinstance(evaluation, Evaluation):
        if isinstance(evaluation, tuple | list) and len(evaluation) == 2:
            evaluation = Evaluation(tuple(evaluation))
        else:
            raise TypeError(f"evaluation: expected an Evaluation or a pair (inputs, targets), "
                            f"got {type(evaluation).__name__}")
    checks.positive_int("evaluation.every", evaluation.every, allow_none=True)
    checks.positive_number("evaluation.every_seconds", evaluation.every_seconds, allow_none=True)
    checks.positive_int("evaluation.batch_size", evaluation.batch_size)
    return evaluation._replace(data=_check_data("evaluation.data", evaluation.data, validate))


def _check_resume(resume: Any) -> Restored:
    if resume is None:
        return Restored()
    if not isinstance(resume, Restored):
        raise TypeError(f"resume: expected a Restored (load_checkpoint's result), got "
                        f"{type(resume).__name__}")
    start = resume.position
    if not (isinstance(start, tuple | list) and len(start) == 2
            and all(isinstance(v, int | np.integer) for v in start)):
        raise TypeError(f"resume.position: expected a pair of ints (epoch, step), got {start!r}")
    if resume.history is not None and not isinstance(resume.history, History):
        raise TypeError(f"resume.history: expected a History, got "
                        f"{type(resume.history).__name__}")
    return resume._replace(position=tuple(int(v) for v in start))
