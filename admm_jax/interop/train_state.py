"""Linen ``TrainState`` loops with transformations that need extra ``update`` arguments.

``flax.training.train_state.TrainState.apply_gradients(grads=..., **kwargs)`` treats its
``kwargs`` as fields to replace and calls ``tx.update(grads, opt_state, params)`` without extra
arguments, so ADMMiRNN (which needs ``inputs=``/``targets=``) cannot run through it.
:func:`apply_gradients` is the same step with the extra arguments forwarded, and
:class:`ExtraArgsTrainState` offers it as a method.
"""

from __future__ import annotations

from typing import Any, TypeVar

import optax
from flax.training import train_state

S = TypeVar("S", bound=train_state.TrainState)


def apply_gradients(state: S, grads: Any = None, **extra_args: Any) -> S:
    """One optimizer step on a Linen ``TrainState``, forwarding ``extra_args`` to ``tx.update``.

    .. math::
        (u, s') = \\mathrm{tx.update}(g, s, \\theta, **extra),\\quad \\theta' = \\theta + u,
        \\quad \\mathrm{step}' = \\mathrm{step} + 1

    Args:
      state: a ``flax.training.train_state.TrainState`` (or subclass) whose ``tx`` is, e.g.,
        :func:`admm_jax.admmirnn` (``params`` in ElmanRNN layout) or
        ``adapt_flax_rnn(admmirnn(...))`` (``params`` of ``nn.RNN(nn.SimpleCell)`` +
        ``nn.Dense``).
      grads: gradients in ``state.params``' structure; ``None`` for ADMMiRNN (it does not use
        them). Gradient transformations need them as usual.
      **extra_args: forwarded to ``tx.update`` (ADMMiRNN: ``inputs=``, ``targets=`` and
        ``indices=``).

    Returns:
      ``state`` with ``step + 1`` and the new ``params`` and ``opt_state``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import flax.linen as nn
      >>> from flax.training.train_state import TrainState
      >>> import admm_jax
      >>> model = nn.Sequential([nn.RNN(nn.SimpleCell(8)), lambda h: h[:, -1], nn.Dense(2)])
      >>> x = jax.random.normal(jax.random.key(1), (16, 5, 3))
      >>> y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
      >>> tx = admm_jax.adapt_flax_rnn(admm_jax.admmirnn())
      >>> state = TrainState.create(apply_fn=model.apply,
      ...                           params=model.init(jax.random.key(0), x)["params"], tx=tx)
      >>> state = jax.jit(admm_jax.apply_gradients)(state, inputs=x, targets=y)
      >>> int(state.step)
      1
    """
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **extra_args)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state)


class ExtraArgsTrainState(train_state.TrainState):
    """A Linen ``TrainState`` whose ``apply_gradients`` forwards extra arguments to ``tx``.

    ``state.apply_gradients(grads=g, inputs=x, targets=y)`` runs
    ``tx.update(g, opt_state, params, inputs=x, targets=y)`` (``grads`` defaults to ``None``,
    which ADMMiRNN accepts). Unlike Linen's ``TrainState`` it does not replace other fields from
    keyword arguments: use ``.replace(...)`` for that.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import admm_jax
      >>> from flax import nnx
      >>> params = admm_jax.ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)).params_dict()
      >>> state = admm_jax.ExtraArgsTrainState.create(
      ...     apply_fn=admm_jax.elman_apply, params=params, tx=admm_jax.admmirnn())
      >>> x = jax.random.normal(jax.random.key(1), (16, 5, 3))
      >>> state = state.apply_gradients(inputs=x, targets=(x[:, 0, 0] > 0).astype(jnp.int32))
      >>> int(state.step)
      1
    """

    def apply_gradients(self, *, grads: Any = None, **extra_args: Any):  # type: ignore[override]
        """``apply_gradients(self, grads, **extra_args)`` (see the module function)."""
        return apply_gradients(self, grads, **extra_args)
