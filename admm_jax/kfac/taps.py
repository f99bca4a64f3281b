r"""The taps: each planned linear map re-emitted as a `jax.custom_vjp` whose backward pass,
besides the usual cotangents, returns its Kronecker statistics

$$
A \mathrel{+}= \sum_{\text{rows}} \bar x \bar x^\top, \qquad
S \mathrel{+}= \sum_{\text{rows}} g g^\top, \qquad \bar x = [x; 1]\ \text{(with a bias)},
\quad g = \partial L / \partial y
$$

as the cotangents of zero *dummy* inputs. A map applied at every step of a `scan` (a
recurrent weight) gets its dummies as loop constants, whose cotangents `scan` sums over the
steps: the statistics of a weight used at every time step are summed over time by
differentiation itself, whatever the cell. Embeddings get `A` as token counts (the diagonal
of the one-hot Gram). An output split into `k` equal gates gets the `k` diagonal blocks of
`S` (`[k, m, m]`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Tap(NamedTuple):
    """What the tagged forward pass does at one site: ``bias`` (augment ``x`` with ones), the
    slots whose statistics this site writes (``None``: another site writes them), and the
    gates its output factor is split into."""

    kind: str
    bias: bool
    a_slot: int | None
    s_slot: int | None
    gates: int = 1


def _rows(a, axis: int):
    a = jnp.moveaxis(a, axis, -1)
    return a.reshape(-1, a.shape[-1]).astype(jnp.promote_types(a.dtype, jnp.float32))


def _gram(rows, gates: int):
    """``rows^T rows``, or its ``gates`` diagonal blocks ``[gates, m, m]``."""
    if gates == 1:
        return rows.T @ rows
    r = rows.reshape(rows.shape[0], gates, -1)
    return jnp.einsum("rkm,rkn->kmn", r, r)


def dense_tap(eqn, k, xc, out_axis, tap: Tap, vals, dummies):
    a_dummy = None if tap.a_slot is None else dummies[0][tap.a_slot]
    s_dummy = None if tap.s_slot is None else dummies[1][tap.s_slot]
    a_type = None if a_dummy is None else a_dummy.dtype
    s_type = None if s_dummy is None else s_dummy.dtype
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
        ga = gs = None
        if a_type is not None:
            xr = _rows(x, xc)
            if tap.bias:
                xr = jnp.concatenate([xr, jnp.ones_like(xr[:, :1])], 1)
            ga = (xr.T @ xr).astype(a_type)
        if s_type is not None:
            gs = _gram(_rows(g, out_axis), tap.gates).astype(s_type)
        return gx, gk, ga, gs

    tapped.defvjp(fwd, bwd)
    x, kernel = vals[1 - k], vals[k]
    return tapped(x, kernel, a_dummy, s_dummy)


def embed_tap(eqn, tap: Tap, vals, dummies):
    a_dummy = None if tap.a_slot is None else dummies[0][tap.a_slot]
    s_dummy = None if tap.s_slot is None else dummies[1][tap.s_slot]
    a_spec = None if a_dummy is None else (a_dummy.shape, a_dummy.dtype)
    s_type = None if s_dummy is None else s_dummy.dtype
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
        ga = gs = None
        if a_spec is not None:
            ids = idx.reshape(-1)
            ids = jnp.where(ids < 0, a_spec[0][0], ids)  # out of range: dropped
            ga = jnp.zeros(*a_spec).at[ids].add(1.0, mode="drop")
        if s_type is not None:
            gs = _gram(_rows(g, -1), 1).astype(s_type)
        return gt, np.zeros(idx.shape, jax.dtypes.float0), ga, gs

    tapped.defvjp(fwd, bwd)
    return tapped(vals[0], vals[1], a_dummy, s_dummy)
