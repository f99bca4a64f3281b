"""Leaf grouping shared by NovoGrad's layers and RBD's compartments."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from admm_jax import ElmanRNN
from admm_jax.optim._groups import leaf_groups

PARAMS = {"cell0": {"Wh": jnp.zeros(2), "Wi": jnp.zeros(3)}, "dense": [jnp.zeros(4),
                                                                      jnp.zeros(1)]}
# leaves in jax.tree.leaves order: cell0.Wh, cell0.Wi, dense[0], dense[1]


@pytest.mark.parametrize(("spec", "want"), [
    ("leaf", ((0,), (1,), (2,), (3,))),
    (None, ((0,), (1,), (2,), (3,))),
    ("model", ((0, 1, 2, 3),)),
    ({"cell0": "c", "dense": "d"}, ((0, 1), (2, 3))),            # a prefix of labels
    ({"cell0": {"Wh": 1, "Wi": 0}, "dense": [0, 1]}, ((0, 3), (1, 2))),  # full, shared labels
    (lambda p: {k: k for k in p}, ((0, 1), (2, 3))),              # a function of the params
])
def test_partitions(spec, want):
    assert leaf_groups(PARAMS, spec, name="layers") == want


def test_label_dict_fits_nnx_state():
    state = nnx.state(ElmanRNN(2, 3, 1, rngs=nnx.Rngs(0)), nnx.Param)
    spec = {"U": "rec", "W": "rec", "b": "rec", "V": "out", "c": "out"}
    # nnx.State sorts keys: U, V, W, b, c
    assert leaf_groups(state, spec, name="layers") == ((0, 2, 3), (1, 4))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="compartments.*cell0"):
        leaf_groups(PARAMS, {"dense": 0}, name="compartments")
    with pytest.raises(TypeError, match="layers: labels must be hashable"):
        leaf_groups(PARAMS, {"cell0": np.zeros(1), "dense": 0}, name="layers")
