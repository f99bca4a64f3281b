"""Count compilations by counting traces: jit's private ``_cache_size()`` read 0 after three
calls in two tests under xdist (an order-dependent reading of the C++ fast-path cache), so the
no-recompilation tests count what they mean."""

from __future__ import annotations

import jax


class counted_jit:  # noqa: N801 - used as a decorator, like jax.jit
    """``jax.jit(fn)`` that counts its traces in ``.traces`` (one per compilation)."""

    def __init__(self, fn, **jit_kwargs):
        self.fn = fn
        self.traces = 0
        self.jitted = jax.jit(self._traced, **jit_kwargs)

    def _traced(self, *args, **kwargs):
        self.traces += 1
        return self.fn(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)
