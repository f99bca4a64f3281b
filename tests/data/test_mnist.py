"""MNIST on the real files: counts, statistics, layouts, both sources, cache, errors, download."""

import gzip
import shutil
import sys
import urllib.error

import numpy as np
import pytest

from admm_jax.data import (
    ChecksumError,
    DataNotFoundError,
    _sources,
    mnist,
    mnist_permutation,
    validation_split,
)

mnist_module = sys.modules["admm_jax.data.mnist"]  # admm_jax.data.mnist is the function

# Published class counts of MNIST (LeCun et al.), train and test.
TRAIN_HIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


def idx_straight(path):
    """Decode an IDX file from the format description: magic, dims, then uint8 data."""
    with gzip.open(path) as f:
        buf = f.read()
    ndim = buf[3]
    dims = [int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(buf[4 + 4 * ndim :], np.uint8).reshape(dims)


@pytest.fixture(scope="module")
def train_tfds(data_dir):
    return mnist("train", data_dir=data_dir, source="tfds")


def test_train_counts_histogram_mean(train_tfds):
    x, y = train_tfds
    assert x.shape == (60000, 28, 28) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int32
    assert np.bincount(y).tolist() == TRAIN_HIST
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert abs(float(x.mean(dtype=np.float64)) - 0.1307) < 1e-3


def test_tfds_and_raw_give_identical_arrays(train_tfds, data_dir):
    x_raw, y_raw = mnist("train", data_dir=data_dir, source="raw", cache=False)
    np.testing.assert_array_equal(train_tfds[0], x_raw)
    np.testing.assert_array_equal(train_tfds[1], y_raw)
    # and both equal the IDX files decoded independently, in their original order
    np.testing.assert_array_equal(
        (x_raw * 255).round().astype(np.uint8),
        idx_straight(data_dir / "mnist" / "train-images-idx3-ubyte.gz"),
    )
    for source in ("raw", "tfds"):
        xt, yt = mnist("test", data_dir=data_dir, source=source, cache=False)
        assert np.bincount(yt).tolist() == TEST_HIST
        np.testing.assert_array_equal(
            yt, idx_straight(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")
        )


def test_layouts_are_reshapes_and_one_permutation(data_dir):
    rows, y = mnist("test", data_dir=data_dir)
    pixels, y2 = mnist("test", layout="pixels", data_dir=data_dir)
    perm3, _ = mnist("test", layout="permuted", permutation_seed=3, data_dir=data_dir)
    assert pixels.shape == (10000, 784, 1) and rows.shape == (10000, 28, 28)
    np.testing.assert_array_equal(y, y2)
    for n in (0, 4321):
        for t in (0, 29, 783):
            assert pixels[n, t, 0] == rows[n, t // 28, t % 28]
    p = mnist_permutation(3)
    assert sorted(p.tolist()) == list(range(784))
    assert not np.array_equal(p, mnist_permutation(4))
    np.testing.assert_array_equal(perm3[:, :, 0], pixels[:, p, 0])
    # the same permutation for every split
    tr_perm, _ = mnist("train[:5]", layout="permuted", permutation_seed=3, data_dir=data_dir)
    tr_pix, _ = mnist("train[:5]", layout="pixels", data_dir=data_dir)
    np.testing.assert_array_equal(tr_perm, tr_pix[:, p])


def test_validation_slices_and_split(train_tfds, data_dir):
    fit, y_fit = mnist("train[:50000]", data_dir=data_dir)
    val, y_val = mnist("train[50000:]", data_dir=data_dir)
    assert len(fit) == 50000 and len(val) == 10000
    np.testing.assert_array_equal(np.concatenate([fit, val]), train_tfds[0])
    np.testing.assert_array_equal(np.concatenate([y_fit, y_val]), train_tfds[1])
    tr, va = validation_split(60000, 10000)
    np.testing.assert_array_equal(train_tfds[1][va], y_val)
    tr, va = validation_split(60000, 10000, seed=1)
    assert len(np.intersect1d(tr, va)) == 0 and len(np.union1d(tr, va)) == 60000
    tr2, va2 = validation_split(60000, 10000, seed=1)
    np.testing.assert_array_equal(va, va2)
    assert va.max() - va.min() > 50000  # spread out, not a contiguous block
    with pytest.raises(ValueError, match="n_valid"):
        validation_split(10, 11)


def test_second_load_comes_from_cache(data_dir, monkeypatch):
    mnist("test", data_dir=data_dir)  # fills the cache if not yet there

    def boom(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(mnist_module, "_from_tfds", boom)
    monkeypatch.setattr(mnist_module, "_from_raw", boom)
    x, y = mnist("test", data_dir=data_dir)
    assert np.bincount(y).tolist() == TEST_HIST
    with pytest.raises(AssertionError, match="decoded again"):
        mnist("test", data_dir=data_dir, cache=False)


def test_data_dir_forms_and_env_var(data_dir, monkeypatch):
    ref = mnist("test", data_dir=data_dir, source="raw", cache=False)[1]
    for d, source in ((data_dir / "mnist", "raw"), (data_dir / "tfds", "tfds")):
        np.testing.assert_array_equal(mnist("test", data_dir=d, source=source)[1], ref)
    monkeypatch.setenv("ADMM_JAX_DATA", str(data_dir))
    np.testing.assert_array_equal(mnist("test", source="raw")[1], ref)


def test_corrupted_raw_file_reports_checksum(data_dir, tmp_path):
    for name in FILES[2:]:
        shutil.copy(data_dir / "mnist" / name, tmp_path / name)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    b = bytearray(bad.read_bytes())
    b[len(b) // 2] ^= 0xFF
    bad.chmod(0o644)
    bad.write_bytes(bytes(b))
    with pytest.raises(ChecksumError, match=r"t10k-images-idx3-ubyte\.gz: sha256 [0-9a-f]{64}"):
        mnist("test", data_dir=tmp_path, download=False)


def test_corrupted_tfds_file_reports_checksum(data_dir, tmp_path):
    shutil.copytree(data_dir / "tfds" / "mnist", tmp_path / "mnist")
    shutil.copy(data_dir / "tfds" / "SHA256SUMS", tmp_path / "SHA256SUMS")
    bad = tmp_path / "mnist" / "3.0.1" / "mnist-test.array_record-00000-of-00001"
    b = bytearray(bad.read_bytes())
    b[len(b) // 3] ^= 0x01
    bad.chmod(0o644)
    bad.write_bytes(bytes(b))
    with pytest.raises(ChecksumError, match="mnist-test.array_record"):
        mnist("test", data_dir=tmp_path, source="tfds", download=False)


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    def no_network(url, dest):
        raise AssertionError("tests must not download")

    monkeypatch.setattr(_sources, "fetch_url", no_network)
    with pytest.raises(DataNotFoundError) as e:
        mnist("test", data_dir=tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "mnist") in msg
    assert "t10k-images-idx3-ubyte.gz" in msg
    assert "curl -LO https://storage.googleapis.com/cvdf-datasets/mnist/t10k-images" in msg
    monkeypatch.setenv("ADMM_JAX_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataNotFoundError, match=r"\$ADMM_JAX_DATA"):
        mnist("test", download=False)


def test_download_verifies_and_falls_back_to_the_next_mirror(data_dir, tmp_path, monkeypatch):
    calls = []

    def fake_fetch(url, dest):
        calls.append(url)
        name = url.rsplit("/", 1)[1]
        if "storage.googleapis.com" in url:
            if name.startswith("t10k-images"):
                dest.write_bytes(b"not mnist")  # a bad mirror: wrong checksum
                return
            raise urllib.error.URLError("offline")
        shutil.copy(data_dir / "mnist" / name, dest)

    monkeypatch.setattr(_sources, "fetch_url", fake_fetch)
    x, y = mnist("test", data_dir=tmp_path, source="raw", cache=False)
    assert np.bincount(y).tolist() == TEST_HIST
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(FILES[2:])
    assert len(calls) == 4  # 2 test-split files x (failed first mirror + second mirror)
    calls.clear()
    mnist("test", data_dir=tmp_path, source="raw", cache=False)
    assert calls == []  # found on disk the second time

    def all_bad(url, dest):
        dest.write_bytes(b"garbage")

    monkeypatch.setattr(_sources, "fetch_url", all_bad)
    with pytest.raises(DataNotFoundError, match="sha256"):
        mnist("test", data_dir=tmp_path / "other", source="raw")
    assert not any((tmp_path / "other" / "mnist").iterdir())  # nothing bad kept


def test_bad_arguments():
    with pytest.raises(ValueError, match="layout"):
        mnist("test", layout="columns")
    with pytest.raises(ValueError, match="split"):
        mnist("valid")
    with pytest.raises(ValueError, match="source"):
        mnist("test", source="web")


@pytest.mark.parametrize("split, match", [("train[50000:40000]", "selects no samples"),
                                          ("train[:70000]", "up to 70000"),
                                          ("test[-20000:]", "up to -20000")])
def test_invalid_splits_are_named(split, match, data_dir):
    with pytest.raises(ValueError, match=f"split: .*{match}"):
        mnist(split, data_dir=data_dir)


def test_permutation_seed_is_named(data_dir):
    with pytest.raises(ValueError, match="permutation_seed"):
        mnist("test", layout="permuted", permutation_seed=-1, data_dir=data_dir)
