"""What fit's loop costs around its compiled step: seconds per step of ``admm_jax.train.Trainer``
(the run ``fit`` makes) against the same compiled step called in a bare loop.

    python benchmarks/trainer_overhead.py            # row-MNIST-sized: D=28, H=128, T=28, B=128
    python benchmarks/trainer_overhead.py --smoke    # tiny, seconds (the test runs this)

Per step the Trainer takes the next batch from its ``BatchIterator`` (a host gather of ``B``
rows and a transfer), calls the compiled step, and reads the step's metrics and finite flag
back (one host sync per step: it never applies or records a non-finite step), then appends a
row to the history. The bare loop calls the same compiled executable on batches already on
the device and syncs once at the end of the round, so it is the floor that a host loop can
reach. Both run round-robin in one process (``--rounds`` rounds of ``--steps`` steps after a
warm-up round), for Adam and admm_kfac on random inputs of row-MNIST's shape; the reported
figure is the ratio of the medians, per method.

Writes benchmarks/results/trainer_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import admm_jax
from admm_jax.train import Trainer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few rounds")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    D, H, T, B = (4, 8, 5, 16) if args.smoke else (28, 128, 28, 128)
    rounds, steps = (2, 5) if args.smoke else (args.rounds, args.steps)
    rng = np.random.default_rng(0)
    n = B * steps
    x = rng.random((n, T, D), np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    batches = [(jnp.asarray(x[i:i + B]), jnp.asarray(y[i:i + B]), jnp.arange(i, i + B))
               for i in range(0, n, B)]
    models = {m: admm_jax.ElmanRNN(D, H, 10, rngs=nnx.Rngs(0)) for m in ("adam", "admm_kfac")}
    methods = {"adam": optax.adam(1e-3),
               "admm_kfac": admm_jax.admm_kfac(models["admm_kfac"], x[:1])}
    trainers = {m: Trainer(models[m], tx, (x, y), batch_size=B) for m, tx in methods.items()}
    times = {(m, k): [] for m in methods for k in ("trainer", "bare")}
    for r in range(rounds + 1):  # round 0 warms up
        for m, t in trainers.items():
            s0 = t.loop.train_seconds
            t.run(steps)
            trainer_s = t.loop.train_seconds - s0
            loop = t.loop
            p, s = loop.params, loop.opt_state
            t0 = time.perf_counter()
            for i, (xb, yb, ib) in enumerate(batches):
                p, s, _, _ = t.compiled_step(p, s, xb, yb, ib, loop.model_kwargs, t.key,
                                         jnp.asarray(loop.iteration + i, jnp.int32))
            jax.block_until_ready(p)
            bare_s = time.perf_counter() - t0
            loop.params, loop.opt_state = p, s
            if r:
                times[(m, "trainer")].append(trainer_s / steps)
                times[(m, "bare")].append(bare_s / steps)
    rows = []
    for m in methods:
        tr, bare = (statistics.median(times[(m, k)]) for k in ("trainer", "bare"))
        rows.append({"method": m, "trainer_ms": 1e3 * tr, "bare_ms": 1e3 * bare,
                     "ratio": tr / bare, "overhead_ms": 1e3 * (tr - bare)})
    result = {"command": "python benchmarks/trainer_overhead.py" + (" --smoke" * args.smoke),
              "sizes": {"D": D, "H": H, "T": T, "B": B}, "rounds": rounds, "steps": steps,
              "devices": str(jax.devices()), "rows": rows}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "trainer_overhead" + ("_smoke" if args.smoke else "")
    tmp = out / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / f"{stem}.json")
    print("| method | Trainer ms/step | bare loop ms/step | ratio | overhead ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['trainer_ms']:.3f} | {r['bare_ms']:.3f} | "
              f"{r['ratio']:.2f} | {r['overhead_ms']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
