"""One rule for every optimizer: a step with a non-finite update or state is not applied."""

from __future__ import annotations

import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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


def _reports(node: Any) -> bool:
    return bool(getattr(type(node), "reported", ()))


def _keep_reports(kept: Any, new: Any) -> Any:
    """``kept`` (the old state) with the fields that a state class lists in its class attribute
    ``reported`` (figures of the step, e.g. K-FAC's batch loss) taken from ``new``: a rejected
    step still shows its NaN loss, as ADMMiRNN's ``diagnostics`` do."""
    def take(k, n):
        if not _reports(k):
            return k
        return k._replace(**{f: getattr(n, f) for f in type(k).reported})

    return jax.tree_util.tree_map(take, kept, new, is_leaf=_reports)


def _signature(tree: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x))))
                          for x in leaves)


def check_state(state: Any, expected: Any) -> None:
    """Check that ``state`` has the arrays of ``expected`` (``jax.eval_shape`` of the
    transformation's ``init`` on the parameters): same count, and each leaf, in order, the same
    shape and dtype. Containers may differ (a state that went through ``nnx.Optimizer``).

    Args:
      state: the optimizer state given to ``update``.
      expected: what ``init`` of the current parameters gives (arrays or shape structs).

    Raises:
      ValueError: naming the first leaf that differs: the state was built for other
        parameters.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> tx = optax.adam(0.1)
      >>> check_state(tx.init({"w": jnp.ones(3)}), jax.eval_shape(tx.init, {"w": jnp.ones(4)}))
      ... # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: state: leaf [0].mu['w'] is float32(3,), but tx.init(params) of these ...
    """
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    want = jax.tree_util.tree_leaves(expected)
    again = "it was built for other parameters; call tx.init(params) again"
    if len(flat) != len(want):
        raise ValueError(f"state: it has {len(flat)} arrays, but tx.init(params) of these "
                         f"parameters has {len(want)}: {again}")
    for (path, g), w in zip(flat, want, strict=True):
        gs, ws = tuple(np.shape(g)), tuple(np.shape(w))
        gd, wd = getattr(g, "dtype", None), getattr(w, "dtype", None)
        if gs != ws or (gd is not None and wd is not None and jnp.dtype(gd) != jnp.dtype(wd)):
            raise ValueError(f"state: leaf {jax.tree_util.keystr(path)} is {gd}{gs}, but "
                             f"tx.init(params) of these parameters gives {wd}{ws}: {again}")


def reject_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    r"""``inner`` with its non-finite steps rejected (zero updates, the state unchanged) and a
    state built for other parameters refused by name.

    $$
    (u, s') = \mathrm{inner.update}(g, s, \theta),\quad
    \mathrm{ok} = \text{every entry of } u \text{ and of } s' \text{ is finite},\quad
    \text{returns } (u, s') \text{ if ok else } (0, s)
    $$

    So after a bad batch (a NaN input, an overflowing gradient, an out-of-range token id under
    ``jit``) the weights and the whole optimizer state, step count included, are the last good
    ones; a rejected step is visible as a ``count`` that did not advance, and in the fields a
    state class lists in its class attribute ``reported`` (K-FAC's batch loss and step norm:
    its ``diagnostics``), which show the failed step's values (NaN). Unlike
    ``optax.apply_if_finite`` the state keeps ``inner``'s own type (no wrapper state), so code
    that reads ``state.count`` or finds the state by type is unchanged. Every optimizer of
    [`admm_jax.optimizers.get`][] is wrapped, and [`admm_jax.admm_preconditioned`][],
    [`admm_jax.admm_kfac`][], [`admm_jax.novograd`][] and [`admm_jax.random_bases`][] apply it
    themselves; [`admm_jax.admmirnn`][] applies the
    same rule to the batch's rows of its per-sample state (selecting the whole state would
    cost a pass over every sample).
    Wrapping twice is a no-op.

    A state whose arrays differ in shape or dtype from ``inner.init`` of the parameters given
    (of the gradients when ``params`` is ``None``) raises a ``ValueError`` before ``inner``
    runs: "state: ... it was built for other parameters; call tx.init(params) again" (checked
    at trace time, from shapes alone; cached per parameter shapes in eager loops).

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

    expected: dict[tuple, Any] = {}  # init's shapes, per parameter signature

    def update_fn(updates, state, params=None, **extra_args):
        like = params if params is not None else updates
        if jax.tree_util.tree_leaves(like):
            key = _signature(like)
            if key not in expected:
                expected[key] = jax.eval_shape(inner.init, like)
            check_state(state, expected[key])
        new_updates, new_state = inner.update(updates, state, params, **extra_args)
        ok = all_finite(new_updates) & all_finite(new_state)
        new_updates = jax.tree_util.tree_map(
            lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
        return new_updates, _keep_reports(_select(ok, new_state, state), new_state)

    _GUARDED.add(update_fn)
    tx = optax.GradientTransformationExtraArgs(inner.init, update_fn)
    options = checks.model_options(inner)
    return tx if options is None else checks.register_model_options(tx, **options)


def mark_guarded(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Record that ``tx`` applies the non-finite rule itself (so
    [`reject_nonfinite`][admm_jax.reject_nonfinite] leaves it alone); returns ``tx``."""
    _GUARDED.add(tx.update)
    return tx


__all__ = ["all_finite", "check_state", "mark_guarded", "reject_nonfinite"]
