"""Every registered optimizer through ``update`` and ``fit`` for {float32, float64, bfloat16}
parameters x {float32, float64} inputs, in ONE process whose x64 mode is the first argument
(x64 must be set before anything is traced, so tests/test_dtype_matrix.py runs this once per
setting). The second argument picks the cells: ``all`` (the full matrix) or ``pairs`` (the
cells of :func:`pairs`: every optimizer with every parameter dtype, both input dtypes and both
x64 modes, and every pair of dtype settings; a third of the matrix).

    python tests/dtype_matrix_checks.py on all   # prints one JSON line: {cell: "ok" | error}
"""

from __future__ import annotations

import json
import sys
import warnings

import jax

if __name__ == "__main__":  # before anything is traced; the test imports only the cell lists
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


def build(name, model, x):
    kw = {}
    if name == "random_bases":
        kw["dim"] = 4
    if optimizers.entry(name).takes_model:  # K-FAC: built for the model and an example batch
        kw.update(model=model, inputs=x[:1])
    return optimizers.get(name, **kw)


def cell(name, pdt, xdt):
    x = np.random.default_rng(0).normal(size=(N, T, D)).astype(INPUTS[xdt])
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    model = ElmanRNN(D, H, C, rngs=nnx.Rngs(0), dtype=PARAMS[pdt])
    params = nnx.state(model, nnx.Param)
    tx = build(name, model, x)
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
    h = fit(model, build(name, model, x), (x, y), iterations=1, batch_size=N)
    assert len(h.steps["loss"]) == 1 and all(np.isfinite(h.steps["loss"]))
    want = jax.dtypes.canonicalize_dtype(PARAMS[pdt])  # float64 is float32 without x64
    for a in jax.tree.leaves(nnx.state(model, nnx.Param)):
        assert a.dtype == want, (a.dtype, want)


def pairs() -> list[tuple[str, str, str, str]]:
    """``(optimizer, params, inputs, x64)`` cells, four per optimizer: each optimizer meets every
    parameter dtype (float64 with x64 on, its real path), both input dtypes and both x64 modes;
    alternating the pattern between optimizers covers every pair of (params, inputs, x64)
    values, float64 parameters with x64 off (where they become float32) included."""
    out = []
    for i, name in enumerate(optimizers.names()):
        odd = i % 2
        out += [(name, "float32", "float64" if odd else "float32", "off"),
                (name, "bfloat16", "float32" if odd else "float64", "on" if odd else "off"),
                (name, "float64", "float32" if odd else "float64", "on"),
                (name, "float32" if odd else "float64", "float64" if odd else "float32",
                 "on" if odd else "off")]
    return out


def cells(selection: str, x64: str) -> list[tuple[str, str, str]]:
    """The ``(optimizer, params, inputs)`` cells of ``selection`` run with x64 ``x64``."""
    if selection == "pairs":
        return [(n, p, x) for n, p, x, mode in pairs() if mode == x64]
    return [(n, p, x) for n in optimizers.names() for p in PARAMS for x in INPUTS]


def main():
    out = {}
    warnings.simplefilter("ignore")
    for name, pdt, xdt in cells(sys.argv[2] if len(sys.argv) > 2 else "all", sys.argv[1]):
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
