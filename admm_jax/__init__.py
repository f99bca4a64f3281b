"""admm_jax: train recurrent networks beyond plain backprop.

ADMMiRNN (ADMM on the unfolded RNN) as an optax transformation, beside the methods it is
compared with: NovoGrad, random-bases descent and h-detach LSTM training.
"""

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

__version__ = "0.1.0"

__all__ = [
    "LSTM",
    "CellPathGradNorms",
    "ElmanRNN",
    "cell_path_grad_norms",
    "cell_path_grads",
    "elman_apply",
    "elman_trace",
    "lstm_apply",
    "lstm_scan",
    "sample_detach_mask",
]
