"""NovoGrad against Adam and AdamW: LSTM on row-MNIST, Elman RNN on IMDb.

Protocol (the same budget for every optimizer): the learning rate of each optimizer is chosen
on a validation split (the last 10% of the training set), seed 0, at the full epoch budget,
from its own grid (``--lrs-adam``, ``--lrs-adamw``, ``--lrs-novograd``); then ``--seeds``
seeds train at the chosen rate on the other 90% and report test accuracy (mean +- std),
training seconds (evaluation excluded; optimizers interleaved epoch by epoch in one process,
so they share the machine's load), the worst epoch-to-epoch rise of the training loss, and
the optimizer-state bytes (``tx.init(params)``). NovoGrad is ``admm_jax.novograd`` with the
paper's defaults (b1 0.95, b2 0.98, one second moment per parameter leaf); AdamW uses
``--adamw-wd`` (decoupled) and NovoGrad ``--novograd-wd``. Batch 128, constant learning rate.

    python benchmarks/novograd_vs_adam.py --task mnist --epochs 2     # LSTM, hidden 64
    python benchmarks/novograd_vs_adam.py --task imdb --epochs 2      # Elman, hidden 64
    python benchmarks/novograd_vs_adam.py --task mnist --smoke --out /tmp/nv  # seconds

Writes ``<out>/novograd_<task>.json`` after every finished run and a PNG at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import admm_jax
from admm_jax import data

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
OPTIMIZERS = ("novograd", "adam", "adamw")


def csv_floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def load(task: str, data_dir, imdb_len: int, imdb_vocab: int):
    if task == "mnist":
        xtr, ytr = data.mnist("train", data_dir=data_dir)
        xte, yte = data.mnist("test", data_dir=data_dir)
        return xtr, ytr, xte, yte
    tr = data.imdb("train", vocab_size=imdb_vocab, max_len=imdb_len, data_dir=data_dir)
    te = data.imdb("test", vocab_size=imdb_vocab, max_len=imdb_len, data_dir=data_dir)
    return tr.ids, tr.labels, te.ids, te.labels


def make_model(task: str, hidden: int, seed: int, vocab: int):
    """``(params, apply)``: LSTM (row-MNIST, 28 inputs) or Elman RNN (IMDb tokens)."""
    if task == "mnist":
        model = admm_jax.LSTM(28, hidden, 10, rngs=nnx.Rngs(seed))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param)), admm_jax.lstm_apply
    model = admm_jax.ElmanRNN(vocab, hidden, 2, rngs=nnx.Rngs(seed), token_inputs=True)
    return model.params_dict(), admm_jax.elman_apply


def make_tx(name: str, lr, args):
    if name == "adam":
        return optax.adam(lr)
    if name == "adamw":
        return optax.adamw(lr, weight_decay=args.adamw_wd)
    return admm_jax.novograd(lr, weight_decay=args.novograd_wd)


_EPOCH_FNS: dict = {}


def epoch_fn(name: str, args, apply):
    """One jitted epoch per optimizer, the learning rate a state entry
    (``optax.inject_hyperparams``), so every rate of a grid shares one compilation."""
    key = (name, args.task, args.hidden)
    if key in _EPOCH_FNS:
        return _EPOCH_FNS[key]
    tx = optax.inject_hyperparams(lambda learning_rate: make_tx(name, learning_rate, args))(
        learning_rate=0.0)

    def loss_fn(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, xb), yb).mean()

    def epoch(p, s, x, y, idx):
        def body(carry, i):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, x[i], y[i])
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (p, s), losses = jax.lax.scan(body, (p, s), idx)
        return p, s, jnp.mean(losses)

    _EPOCH_FNS[key] = (tx, jax.jit(epoch, donate_argnums=(0, 1)), jax.jit(apply))
    return _EPOCH_FNS[key]


def state_bytes(state) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)))


class Run:
    """One optimizer at one learning rate and seed: epochs as jitted ``lax.scan`` s (the
    optimizer-state bytes are those of the plain optimizer, without the injected rate)."""

    def __init__(self, name, lr, seed, args, x, y, vocab):
        self.name, self.lr, self.seed = name, lr, seed
        self.params, apply = make_model(args.task, args.hidden, seed, vocab)
        self.state_bytes = state_bytes(make_tx(name, lr, args).init(self.params))
        tx, self._epoch, self._apply = epoch_fn(name, args, apply)
        self.state = tx.init(self.params)
        self.state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        self.x, self.y, self.batch = x, y, args.batch_size
        self.steps = len(x) // self.batch
        self.rng = np.random.default_rng(seed)
        self.seconds, self.epoch_loss, self.diverged = 0.0, [], False

    def train_epoch(self) -> None:
        idx = self.rng.permutation(len(self.x))[: self.steps * self.batch]
        idx = jnp.asarray(idx.reshape(self.steps, self.batch))
        t0 = time.perf_counter()
        self.params, self.state, loss = self._epoch(self.params, self.state, self.x, self.y, idx)
        loss = float(loss)
        self.seconds += time.perf_counter() - t0
        self.epoch_loss.append(loss)
        self.diverged |= not np.isfinite(loss)

    def accuracy(self, x, y, chunk: int = 2500) -> float:
        hits = 0
        for i in range(0, len(x), chunk):
            hits += int(jnp.sum(jnp.argmax(self._apply(self.params, x[i:i + chunk]), -1)
                                == y[i:i + chunk]))
        return 100.0 * hits / len(x)

    def spike(self) -> float:
        d = np.diff(self.epoch_loss)
        return float(max(0.0, d.max())) if d.size else 0.0


def run_group(runs: list[Run], epochs: int, on_epoch=None) -> None:
    """Train all ``runs`` ``epochs`` epochs, interleaved one epoch at a time."""
    for e in range(epochs):
        for r in runs:
            if not r.diverged:
                r.train_epoch()
        if on_epoch:
            on_epoch(e)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"))
    ap.add_argument("--task", choices=("mnist", "imdb"), default="mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lrs-adam", type=csv_floats, default=[1e-3, 3e-3, 1e-2])
    ap.add_argument("--lrs-adamw", type=csv_floats, default=[1e-3, 3e-3, 1e-2])
    ap.add_argument("--lrs-novograd", type=csv_floats, default=[3e-3, 1e-2, 3e-2, 1e-1])
    ap.add_argument("--adamw-wd", type=float, default=1e-2)
    ap.add_argument("--novograd-wd", type=float, default=0.0)
    ap.add_argument("--imdb-len", type=int, default=100)
    ap.add_argument("--imdb-vocab", type=int, default=10000)
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="1 epoch on 1024 samples, one rate each, 1 seed: checks that it runs")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = ap.parse_args(argv)
    for k in ("lrs_adam", "lrs_adamw", "lrs_novograd"):
        if not getattr(args, k) or min(getattr(args, k)) <= 0:
            ap.error(f"--{k.replace('_', '-')}: expected positive learning rates")
    if args.smoke:
        args.epochs, args.seeds, args.train_subset = 1, 1, 1024
        args.lrs_adam, args.lrs_adamw, args.lrs_novograd = [1e-3], [1e-3], [1e-2]

    xtr, ytr, xte, yte = load(args.task, args.data_dir, args.imdb_len, args.imdb_vocab)
    if args.train_subset:
        xtr, ytr = xtr[: args.train_subset], ytr[: args.train_subset]
        xte, yte = xte[: args.train_subset], yte[: args.train_subset]
    n_val = len(xtr) // 10
    x_fit, y_fit = jnp.asarray(xtr[:-n_val]), jnp.asarray(ytr[:-n_val])
    x_val, y_val = jnp.asarray(xtr[-n_val:]), jnp.asarray(ytr[-n_val:])
    x_te, y_te = jnp.asarray(xte), jnp.asarray(yte)
    grids = {"novograd": args.lrs_novograd, "adam": args.lrs_adam, "adamw": args.lrs_adamw}
    out = args.out / f"novograd_{args.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"command": "python benchmarks/novograd_vs_adam.py " + " ".join(
               argv if argv is not None else sys.argv[1:]),
           "setting": {"task": args.task, "model": "LSTM" if args.task == "mnist" else "Elman",
                       "hidden": args.hidden, "batch": args.batch_size, "epochs": args.epochs,
                       "fit_samples": int(len(x_fit)), "val_samples": int(n_val),
                       "test_samples": int(len(x_te)), "adamw_wd": args.adamw_wd,
                       "novograd_wd": args.novograd_wd, "grids": grids},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "jax": jax.__version__},
           "tuning": {}, "final": {}}

    def save():
        out.write_text(json.dumps(res, indent=1))

    # 1. tune: every (optimizer, lr) at seed 0, full budget, validation accuracy
    tune_runs = [Run(o, lr, 0, args, x_fit, y_fit, args.imdb_vocab)
                 for o in OPTIMIZERS for lr in grids[o]]
    run_group(tune_runs, args.epochs)
    for r in tune_runs:
        acc = r.accuracy(x_val, y_val) if not r.diverged else float("nan")
        res["tuning"].setdefault(r.name, []).append(
            {"lr": r.lr, "val_acc": acc, "train_loss": r.epoch_loss, "seconds": r.seconds})
        print(f"tune {r.name:9} lr {r.lr:<7g} val {acc:6.2f}%  {r.seconds:6.1f}s", flush=True)
    best = {o: max((t for t in res["tuning"][o] if np.isfinite(t["val_acc"])),
                   key=lambda t: t["val_acc"])["lr"] for o in OPTIMIZERS}
    res["chosen_lr"] = best
    save()

    # 2. seeds at the chosen rates (seed 0 is retrained: tuning and final share no state)
    finals = [Run(o, best[o], s, args, x_fit, y_fit, args.imdb_vocab)
              for s in range(args.seeds) for o in OPTIMIZERS]
    run_group(finals, args.epochs)
    for r in finals:
        res["final"].setdefault(r.name, []).append(
            {"seed": r.seed, "lr": r.lr, "test_acc": r.accuracy(x_te, y_te),
             "seconds": r.seconds, "train_loss": r.epoch_loss, "loss_spike": r.spike(),
             "diverged": bool(r.diverged), "state_bytes": r.state_bytes})
    summary = {}
    for o, rows in res["final"].items():
        acc = np.array([r["test_acc"] for r in rows])
        summary[o] = {"lr": best[o], "test_acc_mean": float(acc.mean()),
                      "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                      "seconds_mean": float(np.mean([r["seconds"] for r in rows])),
                      "worst_loss_spike": float(max(r["loss_spike"] for r in rows)),
                      "state_bytes": rows[0]["state_bytes"]}
    res["summary"] = summary
    save()
    print(f"\n{args.task}: {args.epochs} epochs, hidden {args.hidden}, {args.seeds} seeds")
    print(f"{'optimizer':10}{'lr':>8}{'test acc %':>18}{'train s':>9}{'spike':>8}"
          f"{'state bytes':>13}")
    for o, s in summary.items():
        print(f"{o:10}{s['lr']:8g}{s['test_acc_mean']:10.2f} +- {s['test_acc_std']:4.2f}"
              f"{s['seconds_mean']:9.1f}{s['worst_loss_spike']:8.3f}{s['state_bytes']:13,d}")
    plot(res, out.with_suffix(".png"))
    return res


def plot(res: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, o in enumerate(OPTIMIZERS):
        t = res["tuning"][o]
        axes[0].plot([r["lr"] for r in t], [r["val_acc"] for r in t], marker="o", color=f"C{i}",
                     label=o)
        for r in res["final"][o]:
            axes[1].plot(range(1, len(r["train_loss"]) + 1), r["train_loss"], color=f"C{i}",
                         alpha=0.7, label=o if r["seed"] == 0 else None)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("learning rate")
    axes[0].set_ylabel("validation accuracy % (seed 0)")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("mean training loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{res['setting']['model']} on {res['setting']['task']}: NovoGrad vs Adam/AdamW")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
