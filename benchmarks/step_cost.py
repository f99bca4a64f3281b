"""What a training step costs, one variant against another, timed round-robin in one process
(one call of each per round, after a warm-up round, so that all see the same machine load);
each figure is a ratio of medians. Random inputs of row-MNIST's shape (D=28, H=128, T=28,
B=128; ``--smoke``: tiny, seconds).

    python benchmarks/step_cost.py admm --data-dir ../shared/data  # ADMMiRNN vs BPTT, T grows
    python benchmarks/step_cost.py iteration --data-dir "$ADMM_JAX_DATA"  # ADMMiRNN vs Adam, ~1 min
    python benchmarks/step_cost.py nonfinite   # fit's step with and without reject_nonfinite
    python benchmarks/step_cost.py trainer     # Trainer (fit's loop) against a bare loop
    python benchmarks/step_cost.py kfac        # the K-FAC methods against Adam and Muon
    python benchmarks/step_cost.py kfac --model lstm        # Flax LSTM-128, row-MNIST shapes
    python benchmarks/step_cost.py kfac --model gru2-imdb   # 2-layer GRU over an embedding
    python benchmarks/step_cost.py trainer --smoke
    python benchmarks/step_cost.py runs        # S runs batched vs in sequence, LSTM-128

``admm``: seconds per ADMMiRNN iteration against seconds per BPTT gradient step (Adam), as T
grows: the same Elman RNN (``--hidden``), the same ``--batch-size`` MNIST samples re-chunked
into T steps of 784 / T pixels (``--seq-lens``), each method's step the one fit runs. Also the
achieved matrix FLOP rate as a fraction of this machine's large-matmul rate (an
``--matmul-n`` square float32 matmul); FLOPs counted from the step's jaxpr (matrix products
``2 m n k``, Cholesky ``n^3 / 3``, triangular solves ``m n^2``, scan bodies times their
length; elementwise work not counted, so the fraction is a lower bound). Writes
``results/admm_speed.{json,png,md}``.

``iteration``: the cost of one ADMMiRNN iteration against one Adam BPTT step at row-MNIST's
sizes (T=28 rows of D=28 pixels of real images, ``--hidden`` 128, ``--batch-size`` 128; issue
28's bar: an iteration within 3x an Adam step), each the step fit runs (ADMMiRNN reports the
batch loss itself, so its step makes no extra forward pass), ``--rounds`` 50 after ``--warmup``
5: the median and the minimum per method and their ratios to Adam's, and the matrix FLOPs of
each step's jaxpr (counted as in ``admm``). Variants: ``adam`` (lr 1e-3), ``admmirnn`` (the
default: the exact output-space solve of the coupled block) and ``admmirnn_cg<k>`` (the coupled
block by ``k`` conjugate-gradient iterations) for ``k`` in ``--cg-steps``. Writes
``results/admm_iteration_cost.{json,md}``.

``nonfinite``: for the gradient optimizers of the registry, the raw optax transformation and
the same one wrapped in ``admm_jax.reject_nonfinite``, each in fit's compiled step (forward,
backward, update, finite flag; weights and state donated). The guard's floor: one
``isfinite`` reduction and one select over the updates and the new state, about
``2 (1 + k) P`` floats read and ``(1 + k) P`` written for ``P`` parameters and ``k``
parameter-sized state arrays (Adam: k = 2), against ``~6 N T H (D + H)`` FLOPs of forward and
backward. Writes ``results/nonfinite_overhead.{json,png,md}``.

``trainer``: ``admm_jax.train.Trainer`` (per step: the next batch from its ``BatchIterator``,
a host gather and a transfer, the compiled step, the metrics and finite flag read back, a
history row) against the same compiled executable called on batches already on the device
with one sync per round: the floor of a host loop. ``--steps`` steps per round, for Adam and
admm_kfac. Writes ``results/trainer_overhead.{json,md}``.

``runs``: the throughput of S independent LSTM-128 runs (``--runs``, copying T=20 and
row-MNIST shapes, random data; clip + Adam) trained as one
``admm_jax.train.BatchedTrainer``, vectorised (``vmap``) or in sequence inside one program
(``map``, ``group_size=1``), against one run's program called S times; ``--steps-per-call``
steps per call. Also the compiled program's scratch (temp) size and the page faults per
step, the two measures that explain a CPU slowdown (docs/training.md). Writes
``results/batched_runs.{json,png,md}``.

``kfac``: fit's step (as ``_harness.compiled_train_step`` builds it) for Adam, Muon,
admm_preconditioned, admm_kfac and admm_kfac with ``fisher="sampled"``, on ``--model``:
``elman`` (the package's tanh ``ElmanRNN``), ``lstm`` (``StackedRNN("lstm")``, Flax's
``LSTMCell``; both row-MNIST's shapes, T=28, D=28) or ``gru2-imdb`` (``StackedRNN("gru",
layers=2, embed=H)`` over a 10,000-word vocabulary, T=100 tokens, 2 classes); H=128, batch 128,
random inputs of those shapes. ``--steps`` steps per call, a multiple of admm_kfac's
``refresh_every`` (10), so its refreshes count at their real rate. Beside each median time
ratio to Adam (``--stats-every K,...`` adds admm_kfac rows with ``stats_every=K``): XLA's
FLOP count of the compiled step (``compiled.cost_analysis()``, which
counts a scan body once, so it under-counts every recurrence), the matrix FLOPs of the step's
jaxpr with scan bodies times their length (the per-step count to compare; a ``cond``'s
branches averaged, so admm_kfac's refresh counts at 1/2 instead of 1/10 and its
eigendecompositions not at all) and, for ``elman``, the closed-form count. Writes
``results/kfac_step_cost_<model>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _harness import (
    RESULTS,
    command,
    compiled_train_step,
    load_task,
    markdown_table,
    median_ms,
    median_ratio,
    round_ratios,
    round_robin,
    write_results,
)
from flax import nnx

import admm_jax
from admm_jax.train import Trainer

# name: (factory, learning rate, parameter-sized arrays in the state)
GRADIENT_OPTIMIZERS = {"sgd": (optax.sgd, 0.1, 0), "adam": (optax.adam, 1e-3, 2),
                       "rmsprop": (optax.rmsprop, 1e-3, 1),
                       "novograd": (admm_jax.novograd, 0.01, 1)}
TRAINER_METHODS = ("adam", "admm_kfac")


def sizes(smoke: bool) -> dict[str, int]:
    return dict(D=4, H=8, T=5, B=16) if smoke else dict(D=28, H=128, T=28, B=128)


def random_batch(n: int, s: dict[str, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, s["T"], s["D"]), np.float32),
            rng.integers(0, 10, n).astype(np.int32))


def nonfinite(args, s) -> tuple[dict, str, object]:
    x, y = (jnp.asarray(a) for a in random_batch(s["B"], s))
    model = admm_jax.ElmanRNN(s["D"], s["H"], 10, rngs=nnx.Rngs(0))
    params = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    runs = {}
    for name, (factory, lr, _) in GRADIENT_OPTIMIZERS.items():
        for label, tx in (("raw", optax.with_extra_args_support(factory(lr))),
                          ("guarded", admm_jax.reject_nonfinite(factory(lr)))):
            fn, a, _ = compiled_train_step(tx, model, x, y)
            runs[(name, label)] = _stepper(fn, list(a))
    times = round_robin(runs, args.rounds, args.warmup)
    rows = [{"optimizer": name, "raw_ms": median_ms(times[(name, "raw")]),
             "guarded_ms": median_ms(times[(name, "guarded")]),
             "ratio": median_ratio(times, (name, "guarded"), (name, "raw")),
             "guard_floats_read": 2 * (1 + k) * params, "guard_floats_written": (1 + k) * params}
            for name, (_, _, k) in GRADIENT_OPTIMIZERS.items()]
    result = {"sizes": {**s, "params": int(params)}, "rounds": args.rounds,
              "step_flops_fwd_bwd": 6 * s["B"] * s["T"] * s["H"] * (s["D"] + s["H"]),
              "rows": rows}

    def plot(fig):
        ax = fig.add_subplot()
        xs = np.arange(len(rows))
        ax.bar(xs - 0.2, [r["raw_ms"] for r in rows], 0.4, label="optax transformation")
        ax.bar(xs + 0.2, [r["guarded_ms"] for r in rows], 0.4, label="reject_nonfinite(...)")
        ax.set_xticks(xs, [r["optimizer"] for r in rows])
        ax.set_ylabel("ms per training step (median)")
        ax.set_title(f"fit's step, D={s['D']} H={s['H']} T={s['T']} B={s['B']}, "
                     f"{args.rounds} rounds round-robin")
        ax.legend()

    table = markdown_table(rows, {"optimizer": "optimizer", "raw_ms": "raw ms",
                                  "guarded_ms": "guarded ms", "ratio": "ratio"})
    return result, table, plot


def count_flops(jaxpr) -> float:
    """Matrix FLOPs of a (closed) jaxpr: dot_general, cholesky, triangular_solve; scans x
    length."""
    total = 0.0
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, rc), (lb, rb_batch) = eqn.params["dimension_numbers"]
            a, b = (v.aval.shape for v in eqn.invars)
            contract = np.prod([a[i] for i in lc]) if lc else 1
            batch = np.prod([a[i] for i in lb]) if lb else 1
            m = np.prod([a[i] for i in range(len(a)) if i not in lc and i not in lb])
            rb = [i for i in range(len(b)) if i not in rc and i not in rb_batch]
            n = np.prod([b[i] for i in rb]) if rb else 1
            total += 2.0 * batch * m * n * contract
        elif name == "cholesky":
            shape = eqn.invars[0].aval.shape
            total += np.prod(shape[:-2]) * shape[-1] ** 3 / 3
        elif name == "triangular_solve":
            a, b = (v.aval.shape for v in eqn.invars)
            total += np.prod(b) * a[-1]
        mult = eqn.params.get("length", 1) if name == "scan" else 1
        for p in eqn.params.values():
            subs = p if isinstance(p, tuple | list) else [p]
            for sub in subs:
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    inner = count_flops(sub)
                    total += mult * inner if name != "cond" else inner / max(1, len(subs))
    return float(total)


def admm(args, s) -> tuple[dict, str, object]:
    from admm_jax import optimizers
    from admm_jax.tasks import rechunk_pixels

    batch = 16 if args.smoke else (args.batch_size or 64)
    hidden = 8 if args.smoke else (args.hidden or 64)
    seq_lens = [28] if args.smoke else [int(t) for t in args.seq_lens.split(",")]
    matmul_n = 128 if args.smoke else args.matmul_n
    x_all, y_all = load_task("pixel-mnist", data_dir=args.data_dir, train_subset=batch,
                             test_subset=1).train
    a = jax.random.normal(jax.random.key(0), (matmul_n, matmul_n), jnp.float32)
    matmul = jax.jit(lambda u, v: u @ v)
    peak = 2.0 * matmul_n ** 3 / (median_ms(round_robin(
        {"matmul": lambda: matmul(a, a).block_until_ready()}, args.rounds,
        args.warmup)["matmul"]) / 1e3)
    rows = []
    for t in seq_lens:
        x, y = jnp.asarray(rechunk_pixels(x_all, t)), jnp.asarray(y_all)
        model = admm_jax.ElmanRNN(x.shape[2], hidden, 10, rngs=nnx.Rngs(0))
        runs, flops = {}, {}
        for name, tx in (("admmirnn", optimizers.get("admmirnn")),
                         ("bptt", optimizers.get("adam"))):
            fn, a_, step = compiled_train_step(tx, model, x, y, use_gradients=None)
            flops[name] = count_flops(jax.make_jaxpr(step)(*a_))
            runs[name] = _stepper(fn, list(a_))
        times = round_robin(runs, args.rounds, args.warmup)
        row = {"T": t, "pixels_per_step": 784 // t}
        for name in runs:
            sec = median_ms(times[name]) / 1e3
            row.update({f"{name}_seconds": sec, f"{name}_flops": flops[name],
                        f"{name}_flop_rate": flops[name] / sec,
                        f"{name}_fraction_of_matmul": flops[name] / sec / peak,
                        f"{name}_times": times[name]})
        row["admm_over_bptt"] = median_ratio(times, "admmirnn", "bptt")
        rows.append(row)
    for r in rows:
        r["admm_growth"] = r["admmirnn_seconds"] / rows[0]["admmirnn_seconds"]
        r["bptt_growth"] = r["bptt_seconds"] / rows[0]["bptt_seconds"]
    result = {"config": {"batch_size": batch, "hidden": hidden, "seq_lens": seq_lens,
                         "rounds": args.rounds, "matmul_n": matmul_n},
              "matmul_flop_rate": peak, "rows": rows}

    def plot(fig):
        fig.set_size_inches(10, 4)
        ax = fig.subplots(1, 2)
        ts = [r["T"] for r in rows]
        ax[0].loglog(ts, [r["admmirnn_seconds"] for r in rows], "o-", label="ADMMiRNN iteration")
        ax[0].loglog(ts, [r["bptt_seconds"] for r in rows], "s-", label="BPTT step (Adam)")
        ax[0].set(xlabel="T (steps per sequence)", ylabel="seconds", title="time per iteration")
        ax[1].semilogx(ts, [r["admmirnn_fraction_of_matmul"] for r in rows], "o-",
                       label="ADMMiRNN")
        ax[1].semilogx(ts, [r["bptt_fraction_of_matmul"] for r in rows], "s-", label="BPTT")
        ax[1].set(xlabel="T", ylabel="achieved / matmul FLOP rate", title="matrix FLOP rate")
        for a_ in ax:
            a_.legend()
            a_.grid(alpha=0.3)

    table = markdown_table(rows, {"T": "T", "pixels_per_step": "px/step",
                                  "admmirnn_seconds": "ADMM s/it", "bptt_seconds": "BPTT s/step",
                                  "admm_over_bptt": "ADMM/BPTT",
                                  "admmirnn_fraction_of_matmul": "ADMM of matmul"})
    return result, table, plot


def iteration(args, s) -> tuple[dict, str, None]:
    batch = 8 if args.smoke else (args.batch_size or 128)
    hidden = 8 if args.smoke else (args.hidden or 128)
    x, y = (jnp.asarray(a) for a in load_task("row-mnist", data_dir=args.data_dir,
                                               train_subset=batch, test_subset=1).train)
    variants = {"adam": optax.adam(1e-3), "admmirnn": admm_jax.admmirnn()}
    for k in (int(c) for c in args.cg_steps.split(",") if c.strip()):
        variants[f"admmirnn_cg{k}"] = admm_jax.admmirnn(cg_steps=k)
    runs, flops = {}, {}
    for name, tx in variants.items():
        model = admm_jax.ElmanRNN(x.shape[2], hidden, 10, rngs=nnx.Rngs(0))
        fn, a, step = compiled_train_step(tx, model, x, y, use_gradients=None)
        flops[name] = count_flops(jax.make_jaxpr(step)(*a))
        runs[name] = _stepper(fn, list(a))
    times = round_robin(runs, args.rounds, args.warmup)
    rows = [{"method": name, "median_seconds": median_ms(times[name]) / 1e3,
             "min_seconds": min(times[name]),
             "median_over_adam": median_ratio(times, name, "adam"),
             "min_over_adam": min(times[name]) / min(times["adam"]),
             "flops": flops[name], "flops_over_adam": flops[name] / flops["adam"],
             "times": times[name]} for name in runs]
    result = {"config": {"T": int(x.shape[1]), "D": int(x.shape[2]), "hidden": hidden,
                         "batch_size": batch, "cg_steps": args.cg_steps, "rounds": args.rounds,
                         "warmup": args.warmup},
              "platform": jax.devices()[0].platform, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "rows": rows}
    for r in rows:
        r["median_ms"], r["min_ms"] = 1e3 * r["median_seconds"], 1e3 * r["min_seconds"]
        r["gflop"] = r["flops"] / 1e9
    table = markdown_table(rows, {"method": "method", "median_ms": "median ms",
                                  "min_ms": "min ms", "median_over_adam": "x Adam (median)",
                                  "min_over_adam": "x Adam (min)", "gflop": "GFLOP",
                                  "flops_over_adam": "x Adam FLOPs"})
    return result, table, None


def _stepper(fn, a, batches=None, steps: int = 1):
    """One call: ``steps`` steps of ``fn`` (cycling through ``batches`` of ``(x, y)``, else
    on ``a``'s own), then a sync."""
    def step():
        for i in range(steps):
            if batches is not None:
                a[2], a[3] = batches[i % len(batches)]
            a[0], a[1], _, ok = fn(*a)
        jax.block_until_ready((a[0], ok))

    return step


def trainer(args, s) -> tuple[dict, str, None]:
    n = s["B"] * args.steps
    x, y = random_batch(n, s)
    batches = [(jnp.asarray(x[i:i + s["B"]]), jnp.asarray(y[i:i + s["B"]]),
                jnp.arange(i, i + s["B"])) for i in range(0, n, s["B"])]
    runs = {}
    for m in TRAINER_METHODS:
        model = admm_jax.ElmanRNN(s["D"], s["H"], 10, rngs=nnx.Rngs(0))
        tx = optax.adam(1e-3) if m == "adam" else admm_jax.admm_kfac(model, x[:1])
        t = Trainer(model, tx, (x, y), batch_size=s["B"])
        runs[(m, "trainer")] = lambda t=t: t.run(args.steps)
        runs[(m, "bare")] = lambda t=t: _bare_loop(t, batches)
    times = round_robin(runs, args.rounds, args.warmup)
    rows = []
    for m in TRAINER_METHODS:
        tr, bare = (median_ms(times[(m, k)]) / args.steps for k in ("trainer", "bare"))
        rows.append({"method": m, "trainer_ms": tr, "bare_ms": bare,
                     "ratio": median_ratio(times, (m, "trainer"), (m, "bare")),
                     "overhead_ms": tr - bare})
    result = {"sizes": s, "rounds": args.rounds, "steps": args.steps, "rows": rows}
    table = markdown_table(rows, {"method": "method", "trainer_ms": "Trainer ms/step",
                                  "bare_ms": "bare loop ms/step", "ratio": "ratio",
                                  "overhead_ms": "overhead ms"})
    return result, table, None


def _bare_loop(t: Trainer, batches) -> None:
    """The trainer's compiled step on device-resident batches, one sync at the end."""
    loop = t.loop
    p, s = loop.params, loop.opt_state
    for i, (xb, yb, ib) in enumerate(batches):
        p, s, _, _ = t.compiled_step(p, s, xb, yb, ib, loop.model_kwargs, t.key,
                                     jnp.asarray(loop.iteration + i, jnp.int32))
    jax.block_until_ready(p)
    loop.params, loop.opt_state = p, s


KFAC_REFRESH = 10
# name: (description, in_features (the vocabulary for tokens), T, classes, StackedRNN kwargs
# or None for the package's ElmanRNN)
KFAC_MODELS = {"elman": ("row-MNIST ElmanRNN tanh", 28, 28, 10, None),
               "lstm": ("row-MNIST StackedRNN lstm", 28, 28, 10,
                        dict(cell="lstm", layers=1)),
               "gru2-imdb": ("IMDb StackedRNN gru x2 over Embed", 10000, 100, 2,
                             dict(cell="gru", layers=2, embed=True))}


def kfac_workload(name: str, hidden: int, batch: int, smoke: bool, seed: int = 0):
    """``(model, batches, description)``: the model ``name`` of :data:`KFAC_MODELS` and 8
    random batches of its shapes (token ids for an embedding; ``smoke``: tiny)."""
    label, d, t, c, stacked = KFAC_MODELS[name]
    if smoke:
        d, t = (50 if stacked and stacked.get("embed") else 4), 5
    rngs = nnx.Rngs(seed)
    if stacked is None:
        model = admm_jax.ElmanRNN(d, hidden, c, rngs=rngs)
    else:
        kw = {**stacked, "embed": hidden if stacked.get("embed") else None}
        model = admm_jax.StackedRNN(kw.pop("cell"), d, hidden, c, rngs=rngs, **kw)
    rng = np.random.default_rng(seed)
    n = 8 * batch
    x = (rng.integers(0, d, (n, t)).astype(np.int32) if stacked and stacked.get("embed")
         else rng.random((n, t, d), np.float32))
    y = rng.integers(0, c, n).astype(np.int32)
    batches = [(jnp.asarray(x[i:i + batch]), jnp.asarray(y[i:i + batch]))
               for i in range(0, n, batch)]
    return model, batches, f"{label}, D={d} T={t} H={hidden} B={batch}"


def kfac_methods(model, x0, stats_every: tuple[int, ...] = ()) -> dict:
    """The methods the kfac case times, from the public factories (``stats_every``: more
    admm_kfac rows, with the statistics every that many steps)."""
    out = {"adam": optax.adam(1e-3),
           "muon": optax.contrib.muon(0.02, adam_learning_rate=2e-3),
           "admm_preconditioned": admm_jax.admm_preconditioned(model, x0),
           "admm_kfac": admm_jax.admm_kfac(model, x0, refresh_every=KFAC_REFRESH),
           "admm_kfac_sampled": admm_jax.admm_kfac(model, x0, refresh_every=KFAC_REFRESH,
                                                   fisher="sampled")}
    for k in stats_every:
        out[f"admm_kfac_stats_every_{k}"] = admm_jax.admm_kfac(
            model, x0, refresh_every=KFAC_REFRESH, stats_every=k)
    return out


def elman_flops(n, t, d, h, c):
    """Closed-form FLOPs (2 x multiply-adds) of one step of the Elman RNN: the BPTT gradient
    (forward, adjoints, weight gradient) and, for admm_kfac, the factor statistics and the
    four-product solve."""
    p = d + h + 1
    fwd = 2 * n * t * (d + h) * h + 2 * n * h * c
    bwd = 2 * n * t * h * h + 2 * n * t * p * h + 2 * n * (h + 1) * c  # adjoints + dW
    stats = 2 * n * t * p * p + 2 * n * t * h * h + 2 * n * (h + 1) ** 2 + 2 * n * c * c
    solve = 2 * (2 * p * p * h + 2 * p * h * h) + 2 * (2 * (h + 1) ** 2 * c + 2 * (h + 1) * c * c)
    return {"adam": fwd + bwd, "admm_kfac": fwd + bwd + stats + solve}


def xla_flops(executable) -> float:
    cost = executable.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def kfac(args, s) -> tuple[dict, str, object]:
    hidden = 8 if args.smoke else (args.hidden or 128)
    batch = 16 if args.smoke else (args.batch_size or 128)
    model, batches, label = kfac_workload(args.model, hidden, batch, args.smoke)
    steps = max(KFAC_REFRESH, args.steps // KFAC_REFRESH * KFAC_REFRESH)
    runs, flops = {}, {}
    for name, tx in kfac_methods(model, batches[0][0], args.stats_every).items():
        fn, a, step = compiled_train_step(tx, model, *batches[0], use_gradients=None)
        flops[name] = (xla_flops(fn), count_flops(jax.make_jaxpr(step)(*a)))
        runs[name] = _stepper(fn, list(a), batches, steps)
    times = round_robin(runs, args.rounds, args.warmup)
    rows = []
    for name in runs:
        per_round = round_ratios(times, name, "adam")
        rows.append({"method": name, "ms_per_step": median_ms(times[name]) / steps,
                     "ratio_vs_adam": median_ratio(times, name, "adam"),
                     "ratio_min": min(per_round), "ratio_max": max(per_round),
                     "ratio_per_round": per_round,
                     "xla_flops": flops[name][0],
                     "xla_flops_vs_adam": flops[name][0] / flops["adam"][0],
                     "jaxpr_flops": flops[name][1],
                     "jaxpr_flops_vs_adam": flops[name][1] / flops["adam"][1]})
    result = {"model": args.model, "workload": label, "rounds": args.rounds,
              "steps_per_round": steps, "refresh_every": KFAC_REFRESH, "rows": rows}
    if args.model == "elman":
        x0 = batches[0][0]
        ana = elman_flops(batch, x0.shape[1], x0.shape[2], hidden, 10)
        result["closed_form_flops"] = ana
        result["closed_form_ratio"] = ana["admm_kfac"] / ana["adam"]

    def plot(fig):
        ax = fig.add_subplot()
        ax.boxplot([r["ratio_per_round"] for r in rows], tick_labels=[r["method"] for r in rows])
        ax.axhline(1.5, color="r", ls=":", lw=1, label="1.5x Adam")
        ax.set_ylabel("step time / Adam's (same round)")
        ax.tick_params(axis="x", labelrotation=20)
        ax.set_title(label, fontsize=9)
        ax.legend()

    table = markdown_table(rows, {"method": "method", "ms_per_step": "ms/step",
                                  "ratio_vs_adam": "x Adam (median)", "ratio_min": "min",
                                  "ratio_max": "max", "xla_flops_vs_adam": "XLA FLOPs x Adam",
                                  "jaxpr_flops_vs_adam": "jaxpr FLOPs x Adam"})
    if "closed_form_ratio" in result:
        table += f"\n\nclosed-form FLOPs admm_kfac / Adam: {result['closed_form_ratio']:.2f}"
    return result, table, plot


RUNS_WORKLOADS = {  # name: (T, D, classes, batch, many_to_many) of an LSTM-128 training step
    "copying": (40, 1, 9, 100, True),  # T=20 copying task: 20 + 20 steps, one scalar input
    "row-mnist": (28, 28, 10, 128, False),
}


def runs(args, s) -> tuple[dict, str, object]:
    """S runs as one batch (BatchedTrainer: vmap, or the runs in sequence inside one program)
    against one run's program called S times, steps_per_call steps per call."""
    import resource

    from admm_jax.train import BatchedTrainer

    hidden = 8 if args.smoke else (args.hidden or 128)
    counts = [2] if args.smoke else [int(v) for v in args.runs.split(",")]
    workloads = ["copying"] if args.smoke else args.workloads.split(",")
    rows = []
    for w in workloads:
        t, d, c, b, m2m = RUNS_WORKLOADS[w]
        if args.smoke:
            t, b = 5, 8
        rng = np.random.default_rng(0)
        x = rng.random((4 * b, t, d), np.float32)
        y = rng.integers(0, c, (4 * b, t) if m2m else 4 * b).astype(np.int32)
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
        for k in [int(v) for v in args.steps_per_call.split(",")]:
            def trainer(n, group, k=k, d=d, c=c, b=b, m2m=m2m, x=x, y=y, tx=tx):
                models = [admm_jax.LSTM(d, hidden, c, rngs=nnx.Rngs(i), many_to_many=m2m)
                          for i in range(n)]
                return BatchedTrainer(models, tx, (x, y), batch_size=b, steps_per_call=k,
                                      group_size=group, validate=False)

            one = trainer(1, None)
            for n in counts:
                variants = {"sequential": (one, n), "vmap": (trainer(n, None), 1),
                            "map": (trainer(n, 1), 1)}
                faults = {v: [] for v in variants}

                def call(v, tr, calls, faults=faults):
                    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    for _ in range(calls):
                        tr.run(tr.steps_per_call)
                    jax.block_until_ready(tr.params)
                    faults[v].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)

                times = round_robin({v: (lambda v=v, tr=tr, c=cl: call(v, tr, c))
                                     for v, (tr, cl) in variants.items()}, args.rounds,
                                     args.warmup)
                row = {"workload": w, "runs": n, "steps_per_call": k, "T": t, "batch": b,
                       "hidden": hidden}
                for v, (tr, _) in variants.items():
                    sec = median_ms(times[v]) / 1e3
                    row[f"{v}_steps_per_s"] = n * k / sec
                    row[f"{v}_x_sequential"] = median_ratio(times, "sequential", v)
                    row[f"{v}_faults_per_step"] = float(np.median(faults[v])) / (n * k)
                    row[f"{v}_temp_mb"] = (tr.compiled.memory_analysis().temp_size_in_bytes
                                           / 2 ** 20)
                    row[f"{v}_times"] = times[v]
                rows.append(row)
    result = {"config": {"runs": counts, "workloads": workloads, "rounds": args.rounds,
                         "hidden": hidden, "steps_per_call": args.steps_per_call,
                         "optimizer": "clip 1.0 + Adam 1e-3"}, "rows": rows}

    def plot(fig):
        fig.set_size_inches(5 * len(workloads), 3.5)
        axes = np.atleast_1d(fig.subplots(1, len(workloads)))
        for ax, w in zip(axes, workloads, strict=True):
            for k in sorted({r["steps_per_call"] for r in rows}):
                rs = [r for r in rows if r["workload"] == w and r["steps_per_call"] == k]
                for v, mark in (("vmap", "o-"), ("map", "s--")):
                    ax.plot([r["runs"] for r in rs], [r[f"{v}_x_sequential"] for r in rs],
                            mark, label=f"{v}, {k} steps/call")
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set(xlabel="runs S", ylabel="throughput / S runs in sequence", title=w)
            ax.legend(fontsize=7)

    table = markdown_table(rows, {"workload": "workload", "runs": "S",
                                  "steps_per_call": "steps/call",
                                  "sequential_steps_per_s": "sequential steps/s",
                                  "vmap_x_sequential": "vmap x seq",
                                  "map_x_sequential": "map x seq",
                                  "vmap_temp_mb": "vmap temp MB",
                                  "vmap_faults_per_step": "vmap faults/step",
                                  "sequential_faults_per_step": "seq faults/step"})
    return result, table, plot


class Case(NamedTuple):
    run: object  # (args, sizes) -> (result, Markdown table, plot callback or None)
    stem: str  # of the result files
    rounds: int  # timed rounds, by default
    steps: int = 1  # steps per round, by default
    warmup: int = 1  # untimed rounds first, by default


CASES = {"admm": Case(admm, "admm_speed", 5),
         "iteration": Case(iteration, "admm_iteration_cost", 50, warmup=5),
         "nonfinite": Case(nonfinite, "nonfinite_overhead", 60),
         "trainer": Case(trainer, "trainer_overhead", 10, 50),
         "kfac": Case(kfac, "kfac_step_cost_{model}", 10, 40),
         "runs": Case(runs, "batched_runs", 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few rounds")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (per case default)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed rounds first (iteration: 5, the others 1)")
    ap.add_argument("--steps", type=int, default=None, help="steps per round (trainer)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--tag", default=None, help="stem of the result files (per case default)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="admm: samples per iteration (default 64); kfac, iteration, runs: 128")
    ap.add_argument("--hidden", type=int, default=None,
                    help="admm: 64 (default); kfac, iteration, runs: 128")
    ap.add_argument("--data-dir", default=os.environ.get("ADMM_JAX_DATA"),
                    help="admm, iteration: MNIST folder (default $ADMM_JAX_DATA)")
    g = ap.add_argument_group("admm")
    g.add_argument("--seq-lens", default="28,112,392,784", help="T, divisors of 784")
    g.add_argument("--matmul-n", type=int, default=2048, help="size of the reference matmul")
    g = ap.add_argument_group("iteration")
    g.add_argument("--cg-steps", default="2,6",
                   help="comma-separated k of the admmirnn_cg<k> variants ('' for none)")
    g = ap.add_argument_group("kfac")
    g.add_argument("--model", choices=tuple(KFAC_MODELS), default="elman")
    g.add_argument("--stats-every", type=lambda v: tuple(int(k) for k in v.split(",") if k),
                   default=(), metavar="K,K,...",
                   help="also admm_kfac with stats_every=K (the statistics every K steps)")
    g = ap.add_argument_group("runs")
    g.add_argument("--runs", default="1,3,6,12", help="numbers of runs S")
    g.add_argument("--workloads", default="copying,row-mnist", help=str(list(RUNS_WORKLOADS)))
    g.add_argument("--steps-per-call", default="10", help="steps per compiled call, a list")
    args = ap.parse_args(argv)
    case = CASES[args.case]
    args.rounds = args.rounds or (2 if args.smoke else case.rounds)
    args.steps = args.steps or (5 if args.smoke else case.steps)
    if args.warmup is None:
        args.warmup = 1 if args.smoke else case.warmup
    result, table, plot = case.run(args, sizes(args.smoke))
    stem = args.tag or case.stem.format(model=args.model) + ("_smoke" if args.smoke else "")
    write_results(args.out, stem, result, command(__file__, argv), table=table, plot=plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
