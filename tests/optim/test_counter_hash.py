"""admm_jax.optim.counter_hash: rows depend on (key, row) only, the bit packing is as
documented, and the 16-bit normals and uniforms have the documented moments and range."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admm_jax.optim import counter_hash as ch


def test_fmix32_is_a_bijection_on_a_sample():
    x = jnp.arange(1 << 16, dtype=jnp.uint32) * jnp.uint32(65537)
    assert np.unique(np.asarray(ch.fmix32(x))).size == x.size


def test_a_row_never_depends_on_its_block():
    key = jax.random.key(4)
    whole = ch.hash_words(key, jnp.arange(100), 7)
    for lo, hi in ((0, 1), (13, 40), (99, 100)):
        np.testing.assert_array_equal(ch.hash_words(key, jnp.arange(lo, hi), 7), whole[lo:hi])
    assert not (ch.hash_words(jax.random.key(5), jnp.arange(100), 7) == whole).all()


def test_words_are_uniform_bits():
    words = np.asarray(ch.hash_words(jax.random.key(0), jnp.arange(512), 64))
    bits = np.unpackbits(words.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 5 * 0.5 / math.sqrt(bits.size)


def test_signs_are_bit_major():
    words = jnp.asarray([[0b01, 0b10]], jnp.uint32)  # word 0 bit 0 set, word 1 bit 1 set
    s = np.asarray(ch.unpack_signs(words, 64, jnp.float32))[0]
    # bit k of word w is entry k * W + w
    want = np.ones(64)
    want[0 * 2 + 0] = -1
    want[1 * 2 + 1] = -1
    np.testing.assert_array_equal(s, want)
    assert ch.unpack_signs(words, 5, jnp.bfloat16).dtype == jnp.bfloat16


def test_all_16_bit_normals_are_zero_mean_bounded():
    h = np.arange(1 << 16, dtype=np.uint32)
    words = jnp.asarray((h << 16 | h).reshape(1, -1))  # every 16-bit value, in both halves
    z = np.asarray(ch.normal16(words, 2 << 16, jnp.float32), np.float64)
    assert abs(z.mean()) < 1e-6 and np.abs(z).max() <= 4.33
    assert abs(z.var() - (1 - 2.03e-5)) < 2e-6  # the midpoint grid's exact variance


def test_uniforms_cover_plus_minus_sqrt3():
    h = np.arange(1 << 16, dtype=np.uint32)
    u = np.asarray(ch.uniform16(jnp.asarray((h << 16 | h).reshape(1, -1)), 2 << 16,
                                jnp.float32), np.float64)
    assert np.abs(u).max() < math.sqrt(3) and abs(u.mean()) < 1e-6
    assert abs(u.var() - 1.0) < 1e-3


@pytest.mark.parametrize("distribution", ch.DISTRIBUTIONS)
def test_rows_have_mean_0_variance_1(distribution):
    n, rows = 100_000, 4
    x = np.asarray(ch.hash_rows(distribution, jax.random.key(7), jnp.arange(rows), n,
                                jnp.float32), np.float64)
    assert x.shape == (rows, n)
    assert abs(x.mean()) < 5 / math.sqrt(x.size)
    assert abs(x.var() - 1.0) < 5 * math.sqrt(2.0 / x.size)
