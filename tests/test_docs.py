"""The documentation site builds with warnings as errors, and the README's quick start runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strict(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                        str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    site = tmp_path / "site"
    # every page of the nav, the API reference rendered from docstrings, the plots served
    for page in ("index.html", "admmirnn/index.html", "api/optimizers/index.html"):
        assert (site / page).is_file(), page
    api = (site / "api/optimizers/index.html").read_text()
    assert "admm_jax.admmirnn" in api and "admm_jax.random_bases" in api
    assert (site / "results/admm_mnist.png").is_file()


def _quick_start():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("line", ["adam", "admm_kfac"])
def test_readme_quick_start_runs_with_either_optimizer_line(line, monkeypatch):
    if not os.environ.get("ADMM_JAX_DATA"):
        pytest.skip("ADMM_JAX_DATA is not set: the quick start reads real MNIST")
    src = _quick_start()
    tx_lines = [ln for ln in src.splitlines() if ln.startswith("tx = ")]
    assert len(tx_lines) == 2 and "optax.adam" in tx_lines[0], tx_lines
    if line == "adam":  # the loop as a user runs it without the method line
        src = src.replace(tx_lines[1] + "\n", "")
    # a smaller run than the README's: 1,280 images, one epoch, losses recorded
    src = src.replace('mnist("train[:10000]"', 'mnist("train[:1280]"').replace("epochs=3",
                                                                            "epochs=1")
    src = src.replace("    loss = train_step(", "    losses.append(train_step(") + ")\n"
    scope = {"losses": []}
    exec(compile(src, "README quick start", "exec"), scope)  # noqa: S102
    losses = np.asarray(scope["losses"], dtype=float)
    assert len(losses) == 10 and np.isfinite(losses).all()
    assert losses[-3:].mean() < losses[:3].mean(), losses
