"""h-detach mask helper and the cell-path gradient diagnostic; the ElmanRNN p_detach option."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from admm_jax import (
    LSTM,
    ElmanRNN,
    cell_path_grad_norms,
    elman_apply,
    elman_trace,
    lstm_apply,
    sample_detach_mask,
)
from admm_jax.layouts import ELMAN_NAMES

N, T, D, H, C = 3, 6, 2, 5, 4


def test_sample_detach_mask_extremes_and_errors():
    k = jax.random.key(0)
    assert not bool(sample_detach_mask(k, 0.0, 50).any())
    assert bool(sample_detach_mask(k, 1.0, 50).all())
    with pytest.raises(ValueError, match="num_steps"):
        sample_detach_mask(k, 0.5, 0)
    with pytest.raises(ValueError, match="p"):
        sample_detach_mask(k, 2.0, 5)
    with pytest.raises(ValueError, match="scalar"):
        sample_detach_mask(k, jnp.ones(3) * 0.5, 5)
    with pytest.raises(TypeError, match="p"):
        sample_detach_mask(k, "0.5", 5)


def test_diagnostic_elman_cell_path_is_the_last_step_outer_product_float64():
    # An Elman RNN has no cell state: blocking every h_{t-1} leaves, for a loss on the last
    # step only, dL/dW = delta_T h_{T-1}^T with delta_T = dL/da_T (no recursion).
    with jax.enable_x64(True):
        model = ElmanRNN(D, H, C, rngs=nnx.Rngs(0), dtype=jnp.float64)
        params = model.params_dict()
        x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)

        def loss(p, mask):
            return jnp.sum(jnp.sin(elman_apply(p, x, detach_mask=mask)))

        n = jax.jit(lambda p: cell_path_grad_norms(loss, p, T, select=lambda g: g["W"]))(params)
        tr = elman_trace(params, x)
        # delta_T by hand: d sum(sin(o)) / d a_T = (cos(o) V) * (1 - h_T^2)
        delta = (jnp.cos(tr.o[:, 0]) @ params["V"]) * (1 - tr.h[:, -1] ** 2)
        g_w_cell = delta.T @ tr.h[:, -2]
        np.testing.assert_allclose(n.cell, jnp.linalg.norm(g_w_cell), rtol=1e-10)
        g_w_full = jax.grad(lambda p: loss(p, None))(params)["W"]
        np.testing.assert_allclose(n.full, jnp.linalg.norm(g_w_full), rtol=1e-10)
        np.testing.assert_allclose(n.h_paths, jnp.linalg.norm(g_w_full - g_w_cell), rtol=1e-10)
        np.testing.assert_allclose(n.ratio, n.cell / n.full, rtol=1e-12)


def test_diagnostic_lstm_without_recurrent_weights_has_no_h_paths():
    # With W_h = 0, h_{t-1} does not reach the gates: the whole gradient is the cell path.
    model = LSTM(D, H, C, rngs=nnx.Rngs(0), many_to_many=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    x = jax.random.normal(jax.random.key(1), (N, T, D))

    def loss(p, mask):
        return jnp.sum(lstm_apply(p, x, detach_mask=mask, many_to_many=True) ** 2)

    norms = jax.jit(lambda p: cell_path_grad_norms(loss, p, T))  # jittable; one compile
    n = norms(params)
    assert float(n.h_paths) > 1e-3 * float(n.full)  # random weights: h paths matter
    for k in ("hi", "hf", "hg", "ho"):
        params["cell"][k]["kernel"] = jnp.zeros_like(params["cell"][k]["kernel"])
    n0 = norms(params)
    assert float(n0.h_paths) == 0.0
    np.testing.assert_allclose(n0.ratio, 1.0, rtol=1e-6)


def test_elman_trace_signature_and_values_unchanged():
    model = ElmanRNN(D, H, C, rngs=nnx.Rngs(0), many_to_many=True, p_detach=0.5)
    assert set(nnx.to_pure_dict(nnx.state(model))) == set(ELMAN_NAMES)
    params = model.params_dict()
    x = jax.random.normal(jax.random.key(1), (N, T, D))
    h0 = jax.random.normal(jax.random.key(2), (N, H))
    tr = elman_trace(params, x, activation="relu", many_to_many=True, h0=h0)
    tr_m = elman_trace(params, x, activation="relu", many_to_many=True, h0=h0,
                       detach_mask=sample_detach_mask(jax.random.key(3), 0.5, T))
    for a, b in zip(tr, tr_m, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model(x, key=jax.random.key(4)), model(x))


def test_elman_p1_gradient_equals_a_handwritten_stopped_rnn_float64():
    with jax.enable_x64(True):
        model = ElmanRNN(D, H, C, rngs=nnx.Rngs(0), many_to_many=True, p_detach=1.0,
                         dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)
        mask = [True, False, True, True, False, True]

        def ref(p, mask):
            h = jnp.zeros((N, H), jnp.float64)
            out = []
            for t in range(T):
                h_in = jax.lax.stop_gradient(h) if mask[t] else h
                h = jnp.tanh(x[:, t] @ p["U"].T + h_in @ p["W"].T + p["b"])
                out.append(h @ p["V"].T + p["c"])
            return jnp.sum(jnp.stack(out, 1) ** 2)

        params = model.params_dict()
        g_ref = jax.grad(ref)(params, mask)
        g = jax.grad(lambda p: jnp.sum(
            elman_apply(p, x, many_to_many=True, detach_mask=jnp.array(mask)) ** 2))(params)
        for k in ELMAN_NAMES:
            np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-10, atol=1e-12)
        # The module at p = 1 blocks every step.
        g_mod = nnx.grad(lambda m: jnp.sum(m(x, key=jax.random.key(0)) ** 2))(model)
        g_all = jax.grad(ref)(params, [True] * T)
        np.testing.assert_allclose(g_mod["W"][...], g_all["W"], rtol=1e-10, atol=1e-12)
        assert not np.allclose(g_all["W"], jax.grad(ref)(params, [False] * T)["W"])


def test_elman_p_detach_validation():
    with pytest.raises(ValueError, match="p_detach"):
        ElmanRNN(D, H, C, rngs=nnx.Rngs(0), p_detach=1.5)
    model = ElmanRNN(D, H, C, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="detach_mask"):
        model(jnp.zeros((N, T, D)), detach_mask=jnp.zeros((T,), jnp.int32))
