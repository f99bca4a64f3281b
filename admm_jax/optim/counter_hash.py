"""A keyed 2-D counter hash that draws random numbers in bit-packed blocks.

Entry ``w`` of row ``j`` is a function of ``(key, j, w)`` only, so a row never depends on the
block it is generated in; one 32-bit word holds 32 Rademacher signs or two 16-bit uniforms
(or normals). Random-bases descent ([`admm_jax.optim.random_bases`][]) draws its bases
from it, where ``jax.random`` (one threefry key per row) costs most of a CPU step.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

DISTRIBUTIONS = ("rademacher", "normal", "uniform")
PER_WORD = {"rademacher": 32, "normal": 2, "uniform": 2}
_SQRT3 = math.sqrt(3.0)


def fmix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def hash_words(key: jax.Array, index: jax.Array, n_words: int) -> jax.Array:
    """``[len(index), n_words]`` uint32: word ``w`` of row ``j``, for ``j`` in ``index``.

    ``fmix32(fmix32(a_w ^ b_j))``, with ``a_w = fmix32(w * golden + k0)`` (shared by all rows)
    and ``b_j = fmix32(j * c + k1)``, ``(k0, k1)`` the key's data: a 2-D counter hash, so a row
    never depends on the block it is generated in, and no counter wraps for
    ``rows * words < 2^64``.

    Examples:
      >>> import jax
      >>> words = hash_words(jax.random.key(0), jnp.arange(4), 3)
      >>> words.shape, words.dtype
      ((4, 3), dtype('uint32'))
      >>> bool((hash_words(jax.random.key(0), jnp.arange(2, 4), 3) == words[2:]).all())
      True
    """
    k = jax.random.key_data(key).reshape(-1)
    a = fmix32(jnp.arange(n_words, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9) + k[0])
    b = fmix32(index.astype(jnp.uint32) * jnp.uint32(0x85EBCA77) + k[-1])
    return fmix32(fmix32(a[None, :] ^ b[:, None]))


def unpack_signs(words: jax.Array, size: int, dtype: Any) -> jax.Array:
    """Bit-packed Rademacher signs: ``[B, W]`` uint32 -> ``[B, size]`` in ``dtype``.

    Bit ``k`` of word ``w`` is entry ``k * W + w`` (bit-major: each of the 32 static masks
    acts on a contiguous run of words, one fused select per entry); ``+1`` for a 0 bit,
    ``-1`` for a 1 bit.
    """
    one, minus = jnp.asarray(1, dtype), jnp.asarray(-1, dtype)
    parts = [jnp.where((words & jnp.uint32(1 << k)) == 0, one, minus) for k in range(32)]
    return jnp.concatenate(parts, axis=1)[:, :size]


def _halves(words: jax.Array) -> jax.Array:
    """``[B, W]`` uint32 -> ``[B, 2W]`` float32 uniforms ``(h + 1/2) / 2^16`` in (0, 1), from
    the high (entries ``0..W-1``) and low (entries ``W..2W-1``) 16-bit halves."""
    h = jnp.concatenate([words >> 16, words & jnp.uint32(0xFFFF)], axis=1)
    return (h.astype(jnp.float32) + 0.5) * (2.0 ** -16)


def normal16(words: jax.Array, size: int, dtype: Any) -> jax.Array:
    """Normals by the inverse CDF of 16-bit uniforms, two per word: ``[B, W] -> [B, size]``.

    ``z = sqrt(2) erfinv(2u - 1)`` on the symmetric grid ``u = (h + 1/2) / 2^16``: exactly
    zero-mean over the grid, ``|z| <= 4.33`` (normal mass beyond: 2e-5), variance
    ``1 - 2e-5`` over the grid.
    """
    u = _halves(words)
    return (math.sqrt(2.0) * jax.lax.erf_inv(2.0 * u - 1.0))[:, :size].astype(dtype)


def uniform16(words: jax.Array, size: int, dtype: Any) -> jax.Array:
    """Uniform on ``(-sqrt 3, sqrt 3)`` (variance 1) from 16-bit uniforms, two per word."""
    return ((2.0 * _halves(words) - 1.0) * _SQRT3)[:, :size].astype(dtype)


def hash_rows(distribution: str, key: jax.Array, index: jax.Array, size: int,
              dtype: Any) -> jax.Array:
    """Rows ``index`` (``[B, size]``) of i.i.d. entries with mean 0 and variance 1 drawn from
    ``distribution`` (one of `DISTRIBUTIONS`), bit-packed in the counter hash."""
    words = hash_words(key, index, -(-size // PER_WORD[distribution]))
    if distribution == "rademacher":
        return unpack_signs(words, size, dtype)
    if distribution == "normal":
        return normal16(words, size, dtype)
    return uniform16(words, size, dtype)
