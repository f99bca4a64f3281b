"""The checks a run makes before anything is compiled: the model and the optimizer, the data
and how it fits the model, the state to resume from. Each runs once, where the caller the user
called (``fit`` or ``Trainer``) first sees the argument, and its error names the argument as
that caller spells it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from admm_jax import _validation as validation
from admm_jax.train import losses
from admm_jax.train.checkpoint import Restored
from admm_jax.train.history import History


def model_and_optimizer(model: Any, optimizer: Any) -> None:
    """A ``TypeError`` naming the argument unless ``model`` is an ``nnx.Module`` and
    ``optimizer`` has ``init`` and ``update``."""
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model: expected an nnx.Module, got {type(model).__name__}")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer: expected an optax GradientTransformation, got "
                        f"{type(optimizer).__name__}")


def seed(value: Any) -> None:
    """The shuffling seed is an int (not a bool)."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise TypeError(f"seed: expected an int, got {value!r}")


def data(name: str, pair: Any, validate: bool) -> tuple[np.ndarray, np.ndarray]:
    """``pair`` as two numeric arrays ``(inputs, targets)`` of the same nonzero length (with
    ``validate``: finite values)."""
    if not (isinstance(pair, tuple | list) and len(pair) == 2):
        raise TypeError(f"{name}: expected a pair (inputs, targets), got {type(pair).__name__}")
    try:
        x, y = (np.asarray(a) for a in pair)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected two arrays (inputs, targets), got {e}") from None
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{name}: expected inputs and targets of the same nonzero length, got "
                         f"{x.shape} and {y.shape}")
    for part, a in (("inputs", x), ("targets", y)):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise TypeError(f"{name}: expected numeric {part}, got dtype {a.dtype}")
        if validate:
            validation.finite(f"{name} {part}", a)
    return x, y


def resume(value: Any) -> Restored:
    """``value`` (``None``: a fresh run) as a [`admm_jax.train.Restored`][] whose position
    is a pair of Python ints."""
    if value is None:
        return Restored()
    if not isinstance(value, Restored):
        raise TypeError(f"resume: expected a Restored (load_checkpoint's result), got "
                        f"{type(value).__name__}")
    start = value.position
    if not (isinstance(start, tuple | list) and len(start) == 2
            and all(isinstance(v, int | np.integer) for v in start)):
        raise TypeError(f"resume.position: expected a pair of ints (epoch, step), got {start!r}")
    if value.history is not None and not isinstance(value.history, History):
        raise TypeError(f"resume.history: expected a History, got "
                        f"{type(value.history).__name__}")
    return value._replace(position=tuple(int(v) for v in start))


def trainable(model: nnx.Module, optimizer: Any, params: Any, num_samples: int) -> None:
    """The model has weights to train and no RNG streams, and matches what the optimizer says
    it was built for (`admm_jax._validation.model_options`)."""
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("model: has no nnx.Param to train")
    if jax.tree_util.tree_leaves(nnx.state(model, nnx.RngState)):
        raise ValueError(
            f"model: {type(model).__name__} holds RNG state (nnx.Rngs streams, e.g. nnx.RNN's "
            "default rngs=True), which training keeps constant between steps; build it without "
            "(nnx.RNN(cell, rngs=False), called with initial_carry=zeros) or train it in an "
            "nnx.jit loop")
    _model_options(model, optimizer, num_samples)


def _model_options(model: nnx.Module, optimizer: Any, num_samples: int) -> None:
    opts = validation.model_options(optimizer)
    if opts is None:
        return
    tx_name = opts.get("name", "the optimizer")
    n = opts.get("num_samples")
    if n is not None and n != num_samples:
        raise ValueError(f"optimizer: {tx_name} was built with num_samples={n}, but train_data "
                         f"has {num_samples} samples")
    from admm_jax.interop.flax_rnn import flax_cell_options
    from admm_jax.models.elman import ElmanRNN

    if isinstance(model, ElmanRNN):
        got = {"activation": model.activation, "many_to_many": model.many_to_many}
    else:
        mods = [m for _, m in nnx.iter_modules(model)]
        rnns = ([m for m in mods if isinstance(m, nnx.RNN)]
                 or [m for m in mods if isinstance(m, nnx.SimpleCell)])
        if len(rnns) != 1:
            return
        got = {"activation": flax_cell_options(rnns[0]).activation}
    for k, v in got.items():
        if k in opts and opts[k] != v:
            raise ValueError(f"optimizer: {tx_name} was built with {k}={opts[k]!r}, but the "
                             f"model has {k}={v!r}; build it with {tx_name}({k}={v!r})")


def _vocabulary(model: nnx.Module) -> int | None:
    """The token vocabulary of ``model``: an ElmanRNN's input size, or the size of its single
    ``nnx.Embed``; ``None`` when it has none (float inputs, or unknown)."""
    from admm_jax.models.elman import ElmanRNN

    if isinstance(model, ElmanRNN):
        return int(model.U[...].shape[1])
    embeds = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Embed)]
    return int(embeds[0].num_embeddings) if len(embeds) == 1 else None


def fits_model(name: str, pair: tuple[np.ndarray, np.ndarray], model: nnx.Module,
               forward: tuple[Callable, Any],
               fns: tuple[losses.PerSample, losses.PerSample | None], validate: bool) -> None:
    """The checked ``pair = (x, y)`` fits ``model``: token ids in its vocabulary (with
    ``validate``), inputs it accepts, targets the loss accepts for its outputs, and a loss and
    metric (``fns``) with one value per sample. ``forward = (apply, params)``, the model as
    `admm_jax.train.steps.apply_fn` and its weights, is traced on one sample, never
    compiled or run."""
    x, y = pair
    vocab = _vocabulary(model)
    if validate and vocab is not None:
        validation.token_ids(f"{name} inputs", x, vocab)
    try:
        apply, params = forward
        out = jax.eval_shape(apply, params, x[:1], {}, None)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the data does not fit
        raise ValueError(f"{name}: inputs of shape {x.shape} ({x.dtype}) do not fit the model: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    loss_fn, metric_fn = fns
    if loss_fn is losses.cross_entropy:
        want = (len(y),) + tuple(out.shape[1:-1])
        if not np.issubdtype(y.dtype, np.integer) or y.shape != want:
            raise ValueError(f"{name}: cross_entropy needs integer class targets of shape {want} "
                             f"for model outputs {tuple(out.shape)[1:]}, got {y.dtype}{y.shape}")
        if validate:
            validation.labels(f"{name} targets", y, int(out.shape[-1]))
    elif loss_fn is losses.mse:
        if int(np.prod(y.shape[1:])) != int(np.prod(out.shape[1:])):
            raise ValueError(f"{name}: mse needs {tuple(out.shape[1:])} real targets per sample "
                             f"(the model's outputs), got targets of shape {y.shape}")
    for what, fn in (("loss", loss_fn), ("metric", metric_fn)):
        if fn is None:
            continue
        try:
            v = jax.eval_shape(fn, out, jax.ShapeDtypeStruct(y[:1].shape, y.dtype))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{what}: fails on model outputs {tuple(out.shape)} and {name} "
                             f"targets {y.dtype}{y[:1].shape}: {type(e).__name__}: {e}"
                             ) from None
        if tuple(v.shape) != (1,):
            raise ValueError(f"{what}: expected one value per sample, shape (1,) for a batch of "
                             f"1, got {tuple(v.shape)}")


def resumed_opt_state(opt_state: Any, optimizer: Any, params: Any) -> None:
    """A state to resume from has the structure, shapes and dtypes of ``optimizer.init``."""
    if opt_state is not None:
        validation.same_structure("resume.opt_state", opt_state,
                                  jax.eval_shape(optimizer.init, params),
                                  what="optimizer.init(params) of this model")


def check_forward(optimizer: Any, model: nnx.Module, inputs: Any) -> None:
    r"""Check that the model a method trains is ``model``.

    A method that runs a forward pass of its own (one that reads an Elman RNN from the
    parameters, through [`admm_jax.adapt_flax_rnn`][] for a Flax model; K-FAC's model it was
    built for) must compute ``model``'s outputs, or its steps and the batch loss it reports
    belong to another model:

    $$
    \max |f_{\text{method}}(\theta, x) - f_{\text{model}}(\theta, x)|
    \le \tau\,(1 + \max |f_{\text{model}}(\theta, x)|),\quad
    \tau = \max(10^{-4}, 16\,\epsilon_{\text{dtype}})
    $$

    [`admm_jax.train.fit`][] calls it on the first two training samples before compiling; a
    hand-written loop calls it once on an example batch. A no-op for an optimizer that records
    no forward pass (the gradient methods, and any method inside ``optax.chain`` or
    ``inject_hyperparams``, whose options the wrapper does not carry). Cost: one forward pass of
    each on ``inputs``, eagerly; none when the method was built from a module with ``model``'s
    graph (K-FAC built for this model or an identical one).

    Args:
      optimizer: the transformation (its registered model options hold ``forward``).
      model: the ``nnx.Module`` being trained.
      inputs: an example batch (a few samples suffice).

    Raises:
      ValueError: the outputs differ (naming the largest difference and what the method runs),
        or the method's forward pass fails on the model's parameters.

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> import admm_jax
      >>> tanh = admm_jax.ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0))
      >>> relu = admm_jax.ElmanRNN(3, 8, 2, rngs=nnx.Rngs(0), activation="relu")
      >>> x = jax.random.normal(jax.random.key(1), (2, 5, 3))
      >>> tx = admm_jax.scale_by_kfac(tanh, x)  # built for the tanh model
      >>> check_forward(tx, tanh, x)  # the same graph: nothing to run
      >>> check_forward(tx, relu, x)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: optimizer: scale_by_kfac trains its own forward pass (...), which differs ...
    """
    opts = validation.model_options(optimizer) or {}
    own = opts.get("forward")
    graph = opts.get("forward_graph")  # the module it was built from: the same graph, no run
    if own is None or (graph is not None and nnx.split(model, nnx.Param, ...)[0] == graph):
        return
    name, note = opts.get("name", "the optimizer"), opts.get("forward_note", "its own model")
    inputs = jax.numpy.asarray(inputs)
    want = np.asarray(model(inputs), np.float64)
    try:
        got = np.asarray(own(nnx.state(model, nnx.Param), inputs), np.float64)
    except Exception as e:  # noqa: BLE001 - any failure: the method cannot run this model
        raise ValueError(f"optimizer: {name} trains its own forward pass ({note}), which fails "
                         f"on this model's parameters: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    scale = float(np.nanmax(np.abs(want), initial=0.0)) if want.size else 0.0
    eps = float(jax.numpy.finfo(jax.numpy.result_type(*jax.tree_util.tree_leaves(
        nnx.state(model, nnx.Param)))).eps)
    tol = max(1e-4, 16 * eps) * (1.0 + scale)
    if got.shape == want.shape:  # a non-finite input (validate=False) gives NaN in both: equal
        both = np.isnan(got) & np.isnan(want)
        diff = float(np.max(np.abs(np.where(both, 0.0, got - want)), initial=0.0))
    else:
        diff = np.inf
    if not diff <= tol:
        shapes = "" if got.shape == want.shape else f"; outputs {got.shape} vs {want.shape}"
        raise ValueError(
            f"optimizer: {name} trains its own forward pass ({note}), which differs from the "
            f"model's on the same inputs (max |difference| {diff:.3g} for outputs up to "
            f"{scale:.3g}{shapes}): its steps and the loss it reports would belong to another "
            "model")


def method_loss_name(optimizer: Any, opt_state: Any) -> str | None:
    """The loss a method's ``batch_loss`` is measured with: its state's ``loss_name`` (a class
    attribute), else the ``loss`` it was registered with."""
    named = [getattr(type(n), "loss_name", None) for n in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda n: hasattr(type(n), "loss_name"))]
    named = [n for n in named if n is not None]
    if named:
        return named[0]
    return (validation.model_options(optimizer) or {}).get("loss")


def same_loss(optimizer: Any, opt_state: Any, loss: Any) -> bool:
    """Whether the method's own loss is ``loss`` (a name); a named loss it was built with
    other than ``loss`` is an error (its history would record another loss than the run's)."""
    built_for = method_loss_name(optimizer, opt_state)
    if isinstance(loss, str) and built_for is not None and built_for != loss:
        raise ValueError(f"optimizer: it was built with loss={built_for!r}, but the training "
                         f"loss is {loss!r}; build it with loss={loss!r}")
    return isinstance(loss, str) and built_for == loss
