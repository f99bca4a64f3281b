"""Where the data lives: data-directory search, checksums, download and the array cache.

Search order (documented in [`admm_jax.data`][]): the ``data_dir`` argument, else
``$ADMM_JAX_DATA``, else TFDS's default directory (``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``) followed by this package's download folder
(``<cache>/raw``). In the chosen root a prepared TFDS directory is tried first
(``root/tfds/<name>`` or ``root/<name>``), then the raw original files (``root/<dataset>/``
or ``root/`` itself). When nothing is found and downloading is allowed, the raw originals are
fetched from their canonical mirrors, checksum-verified and kept in the root (or, with no
explicit root, in ``<cache>/raw``).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

DATA_ENV = "ADMM_JAX_DATA"
CACHE_ENV = "ADMM_JAX_CACHE"


class DataNotFoundError(FileNotFoundError):
    """No usable copy of a data set was found; the message says where it looked, how to get it."""


class ChecksumError(OSError):
    """A data file (or the data decoded from it) does not have its known checksum."""


class RawFile(NamedTuple):
    """One original file: its name, accepted sha256 digests, and the URLs that serve it."""

    name: str
    sha256: tuple[str, ...]
    urls: tuple[str, ...]


class Located(NamedTuple):
    """A data set found on disk: ``kind`` is ``"tfds"`` or ``"raw"``; ``path`` the directory."""

    kind: str
    path: pathlib.Path


def cache_dir() -> pathlib.Path:
    """The decoded-array cache: ``$ADMM_JAX_CACHE``, else ``$XDG_CACHE_HOME/admm_jax``, else
    ``~/.cache/admm_jax``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(xdg) / "admm_jax"


def tfds_default_dir() -> pathlib.Path:
    """TFDS's default data directory, computed without importing TFDS."""
    env = os.environ.get("TFDS_DATA_DIR")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / "tensorflow_datasets"


def roots(data_dir: str | os.PathLike | None) -> tuple[list[pathlib.Path], pathlib.Path, str]:
    """Directories to search, where a download goes, and a phrase saying where they came from."""
    if data_dir is not None:
        p = pathlib.Path(data_dir).expanduser()
        return [p], p, f"data_dir={str(data_dir)!r}"
    env = os.environ.get(DATA_ENV)
    if env:
        p = pathlib.Path(env).expanduser()
        return [p], p, f"${DATA_ENV}={env!r}"
    raw = cache_dir() / "raw"
    return [tfds_default_dir(), raw], raw, f"no data_dir and ${DATA_ENV} unset"


def tfds_available() -> bool:
    """True when tensorflow-datasets can be imported (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("tensorflow_datasets") is not None


def find_tfds(root: pathlib.Path, name: str) -> pathlib.Path | None:
    """The TFDS data_dir under ``root`` that holds a prepared ``name``, or ``None``."""
    for d in (root / "tfds", root):
        base = d / name
        if base.is_dir() and any(base.glob("*/dataset_info.json")):
            return d
    return None


def find_raw(root: pathlib.Path, sub: str, names: Sequence[str]) -> pathlib.Path | None:
    """The folder (``root/sub`` or ``root``) that holds every file in ``names``."""
    for d in (root / sub, root):
        if all((d / n).is_file() for n in names):
            return d
    return None


def sha256_file(path: pathlib.Path) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: pathlib.Path, expected: Sequence[str]) -> str:
    """Return the sha256 of ``path``; raise [`ChecksumError`][admm_jax.data.ChecksumError]
    unless it is in ``expected``."""
    got = sha256_file(path)
    if got not in expected:
        raise ChecksumError(
            f"{path}: sha256 {got} does not match the known checksum "
            f"{' or '.join(expected)}; the file is corrupted or not the original. Delete it and "
            "fetch it again (see admm_jax.data docs)."
        )
    return got


def sums_file(path: pathlib.Path) -> dict[str, str]:
    """Parse a ``SHA256SUMS`` file into ``{relative path: digest}`` (``./`` prefixes removed)."""
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            out[parts[1].lstrip("*").removeprefix("./")] = parts[0]
    return out


def tfds_files_digest(tfds_dir: pathlib.Path, name: str) -> str:
    """One sha256 over the data files of a prepared TFDS set; each file is checked against a
    ``SHA256SUMS`` in ``tfds_dir`` when there is one (raises
    [`ChecksumError`][admm_jax.data.ChecksumError])."""
    sums_path = tfds_dir / "SHA256SUMS"
    sums = sums_file(sums_path) if sums_path.is_file() else {}
    files = sorted(p for p in (tfds_dir / name).glob("*/*") if ".array_record" in p.name)
    if not files:
        raise DataNotFoundError(f"no array_record files under {tfds_dir / name}")
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(tfds_dir).as_posix()
        digest = verify_file(p, [sums[rel]]) if rel in sums else sha256_file(p)
        h.update(f"{rel}:{digest};".encode())
    return h.hexdigest()


def fetch_url(url: str, dest: pathlib.Path) -> None:
    """Download ``url`` to ``dest`` (replaced by tests; they never touch the network)."""
    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:  # noqa: S310
        shutil.copyfileobj(r, f)


def download_files(files: Sequence[RawFile], dest: pathlib.Path) -> pathlib.Path:
    """Fetch every file into ``dest`` from the first mirror that serves it with a known checksum."""
    dest.mkdir(parents=True, exist_ok=True)
    for rf in files:
        target = dest / rf.name
        if target.is_file():
            verify_file(target, rf.sha256)
            continue
        errors = []
        for url in rf.urls:
            fd, tmp = tempfile.mkstemp(dir=dest, suffix=".part")
            os.close(fd)
            tmp = pathlib.Path(tmp)
            try:
                fetch_url(url, tmp)
                verify_file(tmp, rf.sha256)
            except (OSError, ValueError) as e:  # URLError and ChecksumError are OSErrors
                errors.append(f"{url}: {e}")
                tmp.unlink(missing_ok=True)
                continue
            os.replace(tmp, target)
            break
        else:
            raise DataNotFoundError(
                f"could not download {rf.name} into {dest}:\n  " + "\n  ".join(errors)
            )
    return dest


def not_found(dataset: str, looked: Sequence[str], origin: str, how: str) -> DataNotFoundError:
    """The "how to get it" error for a data set that is nowhere to be found."""
    return DataNotFoundError(
        f"{dataset} data not found ({origin}). Looked for:\n  "
        + "\n  ".join(looked)
        + f"\nTo get it: {how}\nor pass download=True (the default) when online, or point "
        f"data_dir / ${DATA_ENV} at a directory holding it."
    )


def cache_load(key: str) -> dict[str, np.ndarray] | None:
    """Arrays stored under ``key`` in the cache, or ``None`` (a damaged entry counts as absent)."""
    path = cache_dir() / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None


def cache_save(key: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Store ``arrays`` under ``key`` atomically (write a temp file, then rename); a cache that
    cannot be written is skipped silently, since it only saves time."""
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".npz.part")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, d / f"{key}.npz")
    except OSError:
        pass


def digest_arrays(*arrays: np.ndarray) -> str:
    """sha256 over the raw bytes of ``arrays`` (content checksum of decoded data)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


SOURCES = ("auto", "tfds", "raw")


def locate(
    dataset: str,
    *,
    tfds_name: str,
    raw_sub: str,
    raw_files: Sequence[Sequence[RawFile]],
    data_dir: str | os.PathLike | None,
    source: str,
    download: bool,
) -> Located:
    """Find ``dataset`` following the documented search order; download the raw files if needed.

    ``raw_files`` lists alternatives (e.g. the original IMDb archive or the labelled repack);
    the first alternative is the one downloaded.
    """
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {SOURCES}, got {source!r}")
    if not isinstance(download, bool):
        raise TypeError(f"download: expected a bool, got {download!r}")
    search, dest, origin = roots(data_dir)
    use_tfds = source in ("auto", "tfds")
    if source == "tfds" and not tfds_available():
        raise ImportError(
            "source='tfds' needs tensorflow-datasets: pip install 'admm-jax[data]'"
        )
    looked = []
    for root in search:
        if use_tfds:
            looked.append(f"{root / 'tfds' / tfds_name} or {root / tfds_name} (prepared TFDS)")
            d = find_tfds(root, tfds_name)
            if d is not None and tfds_available():
                return Located("tfds", d)
        if source in ("auto", "raw"):
            for alt in raw_files:
                names = [rf.name for rf in alt]
                looked.append(f"{root / raw_sub} or {root}: {', '.join(names)} (raw)")
                d = find_raw(root, raw_sub, names)
                if d is not None:
                    return Located("raw", d)
    if download and source in ("auto", "raw"):
        return Located("raw", download_files(raw_files[0], dest / raw_sub))
    how = (
        f"\n  mkdir -p {dest / raw_sub} && cd {dest / raw_sub} && "
        + " && ".join(f"curl -LO {rf.urls[0]}" for rf in raw_files[0])
        + f"\n(or prepare it with TensorFlow: python -c \"import tensorflow_datasets as tfds; "
        f"tfds.data_source('{tfds_name}', data_dir='{dest / 'tfds'}', download=True)\")"
    )
    raise not_found(dataset, looked, origin, how)
