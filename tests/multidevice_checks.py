"""Checks that need 8 host devices: run as a script (XLA_FLAGS must be set before jax is
imported), print one JSON line of measurements; tests/test_distributed.py asserts on them.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_checks.py admm

``admm`` also runs the K-FAC check (one subprocess, one JAX start-up for both).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import admm_jax  # noqa: E402
from admm_jax.admm.streaming import HostDuals  # noqa: E402
from admm_jax.distributed import (  # noqa: E402
    collectives,
    data_mesh,
    replicate,
    shard_admm_state,
    shard_batch,
)

N, T, D, H, C = 32, 6, 3, 8, 2


def rel(a, b):
    """Largest over leaves of |a - b| / |a| (Frobenius norms)."""
    return max(float(jnp.linalg.norm(x - y) / jnp.linalg.norm(x))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def problem(activation="tanh", loss="cross_entropy", tokens=False):
    model = admm_jax.ElmanRNN(D, H, C, rngs=nnx.Rngs(0), dtype=jnp.float64,
                              activation=activation)
    params = nnx.state(model, nnx.Param)
    key = jax.random.key(1)
    if tokens:
        x = jax.random.randint(key, (N, T), 0, D)
        y = (x[:, -1] % C).astype(jnp.int32)
    else:
        x = jax.random.normal(key, (N, T, D), jnp.float64)
        y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
    if loss == "mse":
        y = jnp.stack([x[:, :, 0].sum(1), x[:, :, 1].mean(1)], -1)
    return params, x, y


def run_steps(tx, params, x, y, iterations, mesh=None, place_state=shard_admm_state):
    """``iterations`` jitted batch steps of ``tx`` (``grads=None``); with a mesh, the batch
    sharded, the parameters replicated and the state placed by ``place_state(state, mesh)``."""
    state = tx.init(params)
    if mesh is not None:
        params, state = replicate(params, mesh), place_state(state, mesh)
        x, y = shard_batch((x, y), mesh)

    @jax.jit
    def step(params, state, x, y):
        updates, state = tx.update(None, state, params, inputs=x, targets=y)
        return optax.apply_updates(params, updates), state

    for _ in range(iterations):
        params, state = step(params, state, x, y)
    return params, state, step.lower(params, state, x, y).compile()


def admm_checks():
    mesh = data_mesh()
    out = {"devices": len(jax.devices())}
    for name, kw in (("exact", dict(activation="relu", loss="mse")), ("default", {})):
        params, x, y = problem(**kw)
        tx = admm_jax.admmirnn(sweep="backward", num_samples=N, seq_len=T, **kw)
        p1, s1, _ = run_steps(tx, params, x, y, 3)
        p8, s8, compiled = run_steps(tx, params, x, y, 3, mesh)
        rev = jnp.arange(N)[::-1]  # the same problem, samples in reverse order, one device
        pr, _, _ = run_steps(tx, params, x[rev], y[rev], 3)
        out[name] = {
            "param_rel": rel(p1, p8), "dual_rel": rel(s1.duals, s8.duals),
            "reorder_param_rel": rel(p1, pr),
            "moved": rel(p1, params),
            "dual_shards": [len(lam.sharding.device_set) for lam in s8.duals],
            "dual_shard_rows": [lam.addressable_shards[0].data.shape[0] for lam in s8.duals],
            "collectives": [c._asdict() for c in collectives(compiled)],
        }
    # three sweeps in one call: one Gram all-reduce per iteration
    params, x, y = problem()
    tx3 = admm_jax.admmirnn(sweep="backward", num_samples=N, seq_len=T, sweeps=3)
    _, _, compiled3 = run_steps(tx3, params, x, y, 1, mesh)
    out["sweeps3_collectives"] = [c._asdict() for c in collectives(compiled3)]
    # token inputs (segment sums for the input Gram)
    params, x, y = problem(tokens=True)
    tx = admm_jax.admmirnn(sweep="backward", num_samples=N, seq_len=T)
    p1, _, _ = run_steps(tx, params, x, y, 1)
    p8, _, ctok = run_steps(tx, params, x, y, 1, mesh)
    out["tokens"] = {"param_rel": rel(p1, p8),
                     "collectives": [c._asdict() for c in collectives(ctok)]}
    # mini-batches with host multipliers, batches sharded, vs device multipliers + indices
    kw = dict(activation="relu", loss="mse")
    params, x, y = problem(**kw)
    batch = 16
    order = np.random.default_rng(0).permutation(N)
    batches = [order[i:i + batch] for i in range(0, N, batch)] * 2  # two epochs
    tx_dev = admm_jax.admmirnn(sweep="backward", num_samples=N, seq_len=T, **kw)
    tx_host = admm_jax.admmirnn(sweep="backward", num_samples=batch, seq_len=T, **kw)

    def make_step(tx):
        @jax.jit
        def step(params, state, x, y, indices=None):
            updates, state = tx.update(None, state, params, inputs=x, targets=y,
                                       indices=indices)
            return optax.apply_updates(params, updates), state
        return step

    step_dev, step_host = make_step(tx_dev), make_step(tx_host)
    pd, sd = params, tx_dev.init(params)
    ph, sh = replicate(params, mesh), shard_admm_state(tx_host.init(params), mesh)
    store = HostDuals.like(params, num_samples=N, seq_len=T)
    sample_sharding = jax.sharding.NamedSharding(mesh, P("data"))
    for idx in batches:
        pd, sd = step_dev(pd, sd, x[idx], y[idx], jnp.asarray(idx))
        sh = store.load(sh, idx, sample_sharding)
        xb, yb = shard_batch((np.asarray(x)[idx], np.asarray(y)[idx]), mesh)
        ph, sh = step_host(ph, sh, xb, yb)
        store.save(sh, idx)
    out["host_duals"] = {"param_rel": rel(pd, ph),
                         "dual_rel": rel(sd.duals, tuple(map(jnp.asarray, (store.lam1, store.lam2,
                                                                           store.lam3)))),
                         "moved": rel(pd, params)}
    return out


def kfac_checks():
    """admm_kfac on a 2-layer GRU over token embeddings, float32: 3 steps (inverse refreshes
    at steps 0 and 2) with the batch sharded over the devices and the parameters replicated,
    against the same steps on one device."""
    mesh = data_mesh()
    vocab = 10
    model = admm_jax.StackedRNN("gru", vocab, H, C, layers=2, embed=4, rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.key(1), (N, T), 0, vocab, jnp.int32)
    y = (x[:, -1] % C).astype(jnp.int32)
    tx = admm_jax.admm_kfac(model, x, 0.3, refresh_every=2)
    params = nnx.state(model, nnx.Param)

    def kfac_state(state):
        return next(s for s in jax.tree.leaves(
            state, is_leaf=lambda s: isinstance(s, admm_jax.KFACState))
            if isinstance(s, admm_jax.KFACState))

    p1, s1, _ = run_steps(tx, params, x, y, 3)
    p8, s8, compiled = run_steps(tx, params, x, y, 3, mesh, place_state=replicate)
    k1, k8 = kfac_state(s1), kfac_state(s8)
    return {"devices": len(jax.devices()), "dtype": str(jax.tree.leaves(p8)[0].dtype),
            "count": int(k8.count), "param_rel": rel(p1, p8),
            "moved": float(optax.global_norm(jax.tree.map(jnp.subtract, p1, params))
                           / optax.global_norm(params)),
            "factor_rel": rel((k1.a, k1.s), (k8.a, k8.s)),
            "inverse_rel": rel((k1.a_inv, k1.s_inv), (k8.a_inv, k8.s_inv)),
            "loss_rel": abs(float(k1.loss - k8.loss)) / abs(float(k1.loss)),
            "replicated": all(len(v.sharding.device_set) == 8 and v.sharding.is_fully_replicated
                              for v in jax.tree.leaves(p8)),
            "collectives": [c._asdict() for c in collectives(compiled)]}


def rbd_checks(distribution="hadamard"):
    mesh = data_mesh()
    workers = len(jax.devices())
    k = jax.random.split(jax.random.key(1), 4)
    params = {"W": jax.random.normal(k[0], (8, 5)), "b": jax.random.normal(k[1], (8,)),
              "V": jax.random.normal(k[2], (3, 8))}
    x = jax.random.normal(k[3], (8 * workers, 5))
    lr, dim, steps = 0.1, 6, 3

    def loss(p, x):
        return jnp.mean((jnp.tanh(x @ p["W"].T + p["b"]) @ p["V"].T - 1.0) ** 2)

    common = dict(seed=3, compartments="leaf", block_size=4, distribution=distribution)
    tx = admm_jax.random_bases(lr, dim, axis_name="data", axis_size=workers, **common)

    def local_step(p, s, xb):
        # the LOCAL gradient: without pcast, grad w.r.t. replicated p would be psum-ed
        g = jax.grad(loss)(jax.lax.pcast(p, "data", to="varying"), xb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(), P("data")),
                                 out_specs=(P(), P())))
    p, s = params, tx.init(params)
    xs = shard_batch(x, mesh)
    for _ in range(steps):
        p, s = step(p, s, xs)
    compiled = step.lower(p, s, xs).compile()
    # every device's own copy of the parameters, bit for bit
    copies = [[np.asarray(sh.data) for sh in leaf.addressable_shards]
              for leaf in jax.tree.leaves(p)]
    identical = all(all(np.array_equal(c[0], ci) for ci in c[1:]) for c in copies)

    # single-device simulation: worker w projects the gradient of its shard on its own basis
    plain = admm_jax.scale_by_random_bases(dim, **common)
    q, ps = params, plain.init(params)
    shards = np.split(np.asarray(x), workers)
    plain_update, grad = jax.jit(plain.update), jax.jit(jax.grad(loss))
    for _ in range(steps):
        ghats, coords = [], []
        for w in range(workers):
            ghat, st = plain_update(grad(q, shards[w]), ps, worker=w)
            ghats.append(ghat)
            coords.append(st.coordinates)
        ps = st  # count advanced once per step
        q = jax.tree.map(lambda a, *g: a - lr * sum(g) / workers, q, *ghats)
    sim_coords = [np.stack([c[i] for c in coords]) for i in range(len(coords[0]))]
    state_coords = s[0].coordinates
    d_total = sum(v.size for v in jax.tree.leaves(params))
    return {"devices": workers, "identical_on_devices": bool(identical),
            "n_copies": len(copies[0]), "param_rel": rel(q, p), "moved": rel(q, params),
            "coords_rel": max(float(np.linalg.norm(a - np.asarray(b)) / np.linalg.norm(a))
                              for a, b in zip(sim_coords, state_coords, strict=True)),
            "coord_shapes": [list(c.shape) for c in state_coords],
            "collectives": [c._asdict() for c in collectives(compiled)],
            "dim_total": dim * len(jax.tree.leaves(params)), "D": d_total}


if __name__ == "__main__":
    checks = {"admm": lambda: {**admm_checks(), "kfac": kfac_checks()}, "kfac": kfac_checks,
              "rbd": rbd_checks,
              "rbd_rademacher": lambda: rbd_checks("rademacher")}
    print(json.dumps(checks[sys.argv[1]]()))
