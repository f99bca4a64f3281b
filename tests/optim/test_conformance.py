"""Conformance of every optimizer the package ships with the optax / nnx contract.

The cases are ``conformance_cases.CASES``: a factory for the transformation plus, optionally,
its own parameters, model and extra ``update`` kwargs. ADMMiRNN is one: it ignores the
gradient and takes its batch as ``inputs=`` / ``targets=``.

``optax.adam`` is a reference case: it shows the checks themselves pass for a known-good
optimizer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compiles import counted_jit
from conformance_cases import CASES, Case
from flax import nnx

DTYPES = [jnp.float32, jnp.bfloat16]
ids = [c.name for c in CASES]
OPTAX_OWN = ("sgd", "momentum", "rmsprop", "adagrad", "adam")  # optax's code; -m slow runs them
SUITE = [pytest.param(c, marks=pytest.mark.slow) if c.name in OPTAX_OWN else c for c in CASES]


def grads_of(case: Case, params: Any, dtype: Any) -> Any:
    return jax.jit(jax.grad(case.loss), static_argnums=1)(params, dtype)


def dtypes(tree: Any) -> list[Any]:
    return [x.dtype for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", SUITE, ids=ids)
def test_jit_without_recompilation_and_dtypes_preserved(case, dtype):
    tx = case.make(dtype)
    params = case.params(dtype)
    extra = case.extra_args(dtype)
    init = counted_jit(tx.init)
    state = init(params)
    state_dtypes = dtypes(state)

    @counted_jit
    def step(params, state, extra):
        updates, state = tx.update(grads_of(case, params, dtype), state, params, **extra)
        return optax.apply_updates(params, updates), updates, state

    first = params
    for _ in range(4):
        params, updates, state = step(params, state, extra)
        assert dtypes(updates) == dtypes(params) == [dtype] * len(jax.tree.leaves(params))
        assert dtypes(state) == state_dtypes
        assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert step.traces == 1, "update recompiled between steps"
    assert init.traces == 1
    moved = max(float(jnp.max(jnp.abs((a - b).astype(jnp.float32))))
                for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(first), strict=True))
    assert moved > 0.0
    assert all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
               for x in jax.tree.leaves(params))


@pytest.mark.parametrize("case", SUITE, ids=ids)
def test_inside_optax_chain_and_unknown_kwargs(case):
    dtype = jnp.float32
    params, extra = case.params(dtype), case.extra_args(dtype)
    g = grads_of(case, params, dtype)
    alone = case.make(dtype)
    kind = type(alone.init(params))
    if getattr(kind, "takes_batch", False) and not getattr(kind, "computes_gradients", False):
        # it reads no gradients: first in a chain it is fine, behind a transformation refused
        behind = optax.chain(optax.identity(), case.make(dtype))
        with pytest.raises(ValueError, match="before it in optax.chain"):
            behind.update(g, behind.init(params), params, **extra)
        chained = optax.chain(case.make(dtype), optax.scale(2.0))
    else:
        chained = optax.chain(optax.identity(), case.make(dtype), optax.scale(2.0))
    s1, s2 = alone.init(params), chained.init(params)

    @jax.jit
    def both(s1, s2):
        u1, s1 = alone.update(g, s1, params, **extra)
        u2, s2 = chained.update(g, s2, params, unknown_kwarg=1.0, **extra)
        u3, _ = alone.update(g, s1, params, another_unknown=jnp.ones(3), **extra)
        return u1, u2, u3, s1, s2

    for _ in range(2):
        u1, u2, u3, s1, s2 = both(s1, s2)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
            np.testing.assert_allclose(2.0 * a, b, rtol=1e-6, atol=1e-7)
        assert jax.tree.structure(u3) == jax.tree.structure(params)


@pytest.mark.parametrize("case", SUITE, ids=ids)
def test_with_nnx_optimizer(case):
    dtype = jnp.float32
    model = case.model(dtype)
    extra = case.extra_args(dtype)
    tx = case.make(dtype)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    # The functional path on the same parameters, for comparison.
    params = nnx.state(model, nnx.Param)
    state = tx.init(params)

    @nnx.jit
    def train_step(model, optimizer, extra):
        grads = nnx.grad(lambda m: case.loss(nnx.state(m, nnx.Param), dtype))(model)
        optimizer.update(model, grads, **extra)

    @jax.jit
    def functional_step(params, state, extra):
        g = jax.grad(case.loss)(params, dtype)
        updates, state = tx.update(g, state, params, **extra)
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        params, state = functional_step(params, state, extra)
        train_step(model, optimizer, extra)
    got = jax.tree.leaves(nnx.state(model, nnx.Param))
    for a, b in zip(got, jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
