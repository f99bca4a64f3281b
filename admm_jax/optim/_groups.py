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


def leaf_labels(labels_tree: Any, params: Any, treedef: Any, *, name: str) -> list[Hashable]:
    """One label per leaf of ``params``, broadcasting a prefix pytree of labels."""
    label_leaves, label_def = jax.tree.flatten(labels_tree)
    try:
        subtrees = label_def.flatten_up_to(params)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{name}: expected a pytree of labels that is a prefix of the parameters "
            f"({treedef}), a callable params -> labels, or one of {SHORTCUTS}; got a tree "
            f"{label_def} that does not match ({err})"
        ) from None
    out: list[Hashable] = []
    for label, sub in zip(label_leaves, subtrees, strict=True):
        try:
            hash(label)
        except TypeError:
            raise TypeError(
                f"{name}: labels must be hashable (e.g. str or int), got {type(label).__name__}"
            ) from None
        out.extend([label] * len(jax.tree.leaves(sub)))
    if len(out) != treedef.num_leaves:
        raise ValueError(
            f"{name}: labels cover {len(out)} leaves but the parameters have "
            f"{treedef.num_leaves} (a None label drops a subtree; use a string or int)"
        )
    return out
