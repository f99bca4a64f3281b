"""IMDb on the real archive/TFDS set: counts, vocabulary by the spec, padding, sources, errors."""

import collections
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from admm_jax.data import ChecksumError, DataNotFoundError, decode_ids, imdb, imdb_texts


def spec_tokens(text):
    """The documented tokenisation, written out again: lowercase, drop <br />, regex words."""
    text = re.sub(r"<br\s*/?>", " ", text.lower(), flags=re.IGNORECASE)
    return re.findall(r"[^\W_]+(?:'[^\W_]+)*", text)


def pad_spec(tokens, vocab, T, padding, truncating):
    index = {w: i for i, w in enumerate(vocab)}
    ids = [index.get(w, 1) for w in tokens]
    ids = ids[-T:] if truncating == "pre" else ids[:T]
    fill = [0] * (T - len(ids))
    return (fill + ids if padding == "pre" else ids + fill), len(ids)


@pytest.fixture(scope="module")
def train(data_dir):
    return imdb("train", data_dir=data_dir)


imdb_module = sys.modules["admm_jax.data.imdb"]  # admm_jax.data.imdb is the function


@pytest.fixture(scope="module")
def raw_texts(data_dir):
    """Both splits read once from the raw archive: {split: (texts, labels)}."""
    data = imdb_module._read(imdb_module._locate(data_dir, False, "raw"))
    return {s: ([t.decode("utf-8") for t in texts], y) for s, (texts, y) in data.items()}


@pytest.fixture(scope="module")
def test_texts(raw_texts):
    return raw_texts["test"]


def test_counts_labels_shapes(train, data_dir):
    test = imdb("test", data_dir=data_dir)
    for r in (train, test):
        assert r.ids.shape == (25000, 200) and r.ids.dtype == np.int32
        assert np.bincount(r.labels).tolist() == [12500, 12500]
        assert r.ids.min() >= 0 and r.ids.max() < 20000 and len(r.vocab) == 20000
        assert r.vocab[:2] == ("<pad>", "<unk>")
        assert (r.lengths >= 1).all() and (r.lengths <= 200).all()
        assert ((r.ids != 0).sum(axis=1) == r.lengths).all()  # no real token gets id 0
    assert train.vocab == test.vocab


def test_vocabulary_follows_the_spec_on_train_only(train, raw_texts):
    texts, _ = raw_texts["train"]
    counts = collections.Counter(w for t in texts for w in spec_tokens(t))
    top = sorted(counts, key=lambda w: (-counts[w], w))[: 20000 - 2]
    assert list(train.vocab[2:]) == top


def test_both_sources_same_texts_and_labels(test_texts, data_dir):
    texts, labels = test_texts
    texts_tfds, labels_tfds = imdb_texts("test", data_dir=data_dir, source="tfds")
    assert texts == texts_tfds
    np.testing.assert_array_equal(labels, labels_tfds)
    assert labels.sum() == 12500


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
def test_padding_truncation_and_decoding(test_texts, data_dir, padding, truncating):
    texts, labels = test_texts
    r = imdb("test[:300]", max_len=50, padding=padding, truncating=truncating, data_dir=data_dir)
    assert r.ids.shape == (300, 50)
    np.testing.assert_array_equal(r.labels, labels[:300])
    short = 0
    for i in range(300):
        want, n = pad_spec(spec_tokens(texts[i]), r.vocab, 50, padding, truncating)
        assert r.ids[i].tolist() == want and r.lengths[i] == n
        short += n < 50
    assert short > 0  # both short (padded) and long (truncated) reviews were checked
    words = spec_tokens(texts[0])[-50:] if truncating == "pre" else spec_tokens(texts[0])[:50]
    vocab = set(r.vocab)
    assert decode_ids(r.ids[0], r.vocab) == " ".join(w if w in vocab else "<unk>" for w in words)


def test_max_len_none_pads_to_longest(test_texts, data_dir):
    r = imdb("test[:100]", max_len=None, padding="post", vocab_size=50, data_dir=data_dir)
    lengths = [len(spec_tokens(t)) for t in test_texts[0][:100]]
    assert r.ids.shape == (100, max(lengths)) and r.lengths.tolist() == lengths
    assert r.ids.max() == 49 and len(r.vocab) == 50


def test_corrupted_archive_reports_checksum(data_dir, tmp_path):
    bad = tmp_path / "aclImdb_labelled.tar.gz"
    shutil.copy(data_dir / "imdb" / bad.name, bad)
    bad.chmod(0o644)
    with open(bad, "r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(ChecksumError, match=r"aclImdb_labelled\.tar\.gz: sha256"):
        imdb("test", data_dir=tmp_path, download=False)


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        imdb("test", data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert "aclImdb_v1.tar.gz" in msg and str(tmp_path / "imdb") in msg
    assert "curl -LO https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz" in msg


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        imdb("test", vocab_size=2)
    with pytest.raises(ValueError, match="padding"):
        imdb("test", padding="left")
    with pytest.raises(ValueError, match="ids"):
        decode_ids([5], ("<pad>", "<unk>"))


@pytest.mark.slow
def test_vocabulary_identical_in_a_fresh_process(train, data_dir, tmp_path):
    """Rebuild from scratch with another hash seed and source: same vocabulary and ids."""
    code = (
        "import hashlib, sys; from admm_jax.data import imdb; "
        f"r = imdb('train', data_dir={str(data_dir)!r}, source='raw'); "
        "print(hashlib.sha256('\\n'.join(r.vocab).encode() + r.ids.tobytes()).hexdigest())"
    )
    env = dict(os.environ, ADMM_JAX_CACHE=str(tmp_path), PYTHONHASHSEED="123")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    import hashlib

    assert out == hashlib.sha256("\n".join(train.vocab).encode() + train.ids.tobytes()).hexdigest()
