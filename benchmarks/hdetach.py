"""LSTM vs LSTM + h-detach (Arpit et al., 2019): the copying task and sequential/permuted MNIST.

Both cases train the two methods from the same initial weights on the same batches, in
alternating chunks of ``--chunk`` iterations (one ``lax.scan`` per jitted call, compiled once
ahead of the timed loop, weights and state donated), so machine noise hits both; training seconds
exclude evaluation and diagnostics. Results are written after every finished pair, and
``--resume`` keeps the pairs already in the JSON (refusing one written with another recipe), so
a run cut short keeps its finished rows. ``--replot JSON`` only redraws the PNG beside it.

``copying``: iterations-to-solve against the delay T. Recipe (the authors' ``copying.py``):
input length T+20 = 10 symbols from 1..8, T-1 blanks (0), a delimiter (9), 10 blanks; target =
T+10 blanks then the 10 symbols; the symbol is fed as one scalar; 9 output classes;
cross-entropy at every step; accuracy on the last 10 steps. Hidden 128, Adam 1e-3, batch 100,
global-norm clipping 1.0, p = 0.5. Trend mode (default, what a CPU reaches): for each T in
``--Ts`` and each seed, a fresh batch every iteration (so the accuracy of a batch *before* its
update is a held-out estimate); after each chunk its mean accuracy is one evaluation point; a
run is *solved* at the first chunk whose accuracy is >= ``--target`` and stops once ``--hold``
chunks in a row are, else it runs to its ``--iters`` budget. p is constant. Full mode
(``--full``, for a GPU machine): the paper's T = 100/200/300, 600 epochs of 1,000 iterations on
a fixed set of 100,000 sequences, p switched off for the last 40 epochs, validation accuracy on
5,000 held-out sequences after every epoch. Batched mode (``--batched``): the seeds x methods
of one T train as one ``BatchedTrainer`` (below) on a fixed training set of ``--train-size``
sequences, the held-out accuracy of ``--val-size`` sequences every ``--chunk`` iterations the
evaluation point, a run frozen once it holds the target; ``--checkpoint DIR`` saves the batch
every ``--save-every`` evaluation points and resumes from it.

``mnist``: sequential and permuted MNIST at a CPU budget. Recipe (the authors'
``pixelmnist.py``): 784 steps of one pixel, hidden 100, loss on the last step, Adam 1e-3, batch
100, global-norm clipping 1.0, p = 0.25, 50k/10k train/validation split of the training set
plus the 10k test set, pMNIST a fixed random permutation of the pixels; 200 epochs with p
switched off for the last 40. Reported: MNIST 98.6 (LSTM) / 98.8 (h-detach); pMNIST 92.3-92.9
(h-detach). Reduced mode (default): ``--pixels-per-step`` pixels per step (4: T=196), as many
epochs as the budget allows (``--epochs``; an epoch can be cut to ``--epoch-size`` examples,
drawn afresh from the 50k each epoch). Validation accuracy after every epoch; the test accuracy
is taken at the best validation epoch. Full mode (``--full``): the paper's 784 x 1 pixel steps,
200 epochs of the full 50k, p = 0 for the last 40 epochs. Batched mode (``--batched``): the
seeds x methods of one layout as one ``BatchedTrainer``, an evaluation point every
``--epoch-size`` examples (each seed its own order over the 50k), the test accuracy at each
run's best validation point.

``--batched`` (both cases): one ``admm_jax.train.BatchedTrainer`` per T or layout, one
compiled program of ``--chunk`` steps per call, p_detach a per-run model argument (both methods
of a seed on the same batches from the same weights), stopped at the budget or after
``--budget-seconds`` of training, ``--group-size`` runs vectorised together; same rows, table
and plot as the default mode, with the batch's figures (``runs_in_batch``, compile seconds).

    python benchmarks/hdetach.py copying --Ts 20,50,100 --seeds 3 --iters 20:4000,50:4000,100:3000
    python benchmarks/hdetach.py mnist --pixels-per-step 4 --seeds 3 --epochs 2
    python benchmarks/hdetach.py copying --batched --Ts 100,200 --iters 20000 --budget-seconds 80
    python benchmarks/hdetach.py mnist --batched --pixels-per-step 1 --layouts pixels \
        --epochs 4 --epoch-size 25000 --budget-seconds 100   # full length, 1,000 iterations
    python benchmarks/hdetach.py copying --smoke
    python benchmarks/hdetach.py mnist --smoke

Writes ``<out>/hdetach_copying.{json,png}`` and ``<out>/hdetach_mnist.{json,png}`` (``--name``;
``_smoke`` and ``_full`` with those modes).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _harness import (
    RESULTS,
    batch_figures,
    command,
    interval_means,
    load_task,
    resume_batch,
    stopwatch,
    timed,
    train_batch,
    validation_split,
    write_json,
    write_plot,
    write_results,
)
from flax import nnx

from admm_jax import LSTM, cell_path_grad_norms, lstm_apply, sample_detach_mask

N_SYMBOLS, N_CLASSES, N_COPY = 8, 9, 10
N_PIXELS = 784
COPYING_SOURCE = "admm_jax.tasks.load('copying') (admm_jax.data.copying)"
MNIST_SOURCE = ("admm_jax.tasks.load('pixel-mnist' / 'permuted-mnist'): train[:50000] / "
                "train[50000:] / test")
COPYING_PAPER = {
    "source": "Arpit et al., ICLR 2019 (arXiv:1810.03023), copying-task experiments, and "
              "the ReScience reproduction; 600 epochs x 1,000 iterations, batch 100, on a GPU",
    "claim": "T=100: LSTM and h-detach both reach ~100%, h-detach faster; T=300: only "
             "h-detach crosses 80%. h-detach helps more as T grows.",
}
MNIST_PAPER = {
    "pixels": {"LSTM": 98.6, "h-detach": 98.8,
               "budget": "784 x 1 pixel, 200 epochs x 50k, p=0 for the last 40"},
    "permuted": {"LSTM": None, "h-detach": 92.3,
                 "budget": "784 x 1 pixel, 200 epochs x 50k (92.92 quoted from the paper)"},
}
# the recipe keys a resumed run must share with the rows it keeps
RESUME_KEYS = {"copying": ("hidden", "batch", "lr", "clip", "p", "chunk", "target", "hold"),
               "mnist": ("pixels_per_step", "hidden", "batch", "lr", "clip", "p", "epochs",
                         "epoch_size", "anneal_epochs", "chunk")}
BATCHED_KEYS = {"copying": ("batched", "train_size"), "mnist": ("batched",)}  # with --batched


# ---------------------------------------------------------------------------- shared


def make_tx(args):
    """Adam after global-norm clipping, the authors' optimizer in both experiments."""
    return optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.lr))


def init_lstm(in_features: int, hidden: int, classes: int, seed: int, *,
              many_to_many: bool = False):
    """The LSTM's initial weights of ``seed`` as a pure dict (both methods start from them)."""
    return nnx.to_pure_dict(nnx.state(LSTM(in_features, hidden, classes, rngs=nnx.Rngs(seed),
                                           many_to_many=many_to_many), nnx.Param))


def new_runs(methods, init, tx, seed: int, /, **fields) -> list[dict]:
    """One run per ``(name, p)`` of ``methods``, each with its own copy of ``init`` (the step
    donates it), its optimizer state and key, and its own copy of ``fields``."""
    runs = []
    for m, (name, p) in enumerate(methods):
        params = jax.tree.map(jnp.array, init)
        runs.append({"method": name, "p_detach": p, "params": params,
                     "opt_state": tx.init(params), "key": jax.random.key(10_000 * seed + m),
                     "train_seconds": 0.0, **copy.deepcopy(fields)})
    return runs


def train_in_turn(runs, c: int, train_chunk, *data, anneal: bool = False):
    """One chunk ``train_chunk(params, opt_state, *data, key, p)`` of every active run, the
    first to go alternating with ``c`` (so machine noise hits both); each run's training clock
    counts its call; yields ``(run, the chunk's other outputs)``."""
    for r in (runs if c % 2 == 0 else runs[::-1]):
        if not r.get("active", True):
            continue
        r["key"], sub = jax.random.split(r["key"])
        p = jnp.float32(0.0 if anneal else r["p_detach"])
        (r["params"], r["opt_state"], *out), seconds = timed(
            train_chunk, r["params"], r["opt_state"], *data, sub, p)
        r["train_seconds"] += seconds
        yield r, [float(v) for v in out]


def resumable_rows(path: pathlib.Path, benchmark: str, config: dict, keys) -> list[dict]:
    """The finished rows of ``path``, after checking it was written with the same recipe."""
    old = json.loads(path.read_text())
    if old.get("benchmark") != benchmark or "runs" not in old:
        raise SystemExit(f"--resume: {path} is not a {benchmark} results file of this version; "
                         "move it away or drop --resume")
    diff = [f"{k}={old['config'].get(k)!r} (now {config[k]!r})" for k in keys
            if old["config"].get(k) != config[k]]
    if diff:
        raise SystemExit(f"--resume: {path} was run with another recipe: {', '.join(diff)}")
    return old["runs"]


def methods_of(args) -> list[tuple[str, float]]:
    return [("LSTM", 0.0), (f"LSTM+h-detach p={args.p}", args.p)]


def config_of(args) -> dict:
    return {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()
            if k not in ("resume", "replot", "data_dir", "case")}


def resume_keys(args) -> tuple[str, ...]:
    return RESUME_KEYS[args.case] + (BATCHED_KEYS[args.case] if args.batched else ())


def batch(methods, args, make_model, train_data, *, stop, checkpoint=None, **kwargs):
    """``(runs, trainer)``: every seed x method as one ``BatchedTrainer`` (a seed's methods
    from the same weights, ``make_model(seed)``, on the same batches; p_detach a per-run model
    argument), resumed from ``checkpoint`` when it holds a batch; ``runs`` the ``(method, p,
    seed)`` of each run."""
    from admm_jax.train import BatchedTrainer

    runs = [(name, p, seed) for seed in range(args.seeds) for name, p in methods]
    models = [make_model(seed) for *_, seed in runs]
    tx = make_tx(args)
    resume = resume_batch(checkpoint, models[0], tx)
    if resume is not None:
        print(f"resuming the batch at iteration {resume[0].history.meta['batch_iteration']}",
              flush=True)
    trainer = BatchedTrainer(
        models, tx, train_data, batch_size=args.batch, seeds=[seed for *_, seed in runs],
        step_key=True, model_kwargs={"p_detach": [p for _, p, _ in runs]}, stop=stop,
        resume=resume, steps_per_call=args.chunk, group_size=args.group_size, validate=False,
        **kwargs)
    return runs, trainer


def seeds_done(seed: int, args) -> str:
    """What a progress line reports as done: one seed, or with ``--batched`` all of them."""
    return f"{args.seeds} seeds batched" if args.batched else f"seed {seed}"


def run_name(row: dict, args) -> str:
    return f"{row['method']} seed {row['seed']}" if args.batched else row["method"]


# ---------------------------------------------------------------------------- copying


def copying(T: int, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The copying task's ``n`` training sequences of ``seed`` (``admm_jax.tasks``) as
    ``(x float32 [n, T+20, 1], y int32 [n, T+20])``."""
    x, y = load_task("copying", seq_len=T, seed=seed, num_train=n, num_test=1).train
    return np.asarray(x, np.float32).reshape(n, T + 2 * N_COPY, 1), np.asarray(y, np.int32)


def chunk_batches(T: int, batch: int, chunk: int, seed: int, index: int):
    """The ``index``-th chunk of fresh training batches of a seed: ``[chunk, batch, T+20, ...]``."""
    x, y = copying(T, chunk * batch, seed=1_000_003 * seed + 7919 * T + index)
    return (x.reshape(chunk, batch, T + 2 * N_COPY, 1), y.reshape(chunk, batch, T + 2 * N_COPY))


def make_fns(tx, seq_len: int):
    """Copying: jitted ``train_chunk`` (``lax.scan`` over a chunk's batches), ``evaluate`` and
    ``diag``."""

    def loss_fn(params, x, y, mask):
        logits = lstm_apply(params, x, detach_mask=mask, many_to_many=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        acc = (jnp.argmax(logits[:, -N_COPY:], -1) == y[:, -N_COPY:]).mean()
        return loss, acc

    def train_chunk(params, opt_state, xs, ys, key, p):
        def step(carry, inp):
            params, opt_state = carry
            x, y, k = inp
            mask = sample_detach_mask(k, p, seq_len)
            (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, mask)
            updates, opt_state = tx.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (loss, acc)

        keys = jax.random.split(key, xs.shape[0])
        (params, opt_state), (loss, acc) = jax.lax.scan(step, (params, opt_state),
                                                        (xs, ys, keys))
        return params, opt_state, loss.mean(), acc.mean()

    def evaluate(params, x, y):
        logits = lstm_apply(params, x, many_to_many=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (jnp.argmax(logits[:, -N_COPY:], -1) == y[:, -N_COPY:]).mean()

    def diag(params, x, y):
        n = cell_path_grad_norms(lambda q, m: loss_fn(q, x, y, m)[0], params, seq_len,
                                 select=lambda g: g["cell"])
        return jnp.stack([n.full, n.cell, n.h_paths, n.ratio])

    return (jax.jit(train_chunk, donate_argnums=(0, 1)), jax.jit(evaluate), jax.jit(diag))


def parse_iters(spec: str, Ts: list[int]) -> dict[int, int]:
    """``"4000"`` (every T) or ``"20:4000,50:3000"`` -> ``{T: iterations}``."""
    if ":" not in spec:
        return dict.fromkeys(Ts, int(spec))
    out = {int(k): int(v) for k, v in (item.split(":") for item in spec.split(","))}
    missing = [T for T in Ts if T not in out]
    if missing:
        raise SystemExit(f"--iters: no budget given for T={missing} (got {spec!r})")
    return out


def run_pair(T: int, seed: int, methods, args, fns, budget: int) -> list[dict]:
    """Copying: both methods from the same init on the same batches, alternating chunks."""
    train_chunk, evaluate, diag = fns
    tx = make_tx(args)
    init = init_lstm(1, args.hidden, N_CLASSES, seed, many_to_many=True)
    diag_x, diag_y = copying(T, args.batch, seed=999_999_937 + seed)
    runs = new_runs(methods, init, tx, seed, seed=seed, T=T, active=True, iters=[], acc=[],
                    loss=[], seconds=[], held=0, solved_iter=None, solved_seconds=None,
                    diag_iters=[], diag=[])
    # Compile once, ahead of time, outside the timed loop (every chunk has the same shapes).
    xs, ys = chunk_batches(T, args.batch, args.chunk, seed, 0)
    train_chunk = train_chunk.lower(runs[0]["params"], runs[0]["opt_state"], jnp.asarray(xs),
                                    jnp.asarray(ys), runs[0]["key"], jnp.float32(0)).compile()
    for c in range(budget // args.chunk):
        if not any(r["active"] for r in runs):
            break
        xs, ys = chunk_batches(T, args.batch, args.chunk, seed, c)
        if c % args.diag_every == 0:
            for r in runs:
                if r["active"]:
                    r["diag_iters"].append(c * args.chunk)
                    r["diag"].append(np.asarray(diag(r["params"], diag_x, diag_y)).tolist())
        for r, (loss, acc) in train_in_turn(runs, c, train_chunk, jnp.asarray(xs),
                                            jnp.asarray(ys)):
            it = (c + 1) * args.chunk
            r["iters"].append(it)
            r["acc"].append(acc)
            r["loss"].append(loss)
            r["seconds"].append(r["train_seconds"])
            if acc >= args.target:
                if r["solved_iter"] is None:
                    r["solved_iter"], r["solved_seconds"] = it, r["train_seconds"]
                r["held"] += 1
                if r["held"] >= args.hold:
                    r["active"] = False
            else:
                r["held"] = 0
            if not np.isfinite(loss):
                r["active"] = False
        if args.progress_every and (c + 1) % args.progress_every == 0:
            print(f"  T={T} seed {seed} it {(c + 1) * args.chunk}: " + ", ".join(
                f"{r['method']} acc {r['acc'][-1]:.3f} loss {r['loss'][-1]:.3f}"
                for r in runs), flush=True)
    rows = []
    for r in runs:
        r["diag_iters"].append(r["iters"][-1])
        r["diag"].append(np.asarray(diag(r["params"], diag_x, diag_y)).tolist())
        val_x, val_y = copying(T, args.val_size, seed=123_456_789 + seed)
        vloss, vacc = evaluate(r["params"], jnp.asarray(val_x), jnp.asarray(val_y))
        rows.append({k: r[k] for k in ("method", "p_detach", "seed", "T", "iters", "acc",
                                       "loss", "seconds", "train_seconds", "solved_iter",
                                       "solved_seconds", "diag_iters", "diag")}
                    | {"iterations_done": r["iters"][-1], "budget_iters": budget,
                       "stopped": "solved" if r["held"] >= args.hold else
                       ("diverged" if not np.isfinite(r["loss"][-1]) else "budget"),
                       "final_acc": r["acc"][-1], "final_loss": r["loss"][-1],
                       "val_acc": float(vacc), "val_loss": float(vloss),
                       "seconds_per_iteration": r["train_seconds"] / r["iters"][-1]})
    return rows


def run_batched(T: int, methods, args, budget: int) -> list[dict]:
    """Copying, ``--batched``: every seed x method of ``T`` as one BatchedTrainer (see the
    module docstring); the rows of `run_pair` (``acc``/``loss``: held-out accuracy and mean
    training loss at each evaluation point)."""
    from admm_jax.train import Stop, losses

    ck = None if args.checkpoint is None else args.checkpoint / f"T{T}"
    runs, trainer = batch(
        methods, args, lambda seed: LSTM(1, args.hidden, N_CLASSES, rngs=nnx.Rngs(seed),
                                         many_to_many=True),
        copying(T, args.train_size, seed=T), checkpoint=ck,
        stop=Stop(iterations=budget, budget_seconds=args.budget_seconds),
        metric=losses.last_steps_accuracy(N_COPY),
        evaluation=copying(T, args.val_size, seed=123_456_789 + T))

    def solved(t, _rows):  # freeze a run once it holds the target
        for r, h in enumerate(t.histories):
            acc = h.evals["accuracy"][-args.hold:]
            if t.live[r] and len(acc) == args.hold and min(acc) >= args.target:
                t.freeze(r)
        if args.progress_every and len(t.histories[0].evals["iteration"]) \
                % args.progress_every == 0:
            print(f"  T={T} it {t.iteration}: acc " + " ".join(
                f"{h.evals['accuracy'][-1]:.2f}" for h in t.histories), flush=True)

    train_batch(trainer, args.chunk, on_eval=solved, checkpoint=ck, save_every=args.save_every)
    rows = []
    for (name, p, seed), h in zip(runs, trainer.histories, strict=True):
        ev = h.evals
        iters = [int(i) for i in ev["iteration"]]
        loss = interval_means(h.steps, "loss", iters)
        hit = next((k for k, a in enumerate(ev["accuracy"]) if a >= args.target), None)
        rows.append({"method": name, "p_detach": p, "seed": seed, "T": T, "iters": iters,
                     "acc": list(ev["accuracy"]), "loss": loss, "seconds": list(ev["time"]),
                     "solved_iter": None if hit is None else iters[hit],
                     "solved_seconds": None if hit is None else ev["time"][hit],
                     "diag_iters": [], "diag": [],
                     "iterations_done": len(h.steps.get("iteration", [])),
                     "budget_iters": budget,
                     "stopped": ("solved" if "frozen_at" in h.meta else
                                 "diverged" if "diverged_at" in h.meta else "budget"),
                     "final_acc": ev["accuracy"][-1],
                     "final_loss": next((v for v in loss[::-1] if np.isfinite(v)),
                                        float("nan")),
                     "val_acc": ev["accuracy"][-1], "val_loss": ev["loss"][-1]}
                    | batch_figures(trainer, h))
    return rows


def first_at(run: dict, thr: float) -> tuple[int | None, float | None]:
    """(iterations, training seconds) at the first evaluation point with accuracy >= thr."""
    for it, acc, sec in zip(run["iters"], run["acc"], run["seconds"], strict=True):
        if acc >= thr:
            return it, sec
    return None, None


def acc_at(run: dict, it: int) -> float:
    """Accuracy at evaluation point ``it`` (the last one if the run stopped before it)."""
    return run["acc"][run["iters"].index(it)] if it in run["iters"] else run["acc"][-1]


def summarize(rows: list[dict], Ts: list[int], methods) -> list[dict]:
    """Copying, per (T, method): iterations/seconds to solve (solved seeds) and final accuracy.

    Runs of one T may have different budgets (e.g. a resumed job); ``common_iters`` is the
    smallest budget among them, where the accuracy of every seed is compared.
    """
    out = []
    for T in Ts:
        common = min((r["budget_iters"] for r in rows if r["T"] == T), default=None)
        for name, _ in methods:
            rs = [r for r in rows if r["T"] == T and r["method"] == name]
            if not rs:
                continue
            solved = [r for r in rs if r["solved_iter"] is not None]
            it = [r["solved_iter"] for r in solved]
            sec = [r["solved_seconds"] for r in solved]
            acc = [r["val_acc"] for r in rs]
            out.append({
                "T": T, "method": name, "seeds": len(rs), "solved": len(solved),
                "iters_to_target": [r["solved_iter"] for r in rs],
                "seconds_to_target": [r["solved_seconds"] for r in rs],
                "iters_to_target_mean": float(np.mean(it)) if it else None,
                "iters_to_target_std": float(np.std(it)) if it else None,
                "seconds_to_target_mean": float(np.mean(sec)) if sec else None,
                "final_val_acc_mean": float(np.mean(acc)), "final_val_acc_std": float(np.std(acc)),
                "final_val_acc": acc, "iterations_done": [r["iterations_done"] for r in rs],
                "budget_iters": rs[0]["budget_iters"],
                "budget_iters_per_seed": [r["budget_iters"] for r in rs],
                "iters_to_50pct": [first_at(r, 0.5)[0] for r in rs],
                "seconds_to_50pct": [first_at(r, 0.5)[1] for r in rs],
                "iters_to_80pct": [first_at(r, 0.8)[0] for r in rs],
                "common_iters": common,
                "acc_at_common_iters": [acc_at(r, common) for r in rs],
                "acc_at_common_iters_mean": float(np.mean([acc_at(r, common) for r in rs])),
                "acc_at_common_iters_std": float(np.std([acc_at(r, common) for r in rs])),
                "seconds_per_iteration_mean": float(np.mean(
                    [r["seconds_per_iteration"] for r in rs])),
            })
    return out


def print_table(summary: list[dict], target: float) -> None:
    head = f"iters to {int(100 * target)}%"
    print(f"\n{'T':>4s} {'method':24s} {'solved':>7s} {head:>20s} {'iters to 50%':>20s} "
          f"{'acc at common it.':>24s} {'val acc at end':>15s} {'s/iter':>7s}")

    def fmt(values):
        return ",".join("-" if v is None else str(v) for v in values)

    for s in summary:
        common = (f"{100 * s['acc_at_common_iters_mean']:.1f}+-"
                  f"{100 * s['acc_at_common_iters_std']:.1f}% @{s['common_iters']}")
        print(f"{s['T']:4d} {s['method']:24s} {s['solved']:3d}/{s['seeds']:<3d} "
              f"{fmt(s['iters_to_target']):>20s} {fmt(s['iters_to_50pct']):>20s} "
              f"{common:>24s} {100 * s['final_val_acc_mean']:8.1f}+-"
              f"{100 * s['final_val_acc_std']:.1f}% {s['seconds_per_iteration_mean']:7.3f}")


def full_mode(args, methods, *, epochs: int = 600, per_epoch: int = 1000, anneal: int = 40,
              train_size: int = 100_000, test_size: int = 5_000) -> int:
    """Copying at the paper's budget: fixed 100k training set, 600 epochs x 1,000 iterations
    (GPU)."""
    tx = make_tx(args)
    args.out.mkdir(parents=True, exist_ok=True)
    for T in args.Ts:
        train_chunk, evaluate, _ = make_fns(tx, T + 2 * N_COPY)
        for seed in range(args.seeds):
            train_x, train_y = copying(T, train_size, seed=seed)
            test_x, test_y = copying(T, test_size, seed=10_000 + seed)
            test_x, test_y = jnp.asarray(test_x), jnp.asarray(test_y)
            rng = np.random.default_rng(seed)
            for m, (name, p) in enumerate(methods):
                init = init_lstm(1, args.hidden, N_CLASSES, seed, many_to_many=True)
                params, opt_state = init, tx.init(init)
                key = jax.random.key(10_000 * seed + m)
                hist = []
                clock = stopwatch()
                for epoch in range(epochs):
                    pe = 0.0 if epoch >= epochs - anneal else p
                    for _ in range(per_epoch // args.chunk):
                        idx = rng.choice(train_size, (args.chunk, args.batch))
                        key, sub = jax.random.split(key)
                        params, opt_state, _, _ = train_chunk(
                            params, opt_state, jnp.asarray(train_x[idx]),
                            jnp.asarray(train_y[idx]), sub, jnp.float32(pe))
                    vloss, vacc = evaluate(params, test_x, test_y)
                    hist.append({"epoch": epoch + 1, "val_acc": float(vacc),
                                 "val_loss": float(vloss), "seconds": clock()})
                path = args.out / f"hdetach_copying_full_T{T}_{m}_{seed}.json"
                write_json(path, {"T": T, "method": name, "seed": seed, "history": hist})
                print(f"T={T} {name} seed {seed}: final validation accuracy "
                      f"{hist[-1]['val_acc']:.4f}; wrote {path}")
    return 0


def copying_main(args, argv, ap) -> int:
    if args.replot is not None:
        result = json.loads(args.replot.read_text())
        methods = list(dict.fromkeys((r["method"], r["p_detach"]) for r in result["runs"]))
        Ts = sorted({r["T"] for r in result["runs"]})
        result["summary"] = summarize(result["runs"], Ts, methods)
        write_plot(args.replot.parent, args.replot.stem, lambda fig: copying_plot(fig, result))
        return 0
    smoke_defaults(args, ap, {"Ts": "5", "hidden": 16, "seeds": 1, "iters": "10", "chunk": 5,
                              "diag_every": 1, "val_size": 50, "batch": 20,
                              "train_size": 200, "name": "hdetach_copying_smoke"})
    if args.full:
        args.Ts, args.seeds, args.chunk = "100,200,300", 3, 50
    try:
        Ts = [int(t) for t in args.Ts.split(",")]
    except ValueError:
        raise SystemExit(f"--Ts: expected comma-separated integers, got {args.Ts!r}") from None
    if any(t < 1 for t in Ts):
        raise SystemExit(f"--Ts: expected delays >= 1, got {Ts}")
    if args.chunk < 1 or not 0.0 < args.target <= 1.0 or not 0.0 <= args.p <= 1.0:
        raise SystemExit("--chunk must be >= 1, --target in (0, 1], --p in [0, 1]")
    args.Ts = Ts
    methods = methods_of(args)
    if args.full:
        return full_mode(args, methods)
    budgets = parse_iters(args.iters, Ts)
    for T, b in budgets.items():
        if b < args.chunk:
            raise SystemExit(f"--iters: budget {b} for T={T} is below one chunk ({args.chunk})")

    path = args.out / f"{args.name}.json"
    config = config_of(args)
    rows = []
    if args.resume and path.exists():
        rows = resumable_rows(path, "hdetach_copying", config, resume_keys(args))
        print(f"resuming: {len(rows)} finished runs in {path}")
    tx = make_tx(args)
    cmd = command(__file__, argv)
    for T in Ts:
        fns = make_fns(tx, T + 2 * N_COPY)
        for seed in range(args.seeds):
            if any(r["T"] == T and r["seed"] == seed for r in rows):
                continue
            if args.batched:  # every seed of T at once
                new, wall = timed(run_batched, T, methods, args, budgets[T])
            else:
                new, wall = timed(run_pair, T, seed, methods, args, fns, budgets[T])
            rows += new
            desc = ", ".join(f"{run_name(r, args)}: {r['stopped']} at {r['iterations_done']} it "
                             f"(val acc {r['val_acc']:.3f})" for r in new)
            print(f"T={T} {seeds_done(seed, args)} [{wall:.0f} s wall, "
                  f"{datetime.datetime.now(datetime.UTC):%H:%M}] {desc}", flush=True)
            result = {"benchmark": "hdetach_copying", "config": config | {"Ts": Ts},
                      "data_source": COPYING_SOURCE, "device": str(jax.devices()[0]),
                      "summary": summarize(rows, Ts, methods), "runs": rows,
                      "paper": COPYING_PAPER}
            write_results(args.out, args.name, result, cmd)
        result = json.loads(path.read_text())  # the PNG after each delay
        write_plot(args.out, args.name, lambda fig, res=result: copying_plot(fig, res))
    print_table(result["summary"], args.target)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


def copying_plot(fig, result: dict) -> None:
    """Accuracy and loss vs iteration per T, and iterations-to-target vs T, from a results dict."""
    cfg = result["config"]
    Ts = sorted({r["T"] for r in result["runs"]})
    methods = list(dict.fromkeys(r["method"] for r in result["runs"]))
    colors = dict(zip(methods, ("tab:blue", "tab:red"), strict=False))
    fig.set_size_inches(4.2 * (len(Ts) + 1), 7)
    axes = fig.subplots(2, len(Ts) + 1, squeeze=False)
    for j, T in enumerate(Ts):
        for r in (r for r in result["runs"] if r["T"] == T):
            label = r["method"] if r["seed"] == 0 else None
            axes[0, j].plot(r["iters"], r["acc"], color=colors[r["method"]], alpha=0.8,
                            label=label)
            axes[1, j].plot(r["iters"], r["loss"], color=colors[r["method"]], alpha=0.8,
                            label=label)
        axes[0, j].axhline(cfg["target"], color="gray", ls=":", lw=0.8, label="target")
        axes[0, j].axhline(1 / N_SYMBOLS, color="gray", ls="--", lw=0.8, label="chance (1/8)")
        axes[1, j].axhline(N_COPY * np.log(N_SYMBOLS) / (T + 2 * N_COPY), color="gray",
                           ls="--", lw=0.8, label="blanks right, symbols at chance")
        axes[0, j].set(title=f"T={T}: accuracy, last 10 steps", xlabel="iteration",
                       ylim=(0, 1.02))
        axes[1, j].set(title=f"T={T}: training loss", xlabel="iteration", yscale="log")
        axes[0, j].legend(fontsize=7)
        axes[1, j].legend(fontsize=7)
    ax = axes[0, -1]
    for k, name in enumerate(methods):
        for key, marker, thr in (("iters_to_50pct", "o", 50),
                                 ("iters_to_target", "s", int(100 * cfg["target"]))):
            pts = []
            for s in (s for s in result["summary"] if s["method"] == name):
                for it, done in zip(s[key], s["iterations_done"], strict=True):
                    x = s["T"] * (1 + 0.04 * (2 * k - 1))
                    ax.scatter(x, it if it is not None else done, color=colors[name],
                               marker=marker if it is not None else "^", s=30,
                               facecolors=colors[name] if it is not None else "none")
                its = [v for v in s[key] if v is not None]
                if len(its) == len(s[key]):
                    pts.append((s["T"], np.mean(its)))
            if pts:
                ax.plot(*zip(*pts, strict=True), color=colors[name],
                        ls="-" if marker == "o" else "--", label=f"{name}: to {thr}% (mean)")
    ax.set(title="iterations to 50% (o) / to target (s);\nopen triangle: not reached "
                 "within the run", xlabel="delay T", ylabel="iterations", xscale="log",
           yscale="log", xticks=Ts, xticklabels=[str(T) for T in Ts])
    ax.minorticks_off()
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    axes[1, -1].axis("off")
    axes[1, -1].text(0.0, 1.0, "Paper: " + result["paper"]["claim"] + "\n\n"
                     + result["paper"]["source"] + "\n\nHere: "
                     + f"{len({r['seed'] for r in result['runs']})} seeds, budget "
                     + ", ".join(f"T={s['T']}: " + "/".join(
                         str(b) for b in sorted(set(s["budget_iters_per_seed"]))) + " it"
                         for s in result["summary"][::2])
                     + f", batch {cfg['batch']}, hidden {cfg['hidden']}, "
                     + result.get("device", "CPU"),
                     va="top", wrap=True, fontsize=8, transform=axes[1, -1].transAxes)


# ---------------------------------------------------------------------------- mnist


def mnist_splits(layout: str, pixels_per_step: int, data_dir):
    """``(x_train, y_train), (x_val, y_val), (x_test, y_test)`` as ``[N, 784/pps, pps]``: the
    task (pixel- or permuted-MNIST, permutation seed 0), its training set split 50k/10k by the
    harness's ``validation_split``."""
    task = load_task("pixel-mnist" if layout == "pixels" else "permuted-mnist",
                     seq_len=N_PIXELS // pixels_per_step, data_dir=data_dir)
    (xtr, ytr), (xte, yte) = ((np.asarray(x, np.float32), np.asarray(y, np.int32))
                              for x, y in (task.train, task.test))
    return (*validation_split(xtr, ytr, parts=6), (xte, yte))


def make_mnist_fns(tx, seq_len: int):
    """MNIST: jitted ``train_chunk`` (a ``lax.scan`` over minibatch indices) and ``correct``."""

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


def run_mnist_pair(layout, seed, data, methods, args, fns) -> list[dict]:
    """MNIST: both methods from the same init on the same minibatches, alternating chunks.

    ``fns`` is ``(tx, train_chunk, correct)``; ``train_chunk`` is compiled ahead of time on the
    first pair and kept in ``fns[3]`` for the next ones (every pair has the same shapes).
    """
    (xtr, ytr), (xva, yva), (xte, yte) = data
    tx, train_chunk, correct = fns[:3]
    init = init_lstm(args.pixels_per_step, args.hidden, 10, seed)
    x_all, y_all = jnp.asarray(xtr), jnp.asarray(ytr)
    steps = args.epoch_size // args.batch
    runs = new_runs(methods, init, tx, seed, losses=[], best=(-1.0, 0, None),
                    history={"epoch": [], "train_loss": [], "val_acc": [], "seconds": []})
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
            for r, (loss,) in train_in_turn(runs, c, train_chunk, x_all, y_all,
                                            jnp.asarray(idx, jnp.int32), anneal=anneal):
                r["losses"].append(loss)
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


def run_mnist_batched(layout, data, methods, args) -> list[dict]:
    """MNIST, ``--batched``: every seed x method of ``layout`` as one BatchedTrainer; the rows
    of `run_mnist_pair`, the test accuracy at each run's best validation point."""
    from admm_jax.train import Evaluation, Stop, stacked

    (xtr, ytr), (xva, yva), (xte, yte) = data
    steps = args.epoch_size // args.batch
    runs, trainer = batch(
        methods, args, lambda seed: LSTM(args.pixels_per_step, args.hidden, 10,
                                         rngs=nnx.Rngs(seed)),
        (xtr, ytr), evaluation=Evaluation((xva, yva), batch_size=args.eval_batch),
        stop=Stop(iterations=args.epochs * steps, budget_seconds=args.budget_seconds))
    best = [(-1.0, 0, None)] * len(runs)

    def on_eval(t, rows):
        epoch = len(t.histories[0].evals["iteration"])
        for r, row in enumerate(rows):
            if row["accuracy"] > best[r][0]:
                best[r] = (row["accuracy"], epoch,
                           nnx.to_pure_dict(jax.device_get(stacked.unstack(t.params, r))))
        if epoch >= args.epochs - args.anneal_epochs:
            t.set_model_kwarg("p_detach", 0.0)
        print(f"  {layout} epoch {epoch} (it {t.iteration}, {t.train_seconds:.0f} s): val "
              + " ".join(f"{row['accuracy']:.3f}" for row in rows), flush=True)

    train_batch(trainer, steps, on_eval=on_eval)
    correct = make_mnist_fns(make_tx(args), N_PIXELS // args.pixels_per_step)[1]
    out = []
    for (name, p, seed), h, (val, best_epoch, params) in zip(runs, trainer.histories, best,
                                                             strict=True):
        ev = h.evals
        it = [int(i) for i in ev["iteration"]]
        out.append({"layout": layout, "seed": seed, "method": name, "p_detach": p,
                    "history": {"epoch": list(range(1, len(it) + 1)), "iteration": it,
                                "train_loss": interval_means(h.steps, "loss", it),
                                "val_acc": list(ev["accuracy"]), "seconds": list(ev["time"])},
                    "best_val_epoch": best_epoch, "best_val_acc": val,
                    "test_acc_at_best_val": accuracy(correct, params, xte, yte, args.eval_batch),
                    "iterations": len(h.steps["iteration"])} | batch_figures(trainer, h))
    return out


def summarize_mnist(rows, layouts, methods) -> list[dict]:
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


def mnist_plot(fig, result: dict) -> None:
    """Validation accuracy against epochs and training seconds, one column per layout."""
    cfg = result["config"]
    layouts = list(dict.fromkeys(r["layout"] for r in result["runs"]))
    methods = list(dict.fromkeys(r["method"] for r in result["runs"]))
    colors = dict(zip(methods, ("tab:blue", "tab:red"), strict=False))
    fig.set_size_inches(5.5 * len(layouts), 7)
    axes = fig.subplots(2, len(layouts), squeeze=False)
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


def mnist_main(args, argv, ap) -> int:
    if args.replot is not None:
        result = json.loads(args.replot.read_text())
        write_plot(args.replot.parent, args.replot.stem, lambda fig: mnist_plot(fig, result))
        return 0
    smoke_defaults(args, ap, {"pixels_per_step": 28, "hidden": 16, "seeds": 1, "epochs": 2,
                              "epoch_size": 200, "chunk": 2, "eval_batch": 500,
                              "eval_size": 1000, "name": "hdetach_mnist_smoke"})
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
    bad = [lay for lay in layouts if lay not in MNIST_PAPER]
    if bad:
        raise SystemExit(f"--layouts: expected pixels and/or permuted, got {bad}")
    methods = methods_of(args)

    path = args.out / f"{args.name}.json"
    config = config_of(args)
    rows = []
    if args.resume and path.exists():
        rows = resumable_rows(path, "hdetach_mnist", config, resume_keys(args))
        print(f"resuming: {len(rows)} finished runs in {path}")
    data = {layout: mnist_splits(layout, args.pixels_per_step, args.data_dir)
            for layout in layouts}
    if args.eval_size < 50000:  # smoke runs: evaluate on the first examples only
        data = {k: (tr, (va[0][:args.eval_size], va[1][:args.eval_size]),
                    (te[0][:args.eval_size], te[1][:args.eval_size]))
                for k, (tr, va, te) in data.items()}
    tx = make_tx(args)
    fns = [tx, *make_mnist_fns(tx, N_PIXELS // args.pixels_per_step)]
    cmd = command(__file__, argv)
    for seed in range(args.seeds):
        for layout in layouts:
            if any(r["layout"] == layout and r["seed"] == seed for r in rows):
                continue
            if args.batched:  # every seed of the layout at once
                new, wall = timed(run_mnist_batched, layout, data[layout], methods, args)
            else:
                new, wall = timed(run_mnist_pair, layout, seed, data[layout], methods, args, fns)
            rows += new
            desc = ", ".join(f"{run_name(r, args)}: val {r['best_val_acc']:.4f} test "
                             f"{r['test_acc_at_best_val']:.4f}" for r in new)
            print(f"{layout} {seeds_done(seed, args)} [{wall:.0f} s wall, "
                  f"{datetime.datetime.now(datetime.UTC):%H:%M}] {desc}", flush=True)
            result = {"benchmark": "hdetach_mnist", "config": config,
                      "data_source": MNIST_SOURCE, "device": str(jax.devices()[0]),
                      "sizes": {"train": 50000, "val": len(data[layout][1][0]),
                                "test": len(data[layout][2][0])},
                      "summary": summarize_mnist(rows, layouts, methods), "runs": rows,
                      "paper": MNIST_PAPER}
            write_results(args.out, args.name, result, cmd,
                          plot=lambda fig, res=result: mnist_plot(fig, res))
    result = json.loads(path.read_text())
    print(f"\n{'layout':9s} {'method':24s} {'seeds':>5s} {'test acc (best val ep.)':>24s} "
          f"{'s/iter':>7s}  paper")
    for s in result["summary"]:
        paper = MNIST_PAPER[s["layout"]]["LSTM" if s["method"] == "LSTM" else "h-detach"]
        print(f"{s['layout']:9s} {s['method']:24s} {s['seeds']:5d} "
              f"{100 * s['test_acc_mean']:17.2f} +- {100 * s['test_acc_std']:.2f} "
              f"{s['seconds_per_iteration_mean']:7.3f}  {paper}")
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


# ---------------------------------------------------------------------------- command line


def smoke_defaults(args, ap, smoke: dict) -> None:
    """``--smoke``: smaller defaults; flags given explicitly still win."""
    if args.smoke:
        for k, v in smoke.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)


def _common(p, *, hidden: int, p_detach: float, seeds: int, chunk: int, name: str) -> None:
    """The flags both cases take (their defaults are each experiment's recipe)."""
    p.add_argument("--hidden", type=int, default=hidden)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0, help="global-norm clipping")
    p.add_argument("--p", type=float, default=p_detach, help="h-detach probability")
    p.add_argument("--seeds", type=int, default=seeds, help="seeds per method")
    p.add_argument("--chunk", type=int, default=chunk,
                   help="iterations per jitted call (one lax.scan)")
    p.add_argument("--out", type=pathlib.Path, default=RESULTS)
    p.add_argument("--name", default=name, help="stem of the JSON/PNG")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished pairs already in the JSON")
    p.add_argument("--replot", type=pathlib.Path, default=None,
                   help="only redraw the PNG beside this results JSON")
    g = p.add_argument_group("batched mode")
    g.add_argument("--batched", action="store_true",
                   help="the seeds x methods of each T / layout as one BatchedTrainer")
    g.add_argument("--budget-seconds", type=float, default=None,
                   help="batched: stop each batch after this many training seconds")
    g.add_argument("--group-size", type=int, default=None,
                   help="batched: runs vectorised together (default all; 1: in sequence)")


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="case", required=True)
    c = sub.add_parser("copying", help="iterations-to-solve against the delay T")
    _common(c, hidden=128, p_detach=0.5, seeds=3, chunk=50, name="hdetach_copying")
    c.add_argument("--Ts", default="20,50,100", help="delays, comma-separated")
    c.add_argument("--iters", default="3000",
                   help="iteration budget per run: N, or T:N,T:N,... per delay")
    c.add_argument("--target", type=float, default=0.99, help="accuracy that counts as solved")
    c.add_argument("--hold", type=int, default=3,
                   help="stop a run after this many evaluation points in a row >= target")
    c.add_argument("--diag-every", type=int, default=20,
                   help="chunks between cell-path gradient diagnostics")
    c.add_argument("--progress-every", type=int, default=0,
                   help="print both runs' accuracy every this many chunks (0: never)")
    c.add_argument("--val-size", type=int, default=1000,
                   help="held-out sequences evaluated at the end of each run")
    c.add_argument("--smoke", action="store_true",
                   help="a few seconds: T=5, hidden 16, 2 chunks of 5 iterations, 1 seed")
    c.add_argument("--full", action="store_true",
                   help="the paper's T=100/200/300, 600 x 1,000 iterations (GPU machine)")
    c.add_argument("--train-size", type=int, default=100_000,
                   help="batched: the fixed training set (sequences)")
    c.add_argument("--checkpoint", type=pathlib.Path, default=None,
                   help="batched: save each T's batch here (DIR/T<T>) and resume from it")
    c.add_argument("--save-every", type=int, default=20,
                   help="batched: evaluation points between checkpoints")
    m = sub.add_parser("mnist", help="sequential and permuted MNIST at a CPU budget")
    _common(m, hidden=100, p_detach=0.25, seeds=3, chunk=50, name="hdetach_mnist")
    m.add_argument("--layouts", default="pixels,permuted")
    m.add_argument("--pixels-per-step", type=int, default=4,
                   help="pixels fed per step: 784 / this = sequence length (paper: 1)")
    m.add_argument("--eval-batch", type=int, default=1000)
    m.add_argument("--epochs", type=int, default=2, help="budget: epochs (paper: 200)")
    m.add_argument("--epoch-size", type=int, default=50000,
                   help="examples per epoch, drawn afresh from the 50k (paper: 50000)")
    m.add_argument("--anneal-epochs", type=int, default=0,
                   help="last epochs with p = 0 (paper: 40 of 200)")
    m.add_argument("--eval-size", type=int, default=50000,
                   help="validation/test examples evaluated (default: all 10k)")
    m.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"))
    m.add_argument("--smoke", action="store_true",
                   help="a few seconds: 28 steps x 28 px, hidden 16, 1 seed, 2 x 200 examples")
    m.add_argument("--full", action="store_true",
                   help="the paper's recipe: 784 x 1 px, 200 epochs, anneal 40 (GPU machine)")
    return ap, {"copying": c, "mnist": m}


def main(argv: list[str] | None = None) -> int:
    ap, cases = parser()
    args = ap.parse_args(argv)
    run = copying_main if args.case == "copying" else mnist_main
    return run(args, argv, cases[args.case])


if __name__ == "__main__":
    sys.exit(main())
