"""Training: one loop for every optimizer, its history, callbacks and losses."""

from admm_jax.train import losses
from admm_jax.train.callbacks import Callback, Loop, ModelKwargSchedule, ProgressBar
from admm_jax.train.checkpoint import Checkpoint, Restored, checkpoint_steps, load_checkpoint
from admm_jax.train.fit import Evaluation, fit
from admm_jax.train.history import History
from admm_jax.train.trainer import DivergenceError, Trainer, evaluate, make_train_step

__all__ = [
    "Callback",
    "Checkpoint",
    "DivergenceError",
    "Evaluation",
    "History",
    "Loop",
    "ProgressBar",
    "Restored",
    "Trainer",
    "ModelKwargSchedule",
    "checkpoint_steps",
    "evaluate",
    "fit",
    "load_checkpoint",
    "losses",
    "make_train_step",
]
