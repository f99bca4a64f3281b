r"""Kronecker factors: a batch's statistics, their running averages, the damped inverses and
the preconditioned direction of every block of a [Plan][admm_jax.kfac.trace.Plan].

For a block with kernel \(K\) (\(d_{in} \times d_{out}\); a joint block's kernels stacked,
\(K = [U; W]\) for \(x U + h W\), and its bias folded in as a last row), the
Fisher of the mean loss over \(N\) samples is approximated, independently across time steps
(Martens, Ba & Johnson 2018), by

$$
F \approx A \otimes S, \qquad
A = \frac1N \sum_{n,t} \bar x_{n,t}\bar x_{n,t}^\top, \qquad
S = \frac{1}{N T}\sum_{n,t} g_{n,t} g_{n,t}^\top,
$$

with \(g_{n,t} = \partial \ell_n / \partial y_{n,t}\) the output adjoint of sample \(n\)'s own
loss at every use \(t\) of the map (time steps, or several call sites of one weight). The
direction is \((A + \kappa_A I)^{-1}\, G\, (S + \kappa_S I)^{-1}\), \(G\) the gradient of
the kernel, with factored Tikhonov damping relative to each factor's mean eigenvalue
\(m\): \(\kappa_A = \mu\, m_A\), and \(\kappa_S = \mu\) on \(S / m_S\) (``normalize_output``,
the default: the output side shapes the step, the input side sets its scale) or
\(\kappa_S = \mu\, m_S\) on \(S\). An embedding's \(A\) is diagonal (token counts: the Gram
of one-hot inputs); a one-sided block has \(S = I\).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from admm_jax.admm.linalg import spd_inverse
from admm_jax.kfac.trace import Plan

RISE = 1.1  # adaptive damping: "the loss is rising" when its fast average > RISE * slow one
MAX_DAMPING = 1e6


def batch_factors(plan: Plan, a_stats, s_stats, batch_size: int, loss_terms: int):
    """The batch's factors from the taps' sums: ``A / N`` and ``S M^2 / rows``.

    The taps sum ``x x^T`` and ``g g^T`` over every row of every use; ``g`` is the adjoint of
    the *mean* loss over ``M = loss_terms`` terms, so ``M g`` is a term's own adjoint.
    """
    rows = {b.s_slot: b.rows for b in plan.blocks}
    a = tuple(s / batch_size for s in a_stats)
    s = tuple(v * (loss_terms**2 / rows[j]) for j, v in enumerate(s_stats))
    return a, s


def running_average(old, new, ema, first):
    """``ema old + (1 - ema) new`` per factor; the first batch's factors as they are."""
    return jax.tree.map(lambda o, n: jnp.where(first, n, ema * o + (1.0 - ema) * n), old, new)


def mean_eigenvalue(factor: jax.Array) -> jax.Array:
    """``tr(F) / dim`` (the mean of a diagonal factor), floored at the dtype's tiny."""
    mean = jnp.mean(factor) if factor.ndim == 1 else jnp.trace(factor) / factor.shape[0]
    return jnp.maximum(mean, jnp.finfo(factor.dtype).tiny)


def damped_inverse(factor: jax.Array, damping, normalize=False) -> jax.Array:
    r"""\((F + \mu m I)^{-1}\), \(m\) the mean eigenvalue; ``normalize``: \((F/m + \mu I)^{-1}\).

    A vector is a diagonal factor (its inverse is a vector); ``[k, m, m]`` are ``k`` factors
    (per gate), each damped and normalised by its own mean eigenvalue. ``normalize`` may be a
    traced bool (``optax.inject_hyperparams``).

    Examples:
      >>> import jax.numpy as jnp
      >>> inv = damped_inverse(jnp.diag(jnp.array([2.0, 4.0])), 0.5)  # (F + 0.5 * 3 I)^-1
      >>> [round(float(v), 4) for v in jnp.diag(inv)]
      [0.2857, 0.1818]
      >>> [round(float(v), 4) for v in damped_inverse(jnp.array([2.0, 4.0]), 0.5)]  # diagonal
      [0.2857, 0.1818]
    """
    if factor.ndim == 3:
        return jax.vmap(lambda f: damped_inverse(f, damping, normalize))(factor)
    m = mean_eigenvalue(factor)
    scale = jnp.where(normalize, 1.0 / m, 1.0).astype(factor.dtype)
    kappa = (damping * jnp.where(normalize, 1.0, m)).astype(factor.dtype)
    if factor.ndim == 1:
        return 1.0 / (factor * scale + kappa)
    return spd_inverse(factor * scale + kappa * jnp.eye(factor.shape[0], dtype=factor.dtype))


def inverses(a, s, damping, normalize_output):
    """The damped inverses of every input factor ``a`` and output factor ``s``."""
    return (tuple(damped_inverse(f, damping) for f in a),
            tuple(damped_inverse(f, damping, normalize_output) for f in s))


def kernel_gradient(block, leaves):
    """A block's gradient as one ``[d_in (+ biases), d_out]`` matrix: its kernels' rows in
    order, then a row per bias."""
    parts = []
    for kernel, transposed in zip(block.kernels, block.transposed, strict=True):
        g = kernel.fn(*[leaves[i] for i in kernel.leaves])
        parts.append(g.T if transposed else g)
    parts += [b.fn(*[leaves[i] for i in b.leaves])[None].astype(parts[0].dtype)
              for b in block.biases]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, 0)


def kernel_step(block, a_inv, s_inv, grad):
    r"""\((A + \kappa_A I)^{-1} G (S + \kappa_S I)^{-1}\) for one block (an embedding's \(A\)
    is diagonal: its inverse a vector; ``s_inv=None``: one-sided, \(S = I\))."""
    left = a_inv[:, None] * grad if block.kind == "embed" else a_inv @ grad
    if s_inv is None:
        return left
    if s_inv.ndim == 3:  # one output factor per gate
        k = s_inv.shape[0]
        per = jnp.einsum("pkm,kmn->pkn", left.reshape(left.shape[0], k, -1), s_inv)
        return per.reshape(left.shape)
    return left @ s_inv


def to_leaves(block, step, leaves):
    """The block's step ``[d_in (+ biases), d_out]`` as steps of its parameter leaves (each
    kernel's rearrangement undone: it is a permutation, so its transpose is its inverse)."""
    out = {}
    start = 0
    pieces = [(k, t, d) for k, t, d in zip(block.kernels, block.transposed, block.d_ins,
                                            strict=True)]
    pieces += [(b, False, None) for b in block.biases]
    for origin, transposed, d in pieces:
        part = step[start] if d is None else step[start:start + d]
        start += 1 if d is None else d
        part = part.T if transposed else part
        primal, pull = jax.vjp(origin.fn, *[leaves[i] for i in origin.leaves])
        out.update(zip(origin.leaves, pull(part.astype(primal.dtype)), strict=True))
    return out


def precondition(plan: Plan, grads: list, a_inv, s_inv) -> dict[int, jax.Array]:
    """Every covered leaf's preconditioned direction, by leaf index (``s_inv=None``:
    one-sided)."""
    out: dict[int, jax.Array] = {}
    for b in plan.blocks:
        g = kernel_gradient(b, grads).astype(a_inv[b.a_slot].dtype)
        right = None if s_inv is None else s_inv[b.s_slot]
        out.update(to_leaves(b, kernel_step(b, a_inv[b.a_slot], right, g), grads))
    return out


def damping_update(state: Any, loss_now, adaptive):
    """The running loss averages and the adaptive damping factor after this batch's loss.

    Levenberg-Marquardt style, driven by the observed loss: ``fast`` (weight 1/2) and
    ``slow`` (1/20, with its running variance ``v``) averages; when ``fast > 1.1 slow`` and
    ``fast - slow > 3 sqrt(v/3)`` (a rise beyond batch noise), or the loss is not finite, the
    factor doubles; otherwise it decays by 0.97 down to 1. Returns
    ``(fast, slow, var, factor)``; ``state`` is a [KFACState][admm_jax.KFACState].
    """
    first = state.count == 0
    fast = jnp.where(first, loss_now, 0.5 * state.loss_fast + 0.5 * loss_now)
    dev = loss_now - state.loss_slow
    slow = jnp.where(first, loss_now, state.loss_slow + 0.05 * dev)
    var = jnp.where(first, 0.0, 0.95 * (state.loss_var + 0.05 * dev**2))
    rising = ~((fast <= RISE * slow) | (fast - slow <= 3.0 * jnp.sqrt(var / 3.0)))
    moved = jnp.clip(jnp.where(rising, 2.0 * state.factor, 0.97 * state.factor), 1.0,
                     MAX_DAMPING)
    return fast, slow, var, jnp.where(adaptive, moved, state.factor)
