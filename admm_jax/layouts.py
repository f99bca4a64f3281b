r"""Parameter layouts: where the Elman map ``{U, W, b, V, c}`` sits in each supported tree.

Every method that works on the Elman recurrence
``a_t = U x_t + W h_{t-1} + b,\ h_t = f(a_t),\ o_t = V h_t + c`` reads its weights through
this module, whatever tree holds them:

* :class:`admm_jax.ElmanRNN` (any tree whose leaves are named ``U, W, b, V, c``, e.g.
  ``nnx.state(model, nnx.Param)`` or a plain dict): :func:`split_elman` /
  :func:`merge_elman`, shapes ``U [H, D], W [H, H], b [H], V [C, H], c [C]``.
* :class:`admm_jax.LSTM` (an ``nnx.LSTMCell`` ``cell`` and a ``readout``): the four gates'
  pre-activations ``z_t = W_x x_t + W_h h_{t-1} + b`` are one linear map of
  ``[x_t; h_{t-1}; 1]``, so the gates stack into an Elman-like map with ``4H`` rows in the
  gate order ``i, f, g, o`` of ``nnx.LSTMCell``:

  .. math::
      U = [K_{ii}\ K_{if}\ K_{ig}\ K_{io}]^T,\quad
      W = [K_{hi}\ K_{hf}\ K_{hg}\ K_{ho}]^T,\quad
      b = [b_{hi}; b_{hf}; b_{hg}; b_{ho}]

  (:func:`stack_lstm_gates`, which :class:`admm_jax.LSTM` runs).
* Flax's own ``SimpleCell`` RNN and linear readout (nnx or Linen), kernels stored
  ``[in, out]``, computing ``h_t = f(x_t K_i + b_i + h_{t-1} K_h\ [+\ h_{t-1}])`` (the
  bracket with ``residual=True``) and ``o = h_T K_o + b_o``. The map is exact and linear
  (affine with ``residual``):

  .. math::
      U = K_i^T,\quad W = K_h^T\ [+\ I],\quad b = b_i,\quad V = K_o^T,\quad c = b_o

  ``SimpleCell`` puts a bias only on its input layer (``dense_i`` in nnx, ``i`` in Linen)
  and none on its recurrent one, which is exactly the single ``b`` of the Elman model
  (:func:`elman_from_flax` / :func:`elman_to_flax`).

Every reader raises a ``ValueError`` naming the leaves it found when the tree is not of its
layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ELMAN_NAMES = ("U", "W", "b", "V", "c")
"""The Elman parameters, in the order of :class:`admm_jax.ElmanRNN`."""

LSTM_INPUT_KERNELS = ("ii", "if_", "ig", "io")
"""``nnx.LSTMCell``'s input sub-layers (kernels ``[D, H]``), in its gate order ``i, f, g, o``."""

LSTM_HIDDEN_KERNELS = ("hi", "hf", "hg", "ho")
"""``nnx.LSTMCell``'s recurrent sub-layers (kernels ``[H, H]``, biases ``[H]``), same order."""

FLAX_INPUT_LAYERS = ("dense_i", "i")
"""The input layer of ``nnx.SimpleCell`` and ``linen.SimpleCell``."""

FLAX_RECURRENT_LAYERS = ("dense_h", "h")
"""The recurrent layer of ``nnx.SimpleCell`` and ``linen.SimpleCell``."""


def path_names(path) -> tuple[str, ...]:
    """The dict keys and attribute names along a pytree path, without nnx's ``.value``.

    Args:
      path: a key path from ``jax.tree_util.tree_flatten_with_path``.

    Returns:
      The names as a tuple of strings (sequence indices are left out).

    Examples:
      >>> import jax
      >>> from admm_jax.layouts import path_names
      >>> [path_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      ...     {"cell": {"hi": {"bias": 0.0}}})[0]]
      [('cell', 'hi', 'bias')]
    """
    out = []
    for entry in path:
        name = getattr(entry, "key", None)
        if name is None:
            name = getattr(entry, "name", None)
        if isinstance(name, str) and name != "value":
            out.append(name)
    return tuple(out)


def _leaf_name(path) -> str | None:
    """The innermost dict key or attribute name of a pytree path, skipping ``.value``."""
    names = path_names(path)
    return names[-1] if names else None


# ---------------------------------------------------------------------------------------------
# Elman: leaves named U, W, b, V, c


def split_elman(params: Any) -> tuple[dict[str, jax.Array], Any, list[str]]:
    """Find the Elman leaves ``U, W, b, V, c`` in a tree (a dict, an ``nnx.State``, ...).

    The leaves are found by their innermost name, so any nesting works; the tree must hold
    exactly these five.

    Args:
      params: the parameters of an :class:`admm_jax.ElmanRNN`, e.g.
        ``nnx.state(model, nnx.Param)`` or ``{"U": ..., "W": ..., ...}``.

    Returns:
      ``(named, treedef, names)``: the five arrays by name, the tree structure, and the name
      of every leaf in flattening order (for :func:`merge_elman`).

    Raises:
      ValueError: naming the leaves found when they are not exactly the five.

    Examples:
      >>> import jax.numpy as jnp
      >>> from admm_jax.layouts import merge_elman, split_elman
      >>> tree = {"cell": {"U": jnp.ones((4, 3)), "W": jnp.eye(4), "b": jnp.zeros(4)},
      ...         "head": {"V": jnp.ones((2, 4)), "c": jnp.zeros(2)}}
      >>> named, treedef, names = split_elman(tree)
      >>> names
      ['U', 'W', 'b', 'V', 'c']
      >>> merge_elman(named, treedef, names)["head"]["V"].shape
      (2, 4)
    """
    if params is None:
        raise ValueError(
            "params: admmirnn needs the current parameters; call "
            "tx.update(grads, state, params, inputs=..., targets=...)"
        )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [_leaf_name(path) for path, _ in leaves]
    named = {n: leaf for n, (_, leaf) in zip(names, leaves, strict=True)}
    missing = [k for k in ELMAN_NAMES if k not in named]
    extra = [n for n in names if n not in ELMAN_NAMES]
    if missing or extra or len(names) != len(ELMAN_NAMES):
        raise ValueError(
            f"params: expected exactly the Elman parameters {ELMAN_NAMES} "
            f"(e.g. nnx.state(ElmanRNN(...), nnx.Param)), got leaves named {names}; for a "
            "Flax nnx.RNN(nnx.SimpleCell) with a Linear head, wrap the method: "
            "admm_jax.adapt_flax_rnn(admm_jax.admmirnn(), model.rnn)"
        )
    return named, treedef, names


def merge_elman(values: Mapping[str, jax.Array], treedef, names: list[str]) -> Any:
    """Rebuild a tree of ``treedef``'s structure from values keyed by Elman leaf name.

    The inverse of :func:`split_elman`: ``merge_elman(*split_elman(p))`` is ``p``.

    Args:
      values: ``{"U", "W", "b", "V", "c"}`` arrays (e.g. updates of the parameters).
      treedef, names: as returned by :func:`split_elman`.

    Returns:
      The tree, its leaves taken from ``values`` (dtypes as given).

    Examples:
      >>> import jax.numpy as jnp
      >>> from admm_jax.layouts import merge_elman, split_elman
      >>> p = {k: jnp.zeros(2) for k in "UWbVc"}
      >>> _, treedef, names = split_elman(p)
      >>> merge_elman({k: jnp.ones(2) for k in "UWbVc"}, treedef, names)["W"]
      Array([1., 1.], dtype=float32)
    """
    return jax.tree_util.tree_unflatten(treedef, [values[n] for n in names])


def check_elman_shapes(p: Mapping[str, jax.Array]) -> None:
    """Check ``U [H, D], W [H, H], b [H], V [C, H], c [C]`` (shapes only: safe at trace time).

    Args:
      p: the Elman parameters by name.

    Raises:
      ValueError: naming the parameter whose shape does not fit ``U`` and ``V``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from admm_jax.layouts import check_elman_shapes
      >>> p = {"U": jnp.ones((4, 3)), "W": jnp.ones((4, 4)), "b": jnp.ones(4),
      ...      "V": jnp.ones((2, 4)), "c": jnp.ones(3)}
      >>> check_elman_shapes(p)
      Traceback (most recent call last):
      ValueError: params: c should be (2,) for U of shape (4, 3) and V of shape (2, 4), got (3,)
    """
    if p["U"].ndim != 2 or p["V"].ndim != 2:
        raise ValueError(f"params: expected U [H, D] and V [C, H], got U {p['U'].shape} and "
                         f"V {p['V'].shape}")
    h, c = p["U"].shape[0], p["V"].shape[0]
    want = {"W": (h, h), "b": (h,), "V": (c, h), "c": (c,)}
    for k, shape in want.items():
        if tuple(p[k].shape) != shape:
            raise ValueError(f"params: {k} should be {shape} for U of shape {p['U'].shape} and "
                             f"V of shape {p['V'].shape}, got {tuple(p[k].shape)}")


# ---------------------------------------------------------------------------------------------
# LSTM: the four gates of nnx.LSTMCell as one Elman-like map


def stack_lstm_gates(cell: Mapping[str, Mapping[str, jax.Array]]) -> dict[str, jax.Array]:
    r"""The four gates of an ``nnx.LSTMCell`` as one Elman-like map ``{U, W, b}``.

    .. math::
        U = [K_{ii}\ K_{if}\ K_{ig}\ K_{io}]^T\ [4H, D],\quad
        W = [K_{hi}\ K_{hf}\ K_{hg}\ K_{ho}]^T\ [4H, H],\quad
        b = [b_{hi}; b_{hf}; b_{hg}; b_{ho}]\ [4H]

    so that ``U x_t + W h_{t-1} + b`` are the gate pre-activations ``[i; f; g; o]``.

    Args:
      cell: ``nnx.to_pure_dict(nnx.state(nnx.LSTMCell(...)))`` layout: ``ii, if_, ig, io``
        with ``kernel [D, H]``; ``hi, hf, hg, ho`` with ``kernel [H, H]`` and ``bias [H]``.

    Returns:
      ``{"U": [4H, D], "W": [4H, H], "b": [4H]}``.

    Examples:
      >>> from flax import nnx
      >>> from admm_jax.layouts import stack_lstm_gates
      >>> cell = nnx.to_pure_dict(nnx.state(nnx.LSTMCell(3, 8, rngs=nnx.Rngs(0))))
      >>> {k: v.shape for k, v in stack_lstm_gates(cell).items()}
      {'U': (32, 3), 'W': (32, 8), 'b': (32,)}

    References:
      Flax ``nnx.LSTMCell`` (the sub-layer names and the gate order ``i, f, g, o``).
    """
    return {"U": jnp.concatenate([cell[k]["kernel"] for k in LSTM_INPUT_KERNELS], 1).T,
            "W": jnp.concatenate([cell[k]["kernel"] for k in LSTM_HIDDEN_KERNELS], 1).T,
            "b": jnp.concatenate([cell[k]["bias"] for k in LSTM_HIDDEN_KERNELS])}


class _FlaxLayout(NamedTuple):
    """Positions of the five Elman leaves among a Flax parameter tree's flattened leaves."""

    treedef: Any
    index: dict[str, int]  # "U", "W", "b", "V", "c" -> leaf position
    num_leaves: int


def _flax_layout(params: Any) -> tuple[_FlaxLayout, list[Any]]:
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

    ki, bi, kh, bh = (find(FLAX_INPUT_LAYERS, "kernel"), find(FLAX_INPUT_LAYERS, "bias"),
                      find(FLAX_RECURRENT_LAYERS, "kernel"), find(FLAX_RECURRENT_LAYERS, "bias"))
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
    return _FlaxLayout(treedef, index, len(leaves)), leaves


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
      residual: the cell was built with ``residual=True`` (see
        :func:`admm_jax.flax_cell_options`).

    Returns:
      ``{"U": [H, D], "W": [H, H], "b": [H], "V": [C, H], "c": [C]}`` in the leaves' dtype,
      ready for :func:`admm_jax.elman_apply` and :func:`admm_jax.admmirnn`.

    Raises:
      ValueError: naming the leaves found when the tree is not exactly one SimpleCell and one
        biased linear readout.

    Examples:
      >>> from flax import nnx
      >>> import admm_jax
      >>> rngs = nnx.Rngs(0)
      >>> model = nnx.Dict(rnn=nnx.RNN(nnx.SimpleCell(3, 8, rngs=rngs)),
      ...                  head=nnx.Linear(8, 2, rngs=rngs))
      >>> p = admm_jax.elman_from_flax(nnx.state(model, nnx.Param))
      >>> {k: v.shape for k, v in p.items()}
      {'U': (8, 3), 'W': (8, 8), 'b': (8,), 'V': (2, 8), 'c': (2,)}

    References:
      Flax ``nnx.SimpleCell`` / ``linen.SimpleCell`` (the sub-layer names and kernels
      ``[in, out]``).
    """
    layout, leaves = _flax_layout(params)
    ix = layout.index
    w = jnp.asarray(leaves[ix["W"]]).T
    if residual:
        w = w + jnp.eye(w.shape[0], dtype=w.dtype)
    return {"U": jnp.asarray(leaves[ix["U"]]).T, "W": w, "b": jnp.asarray(leaves[ix["b"]]),
            "V": jnp.asarray(leaves[ix["V"]]).T, "c": jnp.asarray(leaves[ix["c"]])}


def elman_to_flax(elman: Mapping[str, jax.Array], like: Any, *, residual: bool = False) -> Any:
    r"""Write Elman parameters ``{U, W, b, V, c}`` back into the layout of ``like``.

    .. math::
        K_i = U^T,\quad K_h = (W\ [-\ I])^T,\quad b_i = b,\quad K_o = V^T,\quad b_o = c

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

    Raises:
      ValueError: when ``like`` is not a SimpleCell RNN's parameters (as
        :func:`elman_from_flax`), a key of ``elman`` is missing or a shape does not fit.

    Examples:
      >>> import flax.linen as nn
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> import admm_jax
      >>> class Model(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.Dense(2)(nn.RNN(nn.SimpleCell(8))(x)[:, -1])
      >>> p = Model().init(jax.random.key(0), jnp.zeros((1, 5, 3)))["params"]
      >>> back = admm_jax.elman_to_flax(admm_jax.elman_from_flax(p), p)
      >>> all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(p)))
      True
    """
    layout, like_leaves = _flax_layout(like)
    missing = [k for k in layout.index if k not in elman]
    if missing:
        raise ValueError(f"elman: expected the keys U, W, b, V, c, missing {missing}")
    w = jnp.asarray(elman["W"])
    if residual:
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
