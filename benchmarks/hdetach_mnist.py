"""Sequential and permuted MNIST: LSTM vs LSTM + h-detach (Arpit et al., 2019), at a CPU budget.

Recipe (the authors' code, ``pixelmnist.py``): 784 steps of one pixel, hidden 100, loss on the
last step, Adam 1e-3, batch 100, global-norm clipping 1.0, p = 0.25, 50k/10k train/validation
split of the training set plus the 10k test set, pMNIST a fixed random permutation of the pixels;
200 epochs with p switched off for the last 40. Reported: MNIST 98.6 (LSTM) / 98.8 (h-detach);
pMNIST 92.3-92.9 (h-detach).

Reduced mode (default, what a CPU reaches): ``--pixels-per-step`` pixels per step (4: T=196),
the same split, hidden, optimizer and p, as many epochs as the budget allows (``--epochs``; an
epoch can be cut to ``--epoch-size`` examples, drawn afresh from the 50k each epoch). For each
seed and layout both methods start from the same weights, see the same minibatches, and train in
alternating chunks of ``--chunk`` steps (one ``lax.scan`` per jitted call), so machine noise hits
both. Validation accuracy after every epoch; the test accuracy is taken at the best validation
epoch. Training seconds exclude evaluation. Results are written after every (seed, layout) pair,
and ``--resume`` keeps the finished pairs, so a run cut short keeps its finished rows.

Batched mode (``--batched``): the seeds x methods of one layout train as one
``admm_jax.train.BatchedTrainer`` (one compiled program; p_detach a per-run model argument;
each seed's own order over the 50k, both methods of a seed on the same batches from the same
weights), an evaluation point every ``--epoch-size`` examples, the batch stopped after
``--epochs`` such points or ``--budget-seconds`` of training. Same rows, table and plot.

Full mode (``--full``, for a GPU machine; not run on CPU here): the paper's 784 x 1 pixel
steps, 200 epochs of the full 50k, p = 0 for the last 40 epochs.

    python benchmarks/hdetach_mnist.py --pixels-per-step 4 --seeds 3 --epochs 2
    python benchmarks/hdetach_mnist.py --batched --pixels-per-step 1 --layouts pixels \
        --epochs 4 --epoch-size 25000 --budget-seconds 100   # full length, 1,000 iterations
    python benchmarks/hdetach_mnist.py --smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from admm_jax import LSTM, lstm_apply, sample_detach_mask
from admm_jax.data import mnist as _mnist

N_PIXELS = 784
DATA_SOURCE = "admm_jax.data.mnist: train[:50000] / train[50000:] / test"
PAPER = {
    "pixels": {"LSTM": 98.6, "h-detach": 98.8,
               "budget": "784 x 1 pixel, 200 epochs x 50k, p=0 for the last 40"},
    "permuted": {"LSTM": None, "h-detach": 92.3,
                 "budget": "784 x 1 pixel, 200 epochs x 50k (92.92 quoted from the paper)"},
}


def load(layout: str, pixels_per_step: int, data_dir):
    """``(x_train, y_train), (x_val, y_val), (x_test, y_test)`` as ``[N, 784/pps, pps]``."""
    def get(split):
        x, y = _mnist(split, layout=layout, permutation_seed=0, data_dir=data_dir)
        x = np.asarray(x, np.float32).reshape(len(x), N_PIXELS // pixels_per_step,
                                              pixels_per_step)
        return x, np.asarray(y, np.int32)
    xtr, ytr = get("train")
    return (xtr[:50000], ytr[:50000]), (xtr[50000:], ytr[50000:]), get("test")


def make_fns(tx, seq_len: int):
    """Jitted ``train_chunk`` (a ``lax.scan`` over minibatch indices) and ``correct``."""

    def loss_fn(params, x, y, mask):
        logits = lstm_apply(params, x, detach_mask=mask)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train_chunk(params, opt_state, x_all, y_all, idx, key, p):
        def step(carry, inp):
            params, opt_state = carry
            i, k = inp
            mask = sample_detach_mask(k, p, seq_len)
            loss, g = jax.value_and_grad(loss_fn)(params, x_all[i], y_all[i], mask)
            updates, opt_state = tx.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        keys = jax.random.split(key, idx.shape[0])
        (params, opt_state), loss = jax.lax.scan(step, (params, opt_state), (idx, keys))
        return params, opt_state, loss.mean()

    def correct(params, x, y):
        return (jnp.argmax(lstm_apply(params, x), -1) == y).sum()

    return jax.jit(train_chunk, donate_argnums=(0, 1)), jax.jit(correct)


def accuracy(correct, params, x, y, batch: int) -> float:
    n = (len(x) // batch) * batch
    return float(sum(int(correct(params, x[i:i + batch], y[i:i + batch]))
                     for i in range(0, n, batch))) / n


def run_pair(layout, seed, data, methods, args, fns) -> list[dict]:
    """Both methods from the same init on the same minibatches, alternating chunks.

    ``fns`` is ``(tx, train_chunk, correct)``; ``train_chunk`` is compiled ahead of time on the
    first pair and kept in ``fns[3]`` for the next ones (every pair has the same shapes).
    """
    (xtr, ytr), (xva, yva), (xte, yte) = data
    tx, train_chunk, correct = fns[:3]
    init = nnx.to_pure_dict(nnx.state(
        LSTM(args.pixels_per_step, args.hidden, 10, rngs=nnx.Rngs(seed)), nnx.Param))
    x_all, y_all = jnp.asarray(xtr), jnp.asarray(ytr)
    steps = args.epoch_size // args.batch
    runs = []
    for m, (name, p) in enumerate(methods):
        params = jax.tree.map(jnp.array, init)
        runs.append({"method": name, "p_detach": p, "params": params,
                     "opt_state": tx.init(params), "key": jax.random.key(10_000 * seed + m),
                     "train_seconds": 0.0, "losses": [], "best": (-1.0, 0, None),
                     "history": {"epoch": [], "train_loss": [], "val_acc": [], "seconds": []}})
    if len(fns) == 3:
        idx0 = jnp.zeros((args.chunk, args.batch), jnp.int32)
        fns.append(train_chunk.lower(runs[0]["params"], runs[0]["opt_state"], x_all, y_all,
                                     idx0, runs[0]["key"], jnp.float32(0)).compile())
    train_chunk = fns[3]
    rng = np.random.default_rng(seed)
    for epoch in range(args.epochs):
        anneal = epoch >= args.epochs - args.anneal_epochs
        order = rng.permutation(len(xtr))[: steps * args.batch].reshape(
            steps // args.chunk, args.chunk, args.batch)
        for c, idx in enumerate(order):
            idx = jnp.asarray(idx, jnp.int32)
            for r in (runs if c % 2 == 0 else runs[::-1]):
                key, sub = jax.random.split(r["key"])
                r["key"] = key
                p = jnp.float32(0.0 if anneal else r["p_detach"])
                t0 = time.perf_counter()
                r["params"], r["opt_state"], loss = train_chunk(
                    r["params"], r["opt_state"], x_all, y_all, idx, sub, p)
                r["losses"].append(float(loss))  # blocks until the chunk is done
                r["train_seconds"] += time.perf_counter() - t0
        for r in runs:
            val = accuracy(correct, r["params"], xva, yva, args.eval_batch)
            h = r["history"]
            h["epoch"].append(epoch + 1)
            h["train_loss"].append(float(np.mean(r["losses"])))
            h["val_acc"].append(val)
            h["seconds"].append(r["train_seconds"])
            r["losses"] = []
            if val > r["best"][0]:
                r["best"] = (val, epoch + 1, jax.tree.map(jnp.copy, r["params"]))
        print(f"  {layout} seed {seed} epoch {epoch + 1}: " + ", ".join(
            f"{r['method']} val {r['history']['val_acc'][-1]:.4f} "
            f"({r['train_seconds']:.0f} s)" for r in runs), flush=True)
    rows = []
    for r in runs:
        val, best_epoch, best_params = r["best"]
        rows.append({"layout": layout, "seed": seed, "method": r["method"],
                     "p_detach": r["p_detach"], "history": r["history"],
                     "best_val_epoch": best_epoch, "best_val_acc": val,
                     "test_acc_at_best_val": accuracy(correct, best_params, xte, yte,
                                                      args.eval_batch),
                     "iterations": args.epochs * steps, "train_seconds": r["train_seconds"],
                     "seconds_per_iteration": r["train_seconds"] / (args.epochs * steps)})
    return rows


def run_batched(layout, data, methods, args) -> list[dict]:
    """Every seed x method of ``layout`` as one BatchedTrainer; the rows of `run_pair`."""
    from _harness import train_batch

    from admm_jax.train import BatchedTrainer, Evaluation, Stop, losses, stacked
    from admm_jax.train.steps import evaluate_in_chunks, make_eval_fn

    (xtr, ytr), (xva, yva), (xte, yte) = data
    tx = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.lr))
    runs = [(name, p, seed) for seed in range(args.seeds) for name, p in methods]
    models = [LSTM(args.pixels_per_step, args.hidden, 10, rngs=nnx.Rngs(seed))
              for *_, seed in runs]
    steps = args.epoch_size // args.batch
    trainer = BatchedTrainer(
        models, tx, (xtr, ytr), batch_size=args.batch, seeds=[seed for *_, seed in runs],
        step_key=True, model_kwargs={"p_detach": [p for _, p, _ in runs]},
        stop=Stop(iterations=args.epochs * steps, budget_seconds=args.budget_seconds),
        evaluation=Evaluation((xva, yva), batch_size=args.eval_batch),
        steps_per_call=args.chunk, group_size=args.group_size, validate=False)
    best = [(-1.0, 0, None)] * len(runs)

    def on_eval(t, rows):
        epoch = len(t.histories[0].evals["iteration"])
        for r, row in enumerate(rows):
            if row["accuracy"] > best[r][0]:
                best[r] = (row["accuracy"], epoch, jax.device_get(stacked.unstack(t.params, r)))
        if epoch >= args.epochs - args.anneal_epochs:
            t.set_model_kwarg("p_detach", 0.0)
        print(f"  {layout} epoch {epoch} (it {t.iteration}, {t.train_seconds:.0f} s): val "
              + " ".join(f"{row['accuracy']:.3f}" for row in rows), flush=True)

    train_batch(trainer, steps, on_eval=on_eval)
    graphdef, _, rest = nnx.split(models[0], nnx.Param, ...)
    correct = make_eval_fn(graphdef, rest, losses.cross_entropy, losses.accuracy)
    out = []
    for (name, p, seed), h, (val, best_epoch, params) in zip(runs, trainer.histories, best,
                                                             strict=True):
        ev, st = h.evals, h.steps
        it, step_it = list(ev["iteration"]), np.asarray(st["iteration"])
        train_loss = [float(np.mean(np.asarray(st["loss"])[(step_it > lo) & (step_it <= hi)]))
                      for lo, hi in zip([0, *it[:-1]], it, strict=True)]
        test = evaluate_in_chunks(correct, params, (xte, yte), args.eval_batch)["accuracy"]
        out.append({"layout": layout, "seed": seed, "method": name, "p_detach": p,
                    "history": {"epoch": list(range(1, len(it) + 1)), "iteration": it,
                                "train_loss": train_loss, "val_acc": list(ev["accuracy"]),
                                "seconds": list(ev["time"])},
                    "best_val_epoch": best_epoch, "best_val_acc": val,
                    "test_acc_at_best_val": test, "iterations": len(st["iteration"]),
                    "train_seconds": trainer.train_seconds,
                    "seconds_per_iteration": trainer.train_seconds / max(1, trainer.iteration),
                    "runs_in_batch": trainer.runs, "compile_seconds": h.meta["compile_seconds"]})
    return out


def summarize(rows, layouts, methods) -> list[dict]:
    out = []
    for layout in layouts:
        for name, _ in methods:
            rs = [r for r in rows if r["layout"] == layout and r["method"] == name]
            if not rs:
                continue
            test = [r["test_acc_at_best_val"] for r in rs]
            val = [r["best_val_acc"] for r in rs]
            out.append({"layout": layout, "method": name, "seeds": len(rs),
                        "test_acc_mean": float(np.mean(test)),
                        "test_acc_std": float(np.std(test)), "test_acc": test,
                        "val_acc_mean": float(np.mean(val)), "val_acc_std": float(np.std(val)),
                        "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
                        "seconds_per_iteration_mean": float(np.mean(
                            [r["seconds_per_iteration"] for r in rs]))})
    return out


def plot(path: pathlib.Path, result: dict) -> None:
    """Validation accuracy against epochs and training seconds, one column per layout."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    layouts = list(dict.fromkeys(r["layout"] for r in result["runs"]))
    methods = list(dict.fromkeys(r["method"] for r in result["runs"]))
    colors = dict(zip(methods, ("tab:blue", "tab:red"), strict=False))
    fig, axes = plt.subplots(2, len(layouts), figsize=(5.5 * len(layouts), 7), squeeze=False)
    for j, layout in enumerate(layouts):
        for r in (r for r in result["runs"] if r["layout"] == layout):
            h = r["history"]
            label = r["method"] if r["seed"] == 0 else None
            for i, x in enumerate((h["epoch"], h["seconds"])):
                axes[i, j].plot(x, 100 * np.asarray(h["val_acc"]), "o-",
                                color=colors[r["method"]], alpha=0.8, label=label)
        paper = result["paper"][layout]
        for name, v in (("LSTM", paper["LSTM"]), ("h-detach", paper["h-detach"])):
            if v is not None:
                axes[0, j].axhline(v, color=colors[methods[name != "LSTM"]], ls="--", lw=0.8,
                                   label=f"paper {name}: {v} ({paper['budget']})")
        axes[0, j].axhline(10, color="gray", ls=":", lw=0.8, label="chance")
        axes[0, j].set(title=f"{layout} MNIST, {N_PIXELS // cfg['pixels_per_step']} steps x "
                             f"{cfg['pixels_per_step']} px, hidden {cfg['hidden']}",
                       xlabel=f"epoch ({cfg['epoch_size']} examples)",
                       ylabel="validation accuracy (%)", ylim=(0, 100))
        axes[0, j].set_xticks(sorted({e for r in result["runs"] for e in r["history"]["epoch"]}))
        axes[1, j].set(xlabel="training seconds (evaluation excluded)",
                       ylabel="validation accuracy (%)", ylim=(0, 100))
        axes[0, j].legend(fontsize=7, loc="lower right")
        axes[1, j].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def resumable_rows(path: pathlib.Path, config: dict) -> list[dict]:
    """The finished rows of ``path``, after checking it was written with the same recipe."""
    old = json.loads(path.read_text())
    if old.get("benchmark") != "hdetach_mnist" or "runs" not in old:
        raise SystemExit(f"--resume: {path} is not an hdetach_mnist results file of this "
                         "version; move it away or drop --resume")
    keys = ("pixels_per_step", "hidden", "batch", "lr", "clip", "p", "epochs", "epoch_size",
            "anneal_epochs", "chunk", *(("batched",) if config.get("batched") else ()))
    diff = [f"{k}={old['config'].get(k)!r} (now {config[k]!r})" for k in keys
            if old["config"].get(k) != config[k]]
    if diff:
        raise SystemExit(f"--resume: {path} was run with another recipe: {', '.join(diff)}")
    return old["runs"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layouts", default="pixels,permuted")
    ap.add_argument("--pixels-per-step", type=int, default=4,
                    help="pixels fed per step: 784 / this = sequence length (paper: 1)")
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--eval-batch", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--p", type=float, default=0.25, help="h-detach probability")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="budget: epochs (paper: 200)")
    ap.add_argument("--epoch-size", type=int, default=50000,
                    help="examples per epoch, drawn afresh from the 50k (paper: 50000)")
    ap.add_argument("--anneal-epochs", type=int, default=0,
                    help="last epochs with p = 0 (paper: 40 of 200)")
    ap.add_argument("--chunk", type=int, default=50, help="steps per jitted call (lax.scan)")
    ap.add_argument("--eval-size", type=int, default=50000,
                    help="validation/test examples evaluated (default: all 10k)")
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"))
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
    ap.add_argument("--name", default="hdetach_mnist", help="stem of the JSON/PNG")
    ap.add_argument("--resume", action="store_true",
                    help="keep the finished (seed, layout) pairs already in the JSON")
    ap.add_argument("--smoke", action="store_true",
                    help="a few seconds: 28 steps x 28 px, hidden 16, 1 seed, 2 x 200 examples")
    ap.add_argument("--full", action="store_true",
                    help="the paper's recipe: 784 x 1 px, 200 epochs, anneal 40 (GPU machine)")
    ap.add_argument("--replot", type=pathlib.Path, default=None,
                    help="only redraw the PNG beside this results JSON")
    g = ap.add_argument_group("batched mode")
    g.add_argument("--batched", action="store_true",
                   help="the seeds x methods of each layout as one BatchedTrainer")
    g.add_argument("--budget-seconds", type=float, default=None,
                   help="batched: stop each layout's batch after this many training seconds")
    g.add_argument("--group-size", type=int, default=None,
                   help="batched: runs vectorised together (default all; 1: in sequence)")
    args = ap.parse_args(argv)
    if args.replot is not None:
        plot(args.replot.with_suffix(".png"), json.loads(args.replot.read_text()))
        return 0
    if args.smoke:  # smaller defaults; flags given explicitly still win
        smoke = {"pixels_per_step": 28, "hidden": 16, "seeds": 1, "epochs": 2,
                 "epoch_size": 200, "chunk": 2, "eval_batch": 500, "eval_size": 1000,
                 "name": "hdetach_mnist_smoke"}
        for k, v in smoke.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    if args.full:
        args.pixels_per_step, args.epochs, args.epoch_size, args.anneal_epochs = 1, 200, 50000, 40
        args.name = "hdetach_mnist_full"
    if args.pixels_per_step < 1 or N_PIXELS % args.pixels_per_step:
        raise SystemExit(f"--pixels-per-step: expected a divisor of 784, got "
                         f"{args.pixels_per_step}")
    steps = args.epoch_size // args.batch
    if not 0 < args.epoch_size <= 50000 or steps == 0 or steps % args.chunk:
        raise SystemExit(f"--epoch-size: expected at most 50000 examples making a multiple of "
                         f"--chunk ({args.chunk}) batches of {args.batch}, got {args.epoch_size}")
    if not 0 <= args.anneal_epochs <= args.epochs or not 0.0 <= args.p <= 1.0:
        raise SystemExit("--anneal-epochs must be in [0, --epochs] and --p in [0, 1]")
    layouts = args.layouts.split(",")
    bad = [lay for lay in layouts if lay not in PAPER]
    if bad:
        raise SystemExit(f"--layouts: expected pixels and/or permuted, got {bad}")
    methods = [("LSTM", 0.0), (f"LSTM+h-detach p={args.p}", args.p)]

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    config = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()
              if k not in ("resume", "replot", "data_dir")}
    rows = []
    if args.resume and path.exists():
        rows = resumable_rows(path, config)
        print(f"resuming: {len(rows)} finished runs in {path}")
    data = {layout: load(layout, args.pixels_per_step, args.data_dir) for layout in layouts}
    if args.eval_size < 50000:  # smoke runs: evaluate on the first examples only
        data = {k: (tr, (va[0][:args.eval_size], va[1][:args.eval_size]),
                    (te[0][:args.eval_size], te[1][:args.eval_size]))
                for k, (tr, va, te) in data.items()}
    tx = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.lr))
    fns = [tx, *make_fns(tx, N_PIXELS // args.pixels_per_step)]
    for seed in range(args.seeds):
        for layout in layouts:
            if any(r["layout"] == layout and r["seed"] == seed for r in rows):
                continue
            t0 = time.perf_counter()
            if args.batched:  # every seed of the layout at once
                new = run_batched(layout, data[layout], methods, args)
            else:
                new = run_pair(layout, seed, data[layout], methods, args, fns)
            rows += new
            desc = ", ".join(f"{r['method']}: val {r['best_val_acc']:.4f} test "
                             f"{r['test_acc_at_best_val']:.4f}" for r in new)
            print(f"{layout} seed {seed} [{time.perf_counter() - t0:.0f} s wall, "
                  f"{datetime.datetime.now(datetime.UTC):%H:%M}] {desc}", flush=True)
            result = {"benchmark": "hdetach_mnist", "config": config,
                      "data_source": DATA_SOURCE, "device": str(jax.devices()[0]),
                      "sizes": {"train": 50000, "val": len(data[layout][1][0]),
                                "test": len(data[layout][2][0])},
                      "summary": summarize(rows, layouts, methods), "runs": rows,
                      "paper": PAPER}
            path.write_text(json.dumps(result, indent=1))
            plot(path.with_suffix(".png"), result)
    result = json.loads(path.read_text())
    print(f"\n{'layout':9s} {'method':24s} {'seeds':>5s} {'test acc (best val ep.)':>24s} "
          f"{'s/iter':>7s}  paper")
    for s in result["summary"]:
        paper = PAPER[s["layout"]]["LSTM" if s["method"] == "LSTM" else "h-detach"]
        print(f"{s['layout']:9s} {s['method']:24s} {s['seeds']:5d} "
              f"{100 * s['test_acc_mean']:17.2f} +- {100 * s['test_acc_std']:.2f} "
              f"{s['seconds_per_iteration_mean']:7.3f}  {paper}")
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
