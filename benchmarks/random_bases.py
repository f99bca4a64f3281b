"""Random-bases descent on FC-MNIST: the paper's Table 1 row (RBD, FPD, SGD), epoch by epoch.

784-128-10 ReLU MLP (D = 101,770), batch 32 (1875 steps per epoch), d = 250; RBD (basis
redrawn every step, lr 1.0), FPD (one fixed basis, lr 1.0) and SGD (lr 0.125), as in
Gressmann et al. 2020 (README Table 1, validation accuracy after the code's 100 epochs:
RBD 93.89, FPD 80, SGD 98.27). Validation = the 10k MNIST test images (the paper's code
evaluates on the held-out set; no tuning is done here, the recipe is the paper's).

Each epoch is one jitted ``lax.scan`` of 1875 steps (params and state donated); the runs
(method x seed) advance round-robin one epoch at a time, so a budget cut short leaves every
method at the same epoch, and their training seconds (evaluation excluded) are measured side
by side. The JSON is rewritten after every epoch, with a checkpoint of every run's
parameters and state, so ``--resume`` continues an interrupted run.

    python benchmarks/random_bases.py --epochs 100 --seeds 0,1,2    # the paper's budget
    python benchmarks/random_bases.py --smoke --out /tmp/rb.json     # seconds: 2 tiny epochs
    python benchmarks/random_bases.py --batched --methods rbd --distribution normal \
        --seeds 0,1,2 --epochs 100                                    # the seeds as one batch

``--batched``: the seeds of each method train as one ``admm_jax.train.BatchedTrainer`` (one
compiled program; the basis seed of each run an ``optax.inject_hyperparams`` value, the model
an ``nnx`` module of the same MLP and initialiser; each run's batch order the trainer's, not
the round-robin loop's), evaluated after every epoch, checkpointed every ``--save-every``
epochs beside ``--out`` (``--resume`` continues), stopped at ``--epochs`` or after
``--budget-seconds`` of training. The JSON has the same ``runs`` and curves.
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

from admm_jax import random_bases

PAPER = {"rbd": 93.89, "fpd": 80.0, "sgd": 98.27}


def load_mnist(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [N, 28, 28] in [0, 1], int32 [N]) from :func:`admm_jax.data.mnist`."""
    from admm_jax.data import mnist

    return mnist(split, layout="rows", data_dir=data_dir)


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
    """One jitted epoch: ``lax.scan`` over the ``[steps, batch]`` index array."""
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
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from _harness import train_batch

    from admm_jax.train import BatchedTrainer, Stop, checkpoint_steps, load_runs

    (x_tr, y_tr), (x_va, y_va) = data
    seeds = [int(s) for s in args.seeds.split(",")]
    runs, meta = {}, {}
    for m in args.methods.split(","):
        tx, hp = make_batched_tx(m, args)
        models = [MLP(nnx.Rngs(s)) for s in seeds]
        ck = out.with_suffix(".ckpt") / m.replace(":", "_")
        resume = None
        if args.resume and checkpoint_steps(ck / "run_000"):
            p0 = nnx.state(models[0], nnx.Param)
            resume = load_runs(ck, p0, tx.init(p0))
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
        meta[m] = {"compile_seconds": t.histories[0].meta["compile_seconds"],
                   "train_seconds": t.train_seconds, "iterations": t.iteration,
                   "runs_in_batch": t.runs}
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


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"))
    ap.add_argument("--epochs", type=int, default=100, help="epochs of 1875 steps (paper: 100)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--methods", default="rbd,fpd,sgd")
    ap.add_argument("--extra", default="",
                    help="more methods (e.g. rbd:normal) run with the first seed only, for "
                         "--extra-epochs epochs")
    ap.add_argument("--extra-epochs", type=int, default=None)
    ap.add_argument("--other-seeds-epochs", type=int, default=None,
                    help="epochs for every seed but the first (default: --epochs)")
    ap.add_argument("--dim", type=int, default=250)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr-rbd", type=float, default=1.0)
    ap.add_argument("--lr-sgd", type=float, default=0.125)
    ap.add_argument("--distribution", default=None,
                    help="RBD basis (default: the library's, rademacher; paper: normal)")
    ap.add_argument("--deadline", default=None,
                    help="UTC time HH:MM after which no new epoch round starts")
    ap.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    ap.add_argument("--smoke", action="store_true",
                    help="2 epochs of 20 steps on 640 images: checks that it runs")
    ap.add_argument("--out", default="benchmarks/results/random_bases.json")
    g = ap.add_argument_group("batched mode")
    g.add_argument("--batched", action="store_true",
                   help="each method's seeds as one BatchedTrainer (no --extra)")
    g.add_argument("--budget-seconds", type=float, default=None,
                   help="batched: stop each method's batch after this many training seconds")
    g.add_argument("--steps-per-call", type=int, default=125,
                   help="batched: steps per compiled call")
    g.add_argument("--save-every", type=int, default=10,
                   help="batched: epochs between checkpoints")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    x_tr, y_tr = load_mnist("train", args.data_dir)
    x_va, y_va = load_mnist("test", args.data_dir)
    if args.smoke:
        args.epochs = 2
        x_tr, y_tr, x_va, y_va = x_tr[:640], y_tr[:640], x_va[:500], y_va[:500]
    x_tr, y_tr, x_va, y_va = map(jnp.asarray, (x_tr, y_tr, x_va, y_va))
    steps = x_tr.shape[0] // args.batch
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [(m, seeds[:1], args.epochs) for m in args.methods.split(",")]
    methods += [(m, seeds[1:], args.other_seeds_epochs or args.epochs)
                for m in args.methods.split(",")]
    methods += [(m, seeds[:1], args.extra_epochs or args.epochs)
                for m in args.extra.split(",") if m]
    out = pathlib.Path(args.out)
    ckpt = out.with_suffix(".ckpt.npz")

    def header():
        n_params = sum(x.size for x in jax.tree.leaves(init_mlp(jax.random.key(0))))
        return {
            "command": "python benchmarks/random_bases.py " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "setting": {"model": "784-128-10 relu MLP", "params_D": int(n_params),
                        "dim": args.dim, "batch": args.batch, "steps_per_epoch": steps,
                        "lr_rbd": args.lr_rbd, "lr_sgd": args.lr_sgd,
                        "distribution": args.distribution or "library default (rademacher)",
                        "epochs_planned": args.epochs, "seeds": seeds,
                        "validation": f"MNIST test set ({x_va.shape[0]})",
                        "smoke": args.smoke, "batched": args.batched},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "jax": jax.__version__, "backend": jax.default_backend(),
                        "device": str(jax.devices()[0])},
            "paper_table1_100_epochs": PAPER}

    if args.batched:
        if args.extra or args.other_seeds_epochs:
            raise SystemExit("--batched: every method runs all --seeds for --epochs (no "
                             "--extra, --other-seeds-epochs)")
        result = header() | run_batched(args, ((x_tr, y_tr), (x_va, y_va)), out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        plot(result, out.with_suffix(".png"))
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

    def write():
        result = header() | {
            "runs": {k: {"method": r["method"], "seed": r["seed"], "seconds": r["seconds"],
                         "epochs_planned": r["epochs"], "curve": r["curve"]}
                     for k, r in runs.items()},
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        arrays = {}
        for name, r in runs.items():
            for i, x in enumerate(jax.tree.leaves((r["params"], r["state"]))):
                arrays[f"{name}/{i}"] = np.asarray(x)
        np.savez(ckpt, **arrays)
        return result

    deadline = None
    if args.deadline:
        hh, mm = map(int, args.deadline.split(":"))
        deadline = hh * 3600 + mm * 60
    result = None
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
            t0 = time.perf_counter()
            r["params"], r["state"], mean_loss, max_loss = r["epoch_fn"](
                r["params"], r["state"], x_tr, y_tr, idx)
            mean_loss = float(mean_loss)  # waits for the epoch
            dt = time.perf_counter() - t0
            r["seconds"] += dt  # the first epoch includes compilation (noted in the docs)
            acc = float(accuracy(r["params"], x_va, y_va))
            r["curve"].append({"epoch": e + 1, "seconds": r["seconds"], "epoch_seconds": dt,
                               "val_acc": 100 * acc, "train_loss": mean_loss,
                               "max_batch_loss": float(max_loss)})
            print(f"{r['method']}/{r['seed']} epoch {e + 1}: val {100 * acc:.2f}%  "
                  f"loss {mean_loss:.4f}  {dt:.1f}s", flush=True)
        result = write()
    result = write()
    plot(result, out.with_suffix(".png"))
    return result


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
