"""One of two JAX processes on the loopback address, forming one 2-device mesh (one CPU device
per process, gloo collectives). Each process feeds ONLY its own half of the samples to the
sharded run, computes the single-process reference on its own device from the whole data, and
prints one JSON line of measurements. tests/test_distributed_processes.py starts both:

    python tests/distributed_process_checks.py 0 PORT &
    python tests/distributed_process_checks.py 1 PORT
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"  # one device per process
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_enable_x64", True)

PROCESS_ID, PORT = int(sys.argv[1]), int(sys.argv[2])
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{PORT}", num_processes=2,
                           process_id=PROCESS_ID, initialization_timeout=60,
                           shutdown_timeout_seconds=30)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import admm_jax  # noqa: E402
from admm_jax.distributed import data_mesh, replicate, shard_admm_state, shard_batch  # noqa: E402

N, T, D, H, C = 16, 5, 3, 6, 2
MINE = slice(PROCESS_ID * N // 2, (PROCESS_ID + 1) * N // 2)  # this process's samples


def rel(a, b):
    """Largest over leaves of |a - b| / |a|."""
    return max(float(np.linalg.norm(np.asarray(x) - np.asarray(y)) / np.linalg.norm(x))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def local(tree):
    """This process's part of every array: the whole of a replicated one, its rows of a
    sample-sharded one."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_shards[0].data), tree)


def admm_check(activation, loss):
    model = admm_jax.ElmanRNN(D, H, C, rngs=nnx.Rngs(0), dtype=jnp.float64,
                              activation=activation)
    params = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    rng = np.random.default_rng(1)  # the same data in both processes (for the reference)
    x = rng.normal(size=(N, T, D))
    y = ((x[:, :, 0].sum(1) > 0).astype(np.int32) if loss == "cross_entropy"
         else np.stack([x[:, :, 0].sum(1), x[:, :, 1].mean(1)], -1))
    tx = admm_jax.admmirnn(num_samples=N, seq_len=T, activation=activation, loss=loss,
                           sweep="backward")  # per-sample multipliers, sharded

    def step(p, s, xb, yb):
        u, s = tx.update(None, s, p, inputs=xb, targets=yb)
        return optax.apply_updates(p, u), s

    step = jax.jit(step)
    p1, s1 = params, tx.init(params)  # single process: the whole data on this device
    for _ in range(3):
        p1, s1 = step(p1, s1, x, y)
    mesh = data_mesh()
    xs, ys = shard_batch((x[MINE], y[MINE]), mesh)  # only this process's samples
    ps, ss = replicate(params, mesh), shard_admm_state(tx.init(params), mesh)
    for _ in range(3):
        ps, ss = step(ps, ss, xs, ys)
    duals = local(ss.duals)
    return {"param_rel": rel(p1, local(ps)),
            "dual_rel": rel(jax.tree.map(lambda a: np.asarray(a)[MINE], s1.duals), duals),
            "dual_rows": [int(d.shape[0]) for d in duals],
            "moved": rel(p1, params), "global_rows": int(xs.shape[0])}


def rbd_check():
    mesh = data_mesh()
    workers = mesh.shape["data"]
    rng = np.random.default_rng(2)
    params = {"W": rng.normal(size=(8, 5)), "b": rng.normal(size=8), "V": rng.normal(size=(3, 8))}
    x = rng.normal(size=(8 * workers, 5))
    lr, dim, steps = 0.1, 6, 3
    common = dict(seed=3, compartments="leaf", block_size=4)

    def loss(p, xb):
        return jnp.mean((jnp.tanh(xb @ p["W"].T + p["b"]) @ p["V"].T - 1.0) ** 2)

    tx = admm_jax.random_bases(lr, dim, axis_name="data", axis_size=workers, **common)

    def local_step(p, s, xb):
        g = jax.grad(loss)(jax.lax.pcast(p, "data", to="varying"), xb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(), P("data")),
                                 out_specs=(P(), P())))
    mine = np.split(x, workers)[PROCESS_ID]
    p, s = replicate(params, mesh), replicate(tx.init(params), mesh)
    xs = shard_batch(mine, mesh)  # only this process's samples
    for _ in range(steps):
        p, s = step(p, s, xs)
    # reference, one device: worker w projects the gradient of its shard on its own basis
    plain = admm_jax.scale_by_random_bases(dim, **common)
    q, qs = params, plain.init(params)
    shards = np.split(x, workers)
    upd, grad = jax.jit(plain.update, static_argnames="worker"), jax.jit(jax.grad(loss))
    for _ in range(steps):
        ghats = []
        for w in range(workers):
            ghat, st = upd(grad(q, shards[w]), qs, worker=w)
            ghats.append(ghat)
        qs = st
        q = jax.tree.map(lambda a, *g: a - lr * sum(g) / workers, q, *ghats)
    return {"param_rel": rel(q, local(p)), "moved": rel(q, params), "workers": workers}


out = {"process": jax.process_index(), "processes": jax.process_count(),
       "devices": len(jax.devices()), "local_devices": len(jax.local_devices()),
       "admm_exact": admm_check("relu", "mse"), "admm_default": admm_check("tanh", "cross_entropy"),
       "rbd": rbd_check()}
print(json.dumps(out), flush=True)
jax.distributed.shutdown()
