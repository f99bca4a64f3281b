"""Recurrent models."""

from admm_jax.models.elman import ElmanRNN, elman_apply, elman_trace
from admm_jax.models.hdetach import (
    CellPathGradNorms,
    cell_path_grad_norms,
    cell_path_grads,
    sample_detach_mask,
)
from admm_jax.models.lstm import LSTM, lstm_apply, lstm_scan
from admm_jax.models.stacked import CELLS, StackedRNN

__all__ = [
    "CELLS",
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
    "StackedRNN",
]
