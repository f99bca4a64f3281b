"""admm_preconditioned vs Adam vs admmirnn: test accuracy against epochs and seconds.

The three methods of one seed run side by side, round-robin a fraction of an epoch at a time,
so load on the machine slows all of them alike; each is the run ``admm_jax.train.fit`` makes
(an ``admm_jax.train.Trainer``: fit's compiled step, batch order and training clock). Adam
trains ``--adam-epochs`` epochs, admm_preconditioned a budget from ``--pc-epochs`` and admmirnn
until its training time reaches Adam's. The default budgets are those that fit into Adam's
5-epoch time at the measured step cost of admm_preconditioned: 4 or 5 epochs on row-MNIST
(0.97-0.98x an Adam step), 3 or 4 on IMDb (1.22x). Each gradient method's recipe is chosen
first on a validation split (the last 10% of the training set, seed 0, the method's full
budget):

* Adam: learning rate in ``--adam-lrs`` x schedule in ``--schedules``;
* admm_preconditioned: its default learning rates x schedule in ``--schedules`` x
  ``weight_decay`` in ``--pc-weight-decays`` x epochs in ``--pc-epochs``;

a schedule is ``constant`` or ``cosine`` (``optax.cosine_decay_schedule`` to 0 over the
method's own budget). Per seed and method it records test accuracy after every chunk and the
mean training loss of every epoch, and reports:

* accuracy at Adam's final training time (each method's last evaluation at or before it;
  a method whose budget ended earlier keeps its final accuracy), mean over seeds;
* the largest epoch-to-epoch increase of the mean training loss (a loss spike);
* the bar of issue 10: mean accuracy of admm_preconditioned >= Adam's, and no seed of it with
  a loss spike larger than Adam's worst.

``--sweep`` instead runs the safeguard experiment behind ``adaptive_damping=True``:
admm_preconditioned at several learning rates and dampings, with and without it.

    python benchmarks/admm_preconditioned.py --data-dir ../shared/data            # row-MNIST
    python benchmarks/admm_preconditioned.py --data-dir ../shared/data --task imdb
    python benchmarks/admm_preconditioned.py --data-dir ../shared/data --sweep

Writes ``benchmarks/results/admm_preconditioned_<task>.{json,png}`` (or ``..._sweep.json``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import pathlib
from dataclasses import dataclass

import jax
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import admm_jax
from admm_jax import data
from admm_jax.train import DivergenceError, Trainer

RESULTS = pathlib.Path(__file__).parent / "results"
METHODS = ("admm_preconditioned", "adam", "admmirnn")
# admm_preconditioned's default learning rates, read from its signature: only the schedule,
# weight decay and budget are tuned
PC_LEARNING_RATES = tuple(inspect.signature(admm_jax.admm_preconditioned).parameters[k].default
                          for k in ("learning_rate", "readout_learning_rate"))


def load(task: str, data_dir, imdb_len: int, imdb_vocab: int):
    """``(x_train, y_train, x_test, y_test, in_features, classes)`` as numpy arrays."""
    if task == "mnist":
        xtr, ytr = data.mnist("train", data_dir=data_dir)
        xte, yte = data.mnist("test", data_dir=data_dir)
        return xtr, ytr, xte, yte, 28, 10
    tr = data.imdb("train", vocab_size=imdb_vocab, max_len=imdb_len, data_dir=data_dir)
    te = data.imdb("test", vocab_size=imdb_vocab, max_len=imdb_len, data_dir=data_dir)
    return tr.ids, tr.labels, te.ids, te.labels, imdb_vocab, 2


def make_tx(method: str, recipe: dict, steps: int, n: int, seq_len: int):
    """The optimizer of ``method``: ``recipe`` as chosen by :func:`tune` (``{}`` for
    admmirnn); ``steps`` is the budget a cosine schedule decays over."""

    def lr(value):
        return (optax.cosine_decay_schedule(value, steps) if recipe["schedule"] == "cosine"
                else value)

    if method == "adam":
        return optax.adam(lr(recipe["learning_rate"]))
    if method == "admmirnn":
        return admm_jax.admmirnn()
    return admm_jax.admm_preconditioned(lr(PC_LEARNING_RATES[0]), lr(PC_LEARNING_RATES[1]),
                                        weight_decay=recipe["weight_decay"])


@dataclass
class Run:
    """One method on one seed: fit's own run (:class:`admm_jax.train.Trainer`, its compiled
    step, batch order and training clock), advanced a chunk of steps at a time."""

    trainer: Trainer
    max_steps: int | None = None  # the method's budget (None: until Adam's time)
    diverged: bool = False

    @property
    def seconds(self) -> float:
        return self.trainer.loop.train_seconds

    @property
    def steps(self) -> int:
        return self.trainer.loop.iteration

    @property
    def done(self) -> bool:
        return self.diverged or (self.max_steps is not None and self.steps >= self.max_steps)

    def chunk(self, steps: int) -> None:
        if self.max_steps is not None:
            steps = min(steps, self.max_steps - self.steps)
        try:
            self.trainer.run(steps)
        except DivergenceError:  # not applied: the run keeps its last good weights
            self.diverged = True

    def evaluate(self, batch_size: int) -> dict:
        return self.trainer.evaluate(batch_size=batch_size)

    @property
    def epoch_loss(self) -> list[float]:
        return list(self.trainer.history.epochs.get("loss", []))

    @property
    def evals(self) -> list[dict]:
        e, per_epoch = self.trainer.history.evals, self.trainer.steps_per_epoch
        return [{"epoch": i / per_epoch, "time": t, "accuracy": a, "loss": lo}
                for i, t, a, lo in zip(e["iteration"], e["time"], e["accuracy"], e["loss"],
                                       strict=True)]


def new_run(args, method, recipe, seed, train, evaluation, in_features, classes) -> Run:
    """``method`` with ``recipe`` on ``train``, for its budget (``None`` for admmirnn)."""
    x, y = train
    steps = budget(recipe, len(x) // args.batch_size)
    tx = make_tx(method, recipe, steps, len(x), x.shape[1])
    model = admm_jax.ElmanRNN(in_features, args.hidden, classes, rngs=nnx.Rngs(seed))
    return Run(Trainer(model, tx, train, batch_size=args.batch_size, seed=seed,
                       evaluation_data=evaluation), steps)


def max_spike(epoch_loss: list[float]) -> float:
    """Largest epoch-to-epoch increase of the mean training loss (0 if it never rose)."""
    diffs = np.diff(epoch_loss)
    return float(max(0.0, diffs.max())) if len(diffs) else 0.0


def recipes(method: str, args) -> list[dict]:
    """The validation grid of ``method`` (one empty recipe for admmirnn: nothing to tune)."""
    if method == "adam":
        return [{"learning_rate": lr, "schedule": sc, "epochs": args.adam_epochs}
                for lr in args.adam_lrs for sc in args.schedules]
    if method == "admm_preconditioned":
        return [{"schedule": sc, "weight_decay": wd, "epochs": ep} for ep in args.pc_epochs
                for sc in args.schedules for wd in args.pc_weight_decays]
    return [{}]


def budget(recipe: dict, per_epoch: int) -> int | None:
    return int(round(recipe["epochs"] * per_epoch)) if recipe else None


def tune(args, xtr, ytr, in_features, classes) -> tuple[dict, dict]:
    """Each method's recipe with the best validation accuracy at the end of its budget
    (seed 0; train on the first 90% of the training set, validate on the last 10%)."""
    n_val = len(xtr) // 10
    xa, ya, xv, yv = xtr[:-n_val], ytr[:-n_val], xtr[-n_val:], ytr[-n_val:]
    chosen, scores = {}, {}
    for method in args.methods:
        grid = recipes(method, args)
        if len(grid) == 1:
            chosen[method] = grid[0]
            continue
        scores[method] = []
        for recipe in tqdm(grid, desc=f"tuning {method}", leave=False):
            run = new_run(args, method, recipe, 0, (xa, ya), (xv, yv), in_features, classes)
            run.chunk(run.max_steps)
            acc = run.evaluate(args.eval_chunk)["accuracy"] if not run.diverged else 0.0
            scores[method].append({**recipe, "validation_accuracy": acc})
            tqdm.write(f"{method} {recipe}: validation accuracy {acc:.4f}")
        best = max(scores[method], key=lambda r: r["validation_accuracy"])
        chosen[method] = {k: v for k, v in best.items() if k != "validation_accuracy"}
    return chosen, scores


def eval_at(evals: list[dict], seconds: float) -> dict:
    """The last evaluation made at or before ``seconds`` of training."""
    return [e for e in evals if e["time"] <= seconds * (1 + 1e-9)][-1]


def compare(args, xtr, ytr, xte, yte, in_features, classes) -> dict:
    chosen, scores = tune(args, xtr, ytr, in_features, classes)
    for m, recipe in chosen.items():
        if recipe:
            print(f"{m}: chosen on validation {recipe}", flush=True)
    per_epoch = len(xtr) // args.batch_size
    seeds = {}
    for seed in range(args.seeds):
        runs = {m: new_run(args, m, chosen[m], seed, (xtr, ytr), (xte, yte), in_features,
                           classes) for m in args.methods}
        for r in runs.values():
            r.evaluate(args.eval_chunk)
        adam = runs["adam"]
        chunk = max(1, per_epoch // args.evals_per_epoch)
        bar = tqdm(total=adam.max_steps, desc=f"seed {seed}", unit="adam step")
        while True:
            # Adam runs its budget; the others theirs, but never past Adam's final time
            active = [r for r in runs.values() if not r.done
                      and (not adam.done or r.seconds < adam.seconds)]
            if not active:
                break
            r = min(active, key=lambda r: r.seconds)  # the one furthest behind in time goes
            r.chunk(chunk)
            r.evaluate(args.eval_chunk)
            bar.update(adam.steps - bar.n)
            bar.set_postfix({m[:10]: f"{r.evals[-1]['accuracy']:.3f}" for m, r in runs.items()})
        bar.close()
        t_adam = adam.seconds
        seeds[seed] = {m: {"evals": r.evals, "epoch_loss": r.epoch_loss, "seconds": r.seconds,
                           "steps": r.steps, "seconds_per_step": r.seconds / max(r.steps, 1),
                           "accuracy_at_adam_time": eval_at(r.evals, t_adam)["accuracy"],
                           "epochs_at_adam_time": eval_at(r.evals, t_adam)["epoch"],
                           "max_loss_increase": max_spike(r.epoch_loss),
                           "diverged": r.diverged}
                       for m, r in runs.items()}
    return {"recipes": chosen, "validation": scores, "seeds": seeds}


def summarize(task: str, res: dict, args) -> dict:
    methods = list(res["seeds"][0])
    rows = {}
    for m in methods:
        per = [res["seeds"][s][m] for s in res["seeds"]]
        rows[m] = {
            "accuracy_at_adam_time_mean": float(np.mean([p["accuracy_at_adam_time"]
                                                         for p in per])),
            "accuracy_at_adam_time": [p["accuracy_at_adam_time"] for p in per],
            "epochs_at_adam_time": float(np.mean([p["epochs_at_adam_time"] for p in per])),
            "max_loss_increase": [p["max_loss_increase"] for p in per],
            "step_cost_vs_adam": float(np.mean([
                p["seconds_per_step"] / res["seeds"][s]["adam"]["seconds_per_step"]
                for s, p in zip(res["seeds"], per, strict=True)])),
        }
    print(f"\n{task}: after Adam's epoch {args.adam_epochs:g}, at equal training time "
          f"({args.seeds} seeds)")
    for m, recipe in res["recipes"].items():
        if recipe:
            print(f"  {m}: {recipe}")
    print(f"{'method':22s} {'test acc (mean)':>16s} {'per seed':>26s} {'epochs':>7s} "
          f"{'step cost':>9s} {'max loss rise/seed':>24s}")
    for m, r in rows.items():
        print(f"{m:22s} {r['accuracy_at_adam_time_mean']:16.4f} "
              f"{' '.join(f'{a:.4f}' for a in r['accuracy_at_adam_time']):>26s} "
              f"{r['epochs_at_adam_time']:7.2f} {r['step_cost_vs_adam']:8.2f}x "
              f"{' '.join(f'{a:.4f}' for a in r['max_loss_increase']):>24s}")
    out = {"rows": rows}
    if "admm_preconditioned" in rows and "adam" in rows:
        pc, adam = rows["admm_preconditioned"], rows["adam"]
        acc_ok = pc["accuracy_at_adam_time_mean"] >= adam["accuracy_at_adam_time_mean"]
        spike_ok = max(pc["max_loss_increase"]) <= max(adam["max_loss_increase"])
        out["bar"] = {"accuracy": acc_ok, "spikes": spike_ok}
        print(f"bar: mean accuracy >= Adam's: {'PASS' if acc_ok else 'FAIL'}; no loss spike "
              f"above Adam's worst: {'PASS' if spike_ok else 'FAIL'}")
    return out


def plot(task: str, res: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = {"admm_preconditioned": "C3", "adam": "C0", "admmirnn": "C2"}
    for s, per in res["seeds"].items():
        for m, r in per.items():
            ep = [e["epoch"] for e in r["evals"]]
            tm = [e["time"] for e in r["evals"]]
            acc = [e["accuracy"] for e in r["evals"]]
            label = m if s == 0 else None
            axes[0].plot(ep, acc, color=colors.get(m), alpha=0.8, label=label)
            axes[1].plot(tm, acc, color=colors.get(m), alpha=0.8, label=label)
    for ax, xl in zip(axes, ("epoch", "training seconds (this CPU)"), strict=True):
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
    lo = min(e["accuracy"] for per in res["seeds"].values() for r in per.values()
             for e in r["evals"][1:])
    axes[0].set_ylim(max(lo - 0.02, 0.0), 1.0)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend()
    fig.suptitle(f"{task}: admm_preconditioned vs Adam vs admmirnn "
                 f"({len(res['seeds'])} seeds, one line each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sweep(args, xtr, ytr, xte, yte, in_features, classes) -> dict:
    """Safeguard experiment: learning rate x prox x adaptive damping, ``--sweep-epochs`` epochs
    each on the first ``--sweep-samples`` training images."""
    n = args.sweep_samples
    rows = []
    configs = [(lr, mu, adaptive) for lr in (0.1, 0.3, 1.0) for mu in (0.1, 0.01)
               for adaptive in (False, True)]
    for lr, mu, adaptive in tqdm(configs, desc="sweep"):
        tx = admm_jax.admm_preconditioned(lr, 10 * lr, prox=mu, adaptive_damping=adaptive)
        model = admm_jax.ElmanRNN(in_features, args.hidden, classes, rngs=nnx.Rngs(0))
        run = Run(Trainer(model, tx, (xtr[:n], ytr[:n]), batch_size=args.batch_size,
                          evaluation_data=(xte, yte)))
        run.chunk(args.sweep_epochs * run.trainer.steps_per_epoch)
        run.evaluate(args.eval_chunk)
        rows.append({"learning_rate": lr, "readout_learning_rate": 10 * lr, "prox": mu,
                     "adaptive_damping": adaptive, "test_accuracy": run.evals[-1]["accuracy"],
                     "epoch_loss": run.epoch_loss,
                     "max_loss_increase": max_spike(run.epoch_loss),
                     "final_damping": float(run.trainer.loop.opt_state.damping),
                     "diverged": run.diverged,
                     "diverged_at": run.trainer.history.meta.get("diverged_at")})
        r = rows[-1]
        tqdm.write(f"lr {lr:<4g} mu {mu:<5g} adaptive {adaptive!s:5s}: test "
                   f"{r['test_accuracy']:.4f}, epoch losses "
                   f"{' '.join(f'{v:.3f}' for v in r['epoch_loss'])}, damping "
                   f"{r['final_damping']:.3g}")
    return {"samples": n, "epochs": args.sweep_epochs, "rows": rows}


def csv(kind):
    return lambda s: [kind(v) for v in s.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--task", choices=("mnist", "imdb"), default="mnist")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--adam-epochs", type=float, default=5.0)
    ap.add_argument("--adam-lrs", type=csv(float), default=[1e-3, 3e-3, 1e-2])
    ap.add_argument("--pc-epochs", type=csv(float), default=None,
                    help="admm_preconditioned's budgets to choose from on validation "
                         "(default 4,5 on row-MNIST, 3,4 on IMDb: what fits into Adam's time)")
    ap.add_argument("--pc-weight-decays", type=csv(float), default=[0.0, 0.3])
    ap.add_argument("--schedules", type=csv(str), default=["constant", "cosine"])
    ap.add_argument("--methods", type=csv(str), default=list(METHODS))
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--evals-per-epoch", type=int, default=8)
    ap.add_argument("--eval-chunk", type=int, default=2500)
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--imdb-len", type=int, default=100)
    ap.add_argument("--imdb-vocab", type=int, default=10000)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-samples", type=int, default=30000)
    ap.add_argument("--sweep-epochs", type=int, default=3)
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.pc_epochs is None:
        args.pc_epochs = [4.0, 5.0] if args.task == "mnist" else [3.0, 4.0]
    if "adam" not in args.methods:
        ap.error("--methods: must include adam (the other methods run for Adam's time)")
    if unknown := set(args.methods) - set(METHODS):
        ap.error(f"--methods: expected some of {', '.join(METHODS)}, got {sorted(unknown)}")
    if unknown := set(args.schedules) - {"constant", "cosine"}:
        ap.error(f"--schedules: expected constant and/or cosine, got {sorted(unknown)}")
    xtr, ytr, xte, yte, d, c = load(args.task, args.data_dir, args.imdb_len, args.imdb_vocab)
    if args.train_subset:
        xtr, ytr = xtr[:args.train_subset], ytr[:args.train_subset]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"task": args.task, "train": len(xtr), "test": len(xte), "hidden": args.hidden,
            "batch_size": args.batch_size, "devices": str(jax.devices()),
            "command": "python benchmarks/admm_preconditioned.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                if k in ("task", "seeds", "adam_epochs", "train_subset") and v is not None)
            + "".join(f" --{k.replace('_', '-')} {','.join(map(str, v))}"
                      for k, v in vars(args).items()
                      if k in ("adam_lrs", "pc_epochs", "pc_weight_decays", "schedules"))}
    if args.sweep:
        res = {"meta": meta, **sweep(args, xtr, ytr, xte, yte, d, c)}
        path = args.out / f"admm_preconditioned_{args.task}_sweep.json"
        path.write_text(json.dumps(res, indent=1))
        print(f"wrote {path}")
        return 0
    res = compare(args, xtr, ytr, xte, yte, d, c)
    res["summary"] = summarize(args.task, res, args)
    res["meta"] = {**meta, "adam_epochs": args.adam_epochs}
    stem = args.out / f"admm_preconditioned_{args.task}"
    tmp = stem.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(stem.with_suffix(".json"))
    plot(args.task, res, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
