"""IMDb movie-review sentiment (Maas et al., 2011) as padded word-id sequences."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import tarfile
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from admm_jax.data import _sources as src
from admm_jax.data.splits import check_slice, parse_split

SPLITS = ("train", "test")
TFDS_NAME = "imdb_reviews/plain_text"
PAD, UNK = 0, 1
PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
SIDES = ("pre", "post")
ORIGINAL = src.RawFile(
    "aclImdb_v1.tar.gz",
    ("c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",),
    ("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",),
)
# The same labelled reviews without the unlabelled part (the copy in the shared data folder).
LABELLED = src.RawFile(
    "aclImdb_labelled.tar.gz",
    ("98b8d50b2f76316a6fde3b9e0c84d75540c824cd48eb0e871766e73952906d7d",),
    (),
)
# sha256 of the decoded (label byte, 8-byte length, utf-8 text) records in canonical order.
CONTENT_SHA256 = {
    "train": "daf414aaaddfce739a6bed534e287511eb82daa8bfd9c9a68f60b1a0bdefda5f",
    "test": "8a75531132a5cc7277038e909412988b512d3f152ade0a194b5f904b24a522a3",
}
TOKENIZER_VERSION = "imdb-tok-v1"
_MEMBER = re.compile(r"^aclImdb/(train|test)/(neg|pos)/[^/]+\.txt$")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


class Reviews(NamedTuple):
    """Tokenised reviews.

    Attributes:
      ids: int32 ``[N, T]`` word ids (0 = padding, 1 = unknown).
      lengths: int32 ``[N]`` number of real tokens in each row (``<= T``).
      labels: int32 ``[N]`` (0 negative, 1 positive).
      vocab: the words, ``vocab[id]`` (``vocab[0] = "<pad>"``, ``vocab[1] = "<unk>"``).
    """

    ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    vocab: tuple[str, ...]


def tokenize(text: str) -> list[str]:
    """Lowercase, replace ``<br />`` tags by spaces, and return the words.

    A word is a run of letters/digits (any script, no underscore), possibly joined by
    apostrophes (``don't`` is one word); everything else separates words.

    Examples:
      >>> tokenize("Great film!<br /><br />Don't MISS it, 10/10.")
      ['great', 'film', "don't", 'miss', 'it', '10', '10']
    """
    return _WORD.findall(_BR.sub(" ", text.lower()))


def _canonical_order(keys: Sequence[str], split: str) -> list[int]:
    """TFDS record order: sorted by ``md5(split + key)`` with the archive path as key."""
    salt = hashlib.md5(split.encode())

    def h(i: int) -> bytes:
        m = salt.copy()
        m.update(keys[i].encode())
        return m.digest()

    return sorted(range(len(keys)), key=h)


def _from_raw(path: pathlib.Path) -> dict[str, tuple[list[bytes], np.ndarray]]:
    found: dict[str, list[tuple[str, bytes, int]]] = {s: [] for s in SPLITS}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            name = os.path.normpath(member.name)
            m = _MEMBER.match(name) if member.isfile() else None
            if m:
                text = tar.extractfile(member).read().strip()
                found[m[1]].append((name, text, int(m[2] == "pos")))
    out = {}
    for split, recs in found.items():
        order = _canonical_order([r[0] for r in recs], split)
        out[split] = (
            [recs[i][1] for i in order],
            np.array([recs[i][2] for i in order], np.uint8),
        )
    return out


def _from_tfds(tfds_dir: pathlib.Path) -> dict[str, tuple[list[bytes], np.ndarray]]:
    import tensorflow_datasets as tfds  # lazy: slow import, optional dependency

    sources = tfds.data_source(TFDS_NAME, data_dir=os.fspath(tfds_dir), download=False)
    out = {}
    for split in SPLITS:
        recs = sources[split].__getitems__(list(range(len(sources[split]))))
        out[split] = ([r["text"] for r in recs], np.array([r["label"] for r in recs], np.uint8))
    return out


def _content_digest(texts: Sequence[bytes], labels: np.ndarray) -> str:
    h = hashlib.sha256()
    for t, y in zip(texts, labels, strict=True):
        h.update(bytes([int(y)]) + len(t).to_bytes(8, "little") + t)
    return h.hexdigest()


def _locate(data_dir, download, source) -> src.Located:
    return src.locate(
        "IMDb", tfds_name=TFDS_NAME, raw_sub="imdb", raw_files=((ORIGINAL,), (LABELLED,)),
        data_dir=data_dir, source=source, download=download,
    )


def _raw_archive(d: pathlib.Path) -> pathlib.Path:
    for rf in (ORIGINAL, LABELLED):
        if (d / rf.name).is_file():
            return d / rf.name
    raise src.DataNotFoundError(f"no IMDb archive in {d}")


def _source_digest(loc: src.Located) -> str:
    """Checksum of the source files (verified against the known ones where they exist)."""
    if loc.kind == "tfds":
        return src.tfds_files_digest(loc.path, TFDS_NAME)
    path = _raw_archive(loc.path)
    rf = ORIGINAL if path.name == ORIGINAL.name else LABELLED
    return src.verify_file(path, rf.sha256)


def _read(loc: src.Located) -> dict[str, tuple[list[bytes], np.ndarray]]:
    """Decoded texts and labels of both splits, after checking the source's checksum."""
    _source_digest(loc)
    if loc.kind == "raw":
        return _from_raw(_raw_archive(loc.path))
    data = _from_tfds(loc.path)
    for split, (texts, labels) in data.items():
        got = _content_digest(texts, labels)
        if got != CONTENT_SHA256[split]:
            raise src.ChecksumError(
                f"IMDb {split} decoded from TFDS files in {loc.path / TFDS_NAME} has content "
                f"sha256 {got}, expected {CONTENT_SHA256[split]}: corrupted or not IMDb"
            )
    return data


def imdb_texts(
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    source: str = "auto",
) -> tuple[list[str], np.ndarray]:
    """The raw review texts (whitespace-stripped) and int32 labels of ``split``, uncached.

    Order: the TFDS record order, i.e. sorted by ``md5(split + archive path)``; both sources
    give the same order.
    """
    name, sl = parse_split(split, SPLITS)
    data = _read(_locate(data_dir, download, source))
    texts, labels = data[name]
    check_slice(split, sl, len(labels))
    return [t.decode("utf-8") for t in texts[sl]], labels[sl].astype(np.int32)


def _tokenised(loc: src.Located, cache: bool) -> dict[str, np.ndarray]:
    """The tokenised corpus (every word, train counts, flat token indices), cached by source."""
    digest = hashlib.sha256(_source_digest(loc).encode()).hexdigest()[:20]
    key = f"{TOKENIZER_VERSION}-{digest}"
    hit = src.cache_load(key) if cache else None
    if hit is not None:
        return hit
    data = _read(loc)
    index: dict[str, int] = {}
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        texts, labels = data[split]
        flat: list[int] = []
        offsets = [0]
        for t in texts:
            flat.extend(index.setdefault(w, len(index)) for w in tokenize(t.decode("utf-8")))
            offsets.append(len(flat))
        arrays[f"{split}_tokens"] = np.array(flat, np.int64)
        arrays[f"{split}_offsets"] = np.array(offsets, np.int64)
        arrays[f"{split}_labels"] = labels
    words = sorted(index)
    rank = np.empty(len(words), np.int32)
    rank[[index[w] for w in words]] = np.arange(len(words), dtype=np.int32)
    for split in SPLITS:
        arrays[f"{split}_tokens"] = rank[arrays[f"{split}_tokens"]]
    arrays["train_counts"] = np.bincount(arrays["train_tokens"], minlength=len(words))
    arrays["words"] = np.frombuffer("\n".join(words).encode("utf-8"), np.uint8)
    if cache:
        src.cache_save(key, arrays)
    return arrays


def _pad(
    flat: np.ndarray, offsets: np.ndarray, max_len: int, padding: str, truncating: str
) -> tuple[np.ndarray, np.ndarray]:
    full = np.diff(offsets)
    lengths = np.minimum(full, max_len)
    start = offsets[:-1] + (full - lengths if truncating == "pre" else 0)
    shift = max_len - lengths if padding == "pre" else np.zeros_like(lengths)
    j = np.arange(max_len)[None, :] - shift[:, None]
    valid = (j >= 0) & (j < lengths[:, None])
    idx = np.clip(start[:, None] + j, 0, max(len(flat) - 1, 0))
    ids = np.where(valid, flat[idx] if len(flat) else 0, PAD).astype(np.int32)
    return ids, lengths.astype(np.int32)


def imdb(
    split: str,
    *,
    vocab_size: int = 20000,
    max_len: int | None = 200,
    padding: str = "pre",
    truncating: str = "pre",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    source: str = "auto",
    cache: bool = True,
) -> Reviews:
    """IMDb reviews as word-id sequences with binary sentiment labels.

    Tokenisation: [`tokenize`][admm_jax.data.tokenize] (lowercase, ``<br />`` removed, regex words).
    Vocabulary: id 0 = padding, id 1 = unknown, then the ``vocab_size - 2`` most frequent words of
    the **train** split (counts over all train reviews; ties broken alphabetically), so it is
    deterministic and never sees the test split; rarer words map to 1. Each review is cut to
    ``max_len`` tokens (``truncating="pre"`` keeps the last ones, ``"post"`` the first) and
    padded with 0 on the ``padding`` side. The default ``"pre"``/``"pre"`` (as in Keras's
    ``pad_sequences``) puts the end of every review at the last step, where a many-to-one RNN
    reads its output.

    Args:
      split: ``"train"`` (25000) or ``"test"`` (25000), optionally sliced (``"train[:20000]"``).
      vocab_size: ids are in ``[0, vocab_size)``; at least 3.
      max_len: sequence length ``T``; ``None`` pads to the longest review of the split.
      padding: ``"pre"`` or ``"post"``.
      truncating: ``"pre"`` or ``"post"``.
      data_dir, download, source, cache: as in [`admm_jax.data.mnist`][].

    Returns:
      [`Reviews`][admm_jax.data.Reviews]
      ``(ids [N, T] int32, lengths [N] int32, labels [N] int32, vocab)``, in the TFDS record order
      (both sources give the same order).

    Examples:
      >>> r = imdb("test", vocab_size=10000, max_len=100)  # doctest: +SKIP
      >>> r.ids.shape, r.labels.mean(), r.vocab[:3]  # doctest: +SKIP
      ((25000, 100), 0.5, ('<pad>', '<unk>', 'the'))

    References:
      Maas et al., Learning word vectors for sentiment analysis, ACL 2011.
    """
    name, sl = parse_split(split, SPLITS)
    if not (isinstance(vocab_size, int | np.integer) and vocab_size >= 3):
        raise ValueError(f"vocab_size: expected an integer >= 3, got {vocab_size!r}")
    if max_len is not None and not (isinstance(max_len, int | np.integer) and max_len >= 1):
        raise ValueError(f"max_len: expected a positive integer or None, got {max_len!r}")
    for arg, v in (("padding", padding), ("truncating", truncating)):
        if v not in SIDES:
            raise ValueError(f"{arg}: expected one of {SIDES}, got {v!r}")
    arrays = _tokenised(_locate(data_dir, download, source), cache)
    words = bytes(arrays["words"]).decode("utf-8").split("\n")
    counts = arrays["train_counts"]
    seen = np.flatnonzero(counts > 0)
    # words are sorted alphabetically, so a stable sort on -count breaks ties alphabetically
    top = seen[np.argsort(-counts[seen], kind="stable")][: vocab_size - 2]
    lookup = np.full(len(words), UNK, np.int32)
    lookup[top] = np.arange(2, 2 + len(top), dtype=np.int32)
    offsets = arrays[f"{name}_offsets"]
    n = len(offsets) - 1
    rows = np.arange(n)[check_slice(split, sl, n)]
    lo, hi = (rows[0], rows[-1] + 1) if len(rows) else (0, 0)
    sub_offsets = offsets[lo : hi + 1]
    flat = lookup[arrays[f"{name}_tokens"][sub_offsets[0] : sub_offsets[-1]]]
    sub_offsets = sub_offsets - sub_offsets[0]
    T = int(np.diff(sub_offsets).max(initial=1)) if max_len is None else int(max_len)
    ids, lengths = _pad(flat, sub_offsets, T, padding, truncating)
    vocab = (PAD_TOKEN, UNK_TOKEN, *(words[i] for i in top))
    labels = arrays[f"{name}_labels"][lo:hi].astype(np.int32)
    return Reviews(ids, lengths, labels, vocab)


def decode_ids(ids, vocab: Sequence[str], *, sep: str = " ", skip_pad: bool = True):
    """Turn ids back into text: ``sep.join(vocab[i] for i in ids)``.

    Args:
      ids: a 1-D sequence of ids, or a 2-D batch (array-like, numpy or jax).
      vocab: the vocabulary returned with the ids (``Reviews.vocab`` or ``CharText.vocab``).
      sep: separator between tokens (``" "`` for words, ``""`` for characters).
      skip_pad: drop the padding id 0 (word vocabularies only; ignored when ``vocab[0]`` is
        not ``"<pad>"``).

    Returns:
      A string for 1-D input, a list of strings for 2-D input.

    Examples:
      >>> decode_ids([0, 0, 2, 1, 3], ("<pad>", "<unk>", "a", "film"))
      'a <unk> film'
    """
    a = np.asarray(ids)
    if a.ndim == 2:
        return [decode_ids(row, vocab, sep=sep, skip_pad=skip_pad) for row in a]
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"ids: expected 1-D or 2-D integer ids, got shape {a.shape} {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= len(vocab)):
        raise ValueError(f"ids: expected values in [0, {len(vocab)}), got [{a.min()}, {a.max()}]")
    drop = skip_pad and len(vocab) > 0 and vocab[0] == PAD_TOKEN
    return sep.join(vocab[i] for i in a.tolist() if not (drop and i == PAD))
