r"""Plan the K-FAC blocks of any model from its linear maps, and run it with their taps.

The pipeline reads a model in three steps, each in its own module:

1. [walk][admm_jax.kfac.walk]: the forward jaxpr is walked and every linear map found (a
   dense `dot_general` of a parameter-derived kernel, an embedding `gather`), with its bias,
   its input and the sum its output reaches;
2. here, [make_plan][admm_jax.kfac.trace.make_plan]: the maps are grouped into
   [Block][admm_jax.kfac.trace.Block]s, one per kernel (all its uses summed), and their
   factor slots are shared: maps whose outputs are added before anything else (the input and
   recurrent maps of one gate) share `S`; maps of the same input share `A`;
3. [taps][admm_jax.kfac.taps]: [tapped_apply][admm_jax.kfac.trace.tapped_apply] runs the
   model with each planned map replaced by a tap whose backward pass returns its input and
   output adjoint, stacked over loop steps; [statistics][admm_jax.kfac.trace.statistics] and
   [kernel_gradients][admm_jax.kfac.trace.kernel_gradients] turn those rows into the factors
   and the kernels' gradients, one product each.

A parameter no block can own (a LayerNorm scale, a bias that is not added to a map's output,
a kernel also used elsewhere, a parameter sliced by a `scan` over layers) is a *fallback*
leaf: the pipeline gives it a diagonal step. A model with parameters inside a `while` loop
raises [UnsupportedModelError][admm_jax.kfac.walk.UnsupportedModelError].
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from admm_jax.kfac.taps import Tap, input_statistic, kernel_gradient, output_statistic
from admm_jax.kfac.walk import Origin, Site, Walk, leaf_origin
from admm_jax.kfac.walk import UnsupportedModelError as UnsupportedModelError  # re-export


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


def make_plan(closed, num_leaves: int, names: tuple[str, ...], gates: bool = True) -> Plan:
    """Walk ``closed`` (the forward jaxpr; its first ``num_leaves`` inputs are the parameter
    leaves) and decide which leaves each block preconditions and which factors it shares;
    ``gates``: an output split into gates gets one output factor per gate."""
    walk = Walk(num_leaves)
    walk.leaf_names = names
    n_in = len(closed.jaxpr.invars)
    origins = [leaf_origin(i) if i < num_leaves else None for i in range(n_in)]
    walk.run(closed.jaxpr, closed.consts, [None] * n_in, origins, (), ())

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
        for j, s in enumerate(sites):  # the first site of a slot's owner collects its rows
            lead = len(s.loops)
            taps[s.path] = Tap(s.kind, has_bias, a_slot if own_a and j == 0 else None,
                               s_slot if own_s and j == 0 else None, k,
                               (*s.loops, *s.x_shape), lead + s.x_axis % len(s.x_shape),
                               (*s.loops, *s.y_shape), lead + s.y_axis % len(s.y_shape),
                               len(blocks))
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


def tapped_apply(closed, plan: Plan, args: list, dummies: dict) -> list:
    """Evaluate ``closed`` on ``args`` with every planned linear map replaced by its tap;
    ``dummies`` ([zero_dummies][admm_jax.kfac.trace.zero_dummies]) are zeros whose
    cotangents are the taps' stacked inputs and output adjoints."""
    walk = Walk(len(plan.names), plan.taps, dict(dummies))
    walk.leaf_names = plan.names
    n_in = len(closed.jaxpr.invars)
    origins = [leaf_origin(i) if i < len(plan.names) else None for i in range(n_in)]
    outs, _ = walk.run(closed.jaxpr, closed.consts, args, origins, (), ())
    return outs


def zero_dummies(plan: Plan, dtype, one_sided: bool = False) -> dict:
    """``{site path: (a, s)}``: zeros of each site's stacked input and output shapes (every
    dense site: its kernel's gradient needs both; an embedding: only the statistics it
    collects, ``None`` otherwise)."""
    out = {}
    for path, t in plan.taps.items():
        dense = t.kind == "dense"
        a = jnp.zeros(t.x_shape, dtype) if dense or t.a_slot is not None else None
        s = (jnp.zeros(t.y_shape, dtype) if dense or (t.s_slot is not None and not one_sided)
             else None)
        out[path] = (a, s)
    return out


def kernel_gradients(plan: Plan, stacked: dict, leaves: list) -> dict[int, jax.Array]:
    """The gradient of every dense block's kernel leaves, by leaf index, from the taps' rows
    (their kernels get no cotangent inside the pass)."""
    sums: dict[int, jax.Array] = {}
    for path, t in plan.taps.items():
        if t.kind == "dense":
            g = kernel_gradient(t, *stacked[path])
            sums[t.block] = g if t.block not in sums else sums[t.block] + g
    out = {}
    for j, g in sums.items():
        b = plan.blocks[j]
        idx = b.kernel.leaves
        primal, pull = jax.vjp(b.kernel.fn, *[leaves[i] for i in idx])
        out.update(zip(idx, pull((g.T if b.transposed else g).astype(primal.dtype)),
                       strict=True))
    return out


def statistics(plan: Plan, stacked: dict, one_sided: bool = False) -> tuple[tuple, tuple]:
    """``(A sums, S sums)`` per factor slot from the dummies' cotangents ``stacked``."""
    a = [None] * len(plan.a_shapes)
    s = [None] * len(plan.s_shapes)
    for path, t in plan.taps.items():
        xs, gs = stacked[path]
        if t.a_slot is not None:
            a[t.a_slot] = input_statistic(t, xs, plan.a_shapes[t.a_slot])
        if t.s_slot is not None and not one_sided:
            s[t.s_slot] = output_statistic(t, gs)
    return tuple(a), (() if one_sided else tuple(s))


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
