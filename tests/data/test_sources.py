"""Import hygiene and data-directory resolution."""

import pathlib
import subprocess
import sys

from admm_jax.data import _sources


def test_import_does_not_load_tfds_or_tensorflow():
    code = (
        "import sys, admm_jax, admm_jax.data; "
        "print(any(m.split('.')[0] in ('tensorflow', 'tensorflow_datasets') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ADMM_JAX_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("ADMM_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_default"))
    assert _sources.roots(tmp_path / "arg")[0] == [tmp_path / "arg"]
    assert _sources.roots(None)[0] == [tmp_path / "env"]
    monkeypatch.delenv("ADMM_JAX_DATA")
    search, dest, _ = _sources.roots(None)
    assert search == [tmp_path / "tfds_default", tmp_path / "cache" / "raw"]
    assert dest == tmp_path / "cache" / "raw"
    assert _sources.cache_dir() == pathlib.Path(tmp_path / "cache")
