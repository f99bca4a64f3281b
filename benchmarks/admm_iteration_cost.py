"""Cost of one ADMMiRNN iteration against one Adam BPTT step, side by side in one process.

Row-MNIST sizes by default (T=28 rows of D=28 pixels, H=128, batch 128; issue 28's bar: an
iteration within 3x an Adam step). Every method runs the step :class:`admm_jax.train.Trainer`
runs (:func:`admm_jax.train.make_train_step`, jitted, ahead-of-time compiled, weights and state
donated; ADMMiRNN reports the batch loss itself, so the step makes no extra forward pass). The
calls alternate between the methods, ``--repeats`` rounds after ``--warmup`` rounds, so all see
the same machine load; the table gives the median and the minimum per method and their ratio to
Adam's. FLOPs are counted from each step's jaxpr as ``benchmarks/admm_speed.py`` counts them
(matrix products, Cholesky factorisations, triangular solves; scan bodies times their length;
elementwise work not counted).

Variants: ``adam`` (lr 1e-3, BPTT), ``admmirnn`` (the default: the exact output-space solve of
the coupled block), ``admmirnn_cg<k>`` (the coupled block by ``k`` conjugate-gradient
iterations) for ``k`` in ``--cg-steps``.

    python benchmarks/admm_iteration_cost.py --data-dir "$ADMM_JAX_DATA"   # ~1 min

Writes ``<out>/<tag>.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def count_flops(jaxpr) -> float:
    spec = importlib.util.spec_from_file_location(
        "admm_speed", pathlib.Path(__file__).resolve().parent / "admm_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.count_flops(jaxpr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"),
                    help="MNIST folder (default $ADMM_JAX_DATA)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--cg-steps", default="2,6",
                    help="comma-separated k of the admmirnn_cg<k> variants ('' for none)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--tag", default="admm_iteration_cost")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import admm_jax
    from admm_jax import data
    from admm_jax.train import make_train_step
    from admm_jax.train.losses import accuracy, cross_entropy

    b, h = args.batch_size, args.hidden
    x, y = data.mnist(f"train[:{b}]", layout="rows", data_dir=args.data_dir, download=False)
    x, y = jnp.asarray(x), jnp.asarray(y)
    idx = jnp.arange(b, dtype=jnp.int32)
    variants = {"adam": optax.adam(1e-3), "admmirnn": admm_jax.admmirnn()}
    for k in (int(s) for s in args.cg_steps.split(",") if s.strip()):
        variants[f"admmirnn_cg{k}"] = admm_jax.admmirnn(cg_steps=k)
    runs = {}
    for name, tx in variants.items():
        model = admm_jax.ElmanRNN(x.shape[2], h, 10, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        state = tx.init(params)
        step = make_train_step(graphdef, rest, tx, cross_entropy, accuracy,
                               method_loss=name != "adam")
        ex = (params, state, x, y, idx, {}, jax.random.key(0), jnp.asarray(0, jnp.int32))
        flops = count_flops(jax.make_jaxpr(step)(*ex))
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*ex).compile()
        runs[name] = {"compiled": compiled, "p": jax.tree_util.tree_map(jnp.copy, params),
                      "s": state, "flops": flops, "times": []}
    for i in range(args.warmup + args.repeats):  # alternate: the same load for every method
        for r in runs.values():
            t = time.perf_counter()
            r["p"], r["s"], m, _ = r["compiled"](r["p"], r["s"], *ex[2:])
            jax.block_until_ready(m)
            if i >= args.warmup:
                r["times"].append(time.perf_counter() - t)
    base_med = statistics.median(runs["adam"]["times"])
    base_min = min(runs["adam"]["times"])
    rows = []
    print(f"row-MNIST T={x.shape[1]} D={x.shape[2]} H={h} batch {b}; {args.repeats} alternating "
          f"calls; {jax.devices()[0].platform}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| method | median ms | min ms | x Adam (median) | x Adam (min) | GFLOP | x Adam FLOPs |")
    print("|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        med, mn = statistics.median(r["times"]), min(r["times"])
        row = {"method": name, "median_seconds": med, "min_seconds": mn,
               "median_over_adam": med / base_med, "min_over_adam": mn / base_min,
               "flops": r["flops"], "flops_over_adam": r["flops"] / runs["adam"]["flops"],
               "times": r["times"]}
        rows.append(row)
        print(f"| {name} | {1e3 * med:.2f} | {1e3 * mn:.2f} | {row['median_over_adam']:.2f} | "
              f"{row['min_over_adam']:.2f} | {r['flops'] / 1e9:.2f} | "
              f"{row['flops_over_adam']:.2f} |")
    out = {"args": {**vars(args), "out": str(args.out)}, "platform": jax.devices()[0].platform,
           "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows,
           "command": "python benchmarks/admm_iteration_cost.py " + " ".join(sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out / (args.tag + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
