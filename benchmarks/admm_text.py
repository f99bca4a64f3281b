"""ADMMiRNN on a many-to-many classification task: next character of IMDb review text.

The ``text`` task of :mod:`admm_jax.tasks` (T=25 characters per window, a loss at every step)
on characters of the IMDb reviews (``aclImdb``: the first ``--reviews`` training reviews,
lower-cased, ``<br />`` as a space, printable ASCII only; the last 10% of windows held out).
An Elman RNN (H=128, tanh) is trained by each method for ``--budget-seconds`` of training
(compilation and evaluation excluded), the methods stepped in turn (the one furthest behind in
training time next, as ``admm-jax compare`` does), batch 32, same initial weights and batches.
The held-out loss (nats per character) is measured at ``--eval-points`` times; the uniform
prediction's loss is ``ln V``.

The bar (issue 28): after 40 s the ADMMiRNN default's held-out loss ends below plain SGD's
(lr 0.1) and far below the uniform-prediction loss.

    python benchmarks/admm_text.py --data-dir "$ADMM_JAX_DATA"          # ~2 min on 2 cores
    python benchmarks/admm_text.py --smoke --out /tmp/text              # seconds

Writes ``<out>/<tag>.json``, ``<out>/<tag>.md`` and ``<out>/<tag>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import string
import sys
import tempfile

import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
METHODS = {"admmirnn": {}, "sgd": {"learning_rate": 0.1}, "adam": {"learning_rate": 1e-3}}
KEEP = set(string.printable) - set("\t\r\x0b\x0c")


def corpus(data_dir, reviews: int, path: pathlib.Path) -> pathlib.Path:
    """The character corpus: the first ``reviews`` IMDb training reviews, one per line."""
    from admm_jax.data import imdb_texts

    texts, _ = imdb_texts(f"train[:{reviews}]", data_dir=data_dir, download=False)
    lines = ("".join(c for c in t.replace("<br />", " ").lower() if c in KEEP)
             for t in texts)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"),
                    help="folder holding imdb/ (default $ADMM_JAX_DATA)")
    ap.add_argument("--reviews", type=int, default=4000, help="IMDb training reviews read")
    ap.add_argument("--seq-len", type=int, default=25)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget-seconds", type=float, default=40.0,
                    help="training seconds per method")
    ap.add_argument("--eval-points", type=int, default=10)
    ap.add_argument("--eval-windows", type=int, default=2000,
                    help="held-out windows evaluated (the first ones)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--tag", default="admm_text")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds: 30 reviews, T=10, H=16, 0.5 s per method")
    args = ap.parse_args(argv)
    if args.smoke:
        args.reviews, args.seq_len, args.hidden, args.batch_size = 30, 10, 16, 16
        args.budget_seconds, args.eval_points, args.eval_windows = 0.5, 2, 64

    from admm_jax import tasks
    from admm_jax.train import DivergenceError, Trainer

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown method {m!r}; expected some of {list(METHODS)}")
    with tempfile.TemporaryDirectory() as tmp:
        text = corpus(args.data_dir, args.reviews, pathlib.Path(tmp) / "imdb_chars.txt")
        task = tasks.load("text", text_path=text, seq_len=args.seq_len)
    vocab = task.out_features
    held_out = (task.test[0][:args.eval_windows], task.test[1][:args.eval_windows])
    runs = {}
    for m in methods:
        model = task.model(args.hidden, seed=args.seed)
        runs[m] = {"trainer": Trainer(model, task.optimizer(m, **METHODS[m]), task.train,
                                      batch_size=args.batch_size, seed=args.seed,
                                      evaluation_data=held_out, **task.fit_kwargs()),
                   "time": [], "loss": [], "accuracy": [], "diverged": False}
    points = [args.budget_seconds * i / args.eval_points for i in range(args.eval_points + 1)]

    def record(r):
        ev = r["trainer"].evaluate()
        r["time"].append(r["trainer"].loop.train_seconds)
        r["loss"].append(ev["loss"] if math.isfinite(ev["loss"]) else None)
        r["accuracy"].append(ev["accuracy"])

    for r in runs.values():
        record(r)
    active = dict(runs)
    while active:  # the run furthest behind in training time goes next
        name = min(active, key=lambda k: active[k]["trainer"].loop.train_seconds)
        r = active[name]
        tr = r["trainer"]
        try:
            tr.run(5)
        except DivergenceError:
            r["diverged"] = True
        if r["diverged"] or tr.loop.train_seconds >= args.budget_seconds:
            record(r)
            del active[name]
        elif tr.loop.train_seconds >= points[len(r["time"])]:
            record(r)
    uniform = math.log(vocab)
    rows = [{"method": m, "iterations": r["trainer"].loop.iteration,
             "seconds": r["trainer"].loop.train_seconds,
             "ms_per_iteration": 1e3 * r["trainer"].loop.train_seconds
             / max(r["trainer"].loop.iteration, 1),
             "final_loss": r["loss"][-1], "final_accuracy": r["accuracy"][-1],
             "diverged": r["diverged"], "time": r["time"], "loss": r["loss"],
             "accuracy": r["accuracy"]} for m, r in runs.items()]
    result = {"args": {**vars(args), "out": str(args.out)}, "vocab": vocab,
              "uniform_loss": uniform, "train_windows": len(task.train[0]),
              "held_out_windows": len(held_out[0]), "rows": rows}
    lines = [f"next character of IMDb reviews: V={vocab} characters, T={args.seq_len}, "
             f"H={args.hidden}, batch {args.batch_size}, {args.budget_seconds:g} s each; "
             f"uniform prediction {uniform:.3f} nats", "",
             "| method | iterations | ms / iteration | final held-out loss | accuracy |",
             "|---|---|---|---|---|"]
    for row in rows:
        loss = "diverged" if row["final_loss"] is None else f"{row['final_loss']:.3f}"
        lines.append(f"| {row['method']} | {row['iterations']} | "
                     f"{row['ms_per_iteration']:.1f} | {loss} | {row['final_accuracy']:.3f} |")
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{args.tag}.md").write_text(md)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        ax.plot(row["time"], [np.nan if v is None else v for v in row["loss"]], marker=".",
                label=row["method"])
    ax.axhline(uniform, color="grey", ls=":", label=f"uniform prediction (ln {vocab})")
    ax.set(xlabel="training seconds", ylabel="held-out loss (nats / character)",
           title=f"next character, IMDb reviews, T={args.seq_len}, H={args.hidden}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / f"{args.tag}.png", dpi=110)
    print(md)
    print(f"wrote {args.out / (args.tag + '.json')}, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
