"""The linear maps found in a model's jaxpr, and the Kronecker factors their taps return,
against Python-loop models differentiated with ``jax.grad`` (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from kfac_reference import FlaxRNN, flax_reference, flax_sums, package_models, reference_factors

import admm_jax
from admm_jax.kfac import trace
from admm_jax.kfac.transform import bind_model, model_plan

N, T, D, H, C, VOCAB = 5, 4, 3, 6, 2, 9


def batch(model_inputs, *, many_to_many=False, vocab=VOCAB, d=D):
    key = jax.random.key(3)
    if model_inputs == "ids":
        x = jax.random.randint(key, (N, T), 0, vocab)
    else:
        x = jax.random.normal(key, (N, T, d), jnp.result_type(float))
    y = jax.random.randint(jax.random.key(4), (N, T) if many_to_many else (N,), 0, C)
    return x, y


def our_factors(model, x, y, output_factor="full"):
    """``{block name: (A, S)}`` after one step (the first step's factors are the batch's)."""
    tx = admm_jax.scale_by_kfac(model, x, output_factor=output_factor)
    params = nnx.state(model, nnx.Param)
    _, state = tx.update(None, tx.init(params), params, inputs=x, targets=y)
    plan = model_plan(bind_model(model, x), params, x, output_factor == "gates")[0]
    return {b.name: (np.asarray(state.a[b.a_slot]), np.asarray(state.s[b.s_slot]))
            for b in plan.blocks}, plan


def gate_blocks(s, k):
    """The ``k`` diagonal blocks of ``s``, ``[k, m, m]``."""
    m = len(s) // k
    return np.stack([s[i * m:(i + 1) * m, i * m:(i + 1) * m] for i in range(k)])


FLAX_CASES = {
    "simple": dict(kind="simple"),
    "lstm": dict(kind="lstm"),
    "optimized-lstm": dict(kind="olstm"),
    "gru": dict(kind="gru"),
    "gru-2-layers": dict(kind="gru", layers=2),
    "lstm-3-layers-many-to-many": dict(kind="lstm", layers=3, many_to_many=True),
    "embed-gru": dict(kind="gru", vocab=VOCAB),
    "embed-simple-2-layers": dict(kind="simple", vocab=VOCAB, layers=2),
}


@pytest.mark.parametrize("case", FLAX_CASES, ids=list(FLAX_CASES))
def test_flax_models_factors_equal_the_python_loop_definition(case, x64):
    kw = FLAX_CASES[case]
    model = FlaxRNN(d_in=D, hidden=H, out=C, rngs=nnx.Rngs(0), dtype=jnp.float64, **kw)
    x, y = batch("ids" if kw.get("vocab") else "float", many_to_many=kw.get("many_to_many",
                                                                              False))
    want = reference_factors(flax_reference, model, x, y, flax_sums(model))
    for output_factor in ("full", "gates"):
        ours, plan = our_factors(model, x, y, output_factor)
        assert sorted(ours) == sorted(want)
        for b in plan.blocks:
            a, s = want[b.name]
            if b.gates > 1:  # fused gates (GRU: 3, optimized LSTM: 4): the diagonal blocks
                s = gate_blocks(s, b.gates)
            np.testing.assert_allclose(ours[b.name][0], a, rtol=1e-10, atol=1e-12,
                                       err_msg=b.name)
            np.testing.assert_allclose(ours[b.name][1], s, rtol=1e-10, atol=1e-12,
                                       err_msg=b.name)
        assert plan.fallback == ()  # every parameter belongs to a linear map (or its bias)
    fused = {"gru": 3, "olstm": 4}.get(kw["kind"], 1)
    assert {b.gates for b in plan.blocks if "cell" in b.name} == {fused}


@pytest.mark.parametrize("case", ["elman", "elman-tokens", "lstm"])
def test_package_models_factors_equal_the_python_loop_definition(case, x64):
    model, forward, kind, sums = package_models(jnp.float64)[case]
    d = model.U[...].shape[1] if case.startswith("elman") else 3
    x, y = batch(kind, vocab=d, d=d)
    want = reference_factors(forward, model, x, y, sums)
    ours, plan = our_factors(model, x, y, "gates")
    assert sorted(ours) == sorted(want)
    for b in plan.blocks:
        a, s = want[b.name]
        s = gate_blocks(s, b.gates) if b.gates > 1 else s  # the LSTM's four gates
        np.testing.assert_allclose(ours[b.name][0], a, rtol=1e-10, atol=1e-12, err_msg=b.name)
        np.testing.assert_allclose(ours[b.name][1], s, rtol=1e-10, atol=1e-12, err_msg=b.name)
    assert {b.gates for b in plan.blocks} == ({4, 1} if case == "lstm" else {1})
    assert plan.fallback == ()  # the token model's b, added to a gather: W's map takes it


def test_summed_maps_are_one_block_and_shared_rows_are_collected_once(x64):
    # nnx.LSTMCell: each gate's input and recurrent maps are added, so they form one block
    # over [x, h, 1]; the four gates read the same x and h (one A), each gate's sum has its own
    # S; the rows of x, h and the head's input are kept once each, one Gram per sum
    model = FlaxRNN("lstm", D, H, C, rngs=nnx.Rngs(0), dtype=jnp.float64)
    x, _ = batch("float")
    bound = bind_model(model, x)
    plan = model_plan(bound, nnx.state(model, nnx.Param), x)[0]
    assert len(plan.blocks) == 5
    assert plan.blocks[0].name == "layers/0/cell/ii/kernel+layers/0/cell/hi/kernel"
    assert plan.a_shapes == ((D + H + 1, D + H + 1), (H + 1, H + 1))
    assert plan.s_shapes == ((H, H),) * 4 + ((C, C),)
    assert (len(plan.x_stacks), len(plan.sums)) == (3, 5)
    assert sum(t.x for t in plan.taps.values()) == 3
    assert len({path for path, _ in plan.sums}) == 5  # each sum's Gram from its own site


class LayerNormRNN(nnx.Module):
    """A GRU followed by a LayerNorm: its scale and offset are no linear map's."""

    def __init__(self, rngs):
        self.rnn = nnx.RNN(nnx.GRUCell(D, H, rngs=rngs))
        self.norm = nnx.LayerNorm(H, rngs=rngs)
        self.head = nnx.Linear(H, C, rngs=rngs)

    def __call__(self, x):
        return self.head(self.norm(self.rnn(x)[:, -1]))


def test_parameters_of_no_linear_map_fall_back():
    model = LayerNormRNN(nnx.Rngs(0))
    x, _ = batch("float")
    plan = model_plan(bind_model(model, x), nnx.state(model, nnx.Param), x)[0]
    assert sorted(plan.names[i] for i in plan.fallback) == ["norm/bias", "norm/scale"]
    assert {b.name for b in plan.blocks} == {"rnn/cell/dense_i/kernel",
                                             "rnn/cell/dense_h/kernel", "head/kernel"}


class WhileRNN(nnx.Module):
    """A recurrence in a while loop: reverse-mode differentiation cannot run through it."""

    def __init__(self, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (D, D)))
        self.head = nnx.Linear(D, C, rngs=rngs)

    def __call__(self, x):
        h = jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] @ self.w[...]),
                               (0, x[:, -1]))[1]
        return self.head(h)


def test_a_parameter_in_a_while_loop_is_a_named_error():
    model = WhileRNN(nnx.Rngs(0))
    x, _ = batch("float")
    with pytest.raises(trace.UnsupportedModelError, match=r"\['w'\].*while loop"):
        admm_jax.scale_by_kfac(model, x).init(nnx.state(model, nnx.Param))


class NoLinearMap(nnx.Module):
    def __init__(self, rngs):
        self.scale = nnx.Param(jnp.ones(D))

    def __call__(self, x):
        return (x * self.scale[...]).sum(1)[:, :C]


def test_a_model_without_linear_maps_is_a_named_error():
    model = NoLinearMap(nnx.Rngs(0))
    x, _ = batch("float")
    with pytest.raises(trace.UnsupportedModelError, match="no linear map"):
        admm_jax.scale_by_kfac(model, x).init(nnx.state(model, nnx.Param))


def test_inputs_that_do_not_fit_the_model_name_the_argument():
    model = FlaxRNN("gru", D, H, C, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="inputs: the model does not run"):
        admm_jax.scale_by_kfac(model, jnp.ones((2, T, D + 1))).init(
            nnx.state(model, nnx.Param))
