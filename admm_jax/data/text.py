"""Character-level language modelling windows from any text."""

from __future__ import annotations

import os
import pathlib
import re
from typing import NamedTuple

import numpy as np


class CharText(NamedTuple):
    """Next-character windows.

    Attributes:
      inputs: int32 ``[N, seq_len]`` character ids.
      targets: int32 ``[N, seq_len]``, ``targets[:, t]`` the character after ``inputs[:, t]``.
      vocab: the sorted distinct characters, ``vocab[id]``.
    """

    inputs: np.ndarray
    targets: np.ndarray
    vocab: tuple[str, ...]


_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}$")


def _looks_like_path(s: str) -> bool:
    """A one-line string that names an existing file, ends in a file suffix (``.txt``) or
    holds a path separator."""
    if "\n" in s or not s or len(s) >= 4096:
        return False
    return (os.path.isfile(s) or bool(_SUFFIX.search(s)) or "/" in s
            or (os.sep != "/" and os.sep in s))


def text(
    path_or_string: str | os.PathLike,
    *,
    seq_len: int,
    stride: int | None = None,
    encoding: str = "utf-8",
    kind: str = "auto",
) -> CharText:
    r"""Character vocabulary and next-character ``(inputs, targets)`` windows.

    With the text encoded as ids \( c_0 \dots c_{L-1} \) (ids index the sorted distinct
    characters), window \( k \) starts at \( s = k \cdot \text{stride} \) and is
    \( x = c_{s:s+\text{seq\_len}},\ y = c_{s+1:s+1+\text{seq\_len}} \), for every \( k \)
    whose target fits in the text (a short tail is dropped).

    Args:
      path_or_string: a ``pathlib.Path``, or a one-line string that names a file, ends in a
        file suffix (``.txt``) or contains a path separator, is read as a file (a missing
        one raises ``FileNotFoundError``); any other string is the text itself.
      seq_len: window length ``T`` >= 1.
      stride: distance between window starts; ``seq_len`` (non-overlapping) when ``None``.
      encoding: file encoding.
      kind: ``"auto"`` (the rule above), ``"text"`` (``path_or_string`` is the text itself,
        whatever it looks like) or ``"path"`` (it names a file).

    Returns:
      [`CharText`][admm_jax.data.CharText] ``(inputs [N, T] int32, targets [N, T] int32, vocab)``;
      decode with ``admm_jax.data.decode_ids(ids, vocab, sep="")``.

    Examples:
      >>> d = text("hello world", seq_len=4)
      >>> d.inputs.shape, "".join(d.vocab[i] for i in d.targets[0])
      ((2, 4), 'ello')
    """
    if not (isinstance(seq_len, int | np.integer) and seq_len >= 1):
        raise ValueError(f"seq_len: expected a positive integer, got {seq_len!r}")
    stride = seq_len if stride is None else stride
    if not (isinstance(stride, int | np.integer) and stride >= 1):
        raise ValueError(f"stride: expected a positive integer or None, got {stride!r}")
    if kind not in ("auto", "text", "path"):
        raise ValueError(f"kind: expected one of ('auto', 'text', 'path'), got {kind!r}")
    if kind == "text" and not isinstance(path_or_string, str):
        raise TypeError(f"path_or_string: kind='text' needs a str, got "
                        f"{type(path_or_string).__name__}")
    if kind == "path" or (kind == "auto" and (isinstance(path_or_string, os.PathLike) or (
            isinstance(path_or_string, str) and _looks_like_path(path_or_string)))):
        path = pathlib.Path(path_or_string)
        if not path.is_file():
            raise FileNotFoundError(
                f"path_or_string: no such file {os.fspath(path)!r} (a string without a newline "
                "that names a file, ends in a file suffix such as .txt or contains a path "
                "separator is read as a path; pass kind='text' or kind='path' to be explicit)")
        try:
            s = path.read_text(encoding=encoding)
        except UnicodeDecodeError as e:
            raise ValueError(f"path_or_string: {os.fspath(path)!r} is not {encoding} text "
                             f"(byte {e.start}: {e.reason}); pass encoding= or a text "
                             "file") from None
    elif isinstance(path_or_string, str):
        s = path_or_string
    else:
        raise TypeError(f"path_or_string: expected a str or a path, got "
                        f"{type(path_or_string).__name__}")
    if len(s) < seq_len + 1:
        raise ValueError(f"path_or_string: text of {len(s)} characters, need >= seq_len + 1")
    codes = np.frombuffer(s.encode("utf-32-le"), np.uint32)
    chars, ids = np.unique(codes, return_inverse=True)
    ids = ids.astype(np.int32)
    starts = np.arange(0, len(ids) - seq_len, stride)
    window = starts[:, None] + np.arange(seq_len)[None, :]
    vocab = tuple(chr(c) for c in chars.tolist())
    return CharText(ids[window], ids[window + 1], vocab)
