"""admm_jax: train recurrent networks beyond plain backprop.

ADMMiRNN (ADMM on the unfolded RNN) as an optax transformation, beside the methods it is
compared with: NovoGrad, random-bases descent and h-detach LSTM training.
"""

from admm_jax import data
from admm_jax.admm import ADMMDiagnostics, ADMMiRNNState, admmirnn
from admm_jax.models import ElmanRNN, elman_apply, elman_trace

__version__ = "0.1.0"

__all__ = [
    "ADMMDiagnostics",
    "ADMMiRNNState",
    "ElmanRNN",
    "admmirnn",
    "data",
    "elman_apply",
    "elman_trace",
]
