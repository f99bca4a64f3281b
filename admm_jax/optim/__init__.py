"""Optimizers as optax transformations: NovoGrad and random-bases descent."""

from admm_jax.optim.novograd import NovoGradState, novograd, scale_by_novograd
from admm_jax.optim.random_bases import (
    RandomBasesState,
    random_bases,
    random_bases_vector,
    scale_by_random_bases,
)

__all__ = [
    "NovoGradState",
    "RandomBasesState",
    "novograd",
    "random_bases",
    "random_bases_vector",
    "scale_by_novograd",
    "scale_by_random_bases",
]
