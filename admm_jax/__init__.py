"""admm_jax: train recurrent networks beyond plain backprop.

ADMMiRNN (ADMM on the unfolded RNN) and a time-shared K-FAC for any Flax recurrent model as
optax transformations, beside the methods they are compared with: NovoGrad, random-bases
descent and h-detach LSTM training.
"""

# _xla first: it sets an XLA CPU flag before JAX's backend starts (its docstring says why)
from admm_jax import _xla, data, distributed, layouts, optimizers, train  # noqa: F401
from admm_jax.admm import (
    ADMMDiagnostics,
    ADMMiRNNState,
    IncreaseRhoState,
    admmirnn,
    increase_rho_on_divergence,
)
from admm_jax.admm.streaming import HostDuals, admm_memory_bytes
from admm_jax.distributed import (
    collective_stats,
    data_mesh,
    replicate,
    shard_admm_state,
    shard_batch,
)
from admm_jax.interop import (
    ExtraArgsTrainState,
    FlaxCellOptions,
    adapt_flax_rnn,
    apply_gradients,
    elman_from_flax,
    elman_to_flax,
    flax_cell_options,
)
from admm_jax.kfac import (
    KFACDiagnostics,
    KFACState,
    UnsupportedModelError,
    admm_kfac,
    admm_preconditioned,
    scale_by_kfac,
)
from admm_jax.models import (
    LSTM,
    CellPathGradNorms,
    ElmanRNN,
    StackedRNN,
    cell_path_grad_norms,
    cell_path_grads,
    elman_apply,
    elman_trace,
    lstm_apply,
    lstm_scan,
    sample_detach_mask,
)
from admm_jax.nonfinite import reject_nonfinite
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
    "ExtraArgsTrainState",
    "FlaxCellOptions",
    "History",
    "HostDuals",
    "IncreaseRhoState",
    "KFACDiagnostics",
    "KFACState",
    "LSTM",
    "NovoGradState",
    "RandomBasesState",
    "adapt_flax_rnn",
    "admm_memory_bytes",
    "admm_kfac",
    "admm_preconditioned",
    "admmirnn",
    "apply_gradients",
    "cell_path_grad_norms",
    "cell_path_grads",
    "collective_stats",
    "data",
    "data_mesh",
    "distributed",
    "elman_apply",
    "elman_from_flax",
    "elman_to_flax",
    "elman_trace",
    "fit",
    "increase_rho_on_divergence",
    "flax_cell_options",
    "layouts",
    "lstm_apply",
    "lstm_scan",
    "novograd",
    "optimizers",
    "random_bases",
    "random_bases_vector",
    "reject_nonfinite",
    "replicate",
    "sample_detach_mask",
    "scale_by_kfac",
    "scale_by_novograd",
    "scale_by_random_bases",
    "shard_admm_state",
    "shard_batch",
    "StackedRNN",
    "train",
    "UnsupportedModelError",
]
