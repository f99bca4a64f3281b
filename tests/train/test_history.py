"""History: rows, NaN handling and JSON round trips (also of a real run)."""

import json
import math

import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from admm_jax import ElmanRNN, optimizers
from admm_jax.train import History, fit

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.dictionaries(st.sampled_from(["loss", "accuracy", "r1"]), floats,
                                     min_size=1), max_size=8),
       meta=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)))
def test_json_round_trip(rows, meta):
    h = History(meta=dict(meta))
    for i, r in enumerate(rows):
        h.append("steps", iteration=i + 1, **r)
    back = History.from_json(h.to_json())
    assert back == h
    assert set(back.steps) == set(h.steps)
    for k, col in h.steps.items():
        assert len(col) == len(rows)
        for a, b in zip(col, back.steps[k], strict=True):
            # non-finite values come back as NaN (strict JSON has none)
            assert (a == b) or (not math.isfinite(a) and math.isnan(b))


def test_append_backfills_and_pads_missing_columns():
    h = History()
    h.append("evals", iteration=0, loss=1.0)
    h.append("evals", iteration=5, accuracy=0.5)
    assert h.evals["iteration"] == [0, 5]
    assert h.evals["loss"][0] == 1.0 and math.isnan(h.evals["loss"][1])
    assert math.isnan(h.evals["accuracy"][0]) and h.evals["accuracy"][1] == 0.5
    with pytest.raises(ValueError, match="table"):
        h.append("batches", x=1)


def test_fit_history_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4, 2)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    h = fit(ElmanRNN(2, 4, 2, rngs=nnx.Rngs(0)), optimizers.get("adam"), (x, y),
            evaluation=(x, y), epochs=2, batch_size=8)
    p = h.save(tmp_path / "sub" / "h.json")
    assert json.loads(p.read_text())["meta"]["iterations"] == 8  # strict JSON
    back = History.load(p)
    assert back == h
    assert back.steps["loss"] == h.steps["loss"] and back.evals["accuracy"] == h.evals["accuracy"]
