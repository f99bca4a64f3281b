"""ADMMiRNN: the splitting, its blocks, and the optax transformation."""

from admm_jax.admm import blocks
from admm_jax.admm.admmirnn import ADMMDiagnostics, ADMMiRNNState, admmirnn
from admm_jax.admm.kfac import ADMMKFACState, admm_kfac
from admm_jax.admm.preconditioned import ADMMPreconditionedState, admm_preconditioned
from admm_jax.admm.problem import (
    ADMMConfig,
    Auxiliaries,
    Duals,
    Penalties,
    Residuals,
    augmented_lagrangian,
    residuals,
)

__all__ = [
    "ADMMConfig",
    "ADMMDiagnostics",
    "ADMMiRNNState",
    "ADMMKFACState",
    "ADMMPreconditionedState",
    "Auxiliaries",
    "Duals",
    "Penalties",
    "Residuals",
    "admm_kfac",
    "admm_preconditioned",
    "admmirnn",
    "augmented_lagrangian",
    "blocks",
    "residuals",
]
