"""Stacked runs: the pytrees of S runs on a leading run axis, and the one program that steps
them all.

Everything here is a pure function of stacked arrays; the host side (batch order, histories,
evaluation, checkpoints) is [`BatchedTrainer`][admm_jax.train.BatchedTrainer]'s."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def stack(trees: Sequence[Any]) -> Any:
    """``trees`` (one per run, the same structure) stacked leaf by leaf on a new leading axis."""
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)


def unstack(tree: Any, run: int) -> Any:
    """Run ``run``'s slice of a stacked ``tree``."""
    return jax.tree_util.tree_map(lambda a: a[run], tree)


def set_hyperparams(opt_state: Any, values: Mapping[str, Any]) -> Any:
    """``opt_state`` with the hyperparameters ``values`` written into every
    ``optax.inject_hyperparams`` state that holds them (an int given for a PRNG-key
    hyperparameter becomes ``jax.random.key(int)``)."""
    found: set[str] = set()

    def put(node):
        if not isinstance(node, _INJECTED):
            return node
        hp = dict(node.hyperparams)
        for name, v in values.items():
            if name in hp:
                found.add(name)
                old = hp[name]
                if jax.dtypes.issubdtype(old.dtype, jax.dtypes.prng_key):
                    v = v if isinstance(v, jax.Array) and v.dtype == old.dtype \
                        else jax.random.key(int(v))
                else:
                    v = jnp.asarray(v, old.dtype)
                if v.shape != old.shape:
                    raise ValueError(f"hyperparams: {name} has shape {old.shape} in the "
                                     f"optimizer's state, got {v.shape}")
                hp[name] = v
        return node._replace(hyperparams=hp)

    out = jax.tree_util.tree_map(put, opt_state, is_leaf=lambda n: isinstance(n, _INJECTED))
    missing = sorted(set(values) - found)
    if missing:
        have = sorted({k for n in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda n: isinstance(n, _INJECTED))
            if isinstance(n, _INJECTED) for k in n.hyperparams})
        raise ValueError(f"hyperparams: {missing} not in the optimizer's state (build it with "
                         f"optax.inject_hyperparams(...)); it holds {have or 'none'}")
    return out


def per_run(name: str, values: Mapping[str, Any] | None, runs: int) -> dict[str, list]:
    """``{key: value or S values}`` as ``{key: [S values]}``; a length other than S is an
    error naming ``name``."""
    out = {}
    for k, v in (values or {}).items():
        if isinstance(v, Sequence | np.ndarray) and not isinstance(v, str) and np.ndim(v) > 0:
            if len(v) != runs:
                raise ValueError(f"{name}: {k!r} has {len(v)} values, expected one per run "
                                 f"({runs}) or a single value")
            out[k] = list(v)
        else:
            out[k] = [v] * runs
    return out


def jsonable(v: Any) -> Any:
    """A per-run setting as JSON (a PRNG key as its key data)."""
    if isinstance(v, jax.Array) and jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(v)).tolist()
    return np.asarray(v).tolist() if hasattr(v, "shape") else v


def over_runs(fn: Callable, runs: int, group_size: int | None, *args: Any) -> Any:
    """``fn`` mapped over the leading run axis of ``args`` (``runs`` long): ``group_size``
    runs vectorised together (``jax.vmap``), the groups one after another (``lax.map``);
    ``None`` vectorises all runs, ``1`` none."""
    g = runs if group_size is None else min(group_size, runs)
    if g == 1:
        return jax.lax.map(lambda a: fn(*a), args)
    if g == runs:
        return jax.vmap(fn)(*args)
    return jax.lax.map(lambda a: fn(*a), args, batch_size=g)


def program(step: Callable, runs: int, group_size: int | None) -> Callable:
    """The program that runs ``K`` steps of ``runs`` stacked runs:
    ``(carry, x, y, indices [K, S, B], model_kwargs, keys, iteration, n)
    -> (carry, metrics [K, S], ok [K, S])``, ``carry`` the runs' ``(params, opt_state, live)``.

    ``step`` is one run's step of [`make_train_step`][admm_jax.train.make_train_step]; the
    training data ``x, y`` is shared and each run's batch is gathered from its indices. The
    steps ``k >= n`` are masked (so one program serves any number of steps up to ``K``), as
    are the runs not ``live``; a run whose step is not finite keeps its weights and state and
    leaves ``live``."""

    def run(carry, x, y, indices, kwargs, keys, iteration, n):
        def body(carry, inp):
            p, o, alive = carry
            k, idx = inp
            it = iteration + k

            def one_run(p, o, go, idx, kw, key):
                new_p, new_o, m, ok = step(p, o, x[idx], y[idx], idx, kw, key, it)
                go = go & ok

                def keep(new, old):
                    return jax.tree_util.tree_map(lambda a, b: jnp.where(go, a, b), new, old)

                return keep(new_p, p), keep(new_o, o), m, ok

            p, o, m, ok = over_runs(one_run, runs, group_size, p, o, alive & (k < n), idx,
                                    kwargs, keys)
            return (p, o, alive & (ok | (k >= n))), (m, ok)

        ks = jnp.arange(indices.shape[0], dtype=jnp.int32)
        carry, (metrics, ok) = jax.lax.scan(body, carry, (ks, indices))
        return carry, metrics, ok

    return run


def compile_program(run: Callable, carry: tuple, data: tuple, model_kwargs: Any, keys: Any,
                    steps: int, batch_size: int) -> Any:
    """``run`` (a `program`) compiled for the stacked ``carry`` (``(params, opt_state,
    live)``, donated), the training ``data`` ``(x, y)`` and ``steps`` steps of ``batch_size``
    samples."""
    live = carry[2]
    with warnings.catch_warnings():  # CPU backends cannot donate: nothing to report
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        return jax.jit(run, donate_argnums=(0,)).lower(
            carry, *data, np.zeros((steps, len(live), batch_size), np.int32), model_kwargs,
            keys, np.int32(0), np.int32(steps)).compile()
