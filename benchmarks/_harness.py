"""What every benchmark shares: the data (through ``admm_jax.tasks``), the validation split
that tuning scores on, the optimizers, the round-robin timer with median ratios, seeds, the
training clock, the loop that drives a batch of runs (``BatchedTrainer``) with periodic
evaluation, checkpoints and resume, and the JSON + PNG + Markdown writer that records the full
command and the commit in ``meta``.

A script imports it as ``from _harness import ...`` (``benchmarks/`` is on ``sys.path`` when
the script runs, and the smoke tests put it there).
"""

from __future__ import annotations

import json
import pathlib
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from admm_jax import optimizers, tasks
from admm_jax.train import checks, losses, make_train_step

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------- data, methods


def load_task(name: str, **kwargs: Any) -> tasks.Task:
    """The task ``name`` (``admm_jax.tasks.load``: data, model, loss, metric, target)."""
    return tasks.load(name, **kwargs)


def make_optimizer(task: tasks.Task, model: nnx.Module, name: str, **kwargs: Any):
    """The optimizer ``name`` for ``model`` on ``task``: the one place a benchmark builds one
    (``task.optimizer`` fills in what the task decides: samples, sequence length, loss; a
    method built for the model, K-FAC, gets ``model`` and an example batch)."""
    return task.optimizer(name, model=model, **kwargs)


def imdb_text_task(data_dir, reviews: int, seq_len: int) -> tasks.Task:
    """The ``text`` task (next character) on the first ``reviews`` IMDb training reviews:
    lower-cased, ``<br />`` as a space, printable ASCII only, one review per line (written to
    a temporary file for ``tasks.load("text")``; the last 10% of windows held out)."""
    import string
    import tempfile

    from admm_jax.data import imdb_texts

    keep = set(string.printable) - set("\t\r\x0b\x0c")
    texts, _ = imdb_texts(f"train[:{reviews}]", data_dir=data_dir, download=False)
    lines = ("".join(c for c in t.replace("<br />", " ").lower() if c in keep) for t in texts)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "imdb_chars.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return tasks.load("text", text_path=path, seq_len=seq_len)


def validation_split(x, y, parts: int = 10):
    """``((x_fit, y_fit), (x_val, y_val))``: the last ``len(x) // parts`` samples of the
    training set held out for tuning (the same split for every method and seed)."""
    n = len(x) // parts
    return (x[:-n], y[:-n]), (x[-n:], y[-n:])


def seeds(n: int, first: int = 0) -> list[int]:
    """The seeds of ``n`` repeated runs."""
    return list(range(first, first + n))


def compiled_train_step(tx, model: nnx.Module, x, y, *, use_gradients: bool | None = True):
    """``(executable, args, step)``: fit's training step (``make_train_step``, cross entropy
    and accuracy; ``use_gradients=None``: the optimizer's state decides, as in fit; a method
    that reports its batch loss saves the forward pass, as in fit) for ``model`` and ``tx``,
    compiled ahead of time with the weights and state donated, its first arguments
    (``executable(*args)`` is one step) and the step unjitted (to trace)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(jnp.copy, params)
    state = tx.init(params)
    method_loss = (not optimizers.needs_gradients(state)
                   and "batch_loss" in optimizers.diagnostics(state)
                   and checks.same_loss(tx, state, "cross_entropy"))
    step = make_train_step(graphdef, rest, tx, losses.cross_entropy, losses.accuracy,
                           use_gradients=use_gradients, step_key=False,
                           method_loss=method_loss)
    args = (params, state, x, y, jnp.arange(len(x)), {}, jax.random.key(0),
            jnp.asarray(0, jnp.int32))
    return jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile(), args, step


# ---------------------------------------------------------------------------- the timer


def round_robin(runs: dict[Hashable, Callable[[], Any]], rounds: int,
                warmup: int = 1) -> dict[Hashable, list[float]]:
    """Seconds of each call of ``runs[k]()`` (which must block until its work is done), the
    runs called in turn, one call each per round, so that all of them see the same machine
    load; the first ``warmup`` rounds are not kept."""
    times: dict[Hashable, list[float]] = {k: [] for k in runs}
    with warnings.catch_warnings():  # CPU backends cannot donate: nothing to report
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        for r in range(warmup + rounds):
            for k, run in runs.items():
                t = time.perf_counter()
                run()
                if r >= warmup:
                    times[k].append(time.perf_counter() - t)
    return times


def stopwatch() -> Callable[[], float]:
    """A function that returns the seconds since this call (a training clock, a run's wall
    time)."""
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def timed(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(out, seconds)``: ``out = fn(*args, **kwargs)``, waited for (``jax.block_until_ready``),
    and the seconds it took: one timed call of a training clock that excludes evaluation."""
    clock = stopwatch()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, clock()


def round_ratios(times: dict, a: Hashable, b: Hashable) -> list[float]:
    """``times[a][i] / times[b][i]`` for each round ``i`` of :func:`round_robin` (the spread of
    a comparison; its median is more robust to a round's load than :func:`median_ratio`)."""
    return [t / u for t, u in zip(times[a], times[b], strict=True)]


def median_ms(times: Sequence[float]) -> float:
    """The median of ``times`` (seconds), in milliseconds."""
    return 1e3 * statistics.median(times)


def median_ratio(times: dict, a: Hashable, b: Hashable) -> float:
    """``median(times[a]) / median(times[b])``: the figure a round-robin comparison reports."""
    return statistics.median(times[a]) / statistics.median(times[b])


# ---------------------------------------------------------------------------- batched runs


def train_batch(trainer, every: int, *, on_eval: Callable | None = None,
                checkpoint: str | pathlib.Path | None = None, save_every: int = 1) -> None:
    """Train ``trainer`` (an ``admm_jax.train.BatchedTrainer``) to its stop, evaluating every
    run every ``every`` iterations (``trainer.evaluate()``, its rows in each history's
    ``evals``) and then calling ``on_eval(trainer, rows)`` (e.g. to freeze solved runs); with
    ``checkpoint``, every ``save_every`` evaluations and at the end every run is saved there
    (``load_runs(checkpoint, ...)`` resumes). Ends with ``trainer.finish()``."""
    n = 0
    while not trainer.done:
        trainer.run(every - trainer.iteration % every)  # a resumed batch realigns
        rows = trainer.evaluate()
        if on_eval is not None:
            on_eval(trainer, rows)
        n += 1
        if checkpoint is not None and n % save_every == 0:
            trainer.save(checkpoint)
    trainer.finish()
    if checkpoint is not None:
        trainer.save(checkpoint)


def resume_batch(checkpoint: str | pathlib.Path | None, model: nnx.Module, tx):
    """The runs saved in ``checkpoint`` by :func:`train_batch` (``load_runs``, read with the
    structure of ``model``'s parameters and ``tx``'s state), for ``BatchedTrainer(...,
    resume=)``; ``None`` when there is nothing to resume."""
    from admm_jax.train import checkpoint_steps, load_runs

    if checkpoint is None or not checkpoint_steps(pathlib.Path(checkpoint) / "run_000"):
        return None
    params = nnx.state(model, nnx.Param)
    return load_runs(checkpoint, params, tx.init(params))


def batch_figures(trainer, history) -> dict:
    """A batch's figures for a run's results: the training seconds (shared by the runs of a
    ``BatchedTrainer``), seconds per iteration, runs in the batch and compile seconds
    (``history``: the run's)."""
    return {"train_seconds": trainer.train_seconds,
            "seconds_per_iteration": trainer.train_seconds / max(1, trainer.iteration),
            "runs_in_batch": trainer.runs, "compile_seconds": history.meta["compile_seconds"]}


def interval_means(steps: dict, key: str, iterations: Sequence[int]) -> list[float]:
    """The mean of a batched history's per-step ``steps[key]`` over each interval between
    evaluation points ``iterations`` (``(0, i_0], (i_0, i_1], ...``; NaN where a frozen run
    took no step)."""
    it, values = np.asarray(steps.get("iteration", [])), np.asarray(steps.get(key, []))
    out = []
    for lo, hi in zip([0, *iterations[:-1]], iterations, strict=True):
        sel = (it > lo) & (it <= hi)
        out.append(float(np.mean(values[sel])) if sel.any() else float("nan"))
    return out


# ---------------------------------------------------------------------------- the writer


def command(script: str, argv: Sequence[str] | None) -> str:
    """The command line of ``script`` run with ``argv`` (``None``: this process's own
    arguments), as ``meta["command"]`` records it: ``python benchmarks/<script> ...``."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", f"benchmarks/{pathlib.Path(script).name}", *args])


def commit() -> str | None:
    """The commit of the repository the benchmark runs from (``None`` outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=pathlib.Path(__file__).parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def markdown_table(rows: Sequence[dict], columns: dict[str, str]) -> str:
    """``rows`` as a Markdown table: ``columns`` maps a row key to its header; floats are
    written with 3 decimals."""
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns.values()) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[k]) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(out: str | pathlib.Path, stem: str, result: dict, cmd: str, *,
                  table: str | None = None, plot: Callable | None = None) -> pathlib.Path:
    """Write ``<out>/<stem>.json`` (``result`` with ``meta``: the full command ``cmd`` (see
    :func:`command`), the commit, the devices), ``<stem>.md`` (``table``, printed too) and
    ``<stem>.png`` (``plot(fig)`` draws on a 6 x 3.5 in figure, resized as it likes); return
    the JSON's path. Each file is
    replaced whole (written beside, then renamed), so an interrupted run never leaves half a
    file."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": cmd, "commit": commit(), "devices": str(jax.devices())}
    result = {**result, "meta": {**meta, **result.get("meta", {})}}
    write_json(out / f"{stem}.json", result)
    if table is not None:
        _replace(out / f"{stem}.md", f"`{meta['command']}`\n\n{table}\n")
        print(table)
    if plot is not None:
        write_plot(out, stem, plot)
    return out / f"{stem}.json"


def write_plot(out: str | pathlib.Path, stem: str, plot: Callable) -> pathlib.Path:
    """Write ``<out>/<stem>.png``: ``plot(fig)`` draws on a 6 x 3.5 in figure (constrained
    layout), resized as it likes; replaced whole, as :func:`write_results` does (a script's
    ``--replot`` redraws a PNG from its JSON with it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(6, 3.5), layout="constrained")
    plot(fig)
    tmp = out / f".{stem}.png.tmp"
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(out / f"{stem}.png")
    return out / f"{stem}.png"


def write_json(path: str | pathlib.Path, obj: Any) -> None:
    """Replace ``path`` whole with ``obj`` as JSON (written beside, then renamed): a resumable
    benchmark writes its finished runs with it, and an interrupted write loses none of them."""
    _replace(pathlib.Path(path), json.dumps(obj, indent=1))


def _replace(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
