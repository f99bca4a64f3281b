"""Training: one loop for every optimizer, its history, callbacks and losses."""

from admm_jax.train import losses
from admm_jax.train.batched import BatchedTrainer
from admm_jax.train.callbacks import Callback, Loop, ModelKwargSchedule, ProgressBar
from admm_jax.train.checkpoint import (
    Checkpoint,
    Restored,
    checkpoint_steps,
    load_checkpoint,
    load_runs,
)
from admm_jax.train.checks import check_forward
from admm_jax.train.fit import fit, fit_batched
from admm_jax.train.history import History
from admm_jax.train.steps import evaluate, make_train_step
from admm_jax.train.trainer import DivergenceError, Evaluation, Stop, Trainer

__all__ = [
    "BatchedTrainer",
    "Callback",
    "Checkpoint",
    "DivergenceError",
    "Evaluation",
    "History",
    "Loop",
    "ProgressBar",
    "Restored",
    "Stop",
    "Trainer",
    "ModelKwargSchedule",
    "check_forward",
    "checkpoint_steps",
    "evaluate",
    "fit",
    "fit_batched",
    "load_checkpoint",
    "load_runs",
    "losses",
    "make_train_step",
]
