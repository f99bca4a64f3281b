r"""The taps, and what their rows make: each planned linear map re-emitted as a
`jax.custom_vjp` whose backward pass, besides the usual cotangents, returns the Gram of the
map's output adjoints \(g = \partial L / \partial y\) as the cotangent of a zero *dummy*;
the walk keeps the map's input \(x\) from the forward pass.

A map applied at every step of a `scan` (a recurrent weight) sees its dummy as a loop
constant, whose cotangent `scan` sums over the steps: \(S = \sum_t g_t^\top g_t\) is summed
over time by differentiation itself, whatever the cell, and the kernel's gradient is BPTT's
own. The inputs leave the loop as per-step outputs, so a block's input factor is one product
after the pass, over the concatenated inputs of its kernels (a gate's \([x_t, h_{t-1}, 1]\)):

$$
A = \sum_{\text{rows}} \bar x \bar x^\top, \qquad S = \sum_{\text{rows}} g g^\top .
$$

Each distinct input is kept once and each output sum's Gram is formed once (an LSTM's eight
gate maps read two inputs and reach four sums). Collecting the adjoints too and forming `S`
and the kernels' gradients after the pass measured faster on the Elman RNN (1.15x an Adam
step against 1.4x) but slower on Flax's LSTM and GRU (1.6x against 1.2-1.4x, issue 24's
results). Embeddings get `A` as token counts (the diagonal of the one-hot Gram). An output
split into `k` equal gates gets the `k` diagonal blocks of `S` (`[k, m, m]`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Tap(NamedTuple):
    """What the tagged forward pass does at one site: whether it keeps its input rows
    (``x``; another site with the same input does otherwise), and the ``gates`` diagonal
    blocks of the Gram its backward pass returns when the plan gives it a dummy (one site
    per output sum)."""

    x: bool
    gates: int = 1


class Stack(NamedTuple):
    """Input rows kept by one tap: the ``path`` of its site, the feature ``axis`` of the
    stacked value and the number of enclosing ``loops`` (its leading axes)."""

    path: tuple
    axis: int
    loops: int


def _matrix(a, axis: int, loops: int = 0):
    """``a`` as a ``[rows, features]`` matrix in at least float32, its feature ``axis`` last
    and its leading ``loops`` axes moved after the value's own: the model's batch axis (the
    first of a value, in every Flax model) stays the major one, so a batch sharded over
    devices stays sharded through the reshape, and each factor is one plain matrix product
    (all-reduced over the devices)."""
    a = jnp.moveaxis(a, axis, -1)
    lead = a.ndim - 1
    if 0 < loops < lead:
        a = jnp.transpose(a, (*range(loops, lead), *range(loops), lead))
    return a.reshape(-1, a.shape[-1]).astype(jnp.promote_types(a.dtype, jnp.float32))


def use_inputs(plan, use, xs):
    """The rows of one use of a dense block, ``[rows, sum d_in]``: its kernels' inputs side
    by side (no ones column)."""
    parts = [_matrix(xs[j], plan.x_stacks[j].axis, plan.x_stacks[j].loops) for j in use.xs]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, -1)


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
            x = use_inputs(plan, u, xs)
            if block.biases:
                ones = jnp.ones_like(x[:, :1])
                x = jnp.concatenate([x, *[ones] * len(block.biases)], -1)
            a = x.T @ x
        total = a if total is None else total + a
    return total


def output_statistic(block, grams):
    """``S`` of a block: its uses' Grams summed."""
    total = None
    for u in block.uses:
        total = grams[u.g] if total is None else total + grams[u.g]
    return total


def gram(g, axis: int, gates: int):
    """``sum_rows g g^T`` over every axis of ``g`` but ``axis`` (per gate: ``[k, m, m]``)."""
    g = _matrix(g, axis)
    if gates == 1:
        return g.T @ g
    g = g.reshape(g.shape[0], gates, -1)
    return jnp.einsum("rkm,rkn->kmn", g, g)


def dense_tap(eqn, k, out_axis, vals, dummy, gates: int):
    """The ``dot_general`` ``eqn`` (kernel operand ``k``) on ``vals``, returning the Gram of
    its output adjoint as the cotangent of ``dummy`` (``None``: not returned)."""
    bind = eqn.primitive.get_bind_params(eqn.params)
    s_type = None if dummy is None else dummy.dtype

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
        gx, gk = jax.vjp(dot, x, kernel)[1](g)
        return gx, gk, None if s_type is None else gram(g, out_axis, gates).astype(s_type)

    tapped.defvjp(fwd, bwd)
    return tapped(vals[1 - k], vals[k], dummy)


def embed_tap(eqn, vals, dummy, gates: int):
    """The embedding ``gather`` ``eqn`` on ``vals``, returning the Gram of its output adjoint
    as the cotangent of ``dummy``."""
    bind = eqn.primitive.get_bind_params(eqn.params)
    s_type = None if dummy is None else dummy.dtype

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
                None if s_type is None else gram(g, -1, gates).astype(s_type))

    tapped.defvjp(fwd, bwd)
    return tapped(vals[0], vals[1], dummy)
