"""Step cost of admm_kfac against an Adam step, side by side in one process.

Every method's jitted step (params and state donated) runs on the same row-MNIST batches,
round-robin: ``--rounds`` rounds of ``--steps`` steps each per method, so load on the machine
hits all alike; the per-step time of each round is divided by Adam's in the same round, and
the median ratio is reported (with the spread over rounds). ``admm_kfac``'s rounds are
multiples of its ``refresh_every``, so its eigendecompositions are included at their real
rate. FLOPs per step are XLA's own count (``compiled.cost_analysis()``) and the analytic
count of the docstring.

    python benchmarks/kfac_step_cost.py --data-dir ../shared/data [--model lstm] [--smoke]

Writes ``benchmarks/results/kfac_step_cost_<model>.json`` and a PNG.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import admm_jax
from admm_jax import data

RESULTS = pathlib.Path(__file__).parent / "results"


def analytic_flops(n, t, d, h, c, z):
    """Multiply-adds x 2 of one step: BPTT gradient (forward, backward, weight gradient) and,
    for admm_kfac, the factor statistics and the four-product solve."""
    p = d + h + 1
    fwd = 2 * n * t * (d + h) * z + 2 * n * h * c
    bwd = 2 * n * t * h * z + 2 * n * t * p * z + 2 * n * (h + 1) * c  # adjoints + dW
    adam = fwd + bwd
    stats = 2 * n * t * p * p + 2 * n * t * z * z + 2 * n * (h + 1) ** 2 + 2 * n * c * c
    solve = 2 * (2 * p * p * z + 2 * p * z * z) + 2 * (2 * (h + 1) ** 2 * c + 2 * (h + 1) * c * c)
    return {"adam": adam, "admm_kfac": adam + stats + solve}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", choices=("elman", "lstm"), default="elman")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--smoke", action="store_true", help="hidden 16, 2 rounds of 10 steps")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.hidden, args.rounds, args.steps = 16, 2, 10
    x, y = data.mnist("train", data_dir=args.data_dir)
    x = x.reshape(-1, 28, 28).astype(np.float32)[: args.batch_size * 8]
    y = y[: args.batch_size * 8]
    batches = [(jnp.asarray(x[i:i + args.batch_size]), jnp.asarray(y[i:i + args.batch_size]))
               for i in range(0, len(x), args.batch_size)]
    cls = admm_jax.LSTM if args.model == "lstm" else admm_jax.ElmanRNN
    fn = admm_jax.lstm_apply if args.model == "lstm" else admm_jax.elman_apply
    net = cls(28, args.hidden, 10, rngs=nnx.Rngs(0))
    params0 = nnx.state(net, nnx.Param)
    kfac_refresh = 10
    x0 = batches[0][0]
    methods = {
        "adam": optax.adam(1e-3),
        "muon": optax.contrib.muon(0.02, adam_learning_rate=2e-3),
        "admm_preconditioned": admm_jax.admm_preconditioned(net, x0),
        "admm_kfac": admm_jax.admm_kfac(net, x0, refresh_every=kfac_refresh),
        "admm_kfac_sampled": admm_jax.admm_kfac(net, x0, refresh_every=kfac_refresh,
                                                fisher="sampled"),
    }
    flops, compiled = {}, {}
    for m, tx in methods.items():
        def step(p, s, xb, yb, tx=tx):
            if admm_jax.optimizers.needs_gradients(s):  # the state decides, as in fit
                def loss(p):
                    o = fn(nnx.to_pure_dict(p), xb)
                    return optax.softmax_cross_entropy_with_integer_labels(o, yb).mean()
                g = jax.grad(loss)(p)
                u, s = tx.update(g, s, p)
            else:
                u, s = tx.update(None, s, p, inputs=xb, targets=yb)
            return optax.apply_updates(p, u), s

        p = jax.tree.map(jnp.copy, params0)
        s = tx.init(p)
        c = jax.jit(step, donate_argnums=(0, 1)).lower(p, s, *batches[0]).compile()
        cost = c.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        flops[m] = float(cost.get("flops", float("nan"))) if cost else float("nan")
        compiled[m] = [c, p, s]
    per_round = {m: [] for m in methods}
    n_steps = max(kfac_refresh, args.steps // kfac_refresh * kfac_refresh)
    for r in range(args.rounds + 1):  # round 0 warms up
        for m in methods:
            c, p, s = compiled[m]
            t0 = time.perf_counter()
            for i in range(n_steps):
                p, s = c(p, s, *batches[i % len(batches)])
            jax.block_until_ready(p)
            compiled[m][1:] = [p, s]
            if r:
                per_round[m].append((time.perf_counter() - t0) / n_steps)
    ratios = {m: [a / b for a, b in zip(v, per_round["adam"], strict=True)]
              for m, v in per_round.items()}
    d, h = 28, args.hidden
    z = 4 * h if args.model == "lstm" else h
    ana = analytic_flops(args.batch_size, 28, d, h, 10, z)
    res = {
        "meta": {"model": args.model, "hidden": h, "batch_size": args.batch_size,
                 "rounds": args.rounds, "steps_per_round": n_steps,
                 "command": f"python benchmarks/kfac_step_cost.py --model {args.model}"
                            + (" --smoke" if args.smoke else ""),
                 "devices": str(jax.devices())},
        "ms_per_step_median": {m: 1e3 * float(np.median(v)) for m, v in per_round.items()},
        "ratio_vs_adam_median": {m: float(np.median(v)) for m, v in ratios.items()},
        "ratio_vs_adam_min_max": {m: [float(min(v)), float(max(v))] for m, v in ratios.items()},
        "ratio_vs_adam_per_round": ratios,
        "xla_flops": flops,
        "xla_flops_vs_adam": {m: flops[m] / flops["adam"] for m in flops},
        "analytic_flops": ana,
        "analytic_flops_ratio": ana["admm_kfac"] / ana["adam"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (f"kfac_step_cost_{args.model}" + ("_smoke" if args.smoke else ""))
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(ratios)
    ax.boxplot([ratios[m] for m in names], tick_labels=names)
    ax.axhline(1.5, color="r", ls=":", lw=1, label="bar: 1.5x Adam")
    ax.set_ylabel("step time / Adam's (same round)")
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_title(f"row-MNIST {args.model}-{h}, batch {args.batch_size}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=100)
    plt.close(fig)
    for m in methods:
        print(f"{m:22s} {res['ms_per_step_median'][m]:7.2f} ms/step  "
              f"{res['ratio_vs_adam_median'][m]:.2f}x Adam (rounds "
              f"{res['ratio_vs_adam_min_max'][m][0]:.2f}-{res['ratio_vs_adam_min_max'][m][1]:.2f})"
              f"  XLA flops {res['xla_flops_vs_adam'][m]:.2f}x")
    print(f"analytic FLOPs admm_kfac / adam: {res['analytic_flops_ratio']:.2f}; wrote {stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
