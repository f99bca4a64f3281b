"""admm_preconditioned vs Adam vs admmirnn: test accuracy against epochs and seconds.

The three methods of one seed run side by side, round-robin a fraction of an epoch at a time,
so load on the machine slows all of them alike. Adam trains ``--adam-epochs`` epochs,
admm_preconditioned a budget from ``--pc-epochs`` and admmirnn until its training time reaches
Adam's. The default budgets are those that fit into Adam's 5-epoch time at the measured step
cost of admm_preconditioned: 4 or 5 epochs on row-MNIST (0.97-0.98x an Adam step), 3 or 4 on
IMDb (1.22x). Each gradient method's recipe is chosen first on a validation split (the last
10% of the training set, seed 0, the method's full budget):

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
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import admm_jax
from admm_jax import data

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
        return admm_jax.admmirnn(num_samples=n, seq_len=seq_len)
    return admm_jax.admm_preconditioned(lr(PC_LEARNING_RATES[0]), lr(PC_LEARNING_RATES[1]),
                                        weight_decay=recipe["weight_decay"])


@dataclass
class Run:
    """One method on one seed, advanced a chunk of steps at a time."""

    method: str
    x: np.ndarray
    y: np.ndarray
    tx: optax.GradientTransformationExtraArgs
    params: object
    seed: int
    batch_size: int
    evals: list = field(default_factory=list)
    epoch_loss: list = field(default_factory=list)
    max_steps: int | None = None  # the method's budget (None: until Adam's time)
    seconds: float = 0.0
    steps: int = 0
    diverged: bool = False

    def __post_init__(self):
        self.state = self.tx.init(self.params)
        self.rng = np.random.default_rng(self.seed)
        self.per_epoch = len(self.x) // self.batch_size
        self._losses: list = []
        self._perm = None
        tx = self.tx
        batch = not admm_jax.optimizers.needs_gradients(self.state)  # the state decides

        def loss_fn(p, xb, yb):
            o = admm_jax.elman_apply({k: p[k][...] for k in p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(o, yb).mean()

        def step(p, s, xb, yb, idx):
            if batch:  # the method's own forward pass reports the batch loss
                u, s = tx.update(None, s, p, inputs=xb, targets=yb, indices=idx)
                d = admm_jax.optimizers.diagnostics(s)
                loss = d["batch_loss"] if "batch_loss" in d else d["loss"]
            else:
                loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
                u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s, loss

        b = self.batch_size
        # compiled ahead of time, so no chunk's timing includes compilation
        self._step = jax.jit(step, donate_argnums=(0, 1)).lower(
            self.params, self.state, self.x[:b], self.y[:b], jnp.arange(b)).compile()

    @property
    def epoch(self) -> float:
        return self.steps / self.per_epoch

    @property
    def done(self) -> bool:
        return self.diverged or (self.max_steps is not None and self.steps >= self.max_steps)

    def chunk(self, steps: int) -> None:
        if self.max_steps is not None:
            steps = min(steps, self.max_steps - self.steps)
        t0 = time.perf_counter()
        for _ in range(steps):
            i = self.steps % self.per_epoch
            if i == 0:
                self._perm = self.rng.permutation(len(self.x))
            idx = self._perm[i * self.batch_size:(i + 1) * self.batch_size]
            self.params, self.state, loss = self._step(
                self.params, self.state, self.x[idx], self.y[idx], jnp.asarray(idx))
            self._losses.append(loss)
            self.steps += 1
            if self.steps % self.per_epoch == 0:
                mean = float(np.mean(jax.device_get(self._losses)))
                self.epoch_loss.append(mean)
                self._losses = []
                self.diverged = self.diverged or not np.isfinite(mean)
        jax.block_until_ready(self.params)
        self.seconds += time.perf_counter() - t0

    def evaluate(self, evaluate_fn, x, y) -> None:
        acc, loss = evaluate_fn({k: self.params[k][...] for k in self.params}, x, y)
        self.evals.append({"epoch": self.epoch, "time": self.seconds, "accuracy": float(acc),
                           "loss": float(loss)})


def make_evaluate(chunk: int):
    @jax.jit
    def part(p, x, y):
        o = admm_jax.elman_apply(p, x)
        return (jnp.sum(o.argmax(-1) == y),
                jnp.sum(optax.softmax_cross_entropy_with_integer_labels(o, y)))

    def evaluate(p, x, y):
        acc = loss = 0.0
        for i in range(0, len(x), chunk):  # every sample; a shorter last chunk compiles once
            a, lo = part(p, x[i:i + chunk], y[i:i + chunk])
            acc, loss = acc + float(a), loss + float(lo)
        return acc / len(x), loss / len(x)

    return evaluate


def new_params(in_features: int, hidden: int, classes: int, seed: int):
    model = admm_jax.ElmanRNN(in_features, hidden, classes, rngs=nnx.Rngs(seed))
    return nnx.state(model, nnx.Param)


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


def tune(args, xtr, ytr, in_features, classes, evaluate) -> tuple[dict, dict]:
    """Each method's recipe with the best validation accuracy at the end of its budget
    (seed 0; train on the first 90% of the training set, validate on the last 10%)."""
    n_val = len(xtr) // 10
    xa, ya, xv, yv = xtr[:-n_val], ytr[:-n_val], xtr[-n_val:], ytr[-n_val:]
    per_epoch = len(xa) // args.batch_size
    chosen, scores = {}, {}
    for method in args.methods:
        grid = recipes(method, args)
        if len(grid) == 1:
            chosen[method] = grid[0]
            continue
        scores[method] = []
        for recipe in tqdm(grid, desc=f"tuning {method}", leave=False):
            steps = budget(recipe, per_epoch)
            tx = make_tx(method, recipe, steps, len(xa), xa.shape[1])
            run = Run(method, xa, ya, tx, new_params(in_features, args.hidden, classes, 0), 0,
                      args.batch_size, max_steps=steps)
            run.chunk(steps)
            run.evaluate(evaluate, xv, yv)
            scores[method].append({**recipe, "validation_accuracy": run.evals[-1]["accuracy"]})
            tqdm.write(f"{method} {recipe}: validation accuracy {run.evals[-1]['accuracy']:.4f}")
        best = max(scores[method], key=lambda r: r["validation_accuracy"])
        chosen[method] = {k: v for k, v in best.items() if k != "validation_accuracy"}
    return chosen, scores


def eval_at(evals: list[dict], seconds: float) -> dict:
    """The last evaluation made at or before ``seconds`` of training."""
    return [e for e in evals if e["time"] <= seconds * (1 + 1e-9)][-1]


def compare(args, xtr, ytr, xte, yte, in_features, classes) -> dict:
    evaluate = make_evaluate(args.eval_chunk)
    chosen, scores = tune(args, xtr, ytr, in_features, classes, evaluate)
    for m, recipe in chosen.items():
        if recipe:
            print(f"{m}: chosen on validation {recipe}", flush=True)
    per_epoch = len(xtr) // args.batch_size
    seeds = {}
    for seed in range(args.seeds):
        runs = {}
        for m in args.methods:
            steps = budget(chosen[m], per_epoch)
            runs[m] = Run(m, xtr, ytr, make_tx(m, chosen[m], steps, len(xtr), xtr.shape[1]),
                          new_params(in_features, args.hidden, classes, seed), seed,
                          args.batch_size, max_steps=steps)
        for r in runs.values():
            r.evaluate(evaluate, xte, yte)
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
            r.evaluate(evaluate, xte, yte)
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
    evaluate = make_evaluate(args.eval_chunk)
    n = args.sweep_samples
    rows = []
    configs = [(lr, mu, adaptive) for lr in (0.1, 0.3, 1.0) for mu in (0.1, 0.01)
               for adaptive in (False, True)]
    for lr, mu, adaptive in tqdm(configs, desc="sweep"):
        tx = admm_jax.admm_preconditioned(lr, 10 * lr, prox=mu, adaptive_damping=adaptive)
        run = Run("admm_preconditioned", xtr[:n], ytr[:n], tx,
                  new_params(in_features, args.hidden, classes, 0), 0, args.batch_size)
        run.chunk(args.sweep_epochs * run.per_epoch)
        run.evaluate(evaluate, xte, yte)
        rows.append({"learning_rate": lr, "readout_learning_rate": 10 * lr, "prox": mu,
                     "adaptive_damping": adaptive, "test_accuracy": run.evals[-1]["accuracy"],
                     "epoch_loss": run.epoch_loss,
                     "max_loss_increase": max_spike(run.epoch_loss),
                     "final_damping": float(run.state.damping), "diverged": run.diverged})
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
