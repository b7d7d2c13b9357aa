"""Fetching and unpacking public data archives, safely and at most once.

Pure functions, knowing nothing of Hydra or Lightning:

- :func:`fetch_archive` downloads a file into a data directory, verifies its
  checksum and moves it into place atomically; a file already there with the
  right checksum is used as is, without touching the network.
- :func:`download_file` is the download itself, for files verified otherwise
  (the LightGCN benchmarks: by their pairs, :mod:`twotower.data.lightgcn`).
- :func:`safe_extract` unpacks a zip into a directory, refusing members that
  would land outside it, and never leaves a half-extracted directory behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from twotower.errors import DataError

COMPLETE_MARKER = ".complete"
_CHUNK = 1 << 20
_TIMEOUT_S = 60


def _archive_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"cannot tell a file name from the URL {url!r}")
    return name


def _expected_digests(sha256: str | None, md5: str | None) -> dict[str, str]:
    expected = {algo: digest.strip().lower() for algo, digest in (("sha256", sha256), ("md5", md5)) if digest}
    if not expected:
        raise ValueError("fetch_archive needs a checksum to verify: give sha256 or md5 (or both)")
    return expected


def _file_digests(path: Path, algos: list[str]) -> dict[str, str]:
    hashers = {algo: hashlib.new(algo) for algo in algos}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {algo: h.hexdigest() for algo, h in hashers.items()}


def _mismatches(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    return [
        f"{algo} expected {expected[algo]}, got {actual[algo]}" for algo in expected if actual[algo] != expected[algo]
    ]


def fetch_archive(
    url: str,
    dest_dir: str | Path,
    sha256: str | None = None,
    md5: str | None = None,
    show_progress: bool = True,
) -> Path:
    """Return the path of ``url``'s file inside ``dest_dir``, downloading it if needed.

    A file already in ``dest_dir`` whose checksum matches is returned without
    any network access. Otherwise the file is downloaded to ``<name>.part``,
    verified against every digest given (at least one of ``sha256``/``md5``
    is required) and renamed into place with :func:`os.replace`, so the final
    name only ever holds a verified archive.

    Raises ``ValueError`` when no checksum is given, and
    :class:`~twotower.data.schema.DataError` on a network failure or a
    checksum mismatch (the partial file is removed).
    """
    expected = _expected_digests(sha256, md5)
    dest_dir = Path(dest_dir)
    name = _archive_name(url)
    final = dest_dir / name

    if final.is_file() and not _mismatches(expected, _file_digests(final, list(expected))):
        return final

    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / f"{name}.part"
    try:
        hashers = download_file(url, part, hint=f"place it at {final} (data dir {dest_dir.resolve()})",
                                algos=list(expected), show_progress=show_progress)  # fmt: skip
        actual = {algo: h.hexdigest() for algo, h in hashers.items()}
        bad = _mismatches(expected, actual)
        if bad:
            raise DataError(f"checksum mismatch for {url}: {'; '.join(bad)}; the download was discarded")
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
    return final


def download_file(url: str, dest: Path, hint: str, algos: list[str] = (), show_progress: bool = True) -> dict:
    """Download ``url`` to ``dest`` (overwritten), with a progress bar when the size is known;
    returns the hashers of ``algos`` fed with its bytes. A network failure or a short read
    raises :class:`~twotower.data.schema.DataError` ending with ``hint`` (what to do offline);
    the caller removes ``dest`` then."""
    hashers = {algo: hashlib.new(algo) for algo in algos}
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = None
            if show_progress and total:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=Path(dest).name)
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    for h in hashers.values():
                        h.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            if total is not None and out.tell() != total:
                raise http.client.IncompleteRead(b"", total - out.tell())
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise DataError(f"could not download {url}: {err}. Without network access, download it by hand and {hint}") from err
    return hashers


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if not name:
        return "an empty name"
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive:
        return "an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "a '..' component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    return None


def safe_extract(archive: Path, target_dir: Path) -> Path:
    """Extract the zip ``archive`` into ``target_dir`` and return ``target_dir``.

    Every member is checked before anything is written: an absolute path, a
    ``..`` component or a symbolic link makes the whole archive refused with
    :class:`~twotower.data.schema.DataError`. Extraction happens in a
    temporary sibling directory which, once complete (marker file
    ``.complete`` written last), replaces ``target_dir`` with :func:`os.replace`.
    A ``target_dir`` that already holds the marker is returned untouched; one
    without it (left by an older, interrupted run) is replaced.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    if (target_dir / COMPLETE_MARKER).is_file():
        return target_dir
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                reason = _unsafe_reason(info)
                if reason is not None:
                    raise DataError(
                        f"{archive}: refusing to extract, member {info.filename!r} has {reason}; nothing was extracted"
                    )
            target_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.", suffix=".tmp", dir=target_dir.parent))
            try:
                root = tmp.resolve()
                for info in members:
                    dest = (tmp / info.filename).resolve()
                    if dest != root and root not in dest.parents:  # belt and braces after the checks above
                        raise DataError(f"{archive}: member {info.filename!r} would land outside {target_dir}")
                    zf.extract(info, tmp)
                (tmp / COMPLETE_MARKER).write_text(f"extracted from {archive.name}\n")
                if target_dir.exists():
                    shutil.rmtree(target_dir)
                os.replace(tmp, target_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive}: not a valid zip archive ({err}); delete it to download it again") from err
    return target_dir
