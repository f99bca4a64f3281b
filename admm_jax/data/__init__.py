"""Data sets and tasks as numpy arrays ready for ``jax.numpy``.

MNIST (rows, pixels, permuted), IMDb (word ids), the copying and adding tasks, character-level
text, and a seeded resumable mini-batch iterator that also yields sample indices.

Where the data comes from (MNIST and IMDb), in order:

1. the root directory: the ``data_dir`` argument, else ``$ADMM_JAX_DATA``, else TFDS's default
   directory (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``) and then ``<cache>/raw`` (where
   downloads go when no root is given). A root may be a folder with ``tfds/``, ``mnist/`` and
   ``imdb/`` in it (like the shared data folder), a TFDS data_dir itself, or a folder
   holding the raw files directly;
2. in a root, a prepared TFDS set (``tfds.data_source(..., download=False)``, read without
   TensorFlow; ``source="tfds"``) if tensorflow-datasets is installed, then the raw original
   files (``source="raw"``): MNIST's four ``*-idx?-ubyte.gz``, IMDb's ``aclImdb_v1.tar.gz``
   or ``aclImdb_labelled.tar.gz``, checked against their known sha256;
3. otherwise, with ``download=True`` (the default), the raw originals are fetched from their
   canonical mirrors into the root (``<cache>/raw`` without one), checksum-verified, and used.
   (TFDS's own preparation needs TensorFlow, which admm_jax does not use.)

Decoded arrays are cached as ``.npz`` in ``$ADMM_JAX_CACHE`` (else
``$XDG_CACHE_HOME/admm_jax`` or ``~/.cache/admm_jax``), keyed by the source files' checksums,
so a second load takes well under a second. Decoded data is also checked against the known
content checksum: a damaged file raises [`ChecksumError`][admm_jax.data.ChecksumError], never
silently used; missing data raises [`DataNotFoundError`][admm_jax.data.DataNotFoundError] listing
the paths tried and how to get the files.
"""

from admm_jax.data._sources import ChecksumError, DataNotFoundError, cache_dir
from admm_jax.data.batching import Batch, BatchIterator, batches
from admm_jax.data.imdb import Reviews, decode_ids, imdb, imdb_texts, tokenize
from admm_jax.data.mnist import mnist, mnist_permutation
from admm_jax.data.splits import validation_split
from admm_jax.data.synthetic import adding, copying
from admm_jax.data.text import CharText, text

__all__ = [
    "Batch",
    "BatchIterator",
    "CharText",
    "ChecksumError",
    "DataNotFoundError",
    "Reviews",
    "adding",
    "batches",
    "cache_dir",
    "copying",
    "decode_ids",
    "imdb",
    "imdb_texts",
    "mnist",
    "mnist_permutation",
    "text",
    "tokenize",
    "validation_split",
]
