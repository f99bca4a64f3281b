"""Many independent runs in one compiled step: `BatchedTrainer`, the host side of S stacked
runs (each run's seed, batch order, hyperparameters and model arguments, its history,
evaluation and checkpoint; a diverged run frozen without stopping the others). The stacked
pytrees and the compiled program live in ``admm_jax.train.stacked``, the loop
that drives a batch to its stop is [`fit_batched`][admm_jax.train.fit_batched]."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from admm_jax import _validation as validation
from admm_jax.data import BatchIterator
from admm_jax.optimizers import diagnostics, needs_gradients
from admm_jax.train import checks, losses, stacked
from admm_jax.train.callbacks import Loop
from admm_jax.train.checkpoint import Checkpoint, Restored, run_folder
from admm_jax.train.history import History
from admm_jax.train.steps import apply_fn, make_eval_fn, make_train_step
from admm_jax.train.trainer import Evaluation, Stop, checked_evaluation, evaluation_data


class BatchedTrainer:
    r"""S independent runs of one model architecture and one optimizer, trained in lockstep
    by one compiled program.

    The weights and optimizer states of the runs are stacked on a leading run axis and the
    step of [`make_train_step`][admm_jax.train.make_train_step] is mapped over it, so each run
    is the run a [`Trainer`][admm_jax.train.Trainer] would make alone (same batches, keys and
    arithmetic up to float rounding of batched products; tested). Run \( s \) has its own
    model (initial weights), ``seeds[s]`` (its batch order and per-step keys), optimizer
    hyperparameters (``optax.inject_hyperparams`` values in ``hyperparams``) and model
    arguments (``model_kwargs``, e.g. h-detach's ``p_detach``). One compiled program runs
    ``steps_per_call`` steps of all runs (a ``lax.scan``; fewer steps are masked, so it
    compiles once); the training data lives on the device and each run's batch is gathered
    there from its indices.

    A step that is not finite is not applied to its run, which is then frozen at its last
    good weights (``history.meta["diverged_at"]``) while the others go on; `freeze` stops a
    run by hand (e.g. once it has solved its task). The runs of a batch share the clock: each
    history's ``time`` is the batch's training time.

    Layout: ``group_size`` runs are vectorised together (``jax.vmap``: one batched product per
    layer for the group) and groups run one after another inside the program
    (``lax.map``); ``None`` vectorises all runs (the accelerator layout), ``1`` none. On a CPU
    a group pays only while its working set (about S times one run's saved activations) fits
    the last-level cache (docs/training.md).

    Args:
      models: S ``nnx.Module``s of one structure (their weights may differ); only their
        ``nnx.Param``s differ between runs.
      optimizer: one optax transformation for all runs; hyperparameters that differ between
        runs must be ``optax.inject_hyperparams`` values (``hyperparams``). The methods
        built for a model (the K-FAC methods: ``optimizers.Entry.takes_model``) are built
        for one of the models: they keep its structure and non-parameter state, which
        all runs share, and take each run's weights from its slice of the stack.
      train_data: ``(inputs, targets)``, shared by the runs (each in its own order).
      loss, metric, batch_size, stop, evaluation, step_key, validate: as
        [`Trainer`][admm_jax.train.Trainer].
      seeds: one shuffling seed per run (default ``0..S-1``).
      hyperparams: ``{name: value or S values}`` written into the optimizer's
        ``inject_hyperparams`` state of each run.
      model_kwargs: ``{name: value or S values}``, traced model arguments per run.
      resume: S [`Restored`][admm_jax.train.Restored] (from
        [`load_runs`][admm_jax.train.load_runs]), all at the same position.
      steps_per_call: steps run by one call of the compiled program.
      group_size: runs vectorised together (see Layout).

    Attributes:
      runs: S.
      histories: one [`History`][admm_jax.History] per run.
      live: bool ``[S]``, the runs still training.
      iteration, position, train_seconds: the batch's steps, next ``(epoch, step)`` and
        training seconds.
      params, opt_state: the stacked weights and optimizer states.
      compiled: the compiled program ``((params, opt_state, live), x, y, indices [K, S, B],
        model_kwargs, keys, iteration, n) -> ((params, opt_state, live), metrics [K, S],
        ok [K, S])``.

    Examples:
      >>> import optax
      >>> from flax import nnx
      >>> from admm_jax import ElmanRNN, data
      >>> from admm_jax.train import BatchedTrainer
      >>> x, y = data.adding(8, 64, seed=0)
      >>> tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
      >>> runs = BatchedTrainer([ElmanRNN(2, 8, 1, rngs=nnx.Rngs(s)) for s in range(3)], tx,
      ...                       (x, y[:, None]), loss="mse", metric=None, batch_size=16,
      ...                       hyperparams={"learning_rate": [1e-3, 1e-2, 1e-1]})
      >>> runs.run(8)
      8
      >>> [len(h.steps["loss"]) for h in runs.histories]
      [8, 8, 8]

    Raises:
      ValueError, TypeError: as [`Trainer`][admm_jax.train.Trainer], with ``models``,
        ``seeds``, ``hyperparams``, ``model_kwargs`` and ``resume`` named when they do not
        match the number of runs or each other.
    """

    def __init__(
        self,
        models: Sequence[nnx.Module],
        optimizer: optax.GradientTransformation,
        train_data: tuple[np.ndarray, np.ndarray],
        *,
        loss: str | losses.PerSample = "cross_entropy",
        metric: str | losses.PerSample | None = "accuracy",
        batch_size: int = 32,
        seeds: Sequence[int] | None = None,
        hyperparams: Mapping[str, Any] | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        step_key: bool = False,
        stop: Stop | None = None,
        evaluation: Evaluation | tuple[np.ndarray, np.ndarray] | None = None,
        resume: Sequence[Restored] | None = None,
        validate: bool = True,
        steps_per_call: int = 1,
        group_size: int | None = None,
    ):
        if not isinstance(models, Sequence) or not models:
            raise TypeError(f"models: expected a non-empty sequence of nnx.Module, got "
                            f"{type(models).__name__}")
        for m in models:
            checks.model_and_optimizer(m, optimizer)
        self.runs = s = len(models)
        seeds = list(range(s)) if seeds is None else list(seeds)
        if len(seeds) != s:
            raise ValueError(f"seeds: expected {s} seeds (one per model), got {len(seeds)}")
        for v in seeds:
            checks.seed(v)
        self.steps_per_call = validation.positive_int("steps_per_call", steps_per_call)
        self.group_size = validation.positive_int("group_size", group_size, allow_none=True)
        if not isinstance(stop, Stop | None):
            raise TypeError(f"stop: expected a Stop, got {type(stop).__name__}")
        self.stop = Stop() if stop is None else stop
        if resume is not None and len(resume) != s:
            raise ValueError(f"resume: expected {s} Restored (one per run), got {len(resume)}")
        resume = [checks.resume(r) for r in (resume or [None] * s)]
        if len({r.position for r in resume}) > 1:
            raise ValueError(f"resume: the runs are at different positions "
                             f"{[r.position for r in resume]}; a batch advances in lockstep")
        train_data = checks.data("train_data", train_data, validate)
        self.evaluation = checked_evaluation(evaluation, validate)
        self.loss_fn = losses.resolve("loss", loss, losses.LOSSES)
        self.metric_fn = losses.resolve("metric", metric, losses.METRICS)
        self.models = list(models)

        params = []
        for i, (m, r) in enumerate(zip(models, resume, strict=True)):
            if r.params is not None:
                nnx.update(m, r.params)
            graphdef, p, rest = nnx.split(m, nnx.Param, ...)
            if i == 0:
                self._graphdef, self._rest = graphdef, rest
            elif graphdef != self._graphdef:
                raise ValueError(f"models: model {i} differs from model 0 in structure or "
                                 "static attributes; per-run settings go in model_kwargs")
            else:
                validation.same_structure(f"models[{i}] weights", p, params[0],
                                          what="model 0's weights")
                same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)),
                                              rest, self._rest)
                if not all(jax.tree_util.tree_leaves(same)):
                    raise ValueError(f"models: model {i}'s non-parameter state differs from "
                                     "model 0's; only nnx.Param may differ between runs")
            params.append(p)
        checks.trainable(models[0], optimizer, params[0], len(train_data[0]))
        checks.check_forward(optimizer, models[0], train_data[0][:2])  # as the Trainer does
        apply = apply_fn(self._graphdef, self._rest)
        named = [("train_data", train_data)]
        if self.evaluation is not None:
            named.append(("evaluation.data", self.evaluation.data))
        for name, pair in named:
            checks.fits_model(name, pair, models[0], (apply, params[0]),
                              (self.loss_fn, self.metric_fn), validate)
        hp = stacked.per_run("hyperparams", hyperparams, s)
        states = []
        for i, (p, r) in enumerate(zip(params, resume, strict=True)):
            checks.resumed_opt_state(r.opt_state, optimizer, p)
            o = optimizer.init(p) if r.opt_state is None else r.opt_state
            states.append(stacked.set_hyperparams(o, {k: v[i] for k, v in hp.items()}) if hp else o)
        self.uses_gradients = needs_gradients(states[0])
        same = checks.same_loss(optimizer, states[0], loss)
        method_loss = not self.uses_gradients and "batch_loss" in diagnostics(states[0]) and same
        self._step = make_train_step(self._graphdef, self._rest, optimizer, self.loss_fn,
                                     self.metric_fn, use_gradients=self.uses_gradients,
                                     step_key=step_key, method_loss=method_loss)
        kw = stacked.per_run("model_kwargs", model_kwargs, s)
        self.model_kwargs = {k: jnp.asarray(v, jnp.result_type(float) if all(
            isinstance(e, float) for e in v) else None) for k, v in kw.items()}
        self.keys = jnp.stack([jax.random.key(v) for v in seeds])
        self.seeds = seeds
        self._x, self._y = (jnp.asarray(a) for a in train_data)
        self.iterators = [BatchIterator(num_samples=len(train_data[0]), batch_size=batch_size,
                                        seed=v, start=resume[0].position) for v in seeds]
        self.steps_per_epoch = self.iterators[0].steps_per_epoch
        self._batches = [iter(it) for it in self.iterators]
        self.params, self.opt_state = stacked.stack(params), stacked.stack(states)
        self.histories = [History() if r.history is None else r.history for r in resume]
        self.live = np.array([h.meta.get("live", True) for h in self.histories])
        self.iteration = max(h.meta.get("batch_iteration", len(h.steps.get("iteration", [])))
                             for h in self.histories)
        self.position = self.iterators[0].position
        self.train_seconds = max(h.meta.get("train_seconds", h.last("steps", "time", 0.0))
                                 for h in self.histories)
        self._eval = None
        t0 = time.perf_counter()
        k, b = self.steps_per_call, self.iterators[0].batch_size
        self.compiled = stacked.compile_program(
            stacked.program(self._step, s, self.group_size),
            (self.params, self.opt_state, self.live), (self._x, self._y), self.model_kwargs,
            self.keys, k, b)
        compile_seconds = time.perf_counter() - t0
        for i, h in enumerate(self.histories):
            h.meta.update(
                compile_seconds=h.meta.get("compile_seconds", 0.0) + compile_seconds,
                uses_gradients=self.uses_gradients, batch_size=b, seed=seeds[i],
                num_samples=len(train_data[0]), steps_per_epoch=self.steps_per_epoch,
                eval_samples=0 if self.evaluation is None else len(self.evaluation.data[0]),
                eval_seconds=h.meta.get("eval_seconds", 0.0), run=i, runs=s,
                hyperparams={k: stacked.jsonable(v[i]) for k, v in hp.items()},
                model_kwargs={k: stacked.jsonable(v[i]) for k, v in kw.items()})
        self._epoch_rows: list[list[dict]] = [
            [{c: h.steps[c][j] for c in h.steps} for j, e in enumerate(h.steps.get("epoch", []))
             if e == self.position[0]] for h in self.histories]

    # ------------------------------------------------------------------ stepping

    @property
    def done(self) -> bool:
        """Whether the batch's `stop` is reached or no run is live."""
        now = Loop(history=self.histories[0], iteration=self.iteration,
                   epoch=self.position[0], position=self.position,
                   train_seconds=self.train_seconds, params=None, opt_state=None,
                   model_kwargs={}, total_iterations=None, budget_seconds=None, metric_name="")
        return self.stop.reached(now) or not self.live.any()

    def freeze(self, run: int) -> None:
        """Stop training run ``run`` (its weights stay as they are); ``meta["frozen_at"]``."""
        if self.live[run]:
            self.live[run] = False
            self.histories[run].meta["frozen_at"] = self.iteration

    def run(self, steps: int) -> int:
        """Run up to ``steps`` steps of every live run (fewer once `done`); return how many
        ran."""
        validation.positive_int("steps", steps)
        done = 0
        while done < steps and not self.done:
            left = self.stop.iterations_left(self.iteration, self.steps_per_epoch)
            n = min(self.steps_per_call, steps - done, *(() if left is None else (left,)))
            self._call(n)
            done += n
        return done

    def _call(self, n: int) -> None:
        k, s = self.steps_per_call, self.runs
        idx = np.zeros((k, s, self.iterators[0].batch_size), np.int32)
        epochs = []
        for j in range(n):
            for r in range(s):
                batch = next(self._batches[r])
                idx[j, r] = batch.indices
            epochs.append(batch.epoch)
        live = self.live.copy()
        t = time.perf_counter()
        (self.params, self.opt_state, _), metrics, ok = self.compiled(
            (self.params, self.opt_state, live), self._x, self._y, idx, self.model_kwargs,
            self.keys, np.int32(self.iteration), np.int32(n))
        metrics, ok = jax.device_get((metrics, ok))
        seconds = time.perf_counter() - t
        self.position = self.iterators[0].position
        for j in range(n):
            self.iteration += 1
            self.train_seconds += seconds / n
            ended = (epochs[j + 1] if j + 1 < n else self.position[0]) != epochs[j]
            for r in range(s):
                if not live[r]:
                    continue
                m = {name: float(v[j, r]) for name, v in metrics.items()}
                h = self.histories[r]
                if not ok[j, r]:
                    live[r] = self.live[r] = False
                    h.meta["diverged_at"] = self.iteration
                    h.meta["divergence_metrics"] = {
                        c: v if math.isfinite(v) else str(v) for c, v in m.items()}
                    continue
                row = {"iteration": self.iteration, "epoch": epochs[j], "seconds": seconds / n,
                       "time": self.train_seconds, **m}
                h.append("steps", **row)
                self._epoch_rows[r].append(row)
                if ended:
                    rows = self._epoch_rows[r]
                    h.append("epochs", epoch=epochs[j], iteration=self.iteration,
                             time=self.train_seconds,
                             **{c: float(np.mean([x[c] for x in rows])) for c in m})
            if ended:
                self._epoch_rows = [[] for _ in range(s)]

    # ------------------------------------------------------------------ evaluation, results

    def evaluate(self, data: tuple[np.ndarray, np.ndarray] | None = None,
                 batch_size: int | None = None) -> list[dict[str, float]]:
        """Evaluate every run's current weights (a plain forward pass, vectorised over the
        runs) and append each run's row to its ``history.evals``; return the rows. Defaults
        as [`Trainer.evaluate`][admm_jax.train.Trainer.evaluate]."""
        data, batch_size = evaluation_data(self.evaluation, data, batch_size, "BatchedTrainer")
        t = time.perf_counter()
        if self._eval is None:
            chunk = make_eval_fn(self._graphdef, self._rest, self.loss_fn, self.metric_fn)
            self._eval = jax.jit(lambda p, x, y, m: stacked.over_runs(
                lambda q: chunk(q, x, y, m), self.runs, self.group_size, p))
        x, y = data
        size = len(x)
        b = min(batch_size, size)
        sums: dict[str, np.ndarray] = {}
        for lo in range(0, size, b):
            i = np.arange(lo, lo + b) % size
            part = jax.device_get(self._eval(self.params, jnp.asarray(x[i]), jnp.asarray(y[i]),
                                             jnp.asarray(np.arange(lo, lo + b) < size)))
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
        seconds = time.perf_counter() - t
        rows = []
        for r, h in enumerate(self.histories):
            row = {"iteration": self.iteration, "epoch": self.position[0],
                   "time": self.train_seconds, **{k: float(v[r]) / size for k, v in sums.items()}}
            h.append("evals", **row)
            h.meta["eval_seconds"] += seconds / self.runs
            rows.append(row)
        return rows

    def set_model_kwarg(self, name: str, values: Any) -> None:
        """Change a traced model argument of every run (a value or S values; no
        recompilation)."""
        if name not in self.model_kwargs:
            raise KeyError(f"name: {name!r} is not one of model_kwargs "
                           f"{sorted(self.model_kwargs)}")
        old = self.model_kwargs[name]
        self.model_kwargs[name] = jnp.broadcast_to(jnp.asarray(values, old.dtype), old.shape)

    def loop(self, run: int) -> Loop:
        """Run ``run`` as a [`Loop`][admm_jax.train.Loop] of its own (what
        [`Checkpoint`][admm_jax.train.Checkpoint] saves and fit's callbacks see)."""
        h = self.histories[run]
        h.meta.update(batch_iteration=self.iteration, live=bool(self.live[run]),
                      train_seconds=self.train_seconds,
                      iterations=len(h.steps.get("iteration", [])))
        kw = {k: v[run] for k, v in self.model_kwargs.items()}
        return Loop(h, self.iteration, self.position[0], self.position, self.train_seconds,
                    stacked.unstack(self.params, run), stacked.unstack(self.opt_state, run), kw,
                    self.stop.iterations_left(self.iteration, self.steps_per_epoch),
                    self.stop.budget_seconds,
                    "accuracy" if self.metric_fn is not None else "loss")

    def save(self, directory: str | os.PathLike, *, max_to_keep: int | None = 2) -> None:
        """Write one [`Checkpoint`][admm_jax.train.Checkpoint] per run, ``directory/run_<i>``
        (fit's format: a run can be resumed alone with `fit`, or all with
        [`load_runs`][admm_jax.train.load_runs])."""
        for r in range(self.runs):
            cp = Checkpoint(run_folder(directory, r), max_to_keep=max_to_keep)
            try:
                cp.save(self.loop(r))
            finally:
                cp.close()

    def finish(self) -> None:
        """Write each run's current weights into its model and the totals into its
        ``history.meta`` (``iterations``: its recorded steps; ``train_seconds``: the
        batch's)."""
        for r, m in enumerate(self.models):
            self.loop(r)
            nnx.update(m, stacked.unstack(self.params, r))
