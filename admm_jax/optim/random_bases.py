"""Random-bases descent (RBD): gradient steps inside a random subspace redrawn every step."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from admm_jax import _validation as validation
from admm_jax._dtypes import compute_dtype
from admm_jax.nonfinite import reject_nonfinite
from admm_jax.optim import hadamard
from admm_jax.optim._groups import GroupSpec, leaf_groups
from admm_jax.optim.counter_hash import hash_rows

DISTRIBUTIONS = ("hadamard", "rademacher", "normal", "uniform")
RNGS = ("threefry", "hash")
Sampler = Callable[[jax.Array, jax.Array, int, Any], jax.Array]
_SQRT3 = math.sqrt(3.0)


class RandomBasesState(NamedTuple):
    r"""State of [`scale_by_random_bases`][admm_jax.scale_by_random_bases].

    Attributes:
      count: steps taken (int32 scalar), the ``step`` in the basis keys.
      coordinates: the last step's coordinates \( c = E^\top g \), one ``[dim_k]`` array per
        compartment (what workers exchange in the distributed variant).
    """

    count: jax.Array
    coordinates: tuple[jax.Array, ...]


def _base_key(seed: Any) -> jax.Array:
    if isinstance(seed, int) and not isinstance(seed, bool):
        return jax.random.key(seed)
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if isinstance(seed, jax.Array) and seed.dtype == jnp.uint32 and seed.shape == (2,):
        return jax.random.wrap_key_data(seed)
    if hasattr(seed, "dtype") and jnp.ndim(seed) == 0:
        raise TypeError(f"seed: expected a Python int or a JAX PRNG key, got an array of dtype "
                        f"{seed.dtype} (with optax.inject_hyperparams list it in static_args)")
    raise TypeError(f"seed: expected an int or a JAX PRNG key, got {seed!r}")


def _check_distribution(distribution: Any) -> None:
    if callable(distribution):
        return
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"distribution: expected one of {DISTRIBUTIONS} or a callable "
            f"(key, index, size, dtype) -> [size], got {distribution!r}"
        )


def _sample(distribution: str | Sampler, key: jax.Array, index: jax.Array, size: int,
            dtype: Any) -> jax.Array:
    """One raw threefry basis vector: ``size`` i.i.d. entries with mean 0 and variance 1."""
    if distribution == "normal":
        return jax.random.normal(key, (size,), dtype)
    if distribution == "uniform":  # U(-sqrt 3, sqrt 3): variance 1
        return jax.random.uniform(key, (size,), dtype, -_SQRT3, _SQRT3)
    if distribution == "rademacher":
        return jax.random.rademacher(key, (size,), dtype)
    return jnp.asarray(distribution(key, index, size, dtype), dtype)


def _step_key(base: jax.Array, compartment: int, step: Any, worker: Any) -> jax.Array:
    key = jax.random.fold_in(jax.random.fold_in(base, compartment), step)
    return key if worker is None else jax.random.fold_in(key, worker)


def basis_block(distribution: str | Sampler, step_key: jax.Array, index: jax.Array, size: int,
                dtype: Any, rng: str = "hash") -> jax.Array:
    """Rows ``index`` of a compartment's basis, ``[len(index), size]``, normalised by 1/sqrt(size).

    Row ``j`` depends only on ``(step_key, j)``, never on the block it is generated in (the
    block size changes memory, never the maths): with ``rng="threefry"`` it is drawn from
    ``fold_in(step_key, j)``; with ``rng="hash"`` from the 2-D counter hash
    (`admm_jax.optim.counter_hash`), bit-packed (32 Rademacher signs or 2
    normals/uniforms per word); ``"hadamard"`` rows are ``s * H[r_j]`` (see
    [`scale_by_random_bases`][admm_jax.scale_by_random_bases]).
    """
    if distribution == "hadamard":
        raw = hadamard.basis_rows(step_key, index, size, dtype)
    elif rng == "hash" and isinstance(distribution, str):
        raw = hash_rows(distribution, step_key, index, size, dtype)
    else:
        keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, index)
        raw = jax.vmap(lambda k, j: _sample(distribution, k, j, size, dtype))(keys, index)
    return raw * jnp.asarray(1.0 / math.sqrt(size), dtype)


# --- block-by-block projection ------------------------------------------------------------

def project_and_reconstruct(g: jax.Array, step_key: jax.Array, dim: int, block_size: int,
                            distribution: str | Sampler,
                            rng: str = "hash") -> tuple[jax.Array, jax.Array]:
    """``(E E^T g, E^T g)`` for one flat compartment gradient ``g [D]``, block by block.

    One pass: block ``b`` of ``B`` basis vectors is generated, its coordinates
    ``c_b = E_b^T g`` computed and ``E_b c_b`` accumulated, so the peak extra memory is one
    ``[B, D]`` block, never the ``[dim, D]`` basis. ``"hadamard"``: two fast transforms.
    """
    if distribution == "hadamard":
        c = hadamard.project(g, step_key, dim)
        return hadamard.reconstruct(c, step_key, g.shape[0]), c
    size = g.shape[0]
    block = min(block_size, dim)
    n_blocks = -(-dim // block)
    hi = jax.lax.Precision.HIGHEST

    def body(b, carry):
        u, c = carry
        index = b * block + jnp.arange(block)
        e = basis_block(distribution, step_key, index, size, g.dtype, rng)  # [B, D]
        cb = jnp.where(index < dim, jnp.dot(e, g, precision=hi), 0)
        u = u + jnp.dot(cb, e, precision=hi)
        return u, jax.lax.dynamic_update_slice(c, cb, (b * block,))

    init = (jnp.zeros(size, g.dtype), jnp.zeros(n_blocks * block, g.dtype))
    u, c = jax.lax.fori_loop(0, n_blocks, body, init)
    return u, c[:dim]


def project(g: jax.Array, step_key: jax.Array, dim: int, block_size: int,
            distribution: str | Sampler, rng: str = "hash") -> jax.Array:
    """The coordinates ``E^T g [dim]`` of a flat compartment gradient ``g [D]``, block by block."""
    if distribution == "hadamard":
        return hadamard.project(g, step_key, dim)
    size = g.shape[0]
    block = min(block_size, dim)
    n_blocks = -(-dim // block)
    hi = jax.lax.Precision.HIGHEST

    def block_coordinates(b):
        index = b * block + jnp.arange(block)
        e = basis_block(distribution, step_key, index, size, g.dtype, rng)
        return jnp.dot(e, g, precision=hi)

    return jax.lax.map(block_coordinates, jnp.arange(n_blocks)).reshape(-1)[:dim]


def reconstruct(c: jax.Array, step_key: jax.Array, size: int, block_size: int,
                distribution: str | Sampler, rng: str = "hash") -> jax.Array:
    """``E c [size]``: the step a basis ``E`` (regenerated from ``step_key``) and its
    coordinates ``c [dim]`` give, block by block (what a worker does with another's
    coordinates)."""
    if distribution == "hadamard":
        return hadamard.reconstruct(c, step_key, size)
    dim = c.shape[0]
    block = min(block_size, dim)
    n_blocks = -(-dim // block)
    padded = jnp.zeros(n_blocks * block, c.dtype).at[:dim].set(c)
    hi = jax.lax.Precision.HIGHEST

    def body(b, u):
        index = b * block + jnp.arange(block)
        e = basis_block(distribution, step_key, index, size, c.dtype, rng)
        cb = jax.lax.dynamic_slice(padded, (b * block,), (block,))
        return u + jnp.dot(cb, e, precision=hi)

    return jax.lax.fori_loop(0, n_blocks, body, jnp.zeros_like(c, shape=(size,)))


def _resolve_dims(dim: int | Sequence[int], n: int) -> tuple[int, ...]:
    if isinstance(dim, int) and not isinstance(dim, bool):
        dims = (dim,) * n
    elif isinstance(dim, Sequence) and all(isinstance(d, int) for d in dim):
        dims = tuple(dim)
        if len(dims) != n:
            raise ValueError(
                f"dim: got {len(dims)} dimensions but the parameters have {n} compartments"
            )
    elif hasattr(dim, "dtype") and jnp.ndim(dim) == 0:
        raise TypeError(f"dim: expected a Python int (it sets array shapes), got an array of "
                        f"dtype {dim.dtype} (with optax.inject_hyperparams list it in "
                        "static_args)")
    else:
        raise TypeError(f"dim: expected an int or a sequence of ints, got {dim!r}")
    if any(d <= 0 for d in dims):
        raise ValueError(f"dim: expected positive dimensions, got {dim!r}")
    return dims


def scale_by_random_bases(
    dim: int | Sequence[int],
    *,
    seed: int | jax.Array,
    distribution: str | Sampler = "hadamard",
    compartments: GroupSpec = "model",
    redraw: bool = True,
    block_size: int = 25,
    rng: str = "hash",
    axis_name: str | None = None,
    axis_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Replace the gradient by its projection onto a random ``dim``-dimensional subspace.

    For each compartment \( k \) (a group of leaves, flattened to \( D_k \) entries):

    $$
    E_k = \varepsilon / \sqrt{D_k},\quad \varepsilon_{ij}\ \text{i.i.d., mean 0, var 1},
    \qquad c_k = E_k^\top g_k,\qquad \hat g_k = E_k c_k
    $$

    so \( \mathbb E[E_k E_k^\top] = (d_k/D_k) I \) and every basis vector has norm
    \( \approx 1 \) (the paper's normalisation, ``N(0, 1)/sqrt(D)``). For i.i.d. bases
    \( \cos(\hat g, g) \approx \sqrt{d_k/D_k} \). Basis vector \( j \) depends only on
    ``(seed, k, step, worker, j)`` (``worker`` only when given); it is regenerated in blocks
    of ``block_size`` vectors inside the projection and never stored whole.

    The DEFAULT basis is ``"hadamard"``, a STRUCTURED basis, not the paper's i.i.d.
    Gaussian: the subsampled randomised Hadamard transform,
    \( e_j = s \odot H_{r_j,:D} / \sqrt{D} \), with random signs \( s \) (per step,
    worker and compartment) and rows \( r_j \) drawn uniformly (with replacement) from the
    Sylvester Hadamard matrix of size \( 2^{\lceil \log_2 D \rceil} \). Both projections
    are then fast Walsh-Hadamard transforms, \( O(D \log D) \) work and \( O(D) \)
    memory instead of \( O(dD) \) for an i.i.d. basis, whose generation dominates the step
    on a CPU (measured step costs against SGD: docs/random_bases.md). Entries are
    \( \pm 1/\sqrt D \), zero-mean, \( \mathbb E[E E^\top] = (d/D) I \) and
    \( \mathbb E\|E^\top g\|^2 = (d/D)\|g\|^2 \) as for i.i.d. bases, and the cosine is
    \( \approx\sqrt{d/D} \) (tested); but the vectors of one step are not independent
    (\( e_j \odot e_{j'} \) is a Hadamard row: pairs are uncorrelated on average, nearly
    orthogonal). ``distribution="normal"`` gives the paper's Gaussian basis, ``"rademacher"``
    i.i.d. signs (bit-packed: 32 per hash word).

    Args:
      dim: subspace dimension PER compartment: an int (every compartment gets ``dim``
        directions) or a sequence, one per compartment (to split a total budget).
      seed: an int or a PRNG key; the trajectory is a deterministic function of it.
      distribution: ``"hadamard"`` (default, structured, see above); ``"rademacher"``,
        ``"normal"`` (the paper's) or ``"uniform"`` (on \( \pm\sqrt 3 \)), all i.i.d.,
        zero-mean, unit variance before the \( 1/\sqrt{D_k} \); or a callable
        ``(key, index, size, dtype) -> [size]`` returning raw vector ``index``.
      compartments: ``"model"`` (one basis for all parameters, default), ``"leaf"`` (one per
        leaf), a label pytree (prefix of the parameters) or a function ``params -> labels``.
        Compartments get independent bases, numbered in order of their first leaf.
      redraw: draw a fresh basis every step (RBD). ``False`` keeps the step-0 basis for ever
        (fixed projection descent, FPD; the gradient is still taken at the current weights).
      block_size: basis vectors generated at once; peak extra memory is a few
        ``block_size * D_k`` buffers (ignored by ``"hadamard"``, which needs ``O(D_k)``).
      rng: how the i.i.d. entries are drawn: ``"hash"`` (default: a keyed 2-D counter hash,
        bit-packed: 32 signs or two 16-bit uniforms/normals per 32-bit word) or
        ``"threefry"`` (``jax.random``, one key per vector via ``fold_in``; slower where
        generation dominates, as on a CPU). Ignored by a
        callable ``distribution`` and by ``"hadamard"`` (signs and rows come from the hash).
      axis_name: data-parallel mode, for ``update`` called inside ``jax.shard_map`` (or any
        context binding this mesh axis) with each device's LOCAL gradient. Device ``w``
        (``lax.axis_index``) draws its own basis \( E^{(w)} \) from
        ``fold_in(..., step, w)``, projects its gradient, and only the coordinates travel: one
        all-gather of ``axis_size * dim`` numbers per step (against ``D`` for a gradient
        all-reduce). Every device then regenerates every worker's basis and returns the same
        step \( \tfrac1W \sum_w E^{(w)} c^{(w)} \) (the mean, so the scale matches a
        gradient mean), bit-identical on all devices, at ``W`` times the basis-generation cost.
      axis_size: ``W``, the number of devices along ``axis_name`` (required with it: the state
        stores all workers' coordinates).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      [`RandomBasesState`][admm_jax.RandomBasesState] (with ``axis_name``, ``coordinates`` are
      ``[axis_size, dim_k]``: every worker's, the same on all devices). Its ``update`` accepts the
      extra argument ``worker`` (an int or traced int32): each worker of a data-parallel run draws
      its own basis (with ``axis_name`` the worker is the device index and ``worker`` is not
      accepted).

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_random_bases(2, seed=0)
      >>> g = {"w": jnp.arange(4.0)}
      >>> ghat, state = tx.update(g, tx.init(g))
      >>> ghat["w"].shape, state.coordinates[0].shape
      ((4,), (2,))

    References:
      Gressmann, Eaton-Rosen, Luschi, "Improving Neural Network Training in Low Dimensional Random
      Bases", NeurIPS 2020, arXiv:2011.04720.
    """
    _check_distribution(distribution)
    validation.one_of("rng", rng, RNGS)
    block_size = validation.positive_int("block_size", block_size)
    _base_key(seed)  # validate now
    if isinstance(dim, int):
        _resolve_dims(dim, 1)
    if (axis_name is None) != (axis_size is None):
        raise ValueError(f"axis_name, axis_size: give both or neither (got {axis_name!r}, "
                         f"{axis_size!r})")
    axis_size = validation.positive_int("axis_size", axis_size, allow_none=True)
    workers = () if axis_size is None else (axis_size,)

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        groups = leaf_groups(params, compartments, name="compartments")
        dims = _resolve_dims(dim, len(groups))
        coords = tuple(
            jnp.zeros((*workers, d), compute_dtype(*(leaves[i] for i in g)))
            for d, g in zip(dims, groups, strict=True)
        )
        return RandomBasesState(count=jnp.zeros([], jnp.int32), coordinates=coords)

    def update_fn(updates, state, params=None, **extra_args):
        del params
        worker = extra_args.get("worker")
        leaves, treedef = jax.tree.flatten(updates)
        groups = leaf_groups(updates, compartments, name="compartments")
        if len(groups) != len(state.coordinates):
            raise ValueError(
                f"compartments: the state holds {len(state.coordinates)} compartments but the "
                f"updates give {len(groups)}; init and update must see the same structure"
            )
        base = _base_key(seed)
        step = state.count if redraw else jnp.zeros([], jnp.int32)
        out: list[Any] = [None] * len(leaves)
        flats = [jnp.concatenate([jnp.ravel(leaves[i]).astype(c_old.dtype) for i in group])
                 for group, c_old in zip(groups, state.coordinates, strict=True)]
        if axis_name is None:
            us, coords = [], []
            for k, (flat, c_old) in enumerate(zip(flats, state.coordinates, strict=True)):
                u, c = project_and_reconstruct(flat, _step_key(base, k, step, worker),
                                               c_old.shape[0], block_size, distribution, rng)
                us.append(u)
                coords.append(c)
        else:
            if worker is not None:
                raise ValueError("worker: with axis_name the worker is the device index "
                                 "(lax.axis_index); do not pass worker")
            us, coords = _data_parallel_step(flats, state.coordinates, base, step)
        for group, u in zip(groups, us, strict=True):
            offset = 0
            for i in group:
                n = leaves[i].size
                out[i] = u[offset:offset + n].reshape(leaves[i].shape).astype(leaves[i].dtype)
                offset += n
        new_state = RandomBasesState(count=optax.safe_increment(state.count),
                                     coordinates=tuple(coords))
        return jax.tree.unflatten(treedef, out), new_state

    def _data_parallel_step(flats, coords_old, base, step):
        """Project locally, all-gather the coordinates, rebuild every worker's step."""
        me = jax.lax.axis_index(axis_name)
        local = [project(flat, _step_key(base, k, step, me), c_old.shape[-1], block_size,
                         distribution, rng)
                 for k, (flat, c_old) in enumerate(zip(flats, coords_old, strict=True))]
        # one collective for all compartments: [W, sum_k dim_k]
        gathered = jax.lax.all_gather(jnp.concatenate(local), axis_name, to="invarying")
        if gathered.shape[0] != axis_size:
            raise ValueError(f"axis_size: {axis_size} given, but axis {axis_name!r} has "
                             f"{gathered.shape[0]} devices")
        us, coords, offset = [], [], 0
        for k, (flat, c_old) in enumerate(zip(flats, coords_old, strict=True)):
            c_all = gathered[:, offset:offset + c_old.shape[-1]].astype(c_old.dtype)
            offset += c_old.shape[-1]

            def add_worker(w, u, k=k, c_all=c_all, size=flat.shape[0]):
                return u + reconstruct(c_all[w], _step_key(base, k, step, w), size,
                                       block_size, distribution, rng)

            u = jax.lax.fori_loop(0, axis_size, add_worker,
                                  jnp.zeros_like(c_all, shape=flat.shape))
            us.append(u / axis_size)
            coords.append(c_all)
        return us, coords

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def random_bases(
    learning_rate: optax.ScalarOrSchedule,
    dim: int | Sequence[int],
    *,
    seed: int | jax.Array,
    distribution: str | Sampler = "hadamard",
    compartments: GroupSpec = "model",
    redraw: bool = True,
    block_size: int = 25,
    rng: str = "hash",
    axis_name: str | None = None,
    axis_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Random-bases descent (Gressmann et al. 2020): SGD in a random subspace redrawn each step.

    $$
    c_t = E_t^\top g_t,\qquad w_{t+1} = w_t - \eta_t E_t c_t,\qquad
    E_t = \varepsilon_t / \sqrt{D}
    $$

    with a fresh basis \( E_t \in \mathbb R^{D \times d} \) per step and compartment (see
    [`scale_by_random_bases`][admm_jax.scale_by_random_bases] for the arguments, the key derivation
    and the memory bound). ``redraw=False`` gives fixed projection descent (FPD). To add momentum or
    clipping, chain [`scale_by_random_bases`][admm_jax.scale_by_random_bases] with optax transforms,
    e.g. ``optax.chain(scale_by_random_bases(250, seed=0), optax.trace(0.9), optax.scale(-lr))``.

    Args:
      learning_rate: \( \eta \), a float or an optax schedule (the paper: 1.0 for the
        784-128-10 MNIST MLP at ``dim=250``, batch 32).
      dim: directions per compartment (int) or one per compartment (sequence).
      seed: int or PRNG key.
      distribution: ``"hadamard"`` (default: structured, fastest), ``"rademacher"``
        (bit-packed i.i.d. signs), ``"normal"`` (the paper's), ``"uniform"`` or a callable.
      compartments: ``"model"``, ``"leaf"``, a label pytree or a function.
      redraw: ``True`` for RBD, ``False`` for FPD.
      block_size: basis vectors generated at once (memory ``block_size * D``).
      rng: ``"hash"`` (default, packed counter hash) or ``"threefry"`` (``jax.random``).
      axis_name, axis_size: data-parallel RBD inside ``jax.shard_map``: each device draws its
        own basis and only the coordinates are all-gathered (see
        [`scale_by_random_bases`][admm_jax.scale_by_random_bases]).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; state
      ``(RandomBasesState, optax.ScaleByScheduleState | optax.EmptyState)``. A step with a
      non-finite update or state is not applied ([`admm_jax.reject_nonfinite`][]).

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones(1000)}
      >>> loss = lambda p: 0.5 * jnp.sum(p["w"] ** 2)
      >>> tx = random_bases(1.0, 100, seed=0)
      >>> state = tx.init(params)
      >>> for _ in range(20):
      ...     updates, state = tx.update(jax.grad(loss)(params), state)
      ...     params = optax.apply_updates(params, updates)
      >>> bool(loss(params) < 0.2 * 500.0)  # E|w'|^2 = (1 - 2d/D + d(d+D+1)/D^2)|w|^2 ~ 0.91|w|^2
      True

    References:
      Gressmann, Eaton-Rosen, Luschi, "Improving Neural Network Training in Low Dimensional Random
      Bases", NeurIPS 2020, arXiv:2011.04720.
    """
    return reject_nonfinite(optax.chain(
        scale_by_random_bases(dim, seed=seed, distribution=distribution,
                              compartments=compartments, redraw=redraw, block_size=block_size,
                              rng=rng, axis_name=axis_name, axis_size=axis_size),
        optax.scale_by_learning_rate(learning_rate),
    ))


def random_bases_vector(
    params: Any,
    index: int,
    *,
    seed: int | jax.Array,
    step: int = 0,
    compartment: int = 0,
    worker: int | None = None,
    distribution: str | Sampler = "hadamard",
    compartments: GroupSpec = "model",
    rng: str = "hash",
) -> Any:
    """Basis vector ``index`` of ``compartment`` at ``step``, as a pytree shaped like ``params``.

    The vector the optimizer uses (normalised by ``1/sqrt(D_k)``), zero outside the
    compartment; ``jax.jvp(loss, (params,), (e,))`` gives its coordinate. For inspection and
    tests: the optimizer never materialises it.
    """
    _check_distribution(distribution)
    leaves, treedef = jax.tree.flatten(params)
    groups = leaf_groups(params, compartments, name="compartments")
    if not 0 <= compartment < len(groups):
        raise ValueError(f"compartment: expected 0..{len(groups) - 1}, got {compartment!r}")
    group = groups[compartment]
    cdt = compute_dtype(*(leaves[i] for i in group))
    size = sum(leaves[i].size for i in group)
    key = _step_key(_base_key(seed), compartment, step, worker)
    e = basis_block(distribution, key, jnp.asarray([index]), size, cdt, rng)[0]
    out = [jnp.zeros_like(x) for x in leaves]
    offset = 0
    for i in group:
        n = leaves[i].size
        out[i] = e[offset:offset + n].reshape(leaves[i].shape).astype(leaves[i].dtype)
        offset += n
    return jax.tree.unflatten(treedef, out)
