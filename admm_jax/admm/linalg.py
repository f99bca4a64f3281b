"""Dense SPD solves built from Cholesky and matrix products only.

XLA's CPU triangular solve has a fixed cost per call, whatever the matrix size, which made the
small ``(H+1)^2`` solves of ADMMiRNN cost more than everything else in an iteration (the
measurements: ``docs/admmirnn.md``, "Linear algebra"). The inverse of the Cholesky factor is
instead formed by recursive 2x2 blocking,

    inv([[A, 0], [B, C]]) = [[inv(A), 0], [-inv(C) B inv(A), inv(C)]],

which is a handful of matrix products, and as accurate for the well-conditioned
(ridge/proximally regularised, or ``rho2 I`` + PSD) systems solved here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_BASE = 8


def tril_inverse(lower: jax.Array) -> jax.Array:
    """Inverse of a lower-triangular matrix with a nonzero diagonal, by recursive blocking."""
    n = lower.shape[0]
    if n <= _BASE:
        # forward substitution on the identity, unrolled (n <= 8 static steps)
        eye = jnp.eye(n, dtype=lower.dtype)
        rows = []
        for i in range(n):
            acc = eye[i]
            for j, r in enumerate(rows):
                acc = acc - lower[i, j] * r
            rows.append(acc / lower[i, i])
        return jnp.stack(rows)
    k = n // 2
    a_inv = tril_inverse(lower[:k, :k])
    c_inv = tril_inverse(lower[k:, k:])
    off = -(c_inv @ lower[k:, :k]) @ a_inv
    top = jnp.concatenate([a_inv, jnp.zeros((k, n - k), lower.dtype)], axis=1)
    return jnp.concatenate([top, jnp.concatenate([off, c_inv], axis=1)], axis=0)


def spd_inverse(matrix: jax.Array) -> jax.Array:
    """Inverse of a symmetric positive definite matrix: ``L^-T L^-1`` with ``L`` its Cholesky
    factor."""
    l_inv = tril_inverse(jnp.linalg.cholesky(matrix))
    return l_inv.T @ l_inv


def spd_solve(matrix: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solve ``matrix @ x = rhs`` for SPD ``matrix``: ``L^-T (L^-1 rhs)``."""
    l_inv = tril_inverse(jnp.linalg.cholesky(matrix))
    return l_inv.T @ (l_inv @ rhs)
