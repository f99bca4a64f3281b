"""Seconds per ADMMiRNN iteration against seconds per BPTT gradient step, as T grows.

    python benchmarks/admm_speed.py --data-dir ../shared/data

Same Elman RNN (H hidden units), same batch of MNIST samples, re-chunked into T steps of
784 / T pixels (T in 28, 112, 392, 784). Both steps are the ones `admm_jax.train.fit` runs
(`make_train_step`, jitted, ahead-of-time compiled, weights and optimizer state donated):
ADMMiRNN (`admm_jax.admmirnn`, one iteration = one `update`) and Adam on the BPTT gradient.
Each is timed as the median of --repeats calls after one warm-up call, alternating the two
methods so both see the same machine load.

Also: the achieved FLOP rate of an ADMM iteration as a fraction of this machine's measured
large-matmul rate (an N x N float32 matmul). FLOPs are counted from the step's jaxpr: matrix
products (2 m n k), Cholesky factorisations (n^3 / 3) and triangular solves (m n^2), scan bodies
times their length; elementwise work is not counted, so the fraction is a lower bound.

Prints a table and writes benchmarks/results/admm_speed.json and admm_speed.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's admm_jax


def count_flops(jaxpr) -> float:
    """Matrix FLOPs of a (closed) jaxpr: dot_general, cholesky, triangular_solve; scans x length."""
    import numpy as np

    total = 0.0
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
            a, b = (v.aval.shape for v in eqn.invars)
            contract = np.prod([a[i] for i in lc]) if lc else 1
            batch = np.prod([a[i] for i in lb]) if lb else 1
            m = np.prod([a[i] for i in range(len(a)) if i not in lc and i not in lb])
            rb = [i for i in range(len(b)) if i not in rc and i not in eqn.params[
                "dimension_numbers"][1][1]]
            n = np.prod([b[i] for i in rb]) if rb else 1
            total += 2.0 * batch * m * n * contract
        elif name == "cholesky":
            s = eqn.invars[0].aval.shape
            total += np.prod(s[:-2]) * s[-1] ** 3 / 3
        elif name == "triangular_solve":
            a, b = (v.aval.shape for v in eqn.invars)
            total += np.prod(b) * a[-1]
        mult = eqn.params.get("length", 1) if name == "scan" else 1
        for p in eqn.params.values():
            subs = p if isinstance(p, tuple | list) else [p]
            for s in subs:
                if hasattr(s, "eqns") or hasattr(getattr(s, "jaxpr", None), "eqns"):
                    sub = count_flops(s)
                    total += mult * sub if name != "cond" else sub / max(1, len(subs))
    return float(total)


def matmul_rate(n: int, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"),
                   help="MNIST folder (default $ADMM_JAX_DATA)")
    p.add_argument("--seq-lens", default="28,112,392,784",
                   help="comma-separated T, divisors of 784 (default 28,112,392,784)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step (default 64)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per method and T")
    p.add_argument("--matmul-n", type=int, default=2048, help="size of the reference matmul")
    p.add_argument("--out", default="benchmarks/results/admm_speed.json")
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    from flax import nnx
    from tqdm import tqdm

    from admm_jax import ElmanRNN, data, optimizers
    from admm_jax.tasks import rechunk_pixels
    from admm_jax.train import make_train_step
    from admm_jax.train.losses import accuracy, cross_entropy

    x_all, y_all = data.mnist(f"train[:{args.batch_size}]", layout="pixels",
                              data_dir=args.data_dir, download=False)
    peak = matmul_rate(args.matmul_n, args.repeats)
    rows = []
    seq_lens = [int(s) for s in args.seq_lens.split(",")]
    for T in tqdm(seq_lens, desc="T"):
        x = jnp.asarray(rechunk_pixels(x_all, T))
        y = jnp.asarray(y_all)
        idx = jnp.arange(args.batch_size, dtype=jnp.int32)
        model = ElmanRNN(x.shape[2], args.hidden, 10, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        runs = {}
        for name in ("admmirnn", "bptt"):
            tx = (optimizers.get("admmirnn")
                  if name == "admmirnn" else optimizers.get("adam"))
            state = tx.init(params)
            step = make_train_step(graphdef, rest, tx, cross_entropy, accuracy)  # state decides
            ex = (params, state, x, y, idx, {}, jax.random.key(0), jnp.asarray(0, jnp.int32))
            flops = count_flops(jax.make_jaxpr(step)(*ex))
            t = time.perf_counter()
            compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*ex).compile()
            compile_s = time.perf_counter() - t
            p_, s_ = jax.tree_util.tree_map(jnp.copy, params), state
            p_, s_, m, _ = compiled(p_, s_, *ex[2:])  # warm-up (the 4th output: finite flag)
            jax.block_until_ready(m)
            runs[name] = {"compiled": compiled, "p": p_, "s": s_, "times": [], "flops": flops,
                          "compile_seconds": compile_s}
        for _ in range(args.repeats):  # alternate the methods: same machine load for both
            for r in runs.values():
                t = time.perf_counter()
                r["p"], r["s"], m, _ = r["compiled"](r["p"], r["s"], *ex[2:])
                jax.block_until_ready(m)
                r["times"].append(time.perf_counter() - t)
        row = {"T": T, "pixels_per_step": 784 // T}
        for name, r in runs.items():
            sec = statistics.median(r["times"])
            row[f"{name}_seconds"] = sec
            row[f"{name}_flops"] = r["flops"]
            row[f"{name}_flop_rate"] = r["flops"] / sec
            row[f"{name}_fraction_of_matmul"] = r["flops"] / sec / peak
            row[f"{name}_compile_seconds"] = r["compile_seconds"]
            row[f"{name}_times"] = r["times"]
        row["admm_over_bptt"] = row["admmirnn_seconds"] / row["bptt_seconds"]
        rows.append(row)

    base = rows[0]
    for r in rows:
        r["admm_growth"] = r["admmirnn_seconds"] / base["admmirnn_seconds"]
        r["bptt_growth"] = r["bptt_seconds"] / base["bptt_seconds"]
    head = (f"{'T':>4} {'px/step':>7} {'ADMM s/it':>10} {'BPTT s/step':>11} {'ADMM/BPTT':>9} "
            f"{'ADMM xT0':>8} {'BPTT xT0':>8} {'ADMM GFLOP/s':>12} {'of matmul':>9}")
    print(f"\nElman RNN H={args.hidden}, batch {args.batch_size} MNIST samples; median of "
          f"{args.repeats}; {jax.devices()[0].platform} ({os.cpu_count()} cores)")
    print(f"reference matmul {args.matmul_n}^2 float32: {peak / 1e9:.1f} GFLOP/s\n")
    print(head)
    for r in rows:
        print(f"{r['T']:>4} {r['pixels_per_step']:>7} {r['admmirnn_seconds']:>10.4f} "
              f"{r['bptt_seconds']:>11.4f} {r['admm_over_bptt']:>9.1f} {r['admm_growth']:>8.1f} "
              f"{r['bptt_growth']:>8.1f} {r['admmirnn_flop_rate'] / 1e9:>12.2f} "
              f"{r['admmirnn_fraction_of_matmul']:>9.1%}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": vars(args), "matmul_flop_rate": peak, "platform":
               jax.devices()[0].platform, "cpu_count": os.cpu_count(), "rows": rows,
               "command": "python benchmarks/admm_speed.py " + " ".join(sys.argv[1:])}
    out.write_text(json.dumps(payload, indent=1, allow_nan=False))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ts = [r["T"] for r in rows]
    ax[0].loglog(ts, [r["admmirnn_seconds"] for r in rows], "o-", label="ADMMiRNN iteration")
    ax[0].loglog(ts, [r["bptt_seconds"] for r in rows], "s-", label="BPTT step (Adam)")
    ax[0].set(xlabel="T (steps per sequence)", ylabel="seconds", title="time per iteration")
    ax[0].legend()
    ax[1].semilogx(ts, [r["admmirnn_fraction_of_matmul"] for r in rows], "o-", label="ADMMiRNN")
    ax[1].semilogx(ts, [r["bptt_fraction_of_matmul"] for r in rows], "s-", label="BPTT")
    ax[1].set(xlabel="T", ylabel="achieved / matmul FLOP rate", title="matrix FLOP rate")
    ax[1].legend()
    for a in ax:
        a.grid(alpha=0.3)
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=110)
    print(f"\nwrote {out} and {png}")
    if not all(math.isfinite(r["admm_over_bptt"]) for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
