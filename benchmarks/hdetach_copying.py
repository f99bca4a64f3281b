"""Copying task: LSTM vs LSTM + h-detach (Arpit et al., 2019), iterations-to-solve against T.

Recipe (the authors' code, ``copying.py``): input length T+20 = 10 symbols from 1..8, T-1
blanks (0), a delimiter (9), 10 blanks; target = T+10 blanks then the 10 symbols; the symbol is
fed as one scalar; 9 output classes; cross-entropy at every step; accuracy on the last 10 steps.
Hidden 128, Adam 1e-3, batch 100, global-norm clipping 1.0, p = 0.5.

Trend mode (default, what a CPU reaches): for each delay T in ``--Ts`` and each seed, the two
methods start from the same weights, see the same batches (a fresh batch every iteration, so
the accuracy of a batch *before* its update is a held-out estimate), and train in alternating
chunks of ``--chunk`` iterations (one ``lax.scan`` per jitted call), so machine noise hits both.
After each chunk the chunk's mean accuracy is one evaluation point; a run is *solved* at the
first chunk whose accuracy is >= ``--target`` and stops once ``--hold`` chunks in a row are,
else it runs to its ``--iters`` budget. p is constant (no annealing: runs stop at a target).
Training seconds exclude the diagnostic. Results are written after every (T, seed) pair, and
``--resume`` skips the pairs already in the JSON, so a run cut short keeps its finished rows.

Batched mode (``--batched``): the seeds x methods of one T train as one
``admm_jax.train.BatchedTrainer`` (one compiled program, p_detach a per-run model argument):
a fixed training set of ``--train-size`` sequences in each seed's own order (both methods of
a seed see the same batches from the same weights), the held-out accuracy of ``--val-size``
sequences every ``--chunk`` iterations as the evaluation point, a run frozen once it holds the
target, the batch stopped at its ``--iters`` budget or after ``--budget-seconds`` of training.
``--checkpoint DIR`` saves the batch at every ``--save-every`` evaluation points and resumes
from it; ``--resume`` keeps the finished T's. Same JSON rows, table and plot as the trend mode.

Full mode (``--full``, for a GPU machine; not run on CPU here): the paper's T = 100/200/300,
600 epochs of 1,000 iterations on a fixed set of 100,000 sequences, p switched off for the last
40 epochs, validation accuracy on 5,000 held-out sequences after every epoch.

    python benchmarks/hdetach_copying.py --Ts 20,50,100 --seeds 3 --iters 20:4000,50:4000,100:3000
    python benchmarks/hdetach_copying.py --batched --Ts 100,200 --iters 20000 --budget-seconds 80
    python benchmarks/hdetach_copying.py --smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from admm_jax import LSTM, cell_path_grad_norms, lstm_apply, sample_detach_mask
from admm_jax.data import copying as _copying_pkg

N_SYMBOLS, N_CLASSES, N_COPY = 8, 9, 10
DATA_SOURCE = "admm_jax.data.copying"
PAPER = {
    "source": "Arpit et al., ICLR 2019 (arXiv:1810.03023), copying-task experiments, and "
              "the ReScience reproduction; 600 epochs x 1,000 iterations, batch 100, on a GPU",
    "claim": "T=100: LSTM and h-detach both reach ~100%, h-detach faster; T=300: only "
             "h-detach crosses 80%. h-detach helps more as T grows.",
}


def copying(T: int, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`admm_jax.data.copying` as ``(x float32 [n, T+20, 1], y int32 [n, T+20])``."""
    x, y = _copying_pkg(T, n, seed=seed)
    return np.asarray(x, np.float32).reshape(n, T + 2 * N_COPY, 1), np.asarray(y, np.int32)


def chunk_batches(T: int, batch: int, chunk: int, seed: int, index: int):
    """The ``index``-th chunk of fresh training batches of a seed: ``[chunk, batch, T+20, ...]``."""
    x, y = copying(T, chunk * batch, seed=1_000_003 * seed + 7919 * T + index)
    return (x.reshape(chunk, batch, T + 2 * N_COPY, 1), y.reshape(chunk, batch, T + 2 * N_COPY))


def make_fns(tx, seq_len: int):
    """Jitted ``train_chunk`` (``lax.scan`` over a chunk's batches), ``evaluate`` and ``diag``."""

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
    """Train both methods from the same init on the same batches, alternating chunks."""
    train_chunk, evaluate, diag = fns
    tx = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.lr))
    init = nnx.to_pure_dict(nnx.state(
        LSTM(1, args.hidden, N_CLASSES, rngs=nnx.Rngs(seed), many_to_many=True), nnx.Param))
    diag_x, diag_y = copying(T, args.batch, seed=999_999_937 + seed)
    runs = []
    for m, (name, p) in enumerate(methods):
        params = jax.tree.map(jnp.array, init)  # own buffers: the step donates them
        runs.append({"method": name, "p_detach": p, "seed": seed, "T": T,
                     "params": params, "opt_state": tx.init(params),
                     "key": jax.random.key(10_000 * seed + m), "active": True,
                     "iters": [], "acc": [], "loss": [], "seconds": [], "train_seconds": 0.0,
                     "held": 0, "solved_iter": None, "solved_seconds": None,
                     "diag_iters": [], "diag": []})
    # Compile once, ahead of time, outside the timed loop (every chunk has the same shapes).
    xs, ys = chunk_batches(T, args.batch, args.chunk, seed, 0)
    train_chunk = train_chunk.lower(runs[0]["params"], runs[0]["opt_state"], jnp.asarray(xs),
                                    jnp.asarray(ys), runs[0]["key"], jnp.float32(0)).compile()
    n_chunks = budget // args.chunk
    for c in range(n_chunks):
        if not any(r["active"] for r in runs):
            break
        xs, ys = chunk_batches(T, args.batch, args.chunk, seed, c)
        xs, ys = jnp.asarray(xs), jnp.asarray(ys)
        order = runs if c % 2 == 0 else runs[::-1]  # alternate who goes first
        for r in order:
            if not r["active"]:
                continue
            if c % args.diag_every == 0:
                r["diag_iters"].append(c * args.chunk)
                r["diag"].append(np.asarray(diag(r["params"], diag_x, diag_y)).tolist())
            key, sub = jax.random.split(r["key"])
            r["key"] = key
            p = jnp.asarray(r["p_detach"], jnp.float32)
            t0 = time.perf_counter()
            r["params"], r["opt_state"], loss, acc = train_chunk(
                r["params"], r["opt_state"], xs, ys, sub, p)
            loss, acc = float(loss), float(acc)  # blocks until the chunk is done
            r["train_seconds"] += time.perf_counter() - t0
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
    """Per (T, method): iterations/seconds to solve (solved seeds) and final accuracy.

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
    """The paper's budget: fixed 100k training set, 600 epochs x 1,000 iterations (GPU)."""
    tx = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.lr))
    args.out.mkdir(parents=True, exist_ok=True)
    for T in args.Ts:
        seq_len = T + 2 * N_COPY
        train_chunk, evaluate, _ = make_fns(tx, seq_len)
        for seed in range(args.seeds):
            train_x, train_y = copying(T, train_size, seed=seed)
            test_x, test_y = copying(T, test_size, seed=10_000 + seed)
            test_x, test_y = jnp.asarray(test_x), jnp.asarray(test_y)
            rng = np.random.default_rng(seed)
            for m, (name, p) in enumerate(methods):
                init = nnx.to_pure_dict(nnx.state(LSTM(
                    1, args.hidden, N_CLASSES, rngs=nnx.Rngs(seed), many_to_many=True),
                    nnx.Param))
                params, opt_state = init, tx.init(init)
                key = jax.random.key(10_000 * seed + m)
                hist = []
                t0 = time.perf_counter()
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
                                 "val_loss": float(vloss),
                                 "seconds": time.perf_counter() - t0})
                path = args.out / f"hdetach_copying_full_T{T}_{m}_{seed}.json"
                path.write_text(json.dumps({"T": T, "method": name, "seed": seed,
                                            "history": hist}, indent=1))
                print(f"T={T} {name} seed {seed}: final validation accuracy "
                      f"{hist[-1]['val_acc']:.4f}; wrote {path}")
    return 0


def batched_mode(args, methods, budgets: dict[int, int], path: pathlib.Path,
                 rows: list[dict], config: dict) -> None:
    """Each T's seeds x methods as one BatchedTrainer (see the module docstring); a row per
    run in the trend mode's format (``acc``/``loss``: held-out accuracy and mean training
    loss at each evaluation point), written after each T."""
    from _harness import train_batch

    from admm_jax.train import BatchedTrainer, Stop, checkpoint_steps, load_runs, losses

    tx = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.lr))
    runs = [(name, p, seed) for seed in range(args.seeds) for name, p in methods]
    for T in args.Ts:
        if any(r["T"] == T for r in rows):
            continue
        models = [LSTM(1, args.hidden, N_CLASSES, rngs=nnx.Rngs(seed), many_to_many=True)
                  for _, _, seed in runs]
        ck = None if args.checkpoint is None else args.checkpoint / f"T{T}"
        resume = None
        if ck is not None and checkpoint_steps(ck / "run_000"):
            p0 = nnx.state(models[0], nnx.Param)
            resume = load_runs(ck, p0, tx.init(p0))
            print(f"T={T}: resuming the batch at iteration "
                  f"{resume[0].history.meta['batch_iteration']}", flush=True)
        trainer = BatchedTrainer(
            models, tx, copying(T, args.train_size, seed=T),
            metric=losses.last_steps_accuracy(N_COPY), batch_size=args.batch,
            seeds=[seed for *_, seed in runs], step_key=True,
            model_kwargs={"p_detach": [p for _, p, _ in runs]},
            stop=Stop(iterations=budgets[T], budget_seconds=args.budget_seconds),
            evaluation=copying(T, args.val_size, seed=123_456_789 + T), resume=resume,
            steps_per_call=args.chunk, group_size=args.group_size, validate=False)

        def solved(t, _rows, T=T):  # freeze a run once it holds the target
            for r, h in enumerate(t.histories):
                acc = h.evals["accuracy"][-args.hold:]
                if t.live[r] and len(acc) == args.hold and min(acc) >= args.target:
                    t.freeze(r)
            if args.progress_every and len(t.histories[0].evals["iteration"]) \
                    % args.progress_every == 0:
                print(f"  T={T} it {t.iteration}: acc " + " ".join(
                    f"{h.evals['accuracy'][-1]:.2f}" for h in t.histories), flush=True)

        t0 = time.perf_counter()
        train_batch(trainer, args.chunk, on_eval=solved, checkpoint=ck,
                    save_every=args.save_every)
        for (name, p, seed), h in zip(runs, trainer.histories, strict=True):
            ev, st = h.evals, h.steps
            iters = [int(i) for i in ev["iteration"]]
            step_it = np.asarray(st.get("iteration", []))
            loss = [float(np.mean(np.asarray(st["loss"])[(step_it > lo) & (step_it <= hi)]))
                    if np.any((step_it > lo) & (step_it <= hi)) else float("nan")
                    for lo, hi in zip([0, *iters[:-1]], iters, strict=True)]
            hit = next((k for k, a in enumerate(ev["accuracy"]) if a >= args.target), None)
            done = len(st.get("iteration", []))
            stopped = ("solved" if "frozen_at" in h.meta else
                       "diverged" if "diverged_at" in h.meta else "budget")
            rows.append({"method": name, "p_detach": p, "seed": seed, "T": T,
                         "iters": iters, "acc": list(ev["accuracy"]), "loss": loss,
                         "seconds": list(ev["time"]), "train_seconds": trainer.train_seconds,
                         "solved_iter": None if hit is None else iters[hit],
                         "solved_seconds": None if hit is None else ev["time"][hit],
                         "diag_iters": [], "diag": [], "iterations_done": done,
                         "budget_iters": budgets[T], "stopped": stopped,
                         "final_acc": ev["accuracy"][-1],
                         "final_loss": next((v for v in loss[::-1] if np.isfinite(v)),
                                            float("nan")),
                         "val_acc": ev["accuracy"][-1], "val_loss": ev["loss"][-1],
                         "seconds_per_iteration": trainer.train_seconds / max(1, trainer.iteration),
                         "runs_in_batch": trainer.runs,
                         "compile_seconds": h.meta["compile_seconds"]})
        print(f"T={T}: {trainer.runs} runs batched, {trainer.iteration} iterations in "
              f"{trainer.train_seconds:.0f} s of training [{time.perf_counter() - t0:.0f} s "
              f"wall]: " + ", ".join(f"{r['method']}/{r['seed']} {r['stopped']} "
                                    f"{r['val_acc']:.2f}" for r in rows if r["T"] == T),
              flush=True)
        result = {"benchmark": "hdetach_copying", "config": config | {"Ts": args.Ts},
                  "data_source": DATA_SOURCE, "device": str(jax.devices()[0]),
                  "summary": summarize(rows, args.Ts, methods), "runs": rows, "paper": PAPER}
        path.write_text(json.dumps(result, indent=1))
        plot(path.with_suffix(".png"), json.loads(path.read_text()))


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--Ts", default="20,50,100", help="delays, comma-separated")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=1.0, help="global-norm clipping")
    ap.add_argument("--p", type=float, default=0.5, help="h-detach probability")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per method")
    ap.add_argument("--iters", default="3000",
                    help="iteration budget per run: N, or T:N,T:N,... per delay")
    ap.add_argument("--chunk", type=int, default=50,
                    help="iterations per jitted call (one lax.scan) = one evaluation point")
    ap.add_argument("--target", type=float, default=0.99, help="accuracy that counts as solved")
    ap.add_argument("--hold", type=int, default=3,
                    help="stop a run after this many evaluation points in a row >= target")
    ap.add_argument("--diag-every", type=int, default=20,
                    help="chunks between cell-path gradient diagnostics")
    ap.add_argument("--progress-every", type=int, default=0,
                    help="print both runs' accuracy every this many chunks (0: never)")
    ap.add_argument("--val-size", type=int, default=1000,
                    help="held-out sequences evaluated at the end of each run")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
    ap.add_argument("--name", default="hdetach_copying", help="stem of the JSON/PNG")
    ap.add_argument("--resume", action="store_true",
                    help="keep the finished (T, seed) pairs already in the JSON")
    ap.add_argument("--smoke", action="store_true",
                    help="a few seconds: T=5, hidden 16, 2 chunks of 5 iterations, 1 seed")
    ap.add_argument("--full", action="store_true",
                    help="the paper's T=100/200/300, 600 x 1,000 iterations (GPU machine)")
    g = ap.add_argument_group("batched mode")
    g.add_argument("--batched", action="store_true",
                   help="the seeds x methods of each T as one BatchedTrainer")
    g.add_argument("--train-size", type=int, default=100_000,
                   help="fixed training set (sequences) of the batched mode")
    g.add_argument("--budget-seconds", type=float, default=None,
                   help="batched: stop each T's batch after this many training seconds")
    g.add_argument("--group-size", type=int, default=None,
                   help="batched: runs vectorised together (default all; 1: in sequence)")
    g.add_argument("--checkpoint", type=pathlib.Path, default=None,
                   help="batched: save each T's batch here (DIR/T<T>) and resume from it")
    g.add_argument("--save-every", type=int, default=20,
                   help="batched: evaluation points between checkpoints")
    ap.add_argument("--replot", type=pathlib.Path, default=None,
                    help="only redraw the PNG beside this results JSON")
    args = ap.parse_args(argv)
    if args.replot is not None:
        result = json.loads(args.replot.read_text())
        methods = list(dict.fromkeys((r["method"], r["p_detach"]) for r in result["runs"]))
        Ts = sorted({r["T"] for r in result["runs"]})
        result["summary"] = summarize(result["runs"], Ts, methods)
        plot(args.replot.with_suffix(".png"), result)
        return 0
    if args.smoke:  # smaller defaults; flags given explicitly still win
        smoke = {"Ts": "5", "hidden": 16, "seeds": 1, "iters": "10", "chunk": 5,
                 "diag_every": 1, "val_size": 50, "batch": 20, "name": "hdetach_copying_smoke",
                 "train_size": 200}
        for k, v in smoke.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
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
    methods = [("LSTM", 0.0), (f"LSTM+h-detach p={args.p}", args.p)]
    if args.full:
        return full_mode(args, methods)
    budgets = parse_iters(args.iters, Ts)
    for T, b in budgets.items():
        if b < args.chunk:
            raise SystemExit(f"--iters: budget {b} for T={T} is below one chunk ({args.chunk})")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    config = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()
              if k not in ("resume", "replot")}
    rows = []
    if args.resume and path.exists():
        rows = resumable_rows(path, "hdetach_copying", config,
                              ("hidden", "batch", "lr", "clip", "p", "chunk", "target", "hold",
                               *(("batched", "train_size") if args.batched else ())))
        print(f"resuming: {len(rows)} finished runs in {path}")
    if args.batched:
        batched_mode(args, methods, budgets, path, rows, config)
        print_table(json.loads(path.read_text())["summary"], args.target)
        print(f"wrote {path} and {path.with_suffix('.png')}")
        return 0
    tx = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.lr))
    for T in Ts:
        fns = make_fns(tx, T + 2 * N_COPY)
        for seed in range(args.seeds):
            if any(r["T"] == T and r["seed"] == seed for r in rows):
                continue
            t0 = time.perf_counter()
            new = run_pair(T, seed, methods, args, fns, budgets[T])
            rows += new
            desc = ", ".join(f"{r['method']}: {r['stopped']} at {r['iterations_done']} it "
                             f"(val acc {r['val_acc']:.3f})" for r in new)
            print(f"T={T} seed {seed} [{time.perf_counter() - t0:.0f} s wall, "
                  f"{datetime.datetime.now(datetime.UTC):%H:%M}] {desc}", flush=True)
            result = {"benchmark": "hdetach_copying", "config": config | {"Ts": Ts},
                      "data_source": DATA_SOURCE, "device": str(jax.devices()[0]),
                      "summary": summarize(rows, Ts, methods), "runs": rows, "paper": PAPER}
            path.write_text(json.dumps(result, indent=1))
        plot(path.with_suffix(".png"), json.loads(path.read_text()))
    result = json.loads(path.read_text())
    print_table(result["summary"], args.target)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


def plot(path: pathlib.Path, result: dict) -> None:
    """Accuracy and loss vs iteration per T, and iterations-to-target vs T, from a results dict."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    Ts = sorted({r["T"] for r in result["runs"]})
    methods = list(dict.fromkeys(r["method"] for r in result["runs"]))
    colors = dict(zip(methods, ("tab:blue", "tab:red"), strict=False))
    fig, axes = plt.subplots(2, len(Ts) + 1, figsize=(4.2 * (len(Ts) + 1), 7), squeeze=False)
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
