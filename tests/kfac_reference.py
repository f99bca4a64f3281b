"""Straight-from-the-definition Kronecker factors: Python-loop recurrent models whose every
linear map output gets a zero tap per time step, differentiated with ``jax.grad``.

Each model is written out by hand (the cell equations as in Flax's source), independently of
the jaxpr walk in ``admm_jax.kfac.walk``. For a map ``y_t = x_t K (+ b)`` used at steps
``t``, with ``g_t = d(sum of loss terms)/d y_t`` (a sample's own adjoint):

    A = sum_{n,t} [x; 1][x; 1]^T / N,   S = sum_{n,t} g g^T / (N T),

and for an embedding ``A`` is the token counts over ``N``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import admm_jax

sig, tanh = jax.nn.sigmoid, jnp.tanh


class Recorder:
    """Collects every linear map's inputs and taps, by name, over the Python loop."""

    def __init__(self, taps):
        self.taps, self.inputs, self.counts = taps, {}, {}

    def lin(self, name, x, kernel, bias=None):
        t = self.counts.get(name, 0)
        self.counts[name] = t + 1
        self.inputs.setdefault(name, []).append((x, bias is not None))
        y = x @ kernel + (0.0 if bias is None else bias)
        return y + self.taps[name][t] if self.taps is not None else y

    def embed(self, name, ids, table):
        t = self.counts.get(name, 0)
        self.counts[name] = t + 1
        self.inputs.setdefault(name, []).append((ids, "ids"))
        y = table[ids]
        return y + self.taps[name][t] if self.taps is not None else y


def cell_step(kind, p, rec, prefix, carry, x):
    """One step of a Flax nnx cell, by its equations."""
    lin = rec.lin
    if kind == "simple":
        h = tanh(lin(f"{prefix}/dense_i/kernel", x, p["dense_i"]["kernel"],
                     p["dense_i"]["bias"])
                 + lin(f"{prefix}/dense_h/kernel", carry, p["dense_h"]["kernel"]))
        return h, h
    if kind == "lstm":
        c, h = carry
        gates = []
        for xi, hi in (("ii", "hi"), ("if_", "hf"), ("ig", "hg"), ("io", "ho")):
            gates.append(lin(f"{prefix}/{xi}/kernel", x, p[xi]["kernel"])
                         + lin(f"{prefix}/{hi}/kernel", h, p[hi]["kernel"], p[hi]["bias"]))
        i, f, g, o = sig(gates[0]), sig(gates[1]), tanh(gates[2]), sig(gates[3])
        c = f * c + i * g
        h = o * tanh(c)
        return (c, h), h
    if kind == "olstm":
        c, h = carry
        y = (lin(f"{prefix}/dense_i/kernel", x, p["dense_i"]["kernel"])
             + lin(f"{prefix}/dense_h/kernel", h, p["dense_h"]["kernel"], p["dense_h"]["bias"]))
        i, f, g, o = jnp.split(y, 4, axis=-1)
        c = sig(f) * c + sig(i) * tanh(g)
        h = sig(o) * tanh(c)
        return (c, h), h
    if kind == "gru":
        h = carry
        xr, xz, xn = jnp.split(lin(f"{prefix}/dense_i/kernel", x, p["dense_i"]["kernel"],
                                   p["dense_i"]["bias"]), 3, axis=-1)
        hr, hz, hn = jnp.split(lin(f"{prefix}/dense_h/kernel", h, p["dense_h"]["kernel"]), 3,
                               axis=-1)
        r, z = sig(xr + hr), sig(xz + hz)
        n = tanh(xn + r * hn)
        h = (1.0 - z) * n + z * h
        return h, h
    raise ValueError(kind)


def zero_carry(kind, n, hidden, dtype):
    z = jnp.zeros((n, hidden), dtype)
    return (z, z) if kind in ("lstm", "olstm") else z


class FlaxRNN(nnx.Module):
    """A user's model: ``[Embed ->] nnx.RNN(cell) x layers -> Linear`` on the last step (or
    every step)."""

    def __init__(self, kind, d_in, hidden, out, *, layers=1, vocab=None, many_to_many=False,
                 rngs, dtype=jnp.float32):
        cls = {"simple": nnx.SimpleCell, "lstm": nnx.LSTMCell, "olstm": nnx.OptimizedLSTMCell,
               "gru": nnx.GRUCell}[kind]
        self.kind, self.many_to_many, self.hidden = kind, many_to_many, hidden
        kw = {"rngs": rngs, "param_dtype": dtype, "dtype": dtype}
        self.embed = nnx.data(None if vocab is None else nnx.Embed(vocab, d_in, **kw))
        self.layers = nnx.List([nnx.RNN(cls(d_in if i == 0 else hidden, hidden, **kw))
                                for i in range(layers)])
        self.head = nnx.Linear(hidden, out, **kw)

    def __call__(self, x):
        if self.embed is not None:
            x = self.embed(x)
        for rnn in self.layers:
            x = rnn(x)
        return self.head(x if self.many_to_many else x[:, -1])


def flax_reference(model: FlaxRNN, params, x, rec):
    """The same model as a Python loop over time steps."""
    if model.embed is not None:
        x = jnp.stack([rec.embed("embed/embedding", x[:, t], params["embed"]["embedding"])
                       for t in range(x.shape[1])], 1)
    for i in range(len(model.layers)):
        p = params["layers"][i]["cell"]
        carry = zero_carry(model.kind, x.shape[0], model.hidden, x.dtype)
        hs = []
        for t in range(x.shape[1]):
            carry, h = cell_step(model.kind, p, rec, f"layers/{i}/cell", carry, x[:, t])
            hs.append(h)
        x = jnp.stack(hs, 1)
    head = params["head"]
    if model.many_to_many:
        return jnp.stack([rec.lin("head/kernel", x[:, t], head["kernel"], head["bias"])
                          for t in range(x.shape[1])], 1)
    return rec.lin("head/kernel", x[:, -1], head["kernel"], head["bias"])


def elman_reference(model, params, x, rec):
    """``admm_jax.ElmanRNN`` as a Python loop (``U x_t`` a gather for token ids)."""
    h = jnp.zeros((x.shape[0], params["W"].shape[0]), params["W"].dtype)
    tokens = jnp.issubdtype(x.dtype, jnp.integer)
    for t in range(x.shape[1]):
        if tokens:  # the bias of the sum goes with the dense map (an embedding takes none)
            h = tanh(rec.embed("U", x[:, t], params["U"].T)
                     + rec.lin("W", h, params["W"].T, params["b"]))
        else:
            h = tanh(rec.lin("U", x[:, t], params["U"].T, params["b"])
                     + rec.lin("W", h, params["W"].T))
    return rec.lin("V", h, params["V"].T, params["c"])


def lstm_reference(model, params, x, rec):
    """``admm_jax.LSTM``: its four gates stacked as one map of ``x`` and one of ``h``."""
    cell = params["cell"]
    wx = jnp.concatenate([cell[k]["kernel"] for k in ("ii", "if_", "ig", "io")], 1)
    wh = jnp.concatenate([cell[k]["kernel"] for k in ("hi", "hf", "hg", "ho")], 1)
    b = jnp.concatenate([cell[k]["bias"] for k in ("hi", "hf", "hg", "ho")])
    n, hidden = x.shape[0], wh.shape[0]
    c = h = jnp.zeros((n, hidden), x.dtype)
    for t in range(x.shape[1]):
        z = rec.lin("cell/ii/kernel", x[:, t], wx, b) + rec.lin("cell/hi/kernel", h, wh)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = sig(f) * c + sig(i) * tanh(g)
        h = sig(o) * tanh(c)
    ro = params["readout"]
    return rec.lin("readout/kernel", h, ro["kernel"], ro["bias"])


class Shapes(Recorder):
    """A first pass that keeps a zero shaped like each use's output: the taps."""

    def __init__(self):
        super().__init__(None)
        self.zeros = {}

    def lin(self, name, x, kernel, bias=None):
        y = super().lin(name, x, kernel, bias)
        self.zeros.setdefault(name, []).append(jnp.zeros_like(y))
        return y

    def embed(self, name, ids, table):
        y = super().embed(name, ids, table)
        self.zeros.setdefault(name, []).append(jnp.zeros_like(y))
        return y


# the maps whose outputs are added, by cell: one block, its input the maps' inputs side by side
CELL_SUMS = {"simple": [("dense_i", "dense_h")], "olstm": [("dense_i", "dense_h")], "gru": [],
             "lstm": [("ii", "hi"), ("if_", "hf"), ("ig", "hg"), ("io", "ho")]}


def flax_sums(model: FlaxRNN):
    """The joint blocks of a ``FlaxRNN``: its cell's summed maps in every layer."""
    return [tuple(f"layers/{i}/cell/{m}/kernel" for m in pair)
            for i in range(len(model.layers)) for pair in CELL_SUMS[model.kind]]


def reference_factors(forward, model, x, y, sums=()):
    """``{name: (A, S)}`` of every linear map of ``forward``, by the definition (cross
    entropy summed over samples and steps: each sample's own adjoint). ``sums``: groups of
    maps whose outputs are added, each one block named ``a+b`` whose input at every use is
    the members' inputs side by side, then a ones column per member with a bias."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    shapes = Shapes()
    forward(model, params, x, shapes)

    def total_loss(taps):
        rec = Recorder(taps)
        terms = optax.softmax_cross_entropy_with_integer_labels(forward(model, params, x, rec),
                                                                y)
        return terms.sum(), rec

    g = jax.grad(lambda taps: total_loss(taps)[0])(shapes.zeros)
    n = x.shape[0]
    result = {}
    for name, uses in shapes.inputs.items():
        gcat = jnp.concatenate([gi.reshape(-1, gi.shape[-1]) for gi in g[name]], 0)
        s = gcat.T @ gcat / gcat.shape[0]
        if uses[0][1] == "ids":
            vocab = params["U"].shape[1] if name == "U" else \
                params["embed"]["embedding"].shape[0]
            ids = jnp.concatenate([u[0].reshape(-1) for u in uses])
            a = jnp.zeros(vocab, gcat.dtype).at[ids].add(1.0) / n
        else:
            xs = []
            for xi, has_bias in uses:
                xi = xi.reshape(-1, xi.shape[-1])
                if has_bias:
                    xi = jnp.concatenate([xi, jnp.ones_like(xi[:, :1])], 1)
                xs.append(xi)
            xcat = jnp.concatenate(xs, 0)
            a = xcat.T @ xcat / n
        result[name] = (np.asarray(a), np.asarray(s))
    for group in sums:
        rows = []
        for use in zip(*[shapes.inputs[m] for m in group], strict=True):
            xs = [xi.reshape(-1, xi.shape[-1]) for xi, _ in use]
            xs += [jnp.ones_like(xs[0][:, :1]) for _, has_bias in use if has_bias]
            rows.append(jnp.concatenate(xs, 1))
        xcat = jnp.concatenate(rows, 0)
        result["+".join(group)] = (np.asarray(xcat.T @ xcat / n), result[group[0]][1])
        for m in group:
            del result[m]
    return result


def package_models(dtype):
    """The package's own models, with their reference loops, input kind and summed maps."""
    return {
        "elman": (admm_jax.ElmanRNN(3, 6, 2, rngs=nnx.Rngs(0), dtype=dtype), elman_reference,
                  "float", [("U", "W")]),
        "elman-tokens": (admm_jax.ElmanRNN(7, 6, 2, rngs=nnx.Rngs(0), dtype=dtype),
                         elman_reference, "ids", []),
        "lstm": (admm_jax.LSTM(3, 5, 2, rngs=nnx.Rngs(0), param_dtype=dtype), lstm_reference,
                 "float", [("cell/ii/kernel", "cell/hi/kernel")]),
    }
