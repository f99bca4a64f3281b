r"""Find the linear maps of any model in its jaxpr, and run it with taps that return their
Kronecker factors from the backward pass.

A *linear map* is an equation of the model's forward jaxpr that multiplies a data-dependent
operand by a parameter:

- **dense**: a `dot_general` whose one operand is a parameter (after any transposes, reshapes,
  concatenations or dtype casts of parameter leaves: the package's LSTM stacks its four gate
  kernels) contracting one feature axis of the other operand: `y = x K`, `K [d_in, d_out]`.
  A parameter vector added to `y` along the output axis is its bias.
- **embedding**: a `gather` of rows of a parameter matrix by integer ids: `y = E[ids]`, the
  dense map of one-hot inputs, `E [V, D]`.

The mechanism is the same for every model: the forward pass is traced
(`jax.make_jaxpr`), the jaxpr is walked (into `jit` calls and `scan` bodies), and each map
found is re-emitted as a `jax.custom_vjp` *tap* whose backward pass, besides the usual
cotangents, returns the statistics

$$
A \mathrel{+}= \sum_{\text{rows}} \bar x \bar x^\top, \qquad
S \mathrel{+}= \sum_{\text{rows}} g g^\top, \qquad \bar x = [x; 1]\ \text{(with a bias)},
\quad g = \partial L / \partial y
$$

as the cotangents of zero *dummy* inputs. A map applied at every step of a `scan` (a
recurrent weight) gets its dummies as loop constants, whose cotangents `scan` sums over the
steps: the statistics of a weight used at every time step are summed over time by
differentiation itself, whatever the cell. Embeddings get `A` as token counts (the diagonal
of the one-hot Gram). Maps whose outputs are added before anything else (the input and
recurrent maps of one gate) share `S`; maps of the same input share `A`.

A parameter the walk cannot attribute to exactly one linear map (a LayerNorm scale, a bias
that is not added to a map's output, a kernel also used elsewhere, a parameter sliced by a
`scan` over layers) is a *fallback* leaf: the pipeline gives it a diagonal step. Parameters
inside a `while` loop raise [UnsupportedModelError][admm_jax.kfac.trace.UnsupportedModelError]:
reverse-mode differentiation cannot run through one either.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

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


def _leaf_origin(i: int) -> Origin:
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
    GRU's fused gates), else 1.
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


class Block(NamedTuple):
    """One preconditioned weight: a kernel (and its bias), all the sites that use it.

    name: the kernel leaf's path; kind: ``"dense"`` or ``"embed"``; kernel: its origin
    (canonical ``[d_in, d_out]``, see ``transposed``); bias: the bias origin (``[d_out]``)
    or ``None``; a_slot, s_slot: its factors' indices in [Plan][admm_jax.kfac.trace.Plan];
    rows: rows over all its sites and uses (``S``'s sample count); gates: ``S`` is
    block-diagonal with this many equal blocks (1: full).
    """

    name: str
    kind: str
    kernel: Origin
    transposed: bool
    bias: Origin | None
    d_in: int
    d_out: int
    a_slot: int
    s_slot: int
    rows: int
    gates: int = 1


class Tap(NamedTuple):
    """What the tagged forward pass does at one site: ``bias`` (augment ``x`` with ones), the
    slots whose statistics this site writes (``None``: another site writes them), and the
    gates its output factor is split into."""

    kind: str
    bias: bool
    a_slot: int | None
    s_slot: int | None
    gates: int = 1


class Plan(NamedTuple):
    """Every linear map of a model and the factors they need (static).

    blocks: the preconditioned weights; a_shapes, s_shapes: each factor slot's shape
    (``(P, P)`` dense input factors, ``(V,)`` embedding counts, ``(Z, Z)`` output factors,
    ``(k, Z/k, Z/k)`` per gate);
    taps: the instruction for each site path; fallback: the leaves no block covers;
    names: every parameter leaf's path.
    """

    blocks: tuple[Block, ...]
    a_shapes: tuple[tuple[int, ...], ...]
    s_shapes: tuple[tuple[int, ...], ...]
    taps: dict
    fallback: tuple[int, ...]
    names: tuple[str, ...]

    def signature(self) -> tuple:
        """What the optimizer state depends on (not the sequence length or batch size)."""
        return (tuple((b.name, b.kind, b.d_in, b.d_out, b.bias is not None, b.a_slot,
                       b.s_slot, b.gates) for b in self.blocks), self.a_shapes,
                self.s_shapes, self.fallback)


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


class _Walk:
    """One walk over a model's jaxpr, to plan (``plan=None``) or to run with taps."""

    def __init__(self, num_leaves: int, plan: Plan | None = None, dummies=None):
        self.num_leaves = num_leaves
        self.plan = plan
        self.dummies = dummies  # (a_dummies, s_dummies) when running
        self.sites: list[Site] = []
        self.opaque: set[int] = set()
        self.bias: dict[tuple, Origin] = {}
        self.bad_bias: set[tuple] = set()
        self.group_bias: dict[tuple, Origin] = {}  # a bias added to an embedding's output

    # -- origins
    def _mark_opaque(self, origin: Origin | None) -> None:
        if origin is not None:
            self.opaque.update(origin.leaves)

    def run(self, jaxpr, consts, args, origins, path: tuple, uses: int):
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

        consumers = _consumers(jaxpr)
        first = _first_consumer(jaxpr)
        chain: dict = {}  # site output var (through transposes/casts) -> (site path, out axis)
        for i, eqn in enumerate(jaxpr.eqns):
            here = (*path, i)
            outs = self._eqn(eqn, here, [read(v) for v in eqn.invars], origin, orig, chain,
                             consumers, first, uses)
            if outs is not None:
                for v, val in zip(eqn.outvars, outs, strict=True):
                    env[v] = val
        return [read(v) for v in jaxpr.outvars], [origin(v) for v in jaxpr.outvars]

    def _eqn(self, eqn, here, vals, origin, orig, chain, consumers, first, uses):
        name = eqn.primitive.name
        ins = [origin(v) for v in eqn.invars]
        running = self.plan is not None

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
                return self._dense(eqn, here, vals, ins, found, chain, consumers, first, uses)
        if name == "gather":
            if _embed_site(eqn, origin):
                return self._embed(eqn, here, vals, ins, chain, consumers, first, uses)

        if not any(o is not None for o in ins):  # nothing of the parameters inside
            return self._bind(eqn, vals) if running else None

        if name in _CALLS:
            inner = eqn.params["jaxpr"]
            closed = inner if isinstance(inner, jcore.ClosedJaxpr) else jcore.ClosedJaxpr(
                inner, ())
            outs, out_orig = self.run(closed.jaxpr, closed.consts, vals, ins, here, uses)
            for v, o in zip(eqn.outvars, out_orig, strict=True):
                orig[v] = o
            return outs if running else None
        if name == "scan":
            return self._scan(eqn, here, vals, ins, uses)
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
    def _dense(self, eqn, here, vals, ins, found, chain, consumers, first, uses):
        k, kc, xc, out_axis = found
        x = eqn.invars[1 - k]
        d_in = eqn.invars[k].aval.shape[kc]
        d_out = eqn.invars[k].aval.shape[1 - kc]
        rows = math.prod(x.aval.shape) // d_in
        root = _sum_root(eqn.outvars[0], consumers, first)
        self.sites.append(Site(here, "dense", ins[k], "T" if kc == 1 else "", d_in, d_out,
                               uses, rows, (here[:-1], x, xc), (here[:-1], root),
                               _gates(root, out_axis, consumers, first)))
        if consumers.get(eqn.outvars[0]) == 1:
            chain[eqn.outvars[0]] = (here, out_axis)
        if self.plan is None:
            return None
        tap = self.plan.taps.get(here)
        if tap is None:
            return self._bind(eqn, vals)
        return [_dense_tap(eqn, k, xc, out_axis, tap, vals, self.dummies)]

    def _embed(self, eqn, here, vals, ins, chain, consumers, first, uses):
        table, idx = eqn.invars
        v, d = table.aval.shape
        rows = math.prod(idx.aval.shape[:-1])
        self.sites.append(Site(here, "embed", ins[0], "", v, d, uses, rows,
                               (here[:-1], idx, -1),
                               (here[:-1], _sum_root(eqn.outvars[0], consumers, first))))
        if consumers.get(eqn.outvars[0]) == 1:
            chain[eqn.outvars[0]] = (here, eqn.outvars[0].aval.ndim - 1)
        if self.plan is None:
            return None
        tap = self.plan.taps.get(here)
        if tap is None:
            return self._bind(eqn, vals)
        return [_embed_tap(eqn, tap, vals, self.dummies)]

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

    def _scan(self, eqn, here, vals, ins, uses):
        p = eqn.params
        nc, ncar = p["num_consts"], p["num_carry"]
        for o in ins[nc:]:  # a parameter in the carry or sliced per step: not followed
            self._mark_opaque(o)
        body = p["jaxpr"]
        inner_orig = list(ins[:nc]) + [None] * (len(ins) - nc)
        inner_uses = uses * p["length"]
        if self.plan is None:
            self.run(body.jaxpr, body.consts, [None] * len(ins), inner_orig, here, inner_uses)
            return None
        consts, init, xs = vals[:nc], vals[nc:nc + ncar], vals[nc + ncar:]

        def step(carry, x):
            outs, _ = self.run(body.jaxpr, body.consts, [*consts, *carry, *x], inner_orig,
                               here, inner_uses)
            return outs[:ncar], outs[ncar:]

        carry, ys = jax.lax.scan(step, init, xs, length=p["length"], reverse=p["reverse"],
                                 unroll=p["unroll"])
        return [*carry, *ys]


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
    same root have the same output cotangent."""
    while consumers.get(v) == 1 and first.get(v) is not None and \
            first[v].primitive.name in ("add", "sub"):
        v = first[v].outvars[0]
    return v


# ------------------------------------------------------------------------------ the taps


def _rows(a, axis: int):
    a = jnp.moveaxis(a, axis, -1)
    return a.reshape(-1, a.shape[-1]).astype(jnp.promote_types(a.dtype, jnp.float32))


def _gram(rows, gates: int):
    """``rows^T rows``, or its ``gates`` diagonal blocks ``[gates, m, m]``."""
    if gates == 1:
        return rows.T @ rows
    r = rows.reshape(rows.shape[0], gates, -1)
    return jnp.einsum("rkm,rkn->kmn", r, r)


def _dense_tap(eqn, k, xc, out_axis, tap: Tap, vals, dummies):
    a_dummy = None if tap.a_slot is None else dummies[0][tap.a_slot]
    s_dummy = None if tap.s_slot is None else dummies[1][tap.s_slot]
    a_type = None if a_dummy is None else a_dummy.dtype
    s_type = None if s_dummy is None else s_dummy.dtype
    bind = eqn.primitive.get_bind_params(eqn.params)

    def dot(x, kernel):
        ops = (kernel, x) if k == 0 else (x, kernel)
        return eqn.primitive.bind(*ops, **bind)

    @jax.custom_vjp
    def tapped(x, kernel, a, s):
        del a, s
        return dot(x, kernel)

    def fwd(x, kernel, a, s):
        del a, s  # zeros: only their cotangents matter
        return dot(x, kernel), (x, kernel)

    def bwd(res, g):
        x, kernel = res
        gx, gk = jax.vjp(dot, x, kernel)[1](g)
        ga = gs = None
        if a_type is not None:
            xr = _rows(x, xc)
            if tap.bias:
                xr = jnp.concatenate([xr, jnp.ones_like(xr[:, :1])], 1)
            ga = (xr.T @ xr).astype(a_type)
        if s_type is not None:
            gs = _gram(_rows(g, out_axis), tap.gates).astype(s_type)
        return gx, gk, ga, gs

    tapped.defvjp(fwd, bwd)
    x, kernel = vals[1 - k], vals[k]
    return tapped(x, kernel, a_dummy, s_dummy)


def _embed_tap(eqn, tap: Tap, vals, dummies):
    a_dummy = None if tap.a_slot is None else dummies[0][tap.a_slot]
    s_dummy = None if tap.s_slot is None else dummies[1][tap.s_slot]
    a_spec = None if a_dummy is None else (a_dummy.shape, a_dummy.dtype)
    s_type = None if s_dummy is None else s_dummy.dtype
    bind = eqn.primitive.get_bind_params(eqn.params)

    def look_up(table, idx):
        return eqn.primitive.bind(table, idx, **bind)

    @jax.custom_vjp
    def tapped(table, idx, a, s):
        del a, s
        return look_up(table, idx)

    def fwd(table, idx, a, s):
        del a, s
        return look_up(table, idx), (table, idx)

    def bwd(res, g):
        table, idx = res
        gt = jax.vjp(lambda t: look_up(t, idx), table)[1](g)[0]
        ga = gs = None
        if a_spec is not None:
            ids = idx.reshape(-1)
            ids = jnp.where(ids < 0, a_spec[0][0], ids)  # out of range: dropped
            ga = jnp.zeros(*a_spec).at[ids].add(1.0, mode="drop")
        if s_type is not None:
            gs = _gram(_rows(g, -1), 1).astype(s_type)
        return gt, np.zeros(idx.shape, jax.dtypes.float0), ga, gs

    tapped.defvjp(fwd, bwd)
    return tapped(vals[0], vals[1], a_dummy, s_dummy)


# ------------------------------------------------------------------------------ planning


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
                outs = _rescan(eqn, vals, interpret)
            else:
                outs = _Walk._bind(eqn, vals)
            env.update(zip(eqn.outvars, outs, strict=True))
        return [read(v) for v in jaxpr.outvars]

    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
    return jax.make_jaxpr(lambda *a: interpret(closed.jaxpr, closed.consts, a))(*avals)


def _rescan(eqn, vals, body_fn):
    """A ``scan`` equation emitted again with its body run by ``body_fn(jaxpr, consts,
    args)``."""
    p = eqn.params
    nc, ncar = p["num_consts"], p["num_carry"]
    body = p["jaxpr"]
    consts, init, xs = vals[:nc], vals[nc:nc + ncar], vals[nc + ncar:]

    def step(carry, x):
        outs = body_fn(body.jaxpr, body.consts, [*consts, *carry, *x])
        return outs[:ncar], outs[ncar:]

    carry, ys = jax.lax.scan(step, init, xs, length=p["length"], reverse=p["reverse"],
                             unroll=p["unroll"])
    return [*carry, *ys]


def make_plan(closed, num_leaves: int, names: tuple[str, ...], gates: bool = True) -> Plan:
    """Walk ``closed`` (the forward jaxpr; its first ``num_leaves`` inputs are the parameter
    leaves) and decide which leaves each block preconditions and which factors it shares;
    ``gates``: an output split into gates gets one output factor per gate."""
    walk = _Walk(num_leaves)
    walk.leaf_names = names
    n_in = len(closed.jaxpr.invars)
    origins = [_leaf_origin(i) if i < num_leaves else None for i in range(n_in)]
    walk.run(closed.jaxpr, closed.consts, [None] * n_in, origins, (), 1)

    # group the sites by their kernel: one block per kernel, all its uses summed
    by_kernel: dict[str, list[Site]] = {}
    for s in walk.sites:
        by_kernel.setdefault((s.kind, s.kernel.key, s.canonical), []).append(s)
    claimed: dict[int, int] = {}
    for sites in by_kernel.values():
        for i in sites[0].kernel.leaves:
            claimed[i] = claimed.get(i, 0) + 1
    blocks, taps = [], {}
    a_keys: dict = {}
    s_keys: dict = {}
    a_shapes: list = []
    s_shapes: list = []
    covered: set[int] = set()
    for sites in by_kernel.values():
        first = sites[0]
        leaves = first.kernel.leaves
        if any(claimed[i] > 1 or i in walk.opaque for i in leaves) or \
                len({(s.d_in, s.d_out) for s in sites}) != 1:
            walk.opaque.update(leaves)
            continue
        biases = {walk.bias.get(s.path, walk.group_bias.get(s.s_key)) for s in sites}
        bias = biases.pop() if len(biases) == 1 and not (walk.bad_bias & {s.path for s in sites}) \
            else None
        if bias is not None and (any(i in walk.opaque or i in covered or i in leaves
                                     for i in bias.leaves) or first.kind == "embed"):
            bias = None
        has_bias = bias is not None
        a_key = (first.kind, has_bias, tuple(sorted((s.x_key for s in sites), key=repr)))
        s_key = tuple(sorted((s.s_key for s in sites), key=repr))
        k = first.gates if gates and len({s.gates for s in sites}) == 1 else 1
        own_a = a_key not in a_keys
        if own_a:
            a_keys[a_key] = len(a_shapes)
            p = first.d_in + has_bias
            a_shapes.append((p,) if first.kind == "embed" else (p, p))
        own_s = (s_key, first.d_out, k) not in s_keys
        if own_s:
            s_keys[(s_key, first.d_out, k)] = len(s_shapes)
            m = first.d_out // k
            s_shapes.append((m, m) if k == 1 else (k, m, m))
        a_slot, s_slot = a_keys[a_key], s_keys[(s_key, first.d_out, k)]
        for s in sites:
            taps[s.path] = Tap(s.kind, has_bias, a_slot if own_a else None,
                               s_slot if own_s else None, k)
        kernel = first.kernel
        covered.update(leaves)
        if bias is not None:
            covered.update(bias.leaves)
        blocks.append(Block(names[leaves[0]], first.kind, kernel, first.canonical == "T",
                            bias, first.d_in, first.d_out, a_slot, s_slot,
                            sum(s.rows * s.uses for s in sites), k))
    # a bias whose kernel block was dropped, or any leaf the walk could not follow
    fallback = tuple(i for i in range(num_leaves) if i not in covered)
    return Plan(tuple(blocks), tuple(a_shapes), tuple(s_shapes), taps, fallback, names)


def tapped_apply(closed, plan: Plan, args: list, dummies) -> list:
    """Evaluate ``closed`` on ``args`` with every planned linear map replaced by its tap;
    ``dummies = (a_dummies, s_dummies)``, zeros of the factor shapes, whose cotangents are
    the statistics."""
    walk = _Walk(len(plan.names), plan, dummies)
    walk.leaf_names = plan.names
    n_in = len(closed.jaxpr.invars)
    origins = [_leaf_origin(i) if i < len(plan.names) else None for i in range(n_in)]
    outs, _ = walk.run(closed.jaxpr, closed.consts, args, origins, (), 1)
    return outs


def leaf_names(params: Any) -> tuple[str, ...]:
    """Every leaf's path in ``params`` as ``a/b/c`` (nnx's ``.value`` left out)."""
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        parts = []
        for p in path:
            name = getattr(p, "key", getattr(p, "name", getattr(p, "idx", None)))
            if name is not None and name != "value":
                parts.append(str(name))
        out.append("/".join(parts))
    return tuple(out)
