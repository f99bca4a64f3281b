"""Random-bases descent on FC-MNIST (Gressmann et al. 2020): the paper's Table 1 row, and the
step cost against SGD.

Both cases train the paper's net: a 784-128-10 ReLU MLP (D = 101,770, Glorot-uniform kernels),
batch 32, d = 250, MNIST through ``admm_jax.tasks`` (row-MNIST's images), each jitted call a
``lax.scan`` of training steps (batch gathered from the training images, gradient, update;
weights and state donated).

``table1`` (the default case): RBD (basis redrawn every step, lr 1.0), FPD (one fixed basis,
lr 1.0) and SGD (lr 0.125), epoch by epoch (1875 steps per epoch), as in the paper's README
Table 1 (validation accuracy after the code's 100 epochs: RBD 93.89, FPD 80, SGD 98.27).
Validation = the 10k MNIST test images (the paper's code evaluates on the held-out set; no
tuning is done here, the recipe is the paper's). The runs (method x seed) advance round-robin
one epoch at a time, so a budget cut short leaves every method at the same epoch, and their
training seconds (evaluation excluded) are measured side by side. The JSON is rewritten after
every epoch, with a checkpoint of every run's parameters and state, so ``--resume`` continues
an interrupted run.

``table1 --batched``: the seeds of each method train as one ``admm_jax.train.BatchedTrainer``
(one compiled program; the basis seed of each run an ``optax.inject_hyperparams`` value, the
model an ``nnx`` module of the same MLP and initialiser; each run's batch order the trainer's,
not the round-robin loop's), evaluated after every epoch, checkpointed every ``--save-every``
epochs beside ``--out`` (``--resume`` continues), stopped at ``--epochs`` or after
``--budget-seconds`` of training. The JSON has the same ``runs`` and curves.

``speed``: an RBD step against an SGD step, side by side in one process: every configuration
one call of ``--steps`` steps per round, ``--rounds`` rounds after a warm-up round
(``_harness.round_robin``), the ratio to SGD taken per round and its median reported (absolute
times on a shared machine are noisy, ratios measured side by side much less so). Physical floor
of an i.i.d. RBD step: the two ``d x D`` projections, ``2 * 2 * d * D`` = 102 MFLOP, against
~20 MFLOP for the SGD step (forward + backward at batch 32), plus generating ``d * D`` = 25.4 M
basis entries (bit-packed Rademacher: ``d * D / 32`` = 0.8 M hash words, then one shift, mask
and convert per entry). Without ``--data-dir`` (and with ``--smoke``) the images are random.

    python benchmarks/random_bases.py --epochs 100 --seeds 0,1,2    # the paper's budget
    python benchmarks/random_bases.py --smoke --out /tmp/rb.json     # seconds: 2 tiny epochs
    python benchmarks/random_bases.py --batched --methods rbd --distribution normal \
        --seeds 0,1,2 --epochs 100                                    # the seeds as one batch
    python benchmarks/random_bases.py speed --data-dir "$ADMM_JAX_DATA"     # ~2 min, 2 cores
    python benchmarks/random_bases.py speed --smoke --out /tmp/s.json       # seconds

Writes ``--out`` (``results/random_bases.json``, ``results/random_bases_speed.json``) and the
PNG beside it (``speed``: and a Markdown table).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _harness import (
    RESULTS,
    batch_figures,
    command,
    load_task,
    markdown_table,
    resume_batch,
    round_ratios,
    round_robin,
    timed,
    train_batch,
    write_plot,
    write_results,
)
from flax import nnx

from admm_jax import random_bases

PAPER = {"rbd": 93.89, "fpd": 80.0, "sgd": 98.27}
SPEED_CONFIGS = {
    # name: keyword arguments of random_bases (None: plain SGD)
    "sgd": None,
    "rbd defaults": {},
    "rbd rademacher/hash": {"distribution": "rademacher", "rng": "hash"},
    "rbd normal/hash (inverse CDF)": {"distribution": "normal", "rng": "hash"},
    "rbd uniform/hash": {"distribution": "uniform", "rng": "hash"},
    "rbd hadamard (SRHT)": {"distribution": "hadamard"},
    "rbd normal/threefry (jax.random)": {"distribution": "normal", "rng": "threefry"},
}
SLOW = ("rbd normal/threefry (jax.random)",)
CASES = ("table1", "speed")


def init_mlp(key: jax.Array) -> dict[str, jax.Array]:
    """Glorot-uniform kernels and zero biases (Keras' Dense defaults, as the paper's code)."""
    def glorot(k, n_in, n_out):
        lim = np.sqrt(6.0 / (n_in + n_out))
        return jax.random.uniform(k, (n_in, n_out), jnp.float32, -lim, lim)

    k1, k2 = jax.random.split(key)
    return {"w1": glorot(k1, 784, 128), "b1": jnp.zeros(128),
            "w2": glorot(k2, 128, 10), "b2": jnp.zeros(10)}


def mlp(p, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(mlp(p, x), y).mean()


def make_epoch(tx):
    """One jitted call of training steps: ``lax.scan`` over the ``[steps, batch]`` index array;
    returns the new weights and state, the mean and the largest batch loss."""
    def epoch(params, state, x_all, y_all, idx):
        def body(carry, i):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, x_all[i], y_all[i])
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        (params, state), losses = jax.lax.scan(body, (params, state), idx)
        return params, state, jnp.mean(losses), jnp.max(losses)

    return jax.jit(epoch, donate_argnums=(0, 1))


@jax.jit
def accuracy(p, x, y):
    return jnp.mean(jnp.argmax(mlp(p, x), -1) == y)


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.default_backend(), "device": str(jax.devices()[0])}


def n_params() -> int:
    return int(sum(x.size for x in jax.tree.leaves(init_mlp(jax.random.key(0)))))


# ---------------------------------------------------------------------------- table1


def make_tx(method: str, seed: int, args):
    """``rbd``, ``fpd`` or ``sgd``; ``rbd:<distribution>`` / ``fpd:<distribution>`` pick the
    basis (default: ``--distribution``, else the library's)."""
    name, _, dist = method.partition(":")
    dist = dist or args.distribution
    kw = {} if dist is None else {"distribution": dist}
    if name == "sgd":
        return optax.sgd(args.lr_sgd)
    if name not in ("rbd", "fpd"):
        raise SystemExit(f"--methods/--extra: expected rbd, fpd, sgd[:distribution], got "
                         f"{method!r}")
    return random_bases(args.lr_rbd, args.dim, seed=seed, redraw=name == "rbd", **kw)


class MLP(nnx.Module):
    """:func:`mlp` as an ``nnx`` module (Glorot-uniform kernels, zero biases), for the
    batched mode."""

    def __init__(self, rngs: nnx.Rngs):
        glorot = nnx.initializers.glorot_uniform()
        self.hidden = nnx.Linear(784, 128, kernel_init=glorot, rngs=rngs)
        self.out = nnx.Linear(128, 10, kernel_init=glorot, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


def make_batched_tx(method: str, args):
    """``(tx, hyperparams)``: :func:`make_tx`'s method for all seeds of a batch, the basis seed
    an injected hyperparameter (``{"seed": seeds}``; SGD: none)."""
    name, _, dist = method.partition(":")
    dist = dist or args.distribution
    if name == "sgd":
        return optax.sgd(args.lr_sgd), {}
    make_tx(method, 0, args)  # the method's own checks
    kw = {} if dist is None else {"distribution": dist}
    tx = optax.inject_hyperparams(random_bases, static_args=(
        "dim", "distribution", "redraw", "block_size", "rng", "compartments"))(
        learning_rate=args.lr_rbd, dim=args.dim, seed=jax.random.key(0),
        redraw=name == "rbd", **kw)
    return tx, {"seed": [int(s) for s in args.seeds.split(",")]}


def run_batched(args, data, out: pathlib.Path) -> dict:
    """Each method's seeds as one BatchedTrainer (see the module docstring); ``runs`` as the
    round-robin loop writes them."""
    from admm_jax.train import BatchedTrainer, Stop

    (x_tr, y_tr), (x_va, y_va) = data
    seeds = [int(s) for s in args.seeds.split(",")]
    runs, meta = {}, {}
    for m in args.methods.split(","):
        tx, hp = make_batched_tx(m, args)
        models = [MLP(nnx.Rngs(s)) for s in seeds]
        ck = out.with_suffix(".ckpt") / m.replace(":", "_")
        resume = resume_batch(ck, models[0], tx) if args.resume else None
        t = BatchedTrainer(models, tx, (x_tr, y_tr), batch_size=args.batch, seeds=seeds,
                           hyperparams=hp, stop=Stop(epochs=args.epochs,
                                                     budget_seconds=args.budget_seconds),
                           evaluation=(x_va, y_va), resume=resume,
                           steps_per_call=min(args.steps_per_call, len(x_tr) // args.batch),
                           validate=False)

        def log(t, rows, m=m):
            print(f"{m} epoch {t.position[0]}: val " + " ".join(
                f"{100 * r['accuracy']:.2f}" for r in rows) + f"  ({t.train_seconds:.0f} s)",
                flush=True)

        train_batch(t, t.steps_per_epoch, on_eval=log, checkpoint=ck,
                    save_every=args.save_every)
        meta[m] = batch_figures(t, t.histories[0]) | {"iterations": t.iteration}
        for s, h in zip(seeds, t.histories, strict=True):
            ev, ep = h.evals, h.epochs
            curve = [{"epoch": i + 1, "seconds": sec,
                      "epoch_seconds": sec - (ev["time"][i - 1] if i else 0.0),
                      "val_acc": 100 * acc,
                      "train_loss": ep["loss"][i] if i < len(ep.get("loss", [])) else None}
                     for i, (sec, acc) in enumerate(zip(ev["time"], ev["accuracy"],
                                                        strict=True))]
            runs[f"{m}/{s}"] = {"method": m, "seed": s, "seconds": t.train_seconds,
                                "epochs_planned": args.epochs, "curve": curve}
    return {"runs": runs, "batches": meta}


def table1(args, cmd: str) -> dict:
    task = load_task("row-mnist", data_dir=args.data_dir,
                     train_subset=640 if args.smoke else None,
                     test_subset=500 if args.smoke else None)
    if args.smoke:
        args.epochs = 2
    x_tr, y_tr, x_va, y_va = map(jnp.asarray, (*task.train, *task.test))
    steps = x_tr.shape[0] // args.batch
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [(m, seeds[:1], args.epochs) for m in args.methods.split(",")]
    methods += [(m, seeds[1:], args.other_seeds_epochs or args.epochs)
                for m in args.methods.split(",")]
    methods += [(m, seeds[:1], args.extra_epochs or args.epochs)
                for m in args.extra.split(",") if m]
    out = pathlib.Path(args.out)
    ckpt = out.with_suffix(".ckpt.npz")
    setting = {
        "setting": {"model": "784-128-10 relu MLP", "params_D": n_params(),
                    "dim": args.dim, "batch": args.batch, "steps_per_epoch": steps,
                    "lr_rbd": args.lr_rbd, "lr_sgd": args.lr_sgd,
                    "distribution": args.distribution or "library default (rademacher)",
                    "epochs_planned": args.epochs, "seeds": seeds,
                    "validation": f"MNIST test set ({x_va.shape[0]})",
                    "smoke": args.smoke, "batched": args.batched},
        "machine": machine(),
        "paper_table1_100_epochs": PAPER}
    if args.batched:
        if args.extra or args.other_seeds_epochs:
            raise SystemExit("--batched: every method runs all --seeds for --epochs (no "
                             "--extra, --other-seeds-epochs)")
        result = setting | run_batched(args, ((x_tr, y_tr), (x_va, y_va)), out)
        write_results(out.parent, out.stem, result, cmd,
                      plot=lambda fig: table1_plot(fig, result))
        print(f"wrote {out} and {out.with_suffix('.png')}")
        return result

    runs = {}
    for m, m_seeds, m_epochs in methods:
        for s in m_seeds:
            tx = make_tx(m, s, args)
            params = init_mlp(jax.random.key(s))
            runs[f"{m}/{s}"] = {"method": m, "seed": s, "epoch_fn": make_epoch(tx),
                                "epochs": m_epochs,
                                "params": params, "state": tx.init(params),
                                "curve": [], "seconds": 0.0}
    if args.resume and out.exists() and ckpt.exists():
        old = json.loads(out.read_text())
        saved = np.load(ckpt)
        for name, r in runs.items():
            if name not in old["runs"]:
                continue
            r["curve"], r["seconds"] = old["runs"][name]["curve"], old["runs"][name]["seconds"]
            leaves, tdef = jax.tree.flatten((r["params"], r["state"]))
            new = [jnp.asarray(saved[f"{name}/{i}"], x.dtype) for i, x in enumerate(leaves)]
            r["params"], r["state"] = jax.tree.unflatten(tdef, new)
        print(f"resumed at epochs {[len(r['curve']) for r in runs.values()]}")

    def write(plot=None):
        result = setting | {
            "runs": {k: {"method": r["method"], "seed": r["seed"], "seconds": r["seconds"],
                         "epochs_planned": r["epochs"], "curve": r["curve"]}
                     for k, r in runs.items()},
        }
        write_results(out.parent, out.stem, result, cmd,
                      plot=None if plot is None else lambda fig: plot(fig, result))
        arrays = {}
        for name, r in runs.items():
            for i, x in enumerate(jax.tree.leaves((r["params"], r["state"]))):
                arrays[f"{name}/{i}"] = np.asarray(x)
        np.savez(ckpt, **arrays)
        return json.loads(out.read_text())

    deadline = None
    if args.deadline:
        hh, mm = map(int, args.deadline.split(":"))
        deadline = hh * 3600 + mm * 60
    while True:
        todo = [r for r in runs.values() if len(r["curve"]) < r["epochs"]]
        if not todo:
            break
        now = time.gmtime()
        if deadline is not None and now.tm_hour * 3600 + now.tm_min * 60 >= deadline:
            print("deadline reached: stopping before a new epoch round")
            break
        for r in todo:  # one epoch each, round-robin
            e = len(r["curve"])
            order = np.random.default_rng([r["seed"], e]).permutation(x_tr.shape[0])
            idx = jnp.asarray(order[: steps * args.batch].reshape(steps, args.batch))
            (r["params"], r["state"], mean_loss, max_loss), dt = timed(
                r["epoch_fn"], r["params"], r["state"], x_tr, y_tr, idx)
            r["seconds"] += dt  # the first epoch includes compilation (noted in the docs)
            acc = float(accuracy(r["params"], x_va, y_va))
            r["curve"].append({"epoch": e + 1, "seconds": r["seconds"], "epoch_seconds": dt,
                               "val_acc": 100 * acc, "train_loss": float(mean_loss),
                               "max_batch_loss": float(max_loss)})
            print(f"{r['method']}/{r['seed']} epoch {e + 1}: val {100 * acc:.2f}%  "
                  f"loss {float(mean_loss):.4f}  {dt:.1f}s", flush=True)
        write()
    result = write(plot=table1_plot)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


def table1_plot(fig, result: dict) -> None:
    fig.set_size_inches(11, 4)
    axes = fig.subplots(1, 2, sharey=True)
    colors = {"rbd": "C0", "fpd": "C1", "sgd": "C2"}
    for r in result["runs"].values():
        if not r["curve"]:
            continue
        ep = [c["epoch"] for c in r["curve"]]
        sec = [c["seconds"] for c in r["curve"]]
        acc = [c["val_acc"] for c in r["curve"]]
        base, _, dist = r["method"].partition(":")
        kw = {"color": colors[base], "alpha": 0.8, "ls": ":" if dist else "-",
              "label": r["method"] if r["seed"] == result["setting"]["seeds"][0] else None}
        axes[0].plot(ep, acc, marker=".", **kw)
        axes[1].plot(sec, acc, marker=".", **kw)
    for m, a in result["paper_table1_100_epochs"].items():
        for ax in axes:
            ax.axhline(a, color=colors[m], ls="--", lw=0.8)
    axes[0].set_xlabel("epoch (1875 steps of batch 32)")
    axes[1].set_xlabel("training seconds (evaluation excluded)")
    axes[0].set_ylabel("validation accuracy % (dashed: paper, 100 epochs)")
    axes[0].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"FC-MNIST, d={result['setting']['dim']}, seeds "
                 f"{result['setting']['seeds']}")


# ---------------------------------------------------------------------------- speed


def speed(args, cmd: str) -> dict:
    out = pathlib.Path(args.out)
    if args.replot:
        result = json.loads(out.read_text())
        write_plot(out.parent, out.stem, lambda fig: speed_plot(fig, result))
        return result
    if args.smoke:
        args.steps, args.rounds, args.skip_slow = 2, 1, True
    synthetic = args.smoke or args.data_dir is None
    if synthetic:
        rng = np.random.default_rng(0)
        x_all = jnp.asarray(rng.random((1024, 28, 28), np.float32))
        y_all = jnp.asarray(rng.integers(0, 10, 1024), jnp.int32)
    else:
        x_all, y_all = map(jnp.asarray, load_task("row-mnist", data_dir=args.data_dir).train)
    params0 = init_mlp(jax.random.key(0))
    extra = {} if args.block_size is None else {"block_size": args.block_size}
    configs = {k: v for k, v in SPEED_CONFIGS.items() if not (args.skip_slow and k in SLOW)}
    # each call's batch indices drawn beforehand, in calling order, so no draw is timed
    rng = np.random.default_rng(1)
    idx = {k: [] for k in configs}
    for _ in range(1 + args.rounds):
        for k in configs:
            idx[k].append(jnp.asarray(rng.integers(0, x_all.shape[0], (args.steps, args.batch))))
    calls = {}
    for name, kw in configs.items():
        tx = optax.sgd(0.125) if kw is None else random_bases(1.0, args.dim, seed=0,
                                                                 **kw, **extra)
        p0 = jax.tree.map(jnp.copy, params0)
        calls[name] = _stepper(make_epoch(tx), [p0, tx.init(p0)], x_all, y_all, idx[name])
    times = {k: [t / args.steps for t in v]
             for k, v in round_robin(calls, args.rounds, warmup=1).items()}
    ratios = {k: round_ratios(times, k, "sgd") for k in configs}
    result = {
        "setting": {"model": "784-128-10 relu MLP", "params_D": n_params(), "dim": args.dim,
                    "batch": args.batch, "steps_per_call": args.steps, "rounds": args.rounds,
                    "block_size": args.block_size or "library default",
                    "data": "synthetic" if synthetic else "MNIST"},
        "machine": machine(),
        "floor": {"projection_mflop": 4 * args.dim * n_params() / 1e6,
                  "basis_entries": args.dim * n_params(),
                  "hash_words_packed_rademacher": -(-n_params() // 32) * args.dim},
        "seconds_per_step_median": {k: statistics.median(t) for k, t in times.items()},
        "ratio_to_sgd_median": {k: statistics.median(r) for k, r in ratios.items()},
        "ratio_to_sgd_range": {k: [min(r), max(r)] for k, r in ratios.items()},
    }
    print(f"FC-MNIST D={n_params()}, d={args.dim}, batch {args.batch}: {args.rounds} rounds of "
          f"{args.steps} steps, round-robin")
    rows = [{"config": k, "ms": 1e3 * result["seconds_per_step_median"][k],
             "ratio": result["ratio_to_sgd_median"][k],
             "range": "{:.1f}-{:.1f}".format(*result["ratio_to_sgd_range"][k])}
            for k in configs]
    table = markdown_table(rows, {"config": "configuration", "ms": "ms/step",
                                  "ratio": "x SGD (median)", "range": "range"})
    write_results(out.parent, out.stem, result, cmd, table=table,
                  plot=lambda fig: speed_plot(fig, result))
    print(f"wrote {out} and its .png")
    return result


def _stepper(fn, state: list, x_all, y_all, batches: list):
    """One call of ``fn`` (a jitted run of steps) on the next of ``batches``, waited for."""
    def call():
        state[0], state[1], *_ = fn(state[0], state[1], x_all, y_all, batches.pop(0))
        jax.block_until_ready(state[0])

    return call


def speed_plot(fig, result: dict) -> None:
    """Horizontal bars: median ratio to SGD per configuration (log scale), with the range."""
    names = list(result["ratio_to_sgd_median"])
    med = np.array([result["ratio_to_sgd_median"][k] for k in names])
    lo = np.array([result["ratio_to_sgd_range"][k][0] for k in names])
    hi = np.array([result["ratio_to_sgd_range"][k][1] for k in names])
    fig.set_size_inches(7, 0.45 * len(names) + 1.2)
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    ax.barh(y, med, color="C0", alpha=0.7)
    ax.errorbar(med, y, xerr=[med - lo, hi - med], fmt="none", color="k", lw=1)
    for v, ls in ((8, "--"), (25, ":")):
        ax.axvline(v, color="C3", ls=ls, lw=1, label=f"{v}x SGD")
    ax.set_yticks(y, names)
    ax.set_xscale("log")
    ax.set_xlabel("step time / SGD step time (median over rounds, bar: range)")
    ax.set_title(f"FC-MNIST D={result['setting']['params_D']}, d={result['setting']['dim']}")
    ax.legend(loc="lower right")


# ---------------------------------------------------------------------------- command line


def parse(argv):
    """The case's arguments; with no case named, ``table1`` (its commands predate ``speed``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in (*CASES, "-h", "--help"):
        argv = ["table1", *argv]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="case", required=True)
    t = sub.add_parser("table1", help="the paper's Table 1 row, epoch by epoch (default)")
    s = sub.add_parser("speed", help="the step cost against SGD, round-robin")
    for p, stem in ((t, "random_bases"), (s, "random_bases_speed")):
        p.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"))
        p.add_argument("--dim", type=int, default=250)
        p.add_argument("--batch", type=int, default=32)
        p.add_argument("--out", default=str(RESULTS / f"{stem}.json"))
    t.add_argument("--epochs", type=int, default=100, help="epochs of 1875 steps (paper: 100)")
    t.add_argument("--seeds", default="0", help="comma-separated seeds")
    t.add_argument("--methods", default="rbd,fpd,sgd")
    t.add_argument("--extra", default="",
                   help="more methods (e.g. rbd:normal) run with the first seed only, for "
                        "--extra-epochs epochs")
    t.add_argument("--extra-epochs", type=int, default=None)
    t.add_argument("--other-seeds-epochs", type=int, default=None,
                   help="epochs for every seed but the first (default: --epochs)")
    t.add_argument("--lr-rbd", type=float, default=1.0)
    t.add_argument("--lr-sgd", type=float, default=0.125)
    t.add_argument("--distribution", default=None,
                   help="RBD basis (default: the library's, rademacher; paper: normal)")
    t.add_argument("--deadline", default=None,
                   help="UTC time HH:MM after which no new epoch round starts")
    t.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    t.add_argument("--smoke", action="store_true",
                   help="2 epochs of 20 steps on 640 images: checks that it runs")
    g = t.add_argument_group("batched mode")
    g.add_argument("--batched", action="store_true",
                   help="each method's seeds as one BatchedTrainer (no --extra)")
    g.add_argument("--budget-seconds", type=float, default=None,
                   help="batched: stop each method's batch after this many training seconds")
    g.add_argument("--steps-per-call", type=int, default=125,
                   help="batched: steps per compiled call")
    g.add_argument("--save-every", type=int, default=10,
                   help="batched: epochs between checkpoints")
    s.add_argument("--steps", type=int, default=50, help="steps per timed call")
    s.add_argument("--rounds", type=int, default=7)
    s.add_argument("--block-size", type=int, default=None,
                   help="basis vectors per block (default: the library's)")
    s.add_argument("--skip-slow", action="store_true", help="leave out threefry normals")
    s.add_argument("--smoke", action="store_true",
                   help="synthetic data, 2 steps, 1 round: checks that it runs")
    s.add_argument("--replot", action="store_true",
                   help="only redraw the PNG from an existing --out JSON")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    cmd = command(__file__, argv)
    return table1(args, cmd) if args.case == "table1" else speed(args, cmd)


if __name__ == "__main__":
    main()
