"""SPD solves without triangular solves, against numpy (float64)."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from admm_jax.admm.linalg import spd_inverse, spd_solve, tril_inverse


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_tril_inverse_and_spd_solve_match_numpy(n, seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    spd = m @ m.T + 0.1 * np.eye(n)
    lower = np.linalg.cholesky(spd)
    np.testing.assert_allclose(tril_inverse(jnp.asarray(lower)) @ lower, np.eye(n), atol=1e-9)
    rhs = rng.normal(size=(n, 3))
    np.testing.assert_allclose(spd_solve(jnp.asarray(spd), jnp.asarray(rhs)),
                               np.linalg.solve(spd, rhs), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(spd_inverse(jnp.asarray(spd)), np.linalg.inv(spd), rtol=1e-7,
                               atol=1e-9)


def test_ill_conditioned_ridge_system_at_working_size():
    """A (D+H+1)^2 = 157^2 Gram matrix with a small ridge, as the (U, W, b) block solves."""
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(400, 157)) @ np.diag(np.logspace(0, -3, 157))
    gram = phi.T @ phi + 1e-4 * np.eye(157)
    rhs = rng.normal(size=(157, 128))
    got = np.asarray(spd_solve(jnp.asarray(gram), jnp.asarray(rhs)))
    np.testing.assert_allclose(gram @ got, rhs, atol=1e-7 * np.abs(rhs).max())
