"""Choose ADMMiRNN's penalty schedule (its step decay after the first epochs) on a validation
split of row-MNIST.

The coupled iteration's weight steps scale like ``1/rho`` (all three penalties scaled by ``g``
scale the steps by about ``1/g``), so a growing ``rho`` is a decaying step. Candidates, each
``admmirnn(rho_schedule=..., rho_growth=...)`` with the other options at their defaults:

* ``fixed``: constant penalties (the default so far);
* ``geometric:<g>``: ``rho *= g`` per iteration (an exponentially decaying step);
* ``linear:<g>``: ``rho = rho_0 (1 + (g - 1) k)`` after ``k`` iterations (a step decaying like
  ``1/k``, the stochastic-approximation rate).

Row-MNIST: the first 50,000 training images train, the last 10,000 are the validation split
(the test set is not looked at). Elman RNN H=128, batch 128, ``--budget-seconds`` of training
per candidate (evaluation excluded), validation accuracy after every epoch. The candidate with
the best final validation accuracy is reported.

    python benchmarks/admm_schedule.py --data-dir "$ADMM_JAX_DATA"       # 5 x 300 s + eval

Resumable: each finished candidate is appended to ``<out>/<tag>.json``; a rerun skips the
candidates already there. Writes ``<out>/<tag>.json``, ``<out>/<tag>.md`` and ``<out>/<tag>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
CANDIDATES = "fixed,geometric:1.0001,geometric:1.0003,linear:1.0005,linear:1.002"


def options(candidate: str) -> dict:
    """``admmirnn`` keyword arguments of a candidate ``schedule[:growth]``."""
    schedule, _, growth = candidate.partition(":")
    return {"rho_schedule": schedule, **({"rho_growth": float(growth)} if growth else {})}


def run(candidate: str, task, args) -> dict:
    from admm_jax.train import DivergenceError, Trainer

    n_val = args.validation
    train = (task.train[0][:-n_val], task.train[1][:-n_val])
    val = (task.train[0][-n_val:], task.train[1][-n_val:])
    trainer = Trainer(task.model(args.hidden, seed=args.seed),
                      task.optimizer("admmirnn", **options(candidate)), train,
                      batch_size=args.batch_size, seed=args.seed, evaluation_data=val,
                      **task.fit_kwargs())
    epochs, diverged = [], False
    while trainer.loop.train_seconds < args.budget_seconds:
        try:
            trainer.run(trainer.steps_per_epoch)
        except DivergenceError:
            diverged = True
            break
        ev = trainer.evaluate()
        epochs.append({"epoch": len(epochs) + 1, "iteration": trainer.loop.iteration,
                       "seconds": trainer.loop.train_seconds, "val_accuracy": ev["accuracy"],
                       "val_loss": ev["loss"]})
        print(f"{candidate:18s} epoch {len(epochs):3d} {trainer.loop.train_seconds:7.1f} s "
              f"val acc {ev['accuracy']:.4f}", flush=True)
    return {"candidate": candidate, "options": options(candidate), "epochs": epochs,
            "diverged": diverged,
            "final_val_accuracy": epochs[-1]["val_accuracy"] if epochs else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"))
    ap.add_argument("--candidates", default=CANDIDATES,
                    help=f"comma-separated schedule[:growth] (default {CANDIDATES})")
    ap.add_argument("--budget-seconds", type=float, default=300.0,
                    help="training seconds per candidate")
    ap.add_argument("--validation", type=int, default=10000,
                    help="the last training images held out for validation")
    ap.add_argument("--train-subset", type=int, default=None,
                    help="use only the first images of the training split")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--tag", default="admm_schedule")
    args = ap.parse_args(argv)

    from admm_jax import tasks

    task = tasks.load("row-mnist", data_dir=args.data_dir, train_subset=args.train_subset,
                      test_subset=1)
    config = {k: v for k, v in vars(args).items()
              if k not in ("out", "tag", "data_dir", "candidates")}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.tag}.json"
    res = json.loads(path.read_text()) if path.exists() else {"config": config, "runs": {}}
    if res["config"] != config:
        raise SystemExit(f"{path} holds results of other settings; use another --tag")
    for c in (c.strip() for c in args.candidates.split(",") if c.strip()):
        if c in res["runs"]:
            continue
        res["runs"][c] = run(c, task, args)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(path)
    done = [r for r in res["runs"].values() if r["final_val_accuracy"] is not None]
    best = max(done, key=lambda r: r["final_val_accuracy"]) if done else None
    lines = [f"row-MNIST, {args.validation} training images held out for validation, H="
             f"{args.hidden}, batch {args.batch_size}, {args.budget_seconds:g} s per candidate",
             "", "| candidate | epochs | val acc after epoch 1 | best val acc | final val acc |",
             "|---|---|---|---|---|"]
    for r in res["runs"].values():
        e = r["epochs"]
        lines.append(f"| {r['candidate']} | {len(e)} | "
                     f"{e[0]['val_accuracy'] if e else float('nan'):.4f} | "
                     f"{max((x['val_accuracy'] for x in e), default=float('nan')):.4f} | "
                     f"{r['final_val_accuracy'] or float('nan'):.4f}"
                     f"{' (diverged)' if r['diverged'] else ''} |")
    if best:
        lines += ["", f"best final validation accuracy: {best['candidate']} "
                      f"({best['final_val_accuracy']:.4f}), admmirnn({best['options']})"]
    md = "\n".join(lines) + "\n"
    (args.out / f"{args.tag}.md").write_text(md)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in res["runs"].values():
        ax.plot([e["seconds"] for e in r["epochs"]], [e["val_accuracy"] for e in r["epochs"]],
                marker=".", label=r["candidate"])
    ax.set(xlabel="training seconds", ylabel="validation accuracy",
           title="ADMMiRNN penalty schedules, row-MNIST")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / f"{args.tag}.png", dpi=110)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
