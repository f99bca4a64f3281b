"""admm_jax: train recurrent networks beyond plain backprop.

ADMMiRNN (ADMM on the unfolded RNN) as an optax transformation, beside the methods it is
compared with: NovoGrad, random-bases descent and h-detach LSTM training.
"""

from admm_jax.models import ElmanRNN, elman_apply, elman_trace
from admm_jax.optim import (
    NovoGradState,
    RandomBasesState,
    novograd,
    random_bases,
    random_bases_vector,
    scale_by_novograd,
    scale_by_random_bases,
)

__version__ = "0.1.0"

__all__ = [
    "ElmanRNN",
    "NovoGradState",
    "RandomBasesState",
    "elman_apply",
    "elman_trace",
    "novograd",
    "random_bases",
    "random_bases_vector",
    "scale_by_novograd",
    "scale_by_random_bases",
]
