"""The compiled pieces of a run: the training step, the evaluation of one chunk, and the
evaluation of a model over a data set."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from admm_jax.optimizers import (
    diagnostics,
    keeps_itself,
    needs_gradients,
    takes_batch_somewhere,
)
from admm_jax.train import losses


def apply_fn(graphdef, rest):
    """``(params, inputs, kwargs, key) -> outputs``: the model split by ``nnx.split(model,
    nnx.Param, ...)``, called with its weights ``params``."""

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

    ``use_gradients`` (default: read from the state, [`admm_jax.optimizers.needs_gradients`][]):
    the loss is differentiated (``jax.value_and_grad``) and
    ``tx.update(grads, state, params)`` is called (with ``inputs=x, targets=y,
    indices=indices`` too when a transformation in the state takes the batch,
    [`admm_jax.optimizers.takes_batch_somewhere`][]: K-FAC after a clip in a chain); without,
    only a forward pass of the current weights is made (for the batch loss and metric) and
    ``tx.update(None, state, params, inputs=x, targets=y, indices=indices)`` computes the
    step, so no backward pass is traced here. With ``method_loss`` (a method that reports
    ``batch_loss``, the batch's loss before its step under ``loss_fn``, in its diagnostics)
    not even that: the step records the
    method's ``batch_loss`` as ``loss`` and no training metric. ``metrics`` holds the loss, the
    metric, ``grad_norm`` (with gradients) and every field of the new state's ``diagnostics``
    ([`admm_jax.optimizers.diagnostics`][]) that the step did not already name.

    ``ok`` is False when the loss, the metric, the gradient norm, a diagnostic or a new weight
    is not finite; the step is then not applied: the old weights are returned, and the old
    optimizer state unless the state keeps itself ([`admm_jax.optimizers.keeps_itself`][]).
    """
    apply = apply_fn(graphdef, rest)

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


def compile_train_step(step, example: tuple):
    """``step`` (from [`make_train_step`][admm_jax.train.make_train_step]) jitted with the
    weights and the optimizer state donated, and compiled ahead of time for the arguments
    ``example``."""
    with warnings.catch_warnings():  # CPU backends cannot donate: nothing to report
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        return jax.jit(step, donate_argnums=(0, 1)).lower(*example).compile()


def make_eval_fn(graphdef, rest, loss_fn, metric_fn):
    """Jitted ``(params, x, y, mask) -> (sum of losses, sum of metric)`` over the unmasked rows."""
    apply = apply_fn(graphdef, rest)

    @jax.jit
    def evaluate_chunk(params, x, y, mask):
        out = apply(params, x, {}, None)
        m = mask.astype(jnp.float32)
        total = {"loss": jnp.sum(loss_fn(out, y) * m)}
        if metric_fn is not None:
            total["accuracy"] = jnp.sum(metric_fn(out, y) * m)
        return total

    return evaluate_chunk


def evaluate_in_chunks(eval_chunk, params, data, batch_size: int) -> dict[str, float]:
    """The means of ``eval_chunk`` (from `make_eval_fn`) over ``data = (x, y)``, taken
    ``batch_size`` rows at a time (the last chunk padded and masked, so one compilation)."""
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

    Examples:
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
    return evaluate_in_chunks(make_eval_fn(graphdef, rest, loss_fn, metric_fn), params, data,
                              batch_size)
