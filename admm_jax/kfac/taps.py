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
    the feature axes ``x_axis`` / ``y_axis``."""

    kind: str
    bias: bool
    a_slot: int | None
    s_slot: int | None
    gates: int = 1
    x_shape: tuple = ()
    x_axis: int = -1
    y_shape: tuple = ()
    y_axis: int = -1


def _rows(a, axis: int):
    a = jnp.moveaxis(a, axis, -1)
    return a.reshape(-1, a.shape[-1]).astype(jnp.promote_types(a.dtype, jnp.float32))


def _gram(rows, gates: int):
    """``rows^T rows``, or its ``gates`` diagonal blocks ``[gates, m, m]``."""
    if gates == 1:
        return rows.T @ rows
    r = rows.reshape(rows.shape[0], gates, -1)
    return jnp.einsum("rkm,rkn->kmn", r, r)


def input_statistic(tap: Tap, stacked, shape: tuple):
    """``A`` (``shape``) of a site from its stacked inputs: the Gram of the rows (with a ones
    column for a bias), or an embedding's token counts."""
    if tap.kind == "embed":
        ids = stacked.reshape(-1).astype(jnp.int32)
        ids = jnp.where(ids < 0, shape[0], ids)  # out of range: dropped
        return jnp.zeros(shape, stacked.dtype).at[ids].add(1.0, mode="drop")
    xr = _rows(stacked, tap.x_axis)
    if tap.bias:
        xr = jnp.concatenate([xr, jnp.ones_like(xr[:, :1])], 1)
    return xr.T @ xr


def output_statistic(tap: Tap, stacked):
    """``S`` of a site from its stacked output adjoints (per gate: ``[k, m, m]``)."""
    return _gram(_rows(stacked, tap.y_axis), tap.gates)


def dense_tap(eqn, k, tap: Tap, vals, dummies):
    """The ``dot_general`` ``eqn`` (kernel operand ``k``) on ``vals``, returning its input and
    output adjoint as the cotangents of ``dummies = (a, s)`` (either ``None``: not
    collected here)."""
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
        gx, gk = jax.vjp(dot, x, kernel)[1](g)
        ga = None if a_dummy is None else x.astype(a_dummy.dtype)
        gs = None if s_dummy is None else g.astype(s_dummy.dtype)
        return gx, gk, ga, gs

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
