"""The fast Walsh-Hadamard transform, ``H_n x`` in ``O(n log n)`` without forming ``H_n``, and
the subsampled randomised Hadamard basis of random-bases descent, applied with it.

The basis of a step, ``e_j = s * H_n[r_j, :D] / sqrt(D)``, ``n = next_pow2(D)``, takes its
signs ``s`` and rows ``r_j`` from the counter hash (`admm_jax.optim.counter_hash`) keyed
by the step's key: `project` and `reconstruct` apply it with one transform each.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from admm_jax.optim.counter_hash import hash_words, unpack_signs

_SIGN_ROW = 0xFFFFFFFF  # hash row of the signs (basis rows are 0 .. dim-1)


def next_pow2(size: int) -> int:
    """The smallest power of two ``>= size`` (``1`` for ``size <= 1``)."""
    return 1 << max(0, (size - 1).bit_length())


def sylvester(bits: int) -> np.ndarray:
    """The Sylvester Hadamard matrix of order ``2^bits``: ``H[r, i] = (-1)^popcount(r & i)``.

    Examples:
      >>> sylvester(1)
      array([[ 1.,  1.],
             [ 1., -1.]])
    """
    r = np.arange(1 << bits)
    parity = np.vectorize(lambda v: bin(v).count("1") & 1)(r[:, None] & r[None, :])
    return 1.0 - 2.0 * parity


def fwht(x: jax.Array, chunk_bits: int = 4) -> jax.Array:
    """Unnormalised Walsh-Hadamard transform ``H_n x`` (Sylvester order) of ``x [n]``, ``n = 2^k``.

    ``H_n`` is the Kronecker product of small dense ``H_{2^b}`` (``b <= chunk_bits``), one per
    group of index bits: each pass multiplies the top group by ``H_{2^b}`` and moves it to the
    bottom (``X^T H``), so after all groups the order is restored; ``n * sum(2^b)``
    multiply-adds, exact for the +-1 entries (4-bit groups measured fastest on CPU).

    Examples:
      >>> fwht(jnp.array([1.0, 0.0, 0.0, 0.0]))  # the first column of H_4
      Array([1., 1., 1., 1.], dtype=float32)
    """
    n = x.shape[0]
    k = n.bit_length() - 1
    sizes = [chunk_bits] * (k // chunk_bits) + ([k % chunk_bits] if k % chunk_bits else [])
    hi = jax.lax.Precision.HIGHEST
    for b in sizes:
        h = jnp.asarray(sylvester(b), x.dtype)
        x = jnp.dot(x.reshape(1 << b, -1).T, h, precision=hi).reshape(n)
    return x


def srht(x: jax.Array, signs: jax.Array, rows: jax.Array) -> jax.Array:
    """The coordinates ``E^T x`` of ``x [D]`` in the subsampled randomised Hadamard basis
    ``e_j = signs * H_n[rows[j], :D] / sqrt(D)`` (``n = next_pow2(D)``): one fast transform.

    Examples:
      >>> x = jnp.array([3.0, 4.0])
      >>> (srht(x, jnp.ones(2), jnp.array([0, 1])) * 2 ** 0.5).round(4)  # H_2 x
      Array([ 7., -1.], dtype=float32)
    """
    size = x.shape[0]
    hx = fwht(jnp.zeros(next_pow2(size), x.dtype).at[:size].set(signs * x))
    return hx[rows] * jnp.asarray(1.0 / math.sqrt(size), x.dtype)


def srht_transpose(c: jax.Array, signs: jax.Array, rows: jax.Array) -> jax.Array:
    """``E c [D]``, the step the coordinates ``c [d]`` give in the basis of `srht`
    (``D = len(signs)``): one fast transform, ``H_n`` being symmetric."""
    size = signs.shape[0]
    z = fwht(jnp.zeros(next_pow2(size), c.dtype).at[rows].add(c))
    return signs * z[:size] * jnp.asarray(1.0 / math.sqrt(size), c.dtype)


def signs(step_key: jax.Array, size: int, dtype: Any) -> jax.Array:
    """The random signs ``s [size]`` of the basis of ``step_key``."""
    words = hash_words(step_key, jnp.asarray([_SIGN_ROW], jnp.uint32), -(-size // 32))
    return unpack_signs(words, size, dtype)[0]


def row_ids(step_key: jax.Array, index: jax.Array, n: int) -> jax.Array:
    """Row ``r_j`` of ``H_n`` used by basis vector ``j`` (``j`` in ``index``): uniform on
    ``0..n-1``, with replacement (so ``E[E E^T] = (d/D) I`` exactly, as for i.i.d. bases)."""
    w = hash_words(step_key, index, 1)[:, 0]
    return (w & jnp.uint32(n - 1)).astype(jnp.int32)


def basis_rows(step_key: jax.Array, index: jax.Array, size: int, dtype: Any) -> jax.Array:
    """``[B, size]`` raw rows ``s_i H[r_j, i]``, ``H[r, i] = (-1)^popcount(r & i)`` (for tests
    and inspection; `project` and `reconstruct` apply them with the transform)."""
    r = row_ids(step_key, index, next_pow2(size)).astype(jnp.uint32)
    i = jnp.arange(size, dtype=jnp.uint32)
    parity = jax.lax.population_count(r[:, None] & i[None, :]) & jnp.uint32(1)
    return (1.0 - 2.0 * parity.astype(dtype)) * signs(step_key, size, dtype)


def project(g: jax.Array, step_key: jax.Array, dim: int) -> jax.Array:
    """The ``dim`` coordinates of ``g [D]`` in the basis of ``step_key``."""
    size = g.shape[0]
    return srht(g, signs(step_key, size, g.dtype),
                row_ids(step_key, jnp.arange(dim), next_pow2(size)))


def reconstruct(c: jax.Array, step_key: jax.Array, size: int) -> jax.Array:
    """The step ``E c [size]`` the coordinates ``c [dim]`` give in the basis of ``step_key``."""
    return srht_transpose(c, signs(step_key, size, c.dtype),
                          row_ids(step_key, jnp.arange(c.shape[0]), next_pow2(size)))
