"""Reading the Elman parameters (U, W, b, V, c) out of any pytree, and writing updates back."""

from __future__ import annotations

from typing import Any

import jax

from admm_jax.models.elman import PARAM_NAMES


def path_names(path) -> tuple[str, ...]:
    """The dict keys / attribute names of a pytree path, without nnx's ``.value``."""
    out = []
    for entry in path:
        name = getattr(entry, "key", None)
        if name is None:
            name = getattr(entry, "name", None)
        if isinstance(name, str) and name != "value":
            out.append(name)
    return tuple(out)


def _leaf_name(path) -> str | None:
    """The innermost dict key or attribute name of a pytree path, skipping ``.value``."""
    names = path_names(path)
    return names[-1] if names else None


def split_params(params: Any) -> tuple[dict[str, jax.Array], Any, list[str]]:
    """Find ``U, W, b, V, c`` in ``params`` (a dict, an ``nnx.State``, a nested mapping).

    Returns:
      ``(named, treedef, names)``: the five arrays by name, the tree structure, and the name of
      every leaf in flattening order (for :func:`merge_like`).

    Raises:
      ValueError: naming the missing or unexpected leaves.
    """
    if params is None:
        raise ValueError(
            "params: admmirnn needs the current parameters; call "
            "tx.update(grads, state, params, inputs=..., targets=...)"
        )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [_leaf_name(path) for path, _ in leaves]
    named = {n: leaf for n, (_, leaf) in zip(names, leaves, strict=True)}
    missing = [k for k in PARAM_NAMES if k not in named]
    extra = [n for n in names if n not in PARAM_NAMES]
    if missing or extra or len(names) != len(PARAM_NAMES):
        raise ValueError(
            f"params: expected exactly the Elman parameters {PARAM_NAMES} "
            f"(e.g. nnx.state(ElmanRNN(...), nnx.Param)), got leaves named {names}"
        )
    return named, treedef, names


def merge_like(values: dict[str, jax.Array], treedef, names: list[str]):
    """Rebuild a pytree of ``treedef``'s structure from ``values`` keyed by leaf name."""
    return jax.tree_util.tree_unflatten(treedef, [values[n] for n in names])
