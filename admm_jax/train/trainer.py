"""A training run advanced step by step: the checks, the compiled step and the records that
:func:`admm_jax.train.fit` drives, and that side-by-side benchmarks drive round-robin."""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from admm_jax import _validation as checks
from admm_jax.data import BatchIterator
from admm_jax.optimizers import (
    diagnostics,
    keeps_itself,
    needs_gradients,
    takes_batch_somewhere,
)
from admm_jax.train import losses
from admm_jax.train.callbacks import Loop
from admm_jax.train.checkpoint import Restored
from admm_jax.train.history import History


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
    ``tx.update(grads, state, params)`` is called (with ``inputs=x, targets=y,
    indices=indices`` too when a transformation in the state takes the batch,
    :func:`admm_jax.optimizers.takes_batch_somewhere`: e.g. K-FAC after a clip in a chain);
    without, only a forward pass of the current weights is made (for the batch loss and
    metric) and ``tx.update(None, state, params, inputs=x, targets=y, indices=indices)``
    computes the step, so no backward pass is traced here. With ``method_loss`` (a method
    that reports ``batch_loss``, the batch's loss before its step under ``loss_fn``, in its
    diagnostics) not even that: the step records the
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
            batch = ({"inputs": x, "targets": y, "indices": indices}
                     if takes_batch_somewhere(opt_state) else {})
            updates, new_opt_state = tx.update(grads, opt_state, params, **batch)
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


def _check_gradient_free_first(opt_state: Any) -> None:
    """A method that takes the batch and never reads gradients (``takes_batch`` without
    ``computes_gradients``) must be what first receives them: a transformation before it (a
    clip in ``optax.chain``, ``optax.MultiSteps``' accumulation) would act on gradients it
    ignores, silently."""
    if not needs_gradients(opt_state):  # it (or a wrapper passing the batch on) comes first
        return
    for node in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda n: getattr(type(n), "takes_batch", False) is True):
        kind = type(node)
        if getattr(kind, "takes_batch", False) is True and \
                getattr(kind, "computes_gradients", False) is not True:
            wrapped = ("optax.MultiSteps" if _nodes_of(opt_state, optax.MultiStepsState)
                       else "a transformation before it (optax.chain)")
            raise ValueError(f"optimizer: {kind.__name__} takes the batch instead of "
                             f"gradients, so {wrapped} would act on gradients it never reads; "
                             "use it alone or first in a chain (instead of MultiSteps: a "
                             "larger batch_size)")


def _nodes_of(tree: Any, kind: type) -> list:
    return [x for x in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, kind))
            if isinstance(x, kind)]


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


def method_loss_name(optimizer: Any, opt_state: Any) -> str | None:
    """The loss a method's ``batch_loss`` is measured with: its state's ``loss_name``, else
    the ``loss`` it was registered with."""
    named = [getattr(type(n), "loss_name", None) for n in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda n: hasattr(type(n), "loss_name"))]
    named = [n for n in named if n is not None]
    if named:
        return named[0]
    return (checks.model_options(optimizer) or {}).get("loss")


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

class Trainer:
    r"""One model and optimizer, advanced a step at a time: the run :func:`fit` drives.

    Construction checks the arguments and data (before anything is compiled), splits the model
    into its ``nnx.Param`` s and the rest, initialises (or takes ``resume``'s) optimizer state
    and compiles the step of :func:`make_train_step` once, ahead of time, with the weights and
    the optimizer state donated. The loop knows no method: the step is chosen from the
    optimizer's state (:func:`admm_jax.optimizers.needs_gradients`). Each :meth:`step` takes the
    next mini-batch of a :class:`admm_jax.data.BatchIterator` (reshuffled every epoch from
    ``seed``), runs the compiled step, reads its metrics and finite flag (one host sync) and
    appends a row to ``history.steps`` (and to ``history.epochs`` when an epoch ends). The
    training time counts only the steps: compilation and :meth:`evaluate` are excluded.

    :func:`fit` is this plus stopping rules, evaluation periods and callbacks. Several trainers
    stepped in turn, the one furthest behind in training time first, compare methods on the
    same data with the same machine noise (``benchmarks/time_to_target.py``).

    Args:
      model: an ``nnx.Module`` called as ``model(x, **model_kwargs[, key=k])``. Its
        ``nnx.Param`` s are trained; :meth:`finish` writes them back into it.
      optimizer: any optax transformation; one that keeps per-sample state must be built for
        ``len(train_data[0])`` samples.
      train_data: ``(inputs, targets)`` arrays with the same leading size.
      loss: ``"cross_entropy"``, ``"mse"`` or ``f(outputs, targets) -> [B]``.
      metric: ``"accuracy"``, ``None`` or ``f(outputs, targets) -> [B]``.
      batch_size: samples per step (a short last batch of an epoch is dropped).
      seed: the shuffling seed (and the base of per-step keys).
      epochs: the epochs the batch iterator yields (``None``: without end).
      evaluation_data: ``(inputs, targets)`` that :meth:`evaluate` uses by default; checked
        against the model with the training data.
      model_kwargs: extra model arguments passed as traced scalars.
      step_key: pass ``key=fold_in(key(seed), iteration)`` to the model in training steps.
      resume: a :class:`admm_jax.train.Restored` to continue from.
      validate: check the data's values (finite, labels in range) on the host.

    Attributes:
      loop: the :class:`admm_jax.train.Loop` (weights, optimizer state, iteration, epoch,
        training seconds, history) that callbacks see.
      history: ``loop.history``.
      uses_gradients: whether the step differentiates the loss.
      steps_per_epoch: full batches per epoch.
      compiled_step: the compiled :func:`make_train_step` ``(params, opt_state, x, y,
        indices, model_kwargs, key, iteration) -> (params, opt_state, metrics, ok)``, weights
        and state donated.
      key: the base key of per-step keys (``jax.random.key(seed)``).

    Examples:
      >>> import optax
      >>> from flax import nnx
      >>> from admm_jax import ElmanRNN, data
      >>> from admm_jax.train import Trainer
      >>> x, y = data.adding(8, 64, seed=0)
      >>> runs = {name: Trainer(ElmanRNN(2, 8, 1, rngs=nnx.Rngs(0)), tx, (x, y[:, None]),
      ...                       loss="mse", metric=None, batch_size=16)
      ...         for name, tx in (("adam", optax.adam(1e-2)), ("sgd", optax.sgd(1e-2)))}
      >>> for _ in range(3):  # round-robin: the run furthest behind in time goes next
      ...     run = min(runs.values(), key=lambda r: r.loop.train_seconds)
      ...     run.run(4)
      4
      4
      4
      >>> sorted(r.loop.iteration for r in runs.values())
      [4, 8]

    Raises:
      The errors :func:`fit` documents for the model, optimizer, data and ``resume``;
      :class:`DivergenceError` from :meth:`step` and :meth:`run`.
    """

    def __init__(
        self,
        model: nnx.Module,
        optimizer: optax.GradientTransformation,
        train_data: tuple[np.ndarray, np.ndarray],
        *,
        loss: str | losses.PerSample = "cross_entropy",
        metric: str | losses.PerSample | None = "accuracy",
        batch_size: int = 32,
        seed: int = 0,
        epochs: int | None = None,
        evaluation_data: tuple[np.ndarray, np.ndarray] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        step_key: bool = False,
        resume: Restored | None = None,
        validate: bool = True,
    ):
        check_model_and_optimizer(model, optimizer)
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
            raise TypeError(f"seed: expected an int, got {seed!r}")
        resume = _check_resume(resume)
        x_train, y_train = _check_data("train_data", train_data, validate)
        if evaluation_data is not None:
            evaluation_data = _check_data("evaluation.data", evaluation_data, validate)
        self.loss_fn = losses.resolve("loss", loss, losses.LOSSES)
        self.metric_fn = losses.resolve("metric", metric, losses.METRICS)
        self.model, self.evaluation_data = model, evaluation_data

        self.iterator = BatchIterator(x_train, y_train, batch_size=batch_size, seed=seed,
                                      epochs=epochs, start=resume.position)
        self.steps_per_epoch = self.iterator.steps_per_epoch
        if resume.params is not None:
            nnx.update(model, resume.params)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        if not jax.tree_util.tree_leaves(params):
            raise ValueError("model: has no nnx.Param to train")
        self._graphdef, self._rest = graphdef, rest
        apply = _apply_fn(graphdef, rest)
        _check_model_state(model)
        _check_model_options(model, optimizer, len(x_train))
        vocab = _model_vocab(model)
        for name, xy in (("train_data", (x_train, y_train)),
                         ("evaluation.data", evaluation_data)):
            if xy is not None:
                if validate and vocab is not None:
                    checks.token_ids(f"{name} inputs", xy[0], vocab)
                _check_against_model(name, *xy, apply, params, {}, self.loss_fn, loss,
                                     self.metric_fn, validate)
        opt_state = resume.opt_state
        if opt_state is not None:
            checks.same_structure("resume.opt_state", opt_state,
                                  jax.eval_shape(optimizer.init, params),
                                  what="optimizer.init(params) of this model")
        params = jax.tree_util.tree_map(jnp.copy, params)  # donated; keep the model's own
        if opt_state is None:
            opt_state = optimizer.init(params)
        opt_state = _distinct_buffers(opt_state)
        self.uses_gradients = needs_gradients(opt_state)
        _check_gradient_free_first(opt_state)
        kwargs = {k: jnp.asarray(v, jnp.result_type(float) if isinstance(v, float) else None)
                  for k, v in (model_kwargs or {}).items()}
        self.key = jax.random.key(seed)

        # a method that reports the batch's loss under this loss saves the forward pass
        built_for = method_loss_name(optimizer, opt_state)
        if isinstance(loss, str) and built_for is not None and built_for != loss:
            raise ValueError(f"optimizer: it was built with loss={built_for!r}, but the "
                             f"training loss is {loss!r}; build it with loss={loss!r}")
        method_loss = (not self.uses_gradients and "batch_loss" in diagnostics(opt_state)
                       and isinstance(loss, str) and built_for == loss)
        step = make_train_step(graphdef, rest, optimizer, self.loss_fn, self.metric_fn,
                               use_gradients=self.uses_gradients, step_key=step_key,
                               method_loss=method_loss)
        b0 = self.iterator.epoch_indices(self.iterator.position[0])[0][0]
        example = (params, opt_state, jnp.asarray(x_train[b0]), jnp.asarray(y_train[b0]),
                   jnp.asarray(b0), kwargs, self.key, jnp.asarray(0, jnp.int32))
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # CPU backends cannot donate: nothing to report
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            self.compiled_step = jax.jit(step, donate_argnums=(0, 1)).lower(*example).compile()
        compile_seconds = time.perf_counter() - t0
        self._eval_chunk = None

        history = History() if resume.history is None else resume.history
        done = len(history.steps.get("iteration", []))
        self.loop = Loop(history=history, iteration=done, epoch=self.iterator.position[0],
                         position=self.iterator.position,
                         train_seconds=history.last("steps", "time", 0.0), params=params,
                         opt_state=opt_state, model_kwargs=kwargs, total_iterations=None,
                         budget_seconds=None,
                         metric_name="accuracy" if self.metric_fn is not None else "loss")
        self.history = history
        history.meta.update(
            compile_seconds=history.meta.get("compile_seconds", 0.0) + compile_seconds,
            uses_gradients=self.uses_gradients, batch_size=int(batch_size), seed=int(seed),
            num_samples=len(x_train), steps_per_epoch=self.steps_per_epoch,
            eval_samples=0 if evaluation_data is None else len(evaluation_data[0]),
            eval_seconds=history.meta.get("eval_seconds", 0.0),
        )
        # a resumed run continues the epoch means where they were
        self._epoch_rows = [{k: history.steps[k][i] for k in history.steps}
                            for i, e in enumerate(history.steps.get("epoch", []))
                            if e == self.iterator.position[0]]
        self._batches = iter(self.iterator)

    def step(self) -> tuple[dict[str, float] | None, dict[str, float] | None]:
        """Run one step; return ``(row, epoch_row)``.

        ``row`` is the step's record (``iteration``, ``epoch``, ``seconds``, ``time`` and the
        step's metrics), ``epoch_row`` the epoch's means when this step ended an epoch (else
        ``None``); both are also appended to :attr:`history`. ``(None, None)`` when the
        iterator's ``epochs`` are done.

        Raises:
          DivergenceError: the step was not finite. It was not applied: :attr:`loop` and the
            model hold the last good weights, ``history.meta`` says where it failed.
        """
        loop, history = self.loop, self.history
        t = time.perf_counter()
        batch = next(self._batches, None)
        if batch is None:
            return None, None
        loop.params, loop.opt_state, m, ok = self.compiled_step(
            loop.params, loop.opt_state, jnp.asarray(batch.data[0]), jnp.asarray(batch.data[1]),
            jnp.asarray(batch.indices), loop.model_kwargs, self.key,
            jnp.asarray(loop.iteration, jnp.int32))
        m, ok = jax.device_get((m, ok))
        m = {k: float(v) for k, v in m.items()}
        if not ok:  # not applied: loop.params / opt_state are the last good ones
            history.meta["diverged_at"] = loop.iteration + 1
            history.meta["divergence_metrics"] = {  # JSON-safe: "nan", "inf"
                k: v if math.isfinite(v) else str(v) for k, v in m.items()}
            last_good = ({k: col[-1] for k, col in history.steps.items()}
                         if history.steps.get("iteration") else None)
            self.finish()
            raise DivergenceError(loop.iteration + 1, m, last_good, history)
        seconds = time.perf_counter() - t
        loop.iteration += 1
        loop.train_seconds += seconds
        loop.position = self.iterator.position
        row = {"iteration": loop.iteration, "epoch": batch.epoch, "seconds": seconds,
               "time": loop.train_seconds, **m}
        history.append("steps", **row)
        self._epoch_rows.append(row)
        epoch_row = None
        if loop.position[0] != batch.epoch:  # epoch finished
            epoch_row = {"epoch": batch.epoch, "iteration": loop.iteration,
                         "time": loop.train_seconds,
                         **{k: float(np.mean([r[k] for r in self._epoch_rows])) for k in m}}
            self._epoch_rows = []
            history.append("epochs", **epoch_row)
            loop.epoch = loop.position[0]
        return row, epoch_row

    def run(self, steps: int) -> int:
        """Run up to ``steps`` steps (fewer when the iterator's epochs end); return how many ran.

        Raises:
          DivergenceError: as :meth:`step`.
        """
        checks.positive_int("steps", steps)
        for done in range(steps):
            if self.step()[0] is None:
                return done
        return steps

    def evaluate(self, data: tuple[np.ndarray, np.ndarray] | None = None,
                 batch_size: int = 500) -> dict[str, float]:
        """Evaluate the current weights (a plain forward pass) and append the row to
        ``history.evals``; return the row (``iteration``, ``epoch``, ``time``, ``loss`` and the
        metric). ``data`` defaults to ``evaluation_data``; the seconds spent count in
        ``history.meta["eval_seconds"]``, not in the training time."""
        data = self.evaluation_data if data is None else data
        if data is None:
            raise ValueError("data: no evaluation_data was given to the Trainer; pass the "
                             "(inputs, targets) to evaluate on")
        t = time.perf_counter()
        if self._eval_chunk is None:
            self._eval_chunk = make_eval_fn(self._graphdef, self._rest, self.loss_fn,
                                            self.metric_fn)
        r = _evaluate(self._eval_chunk, self.loop.params, data, batch_size)
        self.history.meta["eval_seconds"] += time.perf_counter() - t
        loop = self.loop
        row = {"iteration": loop.iteration, "epoch": loop.epoch, "time": loop.train_seconds, **r}
        self.history.append("evals", **row)
        return row

    def finish(self) -> None:
        """Write the current weights into the model and the run's totals into
        ``history.meta`` (``iterations``, ``train_seconds``)."""
        self.history.meta["iterations"] = self.loop.iteration
        self.history.meta["train_seconds"] = self.loop.train_seconds
        nnx.update(self.model, self.loop.params)


def check_model_and_optimizer(model: Any, optimizer: Any) -> None:
    """A ``TypeError`` naming the argument unless ``model`` is an ``nnx.Module`` and
    ``optimizer`` has ``init`` and ``update``."""
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model: expected an nnx.Module, got {type(model).__name__}")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer: expected an optax GradientTransformation, got "
                        f"{type(optimizer).__name__}")

