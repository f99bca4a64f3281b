"""Interoperability with Flax: adapters for Flax's own RNN layout, Linen TrainState helpers."""

from admm_jax.interop.flax_rnn import (
    FlaxCellOptions,
    adapt_flax_rnn,
    elman_from_flax,
    elman_to_flax,
    flax_cell_options,
)
from admm_jax.interop.train_state import ExtraArgsTrainState, apply_gradients

__all__ = [
    "ExtraArgsTrainState",
    "FlaxCellOptions",
    "adapt_flax_rnn",
    "apply_gradients",
    "elman_from_flax",
    "elman_to_flax",
    "flax_cell_options",
]
