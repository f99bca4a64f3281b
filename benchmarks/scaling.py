"""Strong scaling of one sharded ADMMiRNN iteration and one data-parallel RBD step.

Row-MNIST shapes (T=28, D=28, C=10; Elman RNN, H=128 by default), a fixed global batch split
over 1, 2, 4, 8 devices of a one-axis mesh. For each device count it prints the median time
of one jitted call and what the compiled program communicates (collectives counted in its
HLO, bytes per device per call), for:

* ``admm``: one full-batch ADMMiRNN iteration, samples and multipliers sharded (GSPMD); the
  four Gram matrices travel in one all-reduce;
* ``rbd``: one random-bases step in ``jax.shard_map``: local BPTT gradient, projection on the
  device's own basis, all-gather of ``dim`` coordinates per device, every device rebuilding
  every worker's step;
* ``sgd``: the usual data-parallel baseline: local gradient, all-reduce of all ``D``
  gradient entries, SGD step.

On a CPU-only machine the devices are host devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set here before jax is imported): they
share the machine's cores, so times show the overhead of partitioning, not a speed-up. With
GPUs (``--platform gpu``, default when one is present) the available GPUs are used.

    nice -n 10 python benchmarks/scaling.py            # ~3-4 minutes on 2 cores
    python benchmarks/scaling.py --smoke --out /tmp/s.json   # 2 devices, tiny: seconds

Writes ``results/scaling_<platform>.{json,md}`` (or ``--out``'s path), the command in ``meta``.
"""

from __future__ import annotations

import argparse
import os
import pathlib

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
T, D, C = 28, 28, 10


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--platform", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--host-devices", type=int, default=8,
                    help="host devices to force on CPU (XLA_FLAGS)")
    ap.add_argument("--devices", default="1,2,4,8", help="device counts to time")
    ap.add_argument("--n", type=int, default=1024, help="global batch (samples)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--dim", type=int, default=250, help="RBD subspace dimension")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rbd-distributions", default="hadamard,rademacher",
                    help="RBD bases to time (hadamard: the default, O(D log D) per basis; "
                         "rademacher: i.i.d. bit-packed signs, O(dim D))")
    ap.add_argument("--skip-admm", action="store_true", help="time only RBD and SGD")
    ap.add_argument("--out", default=None,
                    help="JSON path (default results/scaling_<platform>.json)")
    ap.add_argument("--smoke", action="store_true",
                    help="2 devices, N=8, H=4, dim 4, the default basis, one repeat, random "
                         "inputs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.devices, args.n, args.hidden, args.dim, args.repeats = "2", 8, 4, 4, 1
        args.rbd_distributions = "hadamard"
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.platform != "gpu" and "xla_force_host_platform_device_count" not in os.environ.get(
            "XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.host_devices}")
    import jax
    import numpy as np
    import optax
    from _harness import (
        command,
        load_task,
        markdown_table,
        median_ms,
        round_robin,
        stopwatch,
        write_results,
    )
    from flax import nnx
    from jax.sharding import PartitionSpec as P

    import admm_jax
    from admm_jax.distributed import (
        collective_stats,
        data_mesh,
        replicate,
        shard_admm_state,
        shard_batch,
    )
    from admm_jax.models.elman import elman_apply

    platform = args.platform
    if platform == "auto":
        platform = "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
    devices = jax.devices(platform)
    counts = [k for k in map(int, args.devices.split(",")) if k <= len(devices)]
    n, h = args.n, args.hidden
    try:
        if args.smoke:
            raise RuntimeError("--smoke")
        x, y = load_task("row-mnist", train_subset=n).train
        x, y, source = np.asarray(x, np.float32), np.asarray(y, np.int32), "row-MNIST"
    except Exception as e:  # noqa: BLE001 - timing does not need the real digits
        print(f"row-MNIST not available ({e}); random inputs")
        rng = np.random.default_rng(0)
        x, y = rng.random((n, T, D), np.float32), rng.integers(0, C, n).astype(np.int32)
        source = "random"
    params = nnx.state(admm_jax.ElmanRNN(D, h, C, rngs=nnx.Rngs(0)), nnx.Param)
    n_params = sum(v.size for v in jax.tree.leaves(params))

    def loss(p, xb, yb):
        q = {k: p[k][...] for k in ("U", "W", "b", "V", "c")}
        return optax.softmax_cross_entropy_with_integer_labels(elman_apply(q, xb), yb).mean()

    def timed(f, *a):
        """Median seconds of one call of ``f(*a)`` (the harness's timer, one warm-up call)."""
        return median_ms(round_robin({"f": lambda: jax.block_until_ready(f(*a))},
                                     args.repeats)["f"]) / 1e3

    rows = []
    elapsed = stopwatch()
    for k in counts:
        if n % k:
            continue
        mesh = data_mesh(devices[:k])
        xs, ys = shard_batch((x, y), mesh)
        ps = replicate(params, mesh)

        timings = []
        if not args.skip_admm:
            tx = admm_jax.admmirnn()
            st = shard_admm_state(tx.init(params), mesh)
            admm_step = jax.jit(lambda p, s, xb, yb, tx=tx: tx.update(None, s, p, inputs=xb,
                                                                      targets=yb))
            admm_c = admm_step.lower(ps, st, xs, ys).compile()
            timings.append(("admm", timed(admm_step, ps, st, xs, ys), admm_c))

        def data_parallel(local, state, mesh=mesh, ps=ps, xs=xs, ys=ys):
            """(compiled step, median seconds) of ``local`` on batch shards, state replicated."""
            step = jax.jit(jax.shard_map(local, mesh=mesh,
                                         in_specs=(P(), P(), P("data"), P("data")),
                                         out_specs=(P(), P())))
            state = replicate(state, mesh)
            return step.lower(ps, state, xs, ys).compile(), timed(step, ps, state, xs, ys)

        for dist in args.rbd_distributions.split(","):
            rbd = admm_jax.random_bases(1.0, args.dim, seed=0, distribution=dist,
                                        axis_name="data", axis_size=k)

            def rbd_local(p, s, xb, yb, rbd=rbd):
                g = jax.grad(loss)(jax.lax.pcast(p, "data", to="varying"), xb, yb)
                u, s = rbd.update(g, s, p)
                return optax.apply_updates(p, u), s

            rbd_c, t_rbd = data_parallel(rbd_local, rbd.init(params))
            timings.append((f"rbd:{dist}", t_rbd, rbd_c))

        sgd = optax.sgd(0.1)

        def sgd_local(p, s, xb, yb, sgd=sgd, k=k):
            g = jax.grad(loss)(p, xb, yb)  # replicated p: the transpose all-reduces g
            g = jax.tree.map(lambda leaf, k=k: leaf / k, g)
            u, s = sgd.update(g, s)
            return optax.apply_updates(p, u), s

        sgd_c, t_sgd = data_parallel(sgd_local, sgd.init(params))
        timings.append(("sgd", t_sgd, sgd_c))

        for name, t, c in timings:
            stats = collective_stats(c)
            rows.append({"method": name, "devices": k, "seconds": t, "collectives": stats,
                         "bytes": sum(v["bytes"] for v in stats.values()),
                         "ops": sum(v["count"] for v in stats.values())})
        print(f"{k} device(s) done ({elapsed():.0f}s)", flush=True)

    print(f"\nstrong scaling on {platform} ({len(devices)} devices: {devices[0].device_kind}), "
          f"{source}, N={n}, H={h}, D_params={n_params}, RBD dim={args.dim}")
    base = {r["method"]: r["seconds"] for r in rows if r["devices"] == counts[0]}
    for r in rows:
        r["ms"], r["speed_up"] = r["seconds"] * 1e3, base[r["method"]] / r["seconds"]
    table = markdown_table(rows, {"method": "method", "devices": "devices", "ms": "ms/call",
                                  "speed_up": "speed-up", "ops": "collectives",
                                  "bytes": "bytes/device"})
    print(f"RBD sends dim x devices = {args.dim} x k floats per step; a gradient all-reduce "
          f"D = {n_params} floats ({4 * n_params:,d} bytes)")
    out = {"platform": platform, "device_kind": devices[0].device_kind,
           "n_devices_available": len(devices), "source": source, "n": n, "hidden": h,
           "dim": args.dim, "n_params": n_params, "repeats": args.repeats, "rows": rows,
           "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "seconds": elapsed()}
    path = pathlib.Path(args.out or RESULTS / f"scaling_{platform}.json")
    write_results(path.parent, path.stem, out, command(__file__, argv), table=table)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
