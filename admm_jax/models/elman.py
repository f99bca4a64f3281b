"""Elman RNN: the model ADMMiRNN trains, as a Flax nnx module and as a pure function."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from admm_jax import _validation
from admm_jax.layouts import ELMAN_NAMES
from admm_jax.models.hdetach import check_p_detach, resolve_detach_mask

ACTIVATIONS = ("tanh", "relu")


def activation_fn(name: str):
    """Return the elementwise activation ``f`` named ``name`` ("tanh" or "relu")."""
    if name == "tanh":
        return jnp.tanh
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {name!r}")


class ElmanTrace(NamedTuple):
    """Every intermediate of a forward pass.

    a: pre-activations ``[N, T, H]``; h: states ``[N, T, H]``; o: outputs ``[N, |S|, C]``
    (``|S| = 1`` for many-to-one, ``T`` for many-to-many).
    """

    a: jax.Array
    h: jax.Array
    o: jax.Array


def is_token_input(inputs: jax.Array) -> bool:
    """True when ``inputs`` holds integer token ids ``[N, T]`` rather than vectors ``[N, T, d]``."""
    return jnp.issubdtype(inputs.dtype, jnp.integer)


def input_projection(U: jax.Array, inputs: jax.Array) -> jax.Array:
    """``U x_t`` for every sample and step, ``[N, T, H]``.

    Token ids ``[N, T]`` are one-hot vectors, so ``U x_t`` is the column ``U[:, id]`` (a gather,
    never a dense ``vocab``-wide product). An id outside ``[0, vocab)`` raises a
    ``ValueError`` when the ids are concrete; under ``jit`` its projection is NaN (a negative
    id does not wrap around), so the loss is NaN and every optimizer rejects the step.
    """
    if is_token_input(inputs):
        vocab = U.shape[1]
        _validation.token_ids("inputs", inputs, vocab)
        ids = jnp.where(inputs < 0, vocab, inputs)
        return jnp.take(U.T, ids, axis=0, mode="fill", fill_value=jnp.nan)
    return jnp.einsum("...d,hd->...h", inputs, U)


def elman_trace(
    params: Mapping[str, jax.Array],
    inputs: jax.Array,
    *,
    activation: str = "tanh",
    many_to_many: bool = False,
    h0: jax.Array | None = None,
    detach_mask: jax.Array | None = None,
) -> ElmanTrace:
    r"""Run the Elman recurrence and return all pre-activations, states and outputs.

    .. math::
        a_t = U x_t + W h_{t-1} + b,\quad h_t = f(a_t),\quad o_t = V h_t + c,\ t \in S

    One ``lax.scan`` whose step computes ``a_t`` from ``x_t`` and ``h_{t-1}`` (both linear
    maps of a step in one place, as in a Flax cell). With ``detach_mask`` (h-detach),
    ``W h_{t-1}`` uses ``stop_gradient(h_{t-1})`` at the steps where the mask is ``True``:
    values are unchanged, only the backward pass differs.

    Args:
      params: mapping with ``U [H, D]``, ``W [H, H]``, ``b [H]``, ``V [C, H]``, ``c [C]``.
      inputs: ``[N, T, D]`` floats, or ``[N, T]`` integer token ids (one-hot of size ``D``).
      activation: ``"tanh"`` or ``"relu"``.
      many_to_many: outputs at every step (``S = 1..T``) instead of the last (``S = {T}``).
      h0: initial state ``[N, H]``; zeros when ``None``.
      detach_mask: ``bool [T]``; ``True`` at ``t`` blocks the gradient through ``h_{t-1}`` into
        ``a_t`` (see :func:`admm_jax.models.hdetach.sample_detach_mask`). ``None``: plain BPTT.

    Returns:
      An :class:`ElmanTrace` with ``a, h [N, T, H]`` and ``o [N, |S|, C]``.
    """
    f = activation_fn(activation)
    U, W, b, V, c = (params[k] for k in ELMAN_NAMES)
    if is_token_input(inputs):
        if inputs.ndim != 2:
            raise ValueError(f"inputs: expected token ids [N, T], got shape {inputs.shape}")
        _validation.token_ids("inputs", inputs, U.shape[1])
        dtype = U.dtype
    else:
        if inputs.ndim != 3 or inputs.shape[-1] != U.shape[1]:
            raise ValueError(f"inputs: expected [N, T, {U.shape[1]}] floats (or [N, T] token "
                             f"ids), got {inputs.dtype}{tuple(inputs.shape)}")
        dtype = jnp.result_type(inputs.dtype, U.dtype)
    n, t = inputs.shape[:2]
    if h0 is None:  # zeros derived from the inputs: they keep a shard_map axis type
        h0 = (jnp.zeros_like(inputs[:, 0].reshape(n, -1)[:, :1], dtype=dtype)
              * jnp.zeros(W.shape[0], dtype))
    if detach_mask is None:
        detach_mask, masked = jnp.zeros((t,), bool), False
    else:
        detach_mask, masked = jnp.asarray(detach_mask), True
        if detach_mask.shape != (t,) or detach_mask.dtype != jnp.bool_:
            raise ValueError(f"detach_mask: expected a bool array of shape ({t},), got "
                             f"{detach_mask.dtype}{list(detach_mask.shape)}")

    def step(h_prev, xs_t):
        x_t, m_t = xs_t
        h_in = jnp.where(m_t, jax.lax.stop_gradient(h_prev), h_prev) if masked else h_prev
        a_t = (input_projection(U, x_t) + b) + h_in @ W.T
        h_t = f(a_t)
        return h_t, (a_t, h_t)

    _, (a, h) = jax.lax.scan(step, h0, (jnp.swapaxes(inputs, 0, 1), detach_mask))
    a, h = jnp.swapaxes(a, 0, 1), jnp.swapaxes(h, 0, 1)
    hs = h if many_to_many else h[:, -1:]
    o = hs @ V.T + c
    return ElmanTrace(a, h, o)


def elman_apply(
    params: Mapping[str, jax.Array],
    inputs: jax.Array,
    *,
    activation: str = "tanh",
    many_to_many: bool = False,
    detach_mask: jax.Array | None = None,
) -> jax.Array:
    """Logits of a forward pass: ``[N, C]``, or ``[N, T, C]`` when ``many_to_many``.

    ``detach_mask``: optional ``bool [T]`` h-detach mask (see :func:`elman_trace`).
    """
    o = elman_trace(params, inputs, activation=activation, many_to_many=many_to_many,
                    detach_mask=detach_mask).o
    return o if many_to_many else o[:, 0]


class ElmanRNN(nnx.Module):
    r"""Elman (vanilla) RNN with a linear readout; parameters are exactly ADMMiRNN's.

    .. math::
        a_t = U x_t + W h_{t-1} + b,\quad h_t = f(a_t),\quad o_t = V h_t + c

    Args:
      in_features: input size ``D`` (the vocabulary size for token inputs).
      hidden_features: hidden size ``H``.
      out_features: number of outputs ``C``.
      rngs: ``nnx.Rngs`` for the initialisation.
      activation: ``"tanh"`` (default) or ``"relu"``.
      many_to_many: logits at every step ``[N, T, C]`` instead of the last ``[N, C]``.
      dtype: parameter dtype.
      p_detach: h-detach probability in ``[0, 1]`` for gradient training (default 0: plain
        BPTT). As for :class:`admm_jax.LSTM`, the mask is drawn at call time from ``key=`` or
        the ``"detach"`` stream of ``rngs=`` (or given as ``detach_mask=``); without them no
        gradient is blocked. ``p_detach=`` at call time overrides it (a traced scalar anneals
        without recompiling). ADMMiRNN ignores it: it trains ``U, W, b, V, c`` directly.
      token_inputs: initialise ``U`` for one-hot token inputs (see below).

    Initialisation: ``U ~ N(0, 1/D)``, ``W ~ N(0, 1/H)``, ``V ~ N(0, 1/H)``, zero biases. With
    ``W``'s spectral radius near 1 the state keeps information across a whole row-MNIST image;
    PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))`` (radius ~0.58) forgets the top rows (the comparison:
    ``docs/admmirnn.md``, "How the defaults were chosen").
    With ``token_inputs=True`` (the model will read token ids, ``in_features`` = vocabulary
    size) ``U ~ N(0, 1)``: one-hot inputs have unit norm.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> model = ElmanRNN(28, 16, 10, rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((4, 28, 28))).shape
      (4, 10)
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        activation: str = "tanh",
        many_to_many: bool = False,
        dtype: Any = jnp.float32,
        p_detach: float = 0.0,
        token_inputs: bool = False,
    ):
        for name, v in (("in_features", in_features), ("hidden_features", hidden_features),
                        ("out_features", out_features)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        activation_fn(activation)
        check_p_detach(p_detach)
        self.p_detach = float(p_detach)
        self.activation = activation
        self.many_to_many = many_to_many

        def normal(key, shape, fan_in):
            return jax.random.normal(key, shape, dtype) / jnp.sqrt(jnp.asarray(fan_in, dtype))

        self.U = nnx.Param(normal(rngs.params(), (hidden_features, in_features),
                                  1 if token_inputs else in_features))
        self.W = nnx.Param(normal(rngs.params(), (hidden_features, hidden_features),
                                  hidden_features))
        self.b = nnx.Param(jnp.zeros((hidden_features,), dtype))
        self.V = nnx.Param(normal(rngs.params(), (out_features, hidden_features), hidden_features))
        self.c = nnx.Param(jnp.zeros((out_features,), dtype))

    def params_dict(self) -> dict[str, jax.Array]:
        """The parameters as a plain dict ``{"U", "W", "b", "V", "c"}`` of arrays."""
        return {k: getattr(self, k)[...] for k in ELMAN_NAMES}

    def __call__(
        self,
        inputs: jax.Array,
        *,
        key: jax.Array | None = None,
        rngs: nnx.Rngs | None = None,
        p_detach: float | jax.Array | None = None,
        detach_mask: jax.Array | None = None,
    ) -> jax.Array:
        p = self.p_detach if p_detach is None else p_detach
        check_p_detach(p)
        mask = resolve_detach_mask(inputs.shape[1], p_detach=p, key=key, rngs=rngs,
                                   detach_mask=detach_mask)
        return elman_apply(self.params_dict(), inputs, activation=self.activation,
                           many_to_many=self.many_to_many, detach_mask=mask)
