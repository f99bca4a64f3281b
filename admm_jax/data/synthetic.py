"""Synthetic long-memory tasks: copying and adding."""

from __future__ import annotations

import numpy as np

COPY_SYMBOLS = 10  # how many symbols are copied
COPY_CLASSES = 9  # outputs: 0 (blank) and the symbols 1..8
COPY_DELIMITER = 9


def _check(T: int, n: int, seed: int, min_T: int) -> None:
    for arg, v, lo in (("T", T, min_T), ("n", n, 1)):
        if not (isinstance(v, int | np.integer) and v >= lo):
            raise ValueError(f"{arg}: expected an integer >= {lo}, got {v!r}")
    if not isinstance(seed, int | np.integer):
        raise TypeError(f"seed: expected an integer, got {seed!r}")


def copying(T: int, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The copying task as in h-detach (Kanuparthi et al., 2019).

    Each input sequence has length \( T + 20 \): 10 symbols drawn uniformly from
    \( \{1, \dots, 8\} \), \( T - 1 \) blanks (0), the delimiter 9, then 10 blanks. The
    target is \( T + 10 \) blanks followed by the same 10 symbols. The symbol is fed as one
    scalar (``inputs[..., 0]`` holds its value). The model predicts one of 9 classes (0..8) at
    every step; train with the cross-entropy at every step and report the accuracy on the last
    10 steps (``targets[:, -10:]``).

    Args:
      T: the delay (number of blanks between the symbols and the delimiter, plus one); >= 1.
      n: number of sequences.
      seed: seed of ``numpy.random.default_rng``.

    Returns:
      ``(inputs float32 [n, T + 20, 1], targets int32 [n, T + 20])``.

    Examples:
      >>> x, y = copying(5, 2, seed=0)
      >>> x.shape, y.shape, bool((x[:, :10, 0] == y[:, -10:]).all()), int(x[0, 14, 0])
      ((2, 25, 1), (2, 25), True, 9)

    References:
      Hochreiter and Schmidhuber, Long short-term memory, 1997; Arjovsky, Shah and Bengio,
      Unitary evolution recurrent neural networks, ICML 2016; Kanuparthi et al., h-detach:
      modifying the LSTM gradient towards better optimization, ICLR 2019.
    """
    _check(T, n, seed, 1)
    rng = np.random.default_rng(seed)
    seq = rng.integers(1, COPY_DELIMITER, size=(n, COPY_SYMBOLS))
    x = np.zeros((n, T + 2 * COPY_SYMBOLS), np.int32)
    x[:, :COPY_SYMBOLS] = seq
    x[:, COPY_SYMBOLS + T - 1] = COPY_DELIMITER
    y = np.zeros((n, T + 2 * COPY_SYMBOLS), np.int32)
    y[:, -COPY_SYMBOLS:] = seq
    return x[..., None].astype(np.float32), y


def adding(T: int, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The adding problem: sum the two marked numbers of a length-\( T \) sequence.

    Channel 0 holds values \( v_t \sim U[0, 1) \); channel 1 is 1 at two marked steps, one
    drawn uniformly from the first half \( [0, \lfloor T/2 \rfloor) \) and one from the
    second half \( [\lfloor T/2 \rfloor, T) \), and 0 elsewhere. The target is
    \( \sum_t v_t m_t \), regressed from the last step with the squared error (predicting
    1 everywhere gives MSE about 1/6, the baseline to beat).

    Args:
      T: sequence length, >= 2.
      n: number of sequences.
      seed: seed of ``numpy.random.default_rng``.

    Returns:
      ``(inputs float32 [n, T, 2], targets float32 [n])``.

    Examples:
      >>> x, y = adding(10, 3, seed=0)
      >>> x.shape, y.shape, x[..., 1].sum(axis=1).tolist()
      ((3, 10, 2), (3,), [2.0, 2.0, 2.0])

    References:
      Hochreiter and Schmidhuber, Long short-term memory, 1997; Arjovsky, Shah and Bengio,
      Unitary evolution recurrent neural networks, ICML 2016.
    """
    _check(T, n, seed, 2)
    rng = np.random.default_rng(seed)
    values = rng.random((n, T), dtype=np.float32)
    half = T // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    marks = np.zeros((n, T), np.float32)
    rows = np.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return np.stack([values, marks], axis=-1), targets.astype(np.float32)
