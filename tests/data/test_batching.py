"""Mini-batches: coverage per epoch, fixed shapes, seeds, resuming, indices."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from compiles import counted_jit
from hypothesis import given, settings
from hypothesis import strategies as st

from admm_jax.data import BatchIterator, batches


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), b=st.integers(1, 60), seed=st.integers(0, 1000))
def test_each_sample_once_per_epoch(n, b, seed):
    b = min(b, n)
    x = np.arange(n) * 10
    for remainder in ("pad", "drop"):
        it = BatchIterator(x, batch_size=b, seed=seed, remainder=remainder, epochs=2)
        seen = {0: [], 1: []}
        for batch in it:
            assert batch.indices.shape == batch.mask.shape == (b,)
            assert batch.data[0].shape == (b,)
            np.testing.assert_array_equal(batch.data[0], x[batch.indices])
            seen[batch.epoch] += batch.indices[batch.mask].tolist()
        for e in (0, 1):
            if remainder == "pad":
                assert sorted(seen[e]) == list(range(n))
            else:
                assert len(seen[e]) == (n // b) * b and len(set(seen[e])) == len(seen[e])
        assert it.position == (2, 0)


def test_shuffled_per_epoch_and_seeded():
    it = BatchIterator(num_samples=100, batch_size=10, seed=7)
    e0, e1 = it.epoch_indices(0)[0], it.epoch_indices(1)[0]
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, BatchIterator(num_samples=100, batch_size=10, seed=7)
                                  .epoch_indices(0)[0])
    assert not np.array_equal(e0, BatchIterator(num_samples=100, batch_size=10, seed=8)
                              .epoch_indices(0)[0])
    plain = BatchIterator(num_samples=100, batch_size=10, seed=7, shuffle=False)
    np.testing.assert_array_equal(plain.epoch_indices(3)[0].ravel(), np.arange(100))


def test_resume_gives_the_same_batches():
    x, y = np.random.default_rng(0).normal(size=(53, 3)), np.arange(53)
    full = list(batches(x, y, batch_size=8, seed=5, epochs=3, remainder="pad"))
    # stop in the middle of epoch 1, remember the position, resume in a new iterator
    it = BatchIterator(x, y, batch_size=8, seed=5, epochs=3, remainder="pad")
    head = list(itertools.islice(it, 10))
    epoch, step = it.position
    assert (epoch, step) == (1, 3)
    tail = list(BatchIterator(x, y, batch_size=8, seed=5, epochs=3, remainder="pad",
                              start=(epoch, step)))
    assert len(head) + len(tail) == len(full) == 3 * 7
    for a, b in zip(head + tail, full, strict=True):
        assert (a.epoch, a.step) == (b.epoch, b.step)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.data[0], b.data[0])


def test_fixed_shapes_do_not_recompile():
    x = np.arange(50.0, dtype=np.float32)

    @counted_jit
    def step(xb, mask):
        return jnp.sum(jnp.where(mask, xb, 0.0))

    total = 0.0
    for b in batches(x, batch_size=16, seed=0, epochs=2, remainder="pad"):
        total += float(step(b.data[0], b.mask))
    assert total == 2 * x.sum()
    assert step.traces == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(np.zeros(5), batch_size=6, seed=0)
    with pytest.raises(ValueError, match="leading size"):
        BatchIterator(np.zeros(5), np.zeros(4), batch_size=2, seed=0)
    with pytest.raises(ValueError, match="remainder"):
        BatchIterator(np.zeros(5), batch_size=2, seed=0, remainder="keep")
    with pytest.raises(ValueError, match="start"):
        BatchIterator(np.zeros(5), batch_size=2, seed=0, start=(0, 2))
    with pytest.raises(TypeError, match="seed"):
        BatchIterator(np.zeros(5), batch_size=2, seed=None)
