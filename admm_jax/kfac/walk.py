r"""Find the linear maps of any model in its jaxpr, and run it again with each one replaced by
a tap ([taps][admm_jax.kfac.taps]).

A *linear map* is an equation of the model's forward jaxpr that multiplies a data-dependent
operand by a parameter:

- **dense**: a `dot_general` whose one operand is a parameter (after any transposes, reshapes,
  concatenations or dtype casts of parameter leaves: the package's LSTM stacks its four gate
  kernels) contracting one feature axis of the other operand: `y = x K`, `K [d_in, d_out]`.
  A parameter vector added to `y` along the output axis is its bias.
- **embedding**: a `gather` of rows of a parameter matrix by integer ids: `y = E[ids]`, the
  dense map of one-hot inputs, `E [V, D]`.

The mechanism is the same for every model: the forward pass is traced
(`jax.make_jaxpr`), nested calls are inlined ([inline_calls][admm_jax.kfac.walk.inline_calls]),
and the jaxpr is walked into `scan` bodies. Walking it once records every map as a
[Site][admm_jax.kfac.walk.Site] (with what its input, its output's sum and its bias are), from
which [make_plan][admm_jax.kfac.trace.make_plan] decides the blocks and factors; walking it
again with values re-emits the model with the planned maps tapped.

A parameter used any other way (a LayerNorm scale, a parameter in a `scan` carry or sliced by
one) is marked *opaque*: it gets the fallback step. Parameters inside a `while` loop raise
[UnsupportedModelError][admm_jax.kfac.walk.UnsupportedModelError]: reverse-mode
differentiation cannot run through one either.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from admm_jax.kfac.taps import dense_tap, embed_tap

# element-preserving rearrangements of parameter leaves: a kernel built from them is a
# permutation of its leaves' entries, so a step on the kernel maps back exactly
_STRUCTURAL = frozenset({"transpose", "reshape", "convert_element_type", "concatenate",
                         "copy", "copy_p", "squeeze", "broadcast_in_dim"})
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint"})


class UnsupportedModelError(ValueError):
    """The model cannot be run by the K-FAC pipeline (the message names the part)."""


@dataclasses.dataclass(frozen=True)
class Origin:
    """A value built from parameter leaves by element-preserving rearrangements.

    leaves: the leaf indices it reads, each once; key: a printable description (equal keys,
    equal functions); fn: ``fn(*leaf_values) -> value``.
    """

    leaves: tuple[int, ...]
    key: str
    fn: Callable = dataclasses.field(compare=False, repr=False)


def leaf_origin(i: int) -> Origin:
    return Origin((i,), f"p{i}", lambda v: v)


def _compose(prim, params: dict, children: list[Origin], shapes) -> Origin | None:
    """The origin of ``prim(*children)``, or ``None`` when it is not a rearrangement."""
    leaves = tuple(i for c in children for i in c.leaves)
    if len(set(leaves)) != len(leaves):
        return None
    if prim.name == "broadcast_in_dim" and math.prod(shapes[1]) != math.prod(shapes[0]):
        return None  # a broadcast that repeats entries
    if prim.name != "concatenate" and len(children) != 1:
        return None
    bind = prim.get_bind_params(params)
    sizes = [len(c.leaves) for c in children]
    key = f"{prim.name}{sorted((k, repr(v)) for k, v in params.items())}(" + ",".join(
        c.key for c in children) + ")"

    def fn(*vals):
        parts, k = [], 0
        for c, s in zip(children, sizes, strict=True):
            parts.append(c.fn(*vals[k:k + s]))
            k += s
        return prim.bind(*parts, **bind)

    return Origin(leaves, key, fn)


class Site(NamedTuple):
    """One linear map found in the jaxpr (static).

    path: where it sits (indices of enclosing equations, then its own); kind: ``"dense"`` or
    ``"embed"``; kernel: origin of the kernel operand; canonical: how to read it as
    ``[d_in, d_out]`` (``"T"``: transpose it); d_in, d_out; uses: how many times it runs
    per forward pass (the product of the enclosing scans' lengths); rows: rows of ``x`` per
    use; x_key, s_key: identity of its input and of its output's cotangent (sharing); gates:
    the equal parts its output (with whatever is added to it) is split into (an LSTM's or
    GRU's fused gates), else 1; loops: the enclosing scans' lengths, outermost first; x_shape,
    x_axis, y_shape, y_axis: its input's and output's shapes per use and their feature axes
    (an embedding's input: its ids, axis -1).
    """

    path: tuple
    kind: str
    kernel: Origin
    canonical: str
    d_in: int
    d_out: int
    uses: int
    rows: int
    x_key: tuple
    s_key: tuple
    gates: int = 1
    loops: tuple = ()
    x_shape: tuple = ()
    x_axis: int = -1
    y_shape: tuple = ()
    y_axis: int = -1


# ------------------------------------------------------------------------------ the walk


def _consumers(jaxpr) -> dict:
    count: dict = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if isinstance(v, jcore.Var):
                count[v] = count.get(v, 0) + 1
    for v in jaxpr.outvars:
        if isinstance(v, jcore.Var):
            count[v] = count.get(v, 0) + 2  # returned: its cotangent comes from outside too
    return count


def _first_consumer(jaxpr) -> dict:
    first: dict = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if isinstance(v, jcore.Var):
                first.setdefault(v, eqn)
    return first


def _dense_site(eqn, origins):
    """``(kernel operand index, kernel contracted axis, x contracted axis, output axis)`` of a
    ``dot_general`` that is a linear map, else ``None``."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    o = [origins(v) for v in eqn.invars]
    if lb or rb or len(lc) != 1 or (o[0] is None) == (o[1] is None):
        return None
    k = 0 if o[0] is not None else 1
    kernel, x = eqn.invars[k], eqn.invars[1 - k]
    if kernel.aval.ndim != 2 or x.aval.ndim < 1:
        return None
    kc, xc = (lc[0], rc[0]) if k == 0 else (rc[0], lc[0])
    out_axis = 0 if k == 0 else eqn.outvars[0].aval.ndim - 1
    return k, kc, xc, out_axis


def _embed_site(eqn, origins):
    """The table operand of a ``gather`` that looks rows up by integer ids, else ``None``."""
    table, idx = eqn.invars
    dn = eqn.params["dimension_numbers"]
    if origins(table) is None or origins(idx) is not None or table.aval.ndim != 2:
        return None
    ok = (tuple(dn.collapsed_slice_dims) == (0,) and tuple(dn.start_index_map) == (0,)
          and tuple(dn.offset_dims) == (idx.aval.ndim - 1,)
          and not tuple(getattr(dn, "operand_batching_dims", ()))
          and idx.aval.shape[-1:] == (1,)
          and tuple(eqn.params["slice_sizes"]) == (1, table.aval.shape[1]))
    return ok or None


class _Scope(NamedTuple):
    """What the walk knows of one jaxpr while it goes through its equations."""

    origin: Callable  # var -> its Origin (None: not derived from the parameters)
    orig: dict  # var -> Origin, written as origins are found
    chain: dict  # site output var (through transposes/casts) -> (site path, out axis)
    consumers: dict  # var -> how many equations read it
    first: dict  # var -> the first equation that reads it
    loops: tuple  # the lengths of the scans it runs in, outermost first


class Walk:
    """One walk over a model's jaxpr: to find its sites (``taps=None``), or to run it with
    the taps of a plan (``taps``: the [Tap][admm_jax.kfac.taps.Tap] for each site path)."""

    def __init__(self, num_leaves: int, taps: dict | None = None, dummies=None):
        self.num_leaves = num_leaves
        self.taps = taps
        self.dummies = dummies  # {site path: zeros shaped like its output Gram} when running
        self.rows: dict = {}  # {site path: its input, stacked over the enclosing scans}
        self.sites: list[Site] = []
        self.opaque: set[int] = set()
        self.bias: dict[tuple, Origin] = {}
        self.bad_bias: set[tuple] = set()
        self.group_bias: dict[tuple, Origin] = {}  # a bias added to an embedding's output

    # -- origins
    def _mark_opaque(self, origin: Origin | None) -> None:
        if origin is not None:
            self.opaque.update(origin.leaves)

    def run(self, jaxpr, consts, args, origins, path: tuple, loops: tuple):
        """Walk ``jaxpr``; with values (``args``) when running, else with ``None`` s."""
        env: dict = {}
        orig: dict = {}
        for v, val in zip(jaxpr.constvars, consts, strict=True):
            env[v] = val
        for v, val, o in zip(jaxpr.invars, args, origins, strict=True):
            env[v], orig[v] = val, o

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env.get(v)

        def origin(v):
            return None if isinstance(v, jcore.Literal) else orig.get(v)

        scope = _Scope(origin, orig, {}, _consumers(jaxpr), _first_consumer(jaxpr), loops)
        for i, eqn in enumerate(jaxpr.eqns):
            here = (*path, i)
            outs = self._eqn(eqn, here, [read(v) for v in eqn.invars], scope)
            if outs is not None:
                for v, val in zip(eqn.outvars, outs, strict=True):
                    env[v] = val
        return [read(v) for v in jaxpr.outvars], [origin(v) for v in jaxpr.outvars]

    def _eqn(self, eqn, here, vals, scope: _Scope):
        name = eqn.primitive.name
        origin, orig, chain, consumers = scope.origin, scope.orig, scope.chain, scope.consumers
        ins = [origin(v) for v in eqn.invars]
        running = self.taps is not None

        if name in _STRUCTURAL and ins and all(o is not None for o in ins):
            o = _compose(eqn.primitive, eqn.params, ins,
                         [eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape])
            if o is None:
                for x in ins:
                    self._mark_opaque(x)
            else:
                orig[eqn.outvars[0]] = o
            return self._bind(eqn, vals) if running else None

        if name in ("transpose", "convert_element_type") and eqn.invars[0] in chain \
                and consumers.get(eqn.invars[0]) == 1:
            site, axis = chain[eqn.invars[0]]
            if name == "transpose":
                axis = eqn.params["permutation"].index(axis)
            chain[eqn.outvars[0]] = (site, axis)
            return self._bind(eqn, vals) if running else None

        if name == "add" and any(o is not None for o in ins):
            return self._maybe_bias(eqn, vals, ins, chain, consumers, running)

        if name == "dot_general":
            found = _dense_site(eqn, origin)
            if found is not None:
                return self._dense(eqn, here, vals, ins, found, scope)
        if name == "gather":
            if _embed_site(eqn, origin):
                return self._embed(eqn, here, vals, ins, scope)

        if not any(o is not None for o in ins):  # nothing of the parameters inside
            return self._bind(eqn, vals) if running else None

        if name in _CALLS:
            inner = eqn.params["jaxpr"]
            closed = inner if isinstance(inner, jcore.ClosedJaxpr) else jcore.ClosedJaxpr(
                inner, ())
            outs, out_orig = self.run(closed.jaxpr, closed.consts, vals, ins, here,
                                     scope.loops)
            for v, o in zip(eqn.outvars, out_orig, strict=True):
                orig[v] = o
            return outs if running else None
        if name == "scan":
            return self._scan(eqn, here, vals, ins, scope.loops)
        if name == "while":
            leaves = sorted({i for o in ins if o is not None for i in o.leaves})
            raise UnsupportedModelError(
                f"model: parameters {self._names(leaves)} are used inside a while loop, which "
                "reverse-mode differentiation cannot run through (use lax.scan, or "
                "lax.fori_loop with static bounds)")
        for o in ins:  # any other use: those leaves get the fallback step
            self._mark_opaque(o)
        return self._bind(eqn, vals) if running else None

    def _names(self, leaves):
        names = getattr(self, "leaf_names", None)
        return [names[i] if names else f"#{i}" for i in leaves]

    @staticmethod
    def _bind(eqn, vals):
        out = eqn.primitive.bind(*vals, **eqn.primitive.get_bind_params(eqn.params))
        return out if eqn.primitive.multiple_results else [out]

    # -- linear maps
    def _dense(self, eqn, here, vals, ins, found, scope: _Scope):
        k, kc, xc, out_axis = found
        chain, consumers, first, loops = scope.chain, scope.consumers, scope.first, scope.loops
        x = eqn.invars[1 - k]
        d_in = eqn.invars[k].aval.shape[kc]
        d_out = eqn.invars[k].aval.shape[1 - kc]
        rows = math.prod(x.aval.shape) // d_in
        root = _sum_root(eqn.outvars[0], consumers, first)
        self.sites.append(Site(here, "dense", ins[k], "T" if kc == 1 else "", d_in, d_out,
                               math.prod(loops), rows, (here[:-1], x, xc), (here[:-1], root),
                               _gates(root, out_axis, consumers, first), loops,
                               x.aval.shape, xc, eqn.outvars[0].aval.shape, out_axis))
        if consumers.get(eqn.outvars[0]) == 1:
            chain[eqn.outvars[0]] = (here, out_axis)
        if self.taps is None:
            return None
        tap = self.taps.get(here)
        if tap is None:
            return self._bind(eqn, vals)
        if tap.x:
            self.rows[here] = vals[1 - k]
        return [dense_tap(eqn, k, out_axis, vals, self.dummies.get(here), tap.gates)]

    def _embed(self, eqn, here, vals, ins, scope: _Scope):
        chain, consumers, first, loops = scope.chain, scope.consumers, scope.first, scope.loops
        table, idx = eqn.invars
        v, d = table.aval.shape
        rows = math.prod(idx.aval.shape[:-1])
        y = eqn.outvars[0].aval
        self.sites.append(Site(here, "embed", ins[0], "", v, d, math.prod(loops), rows,
                               (here[:-1], idx, -1),
                               (here[:-1], _sum_root(eqn.outvars[0], consumers, first)), 1,
                               loops, idx.aval.shape, -1, y.shape, y.ndim - 1))
        if consumers.get(eqn.outvars[0]) == 1:
            chain[eqn.outvars[0]] = (here, eqn.outvars[0].aval.ndim - 1)
        if self.taps is None:
            return None
        tap = self.taps.get(here)
        if tap is None:
            return self._bind(eqn, vals)
        if tap.x:
            self.rows[here] = vals[1]
        return [embed_tap(eqn, vals, self.dummies.get(here), tap.gates)]

    def _maybe_bias(self, eqn, vals, ins, chain, consumers, running):
        """``y + b``: ``b`` is the bias of the site ``y`` comes from when ``y`` reaches this
        add alone and ``b`` has one entry per output along the output axis."""
        attached = False
        for j in (0, 1):
            y, b = eqn.invars[j], eqn.invars[1 - j]
            if ins[j] is not None or ins[1 - j] is None or y not in chain:
                continue
            site, axis = chain[y]
            shape = b.aval.shape
            if consumers.get(y) != 1 or len(shape) != eqn.outvars[0].aval.ndim or \
                    math.prod(shape) != shape[axis]:
                continue
            o = ins[1 - j]
            flat = Origin(o.leaves, f"bias({o.key})",
                          lambda *v, f=o.fn: jnp.reshape(f(*v), (-1,)))
            found = next(s for s in self.sites if s.path == site)
            if found.kind == "embed":  # the bias of the whole sum: a dense map of it takes it
                self.group_bias[found.s_key] = flat
                attached = True
                continue
            if self.bias.get(site, flat) != flat:
                self.bad_bias.add(site)
            self.bias[site] = flat
            attached = True
        if not attached:
            for o in ins:
                self._mark_opaque(o)
        return self._bind(eqn, vals) if running else None

    def _scan(self, eqn, here, vals, ins, loops):
        p = eqn.params
        nc = p["num_consts"]
        for o in ins[nc:]:  # a parameter in the carry or sliced per step: not followed
            self._mark_opaque(o)
        body = p["jaxpr"]
        inner_orig = list(ins[:nc]) + [None] * (len(ins) - nc)
        inner_loops = (*loops, p["length"])
        if self.taps is None:
            self.run(body.jaxpr, body.consts, [None] * len(ins), inner_orig, here, inner_loops)
            return None
        # the taps' dummies are loop constants (their cotangents, the Grams, are summed over
        # the steps); the inputs the taps keep go out as per-step outputs
        inside = lambda q: q[:len(here)] == here and len(q) > len(here)  # noqa: E731
        kept = [q for q, t in self.taps.items() if t.x and inside(q)]

        def body_fn(jaxpr, consts, args):
            rows = self.rows
            self.rows = {}
            try:
                outs = self.run(jaxpr, consts, args, inner_orig, here, inner_loops)[0]
                return outs, [self.rows[q] for q in kept]
            finally:
                self.rows = rows

        outs, stacked = _rescan(eqn, vals, body_fn)
        self.rows.update(zip(kept, stacked, strict=True))
        return outs


def _gates(root, axis: int, consumers, first) -> int:
    """How many equal parts ``root`` is split into along ``axis`` (its only use), else 1."""
    eqn = first.get(root)
    if consumers.get(root) != 1 or eqn is None or eqn.primitive.name != "split":
        return 1
    sizes = tuple(eqn.params["sizes"])
    ok = eqn.params["axis"] % root.aval.ndim == axis and len(set(sizes)) == 1
    return len(sizes) if ok else 1


def _sum_root(v, consumers, first):
    """Follow ``v`` through adds while it is their only use: the maps whose outputs reach the
    same root have the same output cotangent (not through a ``sub``: its sign would differ)."""
    while consumers.get(v) == 1 and first.get(v) is not None and \
            first[v].primitive.name == "add":
        v = first[v].outvars[0]
    return v


# ------------------------------------------------------------------------------ inlining


def inline_calls(closed):
    """``closed`` with every nested ``jit`` (and ``remat``) call inlined, in loop bodies too:
    the maps one loop step computes, and the adds between them, then sit in one jaxpr
    whatever helper functions the model's code went through (``jnp.take`` is a ``jit``)."""

    def interpret(jaxpr, consts, args):
        env = dict(zip(jaxpr.constvars, consts, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for eqn in jaxpr.eqns:
            vals = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            if name in _CALLS:
                inner = eqn.params["jaxpr"]
                inner = inner if isinstance(inner, jcore.ClosedJaxpr) else jcore.ClosedJaxpr(
                    inner, ())
                outs = interpret(inner.jaxpr, inner.consts, vals)
            elif name == "scan":
                outs = _rescan(eqn, vals, lambda j, c, a: (interpret(j, c, a), []))[0]
            else:
                outs = Walk._bind(eqn, vals)
            env.update(zip(eqn.outvars, outs, strict=True))
        return [read(v) for v in jaxpr.outvars]

    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
    return jax.make_jaxpr(lambda *a: interpret(closed.jaxpr, closed.consts, a))(*avals)


def _rescan(eqn, vals, body_fn):
    """A ``scan`` equation emitted again with its body run by ``body_fn(jaxpr, consts,
    args) -> (outs, more)``, ``more`` more per-step outputs. Returns ``(the equation's
    outputs, more stacked over the steps)``."""
    p = eqn.params
    nc, ncar = p["num_consts"], p["num_carry"]
    body = p["jaxpr"]
    consts, init, xs = vals[:nc], vals[nc:nc + ncar], vals[nc + ncar:]

    def step(carry, x):
        outs, more = body_fn(body.jaxpr, body.consts, [*consts, *carry, *x])
        return outs[:ncar], (outs[ncar:], more)

    carry, (ys, more) = jax.lax.scan(step, init, xs, length=p["length"],
                                     reverse=p["reverse"], unroll=p["unroll"])
    return [*carry, *ys], more
