"""Atomic, resumable checkpoints of a [`admm_jax.train.fit`][] run with orbax-checkpoint."""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from admm_jax import _validation as checks
from admm_jax.train.callbacks import Callback, Loop
from admm_jax.train.history import History

FORMAT = "admm_jax.checkpoint/1"


def _ocp():
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # pragma: no cover - orbax is a core dependency
        raise ModuleNotFoundError("checkpoints need orbax-checkpoint: pip install "
                                  "orbax-checkpoint") from e
    return ocp


def _manager(directory: pathlib.Path, max_to_keep: int | None, create: bool):
    ocp = _ocp()
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                        enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=opts)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flat(tree: Any, prefix: str) -> tuple[dict[str, Any], list[str | None], int]:
    """Leaves as ``{prefix + "00000": array}`` (typed PRNG keys as their raw key data; empty
    arrays left out, the template rebuilds them), per leaf the key implementation's name
    (``None`` for plain arrays), and the number of leaves."""
    leaves = jax.tree_util.tree_leaves(tree)
    impls = [str(jax.random.key_impl(x)) if _is_key(x) else None for x in leaves]
    arrays = {f"{prefix}{i:05d}": jax.random.key_data(x) if _is_key(x) else jnp.asarray(x)
              for i, x in enumerate(leaves) if np.size(x)}
    return arrays, impls, len(leaves)


class Checkpoint(Callback):
    """Save the whole state of a `fit` run with orbax-checkpoint, atomically.

    A checkpoint holds the weights, the full optimizer state (whatever it holds, per-sample
    state and counters included; typed PRNG keys as their raw key data), the data
    iterator's position ``(epoch, step)``, the iteration and
    the [`History`][admm_jax.History]. It is written after every epoch, every ``every_steps`` steps
    (if given) and at the end of training, as ``directory/<iteration>/``. orbax writes each one
    into a temporary folder and renames it when complete, so a crash during a write leaves the
    previous checkpoint as the latest one; the last ``max_to_keep`` are kept. A step that
    diverged is never saved (`fit` stops before any callback sees it).

    Args:
      directory: where the checkpoints go (created if missing).
      every_steps: also save every this many iterations (``None``: epochs and the end only).
      max_to_keep: how many checkpoints to keep (at least 2 keeps a fallback).

    Raises:
      ValueError: ``directory`` already holds a checkpoint of a later iteration than the run
        starts from (resume from it, or use another directory).
    """

    def __init__(self, directory: str | os.PathLike, *, every_steps: int | None = None,
                 max_to_keep: int | None = 2):
        checks.positive_int("every_steps", every_steps, allow_none=True)
        checks.positive_int("max_to_keep", max_to_keep, allow_none=True)
        self.directory = pathlib.Path(directory)
        self.every_steps = every_steps
        self.max_to_keep = max_to_keep
        self._manager = None

    @property
    def manager(self):
        if self._manager is None:
            self._manager = _manager(self.directory, self.max_to_keep, create=True)
        return self._manager

    def save(self, loop: Loop) -> None:
        """Write the state of ``loop`` as checkpoint ``loop.iteration`` (once per iteration)."""
        ocp = _ocp()
        mgr = self.manager
        if mgr.latest_step() == loop.iteration:
            return
        params, p_impls, n_p = _flat(loop.params, "p")
        opt_state, o_impls, n_o = _flat(loop.opt_state, "o")
        epoch, step = loop.position
        meta = {"format": FORMAT, "iteration": int(loop.iteration), "position": [epoch, step],
                "params_leaves": n_p, "opt_state_leaves": n_o,
                "params_key_impls": p_impls, "opt_state_key_impls": o_impls,
                "arrays": {k: [list(np.shape(v)), str(v.dtype)]
                           for k, v in {**params, **opt_state}.items()},
                "history": loop.history.to_dict()}
        mgr.save(loop.iteration, args=ocp.args.Composite(
            state=ocp.args.StandardSave({**params, **opt_state}),
            meta=ocp.args.JsonSave(meta)))
        mgr.wait_until_finished()

    def on_train_begin(self, loop: Loop) -> None:
        latest = self.manager.latest_step()
        if latest is not None and latest > loop.iteration:
            raise ValueError(f"directory: {self.directory} holds a checkpoint of iteration "
                             f"{latest}, later than this run's start ({loop.iteration}); resume "
                             "from it (load_checkpoint) or use an empty directory")

    def on_step_end(self, loop: Loop, row: dict[str, float]) -> None:
        if self.every_steps is not None and loop.iteration % self.every_steps == 0:
            self.save(loop)

    def on_epoch_end(self, loop: Loop, row: dict[str, float]) -> None:
        self.save(loop)

    def on_train_end(self, loop: Loop) -> None:
        self.save(loop)
        self.close()

    def on_divergence(self, loop: Loop, error: Exception) -> None:
        self.close()

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None


class Restored(NamedTuple):
    """Where a run resumes: what [`load_checkpoint`][admm_jax.train.load_checkpoint] read,
    passed as ``fit(..., resume=restored)``.

    Attributes:
      params: the weights (``fit`` loads them into the model; ``None`` keeps the model's).
      opt_state: the optimizer state (``None``: ``optimizer.init``).
      position: ``(epoch, step)`` of the next batch.
      history: the run so far (``None``: a new one; its steps count towards ``iterations``,
        ``epochs`` and ``budget_seconds``).
    """

    params: Any = None
    opt_state: Any = None
    position: tuple[int, int] = (0, 0)
    history: History | None = None


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
    """The iterations of the complete checkpoints in ``directory`` (oldest first)."""
    d = pathlib.Path(directory)
    if not d.is_dir():
        return []
    mgr = _manager(d, None, create=False)
    try:
        return sorted(mgr.all_steps())
    finally:
        mgr.close()


def _unflat(name: str, prefix: str, arrays: dict[str, Any], template: Any):
    leaves, treedef = jax.tree_util.tree_flatten(template)
    out = []
    for i, t in enumerate(leaves):
        a = arrays.get(f"{prefix}{i:05d}")
        if a is None:  # empty arrays are not saved
            a = jnp.zeros(np.shape(t), checks._dtype(t))
        if _is_key(t):
            a = jax.random.wrap_key_data(jnp.asarray(a), impl=jax.random.key_impl(t))
        else:
            a = jnp.asarray(a)
            if a.dtype != t.dtype or a.shape != tuple(np.shape(t)):
                raise ValueError(f"{name}: saved leaf {i} is {a.dtype}{a.shape}, expected "
                                 f"{t.dtype}{tuple(np.shape(t))}")
        out.append(a)
    return jax.tree_util.tree_unflatten(treedef, out)


def _abstract(tree: Any, prefix: str) -> tuple[dict[str, Any], int]:
    out = {}
    leaves = jax.tree_util.tree_leaves(tree)
    for i, x in enumerate(leaves):
        if np.size(x):
            s = jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x
            out[f"{prefix}{i:05d}"] = jax.ShapeDtypeStruct(tuple(np.shape(s)), checks._dtype(s))
    return out, len(leaves)


def load_checkpoint(directory: str | os.PathLike, params: Any, opt_state: Any, *,
                    step: int | None = None) -> Restored:
    """Read the latest complete checkpoint of ``directory`` into pytrees shaped like
    ``(params, opt_state)``.

    The templates give the tree structure, shapes and dtypes (e.g. ``nnx.state(model,
    nnx.Param)`` and ``optimizer.init(params)``); the result has exactly their structure
    (NamedTuples, ``nnx.State``) and dtypes, typed PRNG keys included. Unfinished writes
    (orbax's temporary folders) are never read; if the latest checkpoint cannot be read (e.g.
    files lost after the write), the previous one is used, with a warning.

    Args:
      directory: a [`Checkpoint`][admm_jax.train.Checkpoint] directory.
      params, opt_state: templates (arrays or ``jax.ShapeDtypeStruct``s).
      step: read this iteration's checkpoint instead of the latest (no fallback).

    Returns:
      [`Restored`][admm_jax.train.Restored] ``(params, opt_state, position, history)``.

    Raises:
      FileNotFoundError: no readable checkpoint in ``directory``.
      ValueError: the checkpoint does not match the templates (another model or optimizer).

    Examples:
      >>> import tempfile, numpy as np
      >>> from flax import nnx
      >>> from admm_jax import ElmanRNN, data, optimizers
      >>> from admm_jax.train import Checkpoint, fit
      >>> x, y = data.adding(6, 32, seed=0)
      >>> d = tempfile.mkdtemp()
      >>> tx = optimizers.get("adam")
      >>> _ = fit(ElmanRNN(2, 4, 1, rngs=nnx.Rngs(0)), tx, (x, y[:, None]), loss="mse",
      ...         metric=None, iterations=6, batch_size=8, callbacks=[Checkpoint(d)])
      >>> model = ElmanRNN(2, 4, 1, rngs=nnx.Rngs(0))
      >>> params = nnx.state(model, nnx.Param)
      >>> r = load_checkpoint(d, params, tx.init(params))
      >>> r.position, len(r.history.steps["iteration"])
      ((1, 2), 6)
      >>> h = fit(model, tx, (x, y[:, None]), loss="mse", metric=None, epochs=2, batch_size=8,
      ...         resume=r)
      >>> h.steps["iteration"][-1]
      8
    """
    ocp = _ocp()
    d = pathlib.Path(directory)
    steps = checkpoint_steps(d)
    if step is not None:
        if step not in steps:
            raise FileNotFoundError(f"step: no checkpoint of iteration {step} in {d} "
                                    f"(found {steps})")
        steps = [step]
    if not steps:
        raise FileNotFoundError(f"directory: no complete checkpoint in {d}")
    p_target, n_p = _abstract(params, "p")
    o_target, n_o = _abstract(opt_state, "o")
    target = {**p_target, **o_target}
    counts = {"params": n_p, "opt_state": n_o}
    mgr = _manager(d, None, create=False)
    errors = []
    try:
        for s in reversed(steps):
            try:
                meta = mgr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            except Exception as e:  # noqa: BLE001 - unreadable: fall back to the previous one
                errors.append(f"{s}: {type(e).__name__}: {e}")
                continue
            if meta.get("format") != FORMAT:
                raise ValueError(f"directory: {d / str(s)} is not an admm_jax checkpoint "
                                 f"(format {meta.get('format')!r})")
            for name, n in counts.items():
                if meta[f"{name}_leaves"] != n:
                    raise ValueError(
                        f"{name}: the checkpoint holds {meta[f'{name}_leaves']} arrays, the "
                        f"template {n}: another model or optimizer")
            saved = {k: (tuple(v[0]), v[1]) for k, v in meta["arrays"].items()}
            wanted = {k: (tuple(v.shape), str(v.dtype)) for k, v in target.items()}
            if saved != wanted:
                # blame the parameters first: an optimizer state mismatch usually follows
                # from theirs (Adam's moments have the parameters' shapes)
                k = sorted((set(saved) ^ set(wanted))
                           | {k for k in saved if saved.get(k) != wanted.get(k)},
                           key=lambda k: (k[0] != "p", k))
                what, tree = {"p": ("params", params), "o": ("opt_state", opt_state)}[k[0][0]]
                path = jax.tree_util.keystr(
                    jax.tree_util.tree_flatten_with_path(tree)[0][int(k[0][1:])][0])
                path = path.removesuffix(".value")  # nnx.Variable's own field
                raise ValueError(
                    f"params, opt_state: the checkpoint does not match the templates: {what} "
                    f"leaf {path} saved as {saved.get(k[0])}, the template has "
                    f"{wanted.get(k[0])} (another model or optimizer)")
            try:
                state = mgr.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target))).state
            except Exception as e:  # noqa: BLE001
                errors.append(f"{s}: {type(e).__name__}: {e}")
                continue
            if errors:
                warnings.warn(f"checkpoint: could not read {errors}; using iteration {s}",
                              RuntimeWarning, stacklevel=2)
            checks.same_structure("params, opt_state", dict(state), target, what="the templates")
            p = _unflat("params", "p", state, params)
            o = _unflat("opt_state", "o", state, opt_state)
            epoch, st = meta["position"]
            return Restored(p, o, (int(epoch), int(st)), History.from_dict(meta["history"]))
    finally:
        mgr.close()
    raise FileNotFoundError(f"directory: no readable checkpoint in {d}: {errors}")


def run_folder(directory: str | os.PathLike, run: int) -> pathlib.Path:
    """Run ``run``'s checkpoint folder of a batch saved to ``directory``: ``run_<i>``."""
    return pathlib.Path(directory) / f"run_{run:03d}"


def load_runs(directory: str | os.PathLike, params: Any, opt_state: Any) -> list[Restored]:
    """[`load_checkpoint`][admm_jax.train.load_checkpoint] of each ``run_<i>`` folder that
    [`BatchedTrainer.save`][admm_jax.train.BatchedTrainer.save] wrote; ``params`` and
    ``opt_state`` are one run's templates.

    Raises:
      FileNotFoundError: ``directory`` holds no run folder with a checkpoint.
    """
    runs = sorted(p for p in pathlib.Path(directory).glob("run_*") if checkpoint_steps(p))
    if not runs:
        raise FileNotFoundError(f"directory: no run_<i> checkpoint folder in {directory}")
    return [load_checkpoint(p, params, opt_state) for p in runs]
