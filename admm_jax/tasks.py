"""Tasks by name: data, a model for it, its loss and metric, and optimizers fitted to it.

=================  ==========================================  =========  ==============
name               data                                        outputs    metric
=================  ==========================================  =========  ==============
row-mnist          MNIST, one 28-pixel row per step (T = 28)   10 at T    accuracy
pixel-mnist        MNIST, ``784 / T`` pixels per step          10 at T    accuracy
permuted-mnist     pixel-MNIST under a fixed permutation       10 at T    accuracy
imdb               IMDb reviews as word ids (T = 100)          2 at T     accuracy
copying            copy 10 symbols after a delay (T + 20)      9 per step accuracy, last 10
adding             sum of two marked numbers (T = 20)          1 at T     mse
text               next character of a text file (T = 50)      V per step accuracy
=================  ==========================================  =========  ==============

MNIST and IMDb read real data (``data_dir``, ``$ADMM_JAX_DATA``; see :mod:`admm_jax.data`);
copying and adding are generated from the seed, so they need no files and no network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optax
from flax import nnx

from admm_jax import data as D
from admm_jax import optimizers
from admm_jax.models import CELLS, ElmanRNN, StackedRNN
from admm_jax.train import losses

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Task:
    """A learning problem ready for :func:`admm_jax.train.fit`.

    train, test: ``(inputs, targets)``; in_features (the vocabulary for token inputs),
    out_features, many_to_many: the Elman model's shape; loss: ``"cross_entropy"`` or
    ``"mse"``; metric: per-sample metric or ``None`` (then the test loss is the metric);
    metric_name: ``"accuracy"`` or ``"mse"``; higher_is_better; target: default value of the
    metric to time ("time to reach"); info: a one-line description of the data.
    """

    name: str
    train: Arrays
    test: Arrays
    in_features: int
    out_features: int
    many_to_many: bool
    loss: str
    metric: losses.PerSample | None
    metric_name: str
    higher_is_better: bool
    target: float
    info: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return int(self.train[0].shape[1])

    @property
    def token_inputs(self) -> bool:
        """The inputs are token ids ``[N, T]`` (a vocabulary of ``in_features``)."""
        return bool(np.issubdtype(np.asarray(self.train[0][:1]).dtype, np.integer))

    def model(self, hidden: int = 64, *, seed: int = 0, cell: str = "elman", layers: int = 1,
              embed: int | None = None) -> nnx.Module:
        """A fresh model for this task (same arguments and ``seed``, same weights).

        ``cell="elman"`` (default): the package's :class:`admm_jax.ElmanRNN` (one-hot token
        inputs; what ADMMiRNN trains). Any key of :data:`admm_jax.models.CELLS` (``"simple"``,
        ``"lstm"``, ``"gru"``, ``"optimized-lstm"``): Flax's own cells,
        :class:`admm_jax.StackedRNN` with ``layers`` layers and, for token inputs, an
        ``nnx.Embed`` of width ``embed`` (default ``hidden``).

        >>> t = load("adding", num_train=8, num_test=4)
        >>> type(t.model(8, cell="gru", layers=2)).__name__
        'StackedRNN'
        """
        if cell == "elman":
            if layers != 1 or embed is not None:
                raise ValueError("layers, embed: the elman cell is the package's one-layer "
                                 "ElmanRNN; use cell='simple' (Flax's SimpleCell) to stack "
                                 "layers or embed tokens")
            return ElmanRNN(self.in_features, hidden, self.out_features, rngs=nnx.Rngs(seed),
                            many_to_many=self.many_to_many)
        if cell not in CELLS:
            raise ValueError(f"cell: expected 'elman' or one of {tuple(CELLS)}, got {cell!r}")
        if embed is not None and not self.token_inputs:
            raise ValueError(f"embed: {self.name} has float inputs; an embedding needs token "
                             "ids")
        if self.token_inputs and embed is None:
            embed = hidden
        return StackedRNN(cell, self.in_features, hidden, self.out_features, layers=layers,
                          embed=embed, many_to_many=self.many_to_many, rngs=nnx.Rngs(seed))

    def optimizer(self, name: str, *, model: nnx.Module | None = None,
                  clip_norm: float | None = None,
                  **kwargs: Any) -> optax.GradientTransformationExtraArgs:
        """``optimizers.get(name, **kwargs)`` with what the method must know of the task filled
        in (its registry entry's ``task_kwargs``: the task's ``loss``, and the like; for a
        method built for the model, :attr:`admm_jax.optimizers.Entry.takes_model`, the
        ``model`` and an example batch). ``clip_norm`` clips the gradients' global norm first
        (``optax.clip_by_global_norm``) for every method that uses gradients, the K-FAC methods
        included (they precondition the clipped gradient); a gradient-free method (ADMMiRNN)
        is used as it is."""
        e = optimizers.entry(name)
        if e.task_kwargs is not None:
            kwargs = {**e.task_kwargs(self), **kwargs}
        if e.takes_model:
            if model is None:
                raise TypeError(f"model: {optimizers.canonical_name(name)} is built for the "
                                "model it trains: task.optimizer(name, model=model)")
            kwargs = {"model": model, "inputs": self.train[0][:1], **kwargs}
        tx = optimizers.get(name, **kwargs)
        gradient_free = (optimizers.takes_batch(name)
                         and not getattr(e.state, "computes_gradients", False))
        if clip_norm is None or gradient_free:
            return tx
        return optax.with_extra_args_support(
            optax.chain(optax.clip_by_global_norm(clip_norm), tx))

    def state_bytes(self, name: str, hidden: int) -> int:
        """Bytes of per-sample state the optimizer ``name`` keeps for this training set (0 for
        one that keeps none), from its registry entry's ``state_bytes``."""
        e = optimizers.entry(name)
        return 0 if e.state_bytes is None else int(e.state_bytes(self, hidden))

    def fit_kwargs(self) -> dict[str, Any]:
        """``loss=`` and ``metric=`` for :func:`admm_jax.train.fit`."""
        return {"loss": self.loss, "metric": self.metric}


def _subset(xy: Arrays, n: int | None) -> Arrays:
    if n is None:
        return xy
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"subset: expected a positive int or None, got {n!r}")
    return xy[0][:n], xy[1][:n]


def rechunk_pixels(x: np.ndarray, seq_len: int) -> np.ndarray:
    """MNIST pixels ``[N, 784, 1]`` (or ``[N, 28, 28]``) as ``[N, T, 784 / T]``.

    >>> rechunk_pixels(np.zeros((2, 784, 1)), 112).shape
    (2, 112, 7)
    """
    if not (isinstance(seq_len, int) and seq_len >= 1 and 784 % seq_len == 0):
        raise ValueError(f"seq_len: expected a divisor of 784 (28, 112, 392, 784, ...), "
                         f"got {seq_len!r}")
    return x.reshape(len(x), seq_len, 784 // seq_len)


def _mnist(layout: str, name: str, default_t: int):
    def load(*, data_dir, seq_len, download, **_) -> dict[str, Any]:
        t = default_t if seq_len is None else seq_len
        src = "rows" if layout == "rows" else layout
        out = {}
        for split in ("train", "test"):
            x, y = D.mnist(split, layout=src, data_dir=data_dir, download=download)
            out[split] = (rechunk_pixels(x, t) if (layout != "rows" or t != 28) else x, y)
        d = out["train"][0].shape[2]
        return dict(**out, in_features=d, out_features=10, many_to_many=False,
                    loss="cross_entropy", metric=losses.accuracy, metric_name="accuracy",
                    higher_is_better=True, target=0.9,
                    info=f"{name}: MNIST {layout}, T={t} steps of {d} pixels, 10 classes")

    return load


def _imdb(*, data_dir, seq_len, download, vocab_size, **_) -> dict[str, Any]:
    t = 100 if seq_len is None else seq_len
    out = {}
    for split in ("train", "test"):
        r = D.imdb(split, vocab_size=vocab_size, max_len=t, data_dir=data_dir, download=download)
        out[split] = (r.ids, r.labels)
    return dict(**out, in_features=vocab_size, out_features=2, many_to_many=False,
                loss="cross_entropy", metric=losses.accuracy, metric_name="accuracy",
                higher_is_better=True, target=0.8,
                info=f"imdb: word ids (vocabulary {vocab_size}), T={t}, 2 classes")


def _copying(*, seq_len, seed, num_train, num_test, **_) -> dict[str, Any]:
    delay = 10 if seq_len is None else seq_len
    train = D.copying(delay, num_train, seed=seed)
    test = D.copying(delay, num_test, seed=seed + 1)
    return dict(train=train, test=test, in_features=1, out_features=D.synthetic.COPY_CLASSES,
                many_to_many=True, loss="cross_entropy",
                metric=losses.last_steps_accuracy(D.synthetic.COPY_SYMBOLS),
                metric_name="accuracy", higher_is_better=True, target=0.5,
                info=f"copying: delay {delay} (T={delay + 20}), accuracy on the last 10 steps "
                     "(chance 1/8)")


def _adding(*, seq_len, seed, num_train, num_test, **_) -> dict[str, Any]:
    t = 20 if seq_len is None else seq_len
    (x, y), (xt, yt) = D.adding(t, num_train, seed=seed), D.adding(t, num_test, seed=seed + 1)
    return dict(train=(x, y[:, None]), test=(xt, yt[:, None]), in_features=2, out_features=1,
                many_to_many=False, loss="mse", metric=None, metric_name="mse",
                higher_is_better=False, target=0.05,
                info=f"adding: T={t}, test MSE (predicting 1 gives ~0.167)")


def _text(*, text_path, seq_len, **_) -> dict[str, Any]:
    if text_path is None:
        raise ValueError("text_path: the text task needs a file (--text PATH)")
    if not os.path.isfile(text_path):
        raise ValueError(f"text_path: no such file {text_path!r}")
    t = 50 if seq_len is None else seq_len
    ct = D.text(os.fspath(text_path), seq_len=t, stride=t)
    n = len(ct.inputs)
    if n < 2:
        raise ValueError(f"text_path: {text_path!r} is too short for windows of {t} characters")
    cut = max(1, int(0.9 * n))
    return dict(train=(ct.inputs[:cut], ct.targets[:cut]),
                test=(ct.inputs[cut:], ct.targets[cut:]) if cut < n else
                (ct.inputs[-1:], ct.targets[-1:]),
                in_features=len(ct.vocab), out_features=len(ct.vocab), many_to_many=True,
                loss="cross_entropy", metric=losses.accuracy, metric_name="accuracy",
                higher_is_better=True, target=0.5,
                info=f"text: {os.path.basename(text_path)}, {len(ct.vocab)} characters, T={t}, "
                     "next-character accuracy (last 10% of windows held out)")


TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "row-mnist": _mnist("rows", "row-mnist", 28),
    "pixel-mnist": _mnist("pixels", "pixel-mnist", 784),
    "permuted-mnist": _mnist("permuted", "permuted-mnist", 784),
    "imdb": _imdb,
    "copying": _copying,
    "adding": _adding,
    "text": _text,
}


def names() -> tuple[str, ...]:
    """The task names."""
    return tuple(TASKS)


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seq_len: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    num_train: int = 10000,
    num_test: int = 1000,
    vocab_size: int = 5000,
    text_path: str | os.PathLike | None = None,
    download: bool = False,
) -> Task:
    """Load the task ``name`` (see the table in :mod:`admm_jax.tasks`).

    Args:
      name: one of :func:`names`.
      data_dir: real-data folder (MNIST, IMDb), see :mod:`admm_jax.data`.
      seq_len: ``T`` (pixel/permuted MNIST: a divisor of 784; copying: the delay; default per
        task).
      train_subset, test_subset: keep only the first samples of each split.
      seed: seed of the synthetic tasks' data (the test set uses ``seed + 1``).
      num_train, num_test: sizes of the synthetic tasks.
      vocab_size: IMDb vocabulary. text_path: the text file of the ``text`` task.
      download: allow downloading MNIST/IMDb when no copy is found.

    >>> t = load("adding", num_train=8, num_test=4)
    >>> t.train[0].shape, t.loss, t.metric_name
    ((8, 20, 2), 'mse', 'mse')

    Raises:
      ValueError: an unknown name (listing the valid ones) or bad arguments.
    """
    if name not in TASKS:
        raise ValueError(f"task: unknown name {name!r}; expected one of {', '.join(TASKS)}")
    spec = TASKS[name](data_dir=data_dir, seq_len=seq_len, seed=seed, num_train=num_train,
                       num_test=num_test, vocab_size=vocab_size, text_path=text_path,
                       download=download)
    spec["train"] = _subset(spec["train"], train_subset)
    spec["test"] = _subset(spec["test"], test_subset)
    return Task(name=name, **spec)
