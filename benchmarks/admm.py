"""ADMMiRNN (Tang et al., ECML-PKDD 2020) against gradient methods: row-MNIST, the stability
study, next character of text, and the penalty schedule.

Every run is an ``admm_jax.train.Trainer`` (fit's checks, compiled step, batch order and
training clock); training seconds exclude compilation and evaluation. Each case writes
``<out>/<tag>.{json,md,png}`` through the harness's writer (the full command and the commit in
the JSON's ``meta``).

``mnist``: ADMMiRNN on row-MNIST, with optax Adam on the same model and data as the reference
line. Each image is a sequence of T=28 rows of d=28 pixels; an Elman RNN (H=128, tanh) reads it
and classifies from the last state. ADMMiRNN trains from a random initialisation (no gradient
warm start) on a training subset (default 10,000 images, mini-batches of 128), for a wall-clock
budget; quality is always the forward pass of the weights on the full 10k test set, never the
auxiliary variables. Logged per epoch: augmented Lagrangian, primal residuals |r1| |r2| |r3|,
dual residual, forward-pass train loss and accuracy, test accuracy, seconds per iteration and
cumulative training seconds. Also: the test accuracy of a ridge readout fitted on the random
initial RNN's final states (what the recurrent weights must beat).

``stability``: the paper's stability claim as a table. Tang et al. say ADMMiRNN trains RNNs
"more stably without gradient vanishing or exploding" and is less sensitive to the
initialisation of weights and biases. Every cell is (task, initial scale g, method), 3 seeds
(model initialisation and batch order), ``--budget-seconds`` of training each: the adding task
at T = 50, 100, 200 and row-MNIST (T = 28); the Elman model's ``W`` rescaled to spectral radius
``g`` in 0.5, 1, 1.5, 2, 3 and its ``U`` multiplied by ``g``; ``admmirnn`` (its defaults),
``sgd`` (lr 0.1), ``sgd_clip`` (lr 0.1, gradients clipped to global norm 1), ``adam`` (lr 1e-3).
**Converged** (fixed before any run): no non-finite step, and the final test metric at the
task's bar: test MSE <= 0.05 on the adding task (predicting the mean gives ~0.167), test
accuracy >= 0.8 on row-MNIST. Per cell the table gives the seeds that converged, the median
final metric (min-max over seeds) and the runs that diverged; every run's trajectory of the
gradient norm (gradient methods) or of ADMM's ``|r1|`` and dual residual, and of the training
loss, is kept in the JSON (at most 60 points each).

``text``: a many-to-many classification task, the next character of IMDb review text (the
``text`` task of ``admm_jax.tasks``, T=25 characters per window, a loss at every step, on the
first ``--reviews`` training reviews, the last 10% of windows held out). An Elman RNN (H=128)
per method for ``--budget-seconds`` of training, the methods stepped in turn (the one furthest
behind in training time next, as ``admm-jax compare`` does), batch 32, same initial weights and
batches; the held-out loss (nats per character) at ``--eval-points`` times; the uniform
prediction's loss is ``ln V``. Issue 28's bar: after 40 s the ADMMiRNN default's held-out loss
ends below plain SGD's (lr 0.1) and far below the uniform-prediction loss.

``schedule``: ADMMiRNN's penalty schedule (its step decay after the first epochs) chosen on a
validation split of row-MNIST. The coupled iteration's weight steps scale like ``1/rho``, so a
growing ``rho`` is a decaying step. Candidates ``admmirnn(rho_schedule=..., rho_growth=...)``:
``fixed``; ``geometric:<g>`` (``rho *= g`` per iteration); ``linear:<g>`` (``rho = rho_0 (1 +
(g - 1) k)`` after ``k`` iterations, a step decaying like ``1/k``). The first 50,000 training
images train, the last 10,000 validate (the test set is not looked at); H=128, batch 128,
``--budget-seconds`` per candidate, validation accuracy after every epoch; the best final
validation accuracy is reported.

``stability`` and ``schedule`` are resumable: each finished run is written to the JSON at once,
and a rerun with the same settings skips the runs already there (other settings: refused; use
another ``--tag`` or delete the file).

    python benchmarks/admm.py mnist --data-dir "$ADMM_JAX_DATA"            # ~15 min + Adam
    python benchmarks/admm.py mnist --budget-seconds 60 --adam-epochs 1    # quick look
    python benchmarks/admm.py stability --data-dir "$ADMM_JAX_DATA"        # ~45 min on 2 cores
    python benchmarks/admm.py stability --smoke --out /tmp/stab            # seconds
    python benchmarks/admm.py text --data-dir "$ADMM_JAX_DATA"             # ~2 min on 2 cores
    python benchmarks/admm.py text --smoke --out /tmp/text                 # seconds
    python benchmarks/admm.py schedule --data-dir "$ADMM_JAX_DATA"         # 5 x 300 s + eval
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import shutil
import sys
import tempfile

import numpy as np
from _harness import (
    RESULTS,
    command,
    imdb_text_task,
    load_task,
    make_optimizer,
    stopwatch,
    write_json,
    write_results,
)

# ---------------------------------------------------------------------------- shared


def train_epochs(trainer, on_epoch, *, budget_seconds=None, max_epochs=None):
    """Train ``trainer`` an epoch at a time until ``max_epochs`` epochs or ``budget_seconds`` of
    training, calling ``on_epoch(epoch, training seconds before it)`` after each; return the
    ``DivergenceError`` that stopped it (its step not applied: the last good weights kept), or
    ``None``."""
    from admm_jax.train import DivergenceError

    epoch = 0
    while ((max_epochs is None or epoch < max_epochs)
           and (budget_seconds is None or trainer.loop.train_seconds < budget_seconds)):
        before = trainer.loop.train_seconds
        try:
            trainer.run(trainer.steps_per_epoch)
        except DivergenceError as e:
            return e
        epoch += 1
        on_epoch(epoch, before)
    return None


def resumable(path: pathlib.Path, config: dict) -> dict:
    """The results in ``path`` (``{"config", "runs"}``) if it was run with ``config``, an
    empty one if there is none; another ``config``: refused."""
    if not path.exists():
        return {"config": config, "runs": {}}
    res = json.loads(path.read_text())
    res.pop("meta", None)  # the writer records this call's command and commit
    if res.get("config") != config:
        raise SystemExit(f"{path} holds results of other settings ({res.get('config')}); use "
                         "another --tag or --out, or delete it to start over")
    return res


def check_methods(methods: list[str], known) -> None:
    for m in methods:
        if m not in known:
            raise SystemExit(f"--methods: unknown method {m!r}; expected some of {list(known)}")


def names(spec: str) -> list[str]:
    """The comma-separated names of ``spec``, stripped, empty ones dropped."""
    return [n.strip() for n in spec.split(",") if n.strip()]


# ---------------------------------------------------------------------------- mnist

BOOKKEEPING = ("iteration", "epoch", "seconds", "time", "loss", "accuracy")


def mnist_run(args, name, tx, task, log, *, epochs, budget_seconds=None):
    """``tx`` on the Elman RNN, an epoch at a time until ``epochs`` or ``budget_seconds``;
    after every epoch the forward-pass train loss and accuracy, the test accuracy and the last
    step's diagnostics (ADMMiRNN: Lagrangian, residuals) are logged."""
    from tqdm import tqdm

    from admm_jax.train import Trainer

    (xtr, ytr), (xte, yte) = task.train, task.test
    trainer = Trainer(task.model(args.hidden, seed=args.seed), tx, (xtr, ytr),
                      batch_size=args.batch_size, seed=args.seed)
    loop = trainer.loop
    history = []
    by_time = budget_seconds is not None
    bar = tqdm(total=int(budget_seconds) if by_time else epochs, desc=name,
               unit="s" if by_time else "epoch", disable=args.quiet)

    def on_epoch(epoch, before):
        tr_loss, tr_acc = (trainer.evaluate((xtr, ytr), 5000)[k] for k in ("loss", "accuracy"))
        te_acc = trainer.evaluate((xte, yte), 5000)["accuracy"]
        last = {k: col[-1] for k, col in trainer.history.steps.items() if k not in BOOKKEEPING}
        rec = dict(epoch=epoch, iteration=loop.iteration, seconds=loop.train_seconds,
                   seconds_per_iteration=(loop.train_seconds - before) / trainer.steps_per_epoch,
                   **last, train_loss=tr_loss, train_acc=tr_acc, test_acc=te_acc)
        history.append(rec)
        log(rec)
        bar.update((min(round(loop.train_seconds), int(budget_seconds)) if by_time else epoch)
                   - bar.n)
        bar.set_postfix(test=f"{te_acc:.4f}", loss=f"{tr_loss:.3f}")

    err = train_epochs(trainer, on_epoch, budget_seconds=budget_seconds, max_epochs=epochs)
    if err is not None:
        tqdm.write(f"{name}: {err}")
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


def readout_only(args, task):
    """Test accuracy of a ridge readout fitted on the random initial RNN's final states."""
    from flax import nnx

    from admm_jax.models.elman import elman_trace

    params = nnx.state(task.model(args.hidden, seed=args.seed), nnx.Param)
    p = {k: params[k][...] for k in ("U", "W", "b", "V", "c")}

    def feats(x):
        return np.concatenate([np.asarray(elman_trace(p, x[i:i + 5000]).h[:, -1])
                               for i in range(0, len(x), 5000)])

    (xtr, ytr), (xte, yte) = task.train, task.test
    h, ht = feats(xtr), feats(xte)
    phi = np.c_[h, np.ones(len(h))]
    theta = np.linalg.solve(phi.T @ phi + 1e-3 * np.eye(phi.shape[1]), phi.T @ np.eye(10)[ytr])
    return float(np.mean(np.argmax(np.c_[ht, np.ones(len(ht))] @ theta, 1) == yte))


def mnist(args, cmd: str) -> int:
    import jax
    import optax
    from tqdm import tqdm

    import admm_jax

    task = load_task("row-mnist", data_dir=args.data_dir, train_subset=args.train_size)

    def log(rec):
        if not args.quiet:
            tqdm.write(json.dumps({k: (round(v, 5) if isinstance(v, float) else v)
                                   for k, v in rec.items()}))

    n_train = len(task.train[0])
    result = dict(args={**vars(args), "out": str(args.out)},
                  admmirnn_options=admm_options(args, n_train),
                  machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                               jax=jax.__version__, backend=jax.default_backend()))
    result["readout_only_reference"] = readout_only(args, task)
    result["admmirnn"] = mnist_run(args, "ADMMiRNN",
                                   admm_jax.admmirnn(**admm_options(args, n_train)), task, log,
                                   epochs=args.max_epochs, budget_seconds=args.budget_seconds)
    result["adam"] = (mnist_run(args, "Adam", optax.adam(args.adam_lr), task, log,
                                epochs=args.adam_epochs) if args.adam_epochs else [])

    adm, ada = result["admmirnn"], result["adam"]
    best = max(h["test_acc"] for h in adm)
    first85 = next((h["seconds"] for h in adm if h["test_acc"] >= 0.85), None)
    summary = dict(admm_best_test_acc=best, admm_final_test_acc=adm[-1]["test_acc"],
                   admm_seconds=adm[-1]["seconds"], admm_epochs=adm[-1]["epoch"],
                   admm_seconds_to_085=first85,
                   admm_seconds_per_iteration=float(np.median(
                       [h["seconds_per_iteration"] for h in adm])),
                   readout_only_test_acc=result["readout_only_reference"])
    lines = ["| method | epochs | train s | s/iteration | final test acc | best test acc |",
             "|---|---|---|---|---|---|",
             f"| ADMMiRNN | {adm[-1]['epoch']} | {adm[-1]['seconds']:.0f} | "
             f"{summary['admm_seconds_per_iteration']:.4f} | {adm[-1]['test_acc']:.4f} | "
             f"{best:.4f} |"]
    if ada:
        summary.update(adam_final_test_acc=ada[-1]["test_acc"], adam_seconds=ada[-1]["seconds"],
                       adam_seconds_per_iteration=float(np.median(
                           [h["seconds_per_iteration"] for h in ada])))
        summary["admm_over_adam_seconds_per_iteration"] = (
            summary["admm_seconds_per_iteration"] / summary["adam_seconds_per_iteration"])
        lines.append(f"| Adam | {ada[-1]['epoch']} | {ada[-1]['seconds']:.0f} | "
                     f"{summary['adam_seconds_per_iteration']:.4f} | "
                     f"{ada[-1]['test_acc']:.4f} | {max(h['test_acc'] for h in ada):.4f} |")
        lines += ["", "ADMM/Adam seconds per iteration (same run): "
                      f"{summary['admm_over_adam_seconds_per_iteration']:.2f}"]
    lines += ["", "readout fitted on the random initial RNN: "
                  f"{result['readout_only_reference']:.4f}",
              "", f"ADMMiRNN reached 0.85 after: {first85} s"]
    result["summary"] = summary
    # a failed run never overwrites a good result: the writer replaces each file whole, last
    write_results(args.out, args.tag, result, cmd, table="\n".join(lines),
                  plot=lambda fig: mnist_plot(fig, result))
    print(f"wrote {args.out / (args.tag + '.json')}, .md and .png")
    return 0


def mnist_plot(fig, result):
    fig.set_size_inches(15, 4)
    axes = fig.subplots(1, 3)
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


# ---------------------------------------------------------------------------- stability

SCALES = (0.5, 1.0, 1.5, 2.0, 3.0)
STABILITY_METHODS = {"admmirnn": {}, "sgd": {"learning_rate": 0.1},
                     "sgd_clip": {"learning_rate": 0.1, "clip_norm": 1.0},
                     "adam": {"learning_rate": 1e-3}}
STABILITY_TASKS = ("adding-50", "adding-100", "adding-200", "row-mnist")
BARS = {"mse": 0.05, "accuracy": 0.8}  # converged: final test metric at or past this
TRAJECTORY_POINTS = 60


def stability_task(name: str, args):
    """``adding-<T>`` or ``row-mnist`` at the study's sizes (through the harness)."""
    if name.startswith("adding-"):
        return load_task("adding", seq_len=int(name.split("-")[1]), num_train=args.num_train,
                         num_test=args.num_test, seed=0)
    if name == "row-mnist":
        return load_task("row-mnist", data_dir=args.data_dir, test_subset=args.test_subset)
    raise ValueError(f"--tasks: unknown task {name!r}; expected adding-<T> or row-mnist")


def scaled_model(task, hidden: int, scale: float, seed: int):
    """The task's Elman model with ``W`` at spectral radius ``scale`` and ``U`` times
    ``scale``."""
    model = task.model(hidden, seed=seed)
    w = np.asarray(model.W[...])
    radius = float(np.max(np.abs(np.linalg.eigvals(w))))
    model.W[...] = (w * (scale / radius)).astype(w.dtype)
    model.U[...] = model.U[...] * scale
    return model


def thin(values, points: int = TRAJECTORY_POINTS):
    """At most ``points`` evenly spaced entries (first and last kept), JSON-safe floats."""
    idx = np.unique(np.linspace(0, len(values) - 1, min(points, len(values))).astype(int))
    return [float(values[i]) if math.isfinite(values[i]) else None for i in idx]


def run_one(task, method: str, scale: float, seed: int, args) -> dict:
    from admm_jax.train import DivergenceError, Trainer

    model = scaled_model(task, args.hidden, scale, seed)
    name = "sgd" if method == "sgd_clip" else method
    tx = make_optimizer(task, model, name, **STABILITY_METHODS[method])
    trainer = Trainer(model, tx, task.train, batch_size=args.batch_size, seed=seed,
                      evaluation=task.test, **task.fit_kwargs())
    diverged = False
    chunk = 10
    while trainer.loop.train_seconds < args.budget_seconds:
        t0 = trainer.loop.train_seconds
        try:
            trainer.run(chunk)
        except DivergenceError:
            diverged = True
            break
        # about 20 chunks per budget, whatever the step cost
        per_step = max(trainer.loop.train_seconds - t0, 1e-6) / chunk
        chunk = int(min(max(1, args.budget_seconds / 20 / per_step), 1000))
    ev = trainer.evaluate()
    metric_name = "accuracy" if task.metric is not None else "mse"
    final = ev["accuracy"] if task.metric is not None else ev["loss"]
    steps = trainer.history.steps
    traj = {k: thin(steps[k]) for k in ("loss", "grad_norm", "r1", "dual_residual")
            if steps.get(k)}
    traj["time"] = thin(steps.get("time", [0.0]))
    bar = BARS[metric_name]
    ok = final >= bar if metric_name == "accuracy" else final <= bar
    return {"iterations": trainer.loop.iteration, "seconds": trainer.loop.train_seconds,
            "metric": metric_name, "final": float(final) if math.isfinite(final) else None,
            "diverged": diverged, "converged": bool(ok and not diverged and math.isfinite(final)),
            "trajectory": traj}


def key(task: str, scale: float, method: str, seed: int) -> str:
    return f"{task}|{scale:g}|{method}|{seed}"


def cell_runs(res, task, scale, method, seeds) -> list[dict]:
    runs = [res["runs"].get(key(task, scale, method, s)) for s in range(seeds)]
    return [r for r in runs if r is not None]


def stability_table(res: dict, tasks_, scales, methods, seeds) -> str:
    lines = ["| task | g | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for t in tasks_:
        for g in scales:
            cells = []
            for m in methods:
                runs = cell_runs(res, t, g, m, seeds)
                if not runs:
                    cells.append("-")
                    continue
                conv = sum(r["converged"] for r in runs)
                vals = [r["final"] for r in runs if r["final"] is not None]
                div = sum(r["diverged"] for r in runs)
                txt = f"{conv}/{len(runs)}"
                if vals:
                    txt += (f" {np.median(vals):.3g} ({min(vals):.3g}-{max(vals):.3g})"
                            if len(vals) > 1 else f" {vals[0]:.3g}")
                if div:
                    txt += f", {div} diverged"
                cells.append(txt)
            lines.append(f"| {t} | {g:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stability_plot(fig, res: dict, tasks_, scales, methods, seeds) -> None:
    fig.set_size_inches(4.2 * len(tasks_), 10)
    axes = fig.subplots(3, len(tasks_), squeeze=False)
    for j, t in enumerate(tasks_):
        for m in methods:
            med, lo, hi, conv = [], [], [], []
            for g in scales:
                runs = cell_runs(res, t, g, m, seeds)
                vals = [r["final"] for r in runs if r["final"] is not None]
                med.append(np.median(vals) if vals else np.nan)
                lo.append(min(vals) if vals else np.nan)
                hi.append(max(vals) if vals else np.nan)
                conv.append(sum(r["converged"] for r in runs))
            med, lo, hi = map(np.asarray, (med, lo, hi))
            axes[0, j].errorbar(scales, med, yerr=[med - lo, hi - med], marker="o", capsize=3,
                                label=m)
            axes[1, j].plot(scales, conv, marker="o", label=m)
            # the trajectory of the largest scale, first seed
            r = res["runs"].get(key(t, scales[-1], m, 0))
            if r:
                tr = r["trajectory"]
                y = tr.get("grad_norm") or tr.get("r1")
                if y:
                    axes[2, j].semilogy(tr["time"][:len(y)],
                                        [np.nan if v is None else v for v in y],
                                        label=f"{m}: {'|grad|' if 'grad_norm' in tr else '|r1|'}")
        metric = "test accuracy" if t == "row-mnist" else "test MSE"
        axes[0, j].set(title=t, xlabel="initial scale g (spectral radius of W)", ylabel=metric)
        if t != "row-mnist":
            axes[0, j].set_yscale("log")
        axes[1, j].set(xlabel="g", ylabel=f"seeds converged (of {seeds})",
                       ylim=(-0.2, seeds + 0.2))
        axes[2, j].set(xlabel="training seconds", ylabel=f"g={scales[-1]:g}: |grad| or |r1|")
        for a in axes[:, j]:
            a.grid(alpha=0.3)
        axes[0, j].legend(fontsize=7)
        axes[2, j].legend(fontsize=7)
    fig.suptitle("tanh RNN from initial scale g, equal training seconds")


def stability(args, cmd: str) -> int:
    """The study, with XLA's persistent compilation cache on for its duration: the runs of one
    task and method differ only in values, so each step compiles once (about 7 s at T=200 on 2
    cores) instead of 15 times; the caller's settings are restored and the cache removed."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    names_ = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
              "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names_}
    cache = tempfile.mkdtemp(prefix="admm_stability_xla_")
    for n, v in zip(names_, (cache, 0, 0), strict=True):
        jax.config.update(n, v)
    compilation_cache.reset_cache()
    try:
        return _stability(args, cmd)
    finally:
        for n, v in saved.items():
            jax.config.update(n, v)
        compilation_cache.reset_cache()
        shutil.rmtree(cache, ignore_errors=True)


def _stability(args, cmd: str) -> int:
    tasks_ = names(args.tasks)
    scales = [float(s) for s in args.scales.split(",")]
    methods = names(args.methods)
    check_methods(methods, STABILITY_METHODS)
    config = {k: v for k, v in vars(args).items()
              if k not in ("out", "tag", "data_dir", "case")}
    path = args.out / f"{args.tag}.json"
    res = resumable(path, config)
    elapsed = stopwatch()
    for t in tasks_:
        todo = [(g, m, s) for g in scales for m in methods for s in range(args.seeds)
                if key(t, g, m, s) not in res["runs"]]
        if not todo:
            continue
        task = stability_task(t, args)
        for g, m, s in todo:
            r = run_one(task, m, g, s, args)
            res["runs"][key(t, g, m, s)] = r
            args.out.mkdir(parents=True, exist_ok=True)
            write_json(path, res)  # resumable: each finished run is on disk
            print(f"{t:11s} g={g:<4g} {m:9s} seed {s}: {r['metric']} "
                  f"{r['final'] if r['final'] is None else round(r['final'], 4)} "
                  f"{'converged' if r['converged'] else 'not converged'}"
                  f"{', diverged' if r['diverged'] else ''} ({r['iterations']} it)", flush=True)
    md = stability_table(res, tasks_, scales, methods, args.seeds)
    converged = "test MSE <= 0.05 (adding), test accuracy >= 0.8 (row-MNIST), no divergence"
    text = (f"seeds converged of {args.seeds} ({converged}), median final metric (min-max); "
            f"{args.budget_seconds:g} s of training per run, H={args.hidden}, batch "
            f"{args.batch_size}\n\n{md}")
    write_results(args.out, args.tag, res, cmd, table=text,
                  plot=lambda fig: stability_plot(fig, res, tasks_, scales, methods,
                                                  args.seeds))
    print(f"wrote {path}, {args.out / (args.tag + '.md')} and {args.out / (args.tag + '.png')} "
          f"({elapsed():.0f} s this call)")
    return 0


# ---------------------------------------------------------------------------- text

TEXT_METHODS = {"admmirnn": {}, "sgd": {"learning_rate": 0.1}, "adam": {"learning_rate": 1e-3}}


def text(args, cmd: str) -> int:
    from admm_jax.train import DivergenceError, Trainer

    methods = names(args.methods)
    check_methods(methods, TEXT_METHODS)
    task = imdb_text_task(args.data_dir, args.reviews, args.seq_len)
    vocab = task.out_features
    held_out = (task.test[0][:args.eval_windows], task.test[1][:args.eval_windows])
    runs = {}
    for m in methods:
        model = task.model(args.hidden, seed=args.seed)
        runs[m] = {"trainer": Trainer(model, make_optimizer(task, model, m, **TEXT_METHODS[m]),
                                      task.train, batch_size=args.batch_size, seed=args.seed,
                                      evaluation=held_out, **task.fit_kwargs()),
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

    def plot(fig):
        fig.set_size_inches(7, 4.5)
        ax = fig.subplots()
        for row in rows:
            ax.plot(row["time"], [np.nan if v is None else v for v in row["loss"]], marker=".",
                    label=row["method"])
        ax.axhline(uniform, color="grey", ls=":", label=f"uniform prediction (ln {vocab})")
        ax.set(xlabel="training seconds", ylabel="held-out loss (nats / character)",
               title=f"next character, IMDb reviews, T={args.seq_len}, H={args.hidden}")
        ax.grid(alpha=0.3)
        ax.legend()

    write_results(args.out, args.tag, result, cmd, table="\n".join(lines), plot=plot)
    print(f"wrote {args.out / (args.tag + '.json')}, .md and .png")
    return 0


# ---------------------------------------------------------------------------- schedule

CANDIDATES = "fixed,geometric:1.0001,geometric:1.0003,linear:1.0005,linear:1.002"


def options(candidate: str) -> dict:
    """``admmirnn`` keyword arguments of a candidate ``schedule[:growth]``."""
    schedule, _, growth = candidate.partition(":")
    return {"rho_schedule": schedule, **({"rho_growth": float(growth)} if growth else {})}


def run_candidate(candidate: str, task, args) -> dict:
    from admm_jax.train import Trainer

    n_val = args.validation
    train = (task.train[0][:-n_val], task.train[1][:-n_val])
    val = (task.train[0][-n_val:], task.train[1][-n_val:])
    model = task.model(args.hidden, seed=args.seed)
    trainer = Trainer(model, make_optimizer(task, model, "admmirnn", **options(candidate)),
                      train, batch_size=args.batch_size, seed=args.seed, evaluation=val,
                      **task.fit_kwargs())
    epochs = []

    def on_epoch(epoch, before):
        ev = trainer.evaluate()
        epochs.append({"epoch": epoch, "iteration": trainer.loop.iteration,
                       "seconds": trainer.loop.train_seconds, "val_accuracy": ev["accuracy"],
                       "val_loss": ev["loss"]})
        print(f"{candidate:18s} epoch {epoch:3d} {trainer.loop.train_seconds:7.1f} s "
              f"val acc {ev['accuracy']:.4f}", flush=True)

    diverged = train_epochs(trainer, on_epoch, budget_seconds=args.budget_seconds) is not None
    return {"candidate": candidate, "options": options(candidate), "epochs": epochs,
            "diverged": diverged,
            "final_val_accuracy": epochs[-1]["val_accuracy"] if epochs else None}


def schedule(args, cmd: str) -> int:
    task = load_task("row-mnist", data_dir=args.data_dir, train_subset=args.train_subset,
                     test_subset=1)
    config = {k: v for k, v in vars(args).items()
              if k not in ("out", "tag", "data_dir", "candidates", "case")}
    path = args.out / f"{args.tag}.json"
    res = resumable(path, config)
    for c in names(args.candidates):
        if c in res["runs"]:
            continue
        res["runs"][c] = run_candidate(c, task, args)
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(path, res)
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

    def plot(fig):
        fig.set_size_inches(7, 4.5)
        ax = fig.subplots()
        for r in res["runs"].values():
            ax.plot([e["seconds"] for e in r["epochs"]],
                    [e["val_accuracy"] for e in r["epochs"]], marker=".", label=r["candidate"])
        ax.set(xlabel="training seconds", ylabel="validation accuracy",
               title="ADMMiRNN penalty schedules, row-MNIST")
        ax.grid(alpha=0.3)
        ax.legend()

    write_results(args.out, args.tag, res, cmd, table="\n".join(lines), plot=plot)
    return 0


# ---------------------------------------------------------------------------- command line


def _common(p, *, hidden: int, batch: int, budget: float, tag: str, budget_help: str,
            data_help: str = "MNIST folder (default $ADMM_JAX_DATA)") -> None:
    """The flags every case takes (their defaults are each study's)."""
    p.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"), help=data_help)
    p.add_argument("--hidden", type=int, default=hidden)
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--budget-seconds", type=float, default=budget, help=budget_help)
    p.add_argument("--out", type=pathlib.Path, default=RESULTS)
    p.add_argument("--tag", default=tag, help="file name stem of the outputs")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="case", required=True)

    m = sub.add_parser("mnist", help="ADMMiRNN on row-MNIST, Adam as the reference line")
    _common(m, hidden=128, batch=128, budget=900.0, tag="admm_mnist",
            budget_help="ADMMiRNN training budget (evaluation excluded)")
    m.add_argument("--train-size", type=int, default=10_000, help="training subset size")
    m.add_argument("--max-epochs", type=int, default=10_000)
    # ADMM options: admmirnn's defaults unless given; the backward sweep was run with
    # --sweep backward --rho 10 10 1 --prox 0.1 --weight-decay 1 --multipliers per-sample
    m.add_argument("--rho", type=float, nargs=3, default=None)
    m.add_argument("--prox", type=float, default=None)
    m.add_argument("--weight-decay", type=float, default=None)
    m.add_argument("--sweeps", type=int, default=None)
    m.add_argument("--sweep", default=None, choices=("coupled", "backward", "parallel"))
    m.add_argument("--cg-steps", type=int, default=None)
    m.add_argument("--rho-schedule", default=None,
                   choices=("fixed", "geometric", "linear", "balance"))
    m.add_argument("--rho-growth", type=float, default=None)
    m.add_argument("--multipliers", default="batch", choices=("per-sample", "batch"),
                   help="per-sample multipliers kept across epochs (backward and parallel "
                        "sweeps), or zero at every batch")
    m.add_argument("--adam-epochs", type=int, default=5)
    m.add_argument("--adam-lr", type=float, default=1e-3)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--quiet", action="store_true")

    s = sub.add_parser("stability", help="tanh RNNs from initialisations of growing scale")
    _common(s, hidden=64, batch=64, budget=8.0, tag="admm_stability",
            budget_help="training seconds per run (compilation and evaluation excluded)")
    s.add_argument("--tasks", default=",".join(STABILITY_TASKS),
                   help="comma-separated adding-<T> and row-mnist (default: all four)")
    s.add_argument("--scales", default=",".join(str(g) for g in SCALES),
                   help="initial spectral radii of W (U multiplied by the same factor)")
    s.add_argument("--methods", default=",".join(STABILITY_METHODS))
    s.add_argument("--seeds", type=int, default=3)
    s.add_argument("--num-train", type=int, default=10000, help="adding task training size")
    s.add_argument("--num-test", type=int, default=1000, help="adding task test size")
    s.add_argument("--test-subset", type=int, default=2000, help="row-MNIST test samples")
    s.add_argument("--smoke", action="store_true",
                   help="a run of seconds: adding T=8 (256 samples), scales 1 and 3, one seed, "
                        "0.3 s per run")

    t = sub.add_parser("text", help="next character of IMDb review text")
    _common(t, hidden=128, batch=32, budget=40.0, tag="admm_text",
            budget_help="training seconds per method",
            data_help="folder holding imdb/ (default $ADMM_JAX_DATA)")
    t.add_argument("--reviews", type=int, default=4000, help="IMDb training reviews read")
    t.add_argument("--seq-len", type=int, default=25)
    t.add_argument("--eval-points", type=int, default=10)
    t.add_argument("--eval-windows", type=int, default=2000,
                   help="held-out windows evaluated (the first ones)")
    t.add_argument("--methods", default=",".join(TEXT_METHODS),
                   help=f"comma-separated, of {', '.join(TEXT_METHODS)}")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--smoke", action="store_true",
                   help="seconds: 30 reviews, T=10, H=16, 0.5 s per method")

    c = sub.add_parser("schedule", help="the penalty schedule, on a validation split")
    _common(c, hidden=128, batch=128, budget=300.0, tag="admm_schedule",
            budget_help="training seconds per candidate")
    c.add_argument("--candidates", default=CANDIDATES,
                   help=f"comma-separated schedule[:growth] (default {CANDIDATES})")
    c.add_argument("--validation", type=int, default=10000,
                   help="the last training images held out for validation")
    c.add_argument("--train-subset", type=int, default=None,
                   help="use only the first images of the training split")
    c.add_argument("--seed", type=int, default=0)
    return ap


SMOKE = {"stability": {"tasks": "adding-8", "scales": "1,3", "seeds": 1, "budget_seconds": 0.3,
                       "hidden": 8, "num_train": 256, "num_test": 64, "batch_size": 32},
         "text": {"reviews": 30, "seq_len": 10, "hidden": 16, "batch_size": 16,
                  "budget_seconds": 0.5, "eval_points": 2, "eval_windows": 64}}
CASES = {"mnist": mnist, "stability": stability, "text": text, "schedule": schedule}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "smoke", False):
        for k, v in SMOKE[args.case].items():
            setattr(args, k, v)
    return CASES[args.case](args, command(__file__, argv))


if __name__ == "__main__":
    sys.exit(main())
