"""Argument checks shared by the public functions: each error names the argument, what was
expected and what was received.

Shape and type checks are cheap and may run at trace time; value checks (finite data, labels in
range) read concrete arrays, so they run only where data enters from the host (:func:`fit`),
never inside a jitted step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np


def _describe(v: Any) -> str:
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return f"{v.dtype}{tuple(v.shape)}"
    return repr(v)


def positive_int(name: str, v: Any, *, allow_none: bool = False) -> None:
    """``v`` is an int ``>= 1`` (bools are rejected)."""
    if v is None and allow_none:
        return
    if not isinstance(v, int | np.integer) or isinstance(v, bool | np.bool_) or v < 1:
        raise ValueError(f"{name}: expected a positive int{' or None' if allow_none else ''}, "
                         f"got {v!r}")


def positive_number(name: str, v: Any, *, allow_none: bool = False) -> None:
    """``v`` is a finite real number ``> 0``."""
    if v is None and allow_none:
        return
    ok = (isinstance(v, int | float | np.integer | np.floating)
          and not isinstance(v, bool | np.bool_) and math.isfinite(v) and v > 0)
    if not ok:
        raise ValueError(f"{name}: expected a finite number > 0{' or None' if allow_none else ''}"
                         f", got {v!r}")


def nonnegative_number(name: str, v: Any) -> None:
    """``v`` is a finite real number ``>= 0``."""
    ok = (isinstance(v, int | float | np.integer | np.floating)
          and not isinstance(v, bool | np.bool_) and math.isfinite(v) and v >= 0)
    if not ok:
        raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")


def learning_rate(name: str, v: Any) -> None:
    """A learning rate: a finite number ``> 0`` or a schedule (a callable)."""
    if callable(v):
        return
    if hasattr(v, "shape") and np.shape(v) == () and not isinstance(v, jax.core.Tracer):
        v = float(v)
    positive_number(name, v)


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

    ``want`` may hold arrays or ``jax.ShapeDtypeStruct`` s (e.g. from ``jax.eval_shape``).
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
