"""ADMMiRNN: the splitting, its blocks, and the optax transformation."""

from admm_jax.admm import blocks
from admm_jax.admm.admmirnn import ADMMDiagnostics, ADMMiRNNState, admmirnn
from admm_jax.admm.problem import (
    ADMMConfig,
    Auxiliaries,
    Duals,
    Penalties,
    Residuals,
    augmented_lagrangian,
    residuals,
)
from admm_jax.admm.retry import (
    IncreaseRhoDiagnostics,
    IncreaseRhoState,
    increase_rho_on_divergence,
)

__all__ = [
    "ADMMConfig",
    "ADMMDiagnostics",
    "ADMMiRNNState",
    "Auxiliaries",
    "Duals",
    "IncreaseRhoDiagnostics",
    "IncreaseRhoState",
    "Penalties",
    "Residuals",
    "admmirnn",
    "augmented_lagrangian",
    "blocks",
    "increase_rho_on_divergence",
    "residuals",
]
