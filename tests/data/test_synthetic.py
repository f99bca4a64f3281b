"""Copying and adding tasks: structure and targets recomputed from the task definitions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admm_jax.data import adding, copying


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 120), n=st.integers(1, 20), seed=st.integers(0, 2**31))
def test_copying_matches_the_h_detach_recipe(T, n, seed):
    x, y = copying(T, n, seed=seed)
    assert x.shape == (n, T + 20, 1) and x.dtype == np.float32
    assert y.shape == (n, T + 20) and y.dtype == np.int32
    for i in range(n):
        seq = x[i, :10, 0].astype(np.int64)
        assert ((1 <= seq) & (seq <= 8)).all()
        want_x = np.concatenate([seq, np.zeros(T - 1), [9], np.zeros(10)])
        want_y = np.concatenate([np.zeros(T + 10), seq])
        np.testing.assert_array_equal(x[i, :, 0], want_x)
        np.testing.assert_array_equal(y[i], want_y)
    assert y.max() <= 8  # 9 output classes


def test_copying_symbols_are_uniform_and_seeded():
    x, _ = copying(10, 4000, seed=0)
    counts = np.bincount(x[:, :10, 0].astype(int).ravel(), minlength=9)[1:]
    assert counts.sum() == 40000 and np.abs(counts / 5000 - 1).max() < 0.05
    np.testing.assert_array_equal(x, copying(10, 4000, seed=0)[0])
    assert not np.array_equal(x, copying(10, 4000, seed=1)[0])


@settings(max_examples=25, deadline=None)
@given(T=st.integers(2, 200), n=st.integers(1, 20), seed=st.integers(0, 2**31))
def test_adding_target_is_the_marked_sum(T, n, seed):
    x, y = adding(T, n, seed=seed)
    assert x.shape == (n, T, 2) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.float32
    half = T // 2
    for i in range(n):
        marked = np.flatnonzero(x[i, :, 1])
        assert len(marked) == 2 and marked[0] < half <= marked[1]
        assert set(np.unique(x[i, :, 1]).tolist()) <= {0.0, 1.0}
        want = float(np.float64(x[i, marked[0], 0]) + np.float64(x[i, marked[1], 0]))
        assert abs(float(y[i]) - want) < 1e-6
    assert ((0 <= x[..., 0]) & (x[..., 0] < 1)).all()


def test_adding_is_seeded_and_baseline_mse():
    x, y = adding(50, 20000, seed=3)
    np.testing.assert_array_equal(y, adding(50, 20000, seed=3)[1])
    assert not np.array_equal(y, adding(50, 20000, seed=4)[1])
    assert abs(float(np.mean((y - 1.0) ** 2)) - 1 / 6) < 0.01  # Var of U+U = 1/6


def test_bad_arguments():
    with pytest.raises(ValueError, match="T"):
        copying(0, 3, seed=0)
    with pytest.raises(ValueError, match="n"):
        adding(10, 0, seed=0)
    with pytest.raises(TypeError, match="seed"):
        adding(10, 2, seed=None)
