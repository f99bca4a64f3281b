"""The ``admm-jax`` command line: compare optimizers on a task, or train one run.

    admm-jax compare                                  # adding task, 5 optimizers, ~2 min on CPU
    admm-jax compare --task row-mnist --data-dir ../shared/data \\
        --optimizers admmirnn,adam,sgd,rmsprop,novograd --budget-seconds 60
    admm-jax train --task copying --optimizer adam --epochs 2 --checkpoint-dir runs/copy
    admm-jax list                                     # tasks and optimizers
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from admm_jax import _validation as validation

DEFAULT_OPTIMIZERS = "admmirnn,admm_kfac,adam,rmsprop,sgd"


def _flag(convert: Callable[[str], Any], check: Callable[..., Any]) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert``, then the ``_validation`` function ``check``."""

    def parse(s: str):
        try:
            value = convert(s)
        except ValueError:
            value = s
        try:
            checked = check("value", value)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value: ")) from None
        return value if checked is None else checked

    return parse


_positive_int = _flag(int, validation.positive_int)
_nonnegative_int = _flag(int, validation.nonnegative_int)
_finite_float = _flag(float, validation.finite_number)
_positive_float = _flag(float, validation.positive_number)
_probability = _flag(float, validation.fraction)


def _json_safe(v):
    """Non-finite floats as ``None``: the printed JSON stays strict."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


class _Parser(argparse.ArgumentParser):
    """Errors as ONE line, ``admm-jax train: error: --flag: ...``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _task_help() -> str:
    from admm_jax import tasks

    return ", ".join(tasks.names())


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task and data")
    g.add_argument("--task", default="adding",
                   help="task name: row-mnist, pixel-mnist, permuted-mnist, imdb, copying, "
                        "adding, text (default: adding, synthetic, needs no data)")
    g.add_argument("--data-dir", default=None,
                   help="folder with the real data (MNIST, IMDb); default $ADMM_JAX_DATA, then "
                        "TFDS's folder and the admm_jax cache")
    g.add_argument("--download", action="store_true",
                   help="allow downloading MNIST/IMDb when no local copy is found")
    g.add_argument("--text", dest="text_path", default=None,
                   help="text file for --task text")
    g.add_argument("--seq-len", type=_positive_int, default=None,
                   help="sequence length T: adding T (default 20), copying delay (default 10, "
                        "T = delay + 20), pixel/permuted-mnist a divisor of 784 (default 784), "
                        "imdb review length (default 100), text window (default 50)")
    g.add_argument("--train-subset", type=_positive_int, default=None,
                   help="keep only the first N training samples")
    g.add_argument("--test-subset", type=_positive_int, default=None,
                   help="keep only the first N test samples")
    g.add_argument("--num-train", type=_positive_int, default=10000,
                   help="training samples of the synthetic tasks (default 10000)")
    g.add_argument("--num-test", type=_positive_int, default=1000,
                   help="test samples of the synthetic tasks (default 1000)")
    g.add_argument("--vocab-size", type=_positive_int, default=5000,
                   help="IMDb vocabulary size (default 5000)")
    g = p.add_argument_group("model and training")
    g.add_argument("--cell", default="elman",
                   choices=("elman", "simple", "lstm", "gru", "optimized-lstm"),
                   help="the recurrent model: elman (the package's ElmanRNN, default; what "
                        "admmirnn trains) or Flax's own nnx cell of that name "
                        "(admm_jax.StackedRNN)")
    g.add_argument("--layers", type=_positive_int, default=1,
                   help="stacked recurrent layers (Flax cells; default 1)")
    g.add_argument("--embed", type=_positive_int, default=None,
                   help="embedding width for token inputs (Flax cells; default --hidden)")
    g.add_argument("--hidden", type=_positive_int, default=64,
                   help="hidden units of every recurrent layer (default 64)")
    g.add_argument("--batch-size", type=_positive_int, default=64,
                   help="samples per iteration, the same for every optimizer (default 64)")
    g.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of the weights, the batch order and the synthetic data (default 0)")
    g.add_argument("--eval-batch-size", type=_positive_int, default=500,
                   help="samples per evaluation forward pass (default 500)")
    g.add_argument("--clip-norm", type=_positive_float, default=None,
                   help="clip gradients to this global norm before every method that uses "
                        "them, K-FAC included (not admmirnn; default: no clipping)")
    g.add_argument("--p-detach", type=_probability, default=None,
                   help="h-detach probability in [0, 1] for gradient training (compare: adds a "
                        "NAME+hdetachP run for every gradient optimizer; default: none)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def build_parser() -> argparse.ArgumentParser:
    from admm_jax import optimizers

    opt_names = ", ".join(optimizers.names())
    parser = _Parser(
        prog="admm-jax",
        description="Train recurrent networks with ADMMiRNN, K-FAC and gradient optimizers and "
                    "compare them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + __doc__.split("\n", 2)[2])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser(
        "compare", help="train the same model with several optimizers at one budget",
        description="Train the same model (same initial weights, same batches) with each "
                    "optimizer at the same budget; print a table (final and best test metric, "
                    "training seconds to reach --target, seconds per iteration) and write "
                    "JSON and PNG plots. Compilation and evaluation are excluded from the "
                    "budget and reported.")
    _common(c)
    c.set_defaults(parser=c)
    c.add_argument("--optimizers", default=None,
                   help=f"comma-separated optimizer names from: {opt_names} "
                        f"(default {DEFAULT_OPTIMIZERS}; without admmirnn for a Flax --cell, "
                        "which it cannot train)")
    b = c.add_mutually_exclusive_group()
    b.add_argument("--budget-seconds", type=_positive_float, default=None,
                   help="training seconds per optimizer (default 20 when --iterations is not "
                        "given)")
    b.add_argument("--iterations", type=_positive_int, default=None,
                   help="iterations per optimizer instead of a time budget")
    c.add_argument("--lr", default="",
                   help="learning rates as NAME=VALUE,... (e.g. adam=3e-3,sgd=0.05); others "
                        "use the registry default")
    c.add_argument("--target", type=_finite_float, default=None,
                   help="metric value whose first reaching is timed (default per task: "
                        "accuracy 0.9 row/pixel-MNIST, 0.8 imdb, 0.5 copying/text; MSE 0.05 "
                        "adding)")
    c.add_argument("--eval-points", type=_positive_int, default=20,
                   help="test evaluations spread evenly over the budget (default 20)")
    c.add_argument("--out", default="admm_jax_results",
                   help="folder for compare_<task>.json/.png/.md (default admm_jax_results)")
    c.add_argument("--save-steps", action="store_true",
                   help="also write every training step's loss and seconds into the JSON "
                        "(default: per-evaluation and per-epoch tables only)")

    t = sub.add_parser(
        "train", help="train one model with one optimizer (with checkpoints)",
        description="Train one model with one optimizer; save the history (JSON) and, "
                    "with --checkpoint-dir, the weights and optimizer state after every epoch "
                    "(--resume continues from there).")
    _common(t)
    t.set_defaults(parser=t)
    t.add_argument("--optimizer", default="adam", help=f"one of: {opt_names} (default adam)")
    t.add_argument("--learning-rate", type=_positive_float, default=None,
                   help="learning rate (gradient optimizers; default: the registry's)")
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help="epochs (default 1 when no other stopping rule is given)")
    t.add_argument("--iterations", type=_positive_int, default=None,
                   help="iterations in all: with --resume, the total of the whole run (like "
                        "--epochs and --budget-seconds)")
    t.add_argument("--budget-seconds", type=_positive_float, default=None,
                   help="training seconds (compilation and evaluation excluded)")
    t.add_argument("--eval-every", type=_positive_int, default=None,
                   help="evaluate every N iterations (default: every epoch)")
    t.add_argument("--checkpoint-dir", default=None,
                   help="save the weights, optimizer state, data position and history here "
                        "(orbax, atomic) every epoch and at the end")
    t.add_argument("--checkpoint-every", type=_positive_int, default=None,
                   help="also save a checkpoint every N iterations (needs --checkpoint-dir)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --checkpoint-dir (an "
                        "interrupted run resumed this way gives the uninterrupted run's "
                        "weights, bit for bit, on the same machine)")
    t.add_argument("--on-divergence", choices=("raise", "stop", "increase_rho"),
                   default="raise",
                   help="on a NaN/inf step: raise (exit 3, last good checkpoint kept), stop "
                        "(save the last good state and the history, say so, exit 0) or "
                        "increase_rho (methods with penalties, admmirnn: retry the step with 10x "
                        "the penalties, up to 3 times, then raise); default raise")
    t.add_argument("--out", default="admm_jax_results",
                   help="folder for train_<task>_<optimizer>.json (default admm_jax_results)")

    sub.add_parser("list", help="list the tasks and optimizers",
                   description="List the task and optimizer names.")
    return parser


def _parse_lrs(parser, s: str, names: Sequence[str]) -> dict[str, float]:
    """``NAME=VALUE,...`` for optimizers among ``names`` that take a learning rate."""
    from admm_jax import optimizers

    out = {}
    for item in filter(None, (x.strip() for x in s.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--lr: expected NAME=VALUE, got {item!r}")
        try:
            optimizers.entry(name)
        except ValueError as e:
            parser.error(f"--lr: {e}")
        key = optimizers.canonical_name(name)
        if key not in names:
            parser.error(f"--lr: {key} is not among --optimizers ({', '.join(names)})")
        if optimizers.default_learning_rate(key) is None:
            parser.error(f"--lr: {key} takes no learning rate")
        try:
            out[key] = _positive_float(value)
        except argparse.ArgumentTypeError as e:
            parser.error(f"--lr: {key}: {e}")
    return out


def _load_task(parser, args):
    from admm_jax import compare, data, tasks

    if args.task not in tasks.names():
        parser.error(f"--task: unknown task {args.task!r}; expected one of {_task_help()}")
    try:
        task = tasks.load(args.task, data_dir=args.data_dir, seq_len=args.seq_len,
                          train_subset=args.train_subset, test_subset=args.test_subset,
                          seed=args.seed, num_train=args.num_train, num_test=args.num_test,
                          vocab_size=args.vocab_size, text_path=args.text_path,
                          download=args.download)
    except data.DataNotFoundError as e:
        parser.exit(1, f"admm-jax: error: {e}\n(use --data-dir DIR, set ADMM_JAX_DATA, or pass "
                       "--download)\n")
    except ValueError as e:
        parser.error(str(e))
    try:
        net = task.model(1, **_model_options(args))
    except ValueError as e:
        parser.error(str(e))
    if args.p_detach is not None:
        try:
            compare.check_p_detach_support(net)
        except ValueError as e:
            parser.error(f"--p-detach: {e}")
    return task


def _check_folder(parser, flag: str, path: str | None) -> None:
    """``path`` is, or can be made, a folder this process writes into (probed up front)."""
    if path is None:
        return
    p = pathlib.Path(path)
    existing = next((a for a in (p, *p.parents) if a.exists()), pathlib.Path("."))
    if not existing.is_dir():
        where = "" if existing == p else f" (its ancestor {existing})"
        parser.error(f"{flag}: {path}{where} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".admm-jax-probe-", dir=existing))
    except OSError as e:
        parser.error(f"{flag}: cannot write into {existing}: {e.strerror or e}")


def _model_options(args) -> dict:  # for admm_jax.tasks.Task.model
    return {"cell": args.cell, "layers": args.layers, "embed": args.embed}


def _check_model(parser, args, names, flag: str = "--optimizers") -> None:
    """The model flags fit together and every optimizer can train that model."""
    from admm_jax import optimizers

    if args.cell == "elman" and (args.layers != 1 or args.embed is not None):
        parser.error("--layers, --embed: --cell elman is the package's one-layer ElmanRNN; "
                     "use --cell simple (Flax's SimpleCell) to stack layers or embed tokens")
    bad = [n for n in names if optimizers.entry(n).elman_only]
    if bad and args.cell not in ("elman", "simple"):
        parser.error(f"{flag}: {bad[0]} trains the Elman recurrence only (--cell elman or "
                     f"simple), not --cell {args.cell}")


def _check_state_memory(parser, task, names, hidden) -> None:
    for name in names:
        gib = task.state_bytes(name, hidden) / 2**30
        if gib > 4:
            parser.error(f"{name} would keep {gib:.1f} GiB of per-sample state "
                         f"({len(task.train[0])} samples x T={task.seq_len} x H={hidden}); "
                         "use --train-subset or a smaller --hidden")


def _compare(parser, args) -> int:
    from admm_jax import compare, optimizers

    chosen = args.optimizers
    if chosen is None:  # admmirnn trains the package's ElmanRNN only
        chosen = ",".join(n for n in DEFAULT_OPTIMIZERS.split(",")
                          if args.cell == "elman" or not optimizers.entry(n).elman_only)
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    if not names:
        parser.error("--optimizers: give at least one name")
    _check_folder(parser, "--out", args.out)
    for n in names:
        try:
            optimizers.entry(n)
        except ValueError as e:
            parser.error(f"--optimizers: {e}")
    names = [optimizers.canonical_name(n) for n in names]
    _check_model(parser, args, names)
    lrs = _parse_lrs(parser, args.lr, names)
    budget = args.budget_seconds
    if budget is None and args.iterations is None:
        budget = 20.0
    task = _load_task(parser, args)
    _check_state_memory(parser, task, names, args.hidden)
    target = task.target if args.target is None else args.target
    budget_text = f"{budget:g} s of training" if budget else f"{args.iterations} iterations"
    if args.clip_norm:
        budget_text += f"; gradients clipped to norm {args.clip_norm:g}"
    print(f"task: {task.info}\ntrain {len(task.train[0])} / test {len(task.test[0])} samples; "
          f"{args.cell} RNN H={args.hidden} x {args.layers}; batch {args.batch_size}; "
          "budget per optimizer: "
          f"{budget_text} (compilation and evaluation excluded); seed {args.seed}", flush=True)
    t0 = time.perf_counter()
    try:
        rows, histories = compare.compare(
            task, names, budget_seconds=budget, iterations=args.iterations,
            batch_size=args.batch_size, hidden=args.hidden, seed=args.seed,
            learning_rates=lrs, target=target, eval_points=args.eval_points,
            eval_batch_size=args.eval_batch_size, clip_norm=args.clip_norm,
            p_detach=args.p_detach, progress=not args.no_progress,
            model=_model_options(args))
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    table = compare.format_table(rows, task, target)
    out = pathlib.Path(args.out)
    stem = f"compare_{task.name}"
    config = {k: v for k, v in vars(args).items() if k != "parser"}
    config.update(budget_seconds=budget, target=target, info=task.info,
                  num_train=len(task.train[0]), num_test=len(task.test[0]),
                  command=" ".join(["admm-jax", *sys.argv[1:]]))
    json_path = compare.save(rows, histories, config, out / f"{stem}.json",
                             steps=args.save_steps)
    png_path = compare.plot(histories, task, out / f"{stem}.png")
    md_path = out / f"{stem}.md"
    md_path.write_text(f"{task.info}; budget {budget_text}\n\n{table}\n")
    print(f"\n{table}\n")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    print(f"plots: {png_path}\nresults: {json_path}\ntable: {md_path}")
    return 0


def _train(parser, args) -> int:
    from admm_jax import optimizers
    from admm_jax.train import (
        Checkpoint,
        DivergenceError,
        Evaluation,
        Restored,
        checkpoint_steps,
        fit,
        load_checkpoint,
    )

    try:
        name = optimizers.canonical_name(args.optimizer)
        optimizers.entry(name)
    except ValueError as e:
        parser.error(f"--optimizer: {e}")
    if args.resume and not args.checkpoint_dir:
        parser.error("--resume: needs --checkpoint-dir")
    _check_model(parser, args, [name], "--optimizer")
    _check_folder(parser, "--out", args.out)
    _check_folder(parser, "--checkpoint-dir", args.checkpoint_dir)
    if args.learning_rate is not None and optimizers.default_learning_rate(name) is None:
        parser.error(f"--learning-rate: {name} takes no learning rate")
    task = _load_task(parser, args)
    _check_state_memory(parser, task, [name], args.hidden)
    kw = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    model = task.model(args.hidden, seed=args.seed, **_model_options(args))
    try:
        tx = task.optimizer(name, model=model, clip_norm=args.clip_norm, **kw)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    epochs = args.epochs
    if epochs is None and args.iterations is None and args.budget_seconds is None:
        epochs = 1
    fit_options = {}  # resume, model_kwargs, step_key: given to fit only when set
    if args.checkpoint_every and not args.checkpoint_dir:
        parser.error("--checkpoint-every: needs --checkpoint-dir")
    if args.on_divergence == "increase_rho":
        retry = optimizers.entry(name).retry
        if retry is None:
            able = ", ".join(n for n in optimizers.names() if optimizers.entry(n).retry)
            parser.error(f"--on-divergence: increase_rho needs an optimizer with penalties to "
                         f"increase ({able}), not {name}")
        tx = retry(tx)
    if args.resume:
        from flax import nnx

        ckpt = pathlib.Path(args.checkpoint_dir)
        if not checkpoint_steps(ckpt):
            parser.error(f"--resume: no checkpoint in {ckpt}")
        params = nnx.state(model, nnx.Param)
        try:
            params, opt_state, start, history = load_checkpoint(ckpt, params, tx.init(params))
        except ValueError as e:
            parser.error(f"--resume: {e}")
        nnx.update(model, params)
        fit_options["resume"] = Restored(None, opt_state, start, history)
        print(f"resuming at epoch {start[0]}, step {start[1]} "
              f"(iteration {len(history.steps.get('iteration', []))})")
    callbacks = ([Checkpoint(args.checkpoint_dir, every_steps=args.checkpoint_every)]
                 if args.checkpoint_dir else [])
    if args.p_detach is not None and not optimizers.takes_batch(name):
        fit_options.update(model_kwargs={"p_detach": args.p_detach}, step_key=True)
    print(f"task: {task.info}; optimizer {name}; train {len(task.train[0])} / test "
          f"{len(task.test[0])} samples", flush=True)
    try:
        h = fit(model, tx, task.train, **task.fit_kwargs(), epochs=epochs,
                iterations=args.iterations, budget_seconds=args.budget_seconds,
                batch_size=args.batch_size, seed=args.seed,
                evaluation=Evaluation(task.test, every=args.eval_every,
                                      batch_size=args.eval_batch_size),
                callbacks=callbacks, progress=False if args.no_progress else name,
                on_divergence="stop" if args.on_divergence == "stop" else "raise",
                **fit_options)
    except DivergenceError as e:
        kept = ""
        if args.checkpoint_dir:
            steps = checkpoint_steps(args.checkpoint_dir)
            kept = (f"; last good checkpoint (iteration {steps[-1]}) kept in "
                    f"{args.checkpoint_dir}" if steps else "; no checkpoint was written")
        parser.exit(3, f"admm-jax: error: {e}{kept}\n")
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    h.meta.update(optimizer=name, task=task.name, hidden=args.hidden, p_detach=args.p_detach,
                  learning_rate=kw.get("learning_rate", optimizers.default_learning_rate(name)))
    path = h.save(pathlib.Path(args.out) / f"train_{task.name}_{name}.json")
    column = "accuracy" if task.metric is not None else "loss"
    summary = {
        "iterations": h.meta["iterations"], "train_seconds": round(h.meta["train_seconds"], 2),
        "compile_seconds": round(h.meta["compile_seconds"], 2),
        f"final_test_{task.metric_name}": h.last("evals", column),
    }
    if "diverged_at" in h.meta:
        summary["diverged_at"] = h.meta["diverged_at"]
    print(json.dumps({k: _json_safe(v) for k, v in summary.items()}, allow_nan=False))
    print(f"history: {path}" + (f"\ncheckpoint: {args.checkpoint_dir}"
                                if args.checkpoint_dir else ""))
    if "diverged_at" in h.meta:  # --on-divergence stop: a clean end, but never a silent one
        print(f"admm-jax: warning: training diverged at iteration {h.meta['diverged_at']}; "
              f"stopped with the last good weights (iteration {h.meta['iterations']}), saved "
              "as above", file=sys.stderr)
    return 0


def _list() -> int:
    from admm_jax import optimizers, tasks

    print("tasks:")
    for n in tasks.names():
        print(f"  {n}")
    print("optimizers:")
    width = max(map(len, optimizers.names())) + 2
    for n in optimizers.names():
        e = optimizers.entry(n)
        lr = "" if e.learning_rate is None else f" (default learning rate {e.learning_rate:g})"
        print(f"  {n:{width}s}{e.description}{lr}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``admm-jax`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list()
    if args.command == "compare":
        return _compare(args.parser, args)
    return _train(args.parser, args)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
