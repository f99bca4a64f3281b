"""Recurrent models."""

from admm_jax.models.elman import ElmanRNN, elman_apply, elman_trace

__all__ = ["ElmanRNN", "elman_apply", "elman_trace"]
