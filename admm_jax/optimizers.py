"""Every optimizer by name: ``admm_jax.optimizers.get("adam", learning_rate=1e-3)``.

The gradient optimizers come from optax itself (``sgd``, ``momentum``, ``adam``, ``rmsprop``,
``adagrad``) or from :mod:`admm_jax.optim` (``novograd``, ``random_bases``); ``admmirnn`` is
:func:`admm_jax.admmirnn`. Every entry returns an ``optax.GradientTransformationExtraArgs``.

Whether a transformation needs gradients is read from its *state*
(:func:`needs_gradients`): a state holding an :class:`admm_jax.ADMMiRNNState` or an
:class:`admm_jax.ADMMPreconditionedState` anywhere (also inside ``optax.chain``) belongs to a
method that takes the batch instead of gradients (``update(None, state, params, inputs=x,
targets=y)``). Reading the state rather than a
registry flag makes the rule hold for any transformation a user composes, registered or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from admm_jax import _validation as V
from admm_jax.admm import ADMMiRNNState, ADMMPreconditionedState, admm_preconditioned, admmirnn
from admm_jax.nonfinite import reject_nonfinite
from admm_jax.optim import novograd, random_bases


class Entry(NamedTuple):
    """A registered optimizer.

    factory: ``(**kwargs) -> GradientTransformationExtraArgs``; learning_rate: its default
    learning rate (``None``: the factory takes none); description: one line for ``--help``;
    takes_batch: ``update`` takes the batch (``inputs=``, ``targets=``) and no gradients.
    """

    factory: Callable[..., optax.GradientTransformationExtraArgs]
    learning_rate: float | None
    description: str
    takes_batch: bool = False


def _random_bases(learning_rate: float, dim: int = 250, *, seed: int = 0,
                  **kwargs: Any) -> optax.GradientTransformationExtraArgs:
    return random_bases(learning_rate, dim, seed=seed, **kwargs)


def _momentum(learning_rate: float, momentum: float = 0.9,
              **kwargs: Any) -> optax.GradientTransformationExtraArgs:
    return optax.sgd(learning_rate, momentum=momentum, **kwargs)


_REGISTRY: dict[str, Entry] = {
    "admmirnn": Entry(admmirnn, None, "ADMMiRNN: ADMM on the unfolded Elman RNN, no gradients",
                      takes_batch=True),
    "admm_preconditioned": Entry(admm_preconditioned, 0.1, "ADMMiRNN's weight blocks fed with "
                                 "back-propagated adjoints: a time-shared K-FAC-like step "
                                 "(admm_jax.admm_preconditioned)", takes_batch=True),
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
    their factory's other arguments; ``admmirnn`` takes :func:`admm_jax.admmirnn`'s
    (``num_samples``, ``seq_len``, ``rho``, ``loss``, ``many_to_many``, ...) and no learning
    rate.

    Args:
      name: one of :func:`names` (case-insensitive, ``-`` or ``_``).
      **kwargs: passed to the factory.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that rejects a non-finite step (zero
      update, state unchanged: :func:`admm_jax.reject_nonfinite`).

    Raises:
      ValueError: unknown name (the message lists the valid ones).
      ValueError: a learning rate that is not a finite number > 0 (or a schedule).
      TypeError: ``learning_rate`` given to ``admmirnn``, or an argument the factory lacks.

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
    if e.learning_rate is None:
        if "learning_rate" in kwargs:
            raise TypeError(f"learning_rate: {canonical_name(name)} takes no learning rate "
                            f"(got learning_rate={kwargs['learning_rate']!r})")
        tx = e.factory(**kwargs)
    else:
        lr = kwargs.pop("learning_rate", e.learning_rate)
        V.learning_rate("learning_rate", lr)
        tx = e.factory(lr, **kwargs)
    # one rule for all: a non-finite step is not applied (zero update, state unchanged);
    # a no-op for admmirnn and admm_preconditioned, which apply it themselves
    return reject_nonfinite(tx)


_BATCH_STATES = (ADMMiRNNState, ADMMPreconditionedState)


def takes_batch(name: str) -> bool:
    """Whether the optimizer registered as ``name`` takes the batch instead of gradients."""
    return entry(name).takes_batch


def _find_state(opt_state: Any, types):
    """The first state of one of ``types`` anywhere in ``opt_state``, else ``None``."""
    leaves = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, types))
    return next((x for x in leaves if isinstance(x, types)), None)


def needs_gradients(opt_state: Any) -> bool:
    """False when ``opt_state`` holds an :class:`admm_jax.ADMMiRNNState` or an
    :class:`admm_jax.ADMMPreconditionedState` (at any depth)."""
    return _find_state(opt_state, _BATCH_STATES) is None


def preconditioned_state(opt_state: Any) -> ADMMPreconditionedState | None:
    """The first :class:`admm_jax.ADMMPreconditionedState` inside ``opt_state``, else ``None``."""
    return _find_state(opt_state, ADMMPreconditionedState)


def admm_state(opt_state: Any) -> ADMMiRNNState | None:
    """The first :class:`admm_jax.ADMMiRNNState` inside ``opt_state``, else ``None``."""
    return _find_state(opt_state, ADMMiRNNState)


__all__ = ["Entry", "admm_state", "canonical_name", "default_learning_rate", "entry", "get",
           "names", "needs_gradients", "preconditioned_state", "takes_batch"]
