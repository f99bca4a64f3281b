"""One rule for every optimizer: a step with a non-finite update or state is not applied."""

from __future__ import annotations

import weakref
from typing import Any

import jax
import jax.numpy as jnp
import optax

from admm_jax import _validation as checks

_GUARDED: weakref.WeakSet = weakref.WeakSet()  # update functions that already apply the rule


def all_finite(tree: Any) -> jax.Array:
    """``True`` when every inexact leaf of ``tree`` is finite (integer, bool and key leaves
    always are); a scalar bool array."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def _select(ok: jax.Array, new: Any, old: Any) -> Any:
    def pick(n, o):
        if not hasattr(n, "dtype"):
            return n
        if jax.dtypes.issubdtype(n.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                jnp.where(ok, jax.random.key_data(n), jax.random.key_data(o)),
                impl=jax.random.key_impl(n))
        return jnp.where(ok, n, o).astype(n.dtype)

    return jax.tree_util.tree_map(pick, new, old)


def reject_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    r"""``inner`` with its non-finite steps rejected: zero updates and the state unchanged.

    $$
    (u, s') = \mathrm{inner.update}(g, s, \theta),\quad
    \mathrm{ok} = \text{every entry of } u \text{ and of } s' \text{ is finite},\quad
    \text{returns } (u, s') \text{ if ok else } (0, s)
    $$

    So after a bad batch (a NaN input, an overflowing gradient, an out-of-range token id under
    ``jit``) the weights and the whole optimizer state, step count included, are the last good
    ones; a rejected step is visible as a ``count`` that did not advance. Unlike
    ``optax.apply_if_finite`` the state keeps ``inner``'s own type (no wrapper state), so code
    that reads ``state.count`` or finds the state by type is unchanged. Every optimizer of
    [`admm_jax.optimizers.get`][] is wrapped, and [`admm_jax.admm_preconditioned`][] and
    [`admm_jax.admm_kfac`][] apply it themselves; [`admm_jax.admmirnn`][] applies the
    same rule to the batch's rows of its per-sample state (selecting the whole state would
    cost a pass over every sample).
    Wrapping twice is a no-op.

    Cost: one ``isfinite`` reduction over the updates and the state and one select per leaf:
    a few passes over parameter-sized arrays, negligible beside a recurrent forward pass.

    Args:
      inner: any optax transformation.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``inner``'s state; ``update`` forwards
      extra keyword arguments (``inputs=``, ``targets=``, ...) to ``inner``.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> tx = reject_nonfinite(optax.adam(0.1))
      >>> params = {"w": jnp.ones(2)}
      >>> state = tx.init(params)
      >>> u, s = tx.update({"w": jnp.array([1.0, jnp.nan])}, state, params)
      >>> u["w"].tolist(), int(s[0].count)
      ([0.0, 0.0], 0)

    References:
      ``optax.apply_if_finite`` (the same idea with counters in a wrapper state).
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(f"inner: expected an optax GradientTransformation, got "
                        f"{type(inner).__name__}")
    inner = optax.with_extra_args_support(inner)
    if inner.update in _GUARDED:
        return inner

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, new_state = inner.update(updates, state, params, **extra_args)
        ok = all_finite(new_updates) & all_finite(new_state)
        new_updates = jax.tree_util.tree_map(
            lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
        return new_updates, _select(ok, new_state, state)

    _GUARDED.add(update_fn)
    tx = optax.GradientTransformationExtraArgs(inner.init, update_fn)
    options = checks.model_options(inner)
    return tx if options is None else checks.register_model_options(tx, **options)


def mark_guarded(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Record that ``tx`` applies the non-finite rule itself (so
    [`reject_nonfinite`][admm_jax.reject_nonfinite] leaves it alone); returns ``tx``."""
    _GUARDED.add(tx.update)
    return tx


__all__ = ["all_finite", "mark_guarded", "reject_nonfinite"]
