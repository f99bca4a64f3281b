"""admm_jax.optim.hadamard: the fast transform is the dense Sylvester matrix, and the
subsampled randomised Hadamard basis it applies is the basis its rows spell out."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admm_jax.optim import hadamard


def dense(log_n):
    r = np.arange(1 << log_n)
    return np.array([[(-1) ** bin(a & b).count("1") for b in r] for a in r], np.float64)


@pytest.mark.parametrize("chunk_bits", [1, 2, 4])
@pytest.mark.parametrize("log_n", [0, 1, 3, 6])
def test_fast_transform_equals_dense_matrix(log_n, chunk_bits):
    x = np.random.default_rng(log_n).standard_normal(1 << log_n)
    h = hadamard.sylvester(log_n)  # H[r, i] = (-1)^popcount(r & i)
    np.testing.assert_array_equal(h, dense(log_n))
    got = hadamard.fwht(jnp.asarray(x, jnp.float32), chunk_bits)
    np.testing.assert_allclose(np.asarray(got), dense(log_n) @ x, rtol=1e-5, atol=1e-5)


def test_transform_twice_is_n_times_identity():
    x = jnp.asarray(np.random.default_rng(0).standard_normal(256), jnp.float32)
    np.testing.assert_allclose(hadamard.fwht(hadamard.fwht(x)), 256 * x, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("size", [1, 2, 5, 64, 100])
def test_next_pow2(size):
    n = hadamard.next_pow2(size)
    assert n >= size and n & (n - 1) == 0 and (n == 1 or n // 2 < size)


@pytest.mark.parametrize("size, dim", [(5, 3), (64, 16), (100, 40)])
def test_project_and_reconstruct_are_the_basis_and_its_transpose(size, dim):
    """Coordinates E^T g and the step E c equal the products with the explicit rows."""
    key = jax.random.key(3)
    e = np.asarray(hadamard.basis_rows(key, jnp.arange(dim), size, jnp.float32),
                   np.float64) / np.sqrt(size)  # [dim, size]
    rng = np.random.default_rng(size)
    g = rng.standard_normal(size).astype(np.float32)
    c = rng.standard_normal(dim).astype(np.float32)
    np.testing.assert_allclose(hadamard.project(jnp.asarray(g), key, dim), e @ g,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hadamard.reconstruct(jnp.asarray(c), key, size), e.T @ c,
                               rtol=1e-5, atol=1e-5)


def test_signs_and_rows_depend_on_the_key_only():
    a, b = jax.random.key(0), jax.random.key(1)
    s = hadamard.signs(a, 1000, jnp.float32)
    assert set(np.unique(np.asarray(s))) == {-1.0, 1.0}
    assert (s == hadamard.signs(a, 1000, jnp.float32)).all()
    assert not (s == hadamard.signs(b, 1000, jnp.float32)).all()
    rows = hadamard.row_ids(a, jnp.arange(4096), 1024)
    assert int(rows.min()) >= 0 and int(rows.max()) < 1024
    assert (hadamard.row_ids(a, jnp.arange(10, 20), 1024) == rows[10:20]).all()
