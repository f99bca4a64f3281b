"""Per-sample losses and metrics ``(outputs, targets) -> [B]`` for [`admm_jax.train.fit`][]."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

PerSample = Callable[[jax.Array, jax.Array], jax.Array]


def _per_sample_mean(v: jax.Array) -> jax.Array:
    return v.reshape(v.shape[0], -1).mean(axis=1)


def cross_entropy(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    r"""Softmax cross entropy per sample: logits ``[B, C]``/``[B, T, C]``, classes
    ``[B]``/``[B, T]`` (mean over the steps).

    $$
    \ell_n = \tfrac1T \textstyle\sum_t \big(\log \sum_c e^{o_{n,t,c}} - o_{n,t,y_{n,t}}\big)
    $$

    A class outside ``[0, C)`` gives NaN for its sample (a label ``-1`` would otherwise wrap
    around to class ``C - 1``): under ``jit``, where labels cannot be checked, the step is
    non-finite, so it is rejected and reported, never trained on a wrong class.

    Examples:
      >>> import jax.numpy as jnp
      >>> cross_entropy(jnp.zeros((3, 2)), jnp.array([0, -1, 2]))
      Array([0.6931472,       nan,       nan], dtype=float32)
    """
    targets = targets.astype(jnp.int32)
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs, targets)
    inside = (targets >= 0) & (targets < outputs.shape[-1])
    return _per_sample_mean(jnp.where(inside, ce, jnp.nan))


def mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error per sample (mean over every non-batch axis)."""
    return _per_sample_mean((outputs - targets.reshape(outputs.shape)) ** 2)


def accuracy(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Fraction of correct ``argmax`` predictions per sample (mean over the steps)."""
    return _per_sample_mean((jnp.argmax(outputs, -1) == targets).astype(jnp.float32))


def last_steps_accuracy(k: int) -> PerSample:
    """Accuracy on the last ``k`` steps of many-to-many outputs (the copying task's metric)."""

    def metric(outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return accuracy(outputs[:, -k:], targets[:, -k:])

    return metric


LOSSES: dict[str, PerSample] = {"cross_entropy": cross_entropy, "mse": mse}
METRICS: dict[str, PerSample] = {"accuracy": accuracy}


def resolve(kind: str, value: str | PerSample | None, table: dict[str, PerSample]):
    """A callable from a name in ``table`` or a callable (``None`` passes through)."""
    if value is None or callable(value):
        return value
    if value not in table:
        raise ValueError(f"{kind}: expected one of {tuple(table)} or a callable, got {value!r}")
    return table[value]
