"""What a training run measured, step by step and evaluation by evaluation, as JSON."""

from __future__ import annotations

import json
import math
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

TABLES = ("steps", "epochs", "evals")


def _encode(v: Any) -> Any:
    """JSON-safe: non-finite floats become ``None`` (strict JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _decode(v: Any) -> Any:
    return math.nan if v is None else v


@dataclass
class History:
    """Columns of measurements of one run.

    steps: one row per training step (``iteration``, ``epoch``, ``seconds`` of that step,
      ``time`` = training seconds so far, ``loss`` and ``accuracy`` of the batch before the
      update, ``grad_norm`` for gradient optimizers, and whatever the method reports in its
      state's ``diagnostics``).
    epochs: one row per finished epoch (means over its steps).
    evals: one row per evaluation (``iteration``, ``epoch``, ``time``, ``loss``, ``accuracy``
      on the evaluation data, by a plain forward pass).
    meta: anything else (optimizer, hyperparameters, compile seconds, ...).

    Every table is a dict of equally long lists. ``time`` counts training steps only:
    compilation and evaluation are excluded (and reported in ``meta``).

    Examples:
      >>> h = History()
      >>> h.append("steps", iteration=1, loss=0.5)
      >>> History.from_json(h.to_json()) == h
      True
    """

    steps: dict[str, list] = field(default_factory=dict)
    epochs: dict[str, list] = field(default_factory=dict)
    evals: dict[str, list] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def append(self, table: str, **row: Any) -> None:
        """Add a row to ``table`` (``"steps"``, ``"epochs"`` or ``"evals"``).

        A column first seen now is back-filled with NaN; a column missing from ``row`` gets NaN.
        """
        if table not in TABLES:
            raise ValueError(f"table: expected one of {TABLES}, got {table!r}")
        t = getattr(self, table)
        n = len(next(iter(t.values()))) if t else 0
        for k in row:
            if k not in t:
                t[k] = [math.nan] * n
        for k, col in t.items():
            v = row.get(k, math.nan)
            col.append(float(v) if hasattr(v, "__float__") and not isinstance(v, int) else v)

    def last(self, table: str, column: str, default: Any = math.nan) -> Any:
        """The latest value of ``column`` in ``table`` (``default`` when empty)."""
        col = getattr(self, table).get(column, [])
        return col[-1] if col else default

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats as ``null``)."""
        out: dict[str, Any] = {
            t: {k: [_encode(v) for v in col] for k, col in getattr(self, t).items()}
            for t in TABLES
        }
        out["meta"] = self.meta
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Inverse of [`to_dict`][admm_jax.train.History.to_dict] (``null`` back to NaN)."""
        unknown = set(d) - {*TABLES, "meta"}
        if unknown:
            raise ValueError(f"d: unexpected keys {sorted(unknown)}; expected {TABLES} and meta")
        tables = {t: {k: [_decode(v) for v in col] for k, col in d.get(t, {}).items()}
                  for t in TABLES}
        return cls(**tables, meta=dict(d.get("meta", {})))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, s: str) -> History:
        return cls.from_dict(json.loads(s))

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write the JSON to ``path`` (parent folders are created); returns the path."""
        p = pathlib.Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_json())
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        return cls.from_json(pathlib.Path(path).read_text())

    def __eq__(self, other: object) -> bool:
        """Equal tables (NaN equals NaN) and meta."""
        if not isinstance(other, History):
            return NotImplemented
        return self.to_dict() == other.to_dict()
