"""Training: one loop for every optimizer, its history, callbacks and losses."""

from admm_jax.train import losses
from admm_jax.train.callbacks import (
    Callback,
    Checkpoint,
    ProgressBar,
    Schedule,
    load_checkpoint,
)
from admm_jax.train.fit import Loop, evaluate, fit, make_train_step
from admm_jax.train.history import History

__all__ = [
    "Callback",
    "Checkpoint",
    "History",
    "Loop",
    "ProgressBar",
    "Schedule",
    "evaluate",
    "fit",
    "load_checkpoint",
    "losses",
    "make_train_step",
]
