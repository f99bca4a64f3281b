"""admm_preconditioned: the ADMM weight blocks fed with back-propagated adjoints (float64)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from admm_problems import WEIGHT_BLOCK_CASES, make_problem, weight_block_problem
from flax import nnx

import admm_jax
from admm_jax.admm import blocks
from admm_jax.admm.preconditioned import adjoints
from admm_jax.admm.problem import ADMMConfig, data_loss
from admm_jax.models.elman import elman_trace

CFGS = WEIGHT_BLOCK_CASES


def _problem(name, seed=0, **kw):
    cfg, _, params, inputs, targets = weight_block_problem(name, seed, **kw)
    return cfg, params, inputs, targets


def _summed_loss(params, inputs, targets, cfg):
    o = elman_trace(params, inputs, activation=cfg.activation, many_to_many=cfg.many_to_many).o
    return data_loss(o, targets, cfg)


def _features(params, inputs, cfg):
    """Phi for (U, W, b) (dense: [x; h_prev; 1], tokens: [onehot(x); h_prev; 1]) and for
    (V, c), built directly from a forward pass."""
    tr = elman_trace(params, inputs, activation=cfg.activation, many_to_many=cfg.many_to_many)
    n, t, h = tr.h.shape
    h_prev = jnp.concatenate([jnp.zeros((n, 1, h)), tr.h[:, :-1]], 1)
    x = (jax.nn.one_hot(inputs, params["U"].shape[1]) if inputs.ndim == 2 else inputs)
    phi1 = jnp.concatenate([x, h_prev, jnp.ones((n, t, 1))], -1).reshape(n * t, -1)
    hs = tr.h if cfg.many_to_many else tr.h[:, -1:]
    phi3 = jnp.concatenate([hs, jnp.ones(hs.shape[:-1] + (1,))], -1).reshape(-1, h + 1)
    return phi1, phi3


def _as_theta(g):
    """Gradients/updates in the blocks' row layout: ``[U^T; W^T; b]`` and ``[V^T; c]``."""
    return (jnp.concatenate([g["U"].T, g["W"].T, g["b"][None]], 0),
            jnp.concatenate([g["V"].T, g["c"][None]], 0))


def _update(params, inputs, targets, cfg, **kw):
    tx = admm_jax.admm_preconditioned(activation=cfg.activation, many_to_many=cfg.many_to_many,
                                      loss=cfg.loss, **kw)
    upd, state = tx.update(None, tx.init(params), params, inputs=inputs, targets=targets)
    return upd, state


@pytest.mark.parametrize("name", list(CFGS))
def test_adjoint_taps_equal_an_explicit_backward_recursion(name):
    cfg, params, inputs, targets = _problem(name)
    loss, tr, g_a, g_o = adjoints(params, inputs, targets, cfg)
    # independent: the output adjoint from jax.grad of the loss in o, then the textbook
    # recursion delta_t = f'(a_t) * (W^T delta_{t+1} + V^T g_o,t [t in S])
    g_o_ref = jax.grad(lambda o: data_loss(o, targets, cfg))(tr.o)
    np.testing.assert_allclose(g_o, g_o_ref, rtol=1e-12, atol=1e-14)
    n, t, h = tr.a.shape
    fprime = 1.0 - jnp.tanh(tr.a) ** 2
    from_out = g_o_ref @ params["V"]  # [N, |S|, H]
    if not cfg.many_to_many:
        from_out = jnp.concatenate([jnp.zeros((n, t - 1, h)), from_out], 1)
    delta = [None] * t
    carry = jnp.zeros((n, h))
    for s in reversed(range(t)):
        delta[s] = fprime[:, s] * (carry @ params["W"] + from_out[:, s])
        carry = delta[s]
    np.testing.assert_allclose(g_a, jnp.stack(delta, 1), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(loss, _summed_loss(params, inputs, targets, cfg), rtol=1e-13)


@pytest.mark.parametrize("name", list(CFGS))
def test_update_equals_the_preconditioned_gradient_formula(name):
    """Delta theta = -eta (G/N + Lambda)^-1 grad(mean loss), G formed explicitly, Lambda =
    mu tr(G/N)/dim I (dense); for token inputs damped per block: mu x the mean count of the
    batch's tokens / N on the one-hot rows, mu tr/dim of the [h_prev; 1] block on the rest."""
    cfg, params, inputs, targets = _problem(name)
    eta, eta_o, mu = 0.3, 0.7, 0.2
    upd, _ = _update(params, inputs, targets, cfg, learning_rate=eta, readout_learning_rate=eta_o,
                     prox=mu, adaptive_damping=False)
    n = inputs.shape[0]
    grad = jax.grad(lambda p: _summed_loss(p, inputs, targets, cfg) / n)(params)
    phi1, phi3 = _features(params, inputs, cfg)
    for i, (phi, g, d, lr) in enumerate(zip((phi1, phi3), _as_theta(grad), _as_theta(upd),
                                            (eta, eta_o), strict=True)):
        gram = np.asarray(phi.T @ phi) / n
        damp = np.full(gram.shape[0], mu * np.trace(gram) / gram.shape[0])
        if i == 0 and inputs.ndim == 2:
            v = params["U"].shape[1]
            counts = np.diag(gram)[:v]
            damp[:v] = mu * counts.sum() / np.count_nonzero(counts)
            damp[v:] = mu * np.trace(gram[v:, v:]) / (gram.shape[0] - v)
        ref = -lr * np.linalg.solve(gram + np.diag(damp), np.asarray(g))
        np.testing.assert_allclose(d, ref, rtol=1e-8, atol=1e-12)


def test_large_damping_gives_the_negative_gradient_direction():
    cfg, params, inputs, targets = _problem("dense", seed=3)
    mu = 1e9
    upd, _ = _update(params, inputs, targets, cfg, prox=mu, adaptive_damping=False)
    grad = jax.grad(lambda p: _summed_loss(p, inputs, targets, cfg))(params)
    for g, d in zip(_as_theta(grad), _as_theta(upd), strict=True):
        cos = jnp.sum(g * d) / (jnp.linalg.norm(g) * jnp.linalg.norm(d))
        assert cos == pytest.approx(-1.0, abs=1e-7)


@pytest.mark.parametrize("tokens", [False, True])
def test_identity_gram_gives_exactly_a_scaled_gradient_step(tokens):
    """With Gram = I the proximal step is -eta/(1 + mu) * grad (kappa = mu * rho * tr(I)/dim)."""
    cfg = ADMMConfig(prox=0.25)
    params, _, _, _, inputs, targets = make_problem(5, cfg=cfg, tokens=tokens)
    eta = 0.4
    _, tr, g_a, g_o = adjoints(params, inputs, targets, cfg)
    grad = jax.grad(lambda p: _summed_loss(p, inputs, targets, cfg))(params)
    d, h = params["U"].shape[1], params["W"].shape[0]
    if tokens:
        gram = (jnp.ones(d), jnp.zeros((d, h + 1)), jnp.eye(h + 1))
    else:
        gram = (jnp.eye(d + h + 1),)
    new, _ = blocks.uwb_step(params, tr.h, inputs, -eta * g_a, 1 / eta, cfg, gram=gram)
    new_v, _ = blocks.vc_step(params, tr.h, -eta * g_o, 1 / eta, cfg, gram=jnp.eye(h + 1))
    for k, v in {**new, **new_v}.items():
        np.testing.assert_allclose(v - params[k], -eta / 1.25 * grad[k], rtol=1e-12,
                                   atol=1e-14)


def test_duplicated_batch_gives_the_same_update():
    cfg, params, inputs, targets = _problem("dense", seed=7)
    upd, _ = _update(params, inputs, targets, cfg)
    upd2, _ = _update(params, jnp.concatenate([inputs, inputs]),
                      jnp.concatenate([targets, targets]), cfg)
    for k in upd:
        np.testing.assert_allclose(upd2[k], upd[k], rtol=1e-10, atol=1e-13)


def test_adaptive_damping_doubles_while_the_loss_rises_and_decays_otherwise():
    cfg, params, inputs, targets = _problem("dense", seed=2)
    tx = admm_jax.admm_preconditioned()
    state = tx.init(params)
    _, state = tx.update(None, state, params, inputs=inputs, targets=targets)
    assert float(state.damping) == 1.0  # never below 1
    loss = float(state.loss)
    # pretend the loss was 10x lower (and steady) so far: this batch makes the fast average jump
    low = state._replace(damping=jnp.asarray(3.0), loss_fast=jnp.asarray(loss / 10),
                         loss_slow=jnp.asarray(loss / 10))
    upd, s2 = tx.update(None, low, params, inputs=inputs, targets=targets)
    assert float(s2.damping) == pytest.approx(6.0)
    fixed = admm_jax.admm_preconditioned(prox=0.1 * 6.0, adaptive_damping=False)
    ref, _ = fixed.update(None, fixed.init(params), params, inputs=inputs, targets=targets)
    for k in upd:  # the step is exactly the one with prox * damping
        np.testing.assert_allclose(upd[k], ref[k], rtol=1e-10, atol=1e-14)
    # a steady loss: the damping decays by 0.97
    steady = state._replace(damping=jnp.asarray(3.0), loss_fast=jnp.asarray(loss),
                            loss_slow=jnp.asarray(loss))
    _, s3 = tx.update(None, steady, params, inputs=inputs, targets=targets)
    assert float(s3.damping) == pytest.approx(3.0 * 0.97)
    # a jump that the batch-to-batch noise explains does not count
    noisy = state._replace(damping=jnp.asarray(3.0), loss_fast=jnp.asarray(loss),
                           loss_slow=jnp.asarray(loss / 1.3), loss_var=jnp.asarray(loss**2))
    _, s_noise = tx.update(None, noisy, params, inputs=inputs, targets=targets)
    assert float(s_noise.damping) == pytest.approx(3.0 * 0.97)
    # a non-finite loss: the step is rejected, zero update and the state unchanged (the
    # non-finite rule of every optimizer, admm_jax.reject_nonfinite; issue 19)
    nan = state._replace(loss_fast=jnp.asarray(jnp.nan))
    u4, s4 = tx.update(None, nan, params, inputs=inputs, targets=targets)
    assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree.leaves(u4))
    assert int(s4.count) == int(nan.count) and float(s4.damping) == float(nan.damping)
    # without adaptive damping it stays at 1 whatever the loss does
    off = admm_jax.admm_preconditioned(adaptive_damping=False)
    _, s5 = off.update(None, low._replace(damping=jnp.asarray(1.0)), params, inputs=inputs,
                       targets=targets)
    assert float(s5.damping) == 1.0


def test_step_norm_reports_each_weight_group():
    cfg, params, inputs, targets = _problem("dense", seed=2)
    upd, state = _update(params, inputs, targets, cfg)
    want = [float(optax.tree.norm({k: upd[k] for k in ks})) for ks in ("UWb", "Vc")]
    np.testing.assert_allclose(state.step_norm, want, rtol=1e-12)


def test_learning_rate_schedule_is_read_at_the_step_count():
    cfg, params, inputs, targets = _problem("dense", seed=4)
    sched = optax.piecewise_constant_schedule(0.1, {1: 0.5})
    tx = admm_jax.admm_preconditioned(sched, sched, adaptive_damping=False)
    fixed = admm_jax.admm_preconditioned(0.05, 0.05, adaptive_damping=False)
    state = tx.init(params)
    _, state = tx.update(None, state, params, inputs=inputs, targets=targets)
    upd, _ = tx.update(None, state, params, inputs=inputs, targets=targets)
    ref, _ = fixed.update(None, fixed.init(params), params, inputs=inputs, targets=targets)
    for k in upd:
        np.testing.assert_allclose(upd[k], ref[k], rtol=1e-10, atol=1e-14)


def test_trains_and_never_recompiles():
    model = admm_jax.ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0), dtype=jnp.float64)
    params = nnx.state(model, nnx.Param)
    x = jax.random.normal(jax.random.key(1), (64, 6, 3))
    y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
    tx = admm_jax.admm_preconditioned()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state):
        upd, state = tx.update(None, state, params, inputs=x, targets=y)
        return optax.apply_updates(params, upd), state

    state = tx.init(params)
    losses = []
    for _ in range(30):
        params, state = step(params, state)
        losses.append(float(state.loss))
    assert step._cache_size() == 1
    assert int(state.count) == 30
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kw, match", [
    ({"learning_rate": 0.0}, "learning_rate: expected a positive number"),
    ({"readout_learning_rate": -1.0}, "readout_learning_rate: expected a positive number"),
    ({"prox": -0.1}, "prox: expected a number >= 0"),
    ({"activation": "gelu"}, "activation: expected one of"),
    ({"loss": "hinge"}, "loss: expected one of"),
])
def test_bad_options_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        admm_jax.admm_preconditioned(**kw)


def test_missing_batch_is_a_clear_error():
    cfg, params, inputs, targets = _problem("dense")
    tx = admm_jax.admm_preconditioned()
    with pytest.raises(ValueError, match="inputs, targets"):
        tx.update(None, tx.init(params), params)


def test_lstm_gates_take_the_same_preconditioned_step():
    """For admm_jax.LSTM the four gates are one linear map of [x_t; h_{t-1}; 1]: the update is
    -eta (G/N + mu tr/dim I)^-1 grad, with the gradient from jax.grad of lstm_apply."""
    model = admm_jax.LSTM(3, 5, 2, rngs=nnx.Rngs(0))
    params = jax.tree.map(lambda v: v.astype(jnp.float64), nnx.state(model, nnx.Param))
    x = jax.random.normal(jax.random.key(1), (7, 4, 3))
    y = jax.random.randint(jax.random.key(2), (7,), 0, 2)
    eta, eta_o, mu = 0.3, 0.7, 0.2
    tx = admm_jax.admm_preconditioned(eta, eta_o, prox=mu, adaptive_damping=False)
    upd, state = tx.update(None, tx.init(params), params, inputs=x, targets=y)
    pure = nnx.to_pure_dict(params)

    def mean_loss(pp):
        o = admm_jax.lstm_apply(pp, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(o), y[:, None], 1))

    grad = jax.grad(mean_loss)(pure)
    _, hs = admm_jax.lstm_scan(pure["cell"], x)
    gates = ("ii", "if_", "ig", "io"), ("hi", "hf", "hg", "ho")
    h_prev = jnp.concatenate([jnp.zeros((7, 1, 5)), hs[:, :-1]], 1)
    phi1 = jnp.concatenate([x, h_prev, jnp.ones((7, 4, 1))], -1).reshape(28, -1)
    phi3 = jnp.concatenate([hs[:, -1], jnp.ones((7, 1))], -1)

    def theta(tree):  # [W_x; W_h; b] over the gates, and [V^T; c]
        cell, ro = tree["cell"], tree["readout"]
        return (jnp.concatenate([jnp.concatenate([cell[k]["kernel"] for k in gates[0]], 1),
                                 jnp.concatenate([cell[k]["kernel"] for k in gates[1]], 1),
                                 jnp.concatenate([cell[k]["bias"] for k in gates[1]])[None]]),
                jnp.concatenate([ro["kernel"], ro["bias"][None]]))

    upd_pure = nnx.to_pure_dict(upd)
    for phi, g, d, lr in zip((phi1, phi3), theta(grad), theta(upd_pure), (eta, eta_o),
                             strict=True):
        gram = np.asarray(phi.T @ phi) / 7
        damp = mu * np.trace(gram) / gram.shape[0]
        ref = -lr * np.linalg.solve(gram + damp * np.eye(gram.shape[0]), np.asarray(g))
        np.testing.assert_allclose(d, ref, rtol=1e-8, atol=1e-12)
    assert float(state.loss) == pytest.approx(float(mean_loss(pure)), rel=1e-12)


def test_lstm_trains_through_nnx_optimizer():
    model = admm_jax.LSTM(3, 8, 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (64, 6, 3))
    y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
    opt = nnx.Optimizer(model, admm_jax.admm_preconditioned(), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        opt.update(model, None, inputs=x, targets=y)
        return opt.opt_state.loss

    losses = [float(step(model, opt)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
