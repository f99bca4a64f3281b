"""Sharded ADMMiRNN, data-parallel K-FAC and data-parallel RBD on 8 forced host devices (in
subprocesses, since XLA_FLAGS must be set before jax is imported), and the collective counting
they rely on."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from admm_jax.distributed import collective_stats, collectives, data_mesh, shard_batch

HERE = pathlib.Path(__file__).resolve().parent
N, T, D, H, C = 32, 6, 3, 8, 2  # as in multidevice_checks.py


@functools.cache  # the ADMMiRNN and K-FAC tests read one run of "admm"
def run_checks(which: str) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(HERE / "multidevice_checks.py"), which], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


GRAM_SHAPES = [f"f64[{D + H + 1},{D + H + 1}]", f"f64[{D + H + 1},{H}]", f"f64[{H + 1},{H + 1}]",
               f"f64[{H + 1},{C}]"]


def matrix_collectives(cs):
    """Collectives moving anything but scalars (the diagnostics' sums, the labels' range check
    and the Grams' row count are scalars)."""
    return [c for c in cs if any(not s.endswith("[]") for s in c["shapes"])]


def matrices(c):
    """The non-scalar shapes one collective moves, sorted."""
    return sorted(s for s in c["shapes"] if not s.endswith("[]"))


def test_sharded_admmirnn_equals_unsharded_and_all_reduces_only_the_grams():
    r = run_checks("admm")
    assert r["devices"] == 8
    # exact blocks (relu, mse): 3 iterations, float64, sharded = unsharded to 1e-9
    ex = r["exact"]
    assert ex["moved"] > 1e-2  # the iterations did something
    assert ex["param_rel"] < 1e-9 and ex["dual_rel"] < 1e-9, ex
    # the multipliers stay on their shard: 8 devices, N/8 rows each
    assert ex["dual_shards"] == [8, 8, 8] and ex["dual_shard_rows"] == [N // 8] * 3
    # tanh + cross entropy: the a- and o-blocks pick between candidates by comparing objective
    # values, which fixes an iterate only to ~sqrt(eps) ~ 1.5e-8 near a minimum: a one-device
    # run on the same samples in reverse order differs as much (reorder_param_rel, ~5e-9).
    de = r["default"]
    assert de["moved"] > 1e-2
    assert de["reorder_param_rel"] > 1e-12  # the premise: summation order alone moves it
    assert de["param_rel"] < 1e-6 and de["dual_rel"] < 1e-6, de
    # one all-reduce per iteration carries all four Gram / right-hand-side matrices, one more
    # the scalar diagnostics; nothing is gathered
    for cs in (ex["collectives"], de["collectives"]):
        assert {c["kind"] for c in cs} == {"all-reduce"}
        mats = matrix_collectives(cs)
        assert len(mats) == 1 and matrices(mats[0]) == sorted(GRAM_SHAPES)
        scalars = len(mats[0]["shapes"]) - len(GRAM_SHAPES)  # the Grams' row count rides along
        assert mats[0]["nbytes"] == 8 * ((D + H + 1) * (D + H + 1 + H) + (H + 1) * (H + 1 + C)
                                         + scalars)
    mats3 = matrix_collectives(r["sweeps3_collectives"])
    assert len(mats3) == 3 and all(matrices(m) == sorted(GRAM_SHAPES) for m in mats3)
    assert {c["kind"] for c in r["sweeps3_collectives"]} == {"all-reduce"}
    # token inputs: counts and segment sums all-reduced too, nothing gathered
    tok = r["tokens"]
    assert tok["param_rel"] < 1e-9
    assert {c["kind"] for c in tok["collectives"]} == {"all-reduce"}
    assert len(matrix_collectives(tok["collectives"])) == 1
    # mini-batches, multipliers in host memory, batches sharded over 8 devices = multipliers
    # on one device indexed by sample, over two epochs
    hd = r["host_duals"]
    assert hd["moved"] > 1e-2
    assert hd["param_rel"] < 1e-9 and hd["dual_rel"] < 1e-9, hd


def test_sharded_kfac_equals_unsharded_and_only_all_reduces():
    # admm_kfac, 2-layer GRU over token embeddings, float32, 3 steps with two inverse
    # refreshes: batch sharded over 8 devices, parameters replicated = one device. The
    # factors are batch means, so XLA all-reduces them (and the gradients); nothing else moves.
    r = run_checks("admm")["kfac"]
    assert r["devices"] == 8 and r["dtype"] == "float32" and r["count"] == 3
    assert r["moved"] > 1e-2 and r["replicated"]
    assert r["loss_rel"] < 1e-5 and r["factor_rel"] < 1e-5, r
    assert r["inverse_rel"] < 1e-4 and r["param_rel"] < 1e-4, r
    assert r["collectives"] and {c["kind"] for c in r["collectives"]} == {"all-reduce"}


@pytest.mark.parametrize("which", ["rbd", "rbd_rademacher"])  # SRHT (default), i.i.d. signs
def test_sharded_random_bases_identical_on_devices_and_equal_to_simulated_workers(which):
    r = run_checks(which)
    assert r["devices"] == 8 and r["n_copies"] == 8
    assert r["identical_on_devices"]  # every device's own parameters, bit for bit
    assert r["moved"] > 1e-2
    assert r["param_rel"] < 1e-12, r  # = one device running the 8 workers in turn
    assert r["coords_rel"] < 1e-12
    assert r["coord_shapes"] == [[8, 6]] * 3
    # communication: one all-gather of dim x devices floats, no gradient all-reduce
    assert [c["kind"] for c in r["collectives"]] == ["all-gather"]
    assert r["collectives"][0]["nbytes"] == 8 * r["devices"] * r["dim_total"]


# ---------------------------------------------------------------- single-device helpers


HLO = """
  %all-reduce.18 = (f32[12,12]{0,1}, f32[12,8]{1,0}) all-reduce(%a, %b), channel_id=1
  %ag = f64[8,18]{1,0} all-gather(%c), channel_id=2, dimensions={0}
  %ars = f32[4]{0} all-reduce-start(%d), channel_id=3
  %ard = f32[4]{0} all-reduce-done(%ars)
  %x = f32[4]{0} add(%ard, %ard)
"""


def test_collectives_parses_tuples_async_pairs_and_sizes():
    cs = collectives(HLO)
    assert [c.kind for c in cs] == ["all-reduce", "all-gather", "all-reduce"]
    assert cs[0].shapes == ("f32[12,12]", "f32[12,8]") and cs[0].nbytes == 4 * (144 + 96)
    assert cs[1].nbytes == 8 * 8 * 18 and cs[2].nbytes == 16
    assert collective_stats(HLO) == {"all-reduce": {"count": 2, "bytes": 976},
                                     "all-gather": {"count": 1, "bytes": 1152}}


def test_unsharded_program_has_no_collectives():
    f = jax.jit(lambda x: x.T @ x).lower(jnp.ones((4, 3))).compile()
    assert collective_stats(f) == {}


def test_shard_batch_checks_divisibility_and_axis():
    mesh = data_mesh(jax.devices()[:1])
    x = shard_batch({"x": np.ones((4, 2))}, mesh)["x"]
    assert x.shape == (4, 2)
    with pytest.raises(ValueError, match="axis_name"):
        shard_batch(np.ones(3), mesh, axis_name="model")
    with pytest.raises(ValueError, match="leading sample axis"):
        shard_batch({"s": np.float32(1.0)}, mesh)
    with pytest.raises(ValueError, match="devices"):
        data_mesh([])
