r"""Plan the K-FAC blocks of any model from its linear maps, and run it with their taps.

The pipeline reads a model in three steps, each in its own module:

1. [walk][admm_jax.kfac.walk]: the forward jaxpr is walked and every linear map found (a
   dense `dot_general` of a parameter-derived kernel, an embedding `gather`), with its bias,
   its input and the sum its output reaches;
2. here, [make_plan][admm_jax.kfac.trace.make_plan]: the maps are grouped into
   [Block][admm_jax.kfac.trace.Block]s. Kernels used once whose outputs are added and
   nothing else (a gate's input and recurrent maps, \(x_t U + h_{t-1} W + b\)) form one
   block with one input factor over \([x, h, 1]\): its cross-covariance between input and
   state is part of the curvature (without it, training is less stable). Any other kernel is
   a block of its own, all its uses summed. Blocks with the same inputs share `A` (an LSTM's
   four gates), blocks whose outputs reach the same sum share `S`;
3. [taps][admm_jax.kfac.taps]: [tapped_apply][admm_jax.kfac.trace.tapped_apply] runs the
   model with each planned map replaced by a tap (its inputs kept, its output adjoints'
   Gram returned by its backward pass), and [statistics][admm_jax.kfac.trace.statistics]
   forms the factors from them.

A parameter no block can own (a LayerNorm scale, a bias that is not added to a map's output,
a kernel also used elsewhere, a parameter sliced by a `scan` over layers) is a *fallback*
leaf: the pipeline gives it a diagonal step. A model with parameters inside a `while` loop
raises [UnsupportedModelError][admm_jax.kfac.walk.UnsupportedModelError].
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from admm_jax.kfac.taps import Stack, Tap, input_statistic, output_statistic
from admm_jax.kfac.walk import Origin, Site, Walk, leaf_origin
from admm_jax.kfac.walk import UnsupportedModelError as UnsupportedModelError  # re-export


class Use(NamedTuple):
    """One application of a block: the input stack of each of its kernels (in order) and the
    output sum they reach (indices into the plan's ``x_stacks`` and ``sums``)."""

    xs: tuple[int, ...]
    g: int


class Block(NamedTuple):
    """One preconditioned weight: one kernel (all its uses summed), or the kernels of maps
    whose outputs are added (a gate's input and recurrent maps: one joint input factor over
    ``[x, h, 1]``), with their biases.

    name: the kernels' leaf paths joined by ``+``; kind: ``"dense"`` or ``"embed"``;
    kernels: their origins (canonical ``[d_in, d_out]``, see ``transposed``); d_ins: each
    kernel's rows in the block's matrix, then one row per bias; biases: the bias origins
    (``[d_out]`` each); a_slot, s_slot: its factors' indices in
    [Plan][admm_jax.kfac.trace.Plan]; rows: rows over all its uses (``S``'s sample count);
    gates: ``S`` is block-diagonal with this many equal blocks (1: full); uses: where its
    rows are.
    """

    name: str
    kind: str
    kernels: tuple[Origin, ...]
    transposed: tuple[bool, ...]
    d_ins: tuple[int, ...]
    biases: tuple[Origin, ...]
    d_out: int
    a_slot: int
    s_slot: int
    rows: int
    gates: int
    uses: tuple[Use, ...]

    @property
    def d_in(self) -> int:
        """Rows of the kernels (an embedding: its vocabulary), biases not counted."""
        return sum(self.d_ins)


class Plan(NamedTuple):
    """Every linear map of a model and the factors they need (static).

    blocks: the preconditioned weights; a_shapes, s_shapes: each factor slot's shape
    (``(P, P)`` dense input factors, ``(V,)`` embedding counts, ``(Z, Z)`` output factors,
    ``(k, Z/k, Z/k)`` per gate); taps: the instruction for each site path; x_stacks: where
    the rows of each distinct input are kept; sums: for each distinct output sum, the site
    whose tap returns its Gram and the Gram's shape; fallback: the leaves no block covers;
    names: every parameter leaf's path.
    """

    blocks: tuple[Block, ...]
    a_shapes: tuple[tuple[int, ...], ...]
    s_shapes: tuple[tuple[int, ...], ...]
    taps: dict
    x_stacks: tuple[Stack, ...]
    sums: tuple[tuple[tuple, tuple], ...]
    fallback: tuple[int, ...]
    names: tuple[str, ...]

    def signature(self) -> tuple:
        """What the optimizer state depends on (not the sequence length or batch size)."""
        return (tuple((b.name, b.kind, b.d_ins, b.d_out, len(b.biases), b.a_slot, b.s_slot,
                       b.gates) for b in self.blocks), self.a_shapes, self.s_shapes,
                self.fallback)


def _stack(site: Site) -> Stack:
    loops = len(site.loops)
    return Stack(site.path, loops + site.x_axis % len(site.x_shape), loops)


def _joint_groups(walk: Walk, kernels: dict) -> dict:
    """``{kernel group key: output sum}`` for the dense kernels used once whose outputs are
    added (two or more, and nothing else reaching that sum): they form one block."""
    by_sum: dict = {}
    for key, sites in kernels.items():
        by_sum.setdefault(sites[0].s_key, []).append((key, sites))
    joint = {}
    for s_key, members in by_sum.items():
        ok = len(members) > 1 and all(
            len(sites) == 1 and key[0] == "dense" for key, sites in members) and len(
            {(m[1][0].y_shape, m[1][0].y_axis, m[1][0].gates) for m in members}) == 1
        if ok:
            joint.update({key: s_key for key, _ in members})
    return joint


def _bias(walk: Walk, sites, blocked: set) -> Origin | None:
    """The bias the sites' outputs share (one origin, followed cleanly), else ``None``."""
    biases = {walk.bias.get(s.path, walk.group_bias.get(s.s_key)) for s in sites}
    bias = biases.pop() if len(biases) == 1 and not (walk.bad_bias & {s.path for s in sites}) \
        else None
    if bias is None or any(i in blocked for i in bias.leaves):
        return None
    return bias


def make_plan(closed, num_leaves: int, names: tuple[str, ...], gates: bool = True) -> Plan:
    """Walk ``closed`` (the forward jaxpr; its first ``num_leaves`` inputs are the parameter
    leaves) and decide the blocks, which factors they share and where their rows are
    collected; ``gates``: an output split into gates gets one output factor per gate."""
    walk = Walk(num_leaves)
    walk.leaf_names = names
    n_in = len(closed.jaxpr.invars)
    origins = [leaf_origin(i) if i < num_leaves else None for i in range(n_in)]
    walk.run(closed.jaxpr, closed.consts, [None] * n_in, origins, (), ())

    # group the sites by their kernel: all the uses of one kernel go to one block
    kernels: dict = {}
    for s in walk.sites:
        kernels.setdefault((s.kind, s.kernel.key, s.canonical), []).append(s)
    claimed: dict[int, int] = {}
    for sites in kernels.values():
        for i in sites[0].kernel.leaves:
            claimed[i] = claimed.get(i, 0) + 1
    for key, sites in list(kernels.items()):
        leaves = sites[0].kernel.leaves
        if any(claimed[i] > 1 or i in walk.opaque for i in leaves) or \
                len({(s.d_in, s.d_out) for s in sites}) != 1:
            walk.opaque.update(leaves)
            del kernels[key]
    kernel_leaves = {i for sites in kernels.values() for i in sites[0].kernel.leaves}
    joint = _joint_groups(walk, kernels)

    # one block per kernel, or per joint group (made at its first member)
    groups, done = [], set()
    for key in kernels:
        if key in done:
            continue
        members = [k for k in kernels if joint.get(k) == joint[key]] if key in joint else [key]
        done.update(members)
        groups.append([(k, kernels[k]) for k in members])

    x_stacks: dict = {}
    g_stacks: dict = {}
    taps: dict = {}
    a_slots: dict = {}
    s_slots: dict = {}
    blocks: list = []
    covered: set[int] = set()
    for members in groups:
        first = members[0][1][0]
        if len(members) > 1:
            sites = [m[1][0] for m in members]
            found = [_bias(walk, [s], walk.opaque | kernel_leaves | covered) for s in sites]
            biases = tuple(dict.fromkeys(b for b in found if b is not None))
            site_uses = [sites]
        else:
            sites = members[0][1]
            bias = _bias(walk, sites, walk.opaque | kernel_leaves | covered)
            biases = () if bias is None or first.kind == "embed" else (bias,)
            site_uses = [[s] for s in sites]
        uses = []
        for use in site_uses:
            xs = tuple(x_stacks.setdefault(s.x_key, (len(x_stacks), s))[0] for s in use)
            g = g_stacks.setdefault(use[0].s_key, (len(g_stacks), use[0]))[0]
            uses.append(Use(xs, g))
        taps.update(dict.fromkeys(s.path for s in sites))
        a_key = (first.kind, len(biases), len(members) > 1,
                 tuple(u.xs for u in uses) if len(members) > 1
                 else tuple(sorted(u.xs[0] for u in uses)))
        d_ins = tuple(m[1][0].d_in for m in members)
        if a_key not in a_slots:
            p = sum(d_ins) + len(biases)
            a_slots[a_key] = (len(a_slots), (p,) if first.kind == "embed" else (p, p))
        k = first.gates if gates and len({s.gates for s in sites}) == 1 else 1
        s_key = (tuple(sorted(u.g for u in uses)), first.d_out, k)
        if s_key not in s_slots:
            m = first.d_out // k
            s_slots[s_key] = (len(s_slots), (m, m) if k == 1 else (k, m, m))
        for _, ss in members:
            covered.update(ss[0].kernel.leaves)
        for b in biases:
            covered.update(b.leaves)
        rows = sum(u[0].rows * u[0].uses for u in site_uses)
        blocks.append(Block(
            "+".join(names[m[1][0].kernel.leaves[0]] for m in members), first.kind,
            tuple(m[1][0].kernel for m in members),
            tuple(m[1][0].canonical == "T" for m in members), d_ins, biases, first.d_out,
            a_slots[a_key][0], s_slots[s_key][0], rows, k, tuple(uses)))
    # each distinct input and output sum is collected by the first site that has it
    x_owner = {s.path for _, s in x_stacks.values()}
    gates_of = {u.g: b.gates for b in blocks for u in b.uses}
    d_out = {u.g: b.d_out for b in blocks for u in b.uses}
    sums = []
    for j, (_, s) in enumerate(g_stacks.values()):
        k, m = gates_of[j], d_out[j] // gates_of[j]
        sums.append((s.path, (m, m) if k == 1 else (k, m, m)))
    g_owner = {p: gates_of[j] for j, (p, _) in enumerate(sums)}
    taps = {p: Tap(p in x_owner, g_owner.get(p, 1)) for p in taps}
    # a bias whose kernel block was dropped, or any leaf the walk could not follow
    fallback = tuple(i for i in range(num_leaves) if i not in covered)
    return Plan(tuple(blocks), tuple(v[1] for v in a_slots.values()),
                tuple(v[1] for v in s_slots.values()), taps,
                tuple(_stack(s) for _, s in x_stacks.values()), tuple(sums), fallback, names)


def tapped_apply(closed, plan: Plan, args: list, dummies: dict) -> tuple[list, dict]:
    """Evaluate ``closed`` on ``args`` with every planned linear map replaced by its tap;
    ``dummies`` ([zero_dummies][admm_jax.kfac.trace.zero_dummies]) are zeros whose
    cotangents are the Grams of the output adjoints. Returns ``(outputs, {site path: its
    stacked inputs})``."""
    walk = Walk(len(plan.names), plan.taps, dict(dummies))
    walk.leaf_names = plan.names
    n_in = len(closed.jaxpr.invars)
    origins = [leaf_origin(i) if i < len(plan.names) else None for i in range(n_in)]
    outs, _ = walk.run(closed.jaxpr, closed.consts, args, origins, (), ())
    return outs, walk.rows


def zero_dummies(plan: Plan, dtype, one_sided: bool = False) -> dict:
    """``{site path: zeros}`` shaped like the Gram each collecting tap returns (none when
    ``one_sided``: no output factor)."""
    return {} if one_sided else {path: jnp.zeros(shape, dtype) for path, shape in plan.sums}


def statistics(plan: Plan, rows: dict, grams: dict, dtype, one_sided: bool = False):
    """``(A sums, S sums)`` per factor slot in ``dtype``, from the inputs the taps kept and
    the dummies' cotangents (each slot computed by the first block that has it)."""
    xs = [rows[st.path] for st in plan.x_stacks]
    gs = [grams.get(path) for path, _ in plan.sums]
    a = [None] * len(plan.a_shapes)
    s = [None] * len(plan.s_shapes)
    for b in plan.blocks:
        if a[b.a_slot] is None:
            a[b.a_slot] = input_statistic(plan, b, xs, dtype).astype(dtype)
        if not one_sided and s[b.s_slot] is None:
            s[b.s_slot] = output_statistic(b, gs).astype(dtype)
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
