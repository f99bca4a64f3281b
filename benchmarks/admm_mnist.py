"""ADMMiRNN on row-MNIST, with optax Adam on the same model and data as the reference line.

Row-MNIST: each image is a sequence of T=28 rows of d=28 pixels; an Elman RNN (H=128, tanh)
reads it and classifies from the last state. ADMMiRNN trains from a random initialisation (no
gradient warm start) on a training subset (default 10,000 images, mini-batches of 128 with
per-sample multipliers), for a wall-clock budget; quality is always the forward pass of the
weights on the full 10k test set, never the auxiliary variables. Logged per epoch: augmented
Lagrangian, primal residuals |r1| |r2| |r3|, dual residual, forward-pass train loss and
accuracy, test accuracy, seconds per iteration and cumulative training seconds (evaluation
excluded). Both methods run as ``admm_jax.train.fit`` runs them (an ``admm_jax.train.Trainer``:
fit's compiled step, batch order and training clock).

    python benchmarks/admm_mnist.py --data-dir ../shared/data            # ~15 min + Adam
    python benchmarks/admm_mnist.py --budget-seconds 60 --adam-epochs 1  # quick look

Writes ``<out>/admm_mnist.json`` and ``<out>/admm_mnist.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys

import jax
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import admm_jax
from admm_jax.data import mnist
from admm_jax.train import DivergenceError, Trainer

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _named(params):
    return {k: params[k][...] for k in ("U", "W", "b", "V", "c")}


BOOKKEEPING = ("iteration", "epoch", "seconds", "time", "loss", "accuracy")


def run(args, name, tx, xtr, ytr, xte, yte, log, *, epochs, budget_seconds=None):
    """``tx`` on the Elman RNN, one :class:`admm_jax.train.Trainer` (fit's step, batch order
    and clock), an epoch at a time until ``epochs`` or ``budget_seconds``; after every epoch
    the forward-pass train loss and accuracy, the test accuracy and the last step's
    diagnostics (ADMMiRNN: Lagrangian, residuals) are logged."""
    model = admm_jax.ElmanRNN(28, args.hidden, 10, rngs=nnx.Rngs(args.seed))
    trainer = Trainer(model, tx, (xtr, ytr), batch_size=args.batch_size, seed=args.seed)
    loop, per_epoch = trainer.loop, trainer.steps_per_epoch
    history = []
    by_time = budget_seconds is not None
    bar = tqdm(total=int(budget_seconds) if by_time else epochs, desc=name,
               unit="s" if by_time else "epoch", disable=args.quiet)
    for epoch in range(1, epochs + 1):
        if by_time and loop.train_seconds >= budget_seconds:
            break
        t0 = loop.train_seconds
        try:
            trainer.run(per_epoch)
        except DivergenceError as e:  # not applied: the last good weights are kept
            tqdm.write(f"{name}: {e}")
            break
        tr_loss, tr_acc = (trainer.evaluate((xtr, ytr), 5000)[k] for k in ("loss", "accuracy"))
        te_acc = trainer.evaluate((xte, yte), 5000)["accuracy"]
        last = {k: col[-1] for k, col in trainer.history.steps.items() if k not in BOOKKEEPING}
        rec = dict(epoch=epoch, iteration=loop.iteration, seconds=loop.train_seconds,
                   seconds_per_iteration=(loop.train_seconds - t0) / per_epoch, **last,
                   train_loss=tr_loss, train_acc=tr_acc, test_acc=te_acc)
        history.append(rec)
        log(rec)
        bar.update((min(round(loop.train_seconds), int(budget_seconds)) if by_time else epoch)
                   - bar.n)
        bar.set_postfix(test=f"{te_acc:.4f}", loss=f"{tr_loss:.3f}")
    bar.close()
    return history


def admm_options(args, num_samples):
    """The admmirnn options given on the command line (the others keep admmirnn's defaults)."""
    kw = dict(rho=None if args.rho is None else tuple(args.rho), prox=args.prox,
              weight_decay=args.weight_decay, sweeps=args.sweeps, sweep=args.sweep,
              cg_steps=args.cg_steps, rho_schedule=args.rho_schedule,
              rho_growth=args.rho_growth)
    kw = {k: v for k, v in kw.items() if v is not None}
    if args.multipliers == "per-sample":
        kw.update(num_samples=num_samples, seq_len=28)
    return kw


def run_admm(args, xtr, ytr, xte, yte, log):
    tx = admm_jax.admmirnn(**admm_options(args, len(xtr)))
    return run(args, "ADMMiRNN", tx, xtr, ytr, xte, yte, log, epochs=args.max_epochs,
               budget_seconds=args.budget_seconds)


def run_adam(args, xtr, ytr, xte, yte, log):
    return run(args, "Adam", optax.adam(args.adam_lr), xtr, ytr, xte, yte, log,
               epochs=args.adam_epochs)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, hist in (("ADMMiRNN", result["admmirnn"]), ("Adam (BPTT)", result["adam"])):
        if not hist:
            continue
        t = [h["seconds"] for h in hist]
        axes[0].plot(t, [h["test_acc"] for h in hist], marker=".", label=name)
        axes[1].plot([h["epoch"] for h in hist], [h["test_acc"] for h in hist], marker=".",
                     label=name)
        axes[2].plot(t, [h["train_loss"] for h in hist], marker=".", label=name)
    ro = result.get("readout_only_reference")
    for ax in axes[:2]:
        if ro:
            ax.axhline(ro, color="grey", ls=":", label="readout on the random RNN")
        ax.axhline(0.85, color="red", ls="--", lw=0.8, label="bar 0.85")
        ax.set_ylabel("test accuracy (forward pass)")
        ax.legend()
    axes[0].set_xlabel("training seconds")
    axes[1].set_xlabel("epoch")
    axes[2].set_xlabel("training seconds")
    axes[2].set_ylabel("train loss (forward pass)")
    axes[2].set_yscale("log")
    fig.suptitle(f"row-MNIST, Elman H={result['args']['hidden']}, "
                 f"{result['args']['train_size']} training images, 10k test")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def readout_only(args, xtr, ytr, xte, yte):
    """Test accuracy of a ridge readout fitted on the random initial RNN's final states."""
    model = admm_jax.ElmanRNN(28, args.hidden, 10, rngs=nnx.Rngs(args.seed))
    p = _named(nnx.state(model, nnx.Param))
    from admm_jax.models.elman import elman_trace

    def feats(x):
        return np.concatenate([np.asarray(elman_trace(p, x[i:i + 5000]).h[:, -1])
                               for i in range(0, len(x), 5000)])

    h, ht = feats(xtr), feats(xte)
    phi = np.c_[h, np.ones(len(h))]
    theta = np.linalg.solve(phi.T @ phi + 1e-3 * np.eye(phi.shape[1]), phi.T @ np.eye(10)[ytr])
    return float(np.mean(np.argmax(np.c_[ht, np.ones(len(ht))] @ theta, 1) == yte))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"),
                    help="data root (default $ADMM_JAX_DATA)")
    ap.add_argument("--train-size", type=int, default=10_000, help="training subset size")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--budget-seconds", type=float, default=900.0,
                    help="ADMMiRNN training budget (evaluation excluded)")
    ap.add_argument("--max-epochs", type=int, default=10_000)
    # ADMM options: admmirnn's defaults unless given; the backward sweep was run with
    # --sweep backward --rho 10 10 1 --prox 0.1 --weight-decay 1 --multipliers per-sample
    ap.add_argument("--rho", type=float, nargs=3, default=None)
    ap.add_argument("--prox", type=float, default=None)
    ap.add_argument("--weight-decay", type=float, default=None)
    ap.add_argument("--sweeps", type=int, default=None)
    ap.add_argument("--sweep", default=None, choices=("coupled", "backward", "parallel"))
    ap.add_argument("--cg-steps", type=int, default=None)
    ap.add_argument("--rho-schedule", default=None,
                    choices=("fixed", "geometric", "linear", "balance"))
    ap.add_argument("--rho-growth", type=float, default=None)
    ap.add_argument("--multipliers", default="batch", choices=("per-sample", "batch"),
                    help="per-sample multipliers kept across epochs (backward and parallel "
                         "sweeps), or zero at every batch")
    ap.add_argument("--adam-epochs", type=int, default=5)
    ap.add_argument("--adam-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--tag", default="admm_mnist", help="file name stem of the outputs")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    xtr, ytr = mnist("train", layout="rows", data_dir=args.data_dir)
    xte, yte = mnist("test", layout="rows", data_dir=args.data_dir)
    xtr, ytr = xtr[:args.train_size], ytr[:args.train_size]

    def log(rec):
        if not args.quiet:
            tqdm.write(json.dumps({k: (round(v, 5) if isinstance(v, float) else v)
                                   for k, v in rec.items()}))

    result = dict(args={**vars(args), "out": str(args.out)},
                  admmirnn_options=admm_options(args, len(xtr)),
                  machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                               jax=jax.__version__, backend=jax.default_backend()))
    result["readout_only_reference"] = readout_only(args, xtr, ytr, xte, yte)
    result["admmirnn"] = run_admm(args, xtr, ytr, xte, yte, log)
    result["adam"] = run_adam(args, xtr, ytr, xte, yte, log) if args.adam_epochs else []

    adm, ada = result["admmirnn"], result["adam"]
    best = max(h["test_acc"] for h in adm)
    first85 = next((h["seconds"] for h in adm if h["test_acc"] >= 0.85), None)
    summary = dict(admm_best_test_acc=best, admm_final_test_acc=adm[-1]["test_acc"],
                   admm_seconds=adm[-1]["seconds"], admm_epochs=adm[-1]["epoch"],
                   admm_seconds_to_085=first85,
                   admm_seconds_per_iteration=float(np.median(
                       [h["seconds_per_iteration"] for h in adm])),
                   readout_only_test_acc=result["readout_only_reference"])
    if ada:
        summary.update(adam_final_test_acc=ada[-1]["test_acc"], adam_seconds=ada[-1]["seconds"],
                       adam_seconds_per_iteration=float(np.median(
                           [h["seconds_per_iteration"] for h in ada])))
        summary["admm_over_adam_seconds_per_iteration"] = (
            summary["admm_seconds_per_iteration"] / summary["adam_seconds_per_iteration"])
    result["summary"] = summary
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / f".{args.tag}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out / f"{args.tag}.json")  # a failed run never overwrites a good result
    plot(result, args.out / f"{args.tag}.png")
    print("\n| method | epochs | train s | s/iteration | final test acc | best test acc |")
    print("|---|---|---|---|---|---|")
    print(f"| ADMMiRNN | {adm[-1]['epoch']} | {adm[-1]['seconds']:.0f} | "
          f"{summary['admm_seconds_per_iteration']:.4f} | {adm[-1]['test_acc']:.4f} | "
          f"{best:.4f} |")
    if ada:
        print(f"| Adam | {ada[-1]['epoch']} | {ada[-1]['seconds']:.0f} | "
              f"{summary['adam_seconds_per_iteration']:.4f} | {ada[-1]['test_acc']:.4f} | "
              f"{max(h['test_acc'] for h in ada):.4f} |")
        print(f"ADMM/Adam seconds per iteration (same run): "
              f"{summary['admm_over_adam_seconds_per_iteration']:.2f}")
    print(f"readout fitted on the random initial RNN: {result['readout_only_reference']:.4f}")
    print(f"ADMMiRNN reached 0.85 after: {first85} s")
    print(f"wrote {args.out / (args.tag + '.json')} and {args.out / (args.tag + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
