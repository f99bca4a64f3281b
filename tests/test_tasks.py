"""Tasks: shapes, losses and metrics per task; models and ADMM settings fitted to them."""

import numpy as np
import pytest
from flax import nnx

from admm_jax import optimizers, tasks
from admm_jax.data import copying
from admm_jax.optimizers import admm_state


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        tasks.load("cifar")
    for n in tasks.names():
        assert n in str(e.value)


def test_adding_is_regression_with_a_column_target():
    t = tasks.load("adding", num_train=16, num_test=8, seq_len=12)
    assert t.train[0].shape == (16, 12, 2) and t.train[1].shape == (16, 1)
    assert t.loss == "mse" and t.metric is None and not t.higher_is_better
    assert t.model(4)(t.train[0]).shape == (16, 1)


def test_copying_metric_is_the_last_ten_steps():
    t = tasks.load("copying", num_train=16, num_test=8, seq_len=3)
    x, y = copying(3, 16, seed=0)
    np.testing.assert_array_equal(t.train[0], x)
    logits = np.zeros((2, 23, 9), np.float32)
    targets = np.zeros((2, 23), np.int32)
    targets[:, -10:] = 3
    logits[0, -10:, 3] = 1.0  # sample 0 right on every copied symbol, sample 1 on none
    np.testing.assert_allclose(np.asarray(t.metric(logits, targets)), [1.0, 0.0])
    assert t.many_to_many and t.seq_len == 23


def test_text_task_splits_windows(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("abcdefghij" * 30)
    t = tasks.load("text", text_path=str(f), seq_len=10)
    n = len(t.train[0]) + len(t.test[0])
    assert n == (300 - 1) // 10 and t.in_features == t.out_features == 10
    with pytest.raises(ValueError, match="text_path"):
        tasks.load("text")


def test_rechunk_pixels_keeps_the_pixel_order():
    x = np.arange(2 * 784, dtype=np.float32).reshape(2, 784, 1)
    r = tasks.rechunk_pixels(x, 28)
    assert r.shape == (2, 28, 28) and r[1, 3, 5] == 784 + 3 * 28 + 5
    with pytest.raises(ValueError, match="divisor of 784"):
        tasks.rechunk_pixels(x, 100)


def test_admm_optimizer_gets_the_task_settings():
    t = tasks.load("copying", num_train=8, num_test=4, seq_len=2)
    tx = t.optimizer("admmirnn", sweep="backward")  # the sweep that keeps per-sample state
    s = admm_state(tx.init(nnx.state(t.model(4), nnx.Param)))
    assert s.duals.lam2.shape == (8, 22, 4) and s.duals.lam3.shape == (8, 22, 9)


def test_mnist_rows_and_subsets(data_dir):
    t = tasks.load("row-mnist", data_dir=data_dir, train_subset=100, test_subset=50)
    assert t.train[0].shape == (100, 28, 28) and t.test[0].shape == (50, 28, 28)
    p = tasks.load("pixel-mnist", data_dir=data_dir, seq_len=112, train_subset=10, test_subset=5)
    assert p.train[0].shape == (10, 112, 7)
    np.testing.assert_array_equal(p.train[0].reshape(10, 28, 28), t.train[0][:10])


def test_clip_norm_wraps_every_method_that_uses_gradients():
    import jax.numpy as jnp

    t = tasks.load("adding", num_train=8, num_test=4, seq_len=4)
    params = {"w": jnp.zeros(2)}
    tx = t.optimizer("sgd", learning_rate=1.0, clip_norm=0.5)
    u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    np.testing.assert_allclose(u["w"], [-0.3, -0.4], rtol=1e-6)  # norm 5 clipped to 0.5
    admm = t.optimizer("admmirnn", clip_norm=0.5)
    assert admm_state(admm.init(nnx.state(t.model(4), nnx.Param))) is not None
    # K-FAC preconditions the gradient it is given: the clip comes first, and fit passes
    # gradients to a chain whose first member is the clip
    model = t.model(4)
    kfac = t.optimizer("admm_kfac", model=model, clip_norm=0.5)
    state = kfac.init(nnx.state(model, nnx.Param))
    assert optimizers.needs_gradients(state) and optimizers.takes_batch_somewhere(state)
