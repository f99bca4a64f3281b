"""admm_jax.layouts: every parameter layout (Elman, LSTM gates, Flax SimpleCell) and its inverse."""

from __future__ import annotations

import ast
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import admm_jax
from admm_jax import layouts

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
PACKAGE = pathlib.Path(admm_jax.__file__).parent


def assert_trees_identical(got, want):
    """Same tree type and structure, every leaf of the same dtype, shape and bits."""
    assert type(got) is type(want)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def rand(rng, dtype, *shape):
    return jnp.asarray(rng.normal(size=shape), dtype)


# ---------------------------------------------------------------------------------------------
# Elman


@settings(max_examples=12, deadline=None)
@given(d=st.integers(1, 6), h=st.integers(1, 7), c=st.integers(1, 4),
       dtype=st.sampled_from(DTYPES), nested=st.booleans())
def test_split_then_merge_is_the_identity(d, h, c, dtype, nested):
    rng = np.random.default_rng([d, h, c])
    p = {"U": rand(rng, dtype, h, d), "W": rand(rng, dtype, h, h), "b": rand(rng, dtype, h),
         "V": rand(rng, dtype, c, h), "c": rand(rng, dtype, c)}
    tree = {"rnn": {k: p[k] for k in "UWb"}, "head": {k: p[k] for k in "Vc"}} if nested else p
    named, treedef, names = layouts.split_elman(tree)
    assert sorted(names) == sorted(layouts.ELMAN_NAMES)
    for k in layouts.ELMAN_NAMES:
        assert named[k] is p[k]
    assert_trees_identical(layouts.merge_elman(named, treedef, names), tree)
    layouts.check_elman_shapes(named)


def test_split_merge_of_an_nnx_state_keeps_the_state():
    state = nnx.state(admm_jax.ElmanRNN(3, 5, 2, rngs=nnx.Rngs(0)), nnx.Param)
    named, treedef, names = layouts.split_elman(state)
    assert names == ["U", "V", "W", "b", "c"]  # nnx.State flattens in key order
    back = layouts.merge_elman(named, treedef, names)
    assert_trees_identical(back, state)
    model = admm_jax.ElmanRNN(3, 5, 2, rngs=nnx.Rngs(1))
    nnx.update(model, back)  # the merged tree is a valid nnx.State for the model
    np.testing.assert_array_equal(model.U[...], state["U"][...])


@pytest.mark.parametrize("tree,match", [
    ({"U": 1.0, "W": 1.0, "b": 1.0, "V": 1.0}, r"got leaves named \['U', 'V', 'W', 'b'\]"),
    ({k: 1.0 for k in "UWbVcx"}, "'x'"),
    ({"a": {k: 1.0 for k in "UWbVc"}, "b2": {"U": 1.0}}, "Elman parameters"),
])
def test_split_rejects_other_trees_naming_the_leaves(tree, match):
    with pytest.raises(ValueError, match=match):
        layouts.split_elman(tree)


def test_split_of_none_says_to_pass_the_parameters():
    with pytest.raises(ValueError, match=r"params: .*tx.update\(grads, state, params"):
        layouts.split_elman(None)


@pytest.mark.parametrize("bad,match", [
    ({"W": jnp.ones((4, 5))}, r"W should be \(4, 4\)"),
    ({"b": jnp.ones(3)}, r"b should be \(4,\)"),
    ({"V": jnp.ones((2, 3))}, r"V should be \(2, 4\)"),
    ({"U": jnp.ones(4)}, r"expected U \[H, D\] and V \[C, H\]"),
])
def test_check_elman_shapes_names_the_parameter(bad, match):
    p = {"U": jnp.ones((4, 3)), "W": jnp.ones((4, 4)), "b": jnp.ones(4), "V": jnp.ones((2, 4)),
         "c": jnp.ones(2)} | bad
    with pytest.raises(ValueError, match=match):
        layouts.check_elman_shapes(p)


# ---------------------------------------------------------------------------------------------
# LSTM gates


def test_gate_order_is_the_one_nnx_lstmcell_computes():
    """One step of flax's own nnx.LSTMCell equals the stacked map U x + W h + b split into
    gates i, f, g, o (the independent reference: flax's __call__, not admm_jax's scan)."""
    with jax.enable_x64(True):
        d, h, n = 3, 5, 4
        cell_module = nnx.LSTMCell(d, h, rngs=nnx.Rngs(0), param_dtype=jnp.float64,
                                   dtype=jnp.float64)
        cell = nnx.to_pure_dict(nnx.state(cell_module, nnx.Param))
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(n, d)))
        c0, h0 = jnp.asarray(rng.normal(size=(n, h))), jnp.asarray(rng.normal(size=(n, h)))
        (c1, h1), _ = cell_module((c0, h0), x)

        g = layouts.stack_lstm_gates(cell)
        z = x @ g["U"].T + h0 @ g["W"].T + g["b"]
        i, f, gg, o = (z[:, j * h:(j + 1) * h] for j in range(4))
        c_ref = jax.nn.sigmoid(f) * c0 + jax.nn.sigmoid(i) * jnp.tanh(gg)
        h_ref = jax.nn.sigmoid(o) * jnp.tanh(c_ref)
        np.testing.assert_allclose(c1, c_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(h1, h_ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=12, deadline=None)
@given(d=st.integers(1, 5), h=st.integers(1, 6), dtype=st.sampled_from(DTYPES))
def test_stack_then_unstack_is_the_identity(d, h, dtype):
    rng = np.random.default_rng([d, h])
    cell = {k: {"kernel": rand(rng, dtype, d, h)} for k in layouts.LSTM_INPUT_KERNELS}
    cell |= {k: {"kernel": rand(rng, dtype, h, h), "bias": rand(rng, dtype, h)}
             for k in layouts.LSTM_HIDDEN_KERNELS}
    gates = layouts.stack_lstm_gates(cell)
    assert {k: v.shape for k, v in gates.items()} == {"U": (4 * h, d), "W": (4 * h, h),
                                                      "b": (4 * h,)}
    assert all(v.dtype == dtype for v in gates.values())
    # gate j is rows j*h..(j+1)*h: the input kernel of the forget gate, transposed
    np.testing.assert_array_equal(np.asarray(gates["U"][h:2 * h], np.float32),
                                  np.asarray(cell["if_"]["kernel"].T, np.float32))


# ---------------------------------------------------------------------------------------------
# Flax SimpleCell, nnx and Linen


class NnxModel(nnx.Module):
    def __init__(self, d, h, c, *, rngs, residual=False):
        self.rnn = nnx.RNN(nnx.SimpleCell(d, h, rngs=rngs, residual=residual))
        self.head = nnx.Linear(h, c, rngs=rngs)


class LinenModel(nn.Module):
    hidden: int
    classes: int
    residual: bool = False

    @nn.compact
    def __call__(self, x):
        cell = nn.SimpleCell(self.hidden, residual=self.residual)
        return nn.Dense(self.classes)(nn.RNN(cell)(x)[:, -1])


def flax_params(flavour, d, h, c, dtype, residual=False):
    """Built in float32 (the orthogonal recurrent initialiser needs a QR), then cast."""
    if flavour == "nnx":
        p = nnx.state(NnxModel(d, h, c, rngs=nnx.Rngs(0), residual=residual), nnx.Param)
    else:
        p = LinenModel(h, c, residual=residual).init(jax.random.key(0),
                                                     jnp.zeros((1, 2, d)))["params"]
    return jax.tree.map(lambda v: v.astype(dtype), p)


@settings(max_examples=12, deadline=None)
@given(flavour=st.sampled_from(["nnx", "linen"]), d=st.integers(1, 5), h=st.integers(1, 6),
       c=st.integers(1, 4), dtype=st.sampled_from(DTYPES))
def test_flax_to_elman_to_flax_is_the_identity(flavour, d, h, c, dtype):
    p = flax_params(flavour, d, h, c, dtype)
    elman = layouts.elman_from_flax(p)
    assert {k: v.shape for k, v in elman.items()} == {"U": (h, d), "W": (h, h), "b": (h,),
                                                      "V": (c, h), "c": (c,)}
    assert all(v.dtype == dtype for v in elman.values())
    assert_trees_identical(layouts.elman_to_flax(elman, p), p)


@pytest.mark.parametrize("flavour", ["nnx", "linen"])
def test_flax_map_is_the_transpose_with_the_residual_on_the_diagonal(flavour):
    p = flax_params(flavour, 3, 4, 2, jnp.float32, residual=True)
    leaves = {"/".join(layouts.path_names(k)): v
              for k, v in jax.tree_util.tree_flatten_with_path(p)[0]}
    kernel_h = next(v for k, v in leaves.items() if k.endswith(("dense_h/kernel", "h/kernel")))
    elman = layouts.elman_from_flax(p, residual=True)
    np.testing.assert_array_equal(elman["W"], np.asarray(kernel_h).T + np.eye(4, dtype=np.float32))
    back = layouts.elman_to_flax(elman, p, residual=True)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=float(jnp.finfo(jnp.float32).eps))


def test_the_elman_names_lstm_kernels_and_flax_layers_are_flax_s():
    cell = nnx.to_pure_dict(nnx.state(nnx.LSTMCell(2, 3, rngs=nnx.Rngs(0))))
    assert set(cell) == set(layouts.LSTM_INPUT_KERNELS + layouts.LSTM_HIDDEN_KERNELS)
    simple = nnx.to_pure_dict(nnx.state(nnx.SimpleCell(2, 3, rngs=nnx.Rngs(0))))
    assert set(simple) == {layouts.FLAX_INPUT_LAYERS[0], layouts.FLAX_RECURRENT_LAYERS[0]}
    linen = nn.SimpleCell(3).init(jax.random.key(0), nn.SimpleCell(3).initialize_carry(
        jax.random.key(0), (1, 2)), jnp.zeros((1, 2)))["params"]
    assert set(linen) == {layouts.FLAX_INPUT_LAYERS[1], layouts.FLAX_RECURRENT_LAYERS[1]}
    model = admm_jax.ElmanRNN(2, 3, 1, rngs=nnx.Rngs(0))
    assert tuple(nnx.to_pure_dict(nnx.state(model, nnx.Param))) == tuple(
        sorted(layouts.ELMAN_NAMES))


# ---------------------------------------------------------------------------------------------
# One home: no module imports another module's private name


def _private_imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("admm_jax"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                private_module = alias.name.startswith("_") and (
                    PACKAGE / node.module.removeprefix("admm_jax").replace(".", "/").lstrip("/")
                    / f"{alias.name}.py").exists()
                if alias.name.startswith("_") and not private_module:
                    yield target


def test_no_module_imports_a_private_name_of_another():
    found = {str(p.relative_to(PACKAGE)): list(_private_imports(p))
             for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_private_import_scan_finds_one(tmp_path):
    """The scan above can fail: it sees a private name imported from another module (and
    lets a private module such as ``_validation`` through)."""
    probe = tmp_path / "probe.py"
    probe.write_text("from admm_jax.admm.admmirnn import _valid_indices\n"
                     "from admm_jax import _validation\n")
    assert list(_private_imports(probe)) == ["admm_jax.admm.admmirnn._valid_indices"]
