r"""Adapters between Flax's own Elman RNN (``SimpleCell`` + linear readout) and ADMMiRNN.

Flax writes the Elman recurrence with two dense layers inside ``SimpleCell`` and a separate
readout (``nnx.Linear`` / ``linen.Dense``), kernels stored ``[in, out]``:

.. math::
    h_t = f(x_t K_i + b_i + h_{t-1} K_h\ [+\ h_{t-1}]),\qquad o = h_T K_o + b_o

(the bracket with ``residual=True``). ADMMiRNN's parameters are
``a_t = U x_t + W h_{t-1} + b, h_t = f(a_t), o_t = V h_t + c`` with ``U [H, D]``, ``W [H, H]``,
``V [C, H]``, so the map is exact and linear (affine with ``residual``):

.. math::
    U = K_i^T,\quad W = K_h^T\ [+\ I],\quad b = b_i,\quad V = K_o^T,\quad c = b_o.

``SimpleCell`` puts a bias only on its input layer (``dense_i`` in nnx, ``i`` in Linen) and
none on its recurrent one, which is exactly the single ``b`` of the Elman model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from admm_jax import _validation as V
from admm_jax.admm.params import path_names

INPUT_LAYERS = ("dense_i", "i")  # nnx.SimpleCell, linen.SimpleCell
RECURRENT_LAYERS = ("dense_h", "h")


class FlaxCellOptions(NamedTuple):
    """What :func:`admmirnn` and :func:`adapt_flax_rnn` must be told about a Flax cell.

    activation: ``"tanh"`` or ``"relu"`` (pass to ``admmirnn(activation=...)``);
    residual: the cell adds ``h_{t-1}`` before the activation (pass to the adapters).
    """

    activation: str
    residual: bool


class _Layout(NamedTuple):
    """Positions of the five Elman leaves among a Flax parameter tree's flattened leaves."""

    treedef: Any
    index: dict[str, int]  # "U", "W", "b", "V", "c" -> leaf position
    num_leaves: int



def _layout(params: Any) -> tuple[_Layout, list[Any]]:
    """Find the SimpleCell and readout leaves in ``params``; raise naming what is wrong."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not flat:
        raise ValueError("params: expected the parameters of a Flax SimpleCell RNN and a linear "
                         "readout, got an empty tree")
    paths = [path_names(p) for p, _ in flat]
    leaves = [leaf for _, leaf in flat]
    shown = ["/".join(p) for p in paths]

    def find(layers, leaf):
        return [i for i, p in enumerate(paths) if len(p) >= 2 and p[-2] in layers
                and p[-1] == leaf]

    ki, bi, kh, bh = (find(INPUT_LAYERS, "kernel"), find(INPUT_LAYERS, "bias"),
                      find(RECURRENT_LAYERS, "kernel"), find(RECURRENT_LAYERS, "bias"))
    if len(ki) != 1 or len(kh) != 1 or len(bi) != 1:
        raise ValueError(
            "params: expected exactly one Flax SimpleCell (leaves .../dense_i/kernel, "
            ".../dense_i/bias, .../dense_h/kernel in nnx; .../i/kernel, .../i/bias, "
            f".../h/kernel in Linen), got leaves {shown}")
    if bh:
        raise ValueError(f"params: a bias on the recurrent layer ({shown[bh[0]]}) is not the "
                         "SimpleCell layout; the Elman model has one bias b (on the input layer)")
    cell = paths[ki[0]][:-2]
    if paths[kh[0]][:-2] != cell:
        raise ValueError(f"params: input and recurrent kernels belong to different cells: "
                         f"{shown[ki[0]]} and {shown[kh[0]]}")
    rest = [i for i in range(len(paths)) if i not in (ki[0], bi[0], kh[0])]
    kr = [i for i in rest if paths[i][-1] == "kernel"]
    br = [i for i in rest if paths[i][-1] == "bias"]
    if len(kr) != 1 or len(br) != 1 or len(rest) != 2 or paths[kr[0]][:-1] != paths[br[0]][:-1]:
        raise ValueError(
            "params: besides the SimpleCell, expected exactly one linear readout with a bias "
            "(nnx.Linear / linen.Dense, use_bias=True: ADMMiRNN trains the output bias c); got "
            f"the other leaves {[shown[i] for i in rest]}. Other parameters (embeddings, more "
            "layers) cannot be trained by ADMMiRNN")
    index = {"U": ki[0], "W": kh[0], "b": bi[0], "V": kr[0], "c": br[0]}
    shapes = {k: tuple(np.shape(leaves[i])) for k, i in index.items()}
    d_h = shapes["W"][0]
    ok = (len(shapes["U"]) == 2 and shapes["U"][1] == d_h and shapes["W"] == (d_h, d_h)
          and shapes["b"] == (d_h,) and len(shapes["V"]) == 2 and shapes["V"][0] == d_h
          and shapes["c"] == (shapes["V"][1],))
    if not ok:
        raise ValueError(
            "params: inconsistent shapes for input kernel [D, H], input bias [H], recurrent "
            "kernel [H, H], readout kernel [H, C], readout bias [C]: got "
            + ", ".join(f"{shown[index[k]]} {shapes[k]}" for k in ("U", "b", "W", "V", "c")))
    return _Layout(treedef, index, len(leaves)), leaves


def _to_elman(leaves, layout: _Layout, shift: bool) -> dict[str, jax.Array]:
    ix = layout.index
    w = jnp.asarray(leaves[ix["W"]]).T
    if shift:
        w = w + jnp.eye(w.shape[0], dtype=w.dtype)
    return {"U": jnp.asarray(leaves[ix["U"]]).T, "W": w, "b": jnp.asarray(leaves[ix["b"]]),
            "V": jnp.asarray(leaves[ix["V"]]).T, "c": jnp.asarray(leaves[ix["c"]])}


def _from_elman(elman: Mapping[str, jax.Array], layout: _Layout, like_leaves, shift: bool):
    missing = [k for k in layout.index if k not in elman]
    if missing:
        raise ValueError(f"elman: expected the keys U, W, b, V, c, missing {missing}")
    w = jnp.asarray(elman["W"])
    if shift:
        w = w - jnp.eye(w.shape[0], dtype=w.dtype)
    values = {"U": jnp.asarray(elman["U"]).T, "W": w.T, "b": jnp.asarray(elman["b"]),
              "V": jnp.asarray(elman["V"]).T, "c": jnp.asarray(elman["c"])}
    out = list(like_leaves)
    for k, i in layout.index.items():
        if values[k].shape != np.shape(like_leaves[i]):
            raise ValueError(f"elman: {k} has shape {values[k].shape}, which does not fit the "
                             f"Flax leaf of shape {np.shape(like_leaves[i])}")
        out[i] = values[k].astype(jnp.result_type(like_leaves[i]))
    return jax.tree_util.tree_unflatten(layout.treedef, out)


def elman_from_flax(params: Any, *, residual: bool = False) -> dict[str, jax.Array]:
    r"""The Elman parameters ``{U, W, b, V, c}`` of a Flax ``SimpleCell`` RNN and readout.

    .. math::
        U = K_i^T,\quad W = K_h^T\ (+ I \text{ if residual}),\quad b = b_i,\quad
        V = K_o^T,\quad c = b_o

    Args:
      params: the model's parameters and nothing else: ``nnx.state(model, nnx.Param)`` of a
        module holding one ``nnx.RNN(nnx.SimpleCell(...))`` (or a bare ``nnx.SimpleCell``) and
        one ``nnx.Linear`` with bias, or the Linen equivalent ``variables["params"]`` of
        ``nn.RNN(nn.SimpleCell(...))`` + ``nn.Dense`` (the leaves are found by name:
        ``dense_i``/``i``, ``dense_h``/``h``, and the remaining ``kernel``/``bias`` pair).
      residual: the cell was built with ``residual=True`` (see :func:`flax_cell_options`).

    Returns:
      ``{"U": [H, D], "W": [H, H], "b": [H], "V": [C, H], "c": [C]}`` in the leaves' dtype,
      ready for :func:`admm_jax.elman_apply` and :func:`admm_jax.admmirnn`.

    Raises:
      ValueError: naming the leaves found when the tree is not exactly one SimpleCell and one
        biased linear readout.

    Examples:
      >>> from flax import nnx
      >>> import admm_jax
      >>> class Model(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.rnn = nnx.RNN(nnx.SimpleCell(3, 8, rngs=rngs))
      ...         self.head = nnx.Linear(8, 2, rngs=rngs)
      >>> p = admm_jax.elman_from_flax(nnx.state(Model(nnx.Rngs(0)), nnx.Param))
      >>> {k: v.shape for k, v in p.items()}
      {'U': (8, 3), 'W': (8, 8), 'b': (8,), 'V': (2, 8), 'c': (2,)}
    """
    layout, leaves = _layout(params)
    return _to_elman(leaves, layout, shift=residual)


def elman_to_flax(elman: Mapping[str, jax.Array], like: Any, *, residual: bool = False) -> Any:
    """Write Elman parameters ``{U, W, b, V, c}`` back into the layout of ``like``.

    The inverse of :func:`elman_from_flax`: ``elman_to_flax(elman_from_flax(p), p)`` equals
    ``p`` exactly (leaf for leaf, same tree type: an ``nnx.State`` stays one, so the result can
    be given to ``nnx.update(model, ...)``; a Linen dict stays a dict). With ``residual=True``
    the diagonal of the recurrent kernel goes through ``+ I - I`` and may differ by one
    rounding of 1.0 (``eps``); every other entry is exact.

    Args:
      elman: ``{"U", "W", "b", "V", "c"}`` arrays (e.g. trained by :func:`admm_jax.admmirnn`).
      like: the Flax parameter tree whose structure, shapes and dtypes the result takes.
      residual: as in :func:`elman_from_flax`.

    Returns:
      A tree of ``like``'s structure holding the values of ``elman``.
    """
    layout, leaves = _layout(like)
    return _from_elman(elman, layout, leaves, shift=residual)


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
      >>> tx = admm_jax.adapt_flax_rnn(admm_jax.admmirnn(num_samples=16, seq_len=5), model.rnn)
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
    opts = V.model_options(inner)
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
        layout, leaves = _layout(params)
        elman = _to_elman(leaves, layout, shift=residual)
        grads = None
        if updates is not None and jax.tree.leaves(updates):
            g_layout, g_leaves = _layout(updates)
            grads = _to_elman(g_leaves, g_layout, shift=False)
        delta, state = inner.update(grads, state, elman, **extra_args)
        return _from_elman(delta, layout, leaves, shift=False), state

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return tx if opts is None else V.register_model_options(tx, **opts)


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
