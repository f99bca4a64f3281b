"""A recurrent classifier built from Flax's own cells, as a user would write it: an optional
``nnx.Embed``, ``nnx.RNN`` layers and an ``nnx.Linear`` head."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

CELLS = {"simple": nnx.SimpleCell, "lstm": nnx.LSTMCell, "gru": nnx.GRUCell,
         "optimized-lstm": nnx.OptimizedLSTMCell}


def _positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return v


class StackedRNN(nnx.Module):
    r"""``[nnx.Embed] -> nnx.RNN(cell) x layers -> nnx.Linear``: Flax's own recurrent layers.

    $$
    h^{(0)}_t = x_t \ \text{or}\ E[x_t],\qquad
    h^{(l)}_t = \mathrm{cell}_l(h^{(l)}_{t-1}, h^{(l-1)}_t),\qquad
    o = V h^{(L)}_T + c \ \ (\text{or every } t)
    $$

    Every cell starts from a zero carry, so the model holds no RNG state.

    Args:
      cell: ``"simple"`` (``nnx.SimpleCell``, tanh), ``"lstm"`` (``nnx.LSTMCell``),
        ``"gru"`` (``nnx.GRUCell``) or ``"optimized-lstm"`` (``nnx.OptimizedLSTMCell``).
      in_features: the input size ``D``, or the vocabulary when ``embed`` is given.
      hidden_features: every layer's width ``H``.
      out_features: the number of logits ``C``.
      layers: stacked recurrent layers.
      embed: the embedding width; the inputs are then token ids ``[N, T]``.
      many_to_many: logits at every step ``[N, T, C]`` instead of the last ``[N, C]``.
      rngs: ``nnx.Rngs`` for the initialisation.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> m = StackedRNN("gru", 100, 16, 2, layers=2, embed=8, rngs=nnx.Rngs(0))
      >>> m(jnp.zeros((4, 30), jnp.int32)).shape
      (4, 2)
    """

    def __init__(self, cell: str, in_features: int, hidden_features: int, out_features: int,
                 *, layers: int = 1, embed: int | None = None, many_to_many: bool = False,
                 rngs: nnx.Rngs):
        if cell not in CELLS:
            raise ValueError(f"cell: expected one of {tuple(CELLS)}, got {cell!r}")
        for name, v in (("in_features", in_features), ("hidden_features", hidden_features),
                        ("out_features", out_features), ("layers", layers)):
            _positive(name, v)
        if embed is not None:
            _positive("embed", embed)
        self.cell_name, self.hidden_features = cell, hidden_features
        self.many_to_many = bool(many_to_many)
        self.embed = nnx.data(None if embed is None else nnx.Embed(in_features, embed,
                                                                   rngs=rngs))
        width = in_features if embed is None else embed
        self.layers = nnx.List([
            nnx.RNN(CELLS[cell](width if i == 0 else hidden_features, hidden_features,
                                rngs=rngs), rngs=False)
            for i in range(layers)])
        self.head = nnx.Linear(hidden_features, out_features, rngs=rngs)

    def _zero_carry(self, batch: int, dtype) -> Any:
        z = jnp.zeros((batch, self.hidden_features), dtype)
        return (z, z) if self.cell_name in ("lstm", "optimized-lstm") else z

    def __call__(self, inputs: jax.Array) -> jax.Array:
        x = inputs if self.embed is None else self.embed(inputs)
        for rnn in self.layers:
            x = rnn(x, initial_carry=self._zero_carry(x.shape[0], x.dtype))
        return self.head(x if self.many_to_many else x[:, -1])
