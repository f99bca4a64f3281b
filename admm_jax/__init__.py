"""admm_jax: train recurrent networks beyond plain backprop.

ADMMiRNN (ADMM on the unfolded RNN) as an optax transformation, beside the methods it is
compared with: NovoGrad, random-bases descent and h-detach LSTM training.
"""

from admm_jax import data, optimizers, train
from admm_jax.admm import ADMMDiagnostics, ADMMiRNNState, admmirnn
from admm_jax.models import (
    LSTM,
    CellPathGradNorms,
    ElmanRNN,
    cell_path_grad_norms,
    cell_path_grads,
    elman_apply,
    elman_trace,
    lstm_apply,
    lstm_scan,
    sample_detach_mask,
)
from admm_jax.optim import (
    NovoGradState,
    RandomBasesState,
    novograd,
    random_bases,
    random_bases_vector,
    scale_by_novograd,
    scale_by_random_bases,
)
from admm_jax.train import DivergenceError, History, fit

__version__ = "0.1.0"

__all__ = [
    "ADMMDiagnostics",
    "ADMMiRNNState",
    "CellPathGradNorms",
    "DivergenceError",
    "ElmanRNN",
    "History",
    "LSTM",
    "NovoGradState",
    "RandomBasesState",
    "admmirnn",
    "cell_path_grad_norms",
    "cell_path_grads",
    "data",
    "elman_apply",
    "elman_trace",
    "fit",
    "lstm_apply",
    "lstm_scan",
    "novograd",
    "optimizers",
    "random_bases",
    "random_bases_vector",
    "sample_detach_mask",
    "scale_by_novograd",
    "scale_by_random_bases",
    "train",
]
