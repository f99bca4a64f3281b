"""RBD step cost against an SGD step, side by side in one process (FC-MNIST, the paper's net).

784-128-10 ReLU MLP (D = 101,770), batch 32, d = 250, each step one jitted ``lax.scan`` of
``--steps`` training steps (batch gathered from the training images, gradient, update). The
configurations run round-robin, ``--rounds`` times, so they share the machine's load; the
ratio to SGD is taken per round and its median reported (absolute times on a shared machine
are noisy, ratios measured side by side much less so).

Physical floor of an i.i.d. RBD step: the two ``d x D`` projections, ``2 * 2 * d * D`` =
102 MFLOP, against ~20 MFLOP for the SGD step (forward + backward at batch 32), plus
generating ``d * D`` = 25.4 M basis entries (bit-packed Rademacher: ``d * D / 32`` = 0.8 M
hash words, then one shift, mask and convert per entry).

    python benchmarks/random_bases_speed.py              # ~2 min on 2 CPU cores
    python benchmarks/random_bases_speed.py --smoke --out /tmp/s.json  # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from random_bases import init_mlp, loss_fn  # noqa: E402

from admm_jax import random_bases  # noqa: E402

CONFIGS = {
    # name: keyword arguments of random_bases (None: plain SGD)
    "sgd": None,
    "rbd defaults": {},
    "rbd rademacher/hash": {"distribution": "rademacher", "rng": "hash"},
    "rbd normal/hash (inverse CDF)": {"distribution": "normal", "rng": "hash"},
    "rbd uniform/hash": {"distribution": "uniform", "rng": "hash"},
    "rbd hadamard (SRHT)": {"distribution": "hadamard"},
    "rbd normal/threefry (jax.random)": {"distribution": "normal", "rng": "threefry"},
}
SLOW = ("rbd normal/threefry (jax.random)",)


def make_steps(tx, steps: int):
    """A jitted function running ``steps`` training steps as one ``lax.scan``."""
    def run(params, state, x_all, y_all, idx):
        def body(carry, i):
            p, s = carry
            g = jax.grad(loss_fn)(p, x_all[i], y_all[i])
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(body, (params, state), idx.reshape(steps, -1))[0]

    return jax.jit(run, donate_argnums=(0, 1))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"))
    ap.add_argument("--dim", type=int, default=250)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50, help="steps per timed call")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block-size", type=int, default=None,
                    help="basis vectors per block (default: the library's)")
    ap.add_argument("--skip-slow", action="store_true", help="leave out threefry normals")
    ap.add_argument("--smoke", action="store_true",
                    help="synthetic data, 2 steps, 1 round: checks that it runs")
    ap.add_argument("--out", default="benchmarks/results/random_bases_speed.json")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the PNG from an existing --out JSON")
    args = ap.parse_args(argv)
    if args.replot:
        result = json.loads(pathlib.Path(args.out).read_text())
        plot(result, pathlib.Path(args.out).with_suffix(".png"))
        return result
    if args.smoke:
        args.steps, args.rounds, args.skip_slow = 2, 1, True

    if args.smoke or args.data_dir is None:
        rng = np.random.default_rng(0)
        x_all = jnp.asarray(rng.random((1024, 28, 28), np.float32))
        y_all = jnp.asarray(rng.integers(0, 10, 1024), jnp.int32)
    else:
        from admm_jax.data import mnist

        x, y = mnist("train", layout="rows", data_dir=args.data_dir)
        x_all, y_all = jnp.asarray(x), jnp.asarray(y)
    params0 = init_mlp(jax.random.key(0))
    n_params = sum(x.size for x in jax.tree.leaves(params0))
    extra = {} if args.block_size is None else {"block_size": args.block_size}
    configs = {k: v for k, v in CONFIGS.items() if not (args.skip_slow and k in SLOW)}
    runs = {}
    for name, kw in configs.items():
        tx = optax.sgd(0.125) if kw is None else random_bases(1.0, args.dim, seed=0,
                                                                 **kw, **extra)
        fn = make_steps(tx, args.steps)
        p0 = jax.tree.map(jnp.copy, params0)
        runs[name] = {"fn": fn, "params": p0, "state": tx.init(p0), "times": []}
    rng = np.random.default_rng(1)

    def call(r):
        idx = jnp.asarray(rng.integers(0, x_all.shape[0], args.steps * args.batch))
        t0 = time.perf_counter()
        p, s = r["fn"](r["params"], r["state"], x_all, y_all, idx)
        jax.block_until_ready(p)
        r["params"], r["state"] = p, s
        return time.perf_counter() - t0

    for r in runs.values():  # compile and warm up
        call(r)
    for _ in range(args.rounds):
        for r in runs.values():
            r["times"].append(call(r) / args.steps)
    sgd = runs["sgd"]["times"]
    result = {
        "command": "python benchmarks/random_bases_speed.py " + " ".join(argv or sys.argv[1:]),
        "setting": {"model": "784-128-10 relu MLP", "params_D": int(n_params), "dim": args.dim,
                    "batch": args.batch, "steps_per_call": args.steps, "rounds": args.rounds,
                    "block_size": args.block_size or "library default",
                    "data": "synthetic" if args.smoke or args.data_dir is None else "MNIST"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "jax": jax.__version__, "backend": jax.default_backend()},
        "floor": {"projection_mflop": 4 * args.dim * n_params / 1e6,
                  "basis_entries": args.dim * n_params,
                  "hash_words_packed_rademacher": -(-n_params // 32) * args.dim},
        "seconds_per_step_median": {k: statistics.median(r["times"]) for k, r in runs.items()},
        "ratio_to_sgd_median": {
            k: statistics.median(t / s for t, s in zip(r["times"], sgd, strict=True))
            for k, r in runs.items()},
        "ratio_to_sgd_range": {
            k: [min(t / s for t, s in zip(r["times"], sgd, strict=True)),
                max(t / s for t, s in zip(r["times"], sgd, strict=True))]
            for k, r in runs.items()},
    }
    print(f"FC-MNIST D={n_params}, d={args.dim}, batch {args.batch}: {args.rounds} rounds of "
          f"{args.steps} steps, round-robin")
    print(f"{'configuration':36}{'ms/step':>10}{'x SGD (median)':>16}{'range':>16}")
    for k in runs:
        lo, hi = result["ratio_to_sgd_range"][k]
        print(f"{k:36}{1e3 * result['seconds_per_step_median'][k]:10.3f}"
              f"{result['ratio_to_sgd_median'][k]:16.1f}{f'{lo:.1f}-{hi:.1f}':>16}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and its .png")
    return result


def plot(result: dict, path: pathlib.Path) -> None:
    """Horizontal bars: median ratio to SGD per configuration (log scale), with the range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["ratio_to_sgd_median"])
    med = np.array([result["ratio_to_sgd_median"][k] for k in names])
    lo = np.array([result["ratio_to_sgd_range"][k][0] for k in names])
    hi = np.array([result["ratio_to_sgd_range"][k][1] for k in names])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    y = np.arange(len(names))[::-1]
    ax.barh(y, med, color="C0", alpha=0.7)
    ax.errorbar(med, y, xerr=[med - lo, hi - med], fmt="none", color="k", lw=1)
    for v, ls in ((8, "--"), (25, ":")):
        ax.axvline(v, color="C3", ls=ls, lw=1, label=f"{v}x SGD")
    ax.set_yticks(y, names)
    ax.set_xscale("log")
    ax.set_xlabel("step time / SGD step time (median over rounds, bar: range)")
    ax.set_title(f"FC-MNIST D={result['setting']['params_D']}, d={result['setting']['dim']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
