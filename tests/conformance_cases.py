"""The optimizers under test, as cases: each a factory for the transformation plus its own
parameters, model, batch and loss. ``tests/optim/test_conformance.py`` checks each against the
optax / nnx contract; ``tests/optim/test_wrapper_matrix.py`` crosses the cases that build a
registered optimizer (``Case.registry``) with the optax wrappers a user applies. To add an
optimizer, append to ``CASES``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import admm_jax
from admm_jax import ElmanRNN, elman_apply, optimizers

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
    loss: (params, dtype) -> scalar whose gradient is fed to ``update``; registry: the
    registered optimizer (``admm_jax.optimizers.names()``) this case builds with its plain
    defaults on the package's ``ElmanRNN``, the row of the wrapper matrix (``None``: a
    variant, conformance tests only).
    """

    name: str
    make: Callable[[Any], optax.GradientTransformationExtraArgs]
    params: Callable[[Any], Any] = elman_params
    model: Callable[[Any], nnx.Module] = elman_model
    extra_args: Callable[[Any], dict[str, Any]] = lambda dtype: {}
    loss: Callable[[Any, Any], jax.Array] = elman_loss
    registry: str | None = None


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


def kfac_case(name: str, factory, model, params, batch, loss, registry=None, **kw) -> Case:
    return Case(name, lambda dtype: factory(model(dtype), batch(dtype)["inputs"], 0.1, **kw),
                params=params, model=model, extra_args=batch, loss=loss, registry=registry)


def registered(name: str) -> Case:
    """A case built by ``optimizers.get(name)`` (its default learning rate, the non-finite
    rule of the registry)."""
    return Case(name, lambda dtype: optimizers.get(name), registry=name)


CASES: list[Case] = [
    Case("optax.adam (reference)", lambda dtype: optax.adam(1e-2)),
    Case("admmirnn", lambda dtype: admm_jax.admmirnn(),
         extra_args=elman_batch, registry="admmirnn"),
    kfac_case("admm_preconditioned", admm_jax.admm_preconditioned, elman_model,
              lambda d: nnx.state(elman_model(d), nnx.Param), elman_batch,
              lambda p, d: elman_loss({k: p[k][...] for k in p}, d),
              registry="admm_preconditioned"),
    kfac_case("admm_kfac", admm_jax.admm_kfac, elman_model,
              lambda d: nnx.state(elman_model(d), nnx.Param), elman_batch,
              lambda p, d: elman_loss({k: p[k][...] for k in p}, d), registry="admm_kfac",
              refresh_every=2),
    kfac_case("admm_kfac (embed, 2 GRU layers)", admm_jax.admm_kfac, gru_model, gru_params,
              gru_batch, gru_loss),
    Case("novograd", lambda dtype: admm_jax.novograd(1e-2), registry="novograd"),
    Case("novograd+wd+grouped", lambda dtype: admm_jax.novograd(
        optax.cosine_decay_schedule(1e-2, 10), weight_decay=optax.constant_schedule(1e-3),
        layers=lambda p: {k: ("rec" if k in "UWb" else "out") for k in p})),
    Case("random_bases", lambda dtype: admm_jax.random_bases(0.5, 16, seed=0),
         registry="random_bases"),
    Case("random_bases+leaf+rademacher", lambda dtype: admm_jax.random_bases(
        0.5, 8, seed=1, compartments="leaf", distribution="rademacher", block_size=3,
        rng="hash")),
    *(registered(name) for name in ("sgd", "momentum", "adam", "rmsprop", "adagrad")),
]

