"""The Colab notebooks in ``notebooks/`` run without errors in their small-budget mode.

Each notebook is executed with nbclient in a kernel of *this* interpreter (a kernelspec
written to a temporary ``JUPYTER_PATH``, so a ``python3`` spec installed elsewhere cannot be
picked up), with ``ADMM_JAX_NOTEBOOK_BUDGET=small`` and the real data of ``$ADMM_JAX_DATA``.
No network is used: the data is found locally, the install cell runs only on Colab.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "admm-jax-tests"


def test_every_notebook_is_found_and_generated_from_the_script():
    names = [p.name for p in NOTEBOOKS]
    assert len(names) == 4, names
    sys.path.insert(0, str(NOTEBOOK_DIR))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(NOTEBOOK_DIR))
    assert sorted(make_notebooks.NOTEBOOKS) == names
    for name, nb in make_notebooks.NOTEBOOKS.items():
        committed = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        assert [c.source for c in committed.cells] == [c.source for c in nb.cells], (
            f"{name} differs from notebooks/make_notebooks.py: rerun the script")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[1].cell_type == "code" and "google.colab" in nb.cells[1].source
    assert "ADMM_JAX_REPO" in nb.cells[1].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}: strip the outputs before committing")


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, data_dir):
    """A kernelspec for ``sys.executable`` and the environment the kernel inherits."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "admm_jax tests", "language": "python"}))
    return {
        "JUPYTER_PATH": str(root),
        "ADMM_JAX_NOTEBOOK_BUDGET": "small",
        "ADMM_JAX_DATA": str(data_dir),
        # the kernel imports this checkout's admm_jax, installed or not
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_small_mode(path, kernel_env, monkeypatch):
    for k, v in kernel_env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint('kernel:', sys.executable)"))
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError with the failing cell and traceback
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "budget: small" in text
    assert f"kernel: {sys.executable}" in text  # the kernel is this interpreter
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: expected at least one plot"
