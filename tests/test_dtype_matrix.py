"""Every registered optimizer, {float32, float64, bfloat16} params x {float32, float64} inputs,
through ``update`` and ``fit``, with x64 off and on: one subprocess per x64 setting (x64 must
be chosen before anything is traced). The default suite runs the pairwise cells (every
optimizer with every dtype and x64 mode, every pair of dtype settings:
``dtype_matrix_checks.pairs``), the slow suite the whole matrix."""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import subprocess
import sys

import pytest

from admm_jax import optimizers

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dtype_matrix_checks import INPUTS, PARAMS, cells, pairs  # noqa: E402


def run_cells(x64: str, selection: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, str(HERE / "dtype_matrix_checks.py"), x64, selection],
                       env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["x64"] == (x64 == "on")
    return r["cells"]


def test_the_pairs_cover_every_dtype_setting_and_every_pair_of_them():
    chosen = pairs()
    assert len(chosen) == 4 * len(optimizers.names())
    for name in optimizers.names():
        mine = [c[1:] for c in chosen if c[0] == name]
        assert {c[0] for c in mine} == set(PARAMS) and {c[1] for c in mine} == set(INPUTS)
        assert {c[2] for c in mine} == {"off", "on"}
        assert ("float64", "on") in {(c[0], c[2]) for c in mine}  # float64's real path
    values = (list(PARAMS), list(INPUTS), ["off", "on"])
    for i, j in itertools.combinations(range(3), 2):
        assert {(c[1 + i], c[1 + j]) for c in chosen} == set(
            itertools.product(values[i], values[j]))


@pytest.mark.parametrize("x64", ["off", "on"])
def test_dtype_pairs_every_optimizer_update_and_fit(x64):
    got = run_cells(x64, "pairs")
    assert set(got) == {f"{n}/{p}/{x}" for n, p, x in cells("pairs", x64)}
    bad = {k: v for k, v in got.items() if v != "ok"}
    assert not bad, (x64, bad)


@pytest.mark.slow  # 120 cells: ~7 minutes on 2 busy cores
@pytest.mark.parametrize("x64", ["off", "on"])
def test_dtype_matrix_every_optimizer_update_and_fit(x64):
    got = run_cells(x64, "all")
    assert len(got) == len(optimizers.names()) * len(PARAMS) * len(INPUTS)
    bad = {k: v for k, v in got.items() if v != "ok"}
    assert not bad, (x64, bad)
