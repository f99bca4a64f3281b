"""LSTM sequence model with h-detach, laid out exactly like ``flax.nnx.LSTMCell``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from admm_jax.layouts import stack_lstm_gates
from admm_jax.models.hdetach import check_p_detach, resolve_detach_mask


def _check_inputs(inputs: jax.Array, in_features: int) -> None:
    if inputs.ndim != 3 or not jnp.issubdtype(inputs.dtype, jnp.floating):
        raise ValueError(
            f"inputs: expected floats of shape [N, T, {in_features}], got "
            f"{inputs.dtype}{list(inputs.shape)}")
    if inputs.shape[-1] != in_features:
        raise ValueError(
            f"inputs: expected last dimension {in_features} (in_features), got "
            f"shape {list(inputs.shape)}")


def lstm_scan(
    cell_params: Mapping[str, Mapping[str, jax.Array]],
    inputs: jax.Array,
    *,
    detach_mask: jax.Array | None = None,
    carry: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    r"""Run an ``nnx.LSTMCell``-compatible cell over a sequence with ``lax.scan``, with h-detach.

    .. math::
        \tilde h_{t-1} &= \xi_t\,\mathrm{sg}(h_{t-1}) + (1-\xi_t)\,h_{t-1} \\
        [i, f, g, o]_t &= [\sigma, \sigma, \tanh, \sigma](W_x x_t + W_h \tilde h_{t-1} + b) \\
        c_t &= f_t c_{t-1} + i_t g_t,\qquad h_t = o_t \tanh(c_t)

    ``sg`` is ``stop_gradient``: values are identical for any mask, only the backward pass
    changes. The cell state path ``c_{t-1} -> c_t`` is never blocked, and ``h_t`` itself (the
    output at step ``t``) always receives the gradient of a loss at step ``t``.

    Args:
      cell_params: ``nnx.to_pure_dict(nnx.state(nnx.LSTMCell(...)))`` layout: ``ii, if_, ig,
        io`` with ``kernel [D, H]``; ``hi, hf, hg, ho`` with ``kernel [H, H]`` and ``bias [H]``.
      inputs: ``[N, T, D]`` floats.
      detach_mask: ``bool [T]``; ``True`` at ``t`` blocks the gradient through ``h_{t-1}`` into
        the gates at step ``t``. ``None``: plain LSTM.
      carry: initial ``(c_0, h_0)``, each ``[N, H]``; zeros when ``None``.

    Returns:
      ``((c_T, h_T), hs)`` with ``hs [N, T, H]`` the hidden states.
    """
    gates = stack_lstm_gates(cell_params)  # the gate order of nnx.LSTMCell: i, f, g, o
    wx, wh, b = gates["U"].T, gates["W"].T, gates["b"]
    _check_inputs(inputs, wx.shape[0])
    n, t = inputs.shape[:2]
    hidden = wh.shape[0]
    dtype = jnp.result_type(inputs.dtype, wx.dtype)
    wx, wh, b = wx.astype(dtype), wh.astype(dtype), b.astype(dtype)
    if carry is None:
        carry = (jnp.zeros((n, hidden), dtype), jnp.zeros((n, hidden), dtype))
    if detach_mask is None:
        mask = jnp.zeros((t,), bool)
        masked = False
    else:
        mask = jnp.asarray(detach_mask)
        if mask.shape != (t,) or mask.dtype != jnp.bool_:
            raise ValueError(f"detach_mask: expected a bool array of shape ({t},), got "
                             f"{mask.dtype}{list(mask.shape)}")
        masked = True

    def step(carry, xs):  # both maps of a step in one place, as in a Flax cell
        c, h = carry
        x_t, m_t = xs
        h_in = jnp.where(m_t, jax.lax.stop_gradient(h), h) if masked else h
        i, f, g, o = jnp.split((x_t @ wx + b) + h_in @ wh, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h

    xs = jnp.swapaxes(inputs, 0, 1).astype(dtype)
    carry, hs = jax.lax.scan(step, carry, (xs, mask))
    return carry, jnp.swapaxes(hs, 0, 1)


def lstm_apply(
    params: Mapping[str, Any],
    inputs: jax.Array,
    *,
    detach_mask: jax.Array | None = None,
    many_to_many: bool = False,
) -> jax.Array:
    """Logits of :class:`LSTM` as a pure function of its parameters.

    Args:
      params: ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``, i.e.
        ``{"cell": <nnx.LSTMCell layout>, "readout": {"kernel" [H, C], "bias" [C]}}``.
      inputs: ``[N, T, D]`` floats.
      detach_mask: ``bool [T]`` h-detach mask (see :func:`lstm_scan`), or ``None``.
      many_to_many: logits at every step ``[N, T, C]`` instead of the last ``[N, C]``.

    Returns:
      ``[N, C]`` or ``[N, T, C]`` logits.
    """
    _, hs = lstm_scan(params["cell"], inputs, detach_mask=detach_mask)
    hs = hs if many_to_many else hs[:, -1]
    return hs @ params["readout"]["kernel"].astype(hs.dtype) + params["readout"]["bias"]


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _sum_of_two_uniform(bound: float):
    # PyTorch's LSTM has b_ih + b_hh, each U(-bound, bound); nnx.LSTMCell has one bias (on the
    # recurrent maps), so draw it with the distribution of that sum.
    def init(key, shape, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        return _uniform(bound)(k1, shape, dtype) + _uniform(bound)(k2, shape, dtype)
    return init


class LSTM(nnx.Module):
    r"""LSTM over a sequence with a linear readout, trainable with h-detach.

    The cell is a genuine ``nnx.LSTMCell`` (``model.cell``), so its weights move to and from a
    plain cell with ``nnx.state`` / ``nnx.update``; the sequence is run by :func:`lstm_scan`
    (one ``lax.scan``, the four gate matmuls fused). See :func:`lstm_scan` for the maths.

    h-detach: with probability ``p_detach`` per time step (one draw shared by the minibatch)
    the gradient through ``h_{t-1}`` into the gates at step ``t`` is blocked. The forward pass
    is unchanged, so evaluation needs no key. The mask is drawn at call time from an explicit
    RNG:

    - ``model(x, key=k)``: a JAX key; or ``model(x, rngs=nnx.Rngs(detach=0))``: the ``"detach"``
      stream (``nnx.Rngs`` falls back to ``"default"`` when there is no such stream);
    - ``model(x, detach_mask=m)``: a ``bool [T]`` mask you drew yourself;
    - no key, no rngs, no mask: no detaching (plain LSTM gradients), e.g. at evaluation.

    ``p_detach`` given at call time overrides the constructor's value; pass it as a JAX scalar
    inside a jitted step to anneal it (e.g. to 0 for the last epochs) without recompiling.

    Args:
      in_features: input size ``D``.
      hidden_features: hidden size ``H``.
      out_features: number of logits ``C``.
      rngs: ``nnx.Rngs`` for the initialisation.
      many_to_many: logits at every step ``[N, T, C]`` instead of the last ``[N, C]``.
      p_detach: default blocking probability in ``[0, 1]``; ``0`` is the plain LSTM.
      param_dtype: parameter dtype.

    Initialisation (the authors' PyTorch code): every kernel ``U(-1/sqrt(H), 1/sqrt(H))``, the
    gate bias the sum of two such draws (PyTorch's ``b_ih + b_hh``), readout
    ``U(-1/sqrt(H), 1/sqrt(H))`` (``nn.Linear``).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> model = LSTM(1, 16, 9, rngs=nnx.Rngs(0), many_to_many=True, p_detach=0.5)
      >>> x = jnp.zeros((4, 30, 1))
      >>> model(x, key=jax.random.key(1)).shape
      (4, 30, 9)
      >>> bool(jnp.allclose(model(x, key=jax.random.key(1)), model(x)))  # forward unchanged
      True

    References:
      Arpit et al., "h-detach: Modifying the LSTM Gradient Towards Better Optimization",
      ICLR 2019, arXiv:1810.03023; code github.com/bhargav104/h-detach.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        many_to_many: bool = False,
        p_detach: float = 0.0,
        param_dtype: Any = jnp.float32,
    ):
        for name, v in (("in_features", in_features), ("hidden_features", hidden_features),
                        ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        check_p_detach(p_detach)
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.out_features = out_features
        self.many_to_many = bool(many_to_many)
        self.p_detach = float(p_detach)
        bound = 1.0 / float(hidden_features) ** 0.5
        self.cell = nnx.LSTMCell(
            in_features, hidden_features, kernel_init=_uniform(bound),
            recurrent_kernel_init=_uniform(bound), bias_init=_sum_of_two_uniform(bound),
            param_dtype=param_dtype, rngs=rngs)
        self.readout = nnx.Linear(
            hidden_features, out_features, kernel_init=_uniform(bound),
            bias_init=_uniform(bound), param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self,
        inputs: jax.Array,
        *,
        key: jax.Array | None = None,
        rngs: nnx.Rngs | None = None,
        p_detach: float | jax.Array | None = None,
        detach_mask: jax.Array | None = None,
    ) -> jax.Array:
        _check_inputs(inputs, self.in_features)
        p = self.p_detach if p_detach is None else p_detach
        check_p_detach(p)
        mask = resolve_detach_mask(inputs.shape[1], p_detach=p, key=key, rngs=rngs,
                                   detach_mask=detach_mask)
        params = nnx.to_pure_dict(nnx.state(self, nnx.Param))
        return lstm_apply(params, inputs, detach_mask=mask, many_to_many=self.many_to_many)

    def hidden_states(self, inputs: jax.Array, *,
                      detach_mask: jax.Array | None = None) -> jax.Array:
        """Hidden states ``h_1..h_T`` as ``[N, T, H]`` (no readout)."""
        _check_inputs(inputs, self.in_features)
        cell = nnx.to_pure_dict(nnx.state(self.cell, nnx.Param))
        return lstm_scan(cell, inputs, detach_mask=detach_mask)[1]
