r"""The taps: each planned linear map re-emitted as a `jax.custom_vjp` whose backward pass,
besides the usual cotangents, returns the map's input \(x\) and output adjoint
\(g = \partial L / \partial y\) as the cotangents of zero *dummy* inputs of their shapes.

A map applied at every step of a `scan` (a recurrent weight) gets its dummies as per-step
inputs of the loop, so their cotangents come out stacked over the steps: differentiation
itself collects every use's rows, whatever the cell. The Kronecker statistics are then formed
outside any loop, one large matrix product per factor
([input_statistic][admm_jax.kfac.taps.input_statistic],
[output_statistic][admm_jax.kfac.taps.output_statistic]):

$$
A = \sum_{\text{rows}} \bar x \bar x^\top, \qquad
S = \sum_{\text{rows}} g g^\top, \qquad \bar x = [x; 1]\ \text{(with a bias)}.
$$

(Summing \(x_t x_t^\top\) inside the loop's backward pass instead costs as many FLOPs but runs
as many small products one after another: on a 2-core CPU it made the Elman RNN's K-FAC step
1.45x an Adam step instead of 1.15x.) Embeddings get `A` as token counts (the diagonal of the
one-hot Gram). An output split into `k` equal gates gets the `k` diagonal blocks of `S`
(`[k, m, m]`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Tap(NamedTuple):
    """What the tagged forward pass does at one site: ``bias`` (augment ``x`` with ones), the
    slots whose statistics this site writes (``None``: another site writes them), the gates
    its output factor is split into, and the shapes of its stacked rows: ``x_shape`` /
    ``y_shape`` (the enclosing scans' lengths, then the input's / output's shape per use) with
    the feature axes ``x_axis`` / ``y_axis``; ``block``: the index of its kernel's block."""

    kind: str
    bias: bool
    a_slot: int | None
    s_slot: int | None
    gates: int = 1
    x_shape: tuple = ()
    x_axis: int = -1
    y_shape: tuple = ()
    y_axis: int = -1
    block: int = -1


def _features_last(a, axis: int):
    """``a`` with its feature ``axis`` last, in at least float32."""
    return jnp.moveaxis(a, axis, -1).astype(jnp.promote_types(a.dtype, jnp.float32))


def _contract(u, v):
    """``sum_rows u v^T`` over every axis but the last: one ``dot_general`` (no reshape, so a
    batch axis sharded over devices stays sharded and the sum is all-reduced)."""
    lead = tuple(range(u.ndim - 1))
    return jax.lax.dot_general(u, v, ((lead, lead), ((), ())))


def input_statistic(tap: Tap, stacked, shape: tuple):
    """``A`` (``shape``) of a site from its stacked inputs: the Gram of the rows (with a ones
    column for a bias), or an embedding's token counts."""
    if tap.kind == "embed":
        ids = stacked.reshape(-1).astype(jnp.int32)
        ids = jnp.where(ids < 0, shape[0], ids)  # out of range: dropped
        return jnp.zeros(shape, stacked.dtype).at[ids].add(1.0, mode="drop")
    x = _features_last(stacked, tap.x_axis)
    if tap.bias:
        x = jnp.concatenate([x, jnp.ones_like(x[..., :1])], -1)
    return _contract(x, x)


def output_statistic(tap: Tap, stacked):
    """``S`` of a site from its stacked output adjoints (per gate: ``[k, m, m]``)."""
    g = _features_last(stacked, tap.y_axis)
    if tap.gates == 1:
        return _contract(g, g)
    g = g.reshape(*g.shape[:-1], tap.gates, -1)
    lead = tuple(range(g.ndim - 2))
    return jax.lax.dot_general(g, g, ((lead, lead), ((g.ndim - 2,), (g.ndim - 2,))))


def kernel_gradient(tap: Tap, inputs, adjoints):
    """A dense site's share of its kernel's gradient, ``X^T G`` (``[d_in, d_out]``), from
    its stacked inputs and output adjoints."""
    return _contract(_features_last(inputs, tap.x_axis), _features_last(adjoints, tap.y_axis))


def dense_tap(eqn, k, tap: Tap, vals, dummies):
    """The ``dot_general`` ``eqn`` (kernel operand ``k``) on ``vals``, returning its input and
    output adjoint as the cotangents of ``dummies = (a, s)``. The kernel's cotangent is left
    zero: its gradient is formed from the same rows after the pass
    ([kernel_gradient][admm_jax.kfac.taps.kernel_gradient]), one product instead of one per
    step."""
    a_dummy, s_dummy = dummies
    bind = eqn.primitive.get_bind_params(eqn.params)

    def dot(x, kernel):
        ops = (kernel, x) if k == 0 else (x, kernel)
        return eqn.primitive.bind(*ops, **bind)

    @jax.custom_vjp
    def tapped(x, kernel, a, s):
        del a, s
        return dot(x, kernel)

    def fwd(x, kernel, a, s):
        del a, s  # zeros: only their cotangents matter
        return dot(x, kernel), (x, kernel)

    def bwd(res, g):
        x, kernel = res
        gx = jax.vjp(lambda v: dot(v, kernel), x)[1](g)[0]
        return gx, None, x.astype(a_dummy.dtype), g.astype(s_dummy.dtype)

    tapped.defvjp(fwd, bwd)
    x, kernel = vals[1 - k], vals[k]
    return tapped(x, kernel, a_dummy, s_dummy)


def embed_tap(eqn, tap: Tap, vals, dummies):
    """The embedding ``gather`` ``eqn`` on ``vals``, returning its ids (as floats) and output
    adjoint as the cotangents of ``dummies = (a, s)``."""
    del tap
    a_dummy, s_dummy = dummies
    bind = eqn.primitive.get_bind_params(eqn.params)

    def look_up(table, idx):
        return eqn.primitive.bind(table, idx, **bind)

    @jax.custom_vjp
    def tapped(table, idx, a, s):
        del a, s
        return look_up(table, idx)

    def fwd(table, idx, a, s):
        del a, s
        return look_up(table, idx), (table, idx)

    def bwd(res, g):
        table, idx = res
        gt = jax.vjp(lambda t: look_up(t, idx), table)[1](g)[0]
        ga = None if a_dummy is None else idx.astype(a_dummy.dtype)
        gs = None if s_dummy is None else g.astype(s_dummy.dtype)
        return gt, np.zeros(idx.shape, jax.dtypes.float0), ga, gs

    tapped.defvjp(fwd, bwd)
    return tapped(vals[0], vals[1], a_dummy, s_dummy)
