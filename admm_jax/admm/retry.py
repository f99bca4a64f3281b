"""A wrapper that retries a rejected ADMMiRNN iteration with larger penalties."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from admm_jax import _validation as checks
from admm_jax.admm.admmirnn import ADMMiRNNState


class IncreaseRhoDiagnostics(NamedTuple):
    """rho_increases: how many times the last step multiplied the penalties (0: the first try
    was accepted)."""

    rho_increases: jax.Array


class IncreaseRhoState(NamedTuple):
    """State of :func:`increase_rho_on_divergence`: the inner state and the last step's
    figures."""

    inner: Any
    diagnostics: IncreaseRhoDiagnostics

    takes_batch = True  # its update passes the batch to the inner method


def _admm_nodes(state: Any) -> list[ADMMiRNNState]:
    is_admm = lambda x: isinstance(x, ADMMiRNNState)  # noqa: E731
    return [x for x in jax.tree_util.tree_leaves(state, is_leaf=is_admm) if is_admm(x)]


def scale_rho(state: Any, factor: jax.Array | float) -> Any:
    """``state`` with the penalties of every :class:`admm_jax.ADMMiRNNState` in it multiplied
    by ``factor``."""
    def bump(x):
        if isinstance(x, ADMMiRNNState):
            return x._replace(rho=type(x.rho)(*(r * jnp.asarray(factor, r.dtype)
                                                for r in x.rho)))
        return x

    return jax.tree_util.tree_map(bump, state, is_leaf=lambda x: isinstance(x, ADMMiRNNState))


def increase_rho_on_divergence(inner: optax.GradientTransformationExtraArgs,
                               factor: float = 10.0,
                               max_increases: int = 3) -> optax.GradientTransformationExtraArgs:
    r"""Retry a rejected ADMMiRNN iteration from the same state with ``factor`` times the penalties.

    :func:`admm_jax.admmirnn` rejects an iteration that produces a non-finite weight, residual or
    Lagrangian (``diagnostics.loss`` is NaN, nothing else changes). A larger penalty ``rho``
    keeps the auxiliaries closer to the forward pass, which is often enough to make the
    iteration finite. This wrapper runs the iteration again, on the same batch and from the same
    state, with penalties ``rho * factor^k`` for ``k = 1, ..., max_increases``, and keeps the
    first accepted try (its larger penalties stay). If every try is rejected, the last one is
    returned: a loop such as :func:`admm_jax.train.fit` then sees the non-finite loss and stops
    or raises. Like ``optax.apply_if_finite``, it is a pure transformation: the retries run
    inside the jitted step (``lax.while_loop``; the inner update is traced once).

    Args:
      inner: a transformation whose state holds an :class:`admm_jax.ADMMiRNNState`
        (``admmirnn(...)``, also inside ``optax.chain``).
      factor: the multiplier of the penalties per retry, > 1.
      max_increases: the most retries per step, >= 1.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is :class:`IncreaseRhoState`;
      its ``diagnostics.rho_increases`` counts the retries of the last step.

    Raises:
      ValueError: ``factor <= 1``, ``max_increases < 1``, or (at ``init``) an inner state that
        holds no :class:`admm_jax.ADMMiRNNState`.

    Examples:
      >>> import numpy as np
      >>> from flax import nnx
      >>> from admm_jax import ElmanRNN, admmirnn, increase_rho_on_divergence
      >>> params = nnx.state(ElmanRNN(2, 4, 1, rngs=nnx.Rngs(0)), nnx.Param)
      >>> tx = increase_rho_on_divergence(admmirnn(loss="mse"), factor=10.0)
      >>> x, y = np.ones((8, 5, 2), np.float32), np.ones((8, 1), np.float32)
      >>> _, state = tx.update(None, tx.init(params), params, inputs=x, targets=y)
      >>> int(state.diagnostics.rho_increases)  # a finite iteration: no retry
      0

    References:
      Tang, Kan, Sun, Qiao, Xiao, Lai, Li (2020), *ADMMiRNN: Training RNN with Stable
      Convergence via an Efficient ADMM Approach*, ECML PKDD.
    """
    checks.positive_number("factor", factor)
    if not factor > 1:
        raise ValueError(f"factor: expected a number > 1, got {factor!r}")
    checks.positive_int("max_increases", max_increases)

    def init(params):
        state = inner.init(params)
        if not _admm_nodes(state):
            raise ValueError("inner: increase_rho_on_divergence changes ADMMiRNN's penalties, but "
                             "the inner state holds no ADMMiRNNState (use it around admmirnn)")
        return IncreaseRhoState(state, IncreaseRhoDiagnostics(jnp.zeros((), jnp.int32)))

    def update(updates, state: IncreaseRhoState, params=None, **extra):
        def rejected(s):
            return jnp.any(jnp.stack([~jnp.isfinite(n.diagnostics.loss) for n in _admm_nodes(s)]))

        def attempt(carry):
            k, _, _ = carry
            scale = jnp.asarray(factor, jnp.float32) ** k.astype(jnp.float32)
            u, s = inner.update(updates, scale_rho(state.inner, scale), params, **extra)
            return k + 1, u, s

        def again(carry):
            k, _, s = carry
            return (k == 0) | ((k <= max_increases) & rejected(s))

        u0 = jax.tree_util.tree_map(jnp.zeros_like, params)
        k, u, s = jax.lax.while_loop(again, attempt, (jnp.zeros((), jnp.int32), u0, state.inner))
        return u, IncreaseRhoState(s, IncreaseRhoDiagnostics(k - 1))

    tx = optax.GradientTransformationExtraArgs(init, update)
    options = checks.model_options(inner)  # what the inner method was built for, for fit's check
    return tx if options is None else checks.register_model_options(tx, **options)


__all__ = ["IncreaseRhoDiagnostics", "IncreaseRhoState", "increase_rho_on_divergence",
           "scale_rho"]
