"""ADMMiRNN in the Flax training loops: nnx.Optimizer (grads=None) and Linen TrainState."""

from __future__ import annotations

import difflib
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training.train_state import TrainState

import admm_jax

D, H, C, N, T = 3, 8, 2, 16, 5


def data():
    x = jax.random.normal(jax.random.key(1), (N, T, D))
    return x, (x[:, :, 0].sum(1) > 0).astype(jnp.int32)


def params_of(model):
    return nnx.state(model, nnx.Param)


def test_nnx_optimizer_grads_argument_is_ignored():
    """None, the params, zeros or real gradients: all give the same ADMM step.

    (That the nnx.Optimizer step equals the functional one is tests/optim/test_conformance.py.)
    """
    x, y = data()
    tx = admm_jax.admmirnn()
    want = None

    @nnx.jit
    def step(model, optimizer, g, x, y):
        optimizer.update(model, g, inputs=x, targets=y)

    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    for name in ("None", "params", "zeros", "nnx.grad"):
        model = admm_jax.ElmanRNN(D, H, C, rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        g = {"None": None, "params": params_of(model),
             "zeros": jax.tree.map(jnp.zeros_like, params_of(model)),
             "nnx.grad": nnx.grad(loss)(model)}[name]
        before = jax.tree.map(jnp.copy, params_of(model))
        step(model, optimizer, g, x, y)
        if want is None:
            want = params_of(model)
            assert any(float(jnp.max(jnp.abs(a - b))) > 1e-4 for a, b in zip(
                jax.tree.leaves(want), jax.tree.leaves(before), strict=True))
        for a, b in zip(jax.tree.leaves(params_of(model)), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=name)
        assert int(optimizer.step[...]) == 1


def test_nnx_optimizer_without_batch_says_what_to_pass():
    model = admm_jax.ElmanRNN(D, H, C, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, admm_jax.admmirnn(), wrt=nnx.Param)
    with pytest.raises(ValueError, match=r"inputs, targets: .*inputs=x, targets=y"):
        optimizer.update(model, None)


# The two loops of the README / quickstart notebook: they differ in the optimizer line only.
LOOP = """
model = Model(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, {tx}, wrt=nnx.Param)

@nnx.jit
def train_step(model, optimizer, x, y, idx):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads, inputs=x, targets=y, indices=idx)
    return loss

losses = [train_step(model, optimizer, xb, yb, idx) for xb, yb, idx in batches]
"""
ADAM = LOOP.format(tx="optax.adam(1e-2)")
ADMM = LOOP.format(tx="admm_jax.adapt_flax_rnn(admm_jax.admmirnn())")


class Model(nnx.Module):
    def __init__(self, rngs):
        self.rnn = nnx.RNN(nnx.SimpleCell(D, H, rngs=rngs))
        self.head = nnx.Linear(H, C, rngs=rngs)

    def __call__(self, x):
        return self.head(self.rnn(x)[:, -1])


def test_admmirnn_and_adam_loops_differ_by_one_line():
    diff = [d for d in difflib.ndiff(ADAM.splitlines(), ADMM.splitlines())
            if d.startswith(("+ ", "- "))]
    assert len(diff) == 2 and "optax.adam" in diff[0] and "admmirnn" in diff[1]

    x, y = data()
    batches = [(x[i:i + 8], y[i:i + 8], jnp.arange(i, i + 8)) for i in (0, 8)] * 8
    results = {}
    for name, src in (("adam", ADAM), ("admm", ADMM)):
        scope = {"nnx": nnx, "optax": optax, "admm_jax": admm_jax, "Model": Model,
                 "batches": batches, "N": N, "T": T}
        exec(textwrap.dedent(src), scope)  # noqa: S102 - the loop text is the thing under test
        results[name] = scope
    for name, scope in results.items():
        losses = np.asarray(scope["losses"])
        assert np.all(np.isfinite(losses)), name
        assert losses[-2:].mean() < losses[:2].mean(), (name, losses)
    # ADMMiRNN ran (its state counts iterations) and Adam's loop is plain optax
    assert int(results["admm"]["optimizer"].opt_state.count[...]) == len(batches)
    assert int(results["adam"]["optimizer"].step[...]) == len(batches)


class LinenModel(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cell = nn.SimpleCell(H, param_dtype=self.dtype, dtype=self.dtype)
        return nn.Dense(C, param_dtype=self.dtype, dtype=self.dtype)(nn.RNN(cell)(x)[:, -1])


def test_linen_train_state_helpers():
    with jax.enable_x64(True):  # float64: the comparisons below are exact up to rounding
        _linen_train_state_helpers()


def _linen_train_state_helpers():
    x, y = data()
    x = x.astype(jnp.float64)
    module = LinenModel(jnp.float64)
    params = module.init(jax.random.key(0), x)["params"]
    inner = admm_jax.admmirnn()
    tx = admm_jax.adapt_flax_rnn(inner)

    # Linen's own apply_gradients cannot forward the batch: the error says what is missing
    plain = TrainState.create(apply_fn=module.apply, params=params, tx=tx)
    with pytest.raises(ValueError, match="inputs, targets"):
        plain.apply_gradients(grads=params)

    # the function works on Linen's TrainState, the subclass offers it as its method
    step = jax.jit(admm_jax.apply_gradients)
    s1 = plain
    s2 = admm_jax.ExtraArgsTrainState.create(apply_fn=module.apply, params=params, tx=tx)
    method = jax.jit(lambda s, x, y: s.apply_gradients(inputs=x, targets=y))
    direct = admm_jax.elman_from_flax(params)
    d_state = inner.init(direct)
    ref = jax.jit(lambda p, s: inner.update(None, s, p, inputs=x, targets=y))
    for i in range(4):
        s1 = step(s1, inputs=x, targets=y)
        s2 = method(s2, x, y)
        u, d_state = ref(direct, d_state)
        direct = optax.apply_updates(direct, u)
        if i == 1:  # TrainState.create's step is a weakly typed Python int at first
            sizes = step._cache_size(), method._cache_size()
    assert (step._cache_size(), method._cache_size()) == sizes
    assert int(s1.step) == int(s2.step) == 4 and type(s2) is admm_jax.ExtraArgsTrainState
    for s in (s1, s2):
        got = admm_jax.elman_from_flax(s.params)
        for k in direct:
            np.testing.assert_allclose(got[k], direct[k], rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(s.apply_fn({"params": s.params}, x),
                                   admm_jax.elman_apply(direct, x), rtol=1e-8, atol=1e-9)


def test_linen_helper_with_gradient_optimizer_matches_linen():
    """With a gradient transformation, apply_gradients is Linen's apply_gradients."""
    x, y = data()
    module = LinenModel()
    params = module.init(jax.random.key(0), x)["params"]
    s = TrainState.create(apply_fn=module.apply, params=params, tx=optax.adam(1e-2))
    g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        module.apply({"params": p}, x), y).mean())(params)
    a, b = s.apply_gradients(grads=g), admm_jax.apply_gradients(s, g)
    for u, v in zip(jax.tree.leaves((a.params, a.opt_state, a.step)),
                    jax.tree.leaves((b.params, b.opt_state, b.step)), strict=True):
        np.testing.assert_array_equal(u, v)
