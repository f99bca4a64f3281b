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


def test_needs_gradients_reads_the_state_also_inside_chain():
    params = nnx.state(ElmanRNN(2, 4, 3, rngs=nnx.Rngs(0)), nnx.Param)
    admm = optimizers.get("admmirnn")
    assert not optimizers.needs_gradients(admm.init(params))
    chained = optax.chain(optax.identity(), optimizers.get("admmirnn"))
    state = chained.init(params)
    assert not optimizers.needs_gradients(state)
    assert optimizers.admm_state(state) is not None
    assert optimizers.needs_gradients(optimizers.get("adam").init(params))
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


def test_a_factory_with_a_none_default_picks_its_learning_rate():
    """admm_kfac's default is 0.3, or a peak of 0.5 when it knows the run's length; get()
    leaves the choice to it, and default_learning_rate says what it picks."""
    import numpy as np
    from flax import nnx

    from admm_jax import ElmanRNN

    params = nnx.state(ElmanRNN(3, 4, 2, rngs=nnx.Rngs(0)), nnx.Param)
    x = np.random.default_rng(0).normal(size=(8, 5, 3)).astype(np.float32)
    y = np.arange(8) % 2

    def first_step(tx):
        u, _ = tx.update(None, tx.init(params), params, inputs=x, targets=y)
        return jax.tree_util.tree_leaves(u)

    for decay, lr in ((None, 0.3), (100, 0.5)):
        assert optimizers.default_learning_rate("admm_kfac", decay_steps=decay) == lr
        kw = {} if decay is None else {"decay_steps": decay}
        picked = first_step(optimizers.get("admm_kfac", **kw))
        explicit = first_step(optimizers.get("admm_kfac", learning_rate=lr, **kw))
        for a, b in zip(picked, explicit, strict=True):
            np.testing.assert_array_equal(a, b)
    assert optimizers.accepts("admm_kfac", "decay_steps")
    assert not optimizers.accepts("adam", "decay_steps")
    assert optimizers.default_learning_rate("adam", decay_steps=100) == 1e-3
