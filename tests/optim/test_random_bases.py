"""Random-bases descent: projection statistics, SGD limit, JVP oracle, determinism, memory."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compiles import counted_jit
from hypothesis import given, settings
from hypothesis import strategies as st

from admm_jax import RandomBasesState, random_bases, random_bases_vector, scale_by_random_bases
from admm_jax.optim.hadamard import sylvester
from admm_jax.optim.random_bases import _step_key, basis_block


def make_params():
    k = jax.random.split(jax.random.key(1), 3)
    return {"W": jax.random.normal(k[0], (8, 5)), "b": jax.random.normal(k[1], (8,)),
            "V": jax.random.normal(k[2], (3, 8))}


@jax.jit
def loss_fn(p):
    x = jnp.linspace(-1.0, 1.0, 5)
    return jnp.sum((p["V"] @ jnp.tanh(p["W"] @ x + p["b"]) - 1.0) ** 2)


grad_fn = jax.jit(jax.grad(loss_fn))


def flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize(("distribution", "rng"), [
    (dist, rng) for dist in ("normal", "uniform", "rademacher") for rng in ("threefry", "hash")
] + [("hadamard", "hash")])
def test_entries_are_zero_mean_unit_variance(distribution, rng):
    n, rows = 200_000, 4
    key = jax.random.key(7)
    e = basis_block(distribution, key, jnp.arange(rows), n, jnp.float32, rng) * math.sqrt(n)
    x = np.asarray(e, np.float64).ravel()
    m = x.size
    # 5 standard errors: mean has sd 1/sqrt(m); the sample variance has sd sqrt((k4 - 1)/m)
    # with the 4th moment k4 <= 3 for all three distributions.
    assert abs(x.mean()) < 5 / math.sqrt(m)
    assert abs(x.var() - 1.0) < 5 * math.sqrt(2.0 / m)
    # distinct basis vectors are uncorrelated: |corr| ~ 1/sqrt(n)
    corr = np.corrcoef(np.asarray(e, np.float64))
    assert np.max(np.abs(corr - np.eye(rows))) < 5 / math.sqrt(n)


def projection_samples(distribution, d, size, n_samples, rng):
    g = {"w": jax.random.normal(jax.random.key(0), (size,))}
    tx = scale_by_random_bases(d, seed=3, distribution=distribution, rng=rng)
    update = jax.jit(tx.update)
    state = tx.init(g)
    cos, ratio = [], []
    for _ in range(n_samples):  # each step draws a fresh basis
        ghat, state = update(g, state)
        gv, hv = np.asarray(g["w"], np.float64), np.asarray(ghat["w"], np.float64)
        cos.append(gv @ hv / (np.linalg.norm(gv) * np.linalg.norm(hv)))
        c = np.asarray(state.coordinates[0], np.float64)
        ratio.append(c @ c / (gv @ gv))
    return np.array(cos), np.array(ratio)


@pytest.mark.parametrize(("distribution", "rng"), [
    ("normal", "threefry"), ("uniform", "threefry"), ("rademacher", "threefry"),
    ("normal", "hash"), ("uniform", "hash"), ("rademacher", "hash"), ("hadamard", "hash")])
def test_cosine_with_true_gradient_is_sqrt_d_over_D(distribution, rng):
    d, size, n = 100, 20_000, 32
    cos, ratio = projection_samples(distribution, d, size, n, rng)
    target = math.sqrt(d / size)
    # Tolerance: 5 standard errors of the mean of n independent draws, plus the known
    # deterministic corrections E cos = sqrt(d/D) (1 - O(1/(4d)) - O(d/(2D))), bounded here by
    # sqrt(d/D) (1/(2d) + d/D) -- 1% of the target, 5 SEM ~ 4%.
    sem = cos.std(ddof=1) / math.sqrt(n)
    assert abs(cos.mean() - target) < 5 * sem + target * (1 / (2 * d) + d / size)
    # |E^T g|^2 / |g|^2 has expectation exactly d / D for every unit-variance distribution:
    # checks the 1/sqrt(D) normalisation, to which the cosine is blind.
    sem_r = ratio.std(ddof=1) / math.sqrt(n)
    assert abs(ratio.mean() - d / size) < 5 * sem_r


def orthonormal_sampler(sizes, seed=0):
    """Row j of a fixed random orthogonal matrix (times sqrt(D): the optimizer divides)."""
    qs = {n: jnp.linalg.qr(jax.random.normal(jax.random.key(seed + n), (n, n)))[0]
          for n in sizes}

    def sample(key, index, size, dtype):
        del key
        return qs[size][index].astype(dtype) * math.sqrt(size)

    return sample


@pytest.mark.parametrize("compartments", ["model", "leaf"])
@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_full_dimension_orthonormal_basis_reproduces_sgd(compartments, block_size):
    params = make_params()
    sizes = [x.size for x in jax.tree.leaves(params)]
    dims = sum(sizes) if compartments == "model" else sizes
    sampler = orthonormal_sampler(set(sizes) | {sum(sizes)})
    tx = random_bases(0.1, dims, seed=0, distribution=sampler, compartments=compartments,
                      block_size=block_size)
    sgd = optax.sgd(0.1)
    p_rbd, p_sgd = params, params
    s_rbd, s_sgd = tx.init(params), sgd.init(params)
    update = jax.jit(tx.update)
    for _ in range(4):
        u, s_rbd = update(grad_fn(p_rbd), s_rbd)
        p_rbd = optax.apply_updates(p_rbd, u)
        u, s_sgd = sgd.update(grad_fn(p_sgd), s_sgd)
        p_sgd = optax.apply_updates(p_sgd, u)
    assert float(jnp.max(jnp.abs(flat(p_sgd) - flat(params)))) > 1e-2
    np.testing.assert_allclose(flat(p_rbd), flat(p_sgd), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("compartments", "worker", "rng", "distribution"), [
    ("model", None, "threefry", "normal"), ("leaf", None, "threefry", "normal"),
    ("model", 3, "threefry", "rademacher"), ("leaf", 3, "hash", "rademacher"),
    ("model", None, "hash", "normal"), ("leaf", 2, "hash", "uniform"),
    ("model", 1, "hash", "hadamard"), ("leaf", None, "hash", "hadamard")])
def test_coordinates_equal_jvp_oracle(compartments, worker, rng, distribution):
    params = make_params()
    tx = scale_by_random_bases(6, seed=11, compartments=compartments, block_size=4, rng=rng,
                               distribution=distribution)
    state = tx.init(params)
    update = jax.jit(tx.update)
    kw = {} if worker is None else {"worker": worker}
    steps = 3
    for _ in range(steps):
        _, state = update(grad_fn(params), state, **kw)
    step = steps - 1  # state.coordinates hold the last step's coordinates
    for k, coords in enumerate(state.coordinates):
        for j in range(3):
            e = random_bases_vector(params, j, seed=11, step=step, compartment=k,
                                    worker=worker, compartments=compartments, rng=rng,
                                    distribution=distribution)
            _, want = jax.jvp(loss_fn, (params,), (e,))
            np.testing.assert_allclose(coords[j], want, rtol=1e-5, atol=1e-6)


def trajectory(seed, steps=5, **kw):
    params = make_params()
    tx = random_bases(0.05, 4, seed=seed, **kw)
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for _ in range(steps):
        u, state = update(grad_fn(params), state)
        params = optax.apply_updates(params, u)
        out.append(flat(params))
    return np.stack(out)


@pytest.mark.parametrize("rng", ["threefry", "hash"])
def test_same_seed_same_trajectory_different_seed_different(rng):
    a, b, c = trajectory(0, rng=rng), trajectory(0, rng=rng), trajectory(1, rng=rng)
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(a - c)) > 1e-3
    k = trajectory(jax.random.key(0), rng=rng)  # a key works like its int seed
    np.testing.assert_array_equal(a, k)


def test_block_size_changes_memory_not_maths():
    np.testing.assert_allclose(trajectory(0, block_size=1), trajectory(0, block_size=3),
                               rtol=1e-5, atol=1e-6)


def test_redraw_false_keeps_one_subspace_redraw_true_does_not():
    g = {"w": jnp.arange(1.0, 101.0)}
    for redraw in (False, True):
        tx = scale_by_random_bases(5, seed=0, redraw=redraw)
        update = jax.jit(tx.update)
        state = tx.init(g)
        _, state = update(g, state)
        c0 = state.coordinates[0]
        for _ in range(3):
            _, state = update(g, state)
        same = bool(jnp.all(state.coordinates[0] == c0))
        assert same is (not redraw)


def test_workers_draw_different_bases():
    g = {"w": jnp.arange(1.0, 101.0)}
    tx = scale_by_random_bases(5, seed=0)
    s = tx.init(g)
    c = [tx.update(g, s, worker=w)[1].coordinates[0] for w in (0, 1, 0)]
    assert not np.allclose(c[0], c[1])
    np.testing.assert_array_equal(c[0], c[2])


def test_chains_with_momentum():
    params = make_params()
    g = grad_fn(params)
    proj = scale_by_random_bases(4, seed=2)
    tx = optax.chain(scale_by_random_bases(4, seed=2), optax.trace(0.9), optax.scale(-0.1))
    s, sp = tx.init(params), proj.init(params)
    m = jax.tree.map(jnp.zeros_like, params)
    tx_update, proj_update = jax.jit(tx.update), jax.jit(proj.update)
    for _ in range(3):
        u, s = tx_update(g, s)
        ghat, sp = proj_update(g, sp)
        m = jax.tree.map(lambda a, b: 0.9 * a + b, m, ghat)
        np.testing.assert_allclose(flat(u), -0.1 * flat(m), rtol=1e-6, atol=1e-7)


def test_per_compartment_dims_and_state():
    params = make_params()
    state = random_bases(1.0, (2, 3, 4), seed=0, compartments="leaf").init(params)[0]
    assert isinstance(state, RandomBasesState)
    assert [c.shape for c in state.coordinates] == [(2,), (3,), (4,)]
    by_fn = random_bases(1.0, 5, seed=0,
                         compartments=lambda p: {"W": "hidden", "b": "hidden", "V": "out"})
    assert [c.shape for c in by_fn.init(params)[0].coordinates] == [(5,), (5,)]


def test_bad_arguments_are_named():
    params = make_params()
    with pytest.raises(ValueError, match="distribution"):
        random_bases(1.0, 4, seed=0, distribution="bernoulli")
    with pytest.raises(ValueError, match="dim"):
        random_bases(1.0, 0, seed=0)
    with pytest.raises(ValueError, match="dim"):
        random_bases(1.0, (2, 3), seed=0, compartments="leaf").init(params)
    with pytest.raises(TypeError, match="seed"):
        random_bases(1.0, 4, seed="zero")
    with pytest.raises(ValueError, match="rng"):
        random_bases(1.0, 4, seed=0, rng="philox")
    with pytest.raises(ValueError, match="block_size"):
        random_bases(1.0, 4, seed=0, block_size=0)


def temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_peak_memory_is_one_block_not_the_whole_basis():
    size, d = 50_000, 200
    g = {"w": jnp.ones(size)}

    def materialised(g):  # the whole [dim, D] basis at once, for comparison
        e = basis_block("normal", jax.random.key(0), jnp.arange(d), size, jnp.float32)
        return (e @ g["w"]) @ e

    whole = temp_bytes(materialised, g)
    assert whole > d * size * 4
    for block in (10, 50):
        tx = scale_by_random_bases(d, seed=0, block_size=block, distribution="rademacher")
        t = temp_bytes(tx.update, g, tx.init(g))
        # Measured ~4 block-sized buffers (the RNG's uint32 bits, the float block and its
        # transform) plus O(D): linear in block_size, independent of dim.
        assert t < 5 * block * size * 4 + 8 * size * 4
        assert t < 2 * block / d * whole
    # the structured (default) basis: two length-2^17 transforms, O(D), independent of dim
    tx = scale_by_random_bases(d, seed=0, distribution="hadamard")
    assert temp_bytes(tx.update, g, tx.init(g)) < 12 * 2 ** 17 * 4


def test_data_parallel_options_are_checked():
    from jax.sharding import PartitionSpec as P

    from admm_jax.distributed import data_mesh

    with pytest.raises(ValueError, match="axis_name, axis_size"):
        scale_by_random_bases(4, seed=0, axis_name="data")
    with pytest.raises(ValueError, match="axis_size"):
        scale_by_random_bases(4, seed=0, axis_name="data", axis_size=0)
    g = {"w": jnp.arange(1.0, 11.0)}
    mesh = data_mesh(jax.devices()[:1])
    for size, kw, match in ((2, {}, "axis_size"), (1, {"worker": 0}, "worker")):
        tx = scale_by_random_bases(4, seed=0, axis_name="data", axis_size=size)
        state = tx.init(g)
        assert state.coordinates[0].shape == (size, 4)
        f = jax.shard_map(lambda g, s, kw=kw, tx=tx: tx.update(g, s, **kw), mesh=mesh,
                          in_specs=(P(), P()), out_specs=(P(), P()))
        with pytest.raises(ValueError, match=match):
            f(g, state)


def test_one_device_data_parallel_equals_plain_worker_zero():
    from jax.sharding import PartitionSpec as P

    from admm_jax.distributed import data_mesh

    g = {"w": jnp.arange(1.0, 101.0), "b": jnp.ones(3)}
    tx = scale_by_random_bases(5, seed=2, compartments="leaf", axis_name="data", axis_size=1)
    plain = scale_by_random_bases(5, seed=2, compartments="leaf")
    f = jax.jit(jax.shard_map(tx.update, mesh=data_mesh(jax.devices()[:1]),
                              in_specs=(P(), P()), out_specs=(P(), P())))
    u, s = f(g, tx.init(g))
    v, sp = plain.update(g, plain.init(g), worker=0)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(s.coordinates, sp.coordinates, strict=True):
        np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("distribution", "rng"), [
    ("rademacher", "hash"), ("normal", "hash"), ("hadamard", "hash"),
    ("rademacher", "threefry"), ("normal", "threefry")])
def test_bases_independent_across_steps_workers_compartments(distribution, rng):
    """Row j of the basis for (compartment, step, worker) is uncorrelated with row j (and
    row j+1) of every other (compartment, step, worker), and rows do not repeat."""
    n = 100_000
    base = jax.random.key(5)
    keys = [_step_key(base, k, s, w) for k in (0, 1) for s in (0, 1, 2) for w in (None, 0, 1)]
    rows = np.concatenate([np.asarray(basis_block(distribution, key, jnp.arange(2), n,
                                                  jnp.float32, rng), np.float64)
                           for key in keys]) * math.sqrt(n)
    corr = np.corrcoef(rows)
    off = np.abs(corr - np.eye(len(rows)))
    # independent +-1 / normal entries: |corr| ~ N(0, 1/n); 5 sd over 630 pairs
    assert off.max() < 5.5 / math.sqrt(n)


def test_hadamard_rows_are_signed_hadamard_rows():
    n, rows = 1000, 6
    e = np.round(np.asarray(basis_block("hadamard", jax.random.key(2), jnp.arange(rows), n,
                                        jnp.float32)) * math.sqrt(n))
    assert set(np.unique(e)) == {-1.0, 1.0}
    # e_j * e_0 = H[r_j] * H[r_0] = H[r_j xor r_0]: the random signs cancel
    prod = e * e[0]
    full = sylvester(10)[:, :n]
    for j in range(rows):
        assert any(np.array_equal(prod[j], full[v]) for v in range(1024))


def test_update_compiles_once():
    params = make_params()
    for dist in ("rademacher", "hadamard"):
        tx = random_bases(0.1, 5, seed=0, distribution=dist)
        update = counted_jit(tx.update)
        state = tx.init(params)
        for _ in range(4):
            _, state = update(grad_fn(params), state)
        assert update.traces == 1, dist


@settings(max_examples=12, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=3), min_size=1,
                       max_size=3),
       dim=st.integers(1, 9), block=st.integers(1, 5),
       dist=st.sampled_from(["rademacher", "normal", "uniform", "hadamard"]),
       compartments=st.sampled_from(["model", "leaf"]))
def test_shapes_and_dtypes_are_kept(shapes, dim, block, dist, compartments):
    dtypes = [jnp.float32, jnp.bfloat16, jnp.float16]
    params = {f"p{i}": jnp.ones(s, dtypes[i % 3]) for i, s in enumerate(shapes)}
    tx = random_bases(0.1, dim, seed=0, distribution=dist, block_size=block,
                      compartments=compartments)
    state = tx.init(params)
    u, state = jax.jit(tx.update)(params, state)
    for k in params:
        assert u[k].shape == params[k].shape and u[k].dtype == params[k].dtype
        assert bool(jnp.all(jnp.isfinite(u[k].astype(jnp.float32))))
    for c in state[0].coordinates:
        assert c.shape == (dim,) and c.dtype == jnp.float32
