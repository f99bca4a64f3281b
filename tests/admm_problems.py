"""Small random ADMMiRNN problems for the tests in tests/admm (imported via pythonpath=tests)."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp

from admm_jax.admm.problem import ADMMConfig, Auxiliaries, Duals, Penalties, augmented_lagrangian
from admm_jax.models.elman import elman_trace

DEFAULT_CONFIG = ADMMConfig()

# the problem kinds every block is checked on
BLOCK_CONFIGS = {
    "m2o-ce": ADMMConfig(),
    "m2m-ce": ADMMConfig(many_to_many=True),
    "m2o-mse": ADMMConfig(loss="mse"),
    "m2m-mse-relu": ADMMConfig(many_to_many=True, loss="mse", activation="relu"),
    "decay": ADMMConfig(weight_decay=0.3, prox=0.5),
}


def lagrangian(params, aux, duals, rho, inputs, targets, cfg, **kw):
    """:func:`admm_jax.admm.problem.augmented_lagrangian`."""
    return augmented_lagrangian(params, aux, duals, rho, inputs, targets, cfg, **kw)


def newton_minimiser(fn, x):
    """Brute force for a block whose objective is quadratic: one exact Newton step on the
    dense Hessian that jax computes of the whole objective (no block-specific algebra)."""
    flat, unravel = jax.flatten_util.ravel_pytree(x)

    def f(v):
        return fn(unravel(v))

    g = jax.grad(f)(flat)
    hess = jax.hessian(f)(flat)
    return unravel(flat - jnp.linalg.solve(hess, g))


def make_problem(seed=0, n=6, t=5, d=4, h=7, c=3, *, cfg=DEFAULT_CONFIG, tokens=False,
                 rho=(2.0, 3.0, 1.5), perturb=0.3):
    """A random problem: params, auxiliaries near a forward pass, nonzero duals."""
    ks = jax.random.split(jax.random.key(seed), 12)
    params = {
        "U": jax.random.normal(ks[0], (h, d)) / jnp.sqrt(d),
        "W": jax.random.normal(ks[1], (h, h)) / jnp.sqrt(h),
        "b": 0.1 * jax.random.normal(ks[2], (h,)),
        "V": jax.random.normal(ks[3], (c, h)) / jnp.sqrt(h),
        "c": 0.1 * jax.random.normal(ks[4], (c,)),
    }
    if tokens:
        inputs = jax.random.randint(ks[5], (n, t), 0, d)
    else:
        inputs = jax.random.normal(ks[5], (n, t, d))
    steps = t if cfg.many_to_many else 1
    if cfg.loss == "cross_entropy":
        targets = jax.random.randint(ks[6], (n, t) if cfg.many_to_many else (n,), 0, c)
    else:
        targets = jax.random.normal(ks[6], (n, t, c) if cfg.many_to_many else (n, c))
    tr = elman_trace(params, inputs, activation=cfg.activation, many_to_many=cfg.many_to_many)
    aux = Auxiliaries(
        tr.a + perturb * jax.random.normal(ks[7], tr.a.shape),
        tr.h + perturb * jax.random.normal(ks[8], tr.h.shape),
        tr.o + perturb * jax.random.normal(ks[9], (n, steps, c)),
    )
    duals = Duals(
        0.5 * jax.random.normal(ks[10], tr.a.shape),
        0.5 * jax.random.normal(ks[11], tr.h.shape),
        0.5 * jax.random.normal(ks[2], (n, steps, c)),
    )
    return params, aux, duals, Penalties(*(jnp.asarray(r) for r in rho)), inputs, targets


def rel_norm(g, ref):
    """``|g| / max(|ref|, 1)`` over a pytree."""
    num = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g)))
    den = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(ref)))
    return float(num / jnp.maximum(den, 1.0))


# the weight-block methods' (admm_preconditioned, admm_kfac) problem kinds: (config, tokens)
WEIGHT_BLOCK_CASES = {
    "dense": (ADMMConfig(), False),
    "tokens": (ADMMConfig(), True),
    "many_to_many_mse": (ADMMConfig(many_to_many=True, loss="mse"), False),
}


def weight_block_problem(name, seed=0, **kw):
    """``(cfg, tokens, params, inputs, targets)`` of the ``WEIGHT_BLOCK_CASES`` kind ``name``."""
    cfg, tokens = WEIGHT_BLOCK_CASES[name]
    params, _, _, _, inputs, targets = make_problem(seed, cfg=cfg, tokens=tokens, **kw)
    return cfg, tokens, params, inputs, targets

