"""scale_by_kfac and its named methods as optax transformations: one compilation, the
gradient they are given honoured (chain, MultiSteps), inject_hyperparams, apply_if_finite,
schedules, the fallback step, and the errors that name their argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compiles import counted_jit
from flax import nnx
from kfac_reference import FlaxRNN

import admm_jax
from admm_jax.kfac.transform import KFACState

N, T, D, H, C = 8, 5, 3, 6, 2


def problem(kind="lstm", seed=0):
    model = FlaxRNN(kind, D, H, C, rngs=nnx.Rngs(seed))
    x = jax.random.normal(jax.random.key(seed + 1), (N, T, D))
    y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
    return model, x, y


def batches(k, seed=2):
    keys = jax.random.split(jax.random.key(seed), k)
    xs = [jax.random.normal(kk, (N, T, D)) for kk in keys]
    return [(x, (x[:, :, 0].sum(1) > 0).astype(jnp.int32)) for x in xs]


def grads_of(model, x, y):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        out = nnx.merge(graphdef, p, jax.tree.map(jnp.asarray, rest))(x)
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    return jax.grad(loss)(params)


def close(a, b, rtol=1e-5, atol=1e-7):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def assert_own_gradient_is_jax_grad(model, x, y):
    """admm_kfac's step from its own backward pass (``grads=None``) equals its step from
    ``jax.grad``'s gradient, to float64 rounding."""
    tx = admm_jax.admm_kfac(model, x, 0.1)
    params = nnx.state(model, nnx.Param)
    state = tx.init(params)
    own, _ = tx.update(None, state, params, inputs=x, targets=y)
    given, _ = tx.update(grads_of(model, x, y), state, params, inputs=x, targets=y)
    close(own, given, rtol=1e-9, atol=1e-13)


def test_one_compilation_across_steps_and_inverse_refreshes():
    model, x, y = problem()
    tx = admm_jax.admm_kfac(model, x, 0.1, refresh_every=2)
    params = nnx.state(model, nnx.Param)
    state = tx.init(params)

    @counted_jit
    def step(params, state, x, y):
        u, state = tx.update(None, state, params, inputs=x, targets=y)
        return optax.apply_updates(params, u), state

    for xb, yb in batches(5):
        params, state = step(params, state, xb, yb)
    assert step.traces == 1
    assert int(state[0].count) == 5


@pytest.mark.parametrize("kw", [dict(kind="lstm"), dict(kind="gru", layers=2),
                                dict(kind="simple", vocab=11, many_to_many=True)],
                         ids=["lstm", "gru-2-layers", "embed-many-to-many"])
def test_no_gradients_means_its_own_gradient(kw, x64):
    """Its own gradient (from the backward pass of its tapped model) is jax.grad's, to
    float64 rounding, for LSTM, stacked GRU and embedded many-to-many models."""
    model = FlaxRNN(d_in=D, hidden=H, out=C, rngs=nnx.Rngs(0), dtype=jnp.float64, **kw)
    key = jax.random.key(1)
    if "vocab" in kw:
        x = jax.random.randint(key, (N, T), 0, kw["vocab"])
        y = x % C
    else:
        x = jax.random.normal(key, (N, T, D), jnp.float64)
        y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
    assert_own_gradient_is_jax_grad(model, x, y)


class DifferenceRNN(nnx.Module):
    """A recurrence whose two maps are subtracted, ``h = tanh(x U - h W)``, and a head used
    at two sites (the last two steps): a sum's adjoint with a sign, and one kernel's uses
    summed."""

    def __init__(self, rngs):
        self.u = nnx.Linear(D, H, rngs=rngs, param_dtype=jnp.float64)
        self.w = nnx.Linear(H, H, use_bias=False, rngs=rngs, param_dtype=jnp.float64)
        self.head = nnx.Linear(H, C, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        def step(h, x_t):
            h = jnp.tanh(self.u(x_t) - self.w(h))
            return h, h

        _, hs = jax.lax.scan(step, jnp.zeros((x.shape[0], H), x.dtype), x.swapaxes(0, 1))
        return self.head(hs[-1]) + 0.5 * self.head(hs[-2])


def test_own_gradient_through_a_difference_and_a_kernel_used_twice(x64):
    model = DifferenceRNN(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)
    y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
    assert_own_gradient_is_jax_grad(model, x, y)


def test_a_clip_before_it_in_a_chain_is_honoured():
    model, x, y = problem()
    params = nnx.state(model, nnx.Param)
    g = grads_of(model, x, y)
    clip = 1e-8
    chained = optax.chain(optax.clip_by_global_norm(clip), admm_jax.admm_kfac(model, x, 0.1))
    alone = admm_jax.admm_kfac(model, x, 0.1)
    u_chain, _ = chained.update(g, chained.init(params), params, inputs=x, targets=y)
    clipped, _ = optax.clip_by_global_norm(clip).update(g, optax.EmptyState())
    u_alone, _ = alone.update(clipped, alone.init(params), params, inputs=x, targets=y)
    close(u_chain, u_alone)
    unclipped, _ = alone.update(g, alone.init(params), params, inputs=x, targets=y)
    assert optax.tree.norm(u_chain) < 1e-6 * optax.tree.norm(unclipped)


def test_multisteps_accumulates_the_gradients():
    """MultiSteps(k=2): the step after two batches preconditions their mean gradient with
    the curvature of the batch it is given (the last)."""
    model, x, _ = problem()
    params = nnx.state(model, nnx.Param)
    (x1, y1), (x2, y2) = batches(2)
    g1, g2 = grads_of(model, x1, y1), grads_of(model, x2, y2)
    multi = optax.MultiSteps(admm_jax.admm_kfac(model, x, 0.1), every_k_schedule=2)
    s = multi.init(params)
    u1, s = multi.update(g1, s, params, inputs=x1, targets=y1)
    assert optax.tree.norm(u1) == 0.0
    u2, s = multi.update(g2, s, params, inputs=x2, targets=y2)
    single = admm_jax.admm_kfac(model, x, 0.1)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    want, _ = single.update(mean, single.init(params), params, inputs=x2, targets=y2)
    close(u2, want)


def test_inject_hyperparams_learning_rate_and_damping_without_recompiling():
    model, x, y = problem()
    params = nnx.state(model, nnx.Param)
    # the model is callable: optax would take it for a schedule unless it is static
    tx = optax.inject_hyperparams(admm_jax.admm_kfac, static_args="model")(
        model, jax.ShapeDtypeStruct(x.shape, x.dtype), learning_rate=0.1, damping=0.2)
    state = tx.init(params)
    step = counted_jit(lambda s, p: tx.update(None, s, p, inputs=x, targets=y))
    u1, _ = step(state, params)
    plain = admm_jax.admm_kfac(model, x, 0.1, damping=0.2)
    want, _ = plain.update(None, plain.init(params), params, inputs=x, targets=y)
    close(u1, want)
    state.hyperparams["learning_rate"] = jnp.asarray(0.05, jnp.float32)
    state.hyperparams["damping"] = jnp.asarray(0.2, jnp.float32)
    u2, _ = step(state, params)
    close(u2, jax.tree.map(lambda u: 0.5 * u, u1))
    state.hyperparams["damping"] = jnp.asarray(1.0, jnp.float32)
    u3, _ = step(state, params)
    assert optax.tree.norm(u3) < optax.tree.norm(u2)  # more damping, shorter step
    assert step.traces == 1


def test_apply_if_finite_skips_a_nan_gradient():
    model, x, y = problem()
    params = nnx.state(model, nnx.Param)
    tx = optax.apply_if_finite(admm_jax.admm_kfac(model, x, 0.1), max_consecutive_errors=3)
    state = tx.init(params)
    bad = jax.tree.map(lambda g: g * jnp.nan, grads_of(model, x, y))
    u, state = tx.update(bad, state, params, inputs=x, targets=y)
    assert optax.tree.norm(u) == 0.0 and int(state.notfinite_count) == 1
    u, state = tx.update(grads_of(model, x, y), state, params, inputs=x, targets=y)
    assert 0.0 < float(optax.tree.norm(u)) < np.inf and int(state.notfinite_count) == 0


def test_a_nonfinite_batch_is_rejected_by_the_named_method():
    model, x, y = problem()
    params = nnx.state(model, nnx.Param)
    tx = admm_jax.admm_kfac(model, x, 0.1)
    state = tx.init(params)
    u, new = tx.update(None, state, params, inputs=x.at[0, 0, 0].set(jnp.nan), targets=y)
    assert optax.tree.norm(u) == 0.0
    assert int(new[0].count) == 0


def test_an_optax_schedule_sets_the_step_size():
    model, x, y = problem()
    params = nnx.state(model, nnx.Param)
    sched = optax.warmup_cosine_decay_schedule(0.0, 0.4, 2, 10)
    tx = admm_jax.admm_kfac(model, x, sched)
    direction = admm_jax.scale_by_kfac(model, x)
    state, dstate = tx.init(params), direction.init(params)
    for k, (xb, yb) in enumerate(batches(3)):
        u, state = tx.update(None, state, params, inputs=xb, targets=yb)
        d, dstate = direction.update(None, dstate, params, inputs=xb, targets=yb)
        close(u, jax.tree.map(lambda v, k=k: -sched(k) * v, d))


def test_weight_decay_is_decoupled_and_spares_vectors():
    model, x, y = problem()
    params = nnx.state(model, nnx.Param)
    plain = admm_jax.admm_kfac(model, x, 0.1)
    decayed = admm_jax.admm_kfac(model, x, 0.1, weight_decay=0.5)
    u0, _ = plain.update(None, plain.init(params), params, inputs=x, targets=y)
    u1, _ = decayed.update(None, decayed.init(params), params, inputs=x, targets=y)
    for a, b, p in zip(jax.tree.leaves(u0), jax.tree.leaves(u1), jax.tree.leaves(params),
                       strict=True):
        want = a - 0.1 * 0.5 * p if p.ndim >= 2 else a
        np.testing.assert_allclose(b, want, rtol=1e-5, atol=1e-7)


class Normed(nnx.Module):
    def __init__(self, rngs):
        self.rnn = nnx.RNN(nnx.SimpleCell(D, H, rngs=rngs))
        self.norm = nnx.LayerNorm(H, rngs=rngs)
        self.head = nnx.Linear(H, C, rngs=rngs)

    def __call__(self, x):
        return self.head(self.norm(self.rnn(x)[:, -1]))


def test_the_fallback_is_an_adam_like_step():
    model = Normed(nnx.Rngs(0))
    _, x, y = problem()
    params = nnx.state(model, nnx.Param)
    tx = admm_jax.scale_by_kfac(model, x, fallback_scale=0.01)
    d, state = tx.update(None, tx.init(params), params, inputs=x, targets=y)
    g = grads_of(model, x, y)
    # Adam's first bias-corrected step is g / (|g| + eps): the sign, where g is not tiny
    for name in ("scale", "bias"):
        got, gn = np.asarray(d["norm"][name][...]), np.asarray(g["norm"][name][...])
        np.testing.assert_allclose(got, 0.01 * gn / (np.abs(gn) + 1e-8), rtol=1e-4)
    assert len(state.mu) == 2


def test_one_sided_keeps_no_output_factors():
    model, x, y = problem()
    params = nnx.state(model, nnx.Param)
    tx = admm_jax.admm_preconditioned(model, x, 0.1)
    u, state = tx.update(None, tx.init(params), params, inputs=x, targets=y)
    assert state[0].s == () and state[0].s_inv == ()
    assert np.isfinite(float(optax.tree.norm(u)))
    with pytest.raises(TypeError, match="output_factor"):
        admm_jax.admm_preconditioned(model, x, output_factor="full")


def test_sampled_fisher_trains():
    model, x, y = problem("gru")
    params = nnx.state(model, nnx.Param)
    tx = admm_jax.admm_kfac(model, x, 0.1, fisher="sampled")
    u, state = tx.update(None, tx.init(params), params, inputs=x, targets=y)
    assert np.isfinite(float(optax.tree.norm(u))) and int(state[0].count) == 1


def test_nnx_optimizer_trains_a_users_lstm():
    model, x, y = problem("lstm")
    optimizer = nnx.Optimizer(model, admm_jax.admm_kfac(model, x, 0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        optimizer.update(model, None, inputs=x, targets=y)

    losses = []
    for _ in range(30):
        step(model, optimizer, x, y)
        losses.append(float(optimizer.opt_state[0].loss[...]))
    assert losses[-1] < 0.5 * losses[0]


def test_a_state_for_another_model_is_a_named_error():
    model, x, y = problem("lstm")
    other, _, _ = problem("gru")
    tx = admm_jax.admm_kfac(model, x, 0.1)
    with pytest.raises(ValueError, match="params: .* do not match the model"):
        tx.update(None, tx.init(nnx.state(model, nnx.Param)), nnx.state(other, nnx.Param),
                  inputs=x, targets=y)
    wide = FlaxRNN("lstm", D, H + 1, C, rngs=nnx.Rngs(0))
    tx_wide = admm_jax.admm_kfac(wide, x)
    state_wide = tx_wide.init(nnx.state(wide, nnx.Param))
    with pytest.raises(ValueError, match="state: it was built for other parameters"):
        admm_jax.scale_by_kfac(model, x).update(None, state_wide[0],
                                                nnx.state(model, nnx.Param), inputs=x,
                                                targets=y)


@pytest.mark.parametrize("kwargs, match", [
    ({"damping": -1.0}, "damping: expected a finite number >= 0"),
    ({"ema": 1.0}, r"ema: expected a number in \[0, 1\)"),
    ({"refresh_every": 0}, "refresh_every: expected an int >= 1"),
    ({"fisher": "true"}, "fisher: expected one of"),
    ({"output_factor": "diag"}, "output_factor: expected one of"),
    ({"loss": "hinge"}, "loss: expected one of"),
    ({"learning_rate": -0.1}, "learning_rate: expected a finite number > 0"),
    ({"weight_decay": -0.1}, "weight_decay: expected a finite number >= 0"),
])
def test_bad_options_name_themselves(kwargs, match):
    model, x, _ = problem()
    with pytest.raises(ValueError, match=match):
        admm_jax.admm_kfac(model, x, **kwargs)


def test_bad_model_and_inputs_name_themselves():
    model, x, y = problem()
    with pytest.raises(TypeError, match="model: expected an nnx.Module"):
        admm_jax.admm_kfac(42, x)
    with pytest.raises(TypeError, match="inputs: expected an example batch"):
        admm_jax.admm_kfac(model, [1, 2, 3])
    tx = admm_jax.admm_kfac(model, x, 0.1)
    params = nnx.state(model, nnx.Param)
    with pytest.raises(ValueError, match="inputs, targets: scale_by_kfac needs"):
        tx.update(None, tx.init(params), params)


def test_its_state_says_what_it_takes():
    assert KFACState.takes_batch and KFACState.computes_gradients


def test_named_methods_take_scale_by_kfacs_keywords_with_its_defaults():
    import inspect

    own = inspect.signature(admm_jax.scale_by_kfac).parameters
    for method, drop in ((admm_jax.admm_kfac, ()),
                         (admm_jax.admm_preconditioned, ("output_factor", "normalize_output"))):
        params = inspect.signature(method).parameters
        for name, p in own.items():
            if p.kind is p.KEYWORD_ONLY and name not in drop:
                assert params[name].default == p.default, (method.__name__, name)
        assert not set(drop) & set(params)
    model, x, _ = problem()
    with pytest.raises(TypeError, match="output_factor: admm_preconditioned has no output"):
        admm_jax.admm_preconditioned(model, x, output_factor="full")
    with pytest.raises(TypeError, match="dampening"):
        admm_jax.admm_kfac(model, x, dampening=0.1)
