"""ADMMiRNN variants side by side on a task at equal training time (the search behind the
coupled block's defaults, issue 16).

Each variant is ``admmirnn`` with keyword arguments (or any registered optimizer with
``name``), trained by :func:`admm_jax.train.fit` exactly as ``admm-jax compare`` does: same
initial weights, same batches, ``--budget-seconds`` of training (compilation and evaluation
excluded), the test metric at ``--eval-points`` evenly spaced times. Variants run one after
another in one process, so compare them within one run.

    python benchmarks/admm_variants.py --task adding --budget-seconds 10 \\
        --variant '{"rho": [0.5, 10, 0.1]}' --variant '{"rho": [0.5, 10, 0.1], "prox": 0.1}' \\
        --variant '{"name": "sgd", "learning_rate": 0.1, "clip_norm": 1.0}'

Writes ``<out>/<tag>.json`` (the variants, their evaluation points and iteration counts) and
``<out>/<tag>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from admm_jax import tasks
from admm_jax.train import Evaluation, fit

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def run_variant(task, spec: dict, args) -> dict:
    kw = dict(spec)
    name = kw.pop("name", "admmirnn")
    clip = kw.pop("clip_norm", None)
    if "rho" in kw and isinstance(kw["rho"], list):
        kw["rho"] = tuple(kw["rho"])
    tx = task.optimizer(name, clip_norm=clip, **kw)
    model = task.model(args.hidden, seed=args.seed)
    h = fit(model, tx, task.train, **task.fit_kwargs(),
            budget_seconds=args.budget_seconds, batch_size=args.batch_size, seed=args.seed,
            progress=False, on_divergence="stop",
            evaluation=Evaluation(task.test,
                                  every_seconds=args.budget_seconds / args.eval_points))
    key = task.metric_name
    col = "accuracy" if task.metric is not None else "loss"
    return {"variant": spec, "metric": key, "iterations": int(h.meta["iterations"]),
            "time": [round(float(t), 3) for t in h.evals["time"]],
            "value": [float(v) for v in h.evals[col]]}


def plot(rows, task, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        ax.plot(r["time"], r["value"], marker=".", label=json.dumps(r["variant"])[:70])
    if task.metric is None:
        ax.set_yscale("log")
    ax.set_xlabel("training seconds")
    ax.set_ylabel(f"test {rows[0]['metric']}")
    ax.set_title(task.info)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="adding")
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"))
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--num-train", type=int, default=10_000, help="synthetic tasks' size")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--budget-seconds", type=float, default=10.0)
    ap.add_argument("--eval-points", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", action="append", default=[],
                    help="JSON object of admmirnn keyword arguments (repeatable); "
                         '"name" picks another optimizer, "clip_norm" clips its gradients')
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--tag", default="admm_variants")
    args = ap.parse_args(argv)
    specs = [json.loads(v) for v in args.variant] or [{}]
    for s in specs:
        if not isinstance(s, dict):
            raise SystemExit(f"--variant: expected a JSON object, got {s!r}")
    task = tasks.load(args.task, data_dir=args.data_dir, train_subset=args.train_subset,
                      num_train=args.num_train)
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        rows.append(run_variant(task, spec, args))
        r = rows[-1]
        print(f"{json.dumps(spec)}: {r['iterations']} iterations, test {r['metric']} "
              + " ".join(f"{v:.4f}@{t:.0f}s" for t, v in zip(r["time"], r["value"],
                                                              strict=True)), flush=True)
        # written after every variant: a run cut short keeps its finished rows
        (args.out / f"{args.tag}.json").write_text(json.dumps(
            {"args": {**vars(args), "out": str(args.out)}, "rows": rows}, indent=1))
    plot(rows, task, args.out / f"{args.tag}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
