"""Every registered optimizer crossed with every optax wrapper a Flax user applies (issue 29).

Rows: the cases of ``conformance_cases.CASES`` that build a registered optimizer, built as a
user builds them (the package's own factories directly, optax's through
``optimizers.get``), with every float hyperparameter given at its default (so that
``inject_hyperparams`` injects each). Columns (``COLUMNS``):

* ``chain``: ``optax.chain(optax.clip_by_global_norm(1e-8), tx)`` equals ``tx`` given the
  clipped gradient (and differs from the unclipped step), or is refused;
* ``inject_hyperparams``: equals ``tx`` built with the same values; doubling the injected
  learning rate doubles the step (ADMMiRNN: another ``prox`` changes it);
* ``MultiSteps``: ``optax.MultiSteps(tx, 2)`` emits nothing, then ``tx``'s step on the mean
  of the two gradients (K-FAC: with the second batch's statistics), or is refused;
* ``apply_if_finite``: equals ``tx`` on a good batch, skips a NaN gradient, trains after it;
* ``NaN batch``: the unwrapped ``tx`` rejects it (zero step, state unchanged but for what it
  reports), and the next step is the one from the last good state;
* ``other state``: a state built for another model's parameters is a named error, unless it
  holds no parameter-shaped array (then the step equals the fresh state's);
* ``labels (eager)``: labels -1 and C are named errors (``update`` of a method that takes
  the batch; ``fit`` for every method);
* ``labels (jit)``: a method that takes the batch rejects the step and reports NaN in its
  diagnostics; a gradient method's ``fit`` (``validate=False``) raises ``DivergenceError``.

``OUTCOMES`` is the table; ``docs/robustness.md`` shows the same table
(``test_the_docs_table_is_this_matrix``). Compiled steps are shared between cells (one per
row for the unwrapped method), and the model is the conformance cases' tiny ``ElmanRNN``.
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conformance_cases import CASES, HIDDEN, IN, OUT, Case, elman_batch
from flax import nnx

import admm_jax
from admm_jax import ElmanRNN, optimizers
from admm_jax.train import DivergenceError, fit

DTYPE = jnp.float32
ROWS = {c.registry: c for c in CASES if c.registry}
BATCH_METHODS = {n for n in ROWS if optimizers.takes_batch(n)}
# what optax.inject_hyperparams must be told: arguments that are not hyperparameters (the
# model, the example batch) or that set shapes and loop lengths
STATIC_ARGS = {"admmirnn": ("sweeps", "newton_steps"),
               "admm_preconditioned": ("model", "inputs"), "admm_kfac": ("model", "inputs"),
               "random_bases": ("dim", "seed", "block_size")}
EXTRA = {"random_bases": {"dim": 16}}  # the conformance case's subspace
COLUMNS = ("chain", "inject_hyperparams", "MultiSteps", "apply_if_finite", "NaN batch",
           "other state", "labels (eager)", "labels (jit)")
STATELESS = {"sgd", "random_bases"}  # no array of their state depends on the parameters


def outcome(name: str, column: str) -> str:
    """The cell of the table: what the wrapper does with the row's optimizer."""
    batch = name in BATCH_METHODS
    if column == "chain":
        return "refused" if name == "admmirnn" else "clips"
    if column == "MultiSteps":
        return "refused" if name == "admmirnn" else "accumulates"
    if column == "NaN batch":
        return "rejected"
    if column == "other state":
        return "works" if name in STATELESS else "named error"
    if column == "labels (eager)":
        return "named error"
    if column == "labels (jit)":
        return "rejected, reported" if batch else "DivergenceError"
    return "works"


OUTCOMES = {(n, c): outcome(n, c) for n in ROWS for c in COLUMNS}


def test_the_matrix_covers_the_registry():
    assert sorted(ROWS) == sorted(optimizers.names())


# ------------------------------------------------------------------------------ the rows

def public_factory(name: str):
    """The factory a user calls (and wraps in ``inject_hyperparams``)."""
    return admm_jax.admmirnn if name == "admmirnn" else optimizers.entry(name).factory


def package_built(name: str) -> bool:
    f = public_factory(name)
    return getattr(f, "func", f).__module__.startswith("admm_jax")


def hyperparameters(name: str) -> dict[str, Any]:
    """Every float hyperparameter at its default, the learning rate, and ``EXTRA``."""
    sig = inspect.signature(public_factory(name)).parameters
    kw = {k: p.default for k, p in sig.items() if isinstance(p.default, float)}
    lr = optimizers.entry(name).learning_rate
    if lr is not None:
        kw["learning_rate"] = lr
    return {**kw, **EXTRA.get(name, {})}


def build(name: str, args: tuple, kw: dict):
    """As a user builds it: the package's factory itself, optax's through the registry."""
    if package_built(name):
        return public_factory(name)(*args, **kw)
    return optimizers.get(name, **kw)


class Row(NamedTuple):
    name: str
    case: Case
    args: tuple  # the factory's positional arguments (K-FAC: the model, an example batch)
    kw: dict
    tx: Any
    params: Any
    state: Any  # tx.init(params)
    batches: tuple  # two (inputs, targets)
    grads: tuple  # two gradients (the first: of the first batch)


@functools.cache
def gradient(loss, params):
    """The gradient of a case's loss (shared by the rows with the same loss and parameters)."""
    return jax.jit(jax.grad(loss), static_argnums=1)(params(DTYPE), DTYPE)


@functools.cache
def row(name: str) -> Row:
    case = ROWS[name]
    params = case.params(DTYPE)
    b1 = {**elman_batch(DTYPE), **case.extra_args(DTYPE)}  # gradient cases: elman_loss's batch
    b2 = {"inputs": jax.random.normal(jax.random.key(2), b1["inputs"].shape, DTYPE),
          "targets": (b1["targets"] + 1) % OUT}
    args = (case.model(DTYPE), b1["inputs"]) if optimizers.entry(name).takes_model else ()
    kw = hyperparameters(name)
    tx = build(name, args, kw)
    g1 = gradient(case.loss, case.params)
    g2 = jax.tree.map(lambda a: 0.01 - 0.3 * a, g1)
    return Row(name, case, args, kw, tx, params, tx.init(params),
               tuple((b["inputs"], b["targets"]) for b in (b1, b2)), (g1, g2))


@functools.cache
def bare_step(name: str):
    """The unwrapped method's jitted ``update``, shared by every cell of its row."""
    tx = row(name).tx
    return jax.jit(lambda g, s, p, x, y: tx.update(g, s, p, inputs=x, targets=y))


def close(a, b, rtol=1e-5, atol=1e-7) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), rtol=rtol, atol=atol)
        for u, v in zip(la, lb, strict=True))


def norm(tree) -> float:
    return float(optax.tree.norm(tree))


def with_nan(tree):
    return jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), tree)


def bad_labels(y):
    return [y.at[0].set(-1), y.at[0].set(OUT)]


# ----------------------------------------------------------------------------- the cells

def cell_chain(r: Row):
    clip = optax.clip_by_global_norm(1e-8)
    chained = optax.chain(clip, r.tx)
    state = chained.init(r.params)
    (x, y), g = r.batches[0], r.grads[0]
    if OUTCOMES[r.name, "chain"] == "refused":
        with pytest.raises(ValueError, match="before it in optax.chain"):
            chained.update(g, state, r.params, inputs=x, targets=y)
        return
    u, _ = jax.jit(lambda g, s: chained.update(g, s, r.params, inputs=x, targets=y))(g, state)
    clipped, _ = clip.update(g, clip.init(g))
    want, _ = bare_step(r.name)(clipped, r.state, r.params, x, y)
    unclipped, _ = bare_step(r.name)(g, r.state, r.params, x, y)
    assert close(u, want), "the chain is not the method on the clipped gradient"
    assert not close(u, unclipped), "the clip did nothing"


def cell_inject_hyperparams(r: Row):
    tx = optax.inject_hyperparams(public_factory(r.name), static_args=STATIC_ARGS.get(
        r.name, ()))(*r.args, **r.kw)
    state = tx.init(r.params)
    floats = {k for k, v in r.kw.items() if isinstance(v, float)}
    assert floats <= set(state.hyperparams), "a float hyperparameter was not injected"
    (x, y), g = r.batches[0], r.grads[0]
    step = jax.jit(lambda s, g: tx.update(g, s, r.params, inputs=x, targets=y))
    u, _ = step(state, g)
    want, _ = bare_step(r.name)(g, r.state, r.params, x, y)
    assert close(u, want, rtol=1e-4, atol=1e-6), "injected values give another step"
    key = "learning_rate" if "learning_rate" in r.kw else "prox"
    changed = state._replace(hyperparams={**state.hyperparams,
                                          key: 2 * state.hyperparams[key]})
    u2, _ = step(changed, g)
    if key == "learning_rate":
        assert close(u2, jax.tree.map(lambda a: 2 * a, u), rtol=1e-4, atol=1e-6)
    else:
        assert not close(u2, u), "the injected prox did nothing"


def cell_multisteps(r: Row):
    ms = optax.MultiSteps(r.tx, 2)
    state = ms.init(r.params)
    (x1, y1), (x2, y2) = r.batches
    g1, g2 = r.grads
    if OUTCOMES[r.name, "MultiSteps"] == "refused":
        with pytest.raises(ValueError, match="MultiSteps"):
            ms.update(g1, state, r.params, inputs=x1, targets=y1)
        return
    step = jax.jit(lambda s, g, x, y: ms.update(g, s, r.params, inputs=x, targets=y))
    u1, state = step(state, g1, x1, y1)
    assert norm(u1) == 0.0, "MultiSteps emitted a step before k_steps mini-batches"
    u2, _ = step(state, g2, x2, y2)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    want, _ = bare_step(r.name)(mean, r.state, r.params, x2, y2)
    assert close(u2, want, rtol=1e-4, atol=1e-6), "not the step on the accumulated gradient"


def cell_apply_if_finite(r: Row):
    af = optax.apply_if_finite(r.tx, 3)
    step = jax.jit(lambda s, g, x, y: af.update(g, s, r.params, inputs=x, targets=y))
    (x1, y1), (x2, y2) = r.batches
    u, state = step(af.init(r.params), r.grads[0], x1, y1)
    want, _ = bare_step(r.name)(r.grads[0], r.state, r.params, x1, y1)
    assert close(u, want)
    u, state = step(state, with_nan(r.grads[0]), x1, y1)
    assert norm(u) == 0.0 and int(state.notfinite_count) == 1
    u, state = step(state, r.grads[1], x2, y2)
    assert norm(u) > 0.0 and int(state.notfinite_count) == 0


def cell_nan_batch(r: Row):
    (x, y), g = r.batches[0], r.grads[0]
    good, _ = bare_step(r.name)(g, r.state, r.params, x, y)
    u, state = bare_step(r.name)(with_nan(g), r.state, r.params, with_nan(x), y)
    assert norm(u) == 0.0, "a NaN batch moved the weights"
    u, _ = bare_step(r.name)(g, state, r.params, x, y)
    assert close(u, good, rtol=0, atol=0), "the state after the NaN batch is not the last good"


def cell_other_state(r: Row):
    other = ElmanRNN(IN, HIDDEN - 2, OUT, rngs=nnx.Rngs(0))
    params = (nnx.state(other, nnx.Param) if isinstance(r.params, nnx.State)
              else other.params_dict())
    tx = build(r.name, (other, r.args[1]), r.kw) if r.args else r.tx
    state = tx.init(params)
    (x, y), g = r.batches[0], r.grads[0]
    shapes = [(jnp.shape(a), jnp.result_type(a)) for a in jax.tree.leaves(state)]
    if shapes == [(jnp.shape(a), jnp.result_type(a)) for a in jax.tree.leaves(r.state)]:
        assert OUTCOMES[r.name, "other state"] == "works"
        u, _ = bare_step(r.name)(g, state, r.params, x, y)
        assert close(u, bare_step(r.name)(g, r.state, r.params, x, y)[0])
        return
    assert OUTCOMES[r.name, "other state"] == "named error"
    with pytest.raises(ValueError, match=r"^state: .*call tx.init\(params\) again"):
        r.tx.update(g, state, r.params, inputs=x, targets=y)


def cell_labels_eager(r: Row):
    (x, y), g = r.batches[0], r.grads[0]
    for bad in bad_labels(y):
        if r.name in BATCH_METHODS:
            with pytest.raises(ValueError, match=rf"^targets: expected class labels in \[0, {OUT}"):
                r.tx.update(g, r.state, r.params, inputs=x, targets=bad)
        with pytest.raises(ValueError, match=rf"^train_data targets: expected class labels in "
                                             rf"\[0, {OUT}\)"):
            fit(r.case.model(DTYPE), r.tx, (np.asarray(x), np.asarray(bad)), iterations=1,
                batch_size=len(y))


def cell_labels_jit(r: Row):
    (x, y), g = r.batches[0], r.grads[0]
    if r.name not in BATCH_METHODS:  # only the loss reads labels: fit's step fails
        with pytest.raises(DivergenceError, match="iteration 1: non-finite"):
            fit(r.case.model(DTYPE), r.tx, (np.asarray(x), np.asarray(bad_labels(y)[0])),
                iterations=1, batch_size=len(y), validate=False)
        return
    for bad in bad_labels(y):
        u, state = bare_step(r.name)(g, r.state, r.params, x, bad)
        report = optimizers.diagnostics(state)
        assert norm(u) == 0.0, "a batch with a bad label was trained"
        assert np.isnan(float(report["loss" if r.name == "admmirnn" else "batch_loss"]))


CELLS = {"chain": cell_chain, "inject_hyperparams": cell_inject_hyperparams,
         "MultiSteps": cell_multisteps, "apply_if_finite": cell_apply_if_finite,
         "NaN batch": cell_nan_batch, "other state": cell_other_state,
         "labels (eager)": cell_labels_eager, "labels (jit)": cell_labels_jit}


@pytest.mark.parametrize("column", COLUMNS)
@pytest.mark.parametrize("name", list(ROWS))
def test_cell(name, column):
    CELLS[column](row(name))


def test_the_docs_table_is_this_matrix():
    text = (Path(__file__).resolve().parents[2] / "docs" / "robustness.md").read_text()
    section = text.split("## The wrapper matrix", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip().strip("`") for c in lines[0].strip("|").split("|")]
    assert header == ["optimizer", *COLUMNS]
    table = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        table[cells[0].strip("`")] = [re.sub(r"\s+", " ", c) for c in cells[1:]]
    assert table == {n: [OUTCOMES[n, c] for c in COLUMNS] for n in ROWS}
