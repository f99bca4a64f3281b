"""Group the leaves of a parameter pytree into layers / compartments.

NovoGrad's per-layer second moment and random-bases descent's compartments both need a
partition of the parameter leaves. The partition is specified as in ``optax.multi_transform``:
a pytree of labels (a prefix of the parameters: one label covers a whole subtree) or a
function ``params -> labels``; leaves with the same label form one group. Two shortcuts:
``"leaf"`` (one group per leaf, optax's convention) and ``"model"`` (one group for all).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import jax

GroupSpec = str | Callable[[Any], Any] | Any

SHORTCUTS = ("leaf", "model")


def leaf_groups(params: Any, spec: GroupSpec, *, name: str) -> tuple[tuple[int, ...], ...]:
    """Partition the leaf indices of ``params`` (``jax.tree.leaves`` order) by ``spec``.

    Groups are ordered by the first leaf they contain; each group lists its leaf indices in
    order. ``name`` is the argument name used in error messages.
    """
    leaves, treedef = jax.tree.flatten(params)
    n = len(leaves)
    if n == 0:
        return ()
    if spec is None or (isinstance(spec, str) and spec == "leaf"):
        return tuple((i,) for i in range(n))
    if isinstance(spec, str) and spec == "model":
        return (tuple(range(n)),)
    labels_tree = spec(params) if callable(spec) else spec
    labels = leaf_labels(labels_tree, params, treedef, name=name)
    order: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        order.setdefault(label, []).append(i)
    return tuple(tuple(v) for v in order.values())


def _key(entry: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def _path(path: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_key(e) for e in path)


def leaf_labels(labels_tree: Any, params: Any, treedef: Any, *, name: str) -> list[Hashable]:
    """One label per leaf of ``params``, broadcasting a prefix pytree of labels.

    Labels are matched to leaves by key path (dict keys, attribute names, sequence indices),
    so a plain dict of labels also fits an ``nnx.State`` or a ``FrozenDict`` of parameters.
    """
    labelled = [(_path(p), label)
                for p, label in jax.tree_util.tree_leaves_with_path(labels_tree)]
    out: list[Hashable] = []
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        leaf_path = _path(path)
        hits = [label for lp, label in labelled if leaf_path[:len(lp)] == lp]
        if len(hits) != 1:
            raise ValueError(
                f"{name}: expected a pytree of labels that is a prefix of the parameters, a "
                f"callable params -> labels, or one of {SHORTCUTS}; the parameter at "
                f"{jax.tree_util.keystr(path)} matches {len(hits)} labels (tree of labels: "
                f"{jax.tree.structure(labels_tree)}; parameters: {treedef})"
            )
        try:
            hash(hits[0])
        except TypeError:
            raise TypeError(
                f"{name}: labels must be hashable (e.g. str or int), got "
                f"{type(hits[0]).__name__}"
            ) from None
        out.append(hits[0])
    return out
