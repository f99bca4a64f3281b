r"""ADMMiRNN beyond memory: per-sample multipliers in host memory, and the memory formula.

The default ``sweep="coupled"`` keeps no per-sample state: its multipliers live within one
call, and its memory is the batch working set below. The backward and parallel sweeps in
mini-batch mode (``auxiliaries="reset"``) rebuild the auxiliaries from a forward pass every call
too, but persist per sample the multipliers
``lam1, lam2 [T, H]`` and ``lam3 [|S|, C]``; for full row-MNIST at ``H = 128`` they are
60000 x 28 x 128 x 2 (+ 60000 x 10) float32 = 1.72 GB. :class:`HostDuals` keeps them in host
(numpy) memory and moves only the batch's slice to the device around the jitted step, so the
device holds ``O(B)`` instead of ``O(N)``.

Memory, in bytes, with ``s`` bytes per float, ``S = T`` (many-to-many) or ``1``,
``P = H(D + H + 1) + C(H + 1)`` parameters and ``m = 2 T H + S C`` floats per sample
(:func:`admm_memory_bytes` evaluates it):

==========================  ====================================  ============================
what                        where                                 bytes
==========================  ====================================  ============================
per-sample multipliers      device (``num_samples=N``) or host    ``N m s`` (not coupled)
                            (:class:`HostDuals`)
persisted auxiliaries       device (``auxiliaries="persist"``)    ``N (m s + 1)``
batch working set           device, per call                      ``~ k B m s + B T D s``
parameters, Gram matrices   device                                ``~ 4 P s + (D+H+1)^2 s``
==========================  ====================================  ============================

``k`` (auxiliaries, their multipliers, the sweep's temporaries and the forward passes) was
measured from XLA's compiled memory analysis (:data:`WORKING_SET_FACTOR`): ``k ~ 8`` at float32
for the backward sweep on row-MNIST (``benchmarks/memory.py admm``), ``k ~ 6-7`` for the
coupled one (``k ~ 10.5`` with XLA's breadth-first CPU scheduler, which the package turns off:
``admm_jax/_xla.py``). Full-batch backward-sweep ADMM on all of row-MNIST therefore needs
``~ (2 + k) N m s ~ 16 GB`` of device memory; mini-batch with host multipliers ``~ k B m s``
(a few MB at ``B = 128``) on the device plus ``N m s`` on the host.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from admm_jax import _validation as checks
from admm_jax.admm.problem import Duals
from admm_jax.layouts import split_elman

WORKING_SET_FACTOR = {"coupled": 7.0, "backward": 8.0, "parallel": 8.0}
"""``k`` above per sweep: XLA's compiled memory analysis of one update (float32, the
depth-first CPU scheduler the package selects). Backward sweep: ``benchmarks/memory.py admm``
(row-MNIST); coupled: 6.9 at row-MNIST sizes (H = 32, B = 128) and 5.8 for a many-to-many
text batch (T = 25, C = 60, B = 32), checked in ``tests/admm/test_streaming.py`` (10.6 and
10.3 with XLA's breadth-first scheduler)."""


class HostDuals:
    r"""Per-sample ADMMiRNN multipliers held in host memory, moved per batch.

    For the sweeps that keep per-sample multipliers (``sweep="backward"`` or ``"parallel"``;
    the default ``"coupled"`` keeps none). Use with an :func:`~admm_jax.admmirnn` whose state
    is sized for ONE batch (``num_samples=batch_size``) and called without ``indices``: the
    state then holds exactly the batch's multipliers, which :meth:`load` puts in and
    :meth:`save` takes out::

        tx = admm_jax.admmirnn(num_samples=batch_size, seq_len=T, sweep="backward")
        store = HostDuals.like(params, num_samples=N, seq_len=T)
        for batch in batches:                      # fixed batch size (drop the remainder)
            state = store.load(state, batch.indices)
            params, state = step(params, state, *batch.data)   # jitted, indices=None
            store.save(state, batch.indices)

    This is the same algorithm as per-sample multipliers on the device
    (``admmirnn(num_samples=N, ...)`` with ``indices=``), with ``N m s`` bytes moved from
    device to host (see the module docstring) and two host<->device copies of
    ``B m s`` bytes per step.

    Args:
      num_samples, seq_len, hidden, classes: ``N, T, H, C``.
      many_to_many: targets at every step (``lam3`` is ``[N, T, C]``, else ``[N, 1, C]``).
      dtype: numpy dtype of the stored multipliers.

    Examples:
      >>> import numpy as np
      >>> store = HostDuals(10, 4, 3, 2)
      >>> store.lam1.shape, store.lam3.shape, store.nbytes
      ((10, 4, 3), (10, 1, 2), 1040)
    """

    def __init__(self, num_samples: int, seq_len: int, hidden: int, classes: int, *,
                 many_to_many: bool = False, dtype: Any = np.float32):
        for name, v in (("num_samples", num_samples), ("seq_len", seq_len), ("hidden", hidden),
                        ("classes", classes)):
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        out_steps = seq_len if many_to_many else 1
        self.lam1 = np.zeros((num_samples, seq_len, hidden), dtype)
        self.lam2 = np.zeros((num_samples, seq_len, hidden), dtype)
        self.lam3 = np.zeros((num_samples, out_steps, classes), dtype)

    @classmethod
    def like(cls, params: Any, num_samples: int, seq_len: int, *,
             many_to_many: bool = False) -> HostDuals:
        """Storage for ``params``' hidden size, classes and dtype."""
        p, _, _ = split_elman(params)
        return cls(num_samples, seq_len, p["W"].shape[0], p["V"].shape[0],
                   many_to_many=many_to_many, dtype=np.dtype(p["W"].dtype))

    @property
    def nbytes(self) -> int:
        """Host bytes held: ``N (2 T H + |S| C) s``."""
        return self.lam1.nbytes + self.lam2.nbytes + self.lam3.nbytes

    def _check(self, indices) -> np.ndarray:
        # the same rule as admmirnn's indices=: distinct positions in [0, N), 1-D ints (a
        # repeated index would lose all but one of its rows' updates in scatter)
        return checks.indices("indices", np.asarray(indices), self.lam1.shape[0])

    def gather(self, indices, sharding: jax.sharding.Sharding | None = None) -> Duals:
        """The batch's multipliers as device arrays (placed with ``sharding`` if given)."""
        idx = self._check(indices)
        return Duals(*(jax.device_put(lam[idx], sharding) for lam in
                       (self.lam1, self.lam2, self.lam3)))

    def scatter(self, indices, duals: Duals) -> None:
        """Write the batch's multipliers back to host memory."""
        idx = self._check(indices)
        for store, lam in zip((self.lam1, self.lam2, self.lam3), duals, strict=True):
            lam = np.asarray(jax.device_get(lam))
            want = (idx.size, *store.shape[1:])
            if lam.shape != want:
                raise ValueError(f"duals: expected shape {want} for {idx.size} indices, "
                                 f"got {lam.shape}")
            store[idx] = lam

    def load(self, state, indices, sharding: jax.sharding.Sharding | None = None):
        """``state`` (an :class:`~admm_jax.ADMMiRNNState` sized for one batch) with the
        batch's multipliers."""
        idx = self._check(indices)
        if state.duals.lam1.shape[0] != idx.size:
            raise ValueError(f"state: sized for {state.duals.lam1.shape[0]} samples "
                             f"(admmirnn(num_samples=...)) but the batch has {idx.size}; "
                             "use admmirnn(num_samples=batch_size) and a fixed batch size")
        return state._replace(duals=self.gather(idx, sharding))

    def save(self, state, indices) -> None:
        """Store the multipliers of ``state`` (after the step) for the batch's samples."""
        self.scatter(indices, state.duals)


def admm_memory_bytes(num_samples: int, seq_len: int, hidden: int, classes: int, *,
                      input_dim: int, batch_size: int | None = None,
                      many_to_many: bool = False, sweep: str = "coupled",
                      auxiliaries: str = "reset", host_duals: bool = False, itemsize: int = 4,
                      working_set_factor: float | None = None) -> dict[str, int]:
    r"""Predicted memory of ADMMiRNN, in bytes (the table in :mod:`admm_jax.admm.streaming`).

    With ``m = 2 T H + |S| C`` floats per sample and ``B = batch_size`` (default ``N``,
    full batch):

    * ``per_sample_state``: none for ``sweep="coupled"`` (its multipliers live within one
      call); else ``N m s`` (multipliers) ``+ N (m s + 1)`` with persisted auxiliaries (on
      the host with ``host_duals``, multipliers only);
    * ``batch_working_set = k B m s + B T D s`` (``k = working_set_factor``, default
      :data:`WORKING_SET_FACTOR` of the sweep);
    * ``device = batch_working_set + device part of per_sample_state + parameters``.

    Args:
      num_samples, seq_len, hidden, classes: ``N, T, H, C``.
      input_dim: ``D`` (the vocabulary for token inputs).
      batch_size: ``B``; ``None``: full batch.
      many_to_many: ``|S| = T`` instead of 1.
      sweep: ``"coupled"``, ``"backward"`` or ``"parallel"``, as :func:`admm_jax.admmirnn`'s.
      auxiliaries, host_duals: as for :func:`admm_jax.admmirnn` and :class:`HostDuals`
        (per-sample sweeps only).
      itemsize: bytes per float.
      working_set_factor: ``k``.

    Returns:
      ``{"device": ..., "host": ..., "per_sample_state": ..., "batch_working_set": ...,
      "parameters": ...}``.

    Raises:
      ValueError: an unknown ``sweep``, or per-sample options with ``sweep="coupled"``.

    Examples:
      >>> m = admm_memory_bytes(60000, 28, 128, 10, input_dim=28, batch_size=128,
      ...                       sweep="backward", host_duals=True)
      >>> round(m["host"] / 1e9, 2), round(m["device"] / 1e6, 1)
      (1.72, 30.2)
      >>> admm_memory_bytes(60000, 28, 128, 10, input_dim=28, batch_size=128)["per_sample_state"]
      0
    """
    checks.one_of("sweep", sweep, tuple(WORKING_SET_FACTOR))
    coupled = sweep == "coupled"
    if coupled and (auxiliaries != "reset" or host_duals):
        raise ValueError("auxiliaries, host_duals: sweep='coupled' keeps no per-sample state")
    n, t, h, c, d = num_samples, seq_len, hidden, classes, input_dim
    b = n if batch_size is None else batch_size
    s = itemsize
    k = WORKING_SET_FACTOR[sweep] if working_set_factor is None else working_set_factor
    m = 2 * t * h + (t if many_to_many else 1) * c
    duals = 0 if coupled else n * m * s
    aux = n * (m * s + 1) if auxiliaries == "persist" else 0
    n_params = h * (d + h + 1) + c * (h + 1)
    params = 4 * n_params * s + (d + h + 1) ** 2 * s
    working = int(k * b * m * s + b * t * d * s)
    device = working + params + aux + (0 if host_duals else duals)
    return {"device": int(device), "host": duals if host_duals else 0,
            "per_sample_state": duals + aux, "batch_working_set": working,
            "parameters": params}


def as_device_duals(store: HostDuals) -> Duals:
    """All stored multipliers as device arrays (to compare with, or switch to, device state)."""
    return Duals(jnp.asarray(store.lam1), jnp.asarray(store.lam2), jnp.asarray(store.lam3))
