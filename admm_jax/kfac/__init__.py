"""Time-shared Kronecker-factored curvature (K-FAC) for any Flax recurrent model.

[scale_by_kfac][admm_jax.scale_by_kfac] is the pipeline (statistics from one tapped backward
pass, running-average factors, cached damped inverses, the direction);
[admm_kfac][admm_jax.admm_kfac] and [admm_preconditioned][admm_jax.admm_preconditioned] are
its named methods, ``optax.chain`` s with optax's weight decay and learning rate.
"""

from admm_jax.kfac.alias import admm_kfac, admm_preconditioned
from admm_jax.kfac.transform import KFACDiagnostics, KFACState, scale_by_kfac
from admm_jax.kfac.walk import UnsupportedModelError

__all__ = ["KFACDiagnostics", "KFACState", "UnsupportedModelError", "admm_kfac",
           "admm_preconditioned", "scale_by_kfac"]
