r"""The taps, and what their rows make: each planned linear map re-emitted as a
`jax.custom_vjp` whose backward pass, besides the input's cotangent, returns the map's output
adjoint \(g = \partial L / \partial y\) as the cotangent of a zero *dummy* input of its
shape; the walk keeps the map's input \(x\) from the forward pass.

A map applied at every step of a `scan` (a recurrent weight) gets its dummy as a per-step
input of the loop, so its cotangent comes out stacked over the steps (differentiation itself
collects every use's adjoints, whatever the cell), and its inputs leave the loop as per-step
outputs. Rows are collected once per distinct input and once per distinct output sum (an
LSTM's eight gate maps read two inputs and reach four sums: six stacks). The statistics and
the kernels' gradients are then formed outside any loop, one large matrix product each:

$$
A = \sum_{\text{rows}} \bar x \bar x^\top, \qquad
S = \sum_{\text{rows}} g g^\top, \qquad G_K = \sum_{\text{rows}} x g^\top,
$$

with \(\bar x\) the concatenated inputs of a block's kernels (a gate's \([x_t, h_{t-1}]\))
and a ones column per bias. (Summing \(x_t x_t^\top\) and the kernel's gradient inside the
loop's backward pass costs as many FLOPs but runs them as many small products one after
another; returning the inputs as cotangents too made an LSTM's backward loop 1.5x slower on
CPU.) Embeddings get `A` as token counts (the diagonal of the one-hot Gram). An output split
into `k` equal gates gets the `k` diagonal blocks of `S` (`[k, m, m]`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Tap(NamedTuple):
    """What the tagged forward pass does at one site: its ``kind``, and whether it keeps its
    input (``x``) and returns its output adjoint (``g``) rows (another site with the same
    input, or reaching the same sum, does otherwise)."""

    kind: str
    x: bool
    g: bool


class Stack(NamedTuple):
    """Rows collected by one tap: the ``path`` of its site, their stacked ``shape`` (the
    enclosing scans' ``loops`` lengths, then the value's shape per use) and feature
    ``axis``."""

    path: tuple
    shape: tuple
    axis: int
    loops: int


def _rows(a, stack: Stack):
    """The stacked rows ``a`` as a ``[rows, features]`` matrix in at least float32, the loop
    axes moved after the value's own: the model's batch axis (the first of a value, in every
    Flax model) stays the major one, so a batch sharded over devices stays sharded through the
    reshape, and each factor is one plain matrix product (all-reduced over the devices)."""
    a = jnp.moveaxis(a, stack.axis, -1)
    lead = a.ndim - 1
    order = (*range(stack.loops, lead), *range(stack.loops), lead)
    a = jnp.transpose(a, order) if stack.loops and stack.loops < lead else a
    return a.reshape(-1, a.shape[-1]).astype(jnp.promote_types(a.dtype, jnp.float32))


def use_inputs(plan, block, use, xs):
    """The rows of one use of a dense block, ``[rows, sum d_in]``: its kernels' inputs side
    by side (no ones column)."""
    parts = [_rows(xs[j], plan.x_stacks[j]) for j in use.xs]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, -1)


def use_adjoints(plan, use, gs):
    """The output adjoints of one use of a block, ``[rows, d_out]``."""
    return _rows(gs[use.g], plan.g_stacks[use.g])


def input_statistic(plan, block, xs, dtype):
    """``A`` of a block, summed over its uses: the Gram of its rows with a ones column per
    bias, or an embedding's token counts (in ``dtype``)."""
    total = None
    for u in block.uses:
        if block.kind == "embed":
            ids = xs[u.xs[0]].reshape(-1)
            ids = jnp.where(ids < 0, block.d_in, ids)  # out of range: dropped
            a = jnp.zeros((block.d_in,), dtype).at[ids].add(1.0, mode="drop")
        else:
            x = use_inputs(plan, block, u, xs)
            if block.biases:
                ones = jnp.ones_like(x[:, :1])
                x = jnp.concatenate([x, *[ones] * len(block.biases)], -1)
            a = x.T @ x
        total = a if total is None else total + a
    return total


def output_statistic(plan, block, gs):
    """``S`` of a block, summed over its uses (per gate: ``[k, m, m]``)."""
    total = None
    for u in block.uses:
        g = use_adjoints(plan, u, gs)
        if block.gates == 1:
            s = g.T @ g
        else:
            g = g.reshape(g.shape[0], block.gates, -1)
            s = jnp.einsum("rkm,rkn->kmn", g, g)
        total = s if total is None else total + s
    return total


def kernel_gradient(plan, block, xs, gs):
    """A dense block's kernels' gradient ``sum X^T G`` (``[sum d_in, d_out]``, no bias rows),
    from its stacked inputs and output adjoints."""
    total = None
    for u in block.uses:
        g = use_inputs(plan, block, u, xs).T @ use_adjoints(plan, u, gs)
        total = g if total is None else total + g
    return total


def dense_tap(eqn, k, vals, dummy):
    """The ``dot_general`` ``eqn`` (kernel operand ``k``) on ``vals``, returning its output
    adjoint as the cotangent of ``dummy`` (``None``: not returned). The kernel's cotangent is
    left zero: its gradient is formed from the rows after the pass
    ([kernel_gradient][admm_jax.kfac.taps.kernel_gradient]), one product instead of one per
    step."""
    bind = eqn.primitive.get_bind_params(eqn.params)
    g_type = None if dummy is None else dummy.dtype

    def dot(x, kernel):
        ops = (kernel, x) if k == 0 else (x, kernel)
        return eqn.primitive.bind(*ops, **bind)

    @jax.custom_vjp
    def tapped(x, kernel, d):
        del d  # zeros: only their cotangents matter
        return dot(x, kernel)

    def fwd(x, kernel, d):
        del d
        return dot(x, kernel), (x, kernel)

    def bwd(res, g):
        x, kernel = res
        gx = jax.vjp(lambda v: dot(v, kernel), x)[1](g)[0]
        return gx, None, None if g_type is None else g.astype(g_type)

    tapped.defvjp(fwd, bwd)
    return tapped(vals[1 - k], vals[k], dummy)


def embed_tap(eqn, vals, dummy):
    """The embedding ``gather`` ``eqn`` on ``vals``, returning its output adjoint as the
    cotangent of ``dummy``."""
    bind = eqn.primitive.get_bind_params(eqn.params)
    g_type = None if dummy is None else dummy.dtype

    def look_up(table, idx):
        return eqn.primitive.bind(table, idx, **bind)

    @jax.custom_vjp
    def tapped(table, idx, d):
        del d
        return look_up(table, idx)

    def fwd(table, idx, d):
        del d
        return look_up(table, idx), (table, idx)

    def bwd(res, g):
        table, idx = res
        gt = jax.vjp(lambda t: look_up(t, idx), table)[1](g)[0]
        return (gt, np.zeros(idx.shape, jax.dtypes.float0),
                None if g_type is None else g.astype(g_type))

    tapped.defvjp(fwd, bwd)
    return tapped(vals[0], vals[1], dummy)
