"""increase_rho_on_divergence: a rejected ADMMiRNN iteration is retried from the same state
with larger penalties, inside the jitted step; fit sees only the accepted try (or the last
rejected one, and stops)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compiles import counted_jit
from flax import nnx

from admm_jax import (
    DivergenceError,
    ElmanRNN,
    IncreaseRhoState,
    admmirnn,
    increase_rho_on_divergence,
    optimizers,
)
from admm_jax.train import fit


def tiny_data(n=64, t=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 3)).astype(np.float32)
    return x, (x[:, :, 0].sum(1) > 0).astype(np.int32)


def _flaky_admm(threshold, **kw):
    """admmirnn whose iterations are rejected (as a non-finite one would be) while rho1 is
    below ``threshold``."""
    inner = admmirnn(**kw)

    def update(g, state, params=None, **extra):
        u, new = inner.update(g, state, params, **extra)
        low = state.rho.rho1 < threshold
        u = jax.tree_util.tree_map(lambda v: jnp.where(low, 0.0, v), u)
        new = jax.tree_util.tree_map(lambda n, o: jnp.where(low, o, n), new, state)
        new = new._replace(diagnostics=new.diagnostics._replace(
            loss=jnp.where(low, jnp.nan, new.diagnostics.loss)))
        return u, new

    return optax.GradientTransformationExtraArgs(inner.init, update)


def test_increase_rho_retries_from_the_last_good_state():
    x, y = tiny_data(32)
    kw = dict(num_samples=32, seq_len=5, sweep="backward")  # per-sample state to restore
    m1 = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    h1 = fit(m1, increase_rho_on_divergence(_flaky_admm(50.0, rho=(10.0, 10.0, 1.0), **kw)),
             (x, y), iterations=6, batch_size=16)
    assert h1.steps["rho_increases"] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # the retry started from the untouched state: same run as starting with the larger rho
    # (two compiled programs: equal up to float32 rounding)
    m2 = ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
    h2 = fit(m2, admmirnn(rho=(100.0, 100.0, 10.0), **kw), (x, y), iterations=6,
             batch_size=16)
    for k in "UWbVc":
        np.testing.assert_allclose(np.asarray(getattr(m1, k)[...]),
                                   np.asarray(getattr(m2, k)[...]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h1.steps["r1"], h2.steps["r1"], rtol=1e-3)  # a residual
    # a batch that no rho can fix: three increases, then fit stops with the error
    bad = x.copy()
    bad[:, 0, 0] = np.nan
    with pytest.raises(DivergenceError) as e:
        fit(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)),
            increase_rho_on_divergence(admmirnn(rho=(10.0, 10.0, 1.0), **kw)), (bad, y),
            iterations=2, batch_size=16, validate=False)
    assert e.value.iteration == 1 and e.value.last_good is None
    assert e.value.metrics["rho_increases"] == 3


def test_penalties_grow_by_factor_per_retry_and_stay():
    x, y = tiny_data(16)
    params = nnx.state(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), nnx.Param)
    tx = increase_rho_on_divergence(_flaky_admm(5e3, rho=(10.0, 10.0, 1.0)), factor=10.0,
                                    max_increases=5)
    state = tx.init(params)
    assert isinstance(state, IncreaseRhoState)
    step = counted_jit(lambda s: tx.update(None, s, params, inputs=x, targets=y))
    u, state = step(state)
    # 10 -> 100 -> 1e3 -> 1e4: accepted on the third retry, and the larger penalties stay
    assert int(state.diagnostics.rho_increases) == 3
    np.testing.assert_allclose([float(r) for r in state.inner.rho], [1e4, 1e4, 1e3])
    assert any(np.any(np.asarray(v) != 0) for v in jax.tree_util.tree_leaves(u))
    u, state = step(state)
    assert int(state.diagnostics.rho_increases) == 0
    assert step.traces == 1  # one compilation for retries and first tries alike


def test_exhausted_retries_return_the_rejected_iteration():
    x, y = tiny_data(16)
    params = nnx.state(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), nnx.Param)
    tx = increase_rho_on_divergence(_flaky_admm(1e9, rho=1.0), max_increases=2)
    u, state = tx.update(None, tx.init(params), params, inputs=x, targets=y)
    assert int(state.diagnostics.rho_increases) == 2
    assert np.isnan(float(state.inner.diagnostics.loss))
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree_util.tree_leaves(u))
    np.testing.assert_allclose([float(r) for r in state.inner.rho], [100.0] * 3)  # 1 * 10^2


def test_arguments_are_checked():
    params = nnx.state(ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0)), nnx.Param)
    with pytest.raises(ValueError, match="inner: increase_rho_on_divergence changes ADMMiRNN"):
        increase_rho_on_divergence(optimizers.get("adam")).init(params)
    with pytest.raises(ValueError, match="factor: expected a number > 1"):
        increase_rho_on_divergence(admmirnn(), factor=0.5)
    with pytest.raises(ValueError, match="max_increases: expected a positive int"):
        increase_rho_on_divergence(admmirnn(), max_increases=0)
