"""Training: one loop for every optimizer, its history, callbacks and losses."""

from admm_jax.train import losses
from admm_jax.train.callbacks import Callback, Loop, ModelKwargSchedule, ProgressBar
from admm_jax.train.checkpoint import Checkpoint, Restored, checkpoint_steps, load_checkpoint
from admm_jax.train.checks import check_forward
from admm_jax.train.fit import fit
from admm_jax.train.history import History
from admm_jax.train.steps import evaluate, make_train_step
from admm_jax.train.trainer import DivergenceError, Evaluation, Stop, Trainer

__all__ = [
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
    "load_checkpoint",
    "losses",
    "make_train_step",
]
