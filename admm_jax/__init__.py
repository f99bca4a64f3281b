"""admm_jax: train recurrent networks beyond plain backprop.

ADMMiRNN (ADMM on the unfolded RNN) as an optax transformation, beside the methods it is
compared with: NovoGrad, random-bases descent and h-detach LSTM training.
"""

from admm_jax import data, optimizers, train
from admm_jax.admm import ADMMDiagnostics, ADMMiRNNState, admmirnn
from admm_jax.models import ElmanRNN, elman_apply, elman_trace
from admm_jax.train import History, fit

__version__ = "0.1.0"

__all__ = [
    "ADMMDiagnostics",
    "ADMMiRNNState",
    "ElmanRNN",
    "History",
    "admmirnn",
    "data",
    "elman_apply",
    "elman_trace",
    "fit",
    "optimizers",
    "train",
]
