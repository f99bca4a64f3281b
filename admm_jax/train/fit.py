"""One training loop for gradient optimizers and ADMMiRNN alike."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from admm_jax.data import BatchIterator
from admm_jax.optimizers import admm_state, needs_gradients, preconditioned_state
from admm_jax.train import losses
from admm_jax.train.callbacks import Callback, ProgressBar
from admm_jax.train.history import History


class Loop:
    """The state of a :func:`fit` run, as callbacks see it.

    Attributes: ``history``; ``iteration`` (steps done); ``epoch``; ``position`` ``(epoch,
    step)`` where the next batch comes from; ``train_seconds`` (training steps only);
    ``params``, ``opt_state`` (current); ``model_kwargs`` (traced scalars passed to the model,
    change them with :meth:`set_model_kwarg`); ``stop`` (set True to end the run);
    ``total_iterations``, ``budget_seconds``; ``metric_name``.
    """

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)
        self.stop = False

    def set_model_kwarg(self, name: str, value: Any) -> None:
        """Change a traced model argument (same shape and dtype, so no recompilation)."""
        if name not in self.model_kwargs:
            raise KeyError(f"name: {name!r} is not one of model_kwargs {sorted(self.model_kwargs)}")
        old = self.model_kwargs[name]
        self.model_kwargs[name] = jnp.asarray(value, old.dtype).reshape(old.shape)


def _apply_fn(graphdef, rest):
    def apply(params, inputs, kwargs, key):
        model = nnx.merge(graphdef, params, rest)
        kw = dict(kwargs)
        if key is not None:
            kw["key"] = key
        return model(inputs, **kw)

    return apply


def make_train_step(graphdef, rest, tx: optax.GradientTransformation, loss_fn, metric_fn, *,
                    use_gradients: bool, step_key: bool):
    """The (unjitted) training step ``(params, opt_state, x, y, indices, kwargs, key, it) ->
    (params, opt_state, metrics)``.

    With ``use_gradients`` the loss is differentiated (``jax.value_and_grad``) and
    ``tx.update(grads, state, params)`` is called; without, only a forward pass of the current
    weights is made (for the batch loss and metric) and ``tx.update(None, state, params,
    inputs=x, targets=y, indices=indices)`` computes the step, so no backward pass is ever
    traced.
    """
    apply = _apply_fn(graphdef, rest)

    def step(params, opt_state, x, y, indices, kwargs, key, iteration):
        k = jax.random.fold_in(key, iteration) if step_key else None
        if use_gradients:
            def objective(p):
                out = apply(p, x, kwargs, k)
                return loss_fn(out, y).mean(), out

            (loss, out), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            extra = {"grad_norm": optax.tree.norm(grads)}
        else:
            out = apply(params, x, kwargs, None)
            loss = loss_fn(out, y).mean()
            updates, opt_state = tx.update(None, opt_state, params, inputs=x, targets=y,
                                           indices=indices)
            d = admm_state(opt_state)
            extra = {} if d is None else {
                "r1": d.diagnostics.r1, "r2": d.diagnostics.r2, "r3": d.diagnostics.r3,
                "dual_residual": d.diagnostics.dual_residual,
                "lagrangian": d.diagnostics.lagrangian,
            }
            pc = preconditioned_state(opt_state)
            if pc is not None:
                extra["step_norm"] = jnp.linalg.norm(pc.step_norm)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, **extra}
        if metric_fn is not None:
            metrics["accuracy"] = metric_fn(out, y).mean()
        return params, opt_state, metrics

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


def _check_data(name: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise TypeError(f"{name}: expected a pair (inputs, targets), got {type(data).__name__}")
    x, y = (np.asarray(a) for a in data)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{name}: expected inputs and targets of the same nonzero length, got "
                         f"{x.shape} and {y.shape}")
    return x, y


def fit(
    model: nnx.Module,
    optimizer: optax.GradientTransformation,
    train_data: tuple[np.ndarray, np.ndarray],
    *,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    loss: str | losses.PerSample = "cross_entropy",
    metric: str | losses.PerSample | None = "accuracy",
    epochs: int | None = None,
    iterations: int | None = None,
    budget_seconds: float | None = None,
    batch_size: int = 32,
    seed: int = 0,
    eval_every: int | None = None,
    eval_every_seconds: float | None = None,
    eval_batch_size: int = 500,
    callbacks: Sequence[Callback] = (),
    model_kwargs: dict[str, Any] | None = None,
    step_key: bool = False,
    progress: bool | str = False,
    opt_state: Any = None,
    start: tuple[int, int] = (0, 0),
    history: History | None = None,
) -> History:
    r"""Train ``model`` in place with ``optimizer`` on ``train_data``; return the :class:`History`.

    Each step takes a mini-batch ``(x, y, indices)`` (:class:`admm_jax.data.BatchIterator`,
    reshuffled every epoch from ``seed``; a short last batch is dropped) and runs one jitted,
    ahead-of-time compiled step that donates the weights and the optimizer state (ADMMiRNN's
    per-sample multipliers are updated in place, not copied). The step is chosen once from the
    optimizer's state (:func:`admm_jax.optimizers.needs_gradients`):

    * gradient optimizers: ``loss, g = value_and_grad(mean loss)(params)``, then
      ``tx.update(g, state, params)``;
    * ADMMiRNN (an ``ADMMiRNNState`` anywhere in the state, also inside ``optax.chain``): a
      forward pass gives the batch loss, then ``tx.update(None, state, params, inputs=x,
      targets=y, indices=indices)``; no gradient is computed.

    Every step records the batch ``loss`` and ``accuracy`` of the weights before the update,
    its ``seconds``, the training ``time`` so far, and ``grad_norm`` or the ADMM residuals
    (``r1, r2, r3, dual_residual, lagrangian``). Evaluation (a plain forward pass, no
    ``key``/``model_kwargs``) runs before training, every ``eval_every`` steps or
    ``eval_every_seconds`` of training time (default: every epoch) and at the end. Compile and
    evaluation time are excluded from ``time`` and from ``budget_seconds`` and stored in
    ``history.meta``.

    Training stops at the first of ``epochs``, ``iterations``, ``budget_seconds`` (at least one
    is required) or a callback setting ``loop.stop``.

    Args:
      model: an ``nnx.Module`` called as ``model(x, **model_kwargs[, key=k])``; updated in
        place. Its ``nnx.Param`` s are trained.
      optimizer: any optax transformation (e.g. :func:`admm_jax.optimizers.get`); ADMMiRNN
        must be built with ``num_samples=len(train_data[0])``.
      train_data, eval_data: ``(inputs, targets)`` arrays with the same leading size.
      loss: ``"cross_entropy"``, ``"mse"`` or ``f(outputs, targets) -> [B]`` per-sample losses.
      metric: ``"accuracy"``, ``None`` or ``f(outputs, targets) -> [B]``.
      epochs, iterations, budget_seconds: stopping rules (any combination).
      batch_size: samples per step. seed: shuffling seed (and the base of per-step keys).
      eval_every, eval_every_seconds: evaluation period in steps or training seconds.
      eval_batch_size: samples per evaluation forward pass.
      callbacks: :class:`admm_jax.train.Callback` s.
      model_kwargs: extra model arguments passed as traced scalars (e.g. ``{"p_detach":
        0.25}``); callbacks may change their values between steps without recompiling.
      step_key: pass ``key=fold_in(key(seed), iteration)`` to the model in training steps
        (models that draw randomness, such as h-detach).
      progress: show a tqdm progress bar (a string is used as its label).
      opt_state: resume from this optimizer state (default ``optimizer.init(params)``).
      start: ``(epoch, step)`` to resume from. history: a history to append to.

    Returns:
      The :class:`History` (also with ``meta``: ``compile_seconds``, ``eval_seconds``,
      ``uses_gradients``, ``batch_size``, ``seed``, ``num_samples``, ...).

    Example:
      >>> import numpy as np, optax
      >>> from flax import nnx
      >>> from admm_jax import ElmanRNN, data, optimizers
      >>> from admm_jax.train import fit
      >>> x, y = data.adding(8, 64, seed=0)
      >>> model = ElmanRNN(2, 8, 1, rngs=nnx.Rngs(0))
      >>> h = fit(model, optimizers.get("adam", learning_rate=1e-2), (x, y[:, None]),
      ...         loss="mse", metric=None, iterations=20, batch_size=16)
      >>> len(h.steps["loss"]), h.meta["uses_gradients"]
      (20, True)

    Raises:
      ValueError: no stopping rule; data of mismatched sizes; ``batch_size`` out of range.
    """
    if epochs is None and iterations is None and budget_seconds is None:
        raise ValueError("epochs, iterations, budget_seconds: give at least one stopping rule")
    for name, v in (("epochs", epochs), ("iterations", iterations), ("eval_every", eval_every)):
        if v is not None and not (isinstance(v, int | np.integer) and v >= 1):
            raise ValueError(f"{name}: expected a positive int or None, got {v!r}")
    for name, v in (("budget_seconds", budget_seconds),
                    ("eval_every_seconds", eval_every_seconds)):
        if v is not None and not (isinstance(v, int | float) and v > 0):
            raise ValueError(f"{name}: expected a positive number or None, got {v!r}")
    x_train, y_train = _check_data("train_data", train_data)
    eval_xy = None if eval_data is None else _check_data("eval_data", eval_data)
    loss_fn = losses.resolve("loss", loss, losses.LOSSES)
    metric_fn = losses.resolve("metric", metric, losses.METRICS)
    metric_name = "accuracy" if metric_fn is not None else "loss"

    it = BatchIterator(x_train, y_train, batch_size=batch_size, seed=seed, epochs=epochs,
                       start=start)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree_util.tree_map(jnp.copy, params)  # donated below; keep the model's own
    if opt_state is None:
        opt_state = optimizer.init(params)
    use_gradients = needs_gradients(opt_state)
    kwargs = {k: jnp.asarray(v, jnp.result_type(float) if isinstance(v, float) else None)
              for k, v in (model_kwargs or {}).items()}
    base_key = jax.random.key(seed)

    step = make_train_step(graphdef, rest, optimizer, loss_fn, metric_fn,
                           use_gradients=use_gradients, step_key=step_key)
    b0 = it.epoch_indices(it.position[0])[0][0]
    example = (params, opt_state, jnp.asarray(x_train[b0]), jnp.asarray(y_train[b0]),
               jnp.asarray(b0), kwargs, base_key, jnp.asarray(0, jnp.int32))
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*example).compile()
    compile_seconds = time.perf_counter() - t0
    eval_chunk = None if eval_xy is None else make_eval_fn(graphdef, rest, loss_fn, metric_fn)

    history = History() if history is None else history
    done = len(history.steps.get("iteration", []))
    total = iterations
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
        eval_samples=0 if eval_xy is None else len(eval_xy[0]),
    )
    eval_seconds = [history.meta.get("eval_seconds", 0.0)]
    cbs = list(callbacks)
    if progress:
        cbs.append(ProgressBar(progress if isinstance(progress, str) else None))

    def run_eval():
        if eval_chunk is None:
            return
        t = time.perf_counter()
        r = _evaluate(eval_chunk, loop.params, eval_xy, eval_batch_size)
        eval_seconds[0] += time.perf_counter() - t
        row = {"iteration": loop.iteration, "epoch": loop.epoch, "time": loop.train_seconds, **r}
        history.append("evals", **row)
        for cb in cbs:
            cb.on_eval_end(loop, row)

    for cb in cbs:
        cb.on_train_begin(loop)
    if not history.evals:
        run_eval()
    last_eval_it, last_eval_t = loop.iteration, loop.train_seconds
    epoch_rows: list[dict[str, float]] = []
    steps_this_run = 0
    batches = iter(it)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        while not loop.stop:
            if iterations is not None and steps_this_run >= iterations:
                break
            if budget_seconds is not None and loop.train_seconds >= budget_seconds:
                break
            t = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            loop.params, loop.opt_state, m = compiled(
                loop.params, loop.opt_state, jnp.asarray(batch.data[0]),
                jnp.asarray(batch.data[1]), jnp.asarray(batch.indices), loop.model_kwargs,
                base_key, jnp.asarray(loop.iteration, jnp.int32))
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            seconds = time.perf_counter() - t
            loop.iteration += 1
            steps_this_run += 1
            loop.train_seconds += seconds
            loop.position = it.position
            row = {"iteration": loop.iteration, "epoch": batch.epoch, "seconds": seconds,
                   "time": loop.train_seconds, **m}
            history.append("steps", **row)
            epoch_rows.append(row)
            for cb in cbs:
                cb.on_step_end(loop, row)
            if it.position[0] != batch.epoch:  # epoch finished
                erow = {"epoch": batch.epoch, "iteration": loop.iteration,
                        "time": loop.train_seconds,
                        **{k: float(np.mean([r[k] for r in epoch_rows]))
                           for k in m}}
                epoch_rows = []
                history.append("epochs", **erow)
                loop.epoch = it.position[0]
                if eval_every is None and eval_every_seconds is None:
                    run_eval()
                    last_eval_it, last_eval_t = loop.iteration, loop.train_seconds
                for cb in cbs:
                    cb.on_epoch_end(loop, erow)
            due = ((eval_every is not None and loop.iteration - last_eval_it >= eval_every)
                   or (eval_every_seconds is not None
                       and loop.train_seconds - last_eval_t >= eval_every_seconds))
            if due:
                run_eval()
                last_eval_it, last_eval_t = loop.iteration, loop.train_seconds
            if not math.isfinite(m["loss"]):
                history.meta["diverged_at"] = loop.iteration
                break
        if history.last("evals", "iteration", None) != loop.iteration:
            run_eval()
    history.meta["eval_seconds"] = eval_seconds[0]
    history.meta["iterations"] = loop.iteration
    history.meta["train_seconds"] = loop.train_seconds
    nnx.update(model, loop.params)
    for cb in cbs:
        cb.on_train_end(loop)
    return history
