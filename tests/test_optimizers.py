"""The optimizer registry: names, errors, defaults, gradient-free detection."""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from admm_jax import ElmanRNN, optimizers


def test_names_cover_the_issue_list():
    assert set(optimizers.names()) == {"admmirnn", "admm_preconditioned", "admm_kfac", "sgd",
                                       "momentum", "adam", "rmsprop", "adagrad", "novograd",
                                       "random_bases"}


@pytest.mark.parametrize("bad", ["lbfgs", "", "adamw2"])
def test_unknown_name_lists_the_valid_ones(bad):
    with pytest.raises(ValueError) as e:
        optimizers.get(bad)
    for name in optimizers.names():
        assert name in str(e.value)
    assert repr(bad) in str(e.value)


def test_names_are_case_and_dash_insensitive():
    assert optimizers.entry("Random-Bases") is optimizers.entry("random_bases")


def test_optax_entries_are_optax_itself():
    params = {"w": jnp.arange(3.0)}
    g = {"w": jnp.array([0.3, -1.0, 2.0])}
    for name, ref in [("sgd", optax.sgd(0.1)), ("adam", optax.adam(0.01)),
                      ("rmsprop", optax.rmsprop(0.01)), ("adagrad", optax.adagrad(0.05)),
                      ("momentum", optax.sgd(0.05, momentum=0.9))]:
        lr = {"sgd": 0.1, "adam": 0.01, "rmsprop": 0.01, "adagrad": 0.05, "momentum": 0.05}[name]
        tx = optimizers.get(name, learning_rate=lr)
        s, s_ref = tx.init(params), ref.init(params)
        for _ in range(3):
            u, s = tx.update(g, s, params)
            u_ref, s_ref = ref.update(g, s_ref, params)
            assert jnp.allclose(u["w"], u_ref["w"]), name


def test_default_learning_rate_is_used():
    params = {"w": jnp.zeros(2)}
    g = {"w": jnp.ones(2)}
    tx = optimizers.get("sgd")
    u, _ = tx.update(g, tx.init(params), params)
    assert jnp.allclose(u["w"], -optimizers.default_learning_rate("sgd"))


def test_admmirnn_takes_no_learning_rate():
    with pytest.raises(TypeError, match="learning_rate"):
        optimizers.get("admmirnn", learning_rate=0.1)


def test_needs_gradients_reads_the_first_receiver_also_inside_chain():
    """A loop may skip differentiation only when what first receives the gradients takes the
    batch or computes them itself; after a clip in a chain it must pass them."""
    model = ElmanRNN(2, 4, 3, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    x = jnp.zeros((4, 5, 2))
    admm = optimizers.get("admmirnn")
    assert not optimizers.needs_gradients(admm.init(params))
    first = optax.chain(optimizers.get("admmirnn"), optax.scale(0.5)).init(params)
    assert not optimizers.needs_gradients(first)
    assert optimizers.admm_state(first) is not None
    kfac = optimizers.get("admm_kfac", model=model, inputs=x)
    assert not optimizers.needs_gradients(kfac.init(params))
    injected = optax.inject_hyperparams(optimizers.entry("admm_kfac").factory,
                                        static_args="model")(model, x,
                                                             learning_rate=0.1).init(params)
    assert not optimizers.needs_gradients(injected)
    clipped = optax.chain(optax.clip_by_global_norm(1.0), kfac).init(params)
    assert optimizers.needs_gradients(clipped) and optimizers.takes_batch_somewhere(clipped)
    assert optimizers.needs_gradients(optimizers.get("adam").init(params))
    assert not optimizers.takes_batch_somewhere(optimizers.get("adam").init(params))
    assert optimizers.admm_state(optimizers.get("adam").init(params)) is None


@pytest.mark.parametrize("name", ["novograd", "random_bases"])
def test_lazy_entries_build_and_step(name):
    params = {"w": jnp.ones(5)}
    # random bases: E E^T ~ (dim / D) I, so dim must be well below the 5 parameters
    kw = {"dim": 2, "learning_rate": 0.2} if name == "random_bases" else {}
    tx = optimizers.get(name, **kw)
    loss = lambda p: jnp.sum(p["w"] ** 2)  # noqa: E731
    s = tx.init(params)
    before = loss(params)
    for _ in range(20):
        u, s = tx.update(jax.grad(loss)(params), s, params)
        params = optax.apply_updates(params, u)
    assert loss(params) < before


def test_methods_built_for_the_model_need_it_and_start_with_a_warmup():
    import numpy as np

    model = ElmanRNN(3, 4, 2, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    x = np.random.default_rng(0).normal(size=(8, 5, 3)).astype(np.float32)
    y = np.arange(8) % 2
    with pytest.raises(TypeError, match="model, inputs: admm_kfac is built for the model"):
        optimizers.get("admm_kfac")
    assert optimizers.entry("admm_kfac").takes_model
    tx = optimizers.get("admm_kfac", model=model, inputs=x)
    u, _ = tx.update(None, tx.init(params), params, inputs=x, targets=y)
    # the default rate starts at 0 (a linear warmup): the first step does not move
    assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree_util.tree_leaves(u))
    warm = optimizers.warmup(0.3, None)
    assert float(warm(0)) == 0.0 and float(warm(200)) == pytest.approx(0.3)
    sched = optimizers.warmup(0.5, 1000)
    assert float(sched(100)) == pytest.approx(0.5) and float(sched(1000)) == 0.0
