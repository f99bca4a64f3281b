"""NovoGrad: adaptive SGD with a layer-wise scalar second moment and decoupled weight decay."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from admm_jax import _validation as validation
from admm_jax._dtypes import compute_dtype
from admm_jax.nonfinite import reject_nonfinite
from admm_jax.optim._groups import GroupSpec, leaf_groups


class NovoGradState(NamedTuple):
    """State of [`scale_by_novograd`][admm_jax.scale_by_novograd].

    Attributes:
      count: steps taken (int32 scalar).
      mu: the first moment, shaped like the parameters.
      nu: the second moments, one scalar per layer, in layer order (see ``layers``).
    """

    count: jax.Array
    mu: optax.Updates
    nu: tuple[jax.Array, ...]


def scale_by_novograd(
    b1: float = 0.95,
    b2: float = 0.98,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    *,
    grad_averaging: bool = False,
    layers: GroupSpec = "leaf",
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Rescale updates by NovoGrad's layer-wise normalised momentum (no learning rate).

    For every layer \( l \) (a group of leaves, see ``layers``):

    $$
    \begin{aligned}
    v_t^l &= \beta_2 v_{t-1}^l + (1 - \beta_2) \|g_t^l\|^2,\qquad v_1^l = \|g_1^l\|^2 \\
    m_t^l &= \beta_1 m_{t-1}^l + a\,\big(g_t^l / (\sqrt{v_t^l} + \epsilon)
             + \lambda_t w_t^l\big),\qquad m_0^l = 0
    \end{aligned}
    $$

    with \( a = 1 \) (the paper) or \( a = 1 - \beta_1 \) (``grad_averaging``, as in
    NVIDIA's code). The output is \( m_t \); [`novograd`][admm_jax.novograd] multiplies it by
    \( -\eta_t \). The norm is taken over all leaves of the layer together.

    Args:
      b1: momentum \( \beta_1 \).
      b2: decay \( \beta_2 \) of the second moment.
      eps: \( \epsilon \), added to \( \sqrt{v} \) (outside the root, as NVIDIA's code).
      weight_decay: \( \lambda \), a float or a schedule ``step -> float`` (step counts from
        0). ``update`` needs ``params`` unless it is the constant ``0``.
      grad_averaging: scale the normalised gradient by \( 1 - \beta_1 \).
      layers: what a "layer" is: ``"leaf"`` (each leaf, optax's convention), ``"model"``
        (everything one layer), a pytree of labels that is a prefix of the parameters, or a
        function ``params -> labels``; leaves sharing a label share one \( v \).
      mu_dtype: dtype of the first moment (default: the parameters' dtype).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      [`NovoGradState`][admm_jax.NovoGradState].

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_novograd(b1=0.9)
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> m, state = tx.update({"w": jnp.array([3.0, 4.0])}, state)
      >>> m["w"]  # g / |g| at the first step
      Array([0.6, 0.8], dtype=float32)

    References:
      Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks", arXiv:1905.11286, 2019 (Algorithm 1).
    """
    validation.fraction("b1", b1, include_one=False)
    validation.fraction("b2", b2, include_one=False)
    if isinstance(eps, int | float) and eps < 0:
        raise ValueError(f"eps: expected a float >= 0, got {eps!r}")
    wd_is_zero = not callable(weight_decay) and isinstance(weight_decay, int | float) and (
        weight_decay == 0
    )

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        groups = leaf_groups(params, layers, name="layers")
        mu = jax.tree.map(
            lambda p: jnp.zeros(jnp.shape(p), mu_dtype or jnp.asarray(p).dtype), params
        )
        nu = tuple(
            jnp.zeros([], compute_dtype(*(leaves[i] for i in g))) for g in groups
        )
        return NovoGradState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if not wd_is_zero and params is None:
            raise ValueError(
                "params: NovoGrad with nonzero weight_decay needs update(grads, state, params); "
                "got params=None"
            )
        g_leaves, treedef = jax.tree.flatten(updates)
        mu_leaves = treedef.flatten_up_to(state.mu)
        p_leaves = None if wd_is_zero else treedef.flatten_up_to(params)
        groups = leaf_groups(updates, layers, name="layers")
        if len(groups) != len(state.nu):
            raise ValueError(
                f"layers: the state holds {len(state.nu)} layers but the updates give "
                f"{len(groups)}; init and update must see the same parameter structure"
            )
        wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
        first = state.count == 0
        new_mu: list[Any] = [None] * len(g_leaves)
        out: list[Any] = [None] * len(g_leaves)
        new_nu = []
        for group, v in zip(groups, state.nu, strict=True):
            cdt = v.dtype
            gs = [g_leaves[i].astype(cdt) for i in group]
            n2 = sum(jnp.sum(jnp.square(g)) for g in gs)
            v = jnp.where(first, n2, b2 * v + (1.0 - b2) * n2).astype(cdt)
            new_nu.append(v)
            denom = jnp.sqrt(v) + eps
            for i, g in zip(group, gs, strict=True):
                term = g / denom
                if not wd_is_zero:
                    term = term + wd * p_leaves[i].astype(cdt)
                if grad_averaging:
                    term = (1.0 - b1) * term
                m = (b1 * mu_leaves[i].astype(cdt) + term).astype(mu_leaves[i].dtype)
                new_mu[i] = m
                out[i] = m.astype(g_leaves[i].dtype)
        count = optax.safe_increment(state.count)
        return (
            jax.tree.unflatten(treedef, out),
            NovoGradState(count=count, mu=jax.tree.unflatten(treedef, new_mu), nu=tuple(new_nu)),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def novograd(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.95,
    b2: float = 0.98,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    *,
    grad_averaging: bool = False,
    layers: GroupSpec = "leaf",
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""NovoGrad (Ginsburg et al. 2019): layer-wise normalised momentum SGD.

    $$
    \begin{aligned}
    v_t^l &= \beta_2 v_{t-1}^l + (1 - \beta_2) \|g_t^l\|^2,\qquad v_1^l = \|g_1^l\|^2 \\
    m_t^l &= \beta_1 m_{t-1}^l + g_t^l / (\sqrt{v_t^l} + \epsilon) + \lambda_t w_t^l \\
    w_{t+1} &= w_t - \eta_t m_t
    \end{aligned}
    $$

    The second moment is one scalar per layer, so the state is the first moment plus one
    scalar per layer: about half of Adam's.

    Differences from ``optax.novograd`` (0.2.8): the defaults are the paper's / NVIDIA's
    (``b1=0.95, b2=0.98, eps=1e-8``; optax uses ``0.9, 0.25, 1e-6``); a layer can group
    several leaves (``layers``); ``params`` are not needed when ``weight_decay`` is 0;
    ``weight_decay`` may be a schedule. With ``layers="leaf"``, ``grad_averaging=False``, a
    constant ``weight_decay`` and optax's ``eps_root=0`` the two compute the same updates for
    equal ``b1, b2, eps`` (tested). NVIDIA apex's ``FusedNovoGrad`` is a different algorithm
    (it bias-corrects and stores the norm).

    Args:
      learning_rate: \( \eta \), a float or an optax schedule.
      b1: momentum \( \beta_1 \).
      b2: decay \( \beta_2 \) of the per-layer second moment.
      eps: \( \epsilon \) added to \( \sqrt{v} \).
      weight_decay: decoupled weight decay \( \lambda \), a float or a schedule.
      grad_averaging: multiply the normalised gradient by \( 1 - \beta_1 \) (NVIDIA code).
      layers: ``"leaf"`` (default), ``"model"``, a label pytree (prefix of the parameters) or
        a function ``params -> labels``. E.g. one layer per LSTM cell:
        ``layers=lambda p: {name: name for name in p}`` on ``{"cell0": {...}, "cell1": {...}}``.
      mu_dtype: dtype of the first moment (default: the parameters' dtype).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is
      ``(NovoGradState, optax.ScaleByScheduleState | optax.EmptyState)``. A step with a
      non-finite update or state is not applied, and a state built for other parameters is a
      named error ([`admm_jax.reject_nonfinite`][]).

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.array([1.0, 2.0, 3.0])}
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> tx = novograd(0.1)
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update(jax.grad(loss)(params), state)
      ...     params = optax.apply_updates(params, updates)
      >>> print(f"{loss(params):.3f}")
      10.075

    References:
      Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks", arXiv:1905.11286, 2019.
    """
    return reject_nonfinite(optax.chain(
        scale_by_novograd(b1, b2, eps, weight_decay, grad_averaging=grad_averaging,
                          layers=layers, mu_dtype=mu_dtype),
        optax.scale_by_learning_rate(learning_rate),
    ))
