"""What the non-finite rule costs: seconds per training step with and without
``admm_jax.reject_nonfinite``, for the gradient optimizers of the registry.

    python benchmarks/nonfinite_overhead.py            # row-MNIST-sized: D=28, H=128, T=28, B=128
    python benchmarks/nonfinite_overhead.py --smoke    # tiny, seconds (the test runs this)

The step is the one ``admm_jax.train.fit`` runs (``make_train_step``: forward, backward, update,
its own finite flag; jitted, ahead-of-time compiled, weights and state donated), on random
inputs of row-MNIST's shape. For each optimizer the raw optax transformation and the same one
wrapped in ``reject_nonfinite`` are timed round-robin in one process (one call of each per
round, --rounds rounds after a warm-up), so both see the same machine load; the reported
figure is the ratio of the medians, per optimizer.

The guard's physical floor: one ``isfinite`` reduction and one select over the updates and the
new state, i.e. about ``2 (1 + k) P`` floats read and ``(1 + k) P`` written for ``P``
parameters and ``k`` parameter-sized state arrays (Adam: k = 2), against the step's
``~6 N T H (D + H)`` FLOPs of forward and backward.

Writes benchmarks/results/nonfinite_overhead.json and .png.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import admm_jax
from admm_jax import ElmanRNN
from admm_jax.train import losses, make_train_step

OPTIMIZERS = {"sgd": (optax.sgd, 0.1, 0), "adam": (optax.adam, 1e-3, 2),
              "rmsprop": (optax.rmsprop, 1e-3, 1), "novograd": (admm_jax.novograd, 0.01, 1)}


def compiled_step(tx, model, x, y):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    step = make_train_step(graphdef, rest, tx, losses.cross_entropy, losses.accuracy,
                           use_gradients=True, step_key=False)
    params = jax.tree.map(jnp.copy, params)
    state = tx.init(params)
    args = (params, state, x, y, jnp.arange(len(x)), {}, jax.random.key(0),
            jnp.asarray(0, jnp.int32))
    return jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile(), args


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few rounds")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    D, H, T, B = (4, 8, 5, 16) if args.smoke else (28, 128, 28, 128)
    rounds = 5 if args.smoke else args.rounds
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((B, T, D), np.float32))
    y = jnp.asarray(rng.integers(0, 10, B).astype(np.int32))
    model = ElmanRNN(D, H, 10, rngs=nnx.Rngs(0))
    P = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    runs = {}
    for name, (factory, lr, _) in OPTIMIZERS.items():
        for label, tx in (("raw", optax.with_extra_args_support(factory(lr))),
                          ("guarded", admm_jax.reject_nonfinite(factory(lr)))):
            runs[(name, label)] = compiled_step(tx, model, x, y)
    times = {k: [] for k in runs}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        state = {k: list(a) for k, (_, a) in runs.items()}
        for r in range(rounds + 1):
            for k, (fn, _) in runs.items():
                a = state[k]
                t = time.perf_counter()
                a[0], a[1], m, ok = fn(*a)
                jax.block_until_ready((a[0], ok))
                if r:  # round 0 is the warm-up
                    times[k].append(time.perf_counter() - t)
    rows = []
    for name, (_, _, k) in OPTIMIZERS.items():
        raw, guarded = (statistics.median(times[(name, lab)]) for lab in ("raw", "guarded"))
        rows.append({"optimizer": name, "raw_ms": 1e3 * raw, "guarded_ms": 1e3 * guarded,
                     "ratio": guarded / raw, "guard_floats_read": 2 * (1 + k) * P,
                     "guard_floats_written": (1 + k) * P})
    flops = 6 * B * T * H * (D + H)
    result = {"command": "python benchmarks/nonfinite_overhead.py" + (" --smoke" if args.smoke
                                                                      else ""),
              "sizes": {"D": D, "H": H, "T": T, "B": B, "params": int(P)},
              "rounds": rounds, "step_flops_fwd_bwd": flops, "rows": rows}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "nonfinite_overhead" + ("_smoke" if args.smoke else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    names = [r["optimizer"] for r in rows]
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, [r["raw_ms"] for r in rows], 0.4, label="optax transformation")
    ax.bar(xs + 0.2, [r["guarded_ms"] for r in rows], 0.4, label="reject_nonfinite(...)")
    ax.set_xticks(xs, names)
    ax.set_ylabel("ms per training step (median)")
    ax.set_title(f"fit's step, D={D} H={H} T={T} B={B}, {rounds} rounds round-robin")
    ax.legend()
    fig.savefig(out / f"{stem}.png", dpi=100)
    plt.close(fig)
    print("| optimizer | raw ms | guarded ms | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['optimizer']} | {r['raw_ms']:.3f} | {r['guarded_ms']:.3f} | "
              f"{r['ratio']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
