"""NovoGrad against a straight-from-the-paper float64 reference, and against optax.novograd."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from admm_jax import ElmanRNN, NovoGradState, novograd, scale_by_novograd


def make_params(dtype=jnp.float32):
    k = jax.random.split(jax.random.key(3), 5)
    return {
        "cell": {"Wi": jax.random.normal(k[0], (6, 4), dtype),
                 "Wh": jax.random.normal(k[1], (6, 6), dtype) * 0.5,
                 "b": jax.random.normal(k[2], (6,), dtype) * 0.1},
        "out": {"V": jax.random.normal(k[3], (3, 6), dtype), "c": jnp.zeros((3,), dtype)},
    }


def _loss(p):
    x = jnp.linspace(-1.0, 1.0, 4, dtype=p["out"]["V"].dtype)
    h = jnp.zeros(6, x.dtype)
    for _ in range(3):
        h = jnp.tanh(p["cell"]["Wi"] @ x + p["cell"]["Wh"] @ h + p["cell"]["b"])
    y = p["out"]["V"] @ h + p["out"]["c"]
    return jnp.sum((y - jnp.array([1.0, -1.0, 0.5], x.dtype)) ** 2)


loss_fn = jax.jit(_loss)


def per_cell(p):
    """Layers: the recurrent cell's three leaves form one layer, the readout another."""
    return {"cell": "cell", "out": "out"}


def paper_novograd(params, grad_fn, steps, lr, b1, b2, eps, wd, groups, grad_averaging):
    """Algorithm 1 of Ginsburg et al. in float64 numpy, one layer = one group of leaf paths."""
    w = {path: np.asarray(v, np.float64) for path, v in params.items()}
    m = {path: np.zeros_like(v) for path, v in w.items()}
    v = dict.fromkeys(range(len(groups)), 0.0)
    for t in range(steps):
        g = {path: np.asarray(x, np.float64) for path, x in grad_fn(w).items()}
        for li, layer in enumerate(groups):
            norm2 = sum(float(np.sum(g[path] ** 2)) for path in layer)
            v[li] = norm2 if t == 0 else b2 * v[li] + (1 - b2) * norm2
            for path in layer:
                lam = wd(t) if callable(wd) else wd
                step = g[path] / (np.sqrt(v[li]) + eps) + lam * w[path]
                if grad_averaging:
                    step = (1 - b1) * step
                m[path] = b1 * m[path] + step
        eta = lr(t) if callable(lr) else lr
        w = {path: w[path] - eta * m[path] for path in w}
    return w


def flat_paths(tree):
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def unflat_paths(flat, like):
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(like)]
    return jax.tree.unflatten(jax.tree.structure(like), [jnp.asarray(flat[p]) for p in paths])


def run_ours(tx, params, steps):
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(steps):
        grads = jax.grad(loss_fn)(params)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize(("grouped", "wd", "grad_averaging"), [
    (False, 0.0, False), (False, 0.05, False), (True, 0.0, False), (True, 0.05, False),
    (False, "schedule", True), (True, "schedule", False), (True, 0.05, True)])
def test_matches_paper_reference_float64(grouped, wd, grad_averaging):
    steps, b1, b2, eps = 6, 0.9, 0.7, 1e-8
    # Schedules in float64 arithmetic (optax.linear_schedule computes in float32, whose
    # rounding differs between jit and eager by ~1e-8).
    lr = lambda count: 0.05 - 0.04 * count / steps  # noqa: E731
    wd_arg = (lambda count: 0.1 - 0.1 * count / steps) if wd == "schedule" else wd
    with jax.enable_x64(True):
        params = make_params(jnp.float64)
        paths = list(flat_paths(params))
        groups = ([[p for p in paths if p.startswith("['cell']")],
                   [p for p in paths if p.startswith("['out']")]]
                  if grouped else [[p] for p in paths])

        def grad_fn(w):
            return flat_paths(jax.grad(loss_fn)(unflat_paths(w, params)))

        def at(schedule):  # the step counters are int32, as in the optimizer states
            return lambda t: float(schedule(jnp.asarray(t, jnp.int32)))

        want = paper_novograd(flat_paths(params), grad_fn, steps, at(lr), b1, b2, eps,
                              at(wd_arg) if callable(wd_arg) else wd_arg, groups,
                              grad_averaging)
        tx = novograd(lr, b1, b2, eps, wd_arg, grad_averaging=grad_averaging,
                      layers=per_cell if grouped else "leaf")
        got = flat_paths(run_ours(tx, params, steps))
        moved = max(float(np.max(np.abs(want[p] - np.asarray(params_v))))
                    for p, params_v in flat_paths(params).items())
        assert moved > 1e-3  # the comparison is not vacuous
        for p in paths:
            assert got[p].dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(got[p]), want[p], rtol=1e-12, atol=1e-12)


def test_grouping_changes_the_result():
    """Grouped and per-leaf layers differ, so the grouped reference test can fail."""
    params = make_params()
    a = run_ours(novograd(0.05, layers="leaf"), params, 3)
    b = run_ours(novograd(0.05, layers=per_cell), params, 3)
    diff = max(float(jnp.max(jnp.abs(x - y)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    assert diff > 1e-4


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_equals_optax_novograd_where_they_coincide(wd):
    """Per-leaf layers, no grad averaging, constant weight decay, optax eps_root=0."""
    b1, b2, eps = 0.9, 0.5, 1e-6
    params = make_params()
    ours = run_ours(novograd(0.02, b1, b2, eps, wd), params, 8)
    ref = run_ours(optax.novograd(0.02, b1, b2, eps, 0.0, wd), params, 8)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-6, atol=2e-7)


def test_no_params_needed_without_weight_decay_and_clear_error_with():
    params = make_params()
    grads = jax.grad(loss_fn)(params)
    tx = novograd(0.1)
    updates, _ = tx.update(grads, tx.init(params))  # no params
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    tx = novograd(0.1, weight_decay=1e-3)
    with pytest.raises(ValueError, match="params"):
        tx.update(grads, tx.init(params))


def test_weight_decay_schedule_is_evaluated_per_step():
    params = {"w": jnp.ones(3)}
    zero = {"w": jnp.zeros(3)}
    sched = lambda count: 0.5 * count  # noqa: E731
    tx = scale_by_novograd(b1=0.0, weight_decay=sched)
    state = tx.init(params)
    m0, state = tx.update(zero, state, params)
    m1, state = tx.update(zero, state, params)
    np.testing.assert_allclose(m0["w"], 0.0)  # lambda_0 = 0
    np.testing.assert_allclose(m1["w"], 0.5)  # lambda_1 w = 0.5


@settings(max_examples=4, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3), min_size=1,
                       max_size=4),
       dtype=st.sampled_from([jnp.float32, jnp.bfloat16]))
def test_first_step_is_layer_normalised_gradient(shapes, dtype):
    """At t = 1, m = g / |g| per layer: per leaf, or over the whole model."""
    rng = np.random.default_rng(0)
    grads = [jnp.asarray(rng.normal(size=s) + 0.5, dtype) for s in shapes]
    for layers in ("leaf", "model"):
        tx = scale_by_novograd(eps=0.0, layers=layers)
        m, state = jax.jit(tx.update)(grads, tx.init(grads))
        g32 = [g.astype(jnp.float32) for g in grads]
        total = jnp.sqrt(sum(jnp.sum(g**2) for g in g32))
        for g, out in zip(g32, m, strict=True):
            assert out.dtype == dtype and out.shape == g.shape
            norm = total if layers == "model" else jnp.sqrt(jnp.sum(g**2))
            tol = 1e-6 if dtype == jnp.float32 else 1e-2
            np.testing.assert_allclose(out.astype(jnp.float32), g / norm, rtol=tol, atol=tol)
        assert len(state.nu) == (1 if layers == "model" else len(grads))


def state_bytes(state):
    leaves = jax.tree.leaves(state)
    moments = sum(x.nbytes for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))
    counters = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.integer)]
    return moments, counters


@pytest.mark.parametrize("layers", ["leaf", "model"])
def test_state_is_half_of_adam_plus_one_scalar_per_layer(layers):
    params = ElmanRNN(28, 128, 10, rngs=nnx.Rngs(0)).params_dict()
    n_layers = len(params) if layers == "leaf" else 1
    nov_moments, nov_counters = state_bytes(novograd(1e-2, layers=layers).init(params))
    adam_moments, adam_counters = state_bytes(optax.adam(1e-3).init(params))
    scalar = jnp.dtype(jnp.float32).itemsize
    # Both carry exactly one int32 step counter; the moments are where they differ.
    assert [c.shape for c in nov_counters] == [c.shape for c in adam_counters] == [()]
    assert nov_moments <= 0.5 * adam_moments + n_layers * scalar
    assert nov_moments == 0.5 * adam_moments + n_layers * scalar  # measured, exactly


def test_state_type_and_bad_arguments():
    params = make_params()
    state = novograd(0.1).init(params)
    assert isinstance(state[0], NovoGradState)
    assert len(state[0].nu) == len(jax.tree.leaves(params))
    with pytest.raises(ValueError, match="b2"):
        novograd(0.1, b2=1.5)
    with pytest.raises(ValueError, match="layers"):
        novograd(0.1, layers={"a": 1, "b": 2}).init(params)
