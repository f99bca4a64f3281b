"""Train one model with several optimizers at one budget; tabulate and plot the results."""

from __future__ import annotations

import inspect
import json
import math
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

from admm_jax import optimizers
from admm_jax.tasks import Task
from admm_jax.train import Evaluation, History, fit


def time_to_target(history: History, column: str, target: float,
                   higher_is_better: bool) -> tuple[float | None, int | None]:
    """Training seconds and iterations at the first evaluation reaching ``target`` (or None)."""
    for value, t, it in zip(history.evals.get(column, []), history.evals.get("time", []),
                            history.evals.get("iteration", []), strict=True):
        if math.isfinite(value) and (value >= target if higher_is_better else value <= target):
            return t, int(it)
    return None, None


def summarize(name: str, history: History, task: Task, target: float) -> dict[str, Any]:
    """One table row: final/best test metric, time to ``target``, seconds per iteration."""
    column = "accuracy" if task.metric is not None else "loss"
    values = [v for v in history.evals.get(column, []) if math.isfinite(v)]
    best = (max if task.higher_is_better else min)(values) if values else math.nan
    t_hit, it_hit = time_to_target(history, column, target, task.higher_is_better)
    secs = history.steps.get("seconds", [])
    return {
        "optimizer": name,
        "learning_rate": history.meta.get("learning_rate"),
        "schedule": history.meta.get("schedule"),
        "iterations": history.meta.get("iterations", 0),
        "train_seconds": history.meta.get("train_seconds", 0.0),
        "compile_seconds": history.meta.get("compile_seconds", 0.0),
        "eval_seconds": history.meta.get("eval_seconds", 0.0),
        "seconds_per_iteration": statistics.median(secs) if secs else math.nan,
        f"final_test_{task.metric_name}": history.last("evals", column),
        f"best_test_{task.metric_name}": best,
        "seconds_to_target": t_hit,
        "iterations_to_target": it_hit,
        "diverged_at": history.meta.get("diverged_at"),
    }


def compare(
    task: Task,
    names: Sequence[str],
    *,
    budget_seconds: float | None = None,
    iterations: int | None = None,
    batch_size: int = 64,
    hidden: int = 64,
    seed: int = 0,
    learning_rates: dict[str, float] | None = None,
    target: float | None = None,
    eval_points: int = 20,
    eval_batch_size: int = 500,
    clip_norm: float | None = None,
    p_detach: float | None = None,
    progress: bool = True,
    model: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, History]]:
    """Train ``task.model(hidden, seed=seed, **model)`` with each optimizer in ``names``.

    Fairness: every run starts from the same weights, sees the same batches in the same order
    (``seed``) and gets the same budget: ``budget_seconds`` of training steps (compilation and
    evaluation excluded, both reported) or ``iterations`` steps. The test set is evaluated
    ``eval_points`` times, evenly over the budget. ``clip_norm`` clips every gradient
    optimizer's gradients to that global norm. With ``p_detach``, every gradient optimizer
    also runs with h-detach (``model(x, p_detach=p, key=k)`` in training steps; label
    ``NAME+hdetachP``), so the table holds both, with and without. With an ``iterations``
    budget, an optimizer whose registry entry has a ``schedule`` (the K-FAC methods: warmup,
    then a cosine decay to 0 at ``iterations``; constant after the warmup for a budget in
    seconds) runs with that schedule of its learning rate; the others run at a constant rate
    (optax's ``adam`` as it is). ``model``:
    the model's options (``cell``, ``layers``, ``embed``: :meth:`admm_jax.tasks.Task.model`).

    Returns:
      ``(rows, histories)``: one :func:`summarize` row and one :class:`History` per optimizer.
    """
    if budget_seconds is None and iterations is None:
        raise ValueError("budget_seconds, iterations: give one budget")
    names = [optimizers.canonical_name(n) for n in names]
    for n in names:
        optimizers.entry(n)  # unknown names fail before any training
    target = task.target if target is None else target
    lrs = dict(learning_rates or {})
    rows, histories = [], {}
    runs = [(name, None) for name in names]
    model_options = dict(model or {})
    if p_detach is not None:
        check_p_detach_support(task.model(1, seed=seed, **model_options))
        runs += [(name, p_detach) for name in names if not optimizers.takes_batch(name)]
    for name, p in runs:
        label = name if p is None else f"{name}+hdetach{p:g}"
        e = optimizers.entry(name)
        lr = lrs.get(name, e.learning_rate)
        kw, schedule = {}, None
        if lr is not None:
            kw["learning_rate"] = lr
            if e.schedule is not None:
                kw["learning_rate"] = e.schedule(lr, iterations)
                schedule = "warmup, cosine" if iterations else "warmup"
        net = task.model(hidden, seed=seed, **model_options)
        tx = task.optimizer(name, model=net, clip_norm=clip_norm, **kw)
        every = {"every_seconds": budget_seconds / eval_points} if budget_seconds else {
            "every": max(1, iterations // eval_points)}
        hd = {} if p is None else {"model_kwargs": {"p_detach": p}, "step_key": True}
        h = fit(net, tx, task.train, **task.fit_kwargs(),
                budget_seconds=budget_seconds, iterations=iterations, batch_size=batch_size,
                seed=seed, progress=label if progress else False, on_divergence="stop",
                evaluation=Evaluation(task.test, batch_size=eval_batch_size, **every), **hd)
        h.meta.update(optimizer=name, learning_rate=lr, schedule=schedule,
                      task=task.name, hidden=hidden, model=model_options,
                      clip_norm=None if optimizers.takes_batch(name) else clip_norm, p_detach=p)
        histories[label] = h
        rows.append(summarize(label, h, task, target))
    fastest = min((r["seconds_per_iteration"] for r in rows), default=math.nan)
    for r in rows:
        r["relative_seconds_per_iteration"] = r["seconds_per_iteration"] / fastest
    return rows, histories


def check_p_detach_support(model) -> None:
    """Raise ValueError unless ``model(x, p_detach=..., key=...)`` is accepted (h-detach)."""
    params = inspect.signature(type(model).__call__).parameters
    if not {"p_detach", "key"} <= set(params):
        raise ValueError(f"p_detach: {type(model).__name__}.__call__ takes no p_detach/key "
                         "arguments (h-detach support is missing from this admm_jax)")


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def format_table(rows: Sequence[dict[str, Any]], task: Task, target: float) -> str:
    """The rows as a Markdown table."""
    m = task.metric_name
    head = ["optimizer", "lr", "iterations", f"final test {m}", f"best test {m}",
            f"s to {m} {'>=' if task.higher_is_better else '<='} {target:g}", "ms / iteration",
            "x fastest", "compile s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        hit = r["seconds_to_target"]
        cells = [
            r["optimizer"] + (f" (diverged at {r['diverged_at']})" if r["diverged_at"] else ""),
            _fmt(r["learning_rate"], "g") + (f", {r['schedule']}" if r.get("schedule") else ""),
            str(r["iterations"]),
            _fmt(r[f"final_test_{m}"], ".4f"), _fmt(r[f"best_test_{m}"], ".4f"),
            "not reached" if hit is None else f"{hit:.1f} (it {r['iterations_to_target']})",
            _fmt(1e3 * r["seconds_per_iteration"], ".2f"),
            _fmt(r["relative_seconds_per_iteration"], ".1f"), _fmt(r["compile_seconds"], ".1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _smooth(values: Sequence[float], n: int) -> list[float]:
    out, acc, window = [], 0.0, []
    for v in values:
        window.append(v)
        acc += v
        if len(window) > n:
            acc -= window.pop(0)
        out.append(acc / len(window))
    return out


def plot(histories: dict[str, History], task: Task, path: str | pathlib.Path) -> pathlib.Path:
    """A 2x2 PNG: train loss and test metric against training seconds and iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column = "accuracy" if task.metric is not None else "loss"
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for name, h in histories.items():
        n = max(1, len(h.steps.get("loss", [])) // 50)
        loss = _smooth(h.steps.get("loss", []), n)
        for col, x_key in enumerate(("time", "iteration")):
            axes[0, col].plot(h.steps.get(x_key, []), loss, label=name)
            axes[1, col].plot(h.evals.get(x_key, []), h.evals.get(column, []), marker=".",
                              label=name)
    for col, xlabel in enumerate(("training seconds (compile and evaluation excluded)",
                                  "iteration")):
        axes[0, col].set(xlabel=xlabel, ylabel=f"train {task.loss} (running mean)")
        axes[1, col].set(xlabel=xlabel, ylabel=f"test {task.metric_name}")
        axes[0, col].set_yscale("log")
        if column == "loss":
            axes[1, col].set_yscale("log")
        axes[1, col].grid(alpha=0.3)
        axes[0, col].grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle(task.info)
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def save(rows, histories: dict[str, History], config: dict[str, Any],
         path: str | pathlib.Path, *, steps: bool = False) -> pathlib.Path:
    """JSON with the configuration, the table rows and every history.

    Each history keeps its per-evaluation and per-epoch tables and its meta; the per-step
    table (one row per iteration, megabytes for a long run) only with ``steps=True``. The file
    is written to a temporary name and renamed, so an interrupted save never leaves a
    truncated file in place of an earlier one.
    """
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    def history(h: History) -> dict[str, Any]:
        d = h.to_dict()
        if not steps:
            d.pop("steps", None)
        return d

    payload = {"config": config, "rows": [{k: clean(v) for k, v in r.items()} for r in rows],
               "histories": {k: history(h) for k, h in histories.items()}}
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False))
    tmp.replace(p)
    return p
