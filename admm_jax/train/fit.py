"""One training loop for every optimizer: it asks the optimizer's state, never its name;
`fit` trains one run, `fit_batched` S runs as one batch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import optax
from flax import nnx

from admm_jax import _validation as validation
from admm_jax.train import losses
from admm_jax.train.batched import BatchedTrainer
from admm_jax.train.callbacks import Callback, ProgressBar
from admm_jax.train.checkpoint import Checkpoint, Restored, run_folder
from admm_jax.train.history import History
from admm_jax.train.trainer import DivergenceError, Evaluation, Stop, Trainer

DIVERGENCE_POLICIES = ("raise", "stop")


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
    """Train ``model`` in place with ``optimizer`` on ``train_data``; return the
    [`History`][admm_jax.History].

    Each step takes a mini-batch ``(x, y, indices)`` ([`admm_jax.data.BatchIterator`][],
    reshuffled every epoch from ``seed``; a short last batch is dropped) and runs one jitted,
    ahead-of-time compiled step that donates the weights and the optimizer state. ``fit`` is a
    [`Trainer`][admm_jax.train.Trainer] (the run, advanced a step at a time, until its
    [`Stop`][admm_jax.train.Stop]) driven with evaluation periods, callbacks and a divergence
    policy. The loop knows no method: the step is chosen once from the optimizer's state
    ([`admm_jax.optimizers.needs_gradients`][]):

    * gradient optimizers: ``loss, g = value_and_grad(mean loss)(params)``, then
      ``tx.update(g, state, params)``;
    * a method that takes the batch (its state says ``takes_batch``, also inside
      ``optax.chain``): a forward pass gives the batch loss, then ``tx.update(None, state,
      params, inputs=x, targets=y, indices=indices)``; no gradient is computed.

    Every step records the batch ``loss`` and ``accuracy`` of the weights before the update,
    its ``seconds``, the training ``time`` so far, ``grad_norm`` (gradient optimizers) and every
    field the method reports in its state's ``diagnostics``
    ([`admm_jax.optimizers.diagnostics`][]). Evaluation (a plain forward pass, no
    ``key``/``model_kwargs``) runs before training, as [`Evaluation`][admm_jax.train.Evaluation]
    says (default: every epoch) and at the end. Compile and evaluation time are excluded from
    ``time`` and from ``budget_seconds`` and stored in ``history.meta``.

    Training stops at the first of ``epochs``, ``iterations``, ``budget_seconds`` (at least one
    is required) or a callback setting ``loop.stop``. All three count the whole run: a run
    resumed with ``resume=`` stops at the same total epoch, iteration or training time as
    the uninterrupted run (``iterations=10`` after 4 done runs 6 more).

    Robustness: arguments and data are checked before anything is compiled (see Raises); every
    step also returns a finite flag, read with the step's metrics (no extra host sync), and a
    non-finite step is never applied, recorded or checkpointed (``on_divergence``). With a
    [`admm_jax.train.Checkpoint`][] callback, ``resume=load_checkpoint(...)`` resumes a run;
    the resumed run is bitwise the uninterrupted one on the same machine (the batch order
    depends only on ``(seed, epoch)``, per-step keys on ``(seed, iteration)``).

    Args:
      model: an ``nnx.Module`` called as ``model(x, **model_kwargs[, key=k])``; updated in
        place. Its ``nnx.Param``s are trained.
      optimizer: any optax transformation (e.g. [`admm_jax.optimizers.get`][]). One that
        keeps per-sample state must be built for ``len(train_data[0])`` samples.
      train_data: ``(inputs, targets)`` arrays with the same leading size.
      loss: ``"cross_entropy"``, ``"mse"`` or ``f(outputs, targets) -> [B]`` per-sample losses.
      metric: ``"accuracy"``, ``None`` or ``f(outputs, targets) -> [B]``.
      epochs: stop after this many epochs (a stopping rule; give at least one of the three).
        Like the other two, a total over the whole run, the resumed history included.
      iterations: stop after this many steps.
      budget_seconds: stop once the steps have taken this many seconds of training time.
      batch_size: samples per step.
      seed: the shuffling seed (and the base of per-step keys).
      evaluation: an [`Evaluation`][admm_jax.train.Evaluation] (data and period), or just the
        ``(inputs, targets)`` to evaluate every epoch; ``None``: no evaluation.
      callbacks: [`admm_jax.train.Callback`][]s; they see the [`Loop`][admm_jax.train.Loop].
      model_kwargs: extra model arguments passed as traced scalars (e.g. ``{"p_detach":
        0.25}``); callbacks may change their values between steps without recompiling.
      step_key: pass ``key=fold_in(key(seed), iteration)`` to the model in training steps
        (models that draw randomness, such as h-detach).
      progress: show a tqdm progress bar (a string is used as its label).
      resume: a [`admm_jax.train.Restored`][] (from [`admm_jax.train.load_checkpoint`][],
        or built by hand): the weights, optimizer state, ``(epoch, step)`` position and
        history to continue from.
      on_divergence: what a non-finite step does (the loss, a metric, the gradient norm, a
        diagnostic or a new weight is NaN/inf; such a step is never applied, never recorded
        in the steps table and never checkpointed). ``"raise"`` (default): set the model to the
        last good weights and raise [`DivergenceError`][admm_jax.DivergenceError] (iteration, bad
        and last good metrics). ``"stop"``: the same, but return the history with
        ``meta["diverged_at"]`` and ``meta["divergence_metrics"]`` (non-finite values as
        ``"nan"``/``"inf"``) instead of raising. A method that can retry a failed step does so
        inside its own update (a wrapper such as [`admm_jax.increase_rho_on_divergence`][]).
      validate: check the data's values before training (finite inputs and targets, class
        labels in range): one pass over the arrays on the host, none in the jitted step.

    Returns:
      The [`History`][admm_jax.History] (also with ``meta``: ``compile_seconds``, ``eval_seconds``,
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
        vocabulary; a model holding RNG streams; ``optax.MultiSteps`` around (or a transformation
        in ``optax.chain`` before) a method that reads no gradients, raised while the step
        compiles; a method whose own forward pass is not the model's
        ([`check_forward`][admm_jax.train.check_forward]: an Elman method on a Flax RNN whose head
        reads other than the last step, K-FAC built for another model).
      TypeError: a model that is not an ``nnx.Module``, an optimizer without ``init``/``update``,
        data that is not a pair of numeric arrays, an ``evaluation`` or ``resume`` of the wrong
        type.
      DivergenceError: a non-finite step with ``on_divergence="raise"``.
    """
    stop = Stop(epochs, iterations, budget_seconds)
    if stop == Stop():
        raise ValueError("epochs, iterations, budget_seconds: give at least one stopping rule")
    validation.one_of("on_divergence", on_divergence, DIVERGENCE_POLICIES)
    trainer = Trainer(model, optimizer, train_data, loss=loss, metric=metric,
                      batch_size=batch_size, seed=seed, stop=stop, evaluation=evaluation,
                      model_kwargs=model_kwargs, step_key=step_key, resume=resume,
                      validate=validate)
    loop, history, ev = trainer.loop, trainer.history, trainer.evaluation
    cbs = list(callbacks)
    if progress:
        cbs.append(ProgressBar(progress if isinstance(progress, str) else None))

    def run_eval():
        if ev is not None:
            row = trainer.evaluate()
            for cb in cbs:
                cb.on_eval_end(loop, row)

    for cb in cbs:
        cb.on_train_begin(loop)
    if not history.evals:
        run_eval()
    # a resumed run continues the evaluation period where it was
    last_eval_it = history.last("evals", "iteration", loop.iteration)
    last_eval_t = history.last("evals", "time", loop.train_seconds)
    every_epoch = ev is not None and ev.every is None and ev.every_seconds is None
    while True:
        try:
            row, epoch_row = trainer.step()
        except DivergenceError as err:
            for cb in cbs:
                cb.on_divergence(loop, err)
            if on_divergence == "stop":
                break
            raise
        if row is None:  # the trainer's stop rule (or a callback's loop.stop)
            break
        if epoch_row is not None:
            if every_epoch:
                run_eval()
                last_eval_it, last_eval_t = loop.iteration, loop.train_seconds
            for cb in cbs:
                cb.on_epoch_end(loop, epoch_row)
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
    trainer.finish()
    for cb in cbs:
        cb.on_train_end(loop)
    return history


def fit_batched(
    models: Sequence[nnx.Module],
    optimizer: optax.GradientTransformation,
    train_data: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int | None = None,
    iterations: int | None = None,
    budget_seconds: float | None = None,
    evaluation: Evaluation | tuple[np.ndarray, np.ndarray] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: Sequence[Restored] | None = None,
    **kwargs: Any,
) -> list[History]:
    r"""Train S runs as one batch ([`BatchedTrainer`][admm_jax.train.BatchedTrainer]) as
    [`fit`][admm_jax.train.fit] trains one; return their histories.

    Evaluation runs before the first step, as ``evaluation`` says (default: every epoch)
    and at the end; with ``checkpoint``, every run is saved after every epoch and at the
    end (``checkpoint/run_<i>``, fit's format), and ``resume=load_runs(checkpoint, ...)``
    continues. A diverged run is frozen at its last good weights and recorded in its
    ``meta["diverged_at"]``; the others go on (no error is raised).

    Args:
      models, optimizer, train_data: as [`BatchedTrainer`][admm_jax.train.BatchedTrainer].
      epochs, iterations, budget_seconds: the stopping rules of [`fit`][admm_jax.train.fit]
        (at least one), for the batch.
      evaluation: as [`fit`][admm_jax.train.fit].
      checkpoint: a directory to save the runs to.
      resume: S [`Restored`][admm_jax.train.Restored] to continue from.
      **kwargs: the other arguments of [`BatchedTrainer`][admm_jax.train.BatchedTrainer]
        (``loss``, ``metric``, ``batch_size``, ``seeds``, ``hyperparams``,
        ``model_kwargs``, ``step_key``, ``validate``, ``steps_per_call``, ``group_size``).

    Returns:
      One [`History`][admm_jax.History] per run (``meta["run"]`` its index); the models hold
      the final (or last good) weights.

    Examples:
      Five seeds of Adam and five of h-detach (\( p = 0.5 \)) on the copying task, one call:

      >>> import optax
      >>> from flax import nnx
      >>> from admm_jax import LSTM, data
      >>> from admm_jax.train import fit_batched, losses
      >>> x, y = data.copying(5, 200, seed=0)
      >>> models = [LSTM(1, 16, 9, rngs=nnx.Rngs(s), many_to_many=True)
      ...           for s in [0, 1, 2, 3, 4] * 2]
      >>> hs = fit_batched(models, optax.adam(1e-3), (x, y), iterations=6, batch_size=20,
      ...                  seeds=[0, 1, 2, 3, 4] * 2, step_key=True,
      ...                  model_kwargs={"p_detach": [0.0] * 5 + [0.5] * 5},
      ...                  metric=losses.last_steps_accuracy(10))
      >>> [h.meta["model_kwargs"]["p_detach"] for h in hs][::5], len(hs[9].steps["loss"])
      ([0.0, 0.5], 6)

    Raises:
      ValueError, TypeError: as [`BatchedTrainer`][admm_jax.train.BatchedTrainer]; no
        stopping rule.
    """
    stop = Stop(epochs, iterations, budget_seconds)
    if stop == Stop():
        raise ValueError("epochs, iterations, budget_seconds: give at least one stopping rule")
    t = BatchedTrainer(models, optimizer, train_data, stop=stop, evaluation=evaluation,
                       resume=resume, **kwargs)
    ev = t.evaluation
    if checkpoint is not None:
        for r in range(t.runs):
            Checkpoint(run_folder(checkpoint, r)).on_train_begin(t.loop(r))
    if ev is not None and not t.histories[0].evals:
        t.evaluate()
    last_it = t.histories[0].last("evals", "iteration", t.iteration)
    last_t = t.histories[0].last("evals", "time", t.train_seconds)
    per_epoch = ev is None or (ev.every is None and ev.every_seconds is None)
    while not t.done:
        left = t.steps_per_epoch - t.position[1]
        if ev is not None and ev.every_seconds is not None:
            left = t.steps_per_call
        if ev is not None and ev.every is not None:
            left = min(left, max(1, ev.every - (t.iteration - last_it)))
        epoch = t.position[0]
        t.run(left)
        ended = t.position[0] != epoch
        due = ev is not None and (
            (per_epoch and ended)
            or (ev.every is not None and t.iteration - last_it >= ev.every)
            or (ev.every_seconds is not None and t.train_seconds - last_t >= ev.every_seconds))
        if due:
            t.evaluate()
            last_it, last_t = t.iteration, t.train_seconds
        if checkpoint is not None and ended:
            t.save(checkpoint)
    if ev is not None and t.histories[0].last("evals", "iteration", None) != t.iteration:
        t.evaluate()
    t.finish()
    if checkpoint is not None:
        t.save(checkpoint)
    return t.histories
