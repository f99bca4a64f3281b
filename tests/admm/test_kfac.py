"""admm_kfac: the two-sided, variable-metric weight blocks (K-FAC for RNNs), in float64."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from admm_problems import WEIGHT_BLOCK_CASES, weight_block_problem
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import admm_jax
from admm_jax.admm import blocks
from admm_jax.admm.problem import ADMMConfig, data_loss

CFGS = WEIGHT_BLOCK_CASES
_problem = weight_block_problem


def _loop_rnn(params, inputs, cfg, taps=None):
    """An independent Elman RNN, a Python loop over time with explicit taps on ``a_t``:
    returns ``(outputs [N, |S|, C], features phi_t [N, T, P], states [N, T, H])``."""
    n, t = inputs.shape[:2]
    hid = params["W"].shape[0]
    x = jax.nn.one_hot(inputs, params["U"].shape[1]) if inputs.ndim == 2 else inputs
    h = jnp.zeros((n, hid))
    hs, phis = [], []
    for s in range(t):
        phis.append(jnp.concatenate([x[:, s], h, jnp.ones((n, 1))], -1))
        a = x[:, s] @ params["U"].T + h @ params["W"].T + params["b"]
        if taps is not None:
            a = a + taps[:, s]
        h = jnp.tanh(a)
        hs.append(h)
    hs = jnp.stack(hs, 1)
    out_h = hs if cfg.many_to_many else hs[:, -1:]
    return out_h @ params["V"].T + params["c"], jnp.stack(phis, 1), hs


def _reference(params, inputs, targets, cfg):
    """Factors, adjoints and mean-loss gradients straight from the definitions, with jax.grad
    of the loop RNN's summed loss in its taps (the per-sample adjoints) and in the params."""
    n, t = inputs.shape[:2]
    hid = params["W"].shape[0]

    def summed(taps):
        return data_loss(_loop_rnn(params, inputs, cfg, taps)[0], targets, cfg)

    g_a = jax.grad(summed)(jnp.zeros((n, t, hid)))
    o, phi, hs = _loop_rnn(params, inputs, cfg)
    g_o = jax.grad(lambda oo: data_loss(oo, targets, cfg))(o)
    phi = phi.reshape(n * t, -1)
    out_h = hs if cfg.many_to_many else hs[:, -1:]
    phi3 = jnp.concatenate([out_h, jnp.ones(out_h.shape[:-1] + (1,))], -1).reshape(-1, hid + 1)
    ga, go = g_a.reshape(n * t, hid), g_o.reshape(phi3.shape[0], -1)
    grad = jax.grad(lambda p: data_loss(_loop_rnn(p, inputs, cfg)[0], targets, cfg) / n)(params)
    return {
        "A1": np.asarray(phi.T @ phi / n), "S1": np.asarray(ga.T @ ga / (n * t)),
        "A3": np.asarray(phi3.T @ phi3 / n), "S3": np.asarray(go.T @ go / go.shape[0]),
        "G1": np.asarray(jnp.concatenate([grad["U"].T, grad["W"].T, grad["b"][None]])),
        "G3": np.asarray(jnp.concatenate([grad["V"].T, grad["c"][None]])), "o": o,
    }


def _tx(cfg, tokens, **kw):
    kw = {"warmup_steps": 0, **kw}
    return admm_jax.admm_kfac(activation=cfg.activation, many_to_many=cfg.many_to_many,
                              loss=cfg.loss, token_inputs=tokens, **kw)


def _theta(upd):
    return (np.asarray(jnp.concatenate([upd["U"].T, upd["W"].T, upd["b"][None]])),
            np.asarray(jnp.concatenate([upd["V"].T, upd["c"][None]])))


def _kron_solve(a, s, g):
    """``X`` with ``a X s = g`` by an explicit solve with ``np.kron(a, s)`` (row-major vec)."""
    return np.linalg.solve(np.kron(a, s), g.reshape(-1)).reshape(g.shape)


@pytest.mark.parametrize("name", list(CFGS))
def test_adjoint_statistics_equal_jax_grad_based_ones(name):
    cfg, tokens, params, inputs, targets = _problem(name)
    ref = _reference(params, inputs, targets, cfg)
    tx = _tx(cfg, tokens)
    _, state = tx.update(None, tx.init(params), params, inputs=inputs, targets=targets)
    f = state.factors
    for k in ("S1", "A3", "S3"):
        np.testing.assert_allclose(f[k], ref[k], rtol=1e-10, atol=1e-14, err_msg=k)
    if tokens:  # (counts, X^T P, P^T P): the blocks of the one-hot features' Gram
        v = params["U"].shape[1]
        a1 = ref["A1"]
        np.testing.assert_allclose(f["A1"][0], np.diag(a1)[:v], rtol=1e-12)
        np.testing.assert_allclose(f["A1"][1], a1[:v, v:], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(f["A1"][2], a1[v:, v:], rtol=1e-12, atol=1e-14)
    else:
        np.testing.assert_allclose(f["A1"], ref["A1"], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", list(CFGS))
@pytest.mark.parametrize("normalize", [True, False])
def test_factored_step_equals_an_explicit_kronecker_solve(name, normalize):
    cfg, tokens, params, inputs, targets = _problem(name, seed=1)
    eta, mu = 0.3, 0.2
    ref = _reference(params, inputs, targets, cfg)
    tx = _tx(cfg, tokens, learning_rate=eta, prox=mu, adaptive_damping=False,
             normalize_output=normalize)
    upd, _ = tx.update(None, tx.init(params), params, inputs=inputs, targets=targets)
    for i, (d, a, s, g) in enumerate(zip(_theta(upd), (ref["A1"], ref["A3"]),
                                         (ref["S1"], ref["S3"]), (ref["G1"], ref["G3"]),
                                         strict=True)):
        if normalize:
            s = s / np.mean(np.linalg.eigvalsh(s))
        damp_a = np.full(a.shape[0], mu * np.trace(a) / a.shape[0])
        if i == 0 and tokens:  # damped per block, as in admm_preconditioned
            v = params["U"].shape[1]
            counts = np.diag(a)[:v]
            damp_a[:v] = mu * counts.sum() / np.count_nonzero(counts)
            damp_a[v:] = mu * np.trace(a[v:, v:]) / (a.shape[0] - v)
        lam_s = mu * np.trace(s) / s.shape[0]
        want = -eta * _kron_solve(a + np.diag(damp_a), s + lam_s * np.eye(s.shape[0]), g)
        np.testing.assert_allclose(d, want, rtol=1e-7, atol=1e-12)


def test_identity_factors_give_exactly_a_scaled_gradient_step():
    """Factors = I, so their damped inverses (as of the last refresh, none at this step) are
    I / (1 + mu): the step is -eta / (1 + mu)^2 grad, for both blocks."""
    cfg, tokens, params, inputs, targets = _problem("dense", seed=5)
    eta, mu = 0.4, 0.25
    tx = _tx(cfg, tokens, learning_rate=eta, prox=mu, adaptive_damping=False, refresh_every=2)
    state = tx.init(params)
    eye = {k: blocks.damped_inverse(jnp.eye(f.shape[0]), mu)
           for k, f in state.factors.items()}
    state = state._replace(count=jnp.asarray(1, jnp.int32), inverses=eye,
                           inverse_prox=jnp.asarray(mu))
    upd, new = tx.update(None, state, params, inputs=inputs, targets=targets)
    grad = jax.grad(lambda p: data_loss(admm_jax.elman_apply(p, inputs)[:, None], targets, cfg)
                    / inputs.shape[0])(params)
    for k in upd:
        np.testing.assert_allclose(upd[k], -eta / (1 + mu) ** 2 * grad[k], rtol=1e-12,
                                   atol=1e-15)
    for k in eye:  # no refresh at count 1
        np.testing.assert_array_equal(new.inverses[k], eye[k])


def _assert_step_scaled(factors, varied, **shared):
    """At each ``(count, factor)``, admm_kfac with the ``varied`` options takes exactly
    ``factor`` times the step it takes without them (a finite, nonzero reference)."""
    cfg, tokens, params, inputs, targets = _problem("dense", seed=2)
    shared = {"adaptive_damping": False, "refresh_every": 1, **shared}
    tx0 = _tx(cfg, tokens, **shared)
    tx = _tx(cfg, tokens, **shared, **varied)
    state0 = tx0.init(params)
    for count, factor in factors:
        state = state0._replace(count=jnp.asarray(count, jnp.int32))
        upd, _ = tx.update(None, state, params, inputs=inputs, targets=targets)
        ref, _ = tx0.update(None, state, params, inputs=inputs, targets=targets)
        for k in upd:
            assert np.all(np.isfinite(ref[k])) and np.any(ref[k] != 0)
            np.testing.assert_allclose(upd[k], factor * ref[k], rtol=1e-12, atol=1e-15)


def test_warmup_scales_the_step_linearly_then_stops():
    _assert_step_scaled(((0, 0.25), (2, 0.75), (3, 1.0), (7, 1.0)), {"warmup_steps": 4})


def test_decay_steps_scales_the_step_by_a_cosine_to_zero():
    _assert_step_scaled(((0, 1.0), (4, 0.5), (6, 0.5 * (1 + np.cos(np.pi * 0.75))), (8, 0.0),
                         (11, 0.0)), {"decay_steps": 8}, learning_rate=0.3)
    with pytest.raises(ValueError, match="decay_steps: expected a positive int or None"):
        admm_jax.admm_kfac(decay_steps=0)


def test_kron_step_with_identity_factors_is_a_scaled_gradient():
    g = jax.random.normal(jax.random.key(0), (5, 3))
    out = blocks.kron_step(g, blocks.damped_inverse(jnp.eye(5), 0.5),
                           blocks.damped_inverse(jnp.eye(3), 0.25))
    np.testing.assert_allclose(out, g / (1.5 * 1.25), rtol=1e-14)


@settings(max_examples=15, deadline=None)
@given(p=st.integers(1, 7), z=st.integers(1, 6), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([jnp.float32, jnp.float64]))
def test_kron_step_shapes_dtypes_and_solve(p, z, seed, dtype):
    ks = jax.random.split(jax.random.key(seed), 3)
    ma = jax.random.normal(ks[0], (p, p), dtype)
    ms = jax.random.normal(ks[1], (z, z), dtype)
    a, s = ma @ ma.T, ms @ ms.T
    g = jax.random.normal(ks[2], (p, z), dtype)
    out = blocks.kron_step(g, blocks.damped_inverse(a, 0.5), blocks.damped_inverse(s, 0.3, True))
    assert out.shape == (p, z) and out.dtype == dtype
    a64, s64 = np.asarray(a, np.float64), np.asarray(s, np.float64)
    ma, ms = np.trace(a64) / p, np.trace(s64) / z
    want = _kron_solve(a64 + 0.5 * ma * np.eye(p), s64 / ms + 0.3 * np.eye(z),
                       np.asarray(g, np.float64))
    tol = 1e-10 if dtype == jnp.float64 else 2e-3
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)


def test_running_averages_and_refresh_every_k_without_recompiling():
    model = admm_jax.ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0), dtype=jnp.float64)
    params = nnx.state(model, nnx.Param)
    xs = jax.random.normal(jax.random.key(1), (12, 32, 6, 3))
    ys = (xs[..., 0].sum(-1) > 0).astype(jnp.int32)
    ema, k = 0.8, 4
    tx = admm_jax.admm_kfac(ema=ema, refresh_every=k, adaptive_damping=False)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, x, y):
        upd, state = tx.update(None, state, params, inputs=x, targets=y)
        return optax.apply_updates(params, upd), state

    state = tx.init(params)
    losses, eig_a1, fac_a1 = [], [], []
    for i in range(12):
        p_before = jax.tree.map(jnp.copy, params)
        params, state = step(params, state, xs[i], ys[i])
        losses.append(float(state.loss))
        eig_a1.append(np.asarray(state.inverses["A1"]))
        fac_a1.append(np.asarray(state.factors["A1"]))
        # the running average: this batch's Gram at the weights before the step
        _, phi, _ = _loop_rnn({kk: v[...] for kk, v in nnx.to_pure_dict(p_before).items()},
                              xs[i], ADMMConfig())
        phi = np.asarray(phi.reshape(-1, phi.shape[-1]))
        batch = phi.T @ phi / 32
        want = batch if i == 0 else ema * fac_a1[i - 1] + (1 - ema) * batch
        np.testing.assert_allclose(fac_a1[i], want, rtol=1e-10, atol=1e-13)
    assert step._cache_size() == 1
    assert int(state.count) == 12
    for i in range(12):  # the damped inverses change at the refreshes only
        if i % k == 0:
            a = fac_a1[i]
            want = np.linalg.inv(a + 0.1 * np.trace(a) / a.shape[0] * np.eye(a.shape[0]))
            np.testing.assert_allclose(eig_a1[i], want, rtol=1e-8, atol=1e-10)
        else:
            np.testing.assert_array_equal(eig_a1[i], eig_a1[i - 1])
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_a_damping_change_refreshes_the_inverses_between_refreshes():
    cfg, tokens, params, inputs, targets = _problem("dense", seed=6)
    tx = _tx(cfg, tokens, refresh_every=100, prox=0.2)
    _, state = tx.update(None, tx.init(params), params, inputs=inputs, targets=targets)
    _, same = tx.update(None, state, params, inputs=inputs, targets=targets)
    for k in state.inverses:  # damping unchanged (1): no refresh at count 1
        np.testing.assert_array_equal(same.inverses[k], state.inverses[k])
    moved = state._replace(damping=jnp.asarray(4.0))  # decays to 4 * 0.97 in this step
    _, new = tx.update(None, moved, params, inputs=inputs, targets=targets)
    assert float(new.inverse_prox) == pytest.approx(0.2 * 4.0 * 0.97)
    for k in state.inverses:
        want = blocks.damped_inverse(new.factors[k], 0.2 * 4.0 * 0.97, k[0] == "S")
        np.testing.assert_allclose(new.inverses[k], want, rtol=1e-12)


def test_sampled_fisher_readout_factor_is_the_exact_expectation():
    cfg, tokens, params, inputs, targets = _problem("dense", seed=3)
    ref = _reference(params, inputs, targets, cfg)
    tx = _tx(cfg, tokens, fisher="sampled", seed=1)
    _, state = tx.update(None, tx.init(params), params, inputs=inputs, targets=targets)
    p = np.asarray(jax.nn.softmax(ref["o"]).reshape(-1, 3))
    want = (np.diag(p.sum(0)) - p.T @ p) / p.shape[0]
    np.testing.assert_allclose(state.factors["S3"], want, rtol=1e-10, atol=1e-14)
    # S1 from sampled labels: the adjoints of the cotangent p - onehot(y~) (positive
    # semidefinite, not the empirical one)
    assert np.all(np.linalg.eigvalsh(np.asarray(state.factors["S1"])) > -1e-12)
    assert not np.allclose(state.factors["S1"], ref["S1"])


@pytest.mark.parametrize("output_factor", ["full", "per_gate"])
def test_lstm_step_equals_an_explicit_kronecker_solve(output_factor):
    model = admm_jax.LSTM(3, 5, 2, rngs=nnx.Rngs(0))
    params = jax.tree.map(lambda v: v.astype(jnp.float64), nnx.state(model, nnx.Param))
    x = jax.random.normal(jax.random.key(1), (7, 4, 3))
    y = jax.random.randint(jax.random.key(2), (7,), 0, 2)
    eta, mu = 0.3, 0.2
    tx = admm_jax.admm_kfac(eta, prox=mu, adaptive_damping=False, output_factor=output_factor,
                            normalize_output=False, warmup_steps=0)
    upd, state = tx.update(None, tx.init(params), params, inputs=x, targets=y)
    pure = nnx.to_pure_dict(params)
    gates = ("ii", "if_", "ig", "io"), ("hi", "hf", "hg", "ho")

    def mean_loss(pp, tap=None):
        cell = pp["cell"]
        _, hs = admm_jax.lstm_scan(cell, x, z_tap=tap)
        o = hs[:, -1] @ pp["readout"]["kernel"] + pp["readout"]["bias"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(o), y[:, None], 1))

    grad = jax.grad(mean_loss)(pure)
    g_z = 7 * jax.grad(lambda tap: mean_loss(pure, tap))(jnp.zeros((7, 4, 20)))
    _, hs = admm_jax.lstm_scan(pure["cell"], x)
    h_prev = jnp.concatenate([jnp.zeros((7, 1, 5)), hs[:, :-1]], 1)
    phi1 = np.asarray(jnp.concatenate([x, h_prev, jnp.ones((7, 4, 1))], -1).reshape(28, -1))
    phi3 = np.asarray(jnp.concatenate([hs[:, -1], jnp.ones((7, 1))], -1))
    o = hs[:, -1] @ pure["readout"]["kernel"] + pure["readout"]["bias"]
    g_o = np.asarray(jax.nn.softmax(o) - jax.nn.one_hot(y, 2))
    gz = np.asarray(g_z.reshape(28, 20))
    s1 = gz.T @ gz / 28
    if output_factor == "per_gate":
        s1 = s1 * np.kron(np.eye(4), np.ones((5, 5)))

    def theta(tree):
        cell, ro = tree["cell"], tree["readout"]
        return (np.asarray(jnp.concatenate([
            jnp.concatenate([cell[k]["kernel"] for k in gates[0]], 1),
            jnp.concatenate([cell[k]["kernel"] for k in gates[1]], 1),
            jnp.concatenate([cell[k]["bias"] for k in gates[1]])[None]])),
            np.asarray(jnp.concatenate([ro["kernel"], ro["bias"][None]])))

    np.testing.assert_allclose(state.factors["S1"], s1, rtol=1e-10, atol=1e-14)
    for d, a, s, g in zip(theta(nnx.to_pure_dict(upd)), (phi1.T @ phi1 / 7, phi3.T @ phi3 / 7),
                          (s1, g_o.T @ g_o / 7), theta(grad), strict=True):
        la = mu * np.trace(a) / a.shape[0]
        ls = mu * np.trace(s) / s.shape[0]
        want = -eta * _kron_solve(a + la * np.eye(a.shape[0]), s + ls * np.eye(s.shape[0]), g)
        np.testing.assert_allclose(d, want, rtol=1e-7, atol=1e-12)


def test_trains_through_nnx_optimizer_on_lstm_and_tokens():
    model = admm_jax.LSTM(3, 8, 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (64, 6, 3))
    y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
    opt = nnx.Optimizer(model, admm_jax.admm_kfac(warmup_steps=10), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        opt.update(model, None, inputs=x, targets=y)
        return opt.opt_state.loss

    losses = [float(step(model, opt)) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]
    emb = admm_jax.ElmanRNN(50, 8, 2, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(3), (64, 6), 0, 50)
    yt = (ids[:, 0] < 25).astype(jnp.int32)
    opt = nnx.Optimizer(emb, admm_jax.admm_kfac(token_inputs=True, warmup_steps=10),
                        wrt=nnx.Param)

    @nnx.jit
    def step_t(model, opt):
        opt.update(model, None, inputs=ids, targets=yt)
        return opt.opt_state.loss

    losses = [float(step_t(emb, opt)) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kw, match", [
    ({"learning_rate": 0.0}, "learning_rate: expected a positive number"),
    ({"prox": -0.1}, "prox: expected a number >= 0"),
    ({"ema": 1.0}, r"ema: expected a number in \[0, 1\)"),
    ({"refresh_every": 0}, "refresh_every: expected an int >= 1"),
    ({"warmup_steps": -1}, "warmup_steps: expected an int >= 0"),
    ({"fisher": "true"}, "fisher: expected one of"),
    ({"output_factor": "diag"}, "output_factor: expected one of"),
    ({"activation": "gelu"}, "activation: expected one of"),
])
def test_bad_options_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        admm_jax.admm_kfac(**kw)


def test_bad_batches_name_the_argument():
    cfg, tokens, params, inputs, targets = _problem("dense")
    tx = admm_jax.admm_kfac()
    with pytest.raises(ValueError, match="inputs, targets"):
        tx.update(None, tx.init(params), params)
    _, _, _, ids, _ = _problem("tokens")
    with pytest.raises(ValueError, match="inputs: got token ids but admm_kfac"):
        tx.update(None, tx.init(params), params, inputs=ids, targets=targets)
