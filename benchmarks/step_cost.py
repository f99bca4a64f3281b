"""What a training step costs, one variant against another, timed round-robin in one process
(one call of each per round, after a warm-up round, so that all see the same machine load);
each figure is a ratio of medians. Random inputs of row-MNIST's shape (D=28, H=128, T=28,
B=128; ``--smoke``: tiny, seconds).

    python benchmarks/step_cost.py nonfinite   # fit's step with and without reject_nonfinite
    python benchmarks/step_cost.py trainer     # Trainer (fit's loop) against a bare loop
    python benchmarks/step_cost.py trainer --smoke

``nonfinite``: for the gradient optimizers of the registry, the raw optax transformation and
the same one wrapped in ``admm_jax.reject_nonfinite``, each in fit's compiled step (forward,
backward, update, finite flag; weights and state donated). The guard's floor: one
``isfinite`` reduction and one select over the updates and the new state, about
``2 (1 + k) P`` floats read and ``(1 + k) P`` written for ``P`` parameters and ``k``
parameter-sized state arrays (Adam: k = 2), against ``~6 N T H (D + H)`` FLOPs of forward and
backward. Writes ``results/nonfinite_overhead.{json,png,md}``.

``trainer``: ``admm_jax.train.Trainer`` (per step: the next batch from its ``BatchIterator``,
a host gather and a transfer, the compiled step, the metrics and finite flag read back, a
history row) against the same compiled executable called on batches already on the device
with one sync per round: the floor of a host loop. ``--steps`` steps per round, for Adam and
admm_kfac. Writes ``results/trainer_overhead.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _harness import (
    RESULTS,
    command,
    compiled_train_step,
    markdown_table,
    median_ms,
    median_ratio,
    round_robin,
    write_results,
)
from flax import nnx

import admm_jax
from admm_jax.train import Trainer

# name: (factory, learning rate, parameter-sized arrays in the state)
GRADIENT_OPTIMIZERS = {"sgd": (optax.sgd, 0.1, 0), "adam": (optax.adam, 1e-3, 2),
                       "rmsprop": (optax.rmsprop, 1e-3, 1),
                       "novograd": (admm_jax.novograd, 0.01, 1)}
TRAINER_METHODS = ("adam", "admm_kfac")


def sizes(smoke: bool) -> dict[str, int]:
    return dict(D=4, H=8, T=5, B=16) if smoke else dict(D=28, H=128, T=28, B=128)


def random_batch(n: int, s: dict[str, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, s["T"], s["D"]), np.float32),
            rng.integers(0, 10, n).astype(np.int32))


def nonfinite(args, s) -> tuple[dict, str, object]:
    x, y = (jnp.asarray(a) for a in random_batch(s["B"], s))
    model = admm_jax.ElmanRNN(s["D"], s["H"], 10, rngs=nnx.Rngs(0))
    params = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    runs = {}
    for name, (factory, lr, _) in GRADIENT_OPTIMIZERS.items():
        for label, tx in (("raw", optax.with_extra_args_support(factory(lr))),
                          ("guarded", admm_jax.reject_nonfinite(factory(lr)))):
            fn, a = compiled_train_step(tx, model, x, y)
            runs[(name, label)] = _stepper(fn, list(a))
    times = round_robin(runs, args.rounds)
    rows = [{"optimizer": name, "raw_ms": median_ms(times[(name, "raw")]),
             "guarded_ms": median_ms(times[(name, "guarded")]),
             "ratio": median_ratio(times, (name, "guarded"), (name, "raw")),
             "guard_floats_read": 2 * (1 + k) * params, "guard_floats_written": (1 + k) * params}
            for name, (_, _, k) in GRADIENT_OPTIMIZERS.items()]
    result = {"sizes": {**s, "params": int(params)}, "rounds": args.rounds,
              "step_flops_fwd_bwd": 6 * s["B"] * s["T"] * s["H"] * (s["D"] + s["H"]),
              "rows": rows}

    def plot(ax):
        xs = np.arange(len(rows))
        ax.bar(xs - 0.2, [r["raw_ms"] for r in rows], 0.4, label="optax transformation")
        ax.bar(xs + 0.2, [r["guarded_ms"] for r in rows], 0.4, label="reject_nonfinite(...)")
        ax.set_xticks(xs, [r["optimizer"] for r in rows])
        ax.set_ylabel("ms per training step (median)")
        ax.set_title(f"fit's step, D={s['D']} H={s['H']} T={s['T']} B={s['B']}, "
                     f"{args.rounds} rounds round-robin")
        ax.legend()

    table = markdown_table(rows, {"optimizer": "optimizer", "raw_ms": "raw ms",
                                  "guarded_ms": "guarded ms", "ratio": "ratio"})
    return result, table, plot


def _stepper(fn, a):
    def step():
        a[0], a[1], _, ok = fn(*a)
        jax.block_until_ready((a[0], ok))

    return step


def trainer(args, s) -> tuple[dict, str, None]:
    n = s["B"] * args.steps
    x, y = random_batch(n, s)
    batches = [(jnp.asarray(x[i:i + s["B"]]), jnp.asarray(y[i:i + s["B"]]),
                jnp.arange(i, i + s["B"])) for i in range(0, n, s["B"])]
    txs = {"adam": optax.adam(1e-3), "admm_kfac": admm_jax.admm_kfac()}
    runs = {}
    for m in TRAINER_METHODS:
        t = Trainer(admm_jax.ElmanRNN(s["D"], s["H"], 10, rngs=nnx.Rngs(0)), txs[m], (x, y),
                    batch_size=s["B"])
        runs[(m, "trainer")] = lambda t=t: t.run(args.steps)
        runs[(m, "bare")] = lambda t=t: _bare_loop(t, batches)
    times = round_robin(runs, args.rounds)
    rows = []
    for m in TRAINER_METHODS:
        tr, bare = (median_ms(times[(m, k)]) / args.steps for k in ("trainer", "bare"))
        rows.append({"method": m, "trainer_ms": tr, "bare_ms": bare,
                     "ratio": median_ratio(times, (m, "trainer"), (m, "bare")),
                     "overhead_ms": tr - bare})
    result = {"sizes": s, "rounds": args.rounds, "steps": args.steps, "rows": rows}
    table = markdown_table(rows, {"method": "method", "trainer_ms": "Trainer ms/step",
                                  "bare_ms": "bare loop ms/step", "ratio": "ratio",
                                  "overhead_ms": "overhead ms"})
    return result, table, None


def _bare_loop(t: Trainer, batches) -> None:
    """The trainer's compiled step on device-resident batches, one sync at the end."""
    loop = t.loop
    p, s = loop.params, loop.opt_state
    for i, (xb, yb, ib) in enumerate(batches):
        p, s, _, _ = t.compiled_step(p, s, xb, yb, ib, loop.model_kwargs, t.key,
                                     jnp.asarray(loop.iteration + i, jnp.int32))
    jax.block_until_ready(p)
    loop.params, loop.opt_state = p, s


CASES = {"nonfinite": (nonfinite, "nonfinite_overhead", 60, 1),
         "trainer": (trainer, "trainer_overhead", 10, 50)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few rounds")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (per case default)")
    ap.add_argument("--steps", type=int, default=None, help="steps per round (trainer)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    run, stem, rounds, steps = CASES[args.case]
    args.rounds = args.rounds or (2 if args.smoke else rounds)
    args.steps = args.steps or (5 if args.smoke else steps)
    result, table, plot = run(args, sizes(args.smoke))
    write_results(args.out, stem + ("_smoke" if args.smoke else ""), result,
                  command(__file__, argv), table=table, plot=plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
