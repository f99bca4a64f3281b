"""Write the Colab notebooks of this folder from the cell sources below (outputs stripped).

The committed ``.ipynb`` files are what users open; this script only keeps their shared first
cells identical. Run ``python notebooks/make_notebooks.py`` after editing a cell here.
"""

from __future__ import annotations

import pathlib

import nbformat

HERE = pathlib.Path(__file__).resolve().parent

INSTALL = '''\
# On Colab: install admm_jax from its git repository (set the URL of your copy here).
import importlib.util
import subprocess
import sys

ADMM_JAX_REPO = "git+https://github.com/YOUR-ORG/admm_jax.git"

if importlib.util.find_spec("google.colab") is not None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    f"admm-jax[data] @ {ADMM_JAX_REPO}"], check=True)'''

SETTINGS = '''\
import os

# ADMM_JAX_NOTEBOOK_BUDGET=small runs in well under a minute on a laptop CPU (CI uses it);
# the default "full" budget gives meaningful curves (minutes).
SMALL = os.environ.get("ADMM_JAX_NOTEBOOK_BUDGET", "full") == "small"
# Data: $ADMM_JAX_DATA if set, else admm_jax.data's default folders; when nothing is found
# (e.g. on Colab) the raw files are downloaded from their canonical mirrors and checksummed.
DATA_DIR = os.environ.get("ADMM_JAX_DATA")
print("budget:", "small" if SMALL else "full", "| data:", DATA_DIR or "default / download")'''


def notebook(title: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    nb.cells = [nbformat.v4.new_markdown_cell(title),
                nbformat.v4.new_code_cell(INSTALL), nbformat.v4.new_code_cell(SETTINGS)]
    for kind, src in cells:
        make = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        nb.cells.append(make(src.strip("\n")))
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
    return nb


QUICKSTART = notebook("""\
# admm_jax quickstart: ADMMiRNN vs Adam on row-MNIST, in a Flax loop

Your own Flax model (`nnx.RNN(nnx.SimpleCell)` + `nnx.Linear`), the usual `nnx.Optimizer`
loop, and ADMMiRNN instead of Adam: the two runs below differ in **one line**, the optimizer.
ADMMiRNN trains the RNN by ADMM on its unfolded form (no backpropagation through time); it
ignores `grads` (pass `None` or the gradients you have) and takes the batch as `inputs=`,
`targets=` and, for its per-sample multipliers, `indices=`.""", [
    ("code", '''
import time

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import admm_jax
from admm_jax import data

N_TRAIN, N_TEST, HIDDEN, EPOCHS, BATCH = (
    (512, 512, 32, 2, 128) if SMALL else (10_000, 10_000, 128, 20, 128))
x_train, y_train = data.mnist("train", layout="rows", data_dir=DATA_DIR)  # [60000, 28, 28]
x_test, y_test = data.mnist("test", layout="rows", data_dir=DATA_DIR)
x_train, y_train = x_train[:N_TRAIN], y_train[:N_TRAIN]
x_test, y_test = x_test[:N_TEST], y_test[:N_TEST]
print(x_train.shape, y_train.shape, x_test.shape)
'''),
    ("md", "A plain Flax model: an Elman RNN read out at the last row."),
    ("code", '''
class RowRNN(nnx.Module):
    def __init__(self, rngs):
        self.rnn = nnx.RNN(nnx.SimpleCell(28, HIDDEN, rngs=rngs))
        self.head = nnx.Linear(HIDDEN, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(self.rnn(x)[:, -1])


print(admm_jax.flax_cell_options(RowRNN(nnx.Rngs(0)).rnn))  # tanh, not residual: supported
'''),
    ("md", """\
The training loop. `make_tx` is the only thing that changes between the two runs:

```python
tx = optax.adam(1e-3)
tx = admm_jax.adapt_flax_rnn(admm_jax.admmirnn())
```

`adapt_flax_rnn` maps the Flax parameters (kernels `[in, out]`) to ADMMiRNN's `U, W, b, V, c`
and the trained weights back, exactly. ADMMiRNN does not use the gradient computed in
`train_step` (it is kept only so that the two runs share the loop); to skip computing it,
call `optimizer.update(model, None, inputs=x, targets=y, indices=idx)`."""),
    ("code", '''
def run(make_tx, seed=0):
    model = RowRNN(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y, idx):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, inputs=x, targets=y, indices=idx)
        return loss

    @nnx.jit
    def accuracy(model, x, y):
        return jnp.mean(jnp.argmax(model(x), -1) == y)

    history = {"step_loss": [], "test_acc": [float(accuracy(model, x_test, y_test))],
               "seconds": [0.0]}
    elapsed = 0.0
    for epoch in range(EPOCHS):
        start = time.perf_counter()
        for b in data.batches(x_train, y_train, batch_size=BATCH, seed=0,
                              epochs=epoch + 1, start=(epoch, 0)):
            history["step_loss"].append(float(train_step(model, optimizer, *b.data,
                                                         b.indices)))
        elapsed += time.perf_counter() - start
        history["seconds"].append(elapsed)
        history["test_acc"].append(float(accuracy(model, x_test, y_test)))
    return model, history


runs = {
    "Adam 1e-3": run(lambda: optax.adam(1e-3)),
    "ADMMiRNN": run(lambda: admm_jax.adapt_flax_rnn(
        admm_jax.admmirnn())),
}
for name, (_, h) in runs.items():
    print(f"{name:10s} test accuracy per epoch: {np.round(h['test_acc'], 3)}"
          f"  ({h['seconds'][-1]:.1f} s incl. compile)")
'''),
    ("code", '''
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
for name, (_, h) in runs.items():
    ax1.plot(h["step_loss"], label=name, lw=0.8)
    ax2.plot(range(len(h["test_acc"])), h["test_acc"], "o-", label=name)
ax1.set(xlabel="step", ylabel="training loss (batch, before the step)", yscale="log")
ax2.set(xlabel="epoch", ylabel="test accuracy")
ax1.legend()
ax2.legend()
plt.tight_layout()
plt.show()
'''),
    ("md", """\
The trained ADMMiRNN weights are ordinary Flax parameters of `RowRNN` (checkpoint them, keep
training them with Adam, ...). `admm_jax.elman_from_flax` gives the same weights in
ADMMiRNN's layout, where `admm_jax.elman_apply` computes the same logits:"""),
    ("code", '''
model, _ = runs["ADMMiRNN"]
p = admm_jax.elman_from_flax(nnx.state(model, nnx.Param))
print({k: v.shape for k, v in p.items()})
print("max |Flax - elman_apply|:",
      float(jnp.max(jnp.abs(model(x_test[:256]) - admm_jax.elman_apply(p, x_test[:256])))))
'''),
    ("md", """\
ADMMiRNN learns slowly at first: one backward sweep attenuates the loss signal per time step,
and the per-sample multipliers carry it one step further back per visit of a sample. On the
full training set it passes 0.85 test accuracy after about 150 epochs (see the README);
Adam with BPTT is far ahead per second. Linen users: `admm_jax.apply_gradients(state,
inputs=x, targets=y, indices=idx)` on a `TrainState` (Linen's own `apply_gradients` does not
forward extra arguments)."""),
])


HDETACH = notebook("""\
# Long sequences: h-detach on the copying task

h-detach (Arpit et al., ICLR 2019) blocks, with probability `p` per time step, the gradient
through `h_{t-1}` in an LSTM, so the cell-state path dominates the gradient and long-range
dependencies are learnt faster. The copying task: memorise 10 symbols, wait `T` steps, then
reproduce them. Accuracy is measured on the last 10 steps (chance: 1/8).""", [
    ("code", '''
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax
from flax import nnx

import admm_jax
from admm_jax import data

T, HIDDEN, N_TRAIN, BATCH, STEPS = (
    (10, 32, 512, 64, 30) if SMALL else (100, 128, 20_000, 100, 2000))
x, y = data.copying(T=T, n=N_TRAIN, seed=0)        # [n, T+20, 1], [n, T+20], 9 classes
x_val, y_val = data.copying(T=T, n=1000, seed=1)
print(x.shape, y.shape, "first sample targets:", y[0, -10:], "inputs:", x[0, :10, 0])
'''),
    ("code", '''
def run(p_detach, seed=0):
    model = admm_jax.LSTM(1, HIDDEN, 9, rngs=nnx.Rngs(seed), many_to_many=True,
                          p_detach=p_detach)
    optimizer = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0),
                                                 optax.adam(1e-3)), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y, key):
        def loss_fn(model):
            logits = model(x, key=key)  # the detach mask is drawn from the key
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def last10_accuracy(model, x, y):
        return jnp.mean(jnp.argmax(model(x)[:, -10:], -1) == y[:, -10:])

    losses, accs = [], []
    batches = data.batches(x, y, batch_size=BATCH, seed=seed, epochs=None)
    for step, b in zip(range(STEPS), batches, strict=False):
        losses.append(float(train_step(model, optimizer, *b.data,
                                       jax.random.fold_in(jax.random.key(seed), step))))
        if step % max(1, STEPS // 10) == 0 or step == STEPS - 1:
            accs.append((step, float(last10_accuracy(model, x_val, y_val))))
    return losses, accs


start = time.perf_counter()
results = {f"p_detach={p}": run(p) for p in (0.0, 0.5)}
print(f"{time.perf_counter() - start:.1f} s")
for name, (losses, accs) in results.items():
    print(f"{name}: final loss {losses[-1]:.3f}, last-10 accuracy {accs[-1][1]:.3f}")
'''),
    ("code", '''
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
for name, (losses, accs) in results.items():
    ax1.plot(losses, label=name, lw=0.8)
    ax2.plot(*zip(*accs, strict=True), "o-", label=name)
ax1.set(xlabel="step", ylabel="training loss", yscale="log")
ax2.set(xlabel="step", ylabel="accuracy on the 10 recalled symbols")
ax1.legend()
ax2.legend()
plt.tight_layout()
plt.show()
'''),
    ("md", """\
The small budget only shows that the loop runs. Even at T=100 and 150 iterations
(`benchmarks/hdetach.py copying`, 2 seeds per method) both variants are still on the
blank-prediction plateau (0 % of the symbols recalled, loss 2.2 -> 0.47); the paper trains
for thousands of iterations before h-detach pulls ahead."""),
])


RBD = notebook("""\
# Random-bases descent vs SGD

Random-bases descent (Gressmann, Eaton, Luk, NeurIPS 2020) projects the gradient on a fresh
random `d`-dimensional subspace at every step and moves only inside it. The basis is
regenerated block by block from a counter-based key and never stored. Fixed projection
descent (`redraw=False`) keeps one subspace for the whole run. Model: a fully connected
784-H-10 network on MNIST.""", [
    ("code", '''
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax
from flax import nnx

import admm_jax
from admm_jax import data

N_TRAIN, HIDDEN, DIM, STEPS, BATCH = (
    (2000, 32, 50, 150, 32) if SMALL else (50_000, 128, 250, 3000, 32))
x, y = data.mnist("train", layout="pixels", data_dir=DATA_DIR)  # [60000, 784, 1]
x = x.reshape(len(x), -1)
x_train, y_train = x[:N_TRAIN], y[:N_TRAIN]
x_val, y_val = x[50_000:52_000], y[50_000:52_000]
print(x_train.shape, x_val.shape)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(784, HIDDEN, rngs=rngs)
        self.l2 = nnx.Linear(HIDDEN, 10, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


print("parameters:", sum(p.size for p in jax.tree.leaves(nnx.state(MLP(nnx.Rngs(0)), nnx.Param))))
'''),
    ("code", '''
def run(tx, seed=0):
    model = MLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def accuracy(model, x, y):
        return jnp.mean(jnp.argmax(model(x), -1) == y)

    curve, start = [], time.perf_counter()
    batches = data.batches(x_train, y_train, batch_size=BATCH, seed=seed, epochs=None)
    for step, b in zip(range(STEPS), batches, strict=False):
        train_step(model, optimizer, *b.data)
        if step % max(1, STEPS // 15) == 0 or step == STEPS - 1:
            curve.append((step, float(accuracy(model, x_val, y_val))))
    return curve, time.perf_counter() - start


runs = {
    "SGD 0.1": run(optax.sgd(0.1)),
    f"RBD d={DIM}": run(admm_jax.random_bases(1.0, dim=DIM, seed=0, rng="hash")),
    f"FPD d={DIM}": run(admm_jax.random_bases(1.0, dim=DIM, seed=0, rng="hash", redraw=False)),
}
for name, (curve, secs) in runs.items():
    print(f"{name:10s} validation accuracy {curve[-1][1]:.3f}  ({secs:.1f} s incl. compile)")
'''),
    ("code", '''
plt.figure(figsize=(6, 3.5))
for name, (curve, _) in runs.items():
    plt.plot(*zip(*curve, strict=True), "o-", label=name)
plt.xlabel("step")
plt.ylabel("validation accuracy")
plt.legend()
plt.tight_layout()
plt.show()
'''),
    ("md", """\
RBD uses `d` directional derivatives per step instead of the full gradient, so it needs many
more steps than SGD. Redrawing the subspace (RBD) beats a fixed one (FPD) once training runs
long enough: `benchmarks/random_bases.py` (0.25 epoch, d=250) measured 70.2 % RBD, 58.4 % FPD,
91.7 % SGD; the paper (100 epochs) 93.89 / 80 / 98.27 %."""),
])


NOVOGRAD = notebook("""\
# NovoGrad vs Adam: optimizer memory and accuracy

NovoGrad (Ginsburg et al., 2019) keeps Adam's first moment per weight but only **one second
moment per layer**, so its state is about half of Adam's. Both train the same Elman RNN on
row-MNIST here; we compare the bytes of their optimizer states and the test accuracy.""", [
    ("code", '''
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax
from flax import nnx

import admm_jax
from admm_jax import data

N_TRAIN, N_TEST, HIDDEN, EPOCHS, BATCH = (
    (1024, 1000, 32, 2, 64) if SMALL else (60_000, 10_000, 128, 5, 128))
x_train, y_train = data.mnist("train", layout="rows", data_dir=DATA_DIR)
x_test, y_test = data.mnist("test", layout="rows", data_dir=DATA_DIR)
x_train, y_train = x_train[:N_TRAIN], y_train[:N_TRAIN]
x_test, y_test = x_test[:N_TEST], y_test[:N_TEST]


def state_bytes(tree):
    """Bytes of every array in an optimizer state (sum of leaf nbytes)."""
    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree) if hasattr(leaf, "nbytes"))
'''),
    ("code", '''
def run(tx, seed=0):
    model = admm_jax.ElmanRNN(28, HIDDEN, 10, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def accuracy(model, x, y):
        return jnp.mean(jnp.argmax(model(x), -1) == y)

    accs, start = [float(accuracy(model, x_test, y_test))], time.perf_counter()
    for epoch in range(EPOCHS):
        for b in data.batches(x_train, y_train, batch_size=BATCH, seed=seed,
                              epochs=epoch + 1, start=(epoch, 0)):
            train_step(model, optimizer, *b.data)
        accs.append(float(accuracy(model, x_test, y_test)))
    params = nnx.state(model, nnx.Param)
    return {"accuracy": accs, "seconds": time.perf_counter() - start,
            "state_bytes": state_bytes(nnx.state(optimizer.opt_state)),
            "param_bytes": state_bytes(params)}


runs = {
    "Adam 1e-3": run(optax.adam(1e-3)),
    "NovoGrad 1e-2": run(admm_jax.novograd(1e-2)),
    "NovoGrad 1e-2, 2 layers": run(admm_jax.novograd(
        1e-2, layers=lambda p: {k: ("rec" if k in "UWb" else "out") for k in p})),
}
print(f"{'optimizer':25s} {'state bytes':>12s} {'x params':>9s} {'test acc':>9s}")
for name, r in runs.items():
    print(f"{name:25s} {r['state_bytes']:12,d} {r['state_bytes'] / r['param_bytes']:9.2f} "
          f"{r['accuracy'][-1]:9.3f}")
'''),
    ("code", '''
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
names = list(runs)
ax1.bar(names, [runs[n]["state_bytes"] / 1024 for n in names])
ax1.set(ylabel="optimizer state (KiB)")
ax1.tick_params(axis="x", labelrotation=15)
for n in names:
    ax2.plot(runs[n]["accuracy"], "o-", label=n)
ax2.set(xlabel="epoch", ylabel="test accuracy")
ax2.legend()
plt.tight_layout()
plt.show()
'''),
    ("md", """\
Adam stores two floats per weight (about 2x the parameters); NovoGrad stores one per weight
plus one scalar per layer (about 1x). The accuracies are for the budget above; NovoGrad's
learning rate is larger because its update is normalised per layer."""),
])

NOTEBOOKS = {
    "01_quickstart_admmirnn_flax.ipynb": QUICKSTART,
    "02_hdetach_copying.ipynb": HDETACH,
    "03_random_bases_vs_sgd.ipynb": RBD,
    "04_novograd_vs_adam.ipynb": NOVOGRAD,
}

if __name__ == "__main__":
    for name, nb in NOTEBOOKS.items():
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)
