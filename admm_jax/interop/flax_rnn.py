"""Adapters that run ADMMiRNN on Flax's own Elman RNN (``SimpleCell`` + linear readout).

The layout map between Flax's kernels and the Elman parameters ``{U, W, b, V, c}``
(:func:`admm_jax.elman_from_flax`, :func:`admm_jax.elman_to_flax`) lives in
:mod:`admm_jax.layouts`; this module adds the optax adapter and the check of the cell's
activation and direction.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from admm_jax import _validation as checks
from admm_jax.layouts import elman_from_flax, elman_to_flax

__all__ = ["FlaxCellOptions", "adapt_flax_rnn", "elman_from_flax", "elman_to_flax",
           "flax_cell_options"]


class FlaxCellOptions(NamedTuple):
    """What :func:`admmirnn` and :func:`adapt_flax_rnn` must be told about a Flax cell.

    activation: ``"tanh"`` or ``"relu"`` (pass to ``admmirnn(activation=...)``);
    residual: the cell adds ``h_{t-1}`` before the activation (pass to the adapters).
    """

    activation: str
    residual: bool


def adapt_flax_rnn(
    inner: optax.GradientTransformation, module: Any = None, *, residual: bool | None = None
) -> optax.GradientTransformationExtraArgs:
    """Run ``inner`` (e.g. :func:`admm_jax.admmirnn`) on a Flax SimpleCell RNN's parameters.

    The returned transformation takes and returns trees in the Flax layout (so it drops into
    ``nnx.Optimizer(model, tx, wrt=nnx.Param)``, a Linen ``TrainState`` or
    :func:`admm_jax.train.fit`); inside, the parameters (and gradients, when given) are mapped
    to ``U, W, b, V, c`` by :func:`elman_from_flax`, ``inner`` runs, and its updates are mapped
    back (the map is linear, so an update ``dW`` becomes ``dK_h = dW^T``). Its state is
    ``inner``'s state unchanged.

    The model must compute ``head(rnn(x)[:, -1])`` (many-to-one; ``admmirnn(many_to_many=True)``
    for ``head(rnn(x))``) from a zero initial carry, with the cell's activation passed to
    ``admmirnn(activation=...)`` (see :func:`flax_cell_options`).

    The parameters alone do not say how the cell computes: pass the RNN as ``module`` and it
    is checked when the adapter is built (:func:`flax_cell_options`): a reverse or time-major
    RNN, a cell other than ``SimpleCell`` or an activation other than tanh/relu raise a
    ``ValueError``, and so does an activation other than the one ``inner`` was built with
    (``admmirnn(activation=...)``); ``residual`` is then read from the cell.
    :func:`admm_jax.train.fit` makes the same checks on the model it is given.

    Args:
      inner: the transformation to run on Elman parameters.
      module: the Flax RNN being trained (``nnx.RNN``, ``nnx.SimpleCell`` or their Linen
        versions), checked as above; ``None`` skips the checks.
      residual: the cell was built with ``residual=True`` (default: read from ``module``,
        else ``False``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params, **extra)``
      forwards ``extra`` (``inputs=``, ``targets=``, ``indices=``) to ``inner``. ``grads`` may
      be ``None`` (or an empty tree) for ADMMiRNN, which does not use it.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import admm_jax
      >>> class Model(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.rnn = nnx.RNN(nnx.SimpleCell(3, 8, rngs=rngs))
      ...         self.head = nnx.Linear(8, 2, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.head(self.rnn(x)[:, -1])
      >>> model = Model(nnx.Rngs(0))
      >>> tx = admm_jax.adapt_flax_rnn(admm_jax.admmirnn(), model.rnn)
      >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
      >>> x = jax.random.normal(jax.random.key(1), (16, 5, 3))
      >>> y = (x[:, :, 0].sum(1) > 0).astype(jnp.int32)
      >>> _ = optimizer.update(model, None, inputs=x, targets=y)
      >>> int(optimizer.opt_state.count[...])
      1
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(f"inner: expected an optax GradientTransformation, got "
                        f"{type(inner).__name__}")
    opts = checks.model_options(inner)
    if module is not None:
        cell = flax_cell_options(module)
        if residual is not None and bool(residual) != cell.residual:
            raise ValueError(f"residual: {residual} given, but the cell has residual="
                             f"{cell.residual}")
        residual = cell.residual
        if opts is not None and opts.get("activation", cell.activation) != cell.activation:
            raise ValueError(f"module: the cell computes {cell.activation}, but "
                             f"{opts.get('name', 'inner')} was built with activation="
                             f"{opts['activation']!r}; build it with "
                             f"activation={cell.activation!r}")
    residual = bool(residual)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return inner.init(elman_from_flax(params, residual=residual))

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("params: adapt_flax_rnn needs the current Flax parameters; call "
                             "tx.update(grads, state, params, inputs=..., targets=...)")
        elman = elman_from_flax(params, residual=residual)
        grads = None
        if updates is not None and jax.tree.leaves(updates):
            grads = elman_from_flax(updates)
        delta, state = inner.update(grads, state, elman, **extra_args)
        # the map is linear: an update of W is the update of K_h, transposed (no shift)
        return elman_to_flax(delta, params), state

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    if opts is None:
        return tx
    if "forward" in opts:  # inner's model, read through the map (for fit's check_forward)
        inner_forward = opts["forward"]
        opts = {**opts, "forward_note": f"{opts.get('forward_note', 'its model')} mapped from "
                "the Flax parameters by adapt_flax_rnn: the model must compute "
                "head(rnn(x)[:, -1]) (head(rnn(x)) for many_to_many=True) from a zero carry",
                "forward": lambda params, x: inner_forward(
                    elman_from_flax(params, residual=residual), x)}
    return checks.register_model_options(tx, **opts)


_GRID = np.linspace(-3.0, 3.0, 13, dtype=np.float32)


def _activation_name(fn) -> str:
    """``"tanh"`` or ``"relu"`` when ``fn`` computes it (checked numerically), else raise."""
    try:
        got = np.asarray(fn(jnp.asarray(_GRID)))
    except Exception as e:  # noqa: BLE001 - any failure means "not an elementwise activation"
        raise ValueError(f"activation_fn: could not evaluate {fn!r}: {e}") from e
    for name, ref in (("tanh", np.tanh(_GRID)), ("relu", np.maximum(_GRID, 0.0))):
        if got.shape == ref.shape and np.allclose(got, ref, rtol=1e-5, atol=1e-6):
            return name
    raise ValueError(f"activation_fn: ADMMiRNN supports tanh and relu cells, got {fn!r}")


def flax_cell_options(module: Any) -> FlaxCellOptions:
    """Read the activation and ``residual`` flag of a Flax SimpleCell RNN, checking support.

    Args:
      module: ``nnx.RNN``, ``nnx.SimpleCell``, ``flax.linen.RNN`` or ``flax.linen.SimpleCell``.

    Returns:
      :class:`FlaxCellOptions` ``(activation, residual)``.

    Raises:
      ValueError: for a cell other than SimpleCell, an activation other than tanh/relu, or an
        RNN that runs backward in time or is time-major.
      TypeError: when ``module`` is not one of the four classes above.

    Examples:
      >>> from flax import nnx
      >>> import admm_jax
      >>> admm_jax.flax_cell_options(nnx.RNN(nnx.SimpleCell(3, 8, rngs=nnx.Rngs(0))))
      FlaxCellOptions(activation='tanh', residual=False)
    """
    import flax.linen as nn
    from flax import nnx

    if isinstance(module, nnx.RNN | nn.RNN):
        for flag in ("reverse", "time_major"):
            if getattr(module, flag, False):
                raise ValueError(f"module: RNN({flag}=True) is not supported; ADMMiRNN reads "
                                 "[batch, time, features] forward in time")
        cell = module.cell
    else:
        cell = module
    if not isinstance(cell, nnx.SimpleCell | nn.SimpleCell):
        if isinstance(cell, nnx.Module | nn.Module):
            raise ValueError(f"module: only SimpleCell (Elman) cells map onto ADMMiRNN, got "
                             f"{type(cell).__name__}")
        raise TypeError(f"module: expected nnx.RNN, nnx.SimpleCell, linen.RNN or "
                        f"linen.SimpleCell, got {type(module).__name__}")
    return FlaxCellOptions(_activation_name(cell.activation_fn), bool(cell.residual))
