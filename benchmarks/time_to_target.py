"""Time to target, AlgoPerf style: admm_kfac vs Adam, Muon, admm_preconditioned, admmirnn.

Protocol (one workload per call):

1. Tuning, seed 0: every method gets the same number of recipes (its learning rate x
   schedule, ``constant`` or ``cosine`` decay to 0 over its budget; admmirnn: its defaults,
   nothing to tune), each trained for the full budget on the first 90% of the training set
   and scored by its final accuracy on the last 10% (the validation split).
2. Target: the mean over seeds of tuned Adam's best test accuracy within its budget
   (``--epochs`` epochs), rounded down to 0.001, unless ``--target`` is given.
3. Every method with its chosen recipe, ``--seeds`` seeds, the same initial weights and batch
   order per seed, round-robin a fraction of an epoch at a time (the method furthest behind
   in training seconds goes next), so load on the machine slows all alike. Evaluation on the
   test set after every chunk, excluded from the training seconds. Each run is the one
   ``admm_jax.train.fit`` makes (an ``admm_jax.train.Trainer``: fit's compiled step, batch
   order and training clock); a non-finite step stops it with its last good weights.

Reported per method (mean +- std over seeds): training seconds to the target (a seed that
never reaches it counts as its full budget and is flagged), final accuracy at Adam's final
training time, the largest increase of the chunk-mean training loss (a loss spike), and the
step cost relative to Adam's. Writes ``benchmarks/results/time_to_target_<workload>.json``
(written again after every tuning run and seed, so a cut-short run keeps its finished rows)
and a PNG.

    python benchmarks/time_to_target.py --data-dir ../shared/data                # row-MNIST
    python benchmarks/time_to_target.py --data-dir ../shared/data --task imdb
    python benchmarks/time_to_target.py --data-dir ../shared/data --model lstm
    python benchmarks/time_to_target.py --data-dir ../shared/data --smoke         # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
from dataclasses import dataclass, field

import jax
import numpy as np
import optax
from flax import nnx

import admm_jax
from admm_jax import data
from admm_jax.train import DivergenceError, Trainer

RESULTS = pathlib.Path(__file__).parent / "results"
METHODS = ("admm_kfac", "adam", "muon", "admm_preconditioned", "admmirnn")
# each method's learning-rate grid (x the schedules): the same number of recipes for each
GRIDS = {"adam": (1e-3, 3e-3), "muon": (0.02, 0.05), "admm_kfac": (0.3, 0.5),
         "admm_preconditioned": (0.1, 0.3), "admmirnn": (None,)}
MUON_ADAM_RATIO = 0.1  # Muon's AdamW fallback (biases) at 1/10 of Muon's learning rate


def load(task: str, data_dir, imdb_len: int, imdb_vocab: int):
    """``(x_train, y_train, x_test, y_test, in_features, classes)`` as numpy arrays."""
    if task == "mnist":
        xtr, ytr = data.mnist("train", data_dir=data_dir)
        xte, yte = data.mnist("test", data_dir=data_dir)
        return (xtr.reshape(-1, 28, 28).astype(np.float32), ytr,
                xte.reshape(-1, 28, 28).astype(np.float32), yte, 28, 10)
    tr = data.imdb("train", vocab_size=imdb_vocab, max_len=imdb_len, data_dir=data_dir)
    te = data.imdb("test", vocab_size=imdb_vocab, max_len=imdb_len, data_dir=data_dir)
    return tr.ids, tr.labels, te.ids, te.labels, imdb_vocab, 2


def new_model(model: str, in_features: int, hidden: int, classes: int, seed: int,
              token_init: bool = False):
    if model == "lstm":
        return admm_jax.LSTM(in_features, hidden, classes, rngs=nnx.Rngs(seed))
    # token_init: U ~ N(0, 1), the scale for one-hot token inputs (else N(0, 1/vocabulary))
    return admm_jax.ElmanRNN(in_features, hidden, classes, rngs=nnx.Rngs(seed),
                             token_inputs=token_init)


def make_tx(method: str, recipe: dict, steps: int, n: int, seq_len: int, tokens: bool):
    """The optimizer of ``method`` with ``recipe`` (``learning_rate``, ``schedule``);
    ``steps`` is the budget a cosine schedule decays over."""
    lr = recipe.get("learning_rate")
    sched = (optax.cosine_decay_schedule(lr, steps) if recipe.get("schedule") == "cosine"
             else lr)
    if method == "adam":
        return optax.adam(sched)
    if method == "muon":
        adam_lr = (optax.cosine_decay_schedule(MUON_ADAM_RATIO * lr, steps)
                   if recipe.get("schedule") == "cosine" else MUON_ADAM_RATIO * lr)
        return optax.contrib.muon(sched, adam_learning_rate=adam_lr)
    if method == "admmirnn":
        return admm_jax.admmirnn()
    if method == "admm_preconditioned":
        ro = ((lambda c: 10.0 * sched(c)) if callable(sched) else 10.0 * sched)
        return admm_jax.admm_preconditioned(sched, ro)
    return admm_jax.admm_kfac(sched, token_inputs=tokens)


@dataclass
class Run:
    """One method on one seed: fit's own run (:class:`admm_jax.train.Trainer`, its compiled
    step, batch order and training clock), advanced a chunk of steps at a time up to a budget."""

    trainer: Trainer
    max_steps: int
    chunk_loss: list = field(default_factory=list)
    diverged: bool = False

    @property
    def seconds(self) -> float:
        return self.trainer.loop.train_seconds

    @property
    def steps(self) -> int:
        return self.trainer.loop.iteration

    @property
    def done(self) -> bool:
        return self.diverged or self.steps >= self.max_steps

    def chunk(self, steps: int) -> None:
        try:
            ran = self.trainer.run(min(steps, self.max_steps - self.steps))
        except DivergenceError:  # not applied: the run keeps its last good weights
            self.diverged = True
            return
        self.chunk_loss.append(float(np.mean(self.trainer.history.steps["loss"][-ran:])))

    def evaluate(self, batch_size: int) -> float:
        return self.trainer.evaluate(batch_size=batch_size)["accuracy"]

    @property
    def evals(self) -> list[dict]:
        e, per_epoch = self.trainer.history.evals, self.trainer.steps_per_epoch
        return [{"epoch": round(i / per_epoch, 4), "time": t, "accuracy": a}
                for i, t, a in zip(e["iteration"], e["time"], e["accuracy"], strict=True)]


def new_run(args, ctx, method, recipe, seed, train, evaluation) -> Run:
    """``method`` with ``recipe`` on ``train`` for ``args.epochs`` epochs."""
    x, y = train
    steps = int(args.epochs * (len(x) // args.batch_size))
    tx = make_tx(method, recipe, steps, len(x), x.shape[1], ctx["tokens"])
    return Run(Trainer(ctx["model"](seed), tx, train, batch_size=args.batch_size, seed=seed,
                       evaluation_data=evaluation), steps)


def max_spike(chunk_loss: list[float]) -> float:
    """Largest chunk-to-chunk increase of the mean training loss (0 if it never rose)."""
    d = np.diff(chunk_loss)
    return float(max(0.0, d.max())) if len(d) else 0.0


def recipes(method: str, schedules, smoke: bool = False, grids=None) -> list[dict]:
    if method == "admmirnn":
        return [{}]
    grid = (grids or GRIDS)[method]
    grid = grid[:1] if smoke else grid
    return [{"learning_rate": lr, "schedule": s} for lr in grid for s in schedules]


def time_to(evals: list[dict], target: float) -> float | None:
    return next((e["time"] for e in evals if e["accuracy"] >= target), None)


def eval_at(evals: list[dict], seconds: float) -> dict:
    return [e for e in evals if e["time"] <= seconds * (1 + 1e-9)][-1]


def save(res: dict, stem: pathlib.Path) -> None:
    tmp = stem.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(stem.with_suffix(".json"))


def tune(args, res, stem, xtr, ytr, ctx) -> None:
    n_val = len(xtr) // 10
    xa, ya, xv, yv = xtr[:-n_val], ytr[:-n_val], xtr[-n_val:], ytr[-n_val:]
    for m in args.methods:
        grid = recipes(m, args.schedules, args.smoke, args.grids)
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
            save(res, stem)
        best = max(scores, key=lambda r: r["validation_accuracy"])
        res["recipes"][m] = {k: best[k] for k in ("learning_rate", "schedule")}
        save(res, stem)


def run_seed(args, res, seed, xtr, ytr, xte, yte, ctx) -> dict:
    runs = {m: new_run(args, ctx, m, res["recipes"][m], seed, (xtr, ytr), (xte, yte))
            for m in args.methods}
    for r in runs.values():
        r.evaluate(args.eval_chunk)
    chunk = max(1, (len(xtr) // args.batch_size) // args.evals_per_epoch)
    while active := [r for r in runs.values() if not r.done]:
        r = min(active, key=lambda r: r.seconds)  # the one furthest behind in time goes
        r.chunk(chunk)
        r.evaluate(args.eval_chunk)
    return {m: {"evals": r.evals, "chunk_loss": r.chunk_loss, "seconds": r.seconds,
                "steps": r.steps, "diverged": r.diverged} for m, r in runs.items()}


def summarize(res: dict) -> dict:
    seeds = res["seeds"]
    methods = list(next(iter(seeds.values())))
    target = res["target"]
    out = {}
    for m in methods:
        per = [seeds[s][m] for s in seeds]
        t_hit = [time_to(p["evals"], target) for p in per]
        t_use = [p["seconds"] if t is None else t for t, p in zip(t_hit, per, strict=True)]
        at_adam = [eval_at(p["evals"], seeds[s]["adam"]["seconds"])["accuracy"]
                   for s, p in zip(seeds, per, strict=True)]
        cost = [p["seconds"] / max(p["steps"], 1)
                / (seeds[s]["adam"]["seconds"] / seeds[s]["adam"]["steps"])
                for s, p in zip(seeds, per, strict=True)]
        out[m] = {
            "seconds_to_target_mean": float(np.mean(t_use)),
            "seconds_to_target_std": float(np.std(t_use)),
            "seeds_reaching_target": sum(t is not None for t in t_hit),
            "seconds_to_target": t_hit,
            "final_accuracy_mean": float(np.mean([p["evals"][-1]["accuracy"] for p in per])),
            "final_accuracy_std": float(np.std([p["evals"][-1]["accuracy"] for p in per])),
            "accuracy_at_adam_time_mean": float(np.mean(at_adam)),
            "accuracy_at_adam_time_std": float(np.std(at_adam)),
            "best_accuracy_mean": float(np.mean([max(e["accuracy"] for e in p["evals"])
                                                 for p in per])),
            "max_loss_spike": float(max(max_spike(p["chunk_loss"]) for p in per)),
            "step_cost_vs_adam": float(np.mean(cost)),
        }
    adam = out["adam"]["seconds_to_target_mean"]
    for m in methods:  # None when Adam's best was its untrained start (a tiny smoke run)
        out[m]["time_to_target_vs_adam"] = (out[m]["seconds_to_target_mean"] / adam
                                            if adam > 0 else None)
    return out


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(res: dict) -> str:
    rows = res["summary"]
    head = ("| method | recipe | s to target (mean ± std) | seeds reaching | x Adam | "
            "final acc (mean ± std) | acc at Adam's time | largest loss spike | step cost |")
    lines = [head, "|" + "---|" * 9]
    for m, r in rows.items():
        rec = res["recipes"][m]
        rec = f"{rec['learning_rate']:g} {rec['schedule']}" if rec else "defaults"
        lines.append(
            f"| {m} | {rec} | {r['seconds_to_target_mean']:.1f} ± "
            f"{r['seconds_to_target_std']:.1f} | {r['seeds_reaching_target']}/{len(res['seeds'])}"
            f" | {_ratio(r['time_to_target_vs_adam'])} | {r['final_accuracy_mean']:.4f} ± "
            f"{r['final_accuracy_std']:.4f} | {r['accuracy_at_adam_time_mean']:.4f} | "
            f"{r['max_loss_spike']:.3f} | {r['step_cost_vs_adam']:.2f}x |")
    return "\n".join(lines)


def plot(res: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for s, per in res["seeds"].items():
        for i, (m, r) in enumerate(per.items()):
            label = m if s == next(iter(res["seeds"])) else None
            for ax, key in zip(axes, ("epoch", "time"), strict=True):
                ax.plot([e[key] for e in r["evals"]], [e["accuracy"] for e in r["evals"]],
                        color=f"C{i}", alpha=0.7, label=label)
    for ax, xl in zip(axes, ("epoch", "training seconds (evaluation excluded)"), strict=True):
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _no_seeds(command: str) -> str:
    words = command.split()
    return " ".join(w for i, w in enumerate(words)
                    if w != "--seeds" and (i == 0 or words[i - 1] != "--seeds"))


def csv(kind):
    return lambda s: [kind(v) for v in s.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--task", choices=("mnist", "imdb"), default="mnist")
    ap.add_argument("--model", choices=("elman", "lstm"), default="elman")
    ap.add_argument("--methods", type=csv(str), default=list(METHODS))
    ap.add_argument("--schedules", type=csv(str), default=["constant", "cosine"])
    ap.add_argument("--epochs", type=float, default=6.0, help="every method's budget")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--lrs", action="append", default=[], metavar="METHOD=LR,LR,...",
                    help="replace METHOD's learning-rate grid (repeatable); every tuned "
                         "method's grid must keep the same length")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--evals-per-epoch", type=int, default=4)
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
                         "0.5 epoch, each method's first learning rate only")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.train_subset, args.test_subset = 2000, 500
        args.hidden, args.seeds, args.epochs, args.evals_per_epoch = 16, 1, 0.5, 2
    if "adam" not in args.methods:
        ap.error("--methods: must include adam (the target and the time reference)")
    if unknown := set(args.methods) - set(METHODS):
        ap.error(f"--methods: expected some of {', '.join(METHODS)}, got {sorted(unknown)}")
    if unknown := set(args.schedules) - {"constant", "cosine"}:
        ap.error(f"--schedules: expected constant and/or cosine, got {sorted(unknown)}")
    args.grids = {m: list(g) for m, g in GRIDS.items()}
    for spec in args.lrs:
        m, _, vals = spec.partition("=")
        if m not in GRIDS or m == "admmirnn":
            ap.error(f"--lrs: expected METHOD=LR,LR,... with METHOD one of "
                     f"{', '.join(m for m in METHODS if m != 'admmirnn')}, got {spec!r}")
        try:
            args.grids[m] = [float(v) for v in vals.split(",")]
        except ValueError:
            ap.error(f"--lrs: expected positive numbers after {m}=, got {vals!r}")
        if min(args.grids[m]) <= 0:
            ap.error(f"--lrs: expected positive numbers after {m}=, got {vals!r}")
    if len({len(args.grids[m]) for m in args.methods if m != "admmirnn"}) > 1:
        ap.error("--lrs: every tuned method needs the same number of learning rates (the "
                 "same tuning budget), got " + ", ".join(
                     f"{m}: {len(args.grids[m])}" for m in args.methods if m != "admmirnn"))
    if args.token_init and args.task != "imdb":
        ap.error("--token-init: for token inputs (--task imdb) only")
    if args.model == "lstm" and args.task == "imdb":
        ap.error("--model lstm: row-MNIST only (admm_jax.LSTM takes float inputs)")
    if args.model == "lstm" and "admmirnn" in args.methods:
        args.methods.remove("admmirnn")  # ADMMiRNN is defined for the Elman RNN only
    xtr, ytr, xte, yte, d, c = load(args.task, args.data_dir, args.imdb_len, args.imdb_vocab)
    if args.train_subset:
        xtr, ytr = xtr[:args.train_subset], ytr[:args.train_subset]
    if args.test_subset:
        xte, yte = xte[:args.test_subset], yte[:args.test_subset]
    workload = {"mnist": "row-MNIST", "imdb": "IMDb"}[args.task] + f" {args.model}-{args.hidden}"
    ctx = {"tokens": args.task == "imdb",
           "model": lambda seed: new_model(args.model, d, args.hidden, c, seed,
                                           args.token_init)}
    args.out.mkdir(parents=True, exist_ok=True)
    name = (f"{args.task}_{args.model}" + ("_tokeninit" if args.token_init else "")
            + ("_smoke" if args.smoke else ""))
    stem = args.out / f"time_to_target_{name}"
    command = "python benchmarks/time_to_target.py " + " ".join(
        f"--{k.replace('_', '-')} {v if not isinstance(v, list) else ','.join(map(str, v))}"
        for k, v in vars(args).items()
        if k not in ("data_dir", "out", "smoke", "lrs", "grids", "token_init")
        and v is not None) + " --token-init" * args.token_init + "".join(
        f" --lrs {m}={','.join(f'{v:g}' for v in args.grids[m])}" for m in args.methods
        if m != "admmirnn" and args.grids[m] != list(GRIDS[m]))
    res = {"meta": {"workload": workload, "train": len(xtr), "test": len(xte),
                    "command": command, "grids": args.grids, "devices": str(jax.devices())},
           "recipes": {}, "validation": {}, "seeds": {}, "target": args.target}
    if stem.with_suffix(".json").exists() and not args.smoke:  # resume
        old = json.loads(stem.with_suffix(".json").read_text())
        if _no_seeds(old.get("meta", {}).get("command", "")) == _no_seeds(command):
            res = old  # same settings but --seeds: keeps the finished seeds (and runs more)
            res["meta"]["command"] = command
            res["seeds"] = {int(k): v for k, v in res["seeds"].items()}
            print(f"resuming {stem}.json: {len(res['recipes'])} recipes, "
                  f"{len(res['seeds'])} seeds done", flush=True)
    tune(args, res, stem, xtr, ytr, ctx)
    print("recipes chosen on validation:", res["recipes"], flush=True)
    for seed in range(args.seeds):
        if seed in res["seeds"]:
            continue
        res["seeds"][seed] = run_seed(args, res, seed, xtr, ytr, xte, yte, ctx)
        finals = {m: r["evals"][-1]["accuracy"] for m, r in res["seeds"][seed].items()}
        print(f"seed {seed}: final accuracy {finals}", flush=True)
        save(res, stem)
    if args.target is None:
        best = np.mean([max(e["accuracy"] for e in res["seeds"][s]["adam"]["evals"])
                        for s in res["seeds"]])
        res["target"] = math.floor(best * 1000) / 1000
    res["summary"] = summarize(res)
    res["table"] = table(res)
    save(res, stem)
    plot(res, stem.with_suffix(".png"))
    print(f"{workload}, target {res['target']:.3f}\n{res['table']}\nwrote {stem}.json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
