"""Every optimizer by name: ``admm_jax.optimizers.get("adam", learning_rate=1e-3)``.

The gradient optimizers come from optax itself (``sgd``, ``momentum``, ``adam``, ``rmsprop``,
``adagrad``) or from :mod:`admm_jax.optim` (``novograd``, ``random_bases``); the methods that
take the batch come from :mod:`admm_jax.admm`. Every entry returns an
``optax.GradientTransformationExtraArgs``.

The state speaks for the method. :func:`admm_jax.train.fit` (and any loop) asks the state, never
the method's name:

* ``takes_batch``: a state class with the class attribute ``takes_batch = True`` anywhere in the
  state (also inside ``optax.chain`` or a wrapper) belongs to a method that takes the batch
  instead of gradients, ``update(None, state, params, inputs=x, targets=y, indices=i)``
  (:func:`needs_gradients`).
* ``diagnostics``: a node with a ``diagnostics`` NamedTuple of scalars reports the method's
  per-step figures; :func:`diagnostics` collects them, ``fit`` logs every field and treats a
  non-finite one as a failed step.
* ``keeps_itself``: a state class with ``keeps_itself = True`` leaves itself unchanged when a
  step fails (ADMMiRNN's per-sample multipliers), so a loop need not restore it (a select
  over ``O(num_samples)`` floats per step).

* ``computes_gradients``: the state class of the transformation that first receives the
  gradients says ``computes_gradients = True``: it may be given ``None`` and then uses the
  gradient of its own backward pass (K-FAC), so a loop need not differentiate
  (:func:`computes_gradients`).

A registry :class:`Entry` adds what only a name can know: the default learning rate, the
task-derived arguments (:attr:`Entry.task_kwargs`), whether the factory is built for the model
(:attr:`Entry.takes_model`), the learning-rate schedule of a run (:attr:`Entry.schedule`),
the per-sample memory a task will need (:attr:`Entry.state_bytes`) and an optional
retry-on-divergence wrapper (:attr:`Entry.retry`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from admm_jax import _validation as checks
from admm_jax.admm import ADMMiRNNState, admmirnn, increase_rho_on_divergence
from admm_jax.admm.streaming import admm_memory_bytes
from admm_jax.kfac import KFACState, admm_kfac, admm_preconditioned
from admm_jax.nonfinite import reject_nonfinite
from admm_jax.optim import novograd, random_bases


class Entry(NamedTuple):
    """A registered optimizer.

    factory: ``(**kwargs) -> GradientTransformationExtraArgs``; learning_rate: its default
    learning rate (``None``: the factory takes none); description: one line for ``--help``;
    state: the class of its state (whose ``takes_batch`` attribute :func:`takes_batch` reads;
    ``None`` for optax's states); task_kwargs: ``task -> dict`` of arguments a task fills in
    (:meth:`admm_jax.tasks.Task.optimizer`), from its ``loss``, ``many_to_many``, ``train``,
    ``seq_len``; state_bytes: ``(task, hidden) -> int``, the per-sample state it keeps for a
    task (checked by the CLI before training); retry: ``tx -> tx``, a wrapper that retries a
    failed step (``admm-jax train --on-divergence increase_rho``); takes_model: the factory
    is ``factory(model, inputs, learning_rate, **kwargs)``, built for the model it trains and
    an example batch; schedule: ``(learning_rate, steps or None) -> schedule``, the learning
    rate over a run of ``steps`` steps (``None``: of unknown length) as the CLI and
    :func:`admm_jax.compare.compare` run it (``None``: a constant rate); elman_only: it trains
    the package's :class:`admm_jax.ElmanRNN` only.
    """

    factory: Callable[..., optax.GradientTransformationExtraArgs]
    learning_rate: float | None
    description: str
    state: type | None = None
    task_kwargs: Callable[[Any], dict[str, Any]] | None = None
    state_bytes: Callable[[Any, int], int] | None = None
    retry: Callable[[Any], Any] | None = None
    takes_model: bool = False
    schedule: Callable[[float, int | None], optax.Schedule] | None = None
    elman_only: bool = False


def _model_kwargs(task: Any) -> dict[str, Any]:
    """What a method that solves for the model's blocks must know of the task."""
    return {"loss": task.loss, "many_to_many": task.many_to_many}


def _admmirnn_kwargs(task: Any) -> dict[str, Any]:
    # the training set's size, for the sweeps that keep per-sample multipliers
    return {**_model_kwargs(task), "task_size": (len(task.train[0]), task.seq_len)}


def _admmirnn(*, task_size: tuple[int, int] | None = None,
              **kwargs: Any) -> optax.GradientTransformationExtraArgs:
    """:func:`admm_jax.admmirnn`; ``task_size = (num_samples, seq_len)`` sizes the per-sample
    multipliers of ``sweep="backward"`` or ``"parallel"`` (unless given); the coupled default
    keeps none and is not given them."""
    if (task_size is not None and kwargs.get("sweep", "coupled") != "coupled"
            and "num_samples" not in kwargs):
        kwargs = {"num_samples": task_size[0], "seq_len": task_size[1], **kwargs}
    return admmirnn(**kwargs)


def _loss_kwargs(task: Any) -> dict[str, Any]:
    return {"loss": task.loss}


def warmup(learning_rate: float, steps: int | None) -> optax.Schedule:
    """The K-FAC methods' schedule (their factors are young in the first steps): a linear
    warmup over ``min(200, steps / 10)`` steps, then a cosine decay to 0 at ``steps``; for a
    run of unknown length, 200 warmup steps, then constant."""
    if steps is None:
        return optax.warmup_constant_schedule(0.0, learning_rate, 200)
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, min(200, steps // 10)),
                                              max(2, steps))


def _admmirnn_bytes(task: Any, hidden: int) -> int:
    # the registry builds the default sweep ("coupled"), which keeps no per-sample state
    return admm_memory_bytes(len(task.train[0]), task.seq_len, hidden, task.out_features,
                             input_dim=task.in_features,
                             many_to_many=task.many_to_many)["per_sample_state"]


# keyword defaults bound with partial: the factories keep a plain signature, which
# optax.inject_hyperparams reads (a **kwargs wrapper would hide the arguments from it)
_random_bases = functools.partial(random_bases, dim=250, seed=0)
_momentum = functools.partial(optax.sgd, momentum=0.9)


_REGISTRY: dict[str, Entry] = {
    "admmirnn": Entry(_admmirnn, None, "ADMMiRNN: ADMM on the unfolded Elman RNN, no gradients",
                      ADMMiRNNState, _admmirnn_kwargs, _admmirnn_bytes,
                      increase_rho_on_divergence, elman_only=True),
    "admm_preconditioned": Entry(admm_preconditioned, 0.1, "one-sided time-shared K-FAC: each "
                                 "weight's input covariance over time "
                                 "(admm_jax.admm_preconditioned)", KFACState, _loss_kwargs,
                                 takes_model=True, schedule=warmup),
    "admm_kfac": Entry(admm_kfac, 0.3, "time-shared two-sided K-FAC for any Flax recurrent "
                       "model (admm_jax.admm_kfac)", KFACState, _loss_kwargs, takes_model=True,
                       schedule=warmup),
    "sgd": Entry(optax.sgd, 0.1, "plain SGD (optax.sgd)"),
    "momentum": Entry(_momentum, 0.05, "SGD with heavy-ball momentum 0.9 (optax.sgd)"),
    "adam": Entry(optax.adam, 1e-3, "Adam (optax.adam)"),
    "rmsprop": Entry(optax.rmsprop, 1e-3, "RMSprop (optax.rmsprop)"),
    "adagrad": Entry(optax.adagrad, 0.05, "Adagrad (optax.adagrad)"),
    "novograd": Entry(novograd, 0.01, "NovoGrad, layer-wise normalised momentum "
                      "(admm_jax.novograd)"),
    "random_bases": Entry(_random_bases, 1.0, "random-bases descent, dim=250 directions, "
                          "for models with >> 250 parameters (admm_jax.random_bases)"),
}


def canonical_name(name: str) -> str:
    """``name`` lower-cased with ``-`` read as ``_`` (``"Random-Bases"`` -> ``"random_bases"``)."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer: expected a name (str), got {type(name).__name__}")
    return name.strip().lower().replace("-", "_")


def names() -> tuple[str, ...]:
    """The registered names, in registry order."""
    return tuple(_REGISTRY)


def entry(name: str) -> Entry:
    """The :class:`Entry` registered as ``name``.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
    """
    key = canonical_name(name)
    if key not in _REGISTRY:
        raise ValueError(f"optimizer: unknown name {name!r}; expected one of "
                         f"{', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def default_learning_rate(name: str) -> float | None:
    """The learning rate :func:`get` uses when none is given (``None`` for ``admmirnn``)."""
    return entry(name).learning_rate


def get(name: str, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
    """Build the optimizer registered as ``name`` with ``kwargs``.

    Gradient optimizers take ``learning_rate`` (default: :func:`default_learning_rate`) and
    their factory's other arguments; the K-FAC methods also ``model=`` and ``inputs=`` (an
    example batch: :attr:`Entry.takes_model`); ``admmirnn`` takes
    :func:`admm_jax.admmirnn`'s (``rho``, ``loss``, ``many_to_many``, ``sweep``, ...;
    ``num_samples``/``seq_len`` for the per-sample sweeps) and no learning rate.

    Args:
      name: one of :func:`names` (case-insensitive, ``-`` or ``_``).
      **kwargs: passed to the factory.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that rejects a non-finite step (zero
      update, state unchanged) and names a state built for other parameters
      (:func:`admm_jax.reject_nonfinite`).

    Raises:
      ValueError: unknown name (the message lists the valid ones).
      ValueError: a learning rate that is not a finite number > 0 (or a schedule).
      TypeError: ``learning_rate`` given to ``admmirnn``, ``model``/``inputs`` missing for
        a method built for the model, or an argument the factory lacks.

    Examples:
      >>> import jax.numpy as jnp
      >>> from admm_jax import optimizers
      >>> tx = optimizers.get("adam", learning_rate=1e-2)
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> optimizers.needs_gradients(state)
      True
      >>> optimizers.get("lbfgs")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: optimizer: unknown name 'lbfgs'; expected one of admmirnn, ...
    """
    e = entry(name)
    if e.takes_model:
        model, inputs = kwargs.pop("model", None), kwargs.pop("inputs", None)
        if model is None or inputs is None:
            raise TypeError(f"model, inputs: {canonical_name(name)} is built for the model it "
                            f"trains: optimizers.get({canonical_name(name)!r}, model=model, "
                            "inputs=example_batch)")
        if "learning_rate" in kwargs:
            checks.learning_rate("learning_rate", kwargs["learning_rate"])
        tx = e.factory(model, inputs, **kwargs)  # its own default: a warmup
    elif e.learning_rate is None:
        if "learning_rate" in kwargs:
            raise TypeError(f"learning_rate: {canonical_name(name)} takes no learning rate "
                            f"(got learning_rate={kwargs['learning_rate']!r})")
        tx = e.factory(**kwargs)
    else:
        lr = kwargs.pop("learning_rate", e.learning_rate)
        checks.learning_rate("learning_rate", lr)
        tx = e.factory(lr, **kwargs)
    # one rule for all: a non-finite step is not applied (zero update, state unchanged);
    # a no-op for the package's own methods, which apply it themselves
    return reject_nonfinite(tx)


def takes_batch(name: str) -> bool:
    """Whether the optimizer registered as ``name`` takes the batch instead of gradients (read
    from its state class, as :func:`needs_gradients` reads it from a state)."""
    return bool(getattr(entry(name).state, "takes_batch", False))


def _nodes(opt_state: Any, has) -> list[Any]:
    """The nodes of ``opt_state`` for which ``has(node)`` holds, outermost first."""
    leaves = jax.tree_util.tree_leaves(opt_state, is_leaf=has)
    return [x for x in leaves if has(x)]


def _takes_batch(x: Any) -> bool:
    return getattr(type(x), "takes_batch", False) is True


def _keeps_itself(x: Any) -> bool:
    return getattr(type(x), "keeps_itself", False) is True


def _has_diagnostics(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "diagnostics")


def first_receiver(opt_state: Any) -> Any:
    """The state of the transformation that first receives the gradients: the first of an
    ``optax.chain`` (a plain tuple), the inner one of ``optax.inject_hyperparams``, else the
    state itself."""
    while True:
        if type(opt_state) is tuple and opt_state:
            opt_state = opt_state[0]
        elif isinstance(opt_state, optax.InjectHyperparamsState
                        | optax.InjectStatefulHyperparamsState):
            opt_state = opt_state.inner_state
        else:
            return opt_state


def needs_gradients(opt_state: Any) -> bool:
    """False when the transformation that first receives the gradients
    (:func:`first_receiver`) takes the batch instead (``takes_batch``) or computes them
    itself (``computes_gradients``): a loop may then call ``update(None, ..., inputs=x,
    targets=y)`` and never differentiate.

    Examples:
      >>> from flax import nnx
      >>> import optax
      >>> from admm_jax import ElmanRNN, admmirnn, optimizers
      >>> params = nnx.state(ElmanRNN(2, 4, 1, rngs=nnx.Rngs(0)), nnx.Param)
      >>> optimizers.needs_gradients(optimizers.get("adam").init(params))
      True
      >>> optimizers.needs_gradients(admmirnn().init(params))
      False
      >>> chained = optax.chain(optax.clip_by_global_norm(1.0), admmirnn())
      >>> optimizers.needs_gradients(chained.init(params))  # the clip needs them
      True
    """
    first = type(first_receiver(opt_state))
    return not (getattr(first, "takes_batch", False) is True
                or getattr(first, "computes_gradients", False) is True)


def takes_batch_somewhere(opt_state: Any) -> bool:
    """True when a state class anywhere in ``opt_state`` says ``takes_batch = True``: its
    ``update`` needs ``inputs=`` and ``targets=`` (besides any gradients)."""
    return bool(_nodes(opt_state, _takes_batch))


def keeps_itself(opt_state: Any) -> bool:
    """True when a state class in ``opt_state`` says ``keeps_itself = True``: the method leaves
    its state unchanged when a step fails, so a loop need not restore the old one."""
    return bool(_nodes(opt_state, _keeps_itself))


def diagnostics(opt_state: Any) -> dict[str, jax.Array]:
    """Every field of every ``diagnostics`` NamedTuple in ``opt_state``, by name (the outermost
    node wins a name that two report).

    Examples:
      >>> from flax import nnx
      >>> from admm_jax import ElmanRNN, admmirnn, optimizers
      >>> params = nnx.state(ElmanRNN(2, 4, 1, rngs=nnx.Rngs(0)), nnx.Param)
      >>> sorted(optimizers.diagnostics(admmirnn().init(params)))
      ['batch_loss', 'dual_residual', 'lagrangian', 'loss', 'r1', 'r2', 'r3']
      >>> optimizers.diagnostics(optimizers.get("adam").init(params))
      {}
    """
    out: dict[str, jax.Array] = {}
    for node in _nodes(opt_state, _has_diagnostics):
        for k, v in node.diagnostics._asdict().items():
            out.setdefault(k, v)
        # a wrapper's state reports its figures and holds the inner method's state
        inner = tuple(getattr(node, f) for f in node._fields if f != "diagnostics")
        for k, v in diagnostics(inner).items():
            out.setdefault(k, v)
    return out


def admm_state(opt_state: Any) -> ADMMiRNNState | None:
    """The first :class:`admm_jax.ADMMiRNNState` inside ``opt_state``, else ``None``."""
    found = _nodes(opt_state, lambda x: isinstance(x, ADMMiRNNState))
    return found[0] if found else None


__all__ = ["Entry", "admm_state", "canonical_name", "default_learning_rate", "first_receiver",
           "diagnostics", "entry", "get", "keeps_itself", "names", "needs_gradients",
           "takes_batch", "takes_batch_somewhere", "warmup"]
