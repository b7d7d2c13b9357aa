"""Writing files and folders so that a crash never leaves a half-written one in place."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path


def swap_in(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``, replacing an older one:
    at every moment ``target`` is either the old complete folder or the new one."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is always either the old complete
    file or the new complete one: a temporary file in the same folder, flushed to
    disk, then renamed over ``path`` (a rename within a file system is atomic). A
    process killed mid-write leaves only a ``.tmp-*`` file, which
    :func:`remove_stale_temporaries` clears."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)  # a full disk or a read-only folder: no half-written file stays
        if isinstance(err, OSError) and err.filename is None:  # os.fsync's errors name no file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    fsync_path(path.parent)  # make the rename itself durable


def append_bytes_whole(path: Path, data: bytes) -> None:
    """Append ``data`` to the existing file ``path`` with one ``write`` call: Ctrl-C (and
    SIGTERM, which the commands turn into the same ``KeyboardInterrupt``) is raised between
    Python bytecodes, never inside the call, so an interrupted process leaves ``data`` whole
    or absent. A buffered file object writes in pieces and can be cut between them."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        written = os.write(fd, data)
        while written < len(data):  # a regular file takes it all at once unless the disk fills
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Flush a file or folder to disk (best effort: not every platform opens folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the ``.*.tmp-*`` files a killed :func:`write_bytes_atomic` left in ``folder``."""
    stale = sorted(Path(folder).glob(".*.tmp-*")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_json_atomic(path: Path, payload) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file and a rename."""
    write_bytes_atomic(path, json.dumps(payload, indent=2, default=str).encode())
