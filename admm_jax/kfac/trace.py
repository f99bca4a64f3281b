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
   model with each planned map replaced by a tap whose backward pass returns its statistics.

A parameter no block can own (a LayerNorm scale, a bias that is not added to a map's output,
a kernel also used elsewhere, a parameter sliced by a `scan` over layers) is a *fallback*
leaf: the pipeline gives it a diagonal step. A model with parameters inside a `while` loop
raises [UnsupportedModelError][admm_jax.kfac.walk.UnsupportedModelError].
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from admm_jax.kfac.taps import Tap
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
    walk = Walk(len(plan.names), plan.taps, dummies)
    walk.leaf_names = plan.names
    n_in = len(closed.jaxpr.invars)
    origins = [leaf_origin(i) if i < len(plan.names) else None for i in range(n_in)]
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
