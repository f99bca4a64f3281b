"""Former home of the Elman split (now :mod:`admm_jax.layouts`), kept only as an alias.

``split_params`` is :func:`admm_jax.layouts.split_elman`; ``benchmarks/admm_search.py`` still
imports it from here. To be deleted once that caller imports :mod:`admm_jax.layouts`.
"""

from admm_jax.layouts import split_elman as split_params

__all__ = ["split_params"]
