"""Adapters between Flax's SimpleCell RNNs (nnx and Linen) and ADMMiRNN's Elman parameters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import admm_jax
from admm_jax import ElmanRNN, adapt_flax_rnn, elman_apply, elman_from_flax, elman_to_flax
from admm_jax.train import fit

D, H, C, N, T = 3, 6, 4, 8, 5
ACT = {"tanh": nnx.tanh, "relu": nnx.relu}


class NnxModel(nnx.Module):
    """The user's own Flax model: nnx.RNN(nnx.SimpleCell) and an nnx.Linear readout."""

    def __init__(self, d, h, c, *, rngs, activation="tanh", residual=False, dtype=jnp.float32,
                 many_to_many=False):
        self.rnn = nnx.RNN(nnx.SimpleCell(d, h, rngs=rngs, activation_fn=ACT[activation],
                                          residual=residual, param_dtype=dtype, dtype=dtype))
        self.head = nnx.Linear(h, c, rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.many_to_many = many_to_many

    def __call__(self, x):
        hs = self.rnn(x)
        return self.head(hs if self.many_to_many else hs[:, -1])


class LinenModel(nn.Module):
    hidden: int
    classes: int
    activation: str = "tanh"
    residual: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cell = nn.SimpleCell(self.hidden, activation_fn=ACT[self.activation],
                             residual=self.residual, param_dtype=self.dtype, dtype=self.dtype)
        return nn.Dense(self.classes, param_dtype=self.dtype, dtype=self.dtype)(
            nn.RNN(cell)(x)[:, -1])


def nnx_params(model):
    return nnx.state(model, nnx.Param)


def batch(dtype=jnp.float32, n=N):
    x = jax.random.normal(jax.random.key(1), (n, T, D), dtype)
    return x, jnp.arange(n) % C


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def random_like(tree, seed):
    """Non-zero random values in every leaf (biases included), so every entry is checked."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [jax.random.normal(k, v.shape, v.dtype) * 0.5 for k, v in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, new)


@pytest.mark.parametrize("residual", [False, True])
def test_nnx_layout_is_exact(residual):
    model = NnxModel(D, H, C, rngs=nnx.Rngs(0), residual=residual)
    nnx.update(model, random_like(nnx_params(model), 3))
    p = elman_from_flax(nnx_params(model), residual=residual)
    cell = model.rnn.cell
    np.testing.assert_array_equal(p["U"], cell.dense_i.kernel[...].T)
    np.testing.assert_array_equal(p["b"], cell.dense_i.bias[...])
    np.testing.assert_array_equal(p["W"], cell.dense_h.kernel[...].T + residual * np.eye(H))
    np.testing.assert_array_equal(p["V"], model.head.kernel[...].T)
    np.testing.assert_array_equal(p["c"], model.head.bias[...])
    assert {k: v.shape for k, v in p.items()} == {
        "U": (H, D), "W": (H, H), "b": (H,), "V": (C, H), "c": (C,)}


def test_round_trip_identical_nnx_and_linen():
    state = nnx_params(NnxModel(D, H, C, rngs=nnx.Rngs(0)))
    back = elman_to_flax(elman_from_flax(state), state)
    assert type(back) is type(state)
    assert_trees_equal(back, state)

    x, _ = batch()
    lin = LinenModel(H, C).init(jax.random.key(0), x)["params"]
    back = elman_to_flax(elman_from_flax(lin), lin)
    assert isinstance(back, dict)
    assert_trees_equal(back, lin)
    # the whole variables dict ({"params": ...}) is accepted as well
    assert_trees_equal(elman_from_flax({"params": lin}), elman_from_flax(lin))


@pytest.mark.parametrize("flavour", ["nnx", "linen"])
def test_round_trip_residual_within_one_ulp_of_the_diagonal(flavour):
    """``W = K_h^T + I`` rounds ``K_h``'s diagonal entries once: at most 1 ulp of 1.0."""
    if flavour == "nnx":
        p = nnx_params(NnxModel(D, H, C, rngs=nnx.Rngs(0), residual=True))
    else:
        p = LinenModel(H, C, residual=True).init(jax.random.key(0), batch()[0])["params"]
    back = elman_to_flax(elman_from_flax(p, residual=True), p, residual=True)
    assert jax.tree.structure(back) == jax.tree.structure(p)
    flat_b, flat_p = jax.tree.leaves(back), jax.tree.leaves(p)
    ulp = float(jnp.finfo(jnp.float32).eps)
    for u, v in zip(flat_b, flat_p, strict=True):
        assert u.dtype == v.dtype
        off = ~np.eye(H, dtype=bool) if u.shape == (H, H) else np.ones(u.shape, bool)
        np.testing.assert_array_equal(np.asarray(u)[off], np.asarray(v)[off])
        np.testing.assert_allclose(u, v, rtol=0, atol=ulp)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 5), h=st.integers(1, 6), c=st.integers(1, 4),
       dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]))
def test_round_trip_property(d, h, c, dtype):
    rng = np.random.default_rng([d, h, c])

    def a(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype)

    state = {"rnn": {"cell": {"dense_i": {"kernel": a(d, h), "bias": a(h)},
                              "dense_h": {"kernel": a(h, h)}}},
             "head": {"kernel": a(h, c), "bias": a(c)}}
    p = elman_from_flax(state)
    assert all(v.dtype == dtype for v in p.values())
    assert_trees_equal(elman_to_flax(p, state), state)


@pytest.mark.parametrize("flavour", ["nnx", "linen"])
@pytest.mark.parametrize("activation,residual", [("tanh", False), ("relu", False),
                                                 ("tanh", True)])
def test_flax_outputs_equal_elman_apply_float64(flavour, activation, residual):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)
        if flavour == "nnx":
            model = NnxModel(D, H, C, rngs=nnx.Rngs(0), activation=activation,
                             residual=residual, dtype=jnp.float64)
            nnx.update(model, random_like(nnx_params(model), 5))
            params, out = nnx_params(model), model(x)
            opts = admm_jax.flax_cell_options(model.rnn)
        else:
            module = LinenModel(H, C, activation=activation, residual=residual,
                                dtype=jnp.float64)
            params = random_like(module.init(jax.random.key(0), x)["params"], 5)
            out = module.apply({"params": params}, x)
            opts = admm_jax.flax_cell_options(
                nn.RNN(nn.SimpleCell(H, activation_fn=ACT[activation], residual=residual)))
        assert opts == (activation, residual)
        p = elman_from_flax(params, residual=residual)
        assert out.dtype == jnp.float64 and p["W"].dtype == jnp.float64
        np.testing.assert_allclose(elman_apply(p, x, activation=activation), out,
                                   rtol=1e-12, atol=1e-12)


def test_many_to_many_outputs_equal_float64():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)
        model = NnxModel(D, H, C, rngs=nnx.Rngs(0), dtype=jnp.float64, many_to_many=True)
        p = elman_from_flax(nnx_params(model))
        np.testing.assert_allclose(elman_apply(p, x, many_to_many=True), model(x),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("residual", [False, True])
def test_one_admm_iteration_through_the_adapter_nnx(residual):
    """nnx.Optimizer + adapter == admmirnn on the converted parameters, converted back."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)
        y = jnp.arange(N) % C
        model = NnxModel(D, H, C, rngs=nnx.Rngs(0), residual=residual, dtype=jnp.float64)
        before = jax.tree.map(jnp.copy, nnx_params(model))
        direct = elman_from_flax(before, residual=residual)

        tx = admm_jax.admmirnn()
        optimizer = nnx.Optimizer(model, adapt_flax_rnn(tx, residual=residual), wrt=nnx.Param)
        optimizer.update(model, None, inputs=x, targets=y)

        updates, state = tx.update(None, tx.init(direct), direct, inputs=x, targets=y)
        direct = optax.apply_updates(direct, updates)
        got = elman_from_flax(nnx_params(model), residual=residual)
        for k in direct:
            np.testing.assert_allclose(got[k], direct[k], rtol=1e-11, atol=1e-12)
        # the weights moved, the readout of the Flax model is the trained one
        assert float(jnp.max(jnp.abs(got["W"] - elman_from_flax(before, residual=residual)["W"]))
                     ) > 1e-6
        np.testing.assert_allclose(model(x), elman_apply(direct, x), rtol=1e-11, atol=1e-12)
        # the optimizer state is admmirnn's own (fit and admm_jax.optimizers recognise it)
        assert int(optimizer.opt_state.count[...]) == 1
        np.testing.assert_allclose(optimizer.opt_state.duals.lam1[...], state.duals.lam1,
                                   rtol=1e-11, atol=1e-12)


def test_one_admm_iteration_through_the_adapter_linen():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)
        y = jnp.arange(N) % C
        module = LinenModel(H, C, dtype=jnp.float64)
        params = module.init(jax.random.key(0), x)["params"]
        tx = admm_jax.admmirnn()
        adapted = adapt_flax_rnn(tx)
        u, _ = adapted.update(None, adapted.init(params), params, inputs=x, targets=y)
        new = optax.apply_updates(params, u)
        direct = elman_from_flax(params)
        du, _ = tx.update(None, tx.init(direct), direct, inputs=x, targets=y)
        assert_trees_equal(jax.tree.map(lambda a: a.round(10), new), jax.tree.map(
            lambda a: a.round(10), elman_to_flax(optax.apply_updates(direct, du), params)))
        np.testing.assert_allclose(module.apply({"params": new}, x),
                                   elman_apply(optax.apply_updates(direct, du), x),
                                   rtol=1e-11, atol=1e-12)


def test_gradients_are_mapped_too():
    """A gradient optimizer through the adapter equals the same optimizer on the Flax tree."""
    model = NnxModel(D, H, C, rngs=nnx.Rngs(0))
    x, y = batch()

    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    params = nnx_params(model)
    g = nnx.grad(loss)(model)
    tx = optax.adam(1e-2)
    plain, _ = tx.update(g, tx.init(params), params)
    adapted = adapt_flax_rnn(tx)
    mapped, _ = adapted.update(g, adapted.init(params), params)
    for a, b in zip(jax.tree.leaves(mapped), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_adapted_optimizer_in_nnx_jit_loop_traces_once():
    x, y = batch(n=32)
    model = NnxModel(D, H, C, rngs=nnx.Rngs(0))
    w0 = model.rnn.cell.dense_h.kernel[...].copy()
    tx = adapt_flax_rnn(admm_jax.admmirnn())
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    traces = []

    @nnx.jit
    def step(model, optimizer, xb, yb, idx):
        traces.append(1)
        optimizer.update(model, None, inputs=xb, targets=yb, indices=idx)

    for i in range(4):
        idx = jnp.arange(8) + 8 * i
        step(model, optimizer, x[idx], y[idx], idx)
    assert len(traces) == 1
    assert int(optimizer.opt_state.count[...]) == 4
    assert not admm_jax.optimizers.needs_gradients(tx.init(nnx_params(model)))  # fit: no grads
    assert float(jnp.max(jnp.abs(model.rnn.cell.dense_h.kernel[...] - w0))) > 0
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(nnx_params(model)))


class Emb(nnx.Module):
    def __init__(self, rngs, **kw):
        self.inner = NnxModel(D, H, C, rngs=rngs, **kw)
        self.extra = nnx.Linear(2, 2, rngs=rngs)


class NoBias(nnx.Module):
    def __init__(self, rngs):
        self.rnn = nnx.RNN(nnx.SimpleCell(D, H, rngs=rngs))
        self.head = nnx.Linear(H, C, use_bias=False, rngs=rngs)


class Lstm(nnx.Module):
    def __init__(self, rngs):
        self.rnn = nnx.RNN(nnx.LSTMCell(D, H, rngs=rngs))
        self.head = nnx.Linear(H, C, rngs=rngs)


@pytest.mark.parametrize("make,match", [
    (lambda: Emb(nnx.Rngs(0)), "readout.*extra/kernel"),
    (lambda: NoBias(nnx.Rngs(0)), "use_bias=True"),
    (lambda: Lstm(nnx.Rngs(0)), "exactly one Flax SimpleCell"),
])
def test_unsupported_layouts_raise_clearly(make, match):
    with pytest.raises(ValueError, match=match):
        elman_from_flax(nnx_params(make()))
    with pytest.raises(ValueError, match=match):
        adapt_flax_rnn(admm_jax.admmirnn()).init(nnx_params(make()))


def test_recurrent_bias_and_bad_shapes_raise():
    p = nnx.to_pure_dict(nnx_params(NnxModel(D, H, C, rngs=nnx.Rngs(0))))
    p["rnn"]["cell"]["dense_h"]["bias"] = jnp.zeros(H)
    with pytest.raises(ValueError, match="bias on the recurrent layer"):
        elman_from_flax(p)
    p = nnx.to_pure_dict(nnx_params(NnxModel(D, H, C, rngs=nnx.Rngs(0))))
    like = nnx_params(NnxModel(D, H + 1, C, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="does not fit"):
        elman_to_flax(elman_from_flax(p), like)
    with pytest.raises(ValueError, match="params: .*current Flax parameters"):
        adapt_flax_rnn(admm_jax.admmirnn()).update(None, None, None)


def test_cell_options_checks():
    rngs = nnx.Rngs(0)
    assert admm_jax.flax_cell_options(nnx.SimpleCell(D, H, rngs=rngs, activation_fn=jax.nn.relu,
                                                     residual=True)) == ("relu", True)
    with pytest.raises(ValueError, match="activation_fn: ADMMiRNN supports tanh and relu"):
        admm_jax.flax_cell_options(nnx.SimpleCell(D, H, rngs=rngs, activation_fn=nnx.gelu))
    with pytest.raises(ValueError, match="reverse=True"):
        admm_jax.flax_cell_options(nnx.RNN(nnx.SimpleCell(D, H, rngs=rngs), reverse=True))
    with pytest.raises(ValueError, match="only SimpleCell"):
        admm_jax.flax_cell_options(nn.RNN(nn.LSTMCell(H)))
    with pytest.raises(TypeError, match="module: expected nnx.RNN"):
        admm_jax.flax_cell_options("tanh")


class FlaxModel(nnx.Module):
    def __init__(self, rngs, **kw):
        self.rnn = nnx.RNN(nnx.SimpleCell(D, H, rngs=rngs, **kw), rngs=False)
        self.head = nnx.Linear(H, C, rngs=rngs)

    def __call__(self, x):
        carry = jnp.zeros((x.shape[0], H), x.dtype)
        return self.head(self.rnn(x, initial_carry=carry)[:, -1])


def test_flax_layouts_that_cannot_be_trained_raise():
    tx = admm_jax.admmirnn()
    rev = nnx.RNN(nnx.SimpleCell(D, H, rngs=nnx.Rngs(0)), reverse=True)
    with pytest.raises(ValueError, match="reverse"):
        admm_jax.adapt_flax_rnn(tx, rev)
    gelu = nnx.SimpleCell(D, H, rngs=nnx.Rngs(0), activation_fn=jax.nn.gelu)
    with pytest.raises(ValueError, match="tanh and relu"):
        admm_jax.adapt_flax_rnn(tx, gelu)
    relu = FlaxModel(nnx.Rngs(0), activation_fn=jax.nn.relu)
    with pytest.raises(ValueError, match="activation='relu'"):
        admm_jax.adapt_flax_rnn(tx, relu.rnn)
    ok = admm_jax.adapt_flax_rnn(admm_jax.admmirnn(activation="relu"), relu.rnn)
    x, y = batch()
    fit(relu, ok, (x, y), iterations=1, batch_size=N)
    # fit checks the model against the optimizer (no module passed to the adapter)
    with pytest.raises(ValueError, match="activation"):
        fit(relu, admm_jax.adapt_flax_rnn(tx), (x, y), iterations=1, batch_size=N)
    with pytest.raises(ValueError, match="activation='tanh', but the model has "
                                         "activation='relu'"):
        fit(ElmanRNN(D, H, C, rngs=nnx.Rngs(0), activation="relu"), tx, (x, y), iterations=1,
            batch_size=N)
    with pytest.raises(ValueError, match="many_to_many"):
        fit(ElmanRNN(D, H, C, rngs=nnx.Rngs(0), many_to_many=True), tx,
            (x, np.zeros((N, T), np.int32)), iterations=1, batch_size=N)


def test_a_flax_rnn_with_rngs_is_a_model_error():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.rnn = nnx.RNN(nnx.SimpleCell(D, H, rngs=rngs))
            self.head = nnx.Linear(H, C, rngs=rngs)

        def __call__(self, x):
            return self.head(self.rnn(x)[:, -1])

    x, y = batch()
    with pytest.raises(ValueError, match="^model: M holds RNG state"):
        fit(M(nnx.Rngs(0)), optax.adam(1e-3), (x, y), iterations=1, batch_size=4)
