"""The dtype a method computes in."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np


def compute_dtype(*values: Any) -> np.dtype:
    """The widest dtype of ``values`` (arrays, ``jax.ShapeDtypeStruct``s, dtypes or Python
    numbers), and at least float32: bfloat16 and float16 weights are computed in float32 (no
    low-precision solves, sums or norms), float64 (with ``jax_enable_x64``) stays float64.

    Examples:
      >>> import jax.numpy as jnp
      >>> compute_dtype(jnp.zeros(2, jnp.bfloat16)), compute_dtype(jnp.int32)
      (dtype('float32'), dtype('float32'))
    """
    return jnp.result_type(jnp.float32, *(_dtype(v) for v in values))


def _dtype(v: Any) -> np.dtype:
    if isinstance(v, np.dtype | type):
        return np.dtype(v)
    d = getattr(v, "dtype", None)
    return jnp.asarray(v).dtype if d is None else d
