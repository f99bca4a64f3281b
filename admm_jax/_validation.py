"""Argument checks shared by the public functions: each error names the argument, what was
expected and what was received.

Shape and type checks are cheap and may run at trace time; value checks (finite data, labels in
range) read concrete arrays, so they run only where data enters from the host (`fit`),
never inside a jitted step.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np


def _describe(v: Any) -> str:
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return f"{v.dtype}{tuple(v.shape)}"
    return repr(v)


def _is_tracer(v: Any) -> bool:
    return isinstance(v, jax.core.Tracer)


def scalar(name: str, v: Any, what: str) -> float | None:
    """The value of a real scalar hyperparameter: a Python or numpy number, or a 0-d array.

    Returns ``None`` for a traced scalar (e.g. under ``optax.inject_hyperparams`` inside
    ``jit``): its value is checked when concrete only. Bools, strings, non-scalar arrays raise
    a ``ValueError`` naming ``name`` and ``what`` was expected.
    """
    if isinstance(v, bool | np.bool_):
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    if isinstance(v, int | float | np.integer | np.floating):
        return float(v)
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        if np.shape(v) == () and np.issubdtype(np.dtype(v.dtype), np.number) and not \
                np.issubdtype(np.dtype(v.dtype), np.complexfloating):
            return None if _is_tracer(v) else float(v)
    raise ValueError(f"{name}: expected {what}, got {v!r}")


def positive_int(name: str, v: Any, *, allow_none: bool = False) -> int | None:
    """``v`` is an int ``>= 1`` (a Python or numpy int or a concrete 0-d integer array; bools
    are rejected); returns it as a Python int."""
    if v is None and allow_none:
        return None
    if _is_tracer(v):
        raise TypeError(f"{name}: expected a concrete positive int, got a traced value (it sets "
                        "array shapes; with optax.inject_hyperparams list it in static_args)")
    if hasattr(v, "shape") and hasattr(v, "dtype") and np.shape(v) == () and \
            np.issubdtype(np.dtype(v.dtype), np.integer):
        v = int(v)
    if not isinstance(v, int | np.integer) or isinstance(v, bool | np.bool_) or v < 1:
        raise ValueError(f"{name}: expected a positive int{' or None' if allow_none else ''}, "
                         f"got {v!r}")
    return int(v)


def nonnegative_int(name: str, v: Any) -> int:
    """``v`` is an int ``>= 0`` (bools rejected); returns it as a Python int."""
    if hasattr(v, "shape") and hasattr(v, "dtype") and np.shape(v) == () and \
            np.issubdtype(np.dtype(v.dtype), np.integer) and not _is_tracer(v):
        v = int(v)
    if not isinstance(v, int | np.integer) or isinstance(v, bool | np.bool_) or v < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
    return int(v)


def positive_number(name: str, v: Any, *, allow_none: bool = False) -> None:
    """``v`` is a finite real number ``> 0`` (checked when concrete)."""
    if v is None and allow_none:
        return
    what = f"a finite number > 0{' or None' if allow_none else ''}"
    f = scalar(name, v, what)
    if f is not None and not (math.isfinite(f) and f > 0):
        raise ValueError(f"{name}: expected {what}, got {v!r}")


def finite_number(name: str, v: Any) -> None:
    """``v`` is a finite real number (checked when concrete)."""
    f = scalar(name, v, "a finite number")
    if f is not None and not math.isfinite(f):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")


def fraction(name: str, v: Any, *, include_one: bool = True) -> None:
    """``v`` is a real number in ``[0, 1]`` (``[0, 1)`` without ``include_one``; checked when
    concrete)."""
    what = f"a number in [0, 1{']' if include_one else ')'}"
    f = scalar(name, v, what)
    if f is not None and not (0.0 <= f <= 1.0 and (include_one or f < 1.0)):
        raise ValueError(f"{name}: expected {what}, got {v!r}")


def nonnegative_number(name: str, v: Any) -> None:
    """``v`` is a finite real number ``>= 0`` (checked when concrete)."""
    f = scalar(name, v, "a finite number >= 0")
    if f is not None and not (math.isfinite(f) and f >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")


def learning_rate(name: str, v: Any) -> None:
    """A learning rate: a finite number ``> 0`` (also a 0-d array) or a schedule (callable)."""
    if callable(v):
        return
    f = scalar(name, v, "a finite number > 0 (or an optax schedule)")
    if f is not None and not (math.isfinite(f) and f > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {v!r} (or pass an optax "
                         "schedule)")


def token_ids(name: str, ids: Any, vocab: int) -> None:
    """Integer token ids in ``[0, vocab)``; checked when ``ids`` is concrete (not under
    ``jit``), a no-op for float inputs."""
    if _is_tracer(ids):
        return
    a = np.asarray(ids)
    if not np.issubdtype(a.dtype, np.integer) or not a.size:
        return
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= vocab:
        bad = int(((a < 0) | (a >= vocab)).sum())
        raise ValueError(f"{name}: expected token ids in [0, {vocab}) (the vocabulary of the "
                         f"model), got {bad} outside it (values in [{lo}, {hi}])")


def indices(name: str, idx: Any, n: int, size: int | None = None) -> np.ndarray | None:
    """Distinct sample positions in ``[0, n)``, 1-D integers (``size`` of them when given).

    Checked when ``idx`` is concrete; returns the numpy array, or ``None`` for a traced one.
    """
    if _is_tracer(idx):
        return None
    a = np.asarray(idx)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or (size is not None
                                                                 and a.size != size):
        want = "1-D int array" if size is None else f"int array of shape ({size},)"
        raise ValueError(f"{name}: expected a {want}, got {a.dtype}{a.shape}")
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"{name}: expected positions in [0, {n}), got values in "
                         f"[{a.min()}, {a.max()}]")
    vals, counts = np.unique(a, return_counts=True)
    if vals.size != a.size:
        raise ValueError(f"{name}: expected distinct positions (each sample once per batch), "
                         f"got {a.size - vals.size} repeated, e.g. {int(vals[counts > 1][0])}")
    return a


def one_of(name: str, v: Any, valid: Iterable[str]) -> None:
    """``v`` is one of the strings ``valid``."""
    valid = tuple(valid)
    if not isinstance(v, str) or v not in valid:
        raise ValueError(f"{name}: expected one of {valid}, got {v!r}")


def finite(name: str, a: Any) -> None:
    """Every value of the concrete array ``a`` is finite (integer arrays always are)."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.inexact):
        return
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: expected finite values, got {int(bad.sum())} NaN/inf "
                         f"(first at index {first}: {a[first]!r})")


def labels(name: str, y: Any, num_classes: int) -> None:
    """Integer class labels in ``[0, num_classes)`` (concrete array)."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name}: expected integer class labels, got {_describe(y)}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name}: expected class labels in [0, {num_classes}) (the model has "
                         f"{num_classes} outputs), got values in [{y.min()}, {y.max()}]")


def same_structure(name: str, got: Any, want: Any, *, what: str = "the model") -> None:
    """``got`` has ``want``'s tree structure and every leaf its shape and dtype.

    ``want`` may hold arrays or ``jax.ShapeDtypeStruct``s (e.g. from ``jax.eval_shape``).
    """
    g_leaves, g_def = jax.tree_util.tree_flatten_with_path(got)
    w_leaves, w_def = jax.tree_util.tree_flatten_with_path(want)
    if g_def != w_def:
        gp = [jax.tree_util.keystr(p) for p, _ in g_leaves]
        wp = [jax.tree_util.keystr(p) for p, _ in w_leaves]
        missing = [p for p in wp if p not in gp]
        extra = [p for p in gp if p not in wp]
        detail = (f"missing {missing[:5]}, unexpected {extra[:5]}" if missing or extra
                  else f"structure {g_def} instead of {w_def}")
        raise ValueError(f"{name}: does not match {what}: {len(gp)} leaves instead of "
                         f"{len(wp)}; {detail}")
    for (path, g), (_, w) in zip(g_leaves, w_leaves, strict=True):
        gs, ws = tuple(np.shape(g)), tuple(np.shape(w))
        gd, wd = _dtype(g), _dtype(w)
        if gs != ws or gd != wd:
            raise ValueError(f"{name}: leaf {jax.tree_util.keystr(path)} does not match {what}: "
                             f"expected {wd}{ws}, got {gd}{gs}")


def _dtype(x: Any):
    d = getattr(x, "dtype", None)
    return np.asarray(x).dtype if d is None else d


_MODEL_OPTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_model_options(tx: Any, **options: Any) -> Any:
    """Record the model options (``activation``, ``many_to_many``, ``loss``) a transformation
    was built for, so that [`admm_jax.train.fit`][] and [`admm_jax.adapt_flax_rnn`][] can
    check them against the model; returns ``tx``."""
    _MODEL_OPTIONS[tx.update] = dict(options)
    return tx


def model_options(tx: Any) -> dict[str, Any] | None:
    """The options recorded by `register_model_options` for ``tx`` (else ``None``)."""
    try:
        return _MODEL_OPTIONS.get(tx.update)
    except (AttributeError, TypeError):
        return None
