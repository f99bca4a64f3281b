"""Seeded, resumable mini-batches of fixed shape that also carry their sample indices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

REMAINDERS = ("drop", "pad")


class Batch(NamedTuple):
    """One mini-batch.

    Attributes:
      data: the arrays' rows ``a[indices]``, each with leading size ``batch_size``.
      indices: int32 ``[batch_size]`` sample indices (what per-sample optimizer state needs).
      mask: bool ``[batch_size]``, False on padding rows (``remainder="pad"`` only).
      epoch: the epoch of this batch.
      step: its step within the epoch.
    """

    data: tuple[np.ndarray, ...]
    indices: np.ndarray
    mask: np.ndarray
    epoch: int
    step: int


class BatchIterator:
    r"""Mini-batches shuffled per epoch from an explicit seed, resumable from ``(epoch, step)``.

    Epoch \( e \) visits the samples in the order
    ``numpy.random.default_rng([seed, e]).permutation(n)``, cut into batches of
    ``batch_size``. The order depends only on ``(seed, e)``, so a run resumed at
    ``(epoch, step)`` sees exactly the batches the uninterrupted run would have.

    The last, short batch of an epoch is

    * ``remainder="drop"`` (default): dropped; ``n // batch_size`` steps per epoch, and the
      dropped samples differ from epoch to epoch;
    * ``remainder="pad"``: filled up with the first indices of the same epoch's order and
      marked ``mask=False``; ``ceil(n / batch_size)`` steps, every sample exactly once per
      epoch among the ``mask=True`` rows.

    Every batch has the same shape, so a jitted step never recompiles.

    Args:
      *arrays: arrays with the same leading size ``n`` (may be none; then give ``num_samples``).
      batch_size: rows per batch, ``1 <= batch_size <= n``.
      seed: shuffling seed (``shuffle=False`` keeps the order ``0..n-1``).
      num_samples: ``n`` when no arrays are given.
      remainder: ``"drop"`` or ``"pad"``.
      shuffle: shuffle every epoch.
      epochs: how many epochs iteration runs (``None``: forever).
      start: ``(epoch, step)`` to resume from.

    Examples:
      >>> x = np.arange(10.0)
      >>> it = BatchIterator(x, batch_size=4, seed=0, remainder="pad", epochs=1)
      >>> [int(b.mask.sum()) for b in it]
      [4, 4, 2]
      >>> it.position  # where a resumed run would start
      (1, 0)
    """

    def __init__(
        self,
        *arrays: np.ndarray,
        batch_size: int,
        seed: int,
        num_samples: int | None = None,
        remainder: str = "drop",
        shuffle: bool = True,
        epochs: int | None = None,
        start: tuple[int, int] = (0, 0),
    ):
        sizes = {len(a) for a in arrays}
        if len(sizes) > 1:
            raise ValueError(f"arrays: expected the same leading size, got {sorted(sizes)}")
        if arrays and num_samples is not None and num_samples not in sizes:
            raise ValueError(f"num_samples: {num_samples} differs from the arrays' size {sizes}")
        n = sizes.pop() if arrays else num_samples
        if not (isinstance(n, int | np.integer) and n >= 1):
            raise ValueError(f"num_samples: expected arrays or a positive integer, got {n!r}")
        if not (isinstance(batch_size, int | np.integer) and 1 <= batch_size <= n):
            raise ValueError(f"batch_size: expected an integer in [1, {n}], got {batch_size!r}")
        if remainder not in REMAINDERS:
            raise ValueError(f"remainder: expected one of {REMAINDERS}, got {remainder!r}")
        if not isinstance(seed, int | np.integer):
            raise TypeError(f"seed: expected an integer, got {seed!r}")
        self.arrays = arrays
        self.num_samples = int(n)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.remainder = remainder
        self.shuffle = shuffle
        self.epochs = epochs
        if remainder == "drop":
            self.steps_per_epoch = self.num_samples // self.batch_size
        else:
            self.steps_per_epoch = -(-self.num_samples // self.batch_size)
        epoch, step = start
        if not (0 <= step < self.steps_per_epoch and epoch >= 0):
            raise ValueError(
                f"start: expected (epoch >= 0, 0 <= step < {self.steps_per_epoch}), got {start!r}"
            )
        self.position = (int(epoch), int(step))

    def epoch_indices(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """All batches of ``epoch``: indices int32, mask bool, ``[steps_per_epoch, batch_size]``."""
        n, b = self.num_samples, self.batch_size
        if self.shuffle:
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
        else:
            order = np.arange(n)
        total = self.steps_per_epoch * b
        mask = np.arange(total) < n
        if total > n:
            order = np.concatenate([order, order[: total - n]])
        idx = order[:total].astype(np.int32).reshape(self.steps_per_epoch, b)
        return idx, mask.reshape(self.steps_per_epoch, b)

    def __iter__(self) -> Iterator[Batch]:
        while self.epochs is None or self.position[0] < self.epochs:
            epoch, step = self.position
            idx, mask = self.epoch_indices(epoch)
            for s in range(step, self.steps_per_epoch):
                i = idx[s]
                self.position = (epoch, s + 1) if s + 1 < self.steps_per_epoch else (epoch + 1, 0)
                yield Batch(tuple(a[i] for a in self.arrays), i, mask[s], epoch, s)


def batches(
    *arrays: np.ndarray,
    batch_size: int,
    seed: int,
    epochs: int | None = 1,
    remainder: str = "drop",
    shuffle: bool = True,
    start: tuple[int, int] = (0, 0),
) -> Iterator[Batch]:
    """Iterate [`Batch`][admm_jax.data.Batch]es over ``arrays``; see
    [`BatchIterator`][admm_jax.data.BatchIterator] for the rules.

    Examples:
      >>> x, y = np.arange(12.0).reshape(6, 2), np.arange(6)
      >>> [b.indices.shape for b in batches(x, y, batch_size=4, seed=1)]
      [(4,)]
    """
    return iter(
        BatchIterator(
            *arrays, batch_size=batch_size, seed=seed, remainder=remainder, shuffle=shuffle,
            epochs=epochs, start=start,
        )
    )
