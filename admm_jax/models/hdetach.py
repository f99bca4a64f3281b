"""h-detach: the per-step detach mask and the cell-path gradient diagnostic.

h-detach (Arpit et al., 2019) blocks, with probability ``p``, the gradient through ``h_{t-1}``
where it enters the gates at step ``t``; the forward pass is unchanged. The models
(:class:`admm_jax.LSTM`, :class:`admm_jax.ElmanRNN`) take the mask as a ``[T]`` boolean array
(``True`` = block at that step); this module draws it and measures what the paper argues about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def check_p_detach(p: Any, name: str = "p_detach") -> None:
    """Raise a clear error unless ``p`` is a probability (a Python number or a scalar array).

    Concrete values are range-checked; traced scalars (e.g. an annealed ``p`` passed into a
    jitted step) can only be shape-checked.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float, np.ndarray, np.number, jax.Array)):
        raise TypeError(f"{name}: expected a float in [0, 1] or a scalar array, got {p!r}")
    if isinstance(p, (np.ndarray, jax.Array)) and np.shape(p) != ():
        raise ValueError(f"{name}: expected a scalar, got an array of shape {np.shape(p)}")
    if isinstance(p, jax.core.Tracer):
        return
    v = float(p)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {v}")


def sample_detach_mask(key: jax.Array, p: float | jax.Array, num_steps: int) -> jax.Array:
    r"""Draw the h-detach mask: one Bernoulli(``p``) per time step, shared by the minibatch.

    .. math::
        \xi_t \sim \mathrm{Bernoulli}(p),\ t = 1..T;\quad \xi_t = 1 \Rightarrow
        \partial h^{\mathrm{in}}_{t-1} / \partial h_{t-1} := 0

    ``p`` is the probability of *blocking*; ``p = 0`` gives an all-``False`` mask and ``p = 1``
    an all-``True`` one. ``p`` may be a traced scalar, so annealing it does not recompile.

    Args:
      key: a JAX PRNG key (raw ``uint32[2]`` or typed).
      p: blocking probability in ``[0, 1]``.
      num_steps: sequence length ``T``.

    Returns:
      A ``bool [T]`` mask; entry ``t`` blocks the gradient through ``h_{t-1}`` at step ``t``.

    Examples:
      >>> import jax
      >>> m = sample_detach_mask(jax.random.key(0), 0.5, 6)
      >>> m.shape, m.dtype
      ((6,), dtype('bool'))
      >>> bool(sample_detach_mask(jax.random.key(0), 0.0, 6).any())
      False

    References:
      Arpit et al., "h-detach: Modifying the LSTM Gradient Towards Better Optimization",
      ICLR 2019, arXiv:1810.03023.
    """
    check_p_detach(p, "p")
    if (isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer))
            or num_steps <= 0):
        raise ValueError(f"num_steps: expected a positive int, got {num_steps!r}")
    return jax.random.bernoulli(key, p, (int(num_steps),))


def resolve_detach_mask(
    num_steps: int,
    *,
    p_detach: float | jax.Array,
    key: jax.Array | None = None,
    rngs: nnx.Rngs | None = None,
    detach_mask: jax.Array | None = None,
) -> jax.Array | None:
    """The mask a model call should use: ``detach_mask`` as given, else one drawn from ``key``
    (or the ``"detach"`` stream of ``rngs``), else ``None`` (no detaching: evaluation).
    """
    given = [n for n, v in (("key", key), ("rngs", rngs), ("detach_mask", detach_mask))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"pass at most one of key, rngs, detach_mask; got {', '.join(given)}")
    if detach_mask is not None:
        detach_mask = jnp.asarray(detach_mask)
        if detach_mask.shape != (num_steps,) or detach_mask.dtype != jnp.bool_:
            raise ValueError(
                f"detach_mask: expected a bool array of shape ({num_steps},), got "
                f"{detach_mask.dtype}{list(detach_mask.shape)}")
        return detach_mask
    if rngs is not None:
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs: expected nnx.Rngs, got {type(rngs).__name__}")
        key = rngs.detach()
    if key is None:
        return None
    return sample_detach_mask(key, p_detach, num_steps)


class CellPathGradNorms(NamedTuple):
    """Global norms of the full gradient and of its cell-state-path part.

    full: ``||g||`` (ordinary BPTT); cell: ``||g_c||``, the gradient with ``h_{t-1}`` blocked
    into the gates at every step (only the linear cell-state path carries gradient back in
    time); h_paths: ``||g - g_c||``, what the paths through ``h`` add; ratio: ``||g_c|| / ||g||``.
    """

    full: jax.Array
    cell: jax.Array
    h_paths: jax.Array
    ratio: jax.Array


def cell_path_grads(
    loss_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    num_steps: int,
) -> tuple[Any, Any]:
    """The full gradient and the cell-state-path gradient of ``loss_fn(params, detach_mask)``.

    Returns ``(g, g_c)``: ``g`` with the all-``False`` mask (plain BPTT), ``g_c`` with the
    all-``True`` mask (h-detach at ``p = 1``).
    """
    grad = jax.grad(loss_fn)
    g_full = grad(params, jnp.zeros((num_steps,), bool))
    g_cell = grad(params, jnp.ones((num_steps,), bool))
    return g_full, g_cell


def cell_path_grad_norms(
    loss_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    num_steps: int,
    *,
    select: Callable[[Any], Any] | None = None,
) -> CellPathGradNorms:
    r"""Measure how much of the gradient comes through the LSTM's cell-state path alone.

    Arpit et al. write the cell-state Jacobian as :math:`\partial c_t/\partial c_{t-1} = A_t + B_t`,
    :math:`A_t` the linear (forget-gate) path and :math:`B_t` the paths through ``h``; with
    large weights :math:`B_t` suppresses :math:`A_t`. Blocking ``h_{t-1}`` at every step keeps
    only :math:`A_t`, so

    .. math::
        g = \nabla_\theta L\ (\xi \equiv 0),\qquad g_c = \nabla_\theta L\ (\xi \equiv 1),
        \qquad \text{ratio} = \|g_c\| / \|g\|.

    Call it every few training steps to follow the ratio during training.

    Args:
      loss_fn: ``loss_fn(params, detach_mask) -> scalar``, the mask a ``bool [T]`` array.
      params: the pytree to differentiate.
      num_steps: sequence length ``T``.
      select: optional ``gradient pytree -> sub-pytree`` (e.g. only the recurrent kernels)
        applied before taking norms.

    Returns:
      :class:`CellPathGradNorms` of global (all-leaf) L2 norms.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from admm_jax.models.lstm import LSTM, lstm_apply
      >>> model = LSTM(1, 8, 3, rngs=nnx.Rngs(0))
      >>> params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
      >>> x = jax.random.normal(jax.random.key(1), (4, 12, 1))
      >>> def loss(p, m):
      ...     return (lstm_apply(p, x, detach_mask=m) ** 2).sum()
      >>> n = cell_path_grad_norms(loss, params, 12)
      >>> bool(0.0 < n.ratio)
      True

    References:
      Arpit et al., ICLR 2019, arXiv:1810.03023, Sections 3-4.
    """
    g_full, g_cell = cell_path_grads(loss_fn, params, num_steps)
    if select is not None:
        g_full, g_cell = select(g_full), select(g_cell)
    full = optax.tree.norm(g_full)
    cell = optax.tree.norm(g_cell)
    h_paths = optax.tree.norm(jax.tree.map(jnp.subtract, g_full, g_cell))
    ratio = cell / jnp.maximum(full, jnp.finfo(full.dtype).tiny)
    return CellPathGradNorms(full, cell, h_paths, ratio)
