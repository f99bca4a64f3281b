"""LSTM with h-detach: parity with nnx.LSTMCell, the p=1 cell path, forward invariance, RNG."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from admm_jax import LSTM, lstm_apply, lstm_scan, sample_detach_mask

N, T, D, H, C = 3, 5, 2, 5, 4


def nnx_cell_over_sequence(cell: nnx.LSTMCell, x):
    """Flax's own cell stepped over time in a Python loop (the reference)."""
    carry = cell.initialize_carry(x[:, 0].shape, rngs=nnx.Rngs(0))
    hs = []
    for t in range(x.shape[1]):
        carry, h = cell(carry, x[:, t])
        hs.append(h)
    return jnp.stack(hs, axis=1)


def handwritten_lstm(cp, x, mask):
    """The LSTM equations gate by gate; ``mask[t]`` stops h_{t-1} into the gates at step t."""
    n = x.shape[0]
    hidden = cp["hi"]["kernel"].shape[0]
    c = jnp.zeros((n, hidden), x.dtype)
    h = jnp.zeros((n, hidden), x.dtype)
    hs = []
    for t in range(x.shape[1]):
        h_in = jax.lax.stop_gradient(h) if mask[t] else h

        def pre(xk, hk, x_t=x[:, t], h_in=h_in):
            return x_t @ cp[xk]["kernel"] + h_in @ cp[hk]["kernel"] + cp[hk]["bias"]

        i = jax.nn.sigmoid(pre("ii", "hi"))
        f = jax.nn.sigmoid(pre("if_", "hf"))
        g = jnp.tanh(pre("ig", "hg"))
        o = jax.nn.sigmoid(pre("io", "ho"))
        c = f * c + i * g
        h = o * jnp.tanh(c)
        hs.append(h)
    return jnp.stack(hs, axis=1)


def f64_model(seed=0, **kw):
    return LSTM(D, H, C, rngs=nnx.Rngs(seed), param_dtype=jnp.float64, **kw)


def assert_trees_close(a, b, tol):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=tol, atol=tol), a, b)


def test_p0_matches_nnx_lstmcell_forward_and_gradients_float64():
    with jax.enable_x64(True):
        # Flax's default init (orthogonal recurrent kernel), weights moved into our model.
        ref = nnx.LSTMCell(D, H, param_dtype=jnp.float64, rngs=nnx.Rngs(3))
        model = f64_model()
        nnx.update(model.cell, nnx.state(ref))
        x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)
        proj = jax.random.normal(jax.random.key(2), (N, T, H), jnp.float64)

        hs_ref = nnx_cell_over_sequence(ref, x)
        hs = model.hidden_states(x)
        np.testing.assert_allclose(hs, hs_ref, rtol=1e-10, atol=1e-10)

        gdef, ref_state = nnx.split(ref)
        g_ref = jax.jit(jax.grad(
            lambda s: jnp.sum(proj * jnp.sin(nnx_cell_over_sequence(nnx.merge(gdef, s), x)))
        ))(ref_state)
        mask0 = sample_detach_mask(jax.random.key(5), 0.0, T)
        assert not bool(mask0.any())
        cp = nnx.to_pure_dict(nnx.state(model.cell))
        g = jax.jit(jax.grad(
            lambda p: jnp.sum(proj * jnp.sin(lstm_scan(p, x, detach_mask=mask0)[1]))
        ))(cp)
        assert_trees_close(g, nnx.to_pure_dict(g_ref), 1e-10)


def test_p0_through_the_module_equals_plain_gradients_float64():
    with jax.enable_x64(True):
        model = f64_model(many_to_many=True)
        x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)

        def loss(m, **kw):
            return jnp.sum(jnp.tanh(m(x, **kw)) ** 2)

        g_plain = nnx.grad(loss)(model)
        g_p0 = nnx.grad(lambda m: loss(m, key=jax.random.key(9), p_detach=0.0))(model)
        assert_trees_close(nnx.to_pure_dict(g_p0), nnx.to_pure_dict(g_plain), 1e-12)


@pytest.mark.parametrize("many_to_many", [False, True])
def test_p1_gradient_is_the_cell_path_of_a_handwritten_model_float64(many_to_many):
    with jax.enable_x64(True):
        model = f64_model(seed=4, many_to_many=many_to_many, p_detach=1.0)
        x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)
        y = jax.random.randint(jax.random.key(2), (N, T), 0, C)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))

        def ce(logits):
            tgt = y if many_to_many else y[:, -1]
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1))

        def ref_loss(p, mask):
            hs = handwritten_lstm(p["cell"], x, mask)
            hs = hs if many_to_many else hs[:, -1]
            return ce(hs @ p["readout"]["kernel"] + p["readout"]["bias"])

        g_ref = jax.grad(ref_loss)(params, [True] * T)
        g_full_ref = jax.grad(ref_loss)(params, [False] * T)
        # Through the module: p = 1 with any key blocks every step.
        g = nnx.to_pure_dict(nnx.grad(lambda m: ce(m(x, key=jax.random.key(0))))(model))
        for k in ("hi", "hf", "hg", "ho"):
            np.testing.assert_allclose(g["cell"][k]["kernel"], g_ref["cell"][k]["kernel"],
                                       rtol=1e-10, atol=1e-12)
            # ... and that differs from the full gradient, so the test can fail.
            assert not np.allclose(g["cell"][k]["kernel"], g_full_ref["cell"][k]["kernel"],
                                   rtol=1e-3, atol=1e-8)
        assert_trees_close(g, g_ref, 1e-10)


def test_mixed_mask_blocks_exactly_the_masked_steps_float64():
    with jax.enable_x64(True):
        model = f64_model(seed=6, many_to_many=True)
        x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)
        mask = np.array([False, True, True, False, True])
        cp = nnx.to_pure_dict(nnx.state(model.cell))
        g = jax.grad(lambda p: jnp.sum(lstm_scan(p, x, detach_mask=jnp.asarray(mask))[1] ** 3))(cp)
        g_ref = jax.grad(lambda p: jnp.sum(handwritten_lstm(p, x, list(mask)) ** 3))(cp)
        assert_trees_close(g, g_ref, 1e-10)


@settings(max_examples=4, deadline=None)
@given(p=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), many_to_many=st.booleans())
def test_forward_outputs_do_not_depend_on_p(p, seed, many_to_many):
    model = LSTM(D, H, C, rngs=nnx.Rngs(0), many_to_many=many_to_many)
    x = jax.random.normal(jax.random.key(seed % 97), (N, T, D))
    out = model(x, key=jax.random.key(seed), p_detach=p)
    np.testing.assert_array_equal(out, model(x))


def test_detach_mask_stream_is_reproducible_from_the_seed():
    L = 20
    model = LSTM(D, H, C, rngs=nnx.Rngs(0), p_detach=0.5, many_to_many=True)
    x = jax.random.normal(jax.random.key(1), (N, L, D))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))

    @nnx.jit
    def grads(model, rngs=None, key=None):
        # nnx.Rngs is mutable state: pass it through the transforms, not by closure.
        return nnx.grad(lambda m, r: jnp.sum(m(x, rngs=r, key=key) ** 2))(model, rngs)

    grads_with_mask = jax.jit(jax.grad(lambda p, mask: jnp.sum(
        lstm_apply(p, x, detach_mask=mask, many_to_many=True) ** 2)))

    # The "detach" stream of nnx.Rngs: same seed, same sequence of masks.
    r1, r2 = nnx.Rngs(detach=7), nnx.Rngs(detach=7)
    m1 = [sample_detach_mask(r1.detach(), 0.5, L) for _ in range(3)]
    m2 = [sample_detach_mask(r2.detach(), 0.5, L) for _ in range(3)]
    for a, b in zip(m1, m2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(m1[0], m1[1])
    # The model draws its mask from that stream (first draw of a fresh Rngs(detach=7)).
    assert_trees_close(nnx.to_pure_dict(grads(model, rngs=nnx.Rngs(detach=7))),
                       grads_with_mask(params, m1[0]), 1e-6)
    assert_trees_close(nnx.to_pure_dict(grads(model, key=jax.random.key(3))),
                       grads_with_mask(params, sample_detach_mask(jax.random.key(3), 0.5, L)),
                       1e-6)


def test_mask_frequency_is_p():
    m = sample_detach_mask(jax.random.key(0), 0.3, 20000)
    # 5 standard deviations of a Binomial(20000, 0.3) mean.
    assert abs(float(m.mean()) - 0.3) < 5 * (0.3 * 0.7 / 20000) ** 0.5


def test_changing_p_does_not_recompile():
    model = LSTM(D, H, C, rngs=nnx.Rngs(0), p_detach=0.5)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    x = jax.random.normal(jax.random.key(1), (N, T, D))
    traces = []

    @jax.jit
    def grad_step(params, key, p):
        traces.append(None)
        mask = sample_detach_mask(key, p, T)
        return jax.grad(lambda q: jnp.sum(lstm_apply(q, x, detach_mask=mask) ** 2))(params)

    outs = [grad_step(params, jax.random.key(i), jnp.float32(p))
            for i, p in enumerate([0.5, 0.25, 0.0, 1.0])]
    assert len(traces) == 1 and grad_step._cache_size() == 1
    # p really is used: p = 0 and p = 1 give different gradients.
    assert not np.allclose(outs[2]["cell"]["hi"]["kernel"], outs[3]["cell"]["hi"]["kernel"])

    # The same through nnx.jit and the module's call-time p_detach.
    @nnx.jit
    def module_grads(model, key, p):
        traces.append(None)
        return nnx.grad(lambda m: jnp.sum(m(x, key=key, p_detach=p) ** 2))(model)

    for i, p in enumerate([0.5, 0.0, 0.9]):
        module_grads(model, jax.random.key(i), jnp.float32(p))
    assert len(traces) == 2


def test_weights_move_between_lstm_and_nnx_lstmcell():
    model = LSTM(D, H, C, rngs=nnx.Rngs(0))
    cell = nnx.LSTMCell(D, H, rngs=nnx.Rngs(1))
    shapes = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(cell)))
    assert jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(model.cell))) == shapes
    nnx.update(cell, nnx.state(model.cell))
    assert_trees_close(nnx.to_pure_dict(nnx.state(cell)),
                       nnx.to_pure_dict(nnx.state(model.cell)), 0)


def test_init_follows_the_authors_uniform_recipe():
    hidden = 64
    model = LSTM(3, hidden, 2, rngs=nnx.Rngs(0))
    bound = 1 / hidden**0.5
    cp = nnx.to_pure_dict(nnx.state(model.cell))
    for k in ("ii", "if_", "ig", "io", "hi", "hf", "hg", "ho"):
        w = np.asarray(cp[k]["kernel"])
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    b = np.concatenate([cp[k]["bias"] for k in ("hi", "hf", "hg", "ho")])
    assert np.abs(b).max() <= 2 * bound and np.abs(b).max() > bound  # sum of two uniforms


@settings(max_examples=4, deadline=None)
@given(n=st.integers(1, 3), t=st.integers(1, 6), d=st.integers(1, 3), h=st.integers(1, 4),
       c=st.integers(1, 3), many_to_many=st.booleans())
def test_shapes_and_many_to_one_is_last_step(n, t, d, h, c, many_to_many):
    model = LSTM(d, h, c, rngs=nnx.Rngs(0), many_to_many=many_to_many)
    x = jax.random.normal(jax.random.key(0), (n, t, d))
    out = nnx.jit(lambda m, x, k: m(x, key=k, p_detach=0.5))(model, x, jax.random.key(1))
    assert out.dtype == jnp.float32
    assert out.shape == ((n, t, c) if many_to_many else (n, c))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    both = jax.jit(lambda p, x: (lstm_apply(p, x, many_to_many=True)[:, -1], lstm_apply(p, x)))
    # the same maths through readouts of different shapes ([n, t, h] vs [n, h] matmuls):
    # float32 rounding differs per element, so compare norm-wise (an entry near 0 can differ
    # by a few ulps of the outputs' scale, far more than 1e-6 of itself)
    last, one = (np.asarray(v) for v in both(params, x))
    assert np.linalg.norm(last - one) <= 1e-6 * np.linalg.norm(one), (last, one)


def test_bad_input_raises_clear_errors():
    model = LSTM(D, H, C, rngs=nnx.Rngs(0))
    x = jnp.zeros((N, T, D))
    with pytest.raises(ValueError, match="inputs"):
        model(jnp.zeros((N, T)))
    with pytest.raises(ValueError, match="in_features"):
        model(jnp.zeros((N, T, D + 1)))
    with pytest.raises(ValueError, match="p_detach"):
        model(x, key=jax.random.key(0), p_detach=1.5)
    with pytest.raises(ValueError, match="p_detach"):
        LSTM(D, H, C, rngs=nnx.Rngs(0), p_detach=-0.1)
    with pytest.raises(ValueError, match="hidden_features"):
        LSTM(D, 0, C, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="detach_mask"):
        model(x, detach_mask=jnp.zeros((T + 1,), bool))
    with pytest.raises(ValueError, match="at most one"):
        model(x, key=jax.random.key(0), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="rngs"):
        model(x, rngs=jax.random.key(0))
