"""Split names with optional slices (``"train[:50000]"``) and a seeded validation hold-out."""

from __future__ import annotations

import re

import numpy as np

_SPLIT = re.compile(r"^(?P<name>[a-z]+)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


def parse_split(split: str, names: tuple[str, ...]) -> tuple[str, slice]:
    """Split ``"name"`` or ``"name[start:stop]"`` into the base name and a slice.

    Examples:
      >>> parse_split("train[:50000]", ("train", "test"))
      ('train', slice(None, 50000, None))
    """
    m = _SPLIT.match(split) if isinstance(split, str) else None
    if m is None or m["name"] not in names:
        raise ValueError(
            f"split: expected one of {names}, optionally sliced like 'train[:50000]', "
            f"got {split!r}"
        )
    start = int(m["start"]) if m["start"] else None
    stop = int(m["stop"]) if m["stop"] else None
    return m["name"], slice(start, stop)


def check_slice(split: str, sl: slice, n: int) -> slice:
    """``sl`` (from `parse_split`) checked against the split's ``n`` samples: both ends in
    ``[-n, n]`` and a nonempty, forward range. Returns ``sl``.

    Examples:
      >>> check_slice("train[:50000]", slice(None, 50000), 60000)
      slice(None, 50000, None)
      >>> check_slice("train[:70000]", slice(None, 70000), 60000)
      Traceback (most recent call last):
      ...
      ValueError: split: 'train[:70000]' asks for samples up to 70000, but the split has 60000
    """
    for end in (sl.start, sl.stop):
        if end is not None and not -n <= end <= n:
            raise ValueError(f"split: {split!r} asks for samples up to {end}, but the split "
                             f"has {n}")
    if not len(range(n)[sl]):
        raise ValueError(f"split: {split!r} selects no samples (the split has {n}; start must "
                         "come before stop)")
    return sl


def validation_split(
    n: int, n_valid: int, *, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train_idx, valid_idx)`` holding out ``n_valid`` of ``n`` samples.

    With ``seed=None`` the last ``n_valid`` samples are held out (the same as the slices
    ``"train[:-n_valid]"`` / ``"train[-n_valid:]"``); with an integer seed a uniformly random
    subset is held out, drawn by ``numpy.random.default_rng(seed)``. Both index arrays are
    sorted, disjoint and cover ``range(n)``.

    Args:
      n: number of samples.
      n_valid: how many to hold out, ``0 <= n_valid <= n``.
      seed: ``None`` for the contiguous tail, else the seed of the random hold-out.

    Returns:
      ``(train_idx, valid_idx)``, int64 arrays of lengths ``n - n_valid`` and ``n_valid``.

    Examples:
      >>> tr, va = validation_split(60000, 10000)  # the h-detach 50k/10k MNIST recipe
      >>> len(tr), len(va), int(va[0])
      (50000, 10000, 50000)
    """
    if not (isinstance(n_valid, int | np.integer) and 0 <= n_valid <= n):
        raise ValueError(f"n_valid: expected an integer in [0, {n}], got {n_valid!r}")
    if seed is None:
        return np.arange(n - n_valid), np.arange(n - n_valid, n)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])
