"""Every registered optimizer through ``update`` and ``fit`` for {float32, float64, bfloat16}
parameters x {float32, float64} inputs, in ONE process whose x64 mode is the argument (x64 must
be set before anything is traced, so tests/test_dtype_matrix.py runs this once per setting).

    python tests/dtype_matrix_checks.py on     # prints one JSON line: {cell: "ok" | error}
"""

from __future__ import annotations

import json
import sys
import warnings

import jax

jax.config.update("jax_enable_x64", sys.argv[1] == "on")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from admm_jax import ElmanRNN, optimizers  # noqa: E402
from admm_jax.train import fit  # noqa: E402

N, T, D, H, C = 8, 3, 2, 4, 2
PARAMS = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}
INPUTS = {"float32": np.float32, "float64": np.float64}


def build(name):
    kw = {}
    if name == "random_bases":
        kw["dim"] = 4
    return optimizers.get(name, **kw)


def cell(name, pdt, xdt):
    x = np.random.default_rng(0).normal(size=(N, T, D)).astype(INPUTS[xdt])
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    model = ElmanRNN(D, H, C, rngs=nnx.Rngs(0), dtype=PARAMS[pdt])
    params = nnx.state(model, nnx.Param)
    tx = build(name)
    state = tx.init(params)
    if optimizers.takes_batch(name):
        grads = None
    else:
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(
                nnx.merge(nnx.graphdef(model), p)(jnp.asarray(x)).astype(jnp.float32), y).mean()
        grads = jax.grad(loss)(params)
    updates, state = jax.jit(lambda g, s, p: tx.update(g, s, p, inputs=jnp.asarray(x),
                                                       targets=jnp.asarray(y)))(
        grads, state, params)
    new = optax.apply_updates(params, updates)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params), strict=True):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        assert bool(jnp.all(jnp.isfinite(a))), "non-finite weights after update"
    h = fit(model, build(name), (x, y), iterations=1, batch_size=N)
    assert len(h.steps["loss"]) == 1 and all(np.isfinite(h.steps["loss"]))
    want = jax.dtypes.canonicalize_dtype(PARAMS[pdt])  # float64 is float32 without x64
    for a in jax.tree.leaves(nnx.state(model, nnx.Param)):
        assert a.dtype == want, (a.dtype, want)


def main():
    out = {}
    warnings.simplefilter("ignore")
    for name in optimizers.names():
        for pdt in PARAMS:
            for xdt in INPUTS:
                key = f"{name}/{pdt}/{xdt}"
                try:
                    cell(name, pdt, xdt)
                    out[key] = "ok"
                except Exception as e:  # noqa: BLE001 - reported per cell
                    first = str(e).splitlines()[0][:300] if str(e) else ""
                    out[key] = f"{type(e).__name__}: {first}"
    print(json.dumps({"x64": jax.config.jax_enable_x64, "cells": out}))


if __name__ == "__main__":
    main()
