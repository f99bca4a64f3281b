"""Conformance of every optimizer the package ships with the optax / nnx contract.

Each case is a :class:`Case`: a factory for the transformation plus, optionally, its own
parameters, model and extra ``update`` kwargs. To add an optimizer, append to ``CASES``.
ADMMiRNN is one: it ignores the gradient and takes its batch as ``inputs=`` / ``targets=``.

``optax.adam`` is a reference case: it shows the checks themselves pass for a known-good
optimizer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import admm_jax
from admm_jax import ElmanRNN, elman_apply

IN, HIDDEN, OUT, N, T = 4, 8, 3, 5, 4


@functools.cache
def elman_params(dtype: Any) -> dict[str, jax.Array]:
    """A small ElmanRNN's parameters in ``dtype``."""
    return ElmanRNN(IN, HIDDEN, OUT, rngs=nnx.Rngs(0), dtype=dtype).params_dict()


def elman_model(dtype: Any) -> nnx.Module:
    return ElmanRNN(IN, HIDDEN, OUT, rngs=nnx.Rngs(0), dtype=dtype)


def elman_loss(params: Any, dtype: Any) -> jax.Array:
    x = jax.random.normal(jax.random.key(1), (N, T, IN), dtype)
    y = jnp.arange(N) % OUT
    logits = elman_apply(params, x).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@dataclasses.dataclass(frozen=True)
class Case:
    """One optimizer under test.

    name: test id; make: dtype -> transformation; params: dtype -> params pytree;
    model: dtype -> nnx.Module holding those params as ``nnx.Param`` (for nnx.Optimizer);
    extra_args: dtype -> extra kwargs that ``update`` needs (e.g. ``inputs=``, ``targets=``);
    loss: (params, dtype) -> scalar whose gradient is fed to ``update``.
    """

    name: str
    make: Callable[[Any], optax.GradientTransformationExtraArgs]
    params: Callable[[Any], Any] = elman_params
    model: Callable[[Any], nnx.Module] = elman_model
    extra_args: Callable[[Any], dict[str, Any]] = lambda dtype: {}
    loss: Callable[[Any, Any], jax.Array] = elman_loss


def elman_batch(dtype: Any) -> dict[str, jax.Array]:
    """The batch ADMMiRNN trains on (the same one ``elman_loss`` uses)."""
    return {"inputs": jax.random.normal(jax.random.key(1), (N, T, IN), dtype),
            "targets": jnp.arange(N) % OUT}


def gru_model(dtype: Any) -> nnx.Module:
    """A user's Flax model: nnx.Embed, two GRU layers, a Linear head (K-FAC's general case)."""
    m = admm_jax.StackedRNN("gru", 7, HIDDEN, OUT, layers=2, embed=5, rngs=nnx.Rngs(0))
    return m if dtype == jnp.float32 else _cast(m, dtype)


def _cast(m: nnx.Module, dtype: Any) -> nnx.Module:
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)
    return nnx.merge(graphdef, jax.tree.map(lambda v: v.astype(dtype), params), rest)


def gru_params(dtype: Any) -> Any:
    return nnx.state(gru_model(dtype), nnx.Param)


def gru_batch(dtype: Any) -> dict[str, jax.Array]:
    return {"inputs": jax.random.randint(jax.random.key(1), (N, T), 0, 7),
            "targets": jnp.arange(N) % OUT}


def gru_loss(params: Any, dtype: Any) -> jax.Array:
    graphdef, _, rest = nnx.split(gru_model(dtype), nnx.Param, ...)
    logits = nnx.merge(graphdef, params, rest)(gru_batch(dtype)["inputs"])
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                           jnp.arange(N) % OUT).mean()


def kfac_case(name: str, factory, model, params, batch, loss, **kw) -> Case:
    return Case(name, lambda dtype: factory(model(dtype), batch(dtype)["inputs"], 0.1, **kw),
                params=params, model=model, extra_args=batch, loss=loss)


CASES: list[Case] = [
    Case("optax.adam (reference)", lambda dtype: optax.adam(1e-2)),
    Case("admmirnn", lambda dtype: admm_jax.admmirnn(),
         extra_args=elman_batch),
    kfac_case("admm_preconditioned", admm_jax.admm_preconditioned, elman_model,
              lambda d: nnx.state(elman_model(d), nnx.Param), elman_batch,
              lambda p, d: elman_loss({k: p[k][...] for k in p}, d)),
    kfac_case("admm_kfac", admm_jax.admm_kfac, elman_model,
              lambda d: nnx.state(elman_model(d), nnx.Param), elman_batch,
              lambda p, d: elman_loss({k: p[k][...] for k in p}, d), refresh_every=2),
    kfac_case("admm_kfac (embed, 2 GRU layers)", admm_jax.admm_kfac, gru_model, gru_params,
              gru_batch, gru_loss),
    Case("novograd", lambda dtype: admm_jax.novograd(1e-2)),
    Case("novograd+wd+grouped", lambda dtype: admm_jax.novograd(
        optax.cosine_decay_schedule(1e-2, 10), weight_decay=optax.constant_schedule(1e-3),
        layers=lambda p: {k: ("rec" if k in "UWb" else "out") for k in p})),
    Case("random_bases", lambda dtype: admm_jax.random_bases(0.5, 16, seed=0)),
    Case("random_bases+leaf+rademacher", lambda dtype: admm_jax.random_bases(
        0.5, 8, seed=1, compartments="leaf", distribution="rademacher", block_size=3,
        rng="hash")),
]

DTYPES = [jnp.float32, jnp.bfloat16]
ids = [c.name for c in CASES]


def grads_of(case: Case, params: Any, dtype: Any) -> Any:
    return jax.jit(jax.grad(case.loss), static_argnums=1)(params, dtype)


def dtypes(tree: Any) -> list[Any]:
    return [x.dtype for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_jit_without_recompilation_and_dtypes_preserved(case, dtype):
    tx = case.make(dtype)
    params = case.params(dtype)
    extra = case.extra_args(dtype)
    init = jax.jit(tx.init)
    state = init(params)
    state_dtypes = dtypes(state)

    @jax.jit
    def step(params, state, extra):
        updates, state = tx.update(grads_of(case, params, dtype), state, params, **extra)
        return optax.apply_updates(params, updates), updates, state

    first = params
    for _ in range(4):
        params, updates, state = step(params, state, extra)
        assert dtypes(updates) == dtypes(params) == [dtype] * len(jax.tree.leaves(params))
        assert dtypes(state) == state_dtypes
        assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert step._cache_size() == 1, "update recompiled between steps"
    assert init._cache_size() == 1
    moved = max(float(jnp.max(jnp.abs((a - b).astype(jnp.float32))))
                for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(first), strict=True))
    assert moved > 0.0
    assert all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
               for x in jax.tree.leaves(params))


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_inside_optax_chain_and_unknown_kwargs(case):
    dtype = jnp.float32
    params, extra = case.params(dtype), case.extra_args(dtype)
    g = grads_of(case, params, dtype)
    alone = case.make(dtype)
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


@pytest.mark.parametrize("case", CASES, ids=ids)
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
