"""admm_kfac's default recipe, chosen on row-MNIST's validation split (never the test set).

Each recipe (``learning_rate``, ``decay_steps``, ``warmup_steps`` as JSON) trains an Elman
RNN (H=128, batch 128, seed 0) on the first 90% of the MNIST training set for ``--iterations``
steps through :func:`admm_jax.train.fit`, evaluated on the last 10% every ``--eval-every``
steps. Reported per recipe: the first iteration whose validation accuracy reaches
``--target``, the final and best validation accuracy. Writes
``benchmarks/results/kfac_defaults.json``.

    python benchmarks/kfac_defaults.py --data-dir ../shared/data           # the default table
    python benchmarks/kfac_defaults.py --data-dir ../shared/data --smoke   # seconds
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
from flax import nnx

import admm_jax
from admm_jax import data, optimizers
from admm_jax.train import Evaluation, fit

RESULTS = pathlib.Path(__file__).parent / "results"
ITERATIONS = 2808  # 6 epochs of row-MNIST at batch 128, the CLI bar's budget
RECIPES = [
    {"learning_rate": 0.3},
    {"learning_rate": 0.5},
    {"learning_rate": 0.3, "decay_steps": ITERATIONS},
    {"learning_rate": 0.5, "decay_steps": ITERATIONS},
    {"learning_rate": 0.3, "decay_steps": ITERATIONS, "warmup_steps": 100},
    {"learning_rate": 0.5, "decay_steps": ITERATIONS, "warmup_steps": 100},
    {"learning_rate": 0.5, "decay_steps": ITERATIONS, "warmup_steps": 50},
]


def run(recipe: dict, train, val, iterations: int, every: int, target: float, hidden: int):
    model = admm_jax.ElmanRNN(train[0].shape[-1], hidden, 10, rngs=nnx.Rngs(0))
    h = fit(model, optimizers.get("admm_kfac", **recipe), train, iterations=iterations,
            batch_size=128, evaluation=Evaluation(val, every=every))
    acc = h.evals["accuracy"]
    first = next((it for it, a in zip(h.evals["iteration"], acc, strict=True) if a >= target),
                 None)
    return {"recipe": recipe, "first_iteration_to_target": first, "final": acc[-1],
            "best": max(acc), "train_seconds": h.meta["train_seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--iterations", type=int, default=ITERATIONS)
    ap.add_argument("--eval-every", type=int, default=35)
    ap.add_argument("--target", type=float, default=0.975)
    ap.add_argument("--recipe", action="append", type=json.loads, default=None,
                    help="a recipe as JSON (repeatable; default: the table's recipes)")
    ap.add_argument("--smoke", action="store_true", help="2k samples, 20 iterations, H=16")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = ap.parse_args(argv)
    x, y = data.mnist("train", data_dir=args.data_dir)
    x = x.reshape(-1, 28, 28).astype(np.float32)
    hidden, recipes = 128, args.recipe or RECIPES
    if args.smoke:
        x, y, hidden, args.iterations, args.eval_every = x[:2000], y[:2000], 16, 20, 10
        recipes = [{"learning_rate": 0.5, "decay_steps": 20, "warmup_steps": 5}]
    n = int(0.9 * len(x))
    rows = []
    for recipe in recipes:
        rows.append(run(recipe, (x[:n], y[:n]), (x[n:], y[n:]), args.iterations,
                        args.eval_every, args.target, hidden))
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "kfac_defaults.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"iterations": args.iterations, "target": args.target,
                               "validation": f"last {len(x) - n} of {len(x)} training samples",
                               "rows": rows}, indent=1))
    tmp.replace(path)  # a failed run never overwrites a finished table
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
