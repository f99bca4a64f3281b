"""Hooks into [`admm_jax.train.fit`][]: the loop state they see, a progress bar, a
model-argument schedule (checkpoints: `admm_jax.train.checkpoint`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from admm_jax.train.history import History


@dataclasses.dataclass
class Loop:
    """The state of a [`admm_jax.train.fit`][] run, as callbacks see it.

    Its [`admm_jax.train.Trainer`][] is its only writer; a callback may set ``stop`` and
    the values of ``model_kwargs``.

    Attributes:
      history: the run's [`admm_jax.train.History`][admm_jax.History] so far.
      iteration: steps done (a resumed run counts its earlier steps).
      epoch: the epoch the next batch comes from.
      position: ``(epoch, step)`` where the next batch comes from (what a checkpoint stores).
      train_seconds: seconds spent in training steps (compilation and evaluation excluded).
      params: the current weights (an ``nnx.State`` of the model's ``nnx.Param``).
      opt_state: the current optimizer state.
      model_kwargs: traced scalars passed to the model; change them with
        [`set_model_kwarg`][admm_jax.train.Loop.set_model_kwarg] (same shape and dtype, so no
        recompilation).
      total_iterations: the steps this call will run, when its
        [`admm_jax.train.Stop`][] says (``iterations`` or ``epochs``); ``None`` for a time
        budget only.
      budget_seconds: the training-seconds budget, or ``None``.
      metric_name: the evaluation column a callback should watch (``"accuracy"``, or
        ``"loss"`` without a metric).
      stop: set it to True to end the run after the current step.
    """

    history: History
    iteration: int
    epoch: int
    position: tuple[int, int]
    train_seconds: float
    params: Any
    opt_state: Any
    model_kwargs: dict[str, jax.Array]
    total_iterations: int | None
    budget_seconds: float | None
    metric_name: str
    stop: bool = False

    def set_model_kwarg(self, name: str, value: Any) -> None:
        """Change a traced model argument (same shape and dtype, so no recompilation)."""
        if name not in self.model_kwargs:
            raise KeyError(f"name: {name!r} is not one of model_kwargs {sorted(self.model_kwargs)}")
        old = self.model_kwargs[name]
        self.model_kwargs[name] = jnp.asarray(value, old.dtype).reshape(old.shape)


class Callback:
    """Base class: override any hook. ``loop`` is the [`Loop`][admm_jax.train.Loop] of the run.

    A hook may set ``loop.stop = True`` to end training, or change the *values* of
    ``loop.model_kwargs`` (traced scalars, so no recompilation; keys are fixed).
    """

    def on_train_begin(self, loop: Loop) -> None: ...

    def on_step_end(self, loop: Loop, row: dict[str, float]) -> None:
        """After every step, once the step's epoch row and evaluation (if any) are recorded
        (so after `on_epoch_end` / `on_eval_end` of the same step)."""

    def on_epoch_end(self, loop: Loop, row: dict[str, float]) -> None: ...

    def on_eval_end(self, loop: Loop, row: dict[str, float]) -> None: ...

    def on_train_end(self, loop: Loop) -> None: ...

    def on_divergence(self, loop: Loop, error: Exception) -> None:
        """A step was non-finite and not applied; ``loop`` holds the last good state. Called
        before fit raises ``error`` (or stops, with ``on_divergence="stop"``)."""


class ProgressBar(Callback):
    """A tqdm bar over iterations (or budget seconds) showing the live loss and accuracy."""

    def __init__(self, desc: str | None = None, **tqdm_kwargs: Any):
        self.desc = desc
        self.tqdm_kwargs = tqdm_kwargs
        self.bar = None

    def on_train_begin(self, loop: Loop) -> None:
        import sys

        from tqdm.auto import tqdm

        by_time = loop.total_iterations is None and loop.budget_seconds is not None
        self.by_time = by_time
        total = loop.budget_seconds if by_time else loop.total_iterations
        self.bar = tqdm(total=total, desc=self.desc, unit="s" if by_time else "it",
                        dynamic_ncols=True, leave=True,
                        **{"mininterval": 0.1 if sys.stderr.isatty() else 5.0,
                           **self.tqdm_kwargs})
        if by_time:
            self.bar.bar_format = "{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}{postfix}]"

    def on_step_end(self, loop: Loop, row: dict[str, float]) -> None:
        post = {"loss": f"{row['loss']:.4g}"}
        if "accuracy" in row and not math.isnan(row["accuracy"]):
            post["acc"] = f"{row['accuracy']:.3f}"
        test = loop.history.last("evals", loop.metric_name, None)
        if test is not None:
            post["test"] = f"{test:.3g}"
        self.bar.set_postfix(post, refresh=False)
        if self.by_time:
            self.bar.update(min(row["seconds"], self.bar.total - self.bar.n))
        else:
            self.bar.update(1)

    def on_train_end(self, loop: Loop) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_divergence(self, loop: Loop, error: Exception) -> None:
        self.on_train_end(loop)


class ModelKwargSchedule(Callback):
    """Set ``loop.model_kwargs[name] = fn(epoch)`` at the start of each epoch.

    A schedule of a *model* argument (optax schedules cover the optimizer's hyperparameters).
    The value is a traced scalar of the jitted step, so changing it never recompiles.

    Args:
      name: a key of ``fit``'s ``model_kwargs`` (it must be given an initial value there).
      fn: ``epoch -> value``.

    Examples:
      >>> from admm_jax.train import ModelKwargSchedule
      >>> anneal = ModelKwargSchedule("p_detach", lambda e: max(0.0, 0.5 - 0.1 * e))
      >>> # fit(model, tx, data, epochs=5, model_kwargs={"p_detach": 0.5}, step_key=True,
      >>> #     callbacks=[anneal])
      >>> anneal.fn(2)
      0.3
    """

    def __init__(self, name: str, fn: Callable[[int], float]):
        self.name, self.fn = name, fn
        self._epoch = -1

    def _apply(self, loop: Loop) -> None:
        if loop.epoch != self._epoch:
            self._epoch = loop.epoch
            loop.set_model_kwarg(self.name, self.fn(loop.epoch))

    def on_train_begin(self, loop: Loop) -> None:
        if self.name not in loop.model_kwargs:
            raise ValueError(f"name: {self.name!r} is not in fit's model_kwargs "
                             f"{sorted(loop.model_kwargs)}; give it an initial value there")
        self._apply(loop)

    def on_epoch_end(self, loop: Loop, row: dict[str, float]) -> None:
        self._apply(loop)
