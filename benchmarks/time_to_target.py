"""Time to target, AlgoPerf style: training methods against each other on one workload.

A comparison (``--compare``) is a method list with each method's recipe grid:

* ``kfac`` (default): admm_kfac vs Adam, Muon, admm_preconditioned and admmirnn, every method
  the same budget (``--epochs``) and the same number of recipes (learning rate x schedule).
* ``preconditioned``: admm_preconditioned vs Adam and admmirnn at equal training time. Adam
  trains ``--epochs`` (5) with its learning rate and schedule tuned; admm_preconditioned keeps
  its default learning rate and tunes its schedule, ``weight_decay`` (0 or 0.3) and its budget
  among those that fit into Adam's time at its step cost (4 or 5 epochs on row-MNIST, 3 or 4
  on IMDb); admmirnn has no budget. No method trains past Adam's final training time.
* ``novograd``: NovoGrad vs Adam and AdamW (decoupled weight decay 1e-2), constant learning
  rates from each one's own grid, hidden 64; the optimizer-state bytes beside the accuracy.

A workload is ``--task`` (row-MNIST, IMDb) x ``--model`` (the package's Elman RNN or LSTM)
x ``--hidden``. Protocol (one workload and comparison per call):

1. Tuning, seed 0: every recipe of a method (its grid, ``schedule`` ``constant`` or ``cosine``
   decay to 0 over its budget; admmirnn: its defaults, nothing to tune) trains for its full
   budget on the first 90% of the training set and is scored by its final accuracy on the
   last 10% (the validation split); the best one is kept.
2. Target: the mean over seeds of tuned Adam's best test accuracy within its budget, rounded
   down to 0.001, unless ``--target`` is given.
3. Every method with its chosen recipe, ``--seeds`` seeds, the same initial weights and batch
   order per seed, round-robin a fraction of an epoch at a time (the method furthest behind
   in training seconds goes next), so load on the machine slows all alike. Evaluation on the
   test set after every chunk, excluded from the training seconds. Each run is the one
   ``admm_jax.train.fit`` makes (an ``admm_jax.train.Trainer``: fit's compiled step, batch
   order and training clock); a non-finite step stops it with its last good weights.

Reported per method (mean +- std over seeds): training seconds to the target (a seed that
never reaches it counts as its full budget and is flagged), final accuracy, accuracy at Adam's
final training time, the largest increase of the chunk-mean training loss (a loss spike; the
epoch-to-epoch rises are in the JSON), the step cost relative to Adam's and the optimizer-state
bytes. Writes ``benchmarks/results/<comparison>_<task>_<model>.{json,md,png}``
(``time_to_target_...`` for ``kfac``; the JSON is written again after every tuning run and
seed, so a cut-short run keeps its finished rows, and a rerun of the same command but
``--seeds`` resumes it).

    python benchmarks/time_to_target.py --data-dir ../shared/data                # row-MNIST
    python benchmarks/time_to_target.py --data-dir ../shared/data --task imdb
    python benchmarks/time_to_target.py --data-dir ../shared/data --model lstm
    python benchmarks/time_to_target.py --data-dir ../shared/data --compare preconditioned
    python benchmarks/time_to_target.py --data-dir ../shared/data --compare novograd --model lstm
    python benchmarks/time_to_target.py --data-dir ../shared/data --smoke         # seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import numpy as np
import optax
from _harness import RESULTS, load_task, validation_split, write_results
from flax import nnx

import admm_jax
from admm_jax.train import DivergenceError, Trainer

MUON_ADAM_RATIO = 0.1  # Muon's AdamW fallback (biases) at 1/10 of Muon's learning rate
# a recipe's axes, in the order its grid is enumerated
AXES = ("epochs", "learning_rate", "schedule", "weight_decay")


@dataclass(frozen=True)
class Comparison:
    """The methods of a comparison and what it decides for them.

    grids: ``task -> {method: {axis: values}}`` over the :data:`AXES` but ``schedule``
    (``--schedules``, for every method with a learning rate); an ``epochs`` axis is the
    method's budget in epochs (``None``: until Adam's final training time), without one a
    method trains ``--epochs``. defaults: the command-line defaults of the comparison.
    until_adam: no method trains past Adam's final training time. equal_tuning: every tuned
    method gets the same number of recipes. prefix: of the result files.
    """

    methods: tuple[str, ...]
    grids: Callable[[str], dict[str, dict[str, tuple]]]
    defaults: dict
    prefix: str
    until_adam: bool = False
    equal_tuning: bool = False


COMPARISONS = {
    "kfac": Comparison(
        ("admm_kfac", "adam", "muon", "admm_preconditioned", "admmirnn"),
        lambda task: {"adam": {"learning_rate": (1e-3, 3e-3)},
                      "muon": {"learning_rate": (0.02, 0.05)},
                      "admm_kfac": {"learning_rate": (0.3, 0.5)},
                      "admm_preconditioned": {"learning_rate": (0.1, 0.3)}, "admmirnn": {}},
        dict(epochs=6.0, seeds=5, hidden=128, evals_per_epoch=4,
             schedules=["constant", "cosine"]),
        "time_to_target", equal_tuning=True),
    "preconditioned": Comparison(
        ("admm_preconditioned", "adam", "admmirnn"),
        lambda task: {"adam": {"learning_rate": (1e-3, 3e-3, 1e-2)},
                      "admm_preconditioned": {
                          "epochs": (4.0, 5.0) if task == "mnist" else (3.0, 4.0),
                          "learning_rate": (admm_jax.optimizers.default_learning_rate(
                              "admm_preconditioned"),),
                          "weight_decay": (0.0, 0.3)},
                      "admmirnn": {"epochs": (None,)}},
        dict(epochs=5.0, seeds=3, hidden=128, evals_per_epoch=8,
             schedules=["constant", "cosine"]),
        "admm_preconditioned", until_adam=True),
    "novograd": Comparison(
        ("novograd", "adam", "adamw"),
        lambda task: {"novograd": {"learning_rate": (3e-3, 1e-2, 3e-2, 1e-1),
                                   "weight_decay": (0.0,)},
                      "adam": {"learning_rate": (1e-3, 3e-3, 1e-2)},
                      "adamw": {"learning_rate": (1e-3, 3e-3, 1e-2), "weight_decay": (1e-2,)}},
        dict(epochs=2.0, seeds=3, hidden=64, evals_per_epoch=1, schedules=["constant"]),
        "novograd"),
}
# the flags that replace an axis of a method's grid, and their values' shape
GRID_FLAGS = {"learning_rate": ("--lrs", "LR,LR,..."),
              "weight_decay": ("--weight-decays", "WD,WD,..."),
              "epochs": ("--budgets", "EPOCHS,EPOCHS,...")}


def new_model(model: str, in_features: int, hidden: int, classes: int, seed: int,
              token_init: bool = False):
    if model == "lstm":
        return admm_jax.LSTM(in_features, hidden, classes, rngs=nnx.Rngs(seed))
    # token_init: U ~ N(0, 1), the scale for one-hot token inputs (else N(0, 1/vocabulary))
    return admm_jax.ElmanRNN(in_features, hidden, classes, rngs=nnx.Rngs(seed),
                             token_inputs=token_init)


def make_tx(method: str, recipe: dict, steps: int | None, n: int, seq_len: int, model, inputs):
    """The optimizer of ``method`` with ``recipe`` (``learning_rate``, ``schedule``,
    ``weight_decay``) for ``model``: the one place this benchmark builds one, from the public
    factories; ``steps`` is the budget a cosine schedule decays over (the K-FAC methods warm
    up first: ``admm_jax.optimizers.warmup``)."""
    lr, cosine = recipe.get("learning_rate"), recipe.get("schedule") == "cosine"
    wd = recipe.get("weight_decay")
    if method == "admmirnn":
        return admm_jax.admmirnn()
    if method in ("admm_kfac", "admm_preconditioned"):
        sched = admm_jax.optimizers.warmup(lr, steps if cosine else None)
        extra = {} if wd is None else {"weight_decay": wd}
        return getattr(admm_jax, method)(model, inputs, sched, **extra)
    sched = optax.cosine_decay_schedule(lr, steps) if cosine else lr
    if method == "adam":
        return optax.adam(sched)
    if method == "adamw":
        return optax.adamw(sched, weight_decay=wd)
    if method == "novograd":
        return admm_jax.novograd(sched, weight_decay=wd)
    adam_lr = (optax.cosine_decay_schedule(MUON_ADAM_RATIO * lr, steps) if cosine
               else MUON_ADAM_RATIO * lr)
    return optax.contrib.muon(sched, adam_learning_rate=adam_lr)


def tree_bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "dtype") and not jax.dtypes.issubdtype(x.dtype,
                                                                        jax.dtypes.prng_key)))


@dataclass
class Run:
    """One method on one seed: fit's own run (:class:`admm_jax.train.Trainer`, its compiled
    step, batch order and training clock), advanced a chunk of steps at a time up to its
    budget (``max_steps``; ``None``: until its caller stops stepping it)."""

    trainer: Trainer
    max_steps: int | None
    chunk_loss: list = field(default_factory=list)
    diverged: bool = False

    def __post_init__(self):
        self.state_bytes = tree_bytes(self.trainer.loop.opt_state)

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
            ran = self.trainer.run(steps)
        except DivergenceError:  # not applied: the run keeps its last good weights
            self.diverged = True
            return
        if ran:
            self.chunk_loss.append(float(np.mean(self.trainer.history.steps["loss"][-ran:])))

    def evaluate(self, batch_size: int) -> float:
        return self.trainer.evaluate(batch_size=batch_size)["accuracy"]

    @property
    def epoch_loss(self) -> list[float]:
        return list(self.trainer.history.epochs.get("loss", []))

    @property
    def evals(self) -> list[dict]:
        e, per_epoch = self.trainer.history.evals, self.trainer.steps_per_epoch
        return [{"epoch": round(i / per_epoch, 4), "time": t, "accuracy": a, "loss": lo}
                for i, t, a, lo in zip(e["iteration"], e["time"], e["accuracy"], e["loss"],
                                       strict=True)]


def new_run(args, ctx, method, recipe, seed, train, evaluation) -> Run:
    """``method`` with ``recipe`` on ``train`` for its budget: the recipe's ``epochs``
    (``None``: no budget), else ``args.epochs``."""
    x, y = train
    epochs = recipe.get("epochs", args.epochs)
    steps = None if epochs is None else int(epochs * (len(x) // args.batch_size))
    model = ctx["model"](seed)
    tx = make_tx(method, recipe, steps, len(x), x.shape[1], model, x[:1])
    return Run(Trainer(model, tx, train, batch_size=args.batch_size, seed=seed,
                       evaluation=evaluation), steps)


def max_spike(losses: list[float]) -> float:
    """Largest increase from one entry of ``losses`` to the next (0 if it never rose)."""
    d = np.diff(losses)
    return float(max(0.0, d.max())) if len(d) else 0.0


def recipes(method: str, axes: dict, schedules, smoke: bool = False,
            epochs: float | None = None) -> list[dict]:
    """The recipes of ``method``: the product of its ``axes`` (and ``schedules`` for a method
    with a learning rate) in the order of :data:`AXES`; ``smoke``: each axis's first value (and
    every schedule), budgets at most ``epochs``."""
    axes = dict(axes)
    if smoke:
        axes = {k: v[:1] for k, v in axes.items()}
        if axes.get("epochs", (None,))[0] is not None:
            axes["epochs"] = (min(axes["epochs"][0], epochs),)
    if "learning_rate" in axes:
        axes["schedule"] = tuple(schedules)
    keys = [k for k in AXES if k in axes]
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(axes[k] for k in keys))]


def time_to(evals: list[dict], target: float) -> float | None:
    return next((e["time"] for e in evals if e["accuracy"] >= target), None)


def eval_at(evals: list[dict], seconds: float) -> dict:
    """The last evaluation made at or before ``seconds`` of training."""
    return [e for e in evals if e["time"] <= seconds * (1 + 1e-9)][-1]


def tune(args, res, save, xtr, ytr, ctx) -> None:
    (xa, ya), (xv, yv) = validation_split(xtr, ytr)
    for m in args.methods:
        grid = recipes(m, args.grids[m], args.schedules, args.smoke, args.epochs)
        if m in res["recipes"]:
            continue
        if len(grid) == 1:
            res["recipes"][m] = grid[0]
            continue
        scores = res["validation"].setdefault(m, [])
        for recipe in grid[len(scores):]:
            run = new_run(args, ctx, m, recipe, 0, (xa, ya), (xv, yv))
            run.chunk(run.max_steps)
            acc = run.evaluate(args.eval_chunk) if not run.diverged else 0.0
            scores.append({**recipe, "validation_accuracy": acc, "seconds": run.seconds})
            print(f"tune {m} {recipe}: validation {acc:.4f} ({run.seconds:.0f} s)", flush=True)
            save()
        best = max(scores, key=lambda r: r["validation_accuracy"])
        res["recipes"][m] = {k: best[k] for k in AXES if k in best}
        save()


def run_seed(args, res, seed, xtr, ytr, xte, yte, ctx) -> dict:
    runs = {m: new_run(args, ctx, m, res["recipes"][m], seed, (xtr, ytr), (xte, yte))
            for m in args.methods}
    for r in runs.values():
        r.evaluate(args.eval_chunk)
    adam = runs["adam"]
    chunk = max(1, (len(xtr) // args.batch_size) // args.evals_per_epoch)
    # until_adam: once Adam is done, none trains past its final time (admmirnn: up to it)
    while active := [r for r in runs.values() if not r.done and not (
            ctx["until_adam"] and adam.done and r.seconds >= adam.seconds)]:
        r = min(active, key=lambda r: r.seconds)  # the one furthest behind in time goes
        r.chunk(chunk)
        r.evaluate(args.eval_chunk)
    return {m: {"evals": r.evals, "chunk_loss": r.chunk_loss, "epoch_loss": r.epoch_loss,
                "seconds": r.seconds, "steps": r.steps, "diverged": r.diverged,
                "state_bytes": r.state_bytes} for m, r in runs.items()}


def summarize(res: dict) -> dict:
    seeds = res["seeds"]
    methods = list(next(iter(seeds.values())))
    target = res["target"]
    out = {}

    def stats(name, values):
        return {f"{name}_mean": float(np.mean(values)), f"{name}_std": float(np.std(values))}

    for m in methods:
        per = [seeds[s][m] for s in seeds]
        t_adam = [seeds[s]["adam"]["seconds"] for s in seeds]
        t_hit = [time_to(p["evals"], target) for p in per]
        t_use = [p["seconds"] if t is None else t for t, p in zip(t_hit, per, strict=True)]
        at_adam = [eval_at(p["evals"], t) for p, t in zip(per, t_adam, strict=True)]
        finals = [p["evals"][-1]["accuracy"] for p in per]
        cost = [p["seconds"] / max(p["steps"], 1)
                / (seeds[s]["adam"]["seconds"] / seeds[s]["adam"]["steps"])
                for s, p in zip(seeds, per, strict=True)]
        out[m] = {
            **stats("seconds_to_target", t_use),
            "seeds_reaching_target": sum(t is not None for t in t_hit),
            "seconds_to_target": t_hit,
            **stats("final_accuracy", finals), "final_accuracy": finals,
            **stats("accuracy_at_adam_time", [e["accuracy"] for e in at_adam]),
            "accuracy_at_adam_time": [e["accuracy"] for e in at_adam],
            "epochs_at_adam_time": float(np.mean([e["epoch"] for e in at_adam])),
            "best_accuracy_mean": float(np.mean([max(e["accuracy"] for e in p["evals"])
                                                 for p in per])),
            "max_loss_spike": float(max(max_spike(p["chunk_loss"]) for p in per)),
            "max_epoch_loss_rise": [max_spike(p.get("epoch_loss", [])) for p in per],
            "step_cost_vs_adam": float(np.mean(cost)),
            "state_bytes": per[0].get("state_bytes"),
        }
    adam = out["adam"]["seconds_to_target_mean"]
    for m in methods:  # None when Adam's best was its untrained start (a tiny smoke run)
        out[m]["time_to_target_vs_adam"] = (out[m]["seconds_to_target_mean"] / adam
                                            if adam > 0 else None)
    return out


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def recipe_text(rec: dict) -> str:
    words = []
    if "learning_rate" in rec:
        words += [f"{rec['learning_rate']:g}", rec["schedule"]]
    if rec.get("weight_decay"):
        words.append(f"wd {rec['weight_decay']:g}")
    if "epochs" in rec:
        words.append("until Adam's time" if rec["epochs"] is None
                     else f"{rec['epochs']:g} epochs")
    return " ".join(words) or "defaults"


def table(res: dict) -> str:
    rows = res["summary"]
    head = ("| method | recipe | s to target (mean ± std) | seeds reaching | x Adam | "
            "final acc (mean ± std) | acc at Adam's time | largest loss spike | step cost | "
            "state bytes |")
    lines = [head, "|" + "---|" * 10]
    for m, r in rows.items():
        lines.append(
            f"| {m} | {recipe_text(res['recipes'][m])} | {r['seconds_to_target_mean']:.1f} ± "
            f"{r['seconds_to_target_std']:.1f} | {r['seeds_reaching_target']}/{len(res['seeds'])}"
            f" | {_ratio(r['time_to_target_vs_adam'])} | {r['final_accuracy_mean']:.4f} ± "
            f"{r['final_accuracy_std']:.4f} | {r['accuracy_at_adam_time_mean']:.4f} | "
            f"{r['max_loss_spike']:.3f} | {r['step_cost_vs_adam']:.2f}x | "
            f"{'-' if r['state_bytes'] is None else format(r['state_bytes'], ',')} |")
    return "\n".join(lines)


def plot(res: dict):
    """``fig -> None``: accuracy against epochs and against training seconds, one line per
    method and seed, the target dotted."""
    def draw(fig):
        fig.set_size_inches(12, 4.5)
        axes = fig.subplots(1, 2, sharey=True)
        for s, per in res["seeds"].items():
            for i, (m, r) in enumerate(per.items()):
                label = m if s == next(iter(res["seeds"])) else None
                for ax, key in zip(axes, ("epoch", "time"), strict=True):
                    ax.plot([e[key] for e in r["evals"]], [e["accuracy"] for e in r["evals"]],
                            color=f"C{i}", alpha=0.7, label=label)
        for ax, xl in zip(axes, ("epoch", "training seconds (evaluation excluded)"),
                          strict=True):
            ax.axhline(res["target"], color="k", ls=":", lw=1)
            ax.set_xlabel(xl)
            ax.grid(alpha=0.3)
        lo = min(e["accuracy"] for per in res["seeds"].values() for r in per.values()
                 for e in r["evals"][len(r["evals"]) // 4:])
        axes[0].set_ylim(max(lo - 0.01, 0.0), min(1.0, res["target"] + 0.02))
        axes[0].set_ylabel("test accuracy")
        axes[0].legend()
        fig.suptitle(f"{res['meta']['workload']}: time to target {res['target']:.3f} "
                     f"({len(res['seeds'])} seeds, one line each)")

    return draw


def _no_seeds(command: str) -> str:
    words = command.split()
    return " ".join(w for i, w in enumerate(words)
                    if w != "--seeds" and (i == 0 or words[i - 1] != "--seeds"))


def csv(kind):
    return lambda s: [kind(v) for v in s.split(",")]


def parse_grids(ap, args, comp: Comparison) -> dict:
    """The comparison's grids with ``--lrs``, ``--weight-decays`` and ``--budgets``
    (``METHOD=V,V,...``) replacing an axis of a method."""
    grids = {m: dict(axes) for m, axes in comp.grids(args.task).items()}
    tuned = [m for m in comp.methods if m != "admmirnn"]
    for axis, (flag, shape) in GRID_FLAGS.items():
        for spec in getattr(args, flag[2:].replace("-", "_")):
            m, _, vals = spec.partition("=")
            ok = tuned if axis != "epochs" else [t for t in tuned if t != "adam"]
            if m not in ok:
                ap.error(f"{flag}: expected METHOD={shape} with METHOD one of "
                         f"{', '.join(ok)}, got {spec!r}")
            try:
                values = tuple(float(v) for v in vals.split(","))
            except ValueError:
                values = (-1.0,)
            if min(values) < 0 or (axis != "weight_decay" and min(values) == 0):
                kind = "non-negative" if axis == "weight_decay" else "positive"
                ap.error(f"{flag}: expected {kind} numbers after {m}=, got {vals!r}")
            grids[m][axis] = values
    return grids


def grid_flags(args, default: dict) -> str:
    """The ``--lrs`` / ``--weight-decays`` / ``--budgets`` that differ from ``default``."""
    return "".join(f" {flag} {m}={','.join(f'{v:g}' for v in args.grids[m][axis])}"
                   for axis, (flag, _) in GRID_FLAGS.items() for m in args.methods
                   if m != "admmirnn" and args.grids[m].get(axis) != default[m].get(axis))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", choices=tuple(COMPARISONS), default="kfac",
                    help="the method list and its grids (default kfac)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--task", choices=("mnist", "imdb"), default="mnist")
    ap.add_argument("--model", choices=("elman", "lstm"), default="elman")
    ap.add_argument("--methods", type=csv(str), default=None,
                    help="a subset of the comparison's methods (default all)")
    ap.add_argument("--schedules", type=csv(str), default=None,
                    help="constant and/or cosine (default: the comparison's)")
    ap.add_argument("--epochs", type=float, default=None,
                    help="Adam's budget, and every method's without an epochs axis")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--lrs", action="append", default=[], metavar="METHOD=LR,LR,...",
                    help="replace METHOD's learning-rate grid (repeatable); with --compare "
                         "kfac every tuned method's grid must keep the same length")
    ap.add_argument("--weight-decays", action="append", default=[],
                    metavar="METHOD=WD,WD,...", help="replace METHOD's weight-decay grid")
    ap.add_argument("--budgets", action="append", default=[], metavar="METHOD=EPOCHS,...",
                    help="METHOD's budgets in epochs, one chosen on validation (not Adam's: "
                         "--epochs)")
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--evals-per-epoch", type=int, default=None)
    ap.add_argument("--eval-chunk", type=int, default=2500)
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--imdb-len", type=int, default=100)
    ap.add_argument("--imdb-vocab", type=int, default=10000)
    ap.add_argument("--token-init", action="store_true",
                    help="IMDb: build the Elman RNN with token_inputs=True (U ~ N(0, 1), the "
                         "scale for one-hot inputs) instead of U ~ N(0, 1/vocabulary)")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds: 2000 train / 500 test samples, hidden 16, 1 seed, "
                         "0.5 epoch, each grid axis's first value only")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = ap.parse_args(argv)
    comp = COMPARISONS[args.compare]
    for k, v in {"methods": list(comp.methods), **comp.defaults}.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.smoke:
        args.train_subset, args.test_subset = 2000, 500
        args.hidden, args.seeds, args.epochs, args.evals_per_epoch = 16, 1, 0.5, 2
    if "adam" not in args.methods:
        ap.error("--methods: must include adam (the target and the time reference)")
    if unknown := set(args.methods) - set(comp.methods):
        ap.error(f"--methods: expected some of {', '.join(comp.methods)}, got {sorted(unknown)}")
    if unknown := set(args.schedules) - {"constant", "cosine"}:
        ap.error(f"--schedules: expected constant and/or cosine, got {sorted(unknown)}")
    default = comp.grids(args.task)
    args.grids = parse_grids(ap, args, comp)
    counts = {m: len(recipes(m, args.grids[m], args.schedules)) for m in args.methods
              if m != "admmirnn"}
    if comp.equal_tuning and len(set(counts.values())) > 1:
        ap.error("--lrs: every tuned method needs the same number of recipes (learning rates "
                 "x weight decays x budgets: the same tuning budget), got "
                 + ", ".join(f"{m}: {c // len(args.schedules)}" for m, c in counts.items()))
    if args.token_init and args.task != "imdb":
        ap.error("--token-init: for token inputs (--task imdb) only")
    if args.model == "lstm" and args.task == "imdb":
        ap.error("--model lstm: row-MNIST only (admm_jax.LSTM takes float inputs)")
    if args.model == "lstm" and "admmirnn" in args.methods:
        args.methods.remove("admmirnn")  # ADMMiRNN is defined for the Elman RNN only
    task = load_task("row-mnist" if args.task == "mnist" else "imdb", data_dir=args.data_dir,
                     vocab_size=args.imdb_vocab,
                     seq_len=args.imdb_len if args.task == "imdb" else None,
                     train_subset=args.train_subset, test_subset=args.test_subset)
    (xtr, ytr), (xte, yte) = task.train, task.test
    workload = {"mnist": "row-MNIST", "imdb": "IMDb"}[args.task] + f" {args.model}-{args.hidden}"
    ctx = {"until_adam": comp.until_adam,
           "model": lambda seed: new_model(args.model, task.in_features, args.hidden,
                                           task.out_features, seed, args.token_init)}
    stem = (f"{comp.prefix}_{args.task}_{args.model}" + ("_tokeninit" if args.token_init else "")
            + ("_smoke" if args.smoke else ""))
    path = args.out / f"{stem}.json"
    command = "python benchmarks/time_to_target.py" + (
        f" --compare {args.compare}" if args.compare != "kfac" else "") + "".join(
        f" --{k.replace('_', '-')} {v if not isinstance(v, list) else ','.join(map(str, v))}"
        for k in ("task", "model", "methods", "schedules", "epochs", "seeds", "target",
                  "hidden", "batch_size", "evals_per_epoch", "eval_chunk", "train_subset",
                  "test_subset", "imdb_len", "imdb_vocab")
        if (v := getattr(args, k)) is not None) + " --token-init" * args.token_init + grid_flags(
        args, default)
    res = {"meta": {"workload": workload, "comparison": args.compare, "train": len(xtr),
                    "test": len(xte), "command": command, "grids": args.grids},
           "recipes": {}, "validation": {}, "seeds": {}, "target": args.target}
    if path.exists() and not args.smoke:  # resume
        old = json.loads(path.read_text())
        if _no_seeds(old.get("meta", {}).get("command", "")) == _no_seeds(command):
            res = old  # same settings but --seeds: keeps the finished seeds (and runs more)
            res["meta"]["command"] = command
            res["seeds"] = {int(k): v for k, v in res["seeds"].items()}
            print(f"resuming {path}: {len(res['recipes'])} recipes, "
                  f"{len(res['seeds'])} seeds done", flush=True)

    def save(**kwargs):
        write_results(args.out, stem, res, command, **kwargs)

    tune(args, res, save, xtr, ytr, ctx)
    print("recipes chosen on validation:", res["recipes"], flush=True)
    for seed in range(args.seeds):
        if seed in res["seeds"]:
            continue
        res["seeds"][seed] = run_seed(args, res, seed, xtr, ytr, xte, yte, ctx)
        finals = {m: r["evals"][-1]["accuracy"] for m, r in res["seeds"][seed].items()}
        print(f"seed {seed}: final accuracy {finals}", flush=True)
        save()
    if args.target is None:
        best = np.mean([max(e["accuracy"] for e in res["seeds"][s]["adam"]["evals"])
                        for s in res["seeds"]])
        res["target"] = math.floor(best * 1000) / 1000
    res["summary"] = summarize(res)
    res["table"] = table(res)
    print(f"{workload}, target {res['target']:.3f}")
    save(table=res["table"], plot=plot(res))
    print(f"wrote {path}, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
