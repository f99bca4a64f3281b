"""A training run advanced step by step: what [`admm_jax.train.fit`][] drives, and what
side-by-side benchmarks drive round-robin."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from admm_jax import _validation as validation
from admm_jax.data import BatchIterator
from admm_jax.optimizers import diagnostics, needs_gradients
from admm_jax.train import checks, losses
from admm_jax.train.callbacks import Loop
from admm_jax.train.checkpoint import Restored
from admm_jax.train.history import History
from admm_jax.train.steps import (
    apply_fn,
    compile_train_step,
    evaluate_in_chunks,
    make_eval_fn,
    make_train_step,
)


class DivergenceError(FloatingPointError):
    """A training step produced a non-finite loss, metric, residual or weight.

    Attributes:
      iteration: the 1-based iteration whose step failed (not applied).
      metrics: that step's metrics (with the non-finite values).
      last_good: the metrics of the last good step (``None`` when the first step failed).
      history: the run's [`History`][admm_jax.History] up to the last good step.
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


@dataclasses.dataclass(frozen=True)
class Stop:
    """When a run ends: at the first of ``epochs``, ``iterations`` and ``budget_seconds`` of
    training time, or when a callback sets ``loop.stop``. Each is a total over the whole run:
    a run resumed after 4 iterations with ``iterations=10`` runs 6 more. ``Stop()`` never ends
    a run by itself (its caller stops stepping it).

    Examples:
      >>> Stop(iterations=10).iterations_left(done=4, steps_per_epoch=3)
      6
      >>> Stop(epochs=2).iterations_left(done=4, steps_per_epoch=3)
      2
    """

    epochs: int | None = None
    iterations: int | None = None
    budget_seconds: float | None = None

    def __post_init__(self):
        for name in ("epochs", "iterations"):
            value = validation.positive_int(name, getattr(self, name), allow_none=True)
            object.__setattr__(self, name, value)
        validation.positive_number("budget_seconds", self.budget_seconds, allow_none=True)

    def reached(self, loop: Loop) -> bool:
        """Whether the run of ``loop`` is over."""
        return (loop.stop
                or (self.epochs is not None and loop.epoch >= self.epochs)
                or (self.iterations is not None and loop.iteration >= self.iterations)
                or (self.budget_seconds is not None
                    and loop.train_seconds >= self.budget_seconds))

    def iterations_left(self, done: int, steps_per_epoch: int) -> int | None:
        """The steps left after ``done``, when a count says (``iterations``, else ``epochs``);
        ``None`` for a time budget alone or no rule."""
        if self.iterations is not None:
            return max(self.iterations - done, 0)
        if self.epochs is not None:
            return max(self.epochs * steps_per_epoch - done, 0)
        return None


class Evaluation(NamedTuple):
    """When and on what a run evaluates.

    [`fit`][admm_jax.train.fit] evaluates before the first step, as the period says, and after
    the last; a [`Trainer`][admm_jax.train.Trainer] evaluates when its
    [`evaluate`][admm_jax.train.Trainer.evaluate] is called.

    Attributes:
      data: ``(inputs, targets)`` evaluated with a plain forward pass (no training).
      every: evaluate every ``every`` iterations.
      every_seconds: evaluate every ``every_seconds`` training seconds (with neither period:
        at the end of each epoch).
      batch_size: rows per evaluation chunk.
    """

    data: tuple[np.ndarray, np.ndarray]
    every: int | None = None
    every_seconds: float | None = None
    batch_size: int = 500


def checked_evaluation(evaluation: Any, validate: bool) -> Evaluation | None:
    """``evaluation`` (an [`Evaluation`][admm_jax.train.Evaluation], a pair or ``None``) as an
    [`Evaluation`][admm_jax.train.Evaluation] with checked periods and data arrays."""
    if evaluation is None:
        return None
    if not isinstance(evaluation, Evaluation):
        if not (isinstance(evaluation, tuple | list) and len(evaluation) == 2):
            raise TypeError(f"evaluation: expected an Evaluation or a pair (inputs, targets), "
                            f"got {type(evaluation).__name__}")
        evaluation = Evaluation(tuple(evaluation))
    validation.positive_int("evaluation.every", evaluation.every, allow_none=True)
    validation.positive_number("evaluation.every_seconds", evaluation.every_seconds,
                               allow_none=True)
    validation.positive_int("evaluation.batch_size", evaluation.batch_size)
    return evaluation._replace(data=checks.data("evaluation.data", evaluation.data, validate))


def evaluation_data(evaluation: Evaluation | None, data: Any, batch_size: int | None,
               owner: str) -> tuple[Any, int]:
    """``(data, batch_size)`` of an ``evaluate`` call: those given, else ``evaluation``'s
    (``500`` rows without one); no data at all is an error naming ``owner``."""
    if data is None and evaluation is None:
        raise ValueError(f"data: this {owner} was given no evaluation; pass the "
                         "(inputs, targets) to evaluate on")
    data = evaluation.data if data is None else data
    if batch_size is None:
        batch_size = 500 if evaluation is None else evaluation.batch_size
    return data, batch_size


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


class Trainer:
    """One model and optimizer, advanced a step at a time: the run `fit` drives.

    Construction checks the arguments and data (before anything is compiled), splits the model
    into its ``nnx.Param``s and the rest, initialises (or takes ``resume``'s) optimizer state
    and compiles the step of [`make_train_step`][admm_jax.train.make_train_step] once, ahead of
    time, with the weights and the optimizer state donated. The loop knows no method: the step is
    chosen from the optimizer's state ([`admm_jax.optimizers.needs_gradients`][]). Each
    [`step`][admm_jax.train.Trainer.step] takes the next mini-batch of a
    [`admm_jax.data.BatchIterator`][] (reshuffled every epoch from ``seed``), runs the compiled
    step, reads its metrics and finite flag (one host sync) and appends a row to ``history.steps``
    (and to ``history.epochs`` when an epoch ends); once ``stop`` is reached it runs nothing. The
    training time counts only the steps: compilation and
      [`evaluate`][admm_jax.train.Trainer.evaluate] are excluded.

    `fit` is this plus evaluation periods, callbacks and a divergence policy. Several
    trainers stepped in turn, the one furthest behind in training time first, compare methods
    on the same data with the same machine noise (``benchmarks/time_to_target.py``).

    Args:
      model: an ``nnx.Module`` called as ``model(x, **model_kwargs[, key=k])``. Its
        ``nnx.Param``s are trained; [`finish`][admm_jax.train.Trainer.finish] writes them back into
        it.
      optimizer: any optax transformation; one that keeps per-sample state must be built for
        ``len(train_data[0])`` samples.
      train_data: ``(inputs, targets)`` arrays with the same leading size.
      loss: ``"cross_entropy"``, ``"mse"`` or ``f(outputs, targets) -> [B]``.
      metric: ``"accuracy"``, ``None`` or ``f(outputs, targets) -> [B]``.
      batch_size: samples per step (a short last batch of an epoch is dropped).
      seed: the shuffling seed (and the base of per-step keys).
      stop: a [`Stop`][admm_jax.train.Stop]: when [`step`][admm_jax.train.Trainer.step] stops
        running steps (default: never).
      evaluation: an [`Evaluation`][admm_jax.train.Evaluation], or the ``(inputs, targets)`` of one:
        what [`evaluate`][admm_jax.train.Trainer.evaluate] uses by default; checked against the
        model with the training data.
      model_kwargs: extra model arguments passed as traced scalars.
      step_key: pass ``key=fold_in(key(seed), iteration)`` to the model in training steps.
      resume: a [`admm_jax.train.Restored`][] to continue from.
      validate: check the data's values (finite, labels in range) on the host.

    Attributes:
      loop: the [`admm_jax.train.Loop`][] (weights, optimizer state, iteration, epoch,
        training seconds, history) that callbacks see; the Trainer is its only writer.
      history: ``loop.history``.
      stop: the [`Stop`][admm_jax.train.Stop].
      evaluation: the checked [`Evaluation`][admm_jax.train.Evaluation] (or ``None``).
      uses_gradients: whether the step differentiates the loss.
      steps_per_epoch: full batches per epoch.
      compiled_step: the compiled [`make_train_step`][admm_jax.train.make_train_step] ``(params,
        opt_state, x, y, indices, model_kwargs, key, iteration) -> (params, opt_state, metrics,
        ok)``, weights and state donated.
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
      ValueError: bad arguments or data, as `fit` documents them (with ``stop`` and
        ``evaluation`` named as here).
      TypeError: arguments of the wrong type, as `fit` documents them.
      DivergenceError: from [`step`][admm_jax.train.Trainer.step] and
        [`run`][admm_jax.train.Trainer.run].
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
        stop: Stop | None = None,
        evaluation: Evaluation | tuple[np.ndarray, np.ndarray] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        step_key: bool = False,
        resume: Restored | None = None,
        validate: bool = True,
    ):
        checks.model_and_optimizer(model, optimizer)
        checks.seed(seed)
        if not isinstance(stop, Stop | None):
            raise TypeError(f"stop: expected a Stop, got {type(stop).__name__}")
        self.stop = Stop() if stop is None else stop
        resume = checks.resume(resume)
        train_data = checks.data("train_data", train_data, validate)
        self.evaluation = checked_evaluation(evaluation, validate)
        self.loss_fn = losses.resolve("loss", loss, losses.LOSSES)
        self.metric_fn = losses.resolve("metric", metric, losses.METRICS)
        self.model = model

        self.iterator = BatchIterator(*train_data, batch_size=batch_size, seed=seed,
                                      start=resume.position)
        self.steps_per_epoch = self.iterator.steps_per_epoch
        if resume.params is not None:
            nnx.update(model, resume.params)
        self._graphdef, params, self._rest = nnx.split(model, nnx.Param, ...)
        checks.trainable(model, optimizer, params, len(train_data[0]))
        checks.check_forward(optimizer, model, train_data[0][:2])  # the model it trains is ours
        apply = apply_fn(self._graphdef, self._rest)
        named = [("train_data", train_data)]
        if self.evaluation is not None:
            named.append(("evaluation.data", self.evaluation.data))
        for name, pair in named:
            checks.fits_model(name, pair, model, (apply, params), (self.loss_fn, self.metric_fn),
                              validate)
        checks.resumed_opt_state(resume.opt_state, optimizer, params)
        params = jax.tree_util.tree_map(jnp.copy, params)  # donated; keep the model's own
        opt_state = _distinct_buffers(
            optimizer.init(params) if resume.opt_state is None else resume.opt_state)
        self.uses_gradients = needs_gradients(opt_state)
        # a method that reads no gradients refuses a wrapper acting on them (MultiSteps, a clip
        # before it in a chain) when its update is traced, in compile_train_step below
        kwargs = {k: jnp.asarray(v, jnp.result_type(float) if isinstance(v, float) else None)
                  for k, v in (model_kwargs or {}).items()}
        self.key = jax.random.key(seed)
        # a method that reports the batch's loss under this loss saves the forward pass
        same = checks.same_loss(optimizer, opt_state, loss)
        method_loss = not self.uses_gradients and "batch_loss" in diagnostics(opt_state) and same
        step = make_train_step(self._graphdef, self._rest, optimizer, self.loss_fn,
                               self.metric_fn, use_gradients=self.uses_gradients,
                               step_key=step_key, method_loss=method_loss)
        b0 = self.iterator.epoch_indices(self.iterator.position[0])[0][0]
        t0 = time.perf_counter()
        self.compiled_step = compile_train_step(step, (
            params, opt_state, jnp.asarray(train_data[0][b0]), jnp.asarray(train_data[1][b0]),
            jnp.asarray(b0), kwargs, self.key, jnp.asarray(0, jnp.int32)))
        self._start(resume.history, params, opt_state, kwargs, time.perf_counter() - t0)

    def _start(self, history: History | None, params, opt_state, kwargs, compile_seconds):
        """The `loop` and the history's ``meta`` of a run starting at
        ``iterator.position``."""
        history = History() if history is None else history
        done = len(history.steps.get("iteration", []))
        self.loop = Loop(history=history, iteration=done, epoch=self.iterator.position[0],
                         position=self.iterator.position,
                         train_seconds=history.last("steps", "time", 0.0), params=params,
                         opt_state=opt_state, model_kwargs=kwargs,
                         total_iterations=self.stop.iterations_left(done, self.steps_per_epoch),
                         budget_seconds=self.stop.budget_seconds,
                         metric_name="accuracy" if self.metric_fn is not None else "loss")
        self.history = history
        history.meta.update(
            compile_seconds=history.meta.get("compile_seconds", 0.0) + compile_seconds,
            uses_gradients=self.uses_gradients, batch_size=self.iterator.batch_size,
            seed=self.iterator.seed, num_samples=self.iterator.num_samples,
            steps_per_epoch=self.steps_per_epoch,
            eval_samples=0 if self.evaluation is None else len(self.evaluation.data[0]),
            eval_seconds=history.meta.get("eval_seconds", 0.0),
        )
        self._eval_chunk = None
        # a resumed run continues the epoch means where they were
        self._epoch_rows = [{k: history.steps[k][i] for k in history.steps}
                            for i, e in enumerate(history.steps.get("epoch", []))
                            if e == self.iterator.position[0]]
        self._batches = iter(self.iterator)

    def step(self) -> tuple[dict[str, float] | None, dict[str, float] | None]:
        """Run one step; return ``(row, epoch_row)``.

        ``row`` is the step's record (``iteration``, ``epoch``, ``seconds``, ``time`` and the
        step's metrics), ``epoch_row`` the epoch's means when this step ended an epoch (else
        ``None``); both are also appended to `history`. ``(None, None)``, and no step,
        once `stop` is reached.

        Raises:
          DivergenceError: the step was not finite. It was not applied: `loop` and the
            model hold the last good weights, ``history.meta`` says where it failed.
        """
        loop, history = self.loop, self.history
        if self.stop.reached(loop):
            return None, None
        t = time.perf_counter()
        batch = next(self._batches)
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
        """Run up to ``steps`` steps (fewer once `stop` is reached); return how many ran.

        Raises:
          DivergenceError: as [`step`][admm_jax.train.Trainer.step].
        """
        validation.positive_int("steps", steps)
        for done in range(steps):
            if self.step()[0] is None:
                return done
        return steps

    def evaluate(self, data: tuple[np.ndarray, np.ndarray] | None = None,
                 batch_size: int | None = None) -> dict[str, float]:
        """Evaluate the current weights (a plain forward pass) and append the row to
        ``history.evals``; return the row (``iteration``, ``epoch``, ``time``, ``loss`` and the
        metric). ``data`` and ``batch_size`` default to those of `evaluation` (``500``
        rows without one); the seconds spent count in ``history.meta["eval_seconds"]``, not in
        the training time."""
        data, batch_size = evaluation_data(self.evaluation, data, batch_size, "Trainer")
        t = time.perf_counter()
        if self._eval_chunk is None:
            self._eval_chunk = make_eval_fn(self._graphdef, self._rest, self.loss_fn,
                                            self.metric_fn)
        r = evaluate_in_chunks(self._eval_chunk, self.loop.params, data, batch_size)
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
