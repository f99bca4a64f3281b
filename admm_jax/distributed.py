r"""Sample-parallel training on a ``jax.sharding.Mesh``: placing batches and per-sample state,
and measuring what a compiled step communicates.

ADMMiRNN needs no code of its own to run sharded. Its o, h and a blocks and its multiplier
step are per sample; its weight blocks only need the Gram matrices
\( \Phi^\top\Phi \) and \( \Phi^\top Y \), which are sums over samples. Give ``jit`` the
inputs, targets and per-sample state sharded along the sample axis
([`shard_batch`][admm_jax.shard_batch], [`shard_admm_state`][admm_jax.shard_admm_state]) and the
parameters replicated ([`replicate`][admm_jax.replicate]): XLA's SPMD partitioner keeps every
per-sample array on its shard and turns each Gram sum into an all-reduce. In the compiled iteration
these are fused into ONE all-reduce carrying the four matrices
``[D+H+1]^2, [D+H+1, H], [H+1]^2, [H+1, C]`` (plus one of a dozen scalars for the diagnostics);
[`collective_stats`][admm_jax.collective_stats] counts them. The same ``admmirnn`` transformation
runs unsharded when given ordinary arrays.

Multi-host: start every process with ``jax.distributed.initialize()`` (coordinator address,
process count and id from the arguments or the cluster environment: SLURM, Open MPI, TPU and
GKE are detected), build the mesh over ``jax.devices()`` (all processes' devices), and give each
process its own slice of the samples: [`shard_batch`][admm_jax.shard_batch] then assembles the
global array with ``jax.make_array_from_process_local_data``. Everything else is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_OP = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(_COLLECTIVES) + r")(?:-start)?\(")
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")


def data_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = "data") -> Mesh:
    """A one-axis mesh over ``devices`` (default: all devices of all processes).

    Examples:
      >>> data_mesh(jax.devices()[:1]).axis_names
      ('data',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: expected at least one device, got an empty sequence")
    return Mesh(np.asarray(devices), (axis_name,))


def _sample_sharding(mesh: Mesh, axis_name: str) -> NamedSharding:
    if axis_name not in mesh.axis_names:
        raise ValueError(f"axis_name: {axis_name!r} is not an axis of the mesh "
                         f"(axes {mesh.axis_names})")
    return NamedSharding(mesh, PartitionSpec(axis_name))


def shard_batch(tree: Any, mesh: Mesh, axis_name: str = "data") -> Any:
    """Place every array of ``tree`` sharded along its leading (sample) axis over ``axis_name``.

    Single process: ``tree`` holds the whole batch, whose leading size must be divisible by the
    axis size. Several processes (after ``jax.distributed.initialize``): each process passes its
    OWN samples (its share of the batch, in process order) and gets the global array, built
    with ``jax.make_array_from_process_local_data``.

    Raises:
      ValueError: naming a leaf that has no leading axis or whose size does not divide.
    """
    sharding = _sample_sharding(mesh, axis_name)
    size = mesh.shape[axis_name]
    local = size // jax.process_count() if jax.process_count() > 1 else size

    def place(path, leaf):
        leaf = np.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
        if leaf.ndim == 0 or leaf.shape[0] % local:
            raise ValueError(
                f"tree{jax.tree_util.keystr(path)}: expected a leading sample axis divisible by "
                f"the {local} devices of axis {axis_name!r}, got shape {tuple(leaf.shape)}")
        if jax.process_count() > 1:
            return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))
        return jax.device_put(leaf, sharding)

    return jax.tree_util.tree_map_with_path(place, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of ``tree`` whole on every device of ``mesh`` (parameters, scalars)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_admm_state(state: Any, mesh: Mesh, axis_name: str = "data") -> Any:
    """Place an [`ADMMiRNNState`][admm_jax.ADMMiRNNState]: per-sample auxiliaries, multipliers and
    ``seen`` flags sharded along the samples, penalties, counters and diagnostics replicated.

    Zero-sized per-sample arrays (``num_samples=None``, or ``auxiliaries="reset"``) are
    replicated: there is nothing to split.
    """
    sharded = _sample_sharding(mesh, axis_name)
    rep = NamedSharding(mesh, PartitionSpec())
    size = mesh.shape[axis_name]

    def per_sample(tree):
        def place(leaf):
            if leaf.shape[0] == 0:
                return jax.device_put(leaf, rep)
            if leaf.shape[0] % size:
                raise ValueError(f"state: num_samples={leaf.shape[0]} is not divisible by the "
                                 f"{size} devices of axis {axis_name!r}")
            return jax.device_put(leaf, sharded)
        return jax.tree.map(place, tree)

    return state._replace(aux=per_sample(state.aux), duals=per_sample(state.duals),
                          seen=per_sample(state.seen), rho=replicate(state.rho, mesh),
                          count=replicate(state.count, mesh),
                          diagnostics=replicate(state.diagnostics, mesh))


class Collective(NamedTuple):
    """One collective of a compiled program: its kind and per-device result shapes/bytes."""

    kind: str
    shapes: tuple[str, ...]
    nbytes: int


def collectives(compiled: Any) -> list[Collective]:
    """The collectives in a compiled (or lowered-and-compiled) computation, in program order.

    ``compiled`` is ``jax.jit(f).lower(...).compile()`` or its ``as_text()``. ``nbytes`` is the
    size of the op's result on one device (for an all-reduce: the reduced buffers; for an
    all-gather: the gathered array); ops inside loops are counted once.
    """
    text = compiled if isinstance(compiled, str) else compiled.as_text()
    out = []
    for line in text.splitlines():
        m = _OP.search(line)
        if m is None or "-done" in line.split("=", 1)[1].split("(", 1)[0]:
            continue
        shapes = tuple(f"{dt}[{dims}]" for dt, dims in _SHAPE.findall(m.group(1)))
        nbytes = sum(_DTYPE_BYTES[dt] * int(np.prod([int(d) for d in dims.split(",") if d],
                                                    dtype=np.int64))
                     for dt, dims in _SHAPE.findall(m.group(1)))
        out.append(Collective(m.group(2), shapes, int(nbytes)))
    return out


def collective_stats(compiled: Any) -> dict[str, dict[str, int]]:
    """``{kind: {"count": ops, "bytes": result bytes per device}}`` over `collectives`.

    Examples:
      >>> import jax.numpy as jnp
      >>> f = jax.jit(lambda x: x * 2).lower(jnp.ones(3)).compile()
      >>> collective_stats(f)
      {}
    """
    stats: dict[str, dict[str, int]] = {}
    for c in collectives(compiled):
        s = stats.setdefault(c.kind, {"count": 0, "bytes": 0})
        s["count"] += 1
        s["bytes"] += c.nbytes
    return stats
