"""MNIST as row sequences, pixel sequences or permuted pixel sequences."""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib

import numpy as np

from admm_jax.data import _sources as src
from admm_jax.data.splits import check_slice, parse_split

SPLITS = ("train", "test")
LAYOUTS = ("rows", "pixels", "permuted")
SIZES = {"train": 60000, "test": 10000}
TFDS_NAME = "mnist"
_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",  # noqa: E501
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",  # noqa: E501
}
_PREFIX = {"train": "train", "test": "t10k"}
RAW_FILES = {
    split: tuple(
        src.RawFile(name, (_SHA256[name],), tuple(m + name for m in _MIRRORS))
        for name in (f"{p}-images-idx3-ubyte.gz", f"{p}-labels-idx1-ubyte.gz")
    )
    for split, p in _PREFIX.items()
}
# sha256 of the decoded uint8 images [N, 28, 28] followed by the uint8 labels [N], in the
# original IDX order; whatever the source, the decoded arrays must have these digests.
CONTENT_SHA256 = {
    "train": "edc0d1098aa497be14ace79ddd5171e5a3dcf9c4d196c015389203eb3ba1f59b",  # noqa: E501
    "test": "c3f9adf9c66efb572b1f9326c3a511b45910c7173b97be66ceceeeeaef6b802b",  # noqa: E501
}
_CACHE_VERSION = "mnist-v1"


def _read_idx(path: pathlib.Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """Decode one gzipped IDX file (big-endian header, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        buf = f.read()
    ndim = magic & 0xFF
    header = np.frombuffer(buf, ">i4", count=1 + ndim)
    if header[0] != magic or tuple(header[2:]) != shape[1:]:
        raise src.ChecksumError(f"{path}: not an MNIST IDX file (header {header.tolist()})")
    return np.frombuffer(buf, np.uint8, offset=4 * (1 + ndim)).reshape(-1, *shape[1:])


def _from_raw(d: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    p = _PREFIX[split]
    images = _read_idx(d / f"{p}-images-idx3-ubyte.gz", 2051, (0, 28, 28))
    labels = _read_idx(d / f"{p}-labels-idx1-ubyte.gz", 2049, (0,))
    return images, labels


def tfds_order(n: int, split: str) -> np.ndarray:
    """Original index of each record of a TFDS-prepared split.

    TFDS writes the examples sorted by ``md5(split_name + str(key))`` and its MNIST builder uses
    the original index as key, so the original order can be restored from the TFDS one.
    """
    salt = hashlib.md5(split.encode())

    def h(i: int) -> bytes:
        m = salt.copy()
        m.update(str(i).encode())
        return m.digest()

    return np.array(sorted(range(n), key=h), dtype=np.int64)


def _from_tfds(tfds_dir: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds  # lazy: slow import, optional dependency

    ds = tfds.data_source(TFDS_NAME, data_dir=os.fspath(tfds_dir), download=False)[split]
    recs = ds.__getitems__(list(range(len(ds))))
    order = tfds_order(len(recs), split)
    images = np.empty((len(recs), 28, 28), np.uint8)
    labels = np.empty(len(recs), np.uint8)
    images[order] = np.stack([r["image"][..., 0] for r in recs])
    labels[order] = np.array([r["label"] for r in recs], dtype=np.uint8)
    return images, labels


def _source_digest(loc: src.Located, split: str) -> str:
    if loc.kind == "tfds":
        return src.tfds_files_digest(loc.path, TFDS_NAME)
    p = _PREFIX[split]
    names = (f"{p}-images-idx3-ubyte.gz", f"{p}-labels-idx1-ubyte.gz")
    return "".join(src.verify_file(loc.path / n, (_SHA256[n],)) for n in names)


def load_uint8(
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    source: str = "auto",
    cache: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole ``split`` ("train" or "test") as uint8 images ``[N, 28, 28]`` and labels
    ``[N]``, in the original IDX order, from the cache when possible."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    loc = src.locate(
        "MNIST", tfds_name=TFDS_NAME, raw_sub="mnist", raw_files=(RAW_FILES[split],),
        data_dir=data_dir, source=source, download=download,
    )
    digest = _source_digest(loc, split)
    key = f"{_CACHE_VERSION}-{split}-{hashlib.sha256(digest.encode()).hexdigest()[:20]}"
    hit = src.cache_load(key) if cache else None
    if hit is not None and src.digest_arrays(hit["images"], hit["labels"]) == CONTENT_SHA256[split]:
        return hit["images"], hit["labels"]
    images, labels = (_from_tfds if loc.kind == "tfds" else _from_raw)(loc.path, split)
    got = src.digest_arrays(images, labels)
    if got != CONTENT_SHA256[split]:
        raise src.ChecksumError(
            f"MNIST {split} decoded from {loc.kind} files in {loc.path} has content sha256 {got}, "
            f"expected {CONTENT_SHA256[split]}: the files are corrupted or not MNIST"
        )
    if cache:
        src.cache_save(key, {"images": images, "labels": labels})
    return images, labels


def mnist_permutation(seed: int = 0) -> np.ndarray:
    """The fixed pixel order of permuted MNIST:
    ``numpy.random.default_rng(seed).permutation(784)``.

    Examples:
      >>> mnist_permutation(0)[:5].tolist() == mnist_permutation(0)[:5].tolist()
      True
    """
    return np.random.default_rng(seed).permutation(784)


def mnist(
    split: str,
    *,
    layout: str = "rows",
    permutation_seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    source: str = "auto",
    cache: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    r"""MNIST digits as sequences for a recurrent network.

    Pixels are scaled to \( [0, 1] \) (``uint8 / 255``). With ``x`` the images
    ``[N, 28, 28]`` and ``p`` = [`mnist_permutation`][admm_jax.data.mnist_permutation]
    ``(permutation_seed)``:

    $$
    \text{rows: } u_{n,t,:} = x_{n,t,:}\ (T=28, d=28),\quad
    \text{pixels: } u_{n,t,0} = x_{n,\lfloor t/28 \rfloor, t \bmod 28}\ (T=784, d=1),\quad
    \text{permuted: } u_{n,t,0} = \text{pixels}_{n,p_t,0}
    $$

    The permutation depends only on ``permutation_seed``, so every split shares it. Samples
    keep the original IDX order whatever the source.

    Args:
      split: ``"train"`` (60000), ``"test"`` (10000), or a slice of one such as
        ``"train[:50000]"`` / ``"train[50000:]"`` (the h-detach 50k/10k train/validation
        recipe); see also [`admm_jax.data.validation_split`][] for a random hold-out.
      layout: ``"rows"``, ``"pixels"`` or ``"permuted"``.
      permutation_seed: seed of the pixel permutation (``layout="permuted"`` only).
      data_dir: where to look (see the search order in [`admm_jax.data`][]).
      download: fetch the raw files from the canonical mirrors when nothing is found.
      source: ``"auto"`` (prepared TFDS first, then raw files), ``"tfds"`` or ``"raw"``.
      cache: read/write the decoded arrays in the cache (``$ADMM_JAX_CACHE``).

    Returns:
      ``(inputs, labels)``: float32 ``[N, T, d]`` in ``[0, 1]`` and int32 ``[N]``.

    Raises:
      DataNotFoundError: no copy found (the message lists where and how to get one).
      ChecksumError: a file, or the data decoded from it, has the wrong checksum.

    Examples:
      >>> x, y = mnist("test", layout="pixels")  # doctest: +SKIP
      >>> x.shape, x.dtype, y.shape  # doctest: +SKIP
      ((10000, 784, 1), dtype('float32'), (10000,))

    References:
      LeCun, Cortes and Burges, The MNIST database of handwritten digits (1998).
      Le, Jaitly and Hinton, A simple way to initialize recurrent networks of rectified linear
      units, arXiv:1504.00941 (2015) (pixel-by-pixel and permuted MNIST).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if not isinstance(permutation_seed, int | np.integer) or isinstance(permutation_seed, bool) \
            or permutation_seed < 0:
        raise ValueError(f"permutation_seed: expected an int >= 0, got {permutation_seed!r}")
    name, sl = parse_split(split, SPLITS)
    images, labels = load_uint8(
        name, data_dir=data_dir, download=download, source=source, cache=cache
    )
    check_slice(split, sl, len(labels))
    images, labels = images[sl], labels[sl]
    x = np.empty(images.shape, np.float32)
    np.divide(images, np.float32(255), out=x, dtype=np.float32)
    if layout == "rows":
        inputs = x
    else:
        inputs = x.reshape(len(x), 784, 1)
        if layout == "permuted":
            inputs = inputs[:, mnist_permutation(permutation_seed)]
    return inputs, labels.astype(np.int32)
