"""The layout rules that keep the package easy to change: the training loop names no method,
the task/CLI layers never compare a method's name, and a new method that takes the batch
needs only its own module and a registry entry."""

import ast
import pathlib
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from admm_jax import compare, elman_apply, optimizers, tasks
from admm_jax.train import fit

PKG = pathlib.Path(__file__).resolve().parents[1] / "admm_jax"


def test_the_training_loop_names_no_method():
    # "admm" only as the package's own name; no penalty "rho"
    pattern = re.compile(r"admm(?!_jax)|\brho", re.IGNORECASE)
    hits = [f"{p.name}:{i}: {line.strip()}"
            for p in sorted((PKG / "train").glob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


@pytest.mark.parametrize("module", ["tasks.py", "compare.py", "cli.py"])
def test_tasks_compare_and_cli_never_compare_a_method_name(module):
    names = set(optimizers.names())
    tree = ast.parse((PKG / module).read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                for c in ast.walk(side):
                    if isinstance(c, ast.Constant) and c.value in names:
                        bad.append(f"line {node.lineno}: {c.value!r}")
    assert bad == []


# ---- a toy method that takes the batch: its module (below) and a registry entry, nothing else


class ToyDiagnostics(NamedTuple):
    step_norm: jax.Array


class ToyState(NamedTuple):
    count: jax.Array
    diagnostics: ToyDiagnostics

    takes_batch = True


def toy_batch_descent(learning_rate: float = 0.5, *, loss: str = "mse",
                      many_to_many: bool = False) -> optax.GradientTransformationExtraArgs:
    """A gradient step it computes itself from the batch (a stand-in for any method that takes
    the batch instead of gradients)."""
    del loss, many_to_many

    def init(params):
        return ToyState(jnp.zeros((), jnp.int32), ToyDiagnostics(jnp.zeros(())))

    def update(updates, state, params=None, *, inputs=None, targets=None, **extra):
        del updates, extra

        def batch_loss(params):
            o = elman_apply({k: params[k][...] for k in params}, inputs)
            return 0.5 * jnp.mean(jnp.sum((o - targets) ** 2, -1))

        step = jax.tree_util.tree_map(lambda g: -learning_rate * g,
                                      jax.grad(batch_loss)(params))
        return step, ToyState(state.count + 1, ToyDiagnostics(optax.tree.norm(step)))

    return optax.GradientTransformationExtraArgs(init, update)


def test_a_new_batch_method_needs_only_its_module_and_a_registry_entry(monkeypatch):
    entry = optimizers.Entry(toy_batch_descent, 0.5, "toy: a step from the batch",
                             ToyState, lambda task: {"loss": task.loss,
                                                     "many_to_many": task.many_to_many})
    monkeypatch.setitem(optimizers._REGISTRY, "toy", entry)
    assert optimizers.takes_batch("toy")
    task = tasks.load("adding", seq_len=6, num_train=256, num_test=64)
    tx = task.optimizer("toy")  # the task fills in loss and many_to_many from the hook
    state = tx.init(nnx.state(task.model(8), nnx.Param))
    assert not optimizers.needs_gradients(state)
    h = fit(task.model(8), tx, task.train, **task.fit_kwargs(), iterations=20, batch_size=32)
    assert h.meta["uses_gradients"] is False
    assert len(h.steps["step_norm"]) == 20 and np.all(np.isfinite(h.steps["step_norm"]))
    assert h.steps["loss"][-1] < h.steps["loss"][0]  # it trains
    rows, _ = compare.compare(task, ["toy", "adam"], iterations=10, batch_size=32, hidden=8,
                              progress=False)
    assert [r["optimizer"] for r in rows] == ["toy", "adam"]
