"""The ADMMiRNN paper's stability claim as a table: tanh RNNs from initialisations of growing
scale, ADMMiRNN beside SGD (with and without clipping) and Adam at the same budget in seconds.

Tang et al. (ECML-PKDD 2020) say ADMMiRNN trains RNNs "more stably without gradient vanishing
or exploding" and is less sensitive to the initialisation of weights and biases. Here every
cell is (task, initial scale g, method); every cell runs 3 seeds (model initialisation and
batch order); each run trains for the same ``--budget-seconds`` of training time.

* tasks: the adding task at T = 50, 100, 200 (long memory) and row-MNIST (T = 28), through
  :func:`admm_jax.tasks.load`;
* initialisation scale ``g`` in 0.5, 1, 1.5, 2, 3: the Elman model's recurrent weights ``W`` are
  rescaled to spectral radius ``g`` and its input weights ``U`` multiplied by ``g``;
* methods, through :class:`admm_jax.train.Trainer`: ``admmirnn`` (its defaults), ``sgd`` (lr
  0.1, no clipping), ``sgd_clip`` (lr 0.1, gradients clipped to global norm 1), ``adam`` (lr
  1e-3).

**Converged** (fixed before any run): the run finished without a non-finite step and its final
test metric reached the task's bar: test MSE <= 0.05 on the adding task (predicting the mean
gives ~0.167), test accuracy >= 0.8 on row-MNIST. Per cell the table gives the seeds that
converged, the median final metric (min-max over seeds) and the runs that diverged; every run's
trajectory of the gradient norm (gradient methods) or of ADMM's primal residual ``|r1|`` and
dual residual, and of the training loss, is kept in the JSON (at most 60 points each).

    python benchmarks/admm_stability.py --data-dir "$ADMM_JAX_DATA"      # ~45 min on 2 cores
    python benchmarks/admm_stability.py --smoke --out /tmp/stab          # seconds

Resumable: every finished run is appended to ``<out>/<tag>.json`` at once; a rerun with the
same arguments skips the runs already there (delete the file to start over). Writes
``<out>/<tag>.json``, ``<out>/<tag>.md`` (the table) and ``<out>/<tag>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SCALES = (0.5, 1.0, 1.5, 2.0, 3.0)
METHODS = ("admmirnn", "sgd", "sgd_clip", "adam")
TASKS = ("adding-50", "adding-100", "adding-200", "row-mnist")
BARS = {"mse": 0.05, "accuracy": 0.8}  # converged: final test metric at or past this
TRAJECTORY_POINTS = 60


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"),
                    help="MNIST folder (default $ADMM_JAX_DATA)")
    ap.add_argument("--tasks", default=",".join(TASKS),
                    help="comma-separated adding-<T> and row-mnist (default: all four)")
    ap.add_argument("--scales", default=",".join(str(s) for s in SCALES),
                    help="initial spectral radii of W (U multiplied by the same factor)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget-seconds", type=float, default=8.0,
                    help="training seconds per run (compilation and evaluation excluded)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-train", type=int, default=10000, help="adding task training size")
    ap.add_argument("--num-test", type=int, default=1000, help="adding task test size")
    ap.add_argument("--test-subset", type=int, default=2000, help="row-MNIST test samples")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--tag", default="admm_stability")
    ap.add_argument("--smoke", action="store_true",
                    help="a run of seconds: adding T=8 (256 samples), scales 1 and 3, one seed, "
                         "0.3 s per run")
    args = ap.parse_args(argv)
    if args.smoke:
        args.tasks, args.scales, args.seeds = "adding-8", "1,3", 1
        args.budget_seconds, args.hidden, args.num_train, args.num_test = 0.3, 8, 256, 64
        args.batch_size = 32
    return args


def load_task(name: str, args):
    from admm_jax import tasks

    if name.startswith("adding-"):
        return tasks.load("adding", seq_len=int(name.split("-")[1]), num_train=args.num_train,
                          num_test=args.num_test, seed=0)
    if name == "row-mnist":
        return tasks.load("row-mnist", data_dir=args.data_dir, test_subset=args.test_subset)
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


def optimizer(task, method: str):
    if method == "sgd":
        return task.optimizer("sgd", learning_rate=0.1)
    if method == "sgd_clip":
        return task.optimizer("sgd", learning_rate=0.1, clip_norm=1.0)
    if method == "adam":
        return task.optimizer("adam", learning_rate=1e-3)
    if method == "admmirnn":
        return task.optimizer("admmirnn")
    raise ValueError(f"--methods: unknown method {method!r}; expected one of {METHODS}")


def thin(values, points: int = TRAJECTORY_POINTS):
    """At most ``points`` evenly spaced entries (first and last kept), JSON-safe floats."""
    idx = np.unique(np.linspace(0, len(values) - 1, min(points, len(values))).astype(int))
    return [float(values[i]) if math.isfinite(values[i]) else None for i in idx]


def run_one(task, method: str, scale: float, seed: int, args) -> dict:
    from admm_jax.train import DivergenceError, Trainer

    model = scaled_model(task, args.hidden, scale, seed)
    trainer = Trainer(model, optimizer(task, method), task.train, batch_size=args.batch_size,
                      seed=seed, evaluation_data=task.test, **task.fit_kwargs())
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


def load_results(path: pathlib.Path, config: dict) -> dict:
    if not path.exists():
        return {"config": config, "runs": {}}
    res = json.loads(path.read_text())
    if res.get("config") != config:
        raise SystemExit(f"{path} holds results of other settings ({res.get('config')}); use "
                         "another --tag or --out, or delete it to start over")
    return res


def save(path: pathlib.Path, res: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(path)  # an interrupted write never loses the runs already there


def table(res: dict, tasks_, scales, methods, seeds) -> str:
    lines = ["| task | g | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for t in tasks_:
        for g in scales:
            cells = []
            for m in methods:
                runs = [res["runs"].get(key(t, g, m, s)) for s in range(seeds)]
                runs = [r for r in runs if r is not None]
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


def plot(res: dict, tasks_, scales, methods, seeds, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(tasks_), figsize=(4.2 * len(tasks_), 10), squeeze=False)
    for j, t in enumerate(tasks_):
        for m in methods:
            med, lo, hi, conv = [], [], [], []
            for g in scales:
                runs = [res["runs"].get(key(t, g, m, s)) for s in range(seeds)]
                runs = [r for r in runs if r is not None]
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    # the runs of one task and method differ only in values: XLA's persistent cache compiles
    # each step once (about 7 s at T=200 on 2 cores) instead of 15 times
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    cache = tempfile.mkdtemp(prefix="admm_stability_xla_")
    for n, v in zip(names, (cache, 0, 0), strict=True):
        jax.config.update(n, v)
    compilation_cache.reset_cache()
    try:
        return _main(args)
    finally:  # the caller's settings back, the cache gone
        for n, v in saved.items():
            jax.config.update(n, v)
        compilation_cache.reset_cache()
        shutil.rmtree(cache, ignore_errors=True)


def _main(args) -> int:
    tasks_ = [t.strip() for t in args.tasks.split(",") if t.strip()]
    scales = [float(s) for s in args.scales.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown method {m!r}; expected some of {METHODS}")
    config = {k: v for k, v in vars(args).items() if k not in ("out", "tag", "data_dir")}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.tag}.json"
    res = load_results(path, config)
    t_start = time.perf_counter()
    for t in tasks_:
        todo = [(g, m, s) for g in scales for m in methods for s in range(args.seeds)
                if key(t, g, m, s) not in res["runs"]]
        if not todo:
            continue
        task = load_task(t, args)
        for g, m, s in todo:
            r = run_one(task, m, g, s, args)
            res["runs"][key(t, g, m, s)] = r
            save(path, res)  # resumable: each finished run is on disk
            print(f"{t:11s} g={g:<4g} {m:9s} seed {s}: {r['metric']} "
                  f"{r['final'] if r['final'] is None else round(r['final'], 4)} "
                  f"{'converged' if r['converged'] else 'not converged'}"
                  f"{', diverged' if r['diverged'] else ''} ({r['iterations']} it)", flush=True)
    md = table(res, tasks_, scales, methods, args.seeds)
    converged = "test MSE <= 0.05 (adding), test accuracy >= 0.8 (row-MNIST), no divergence"
    text = (f"seeds converged of {args.seeds} ({converged}), median final metric (min-max); "
            f"{args.budget_seconds:g} s of training per run, H={args.hidden}, batch "
            f"{args.batch_size}\n\n{md}\n")
    (args.out / f"{args.tag}.md").write_text(text)
    plot(res, tasks_, scales, methods, args.seeds, args.out / f"{args.tag}.png")
    print(text)
    print(f"wrote {path}, {args.out / (args.tag + '.md')} and {args.out / (args.tag + '.png')} "
          f"({time.perf_counter() - t_start:.0f} s this call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
