"""Character-level windows: recomputed with a plain loop, from a string and from a file."""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admm_jax.data import decode_ids, text


@settings(max_examples=40, deadline=None)
@given(
    s=st.text(min_size=2, max_size=200).filter(lambda s: "\n" not in s),
    seq_len=st.integers(1, 20),
    stride=st.integers(1, 25),
)
def test_windows_are_next_character_pairs(s, seq_len, stride):
    if len(s) < seq_len + 1:
        with pytest.raises(ValueError, match="seq_len"):
            text(s, seq_len=seq_len, kind="text")
        return
    d = text(s, seq_len=seq_len, stride=stride, kind="text")  # any string, even "0/"
    assert d.vocab == tuple(sorted(set(s)))
    want_x = [s[k : k + seq_len] for k in range(0, len(s) - seq_len, stride)]
    want_y = [s[k + 1 : k + 1 + seq_len] for k in range(0, len(s) - seq_len, stride)]
    assert d.inputs.shape == d.targets.shape == (len(want_x), seq_len)
    assert d.inputs.dtype == np.int32
    assert decode_ids(d.inputs, d.vocab, sep="") == want_x
    assert decode_ids(d.targets, d.vocab, sep="") == want_y


def test_reads_files_by_path_and_by_name(tmp_path):
    body = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind\n" * 3
    f = tmp_path / "hamlet.txt"
    f.write_text(body, encoding="utf-8")
    a, b, c = text(f, seq_len=16), text(str(f), seq_len=16), text(body, seq_len=16)
    for d in (a, b):
        np.testing.assert_array_equal(d.inputs, c.inputs)
        assert d.vocab == c.vocab
    assert len(a.inputs) == (len(body) - 1) // 16


def test_bad_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        text("abc", seq_len=0)
    with pytest.raises(TypeError, match="path_or_string"):
        text(123, seq_len=2)


def test_kind_makes_the_reading_explicit(tmp_path):
    f = tmp_path / "corpus"  # no suffix, no separator in the name: "auto" would read "corpus"
    f.write_text("abcabc")
    assert text(str(f), seq_len=2, kind="path").vocab == ("a", "b", "c")
    with pytest.raises(FileNotFoundError, match="path_or_string"):
        text("corpus", seq_len=2, kind="path")
    d = text("/no/such/file.txt", seq_len=2, kind="text")  # the characters of the string
    assert d.vocab == tuple(sorted(set("/no/such/file.txt")))
    with pytest.raises(ValueError, match="kind"):
        text("abc", seq_len=1, kind="file")


def test_missing_or_binary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="path_or_string: no such file"):
        text("/no/such/file.txt", seq_len=4)
    with pytest.raises(FileNotFoundError, match="path_or_string"):
        text(tmp_path / "missing", seq_len=4)
    b = tmp_path / "blob.bin"
    b.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="is not utf-8 text"):
        text(b, seq_len=4)
    assert text("hello world", seq_len=4).inputs.shape == (2, 4)
